//! Folder target (`kind = "fs"`): a mounted archive folder.
//!
//! Every file is written under a temp name in `<root>/.exportd-tmp/`,
//! fsynced, renamed to its final name with `RENAME_NOREPLACE` (so a final
//! name is never overwritten), then the folder is fsynced. Newly created
//! folders are fsynced into their parents (the target root too, when it does
//! not exist yet).
//!
//! Large files are copied by two threads: this one reads (and decrypts) the
//! source while a helper hashes and writes the previous buffer, through
//! three fixed buffers.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256, Sha512};

use super::{PutReceipt, PutRequest, Source, Target, TargetError};
use crate::model::TargetSpec;

/// Copy buffer size (one buffer for a small file, three in flight for a
/// large one).
const BUF: usize = 64 << 10;
/// Copy buffers kept for reuse (enough for 8 workers copying large files).
const POOL_MAX: usize = 24;

/// Copy buffers are taken from and returned to one pool shared by all
/// workers: allocated once, never freed and allocated again on another
/// worker thread (which would leave freed buffers cached in every thread's
/// malloc arena, growing the resident set with the number of workers).
static POOL: std::sync::Mutex<Vec<Box<[u8]>>> = std::sync::Mutex::new(Vec::new());

/// A copy buffer on loan from [`POOL`].
struct PoolBuf(Box<[u8]>);

