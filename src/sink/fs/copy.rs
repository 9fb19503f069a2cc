//! Copying a source into an open temp file while hashing it: inline for
//! small sources, pipelined over two threads (read/decrypt here, hash and
//! write on a helper) for large ones, through pooled fixed buffers. Never
//! names, renames or syncs a file.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use exportd_hot::{Sha256, Sha512};

/// Copy buffer size (one buffer for a small file, three in flight for a
/// large one).
const BUF: usize = 32 << 10;
/// Copy buffers kept for reuse (enough for 8 workers copying large files).
const POOL_MAX: usize = 24;

/// Copy buffers are taken from and returned to one pool shared by all
/// workers: allocated once, never freed and allocated again on another
/// worker thread (which would leave freed buffers cached in every thread's
/// malloc arena, growing the resident set with the number of workers).
static POOL: std::sync::Mutex<Vec<Box<[u8]>>> = std::sync::Mutex::new(Vec::new());

/// A copy buffer on loan from [`POOL`].
pub(super) struct PoolBuf(Box<[u8]>);

impl PoolBuf {
    pub(super) fn take() -> PoolBuf {
        let b = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop();
        PoolBuf(b.unwrap_or_else(|| vec![0u8; BUF].into_boxed_slice()))
    }
}

impl std::ops::Deref for PoolBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for PoolBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        let b = std::mem::take(&mut self.0);
        let mut p = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if p.len() < POOL_MAX {
            p.push(b);
        }
    }
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: starts writing back the
/// file's dirty pages in `offset..offset + len` (`len` 0: to the end)
/// without waiting; changes no byte and no timestamp. Returns false when
/// the call failed (unsupported, or an error a later `fdatasync` reports
/// anyway: this call does not consume it).
#[allow(unsafe_code)]
pub fn start_writeback(f: &File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return false;
    };
    // SAFETY: a plain system call on an open descriptor; no memory is passed.
    let r = unsafe { libc::sync_file_range(f.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
    r == 0
}

/// Written bytes after which their writeback is started
/// ([`start_writeback`]), RocksDB's `bytes_per_sync`: the disk writes the
/// copy while it is being made, so the temp's `fdatasync` at the end finds
/// little left, and a large copy never piles up dirty pages that the
/// kernel then writes back at once (holding up every other sync).
const BYTES_PER_SYNC: u64 = 1 << 20;

/// The copy's bytes written so far, and how far their writeback is started.
#[derive(Default)]
struct Writeback {
    written: u64,
    started: u64,
}

impl Writeback {
    /// `n` more bytes were written to `out`.
    fn wrote(&mut self, out: &File, n: usize) {
        self.written += n as u64;
        if self.written - self.started >= BYTES_PER_SYNC {
            // A failure here is reported by the temp's fdatasync.
            start_writeback(out, self.started, self.written - self.started);
            self.started = self.written;
        }
    }
}

/// Sources at least this large (or of unknown size: decrypted) are copied
/// by two threads.
pub(super) const PIPE_MIN: u64 = 2 << 20;

/// SHA-256, SHA-512 (when asked) and size of the bytes copied.
pub(super) type Hashed = ([u8; 32], Option<[u8; 64]>, u64);

/// Hash state of one copy.
pub(super) struct Hashes {
    h256: Sha256,
    h512: Option<Sha512>,
    total: u64,
}

impl Hashes {
    pub(super) fn new(want_sha512: bool) -> Hashes {
        Hashes {
            h256: Sha256::new(),
            h512: want_sha512.then(Sha512::new),
            total: 0,
        }
    }
    pub(super) fn update(&mut self, b: &[u8]) {
        self.h256.update(b);
        if let Some(h) = self.h512.as_mut() {
            h.update(b);
        }
        self.total += b.len() as u64;
    }
    pub(super) fn finish(self) -> Hashed {
        (
            self.h256.finalize(),
            self.h512.map(Sha512::finalize),
            self.total,
        )
    }
}

/// Reads until `buf` is full or the source ends; returns the bytes read.
fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Why a copy stopped.
pub(super) enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `input` to `out` on this thread, hashing as it goes.
pub(super) fn copy_inline(
    input: &mut dyn Read,
    out: &File,
    h: &mut Hashes,
) -> Result<(), CopyError> {
    let mut buf = PoolBuf::take();
    let mut wb = Writeback::default();
    loop {
        let n = read_full(input, &mut buf).map_err(CopyError::Read)?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
        (&*out).write_all(&buf[..n]).map_err(CopyError::Write)?;
        wb.wrote(out, n);
    }
}

/// Copies `input` to `out` with reading (and decrypting) on this thread and
/// hashing + writing on a helper thread, overlapping the two. Three fixed
/// buffers circulate between them; memory does not depend on the file size.
pub(super) fn copy_pipelined(
    input: &mut dyn Read,
    out: &File,
    h: &mut Hashes,
) -> Result<(), CopyError> {
    use std::sync::mpsc::sync_channel;
    let (full_tx, full_rx) = sync_channel::<(PoolBuf, usize)>(2);
    let (empty_tx, empty_rx) = sync_channel::<PoolBuf>(3);
    for _ in 0..3 {
        let _ = empty_tx.send(PoolBuf::take());
    }
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> Result<(), io::Error> {
            let mut wb = Writeback::default();
            for (buf, n) in full_rx {
                h.update(&buf[..n]);
                (&*out).write_all(&buf[..n])?;
                wb.wrote(out, n);
                if empty_tx.send(buf).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let mut read_err = None;
        while let Ok(mut buf) = empty_rx.recv() {
            match read_full(input, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if full_tx.send((buf, n)).is_err() {
                        break; // the writer stopped: its error is below
                    }
                }
                Err(e) => {
                    read_err = Some(e);
                    break;
                }
            }
        }
        drop(full_tx);
        let written = match writer.join() {
            Ok(r) => r,
            Err(_) => Err(io::Error::other("the copy's writer thread panicked")),
        };
        match (read_err, written) {
            (_, Err(e)) => Err(CopyError::Write(e)),
            (Some(e), Ok(())) => Err(CopyError::Read(e)),
            (None, Ok(())) => Ok(()),
        }
    })
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> io::Result<[u8; 32]> {
    sha256_of(&mut File::open(path)?)
}

/// SHA-256 of what a reader yields, streamed.
pub fn sha256_of(f: &mut dyn Read) -> io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = PoolBuf::take();
    loop {
        let n = match f.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize())
}