impl PoolBuf {
    fn take() -> PoolBuf {
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

/// Sources at least this large (or of unknown size: decrypted) are copied
/// by two threads.
const PIPE_MIN: u64 = 2 << 20;

/// Hash state of one copy.
struct Hashes {
    h256: Sha256,
    h512: Option<Sha512>,
    total: u64,
}

impl Hashes {
    fn new(want_sha512: bool) -> Hashes {
        Hashes {
            h256: Sha256::new(),
            h512: want_sha512.then(Sha512::new),
            total: 0,
        }
    }
    fn update(&mut self, b: &[u8]) {
        self.h256.update(b);
        if let Some(h) = self.h512.as_mut() {
            h.update(b);
        }
        self.total += b.len() as u64;
    }
    fn finish(self) -> ([u8; 32], Option<[u8; 64]>, u64) {
        (
            self.h256.finalize().into(),
            self.h512.map(|h| h.finalize().into()),
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
enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `input` to `out` on this thread, hashing as it goes.
fn copy_inline(input: &mut dyn Read, out: &File, h: &mut Hashes) -> Result<(), CopyError> {
    let mut buf = PoolBuf::take();
    loop {
        let n = read_full(input, &mut buf).map_err(CopyError::Read)?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
        (&*out).write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
}

/// Copies `input` to `out` with reading (and decrypting) on this thread and
/// hashing + writing on a helper thread, overlapping the two. Three fixed
/// buffers circulate between them; memory does not depend on the file size.
fn copy_pipelined(input: &mut dyn Read, out: &File, h: &mut Hashes) -> Result<(), CopyError> {
    use std::sync::mpsc::sync_channel;
    let (full_tx, full_rx) = sync_channel::<(PoolBuf, usize)>(2);
    let (empty_tx, empty_rx) = sync_channel::<PoolBuf>(3);
    for _ in 0..3 {
        let _ = empty_tx.send(PoolBuf::take());
    }
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> Result<(), io::Error> {
            for (buf, n) in full_rx {
                h.update(&buf[..n]);
                (&*out).write_all(&buf[..n])?;
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

/// The hidden folder below the target root where files are written before
/// they are renamed into their record folder (same file system, so the rename
/// is atomic). Nothing in it is ever a final name.
pub const TMP_DIR: &str = ".exportd-tmp";

/// A folder target.
pub struct FsTarget {
    spec: TargetSpec,
    root: PathBuf,
    seq: std::sync::atomic::AtomicU64,
}

impl FsTarget {
    /// A target for `spec` (which must be `kind = "fs"` with a `path`).
    pub fn new(spec: &TargetSpec) -> FsTarget {
        FsTarget {
            root: spec.path.clone().unwrap_or_default(),
            spec: spec.clone(),
            seq: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Removes temp files left by a process that is gone (a crash mid-copy).
    /// Temp files are named `<pid>-<seq>`; those of live processes stay.
    pub fn remove_stale_temps(&self) -> usize {
        let dir = self.root.join(TMP_DIR);
        let Ok(rd) = fs::read_dir(&dir) else { return 0 };
        let mut n = 0;
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let pid = name.split('-').next().unwrap_or("");
            let alive = !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && Path::new("/proc").join(pid).exists();
            if !alive && fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        n
    }

    fn tmp_path(&self) -> Result<PathBuf, TargetError> {
        let dir = self.root.join(TMP_DIR);
        if !dir.is_dir() {
            match fs::create_dir(&dir) {
                Ok(()) => {
                    sync_dir(&self.root).map_err(|e| self.io_err("fsync folder", &self.root, e))?
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(self.io_err("create folder", &dir, e)),
            }
        }
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(dir.join(format!("{}-{n}", std::process::id())))
    }

    /// The target root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn io_err(&self, what: &str, path: &Path, e: io::Error) -> TargetError {
        let hint = match e.raw_os_error() {
            Some(28) => {
                " (target is full: free space or grow the volume; the backlog drains by itself)"
            }
            Some(30) => {
                " (target is read-only: remount it read-write; the backlog drains by itself)"
            }
            Some(13) | Some(1) => " (permission denied: give the exportd user write access)",
            _ => "",
        };
        TargetError::Transient(format!("{what} {}: {e}{hint}", path.display()))
    }

    /// Creates `folder` below the root, fsyncing each new directory into its parent.
    fn ensure_folder(&self, folder: &str) -> Result<PathBuf, TargetError> {
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(TargetError::Transient(format!(
                    "target root {} is not a folder",
                    self.root.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.root)
                    .map_err(|e| self.io_err("create target root", &self.root, e))?;
                if let Some(parent) = self.root.parent() {
                    sync_dir(parent).map_err(|e| self.io_err("fsync folder", parent, e))?;
                }
            }
            Err(e) => {
                return Err(TargetError::Transient(format!(
                    "target root {} is not reachable: {e} (is the archive share mounted?)",
                    self.root.display()
                )));
            }
        }
        let mut dir = self.root.clone();
        for comp in folder.split('/').filter(|c| !c.is_empty()) {
            let parent = dir.clone();
            dir.push(comp);
            match fs::create_dir(&dir) {
                Ok(()) => sync_dir(&parent).map_err(|e| self.io_err("fsync folder", &parent, e))?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let m = fs::symlink_metadata(&dir)
                        .map_err(|e| self.io_err("inspect folder", &dir, e))?;
                    if !m.is_dir() {
                        return Err(TargetError::Permanent(format!(
                            "{} exists and is not a folder",
                            dir.display()
                        )));
                    }
                }
                Err(e) => return Err(self.io_err("create folder", &dir, e)),
            }
        }
        Ok(dir)
    }
}

/// fsyncs a directory so that entries created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames `from` to `to` in the same folder without ever replacing `to`.
/// Returns `Ok(false)` when `to` already exists.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<bool> {
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
            // File systems without RENAME_NOREPLACE: link(2) never replaces.
            match fs::hard_link(from, to) {
                Ok(()) => {
                    fs::remove_file(from)?;
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = PoolBuf::take();
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

impl Target for FsTarget {
    fn spec(&self) -> &TargetSpec {
        &self.spec
    }

    fn put(&self, req: &PutRequest<'_>, src: &dyn Source) -> Result<PutReceipt, TargetError> {
        self.ensure_folder("")?;
        let tmp_path = self.tmp_path()?;

        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&tmp_path)
            .map_err(|e| self.io_err("create", &tmp_path, e))?;

        let result = (|| {
            let mut input = src.open().map_err(TargetError::Source)?;
            let mut h = Hashes::new(req.want_sha512);
            let copied = if src.len_hint().is_none_or(|n| n >= PIPE_MIN) {
                copy_pipelined(&mut *input, &out, &mut h)
            } else {
                copy_inline(&mut *input, &out, &mut h)
            };
            match copied {
                Ok(()) => {}
                Err(CopyError::Read(e)) => return Err(TargetError::Source(e)),
                Err(CopyError::Write(e)) => return Err(self.io_err("write", &tmp_path, e)),
            }
            out.sync_all()
                .map_err(|e| self.io_err("fsync", &tmp_path, e))?;
            Ok(h.finish())
        })();
        drop(out);
        let (sha256, sha512, bytes) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp_path);
                return Err(e);
            }
        };
        // The record folder is created only once a complete file is ready
        // to be renamed into it: a copy that fails or is killed while its
        // first file is written leaves no empty record folder.
        let dir = match self.ensure_folder(req.folder) {
            Ok(d) => d,
            Err(e) => {
                let _ = fs::remove_file(&tmp_path);
                return Err(e);
            }
        };
        let final_path = dir.join(req.name);

        let placed = match rename_noreplace(&tmp_path, &final_path) {
            Ok(p) => p,
            Err(e) => {
                let _ = fs::remove_file(&tmp_path);
                return Err(self.io_err("rename into", &final_path, e));
            }
        };
        if !placed {
            let _ = fs::remove_file(&tmp_path);
            let existing =
                sha256_file(&final_path).map_err(|e| self.io_err("read", &final_path, e))?;
            if existing != sha256 {
                return Err(TargetError::Conflict {
                    location: final_path.display().to_string(),
                    existing: hex::encode(existing),
                });
            }
            return Ok(PutReceipt {
                sha256,
                sha512,
                bytes,
                already_present: true,
                detail: None,
            });
        }
        sync_dir(&dir).map_err(|e| self.io_err("fsync folder", &dir, e))?;
        Ok(PutReceipt {
            sha256,
            sha512,
            bytes,
            already_present: false,
            detail: None,
        })
    }

    fn exists(&self, folder: &str, name: &str) -> Result<bool, TargetError> {
        let p = self.root.join(folder).join(name);
        match fs::symlink_metadata(&p) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io_err("inspect", &p, e)),
        }
    }

    fn recover(&self) -> usize {
        self.remove_stale_temps()
    }

    fn describe(&self, folder: &str) -> String {
        self.root.join(folder).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::BytesSource;

    fn target(root: &Path) -> FsTarget {
        FsTarget::new(&TargetSpec::fs("t", root))
    }

    struct Failing;
    impl Source for Failing {
        fn open(&self) -> io::Result<Box<dyn Read + '_>> {
            struct R(u32);
            impl Read for R {
                fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                    self.0 += 1;
                    if self.0 > 2 {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad tag"));
                    }
                    b[..4].copy_from_slice(b"leak");
                    Ok(4)
                }
            }
            Ok(Box::new(R(0)))
        }
        fn len_hint(&self) -> Option<u64> {
            None
        }
    }

    #[test]
    fn put_is_atomic_and_never_overwrites() {
        let d = tempdir();
        let t = target(&d);
        let req = PutRequest {
            folder: "a/b",
            name: "x.wav",
            want_sha512: true,
        };
        let r = t.put(&req, &BytesSource(b"hello")).unwrap();
        assert!(!r.already_present);
        assert_eq!(r.bytes, 5);
        assert_eq!(fs::read(d.join("a/b/x.wav")).unwrap(), b"hello");
        assert!(r.sha512.is_some());
        let again = t.put(&req, &BytesSource(b"hello")).unwrap();
        assert!(again.already_present);
        let err = t.put(&req, &BytesSource(b"other")).unwrap_err();
        assert!(matches!(err, TargetError::Conflict { .. }), "{err}");
        assert_eq!(fs::read(d.join("a/b/x.wav")).unwrap(), b"hello");
        assert_eq!(
            fs::read_dir(d.join(TMP_DIR)).unwrap().count(),
            0,
            "no temp left"
        );
        let names: Vec<_> = fs::read_dir(d.join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn failing_source_leaves_nothing() {
        let d = tempdir();
        let t = target(&d);
        let req = PutRequest {
            folder: "f",
            name: "y.wav",
            want_sha512: false,
        };
        assert!(matches!(t.put(&req, &Failing), Err(TargetError::Source(_))));
        // No empty record folder either: it is made only for a complete file.
        assert!(!d.join("f").exists(), "no empty record folder");
        assert_eq!(fs::read_dir(d.join(TMP_DIR)).unwrap().count(), 0);
    }

    /// A source handing out odd-sized reads of `data`, size unknown (as a
    /// decrypting reader is).
    struct Chunky(Vec<u8>);
    impl Source for Chunky {
        fn open(&self) -> io::Result<Box<dyn Read + '_>> {
            struct R<'a>(&'a [u8], usize);
            impl Read for R<'_> {
                fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                    self.1 = (self.1 * 7 + 3) % 70_001 + 1;
                    let n = self.1.min(b.len()).min(self.0.len());
                    b[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            Ok(Box::new(R(&self.0, 0)))
        }
        fn len_hint(&self) -> Option<u64> {
            None
        }
    }

    #[test]
    fn large_sources_copy_through_two_threads_exactly() {
        let d = tempdir();
        let t = target(&d);
        let mut x = 0x9e37_79b9_u32;
        let data: Vec<u8> = (0..(2 << 20) + 12_345)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for (name, src) in [
            ("chunky.mp4", &Chunky(data.clone()) as &dyn Source),
            ("bytes.mp4", &BytesSource(&data)),
            ("small.wav", &BytesSource(&data[..100_000])),
        ] {
            let req = PutRequest {
                folder: "big",
                name,
                want_sha512: true,
            };
            let r = t.put(&req, src).unwrap();
            let want = if name == "small.wav" {
                &data[..100_000]
            } else {
                &data[..]
            };
            assert_eq!(r.bytes, want.len() as u64, "{name}");
            assert_eq!(r.sha256, <[u8; 32]>::from(Sha256::digest(want)), "{name}");
            assert_eq!(
                r.sha512,
                Some(<[u8; 64]>::from(Sha512::digest(want))),
                "{name}"
            );
            assert!(
                fs::read(d.join("big").join(name)).unwrap() == want,
                "{name}"
            );
        }
    }

    #[test]
    fn missing_root_is_created() {
        let d = tempdir().join("new-archive");
        let t = target(&d);
        let req = PutRequest {
            folder: "f",
            name: "y",
            want_sha512: false,
        };
        assert!(t.put(&req, &BytesSource(b"1")).is_ok());
        assert_eq!(fs::read(d.join("f/y")).unwrap(), b"1");
    }

    fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "exportd-fs-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        p
    }
}
