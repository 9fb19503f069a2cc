//! Folder target (`kind = "fs"`): a mounted archive folder.
//!
//! The root must prove it is the archive before anything is written: it is
//! never created, and it must hold this target's `.exportd-target` marker
//! (see [`super::marker`]), else the target is unavailable (an unmounted
//! volume is a bare mount point on the root disk).
//!
//! Everything below the root is reached through directory handles
//! ([`super::handle`]): no symlink below the root is ever followed, no FIFO
//! ever blocks. Every file is written under a temp name in
//! `<root>/.exportd-tmp/` (`<agent>.<nonce>.<seq>`, created `O_EXCL |
//! O_NOFOLLOW`, the nonce unique per process start, flocked by its writer
//! until it is renamed), fsynced, renamed to its final name with
//! `RENAME_NOREPLACE` (so a final name is never overwritten), then the folder
//! is fsynced. Newly created folders are fsynced into their parents. A final
//! name already holding the same bytes is fsynced (file and folder) before it
//! counts.
//!
//! Large files are copied by two threads: this one reads (and decrypts) the
//! source while a helper hashes and writes the previous buffer, through
//! three fixed buffers.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256, Sha512};

use super::handle;
use super::marker::{MARKER_MAX, MARKER_NAME, Marker};
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

/// Where a folder target keeps its bookkeeping (the marker copy) and who
/// writes to it.
#[derive(Debug, Clone)]
pub struct TargetEnv {
    /// The agent's `state_dir` (`targets/<id>.marker` lives there).
    pub state_dir: PathBuf,
    /// The agent id (in the marker and in temp names).
    pub agent_id: String,
}

/// A folder target.
pub struct FsTarget {
    spec: TargetSpec,
    root: PathBuf,
    env: TargetEnv,
    seq: AtomicU64,
    /// `<agent>.<nonce>`: the prefix of this process's temp names, unique per
    /// agent and process start.
    tag: String,
    /// The marker this agent knows for the target (its state copy).
    known: Mutex<Option<Marker>>,
}

/// The agent id as it appears in temp names: `[A-Za-z0-9_-]`, at most 64.
fn agent_tag(agent_id: &str) -> String {
    let t: String = agent_id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() { "agent".into() } else { t }
}

/// A random nonce (16 hex digits): unique per process start for temp names,
/// per file for compliance zips.
pub(crate) fn start_nonce() -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // No random source: time and pid are still unique enough per start.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = ((t as u64) ^ ((std::process::id() as u64) << 32)).to_le_bytes();
    }
    hex::encode(b)
}

/// Splits a name of the temp folder into (`<agent>.<nonce>`, `<seq>`) when
/// it is one exportd makes: `<agent>.<nonce>.<seq>`.
fn temp_owner(name: &str) -> Option<(&str, &str)> {
    let (owner, last) = name.rsplit_once('.')?;
    let (agent, nonce) = owner.rsplit_once('.')?;
    let ok_agent = !agent.is_empty()
        && agent
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let ok_nonce = nonce.len() == 16 && nonce.bytes().all(|b| b.is_ascii_hexdigit());
    let ok_last = !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit());
    (ok_agent && ok_nonce && ok_last).then_some((owner, last))
}

/// Whether a lock error means "this file system cannot lock" (then a
/// temp's owner is unknown and its temps are kept).
fn is_nolock(e: rustix::io::Errno) -> bool {
    matches!(
        e,
        rustix::io::Errno::NOLCK | rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS
    )
}

impl FsTarget {
    /// A target for `spec` (which must be `kind = "fs"` with a `path`).
    pub fn new(spec: &TargetSpec, env: &TargetEnv) -> FsTarget {
        FsTarget {
            root: spec.path.clone().unwrap_or_default(),
            spec: spec.clone(),
            env: env.clone(),
            seq: AtomicU64::new(0),
            tag: format!("{}.{}", agent_tag(&env.agent_id), start_nonce()),
            known: Mutex::new(None),
        }
    }

    /// The target root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<state_dir>/targets/<target id>.marker`: this agent's copy of the
    /// marker it adopted or initialised.
    pub fn marker_copy_path(&self) -> PathBuf {
        self.env
            .state_dir
            .join("targets")
            .join(format!("{}.marker", self.spec.id))
    }

    fn unavailable(&self, why: String) -> TargetError {
        TargetError::Transient(format!("target {}: {why}", self.spec.id))
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
            Some(40) => " (a symlink: exportd never follows links below a target root)",
            _ => "",
        };
        TargetError::Transient(format!("{what} {}: {e}{hint}", path.display()))
    }

    /// The state copy of the marker, read once.
    fn load_known(&self) -> Result<Option<Marker>, TargetError> {
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if k.is_none() {
            let p = self.marker_copy_path();
            match std::fs::read(&p) {
                Ok(b) => {
                    let m = Marker::parse(&b).map_err(|e| {
                        self.unavailable(format!(
                            "{}: {e}; remove it and run `exportd target init`",
                            p.display()
                        ))
                    })?;
                    *k = Some(m);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io_err("read", &p, e)),
            }
        }
        Ok(k.clone())
    }

    fn save_known(&self, m: &Marker) -> Result<(), TargetError> {
        let p = self.marker_copy_path();
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| self.io_err("create folder", d, e))?;
        }
        crate::snapshot::write_atomic(&p, &m.to_bytes())
            .map_err(|e| self.io_err("write", &p, e))?;
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) = Some(m.clone());
        Ok(())
    }

    /// Opens the root handle; a missing root is unavailable (never created).
    fn open_root_handle(&self) -> Result<File, TargetError> {
        handle::open_root(&self.root).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => self.unavailable(format!(
                "{} does not exist (volume not mounted?); exportd never creates a target root: mount the volume, or create the folder and run `exportd target init`",
                self.root.display()
            )),
            _ if e.raw_os_error() == Some(20) => self.unavailable(format!(
                "{} is not a folder",
                self.root.display()
            )),
            _ => self.unavailable(format!(
                "{} is not reachable: {e} (is the archive share mounted?)",
                self.root.display()
            )),
        })
    }

    fn read_marker(&self, root: &File) -> Result<Option<Marker>, TargetError> {
        let b = handle::read_small(root, MARKER_NAME, MARKER_MAX).map_err(|e| {
            self.unavailable(format!(
                "{}/{MARKER_NAME} cannot be read: {e}",
                self.root.display()
            ))
        })?;
        match b {
            None => Ok(None),
            Some(b) => Marker::parse(&b).map(Some).map_err(|e| {
                self.unavailable(format!(
                    "{}/{MARKER_NAME}: {e}; if this is the archive, remove it and run `exportd target init`",
                    self.root.display()
                ))
            }),
        }
    }

    /// Writes a new marker into the root (temp, fsync, no-replace rename,
    /// folder fsync). Returns the marker now in the root: a marker written
    /// meanwhile by someone else wins.
    fn write_marker(&self, root: &File, m: &Marker) -> Result<Marker, TargetError> {
        let tmp = format!("{MARKER_NAME}.{}.tmp", self.tag);
        let at = self.root.join(&tmp);
        let f = handle::create_new(root, &tmp, 0o644).map_err(|e| self.io_err("create", &at, e))?;
        let res = (|| {
            (&f).write_all(&m.to_bytes())?;
            f.sync_all()?;
            handle::rename_noreplace_at(root, &tmp, root, MARKER_NAME)
        })();
        let placed = match res {
            Ok(p) => p,
            Err(e) => {
                let _ = handle::remove_in(root, &tmp);
                return Err(self.io_err("write", &at, e));
            }
        };
        if !placed {
            let _ = handle::remove_in(root, &tmp);
            return self.read_marker(root)?.ok_or_else(|| {
                self.unavailable(format!("{}/{MARKER_NAME} vanished", self.root.display()))
            });
        }
        root.sync_all()
            .map_err(|e| self.io_err("fsync folder", &self.root, e))?;
        Ok(m.clone())
    }

    /// Opens the target root and proves it is this target's archive (see
    /// [`crate::target::marker`]): a root with this agent's marker, or a plain
    /// folder this agent never used (adopted: the marker is written). A
    /// missing root, a missing marker where the agent used the target before
    /// (volume not mounted) or another target's marker is unavailable.
    pub fn open_root(&self) -> Result<File, TargetError> {
        let root = self.open_root_handle()?;
        let on_disk = self.read_marker(&root)?;
        let known = self.load_known()?;
        let shown = self.root.display();
        match (on_disk, known) {
            (Some(d), Some(k)) => {
                if d.target_id == k.target_id && d.instance == k.instance {
                    Ok(root)
                } else {
                    Err(self.unavailable(format!(
                        "{shown} holds the marker of {d}, not of {k} that this agent uses (wrong volume mounted?); mount the right volume, or run `exportd target init` if this archive replaces it"
                    )))
                }
            }
            (Some(d), None) => {
                if d.target_id != self.spec.id {
                    return Err(self.unavailable(format!(
                        "{shown} holds the marker of {d} (another target's archive); mount the right volume or fix the target's path"
                    )));
                }
                self.save_known(&d)?;
                Ok(root)
            }
            (None, Some(_)) => Err(self.unavailable(format!(
                "{shown} has no {MARKER_NAME} marker (volume not mounted?); mount it or run `exportd target init`"
            ))),
            (None, None) => {
                // First use of a plain folder: adopt it.
                let m = Marker::new(&self.spec.id, &self.env.agent_id)
                    .map_err(|e| self.unavailable(e.to_string()))?;
                let placed = self.write_marker(&root, &m)?;
                if placed.target_id != self.spec.id {
                    return Err(self.unavailable(format!(
                        "{shown} holds the marker of {placed} (another target's archive)"
                    )));
                }
                self.save_known(&placed)?;
                tracing::info!(target = %self.spec.id, "adopted {shown} as the archive of target {} (wrote {MARKER_NAME}, instance {})", self.spec.id, placed.instance);
                Ok(root)
            }
        }
    }

    /// `exportd target init`: writes the marker into an existing root (or
    /// keeps the one there when it is this target's) and makes this agent's
    /// state copy match. Returns the marker and whether it was written now.
    pub fn init(&self) -> Result<(Marker, bool), TargetError> {
        let root = self.open_root_handle()?;
        if let Some(d) = self.read_marker(&root)? {
            if d.target_id != self.spec.id {
                return Err(TargetError::Permanent(format!(
                    "target {}: {}/{MARKER_NAME} belongs to {d}; exportd does not take over another target's archive (remove the marker by hand if you mean to)",
                    self.spec.id,
                    self.root.display()
                )));
            }
            self.save_known(&d)?;
            return Ok((d, false));
        }
        let m = Marker::new(&self.spec.id, &self.env.agent_id)
            .map_err(|e| self.unavailable(e.to_string()))?;
        let placed = self.write_marker(&root, &m)?;
        self.save_known(&placed)?;
        Ok((placed.clone(), placed == m))
    }

    /// The temp folder, created when missing; refused when it is a symlink,
    /// not a folder, or on another file system than the root.
    fn tmp_dir(&self, root: &File) -> Result<File, TargetError> {
        let at = self.root.join(TMP_DIR);
        let (d, created) = handle::ensure_dir(root, TMP_DIR).map_err(|e| {
            self.unavailable(format!(
                "{} cannot be used as the temp folder: {e}{}",
                at.display(),
                if matches!(e.raw_os_error(), Some(40) | Some(20)) {
                    " (it is a symlink or not a folder: exportd never follows it; remove it)"
                } else {
                    ""
                }
            ))
        })?;
        if created {
            root.sync_all()
                .map_err(|e| self.io_err("fsync folder", &self.root, e))?;
        }
        let same_fs = match (handle::identity(root), handle::identity(&d)) {
            (Ok(a), Ok(b)) => a.0 == b.0,
            _ => false,
        };
        if !same_fs {
            return Err(self.unavailable(format!(
                "{} is on another file system than the root (a mount?); remove it",
                at.display()
            )));
        }
        Ok(d)
    }

    /// Removes temp files left by processes that are gone (a crash mid-copy),
    /// of this agent or of another one sharing the archive. A temp is named
    /// `<agent>.<nonce>.<seq>` (the nonce random per process start) and is
    /// flocked by its writer from its creation until it is renamed to its
    /// final name: only temps whose lock can be taken (the writer is gone)
    /// are removed; a temp whose lock is held, or on a file system that
    /// cannot lock, is kept. Nothing is done unless the root proves to be
    /// this target's archive and `.exportd-tmp` is a real folder on it (never
    /// a symlink); only names exportd makes are removed, through the folder's
    /// handle.
    pub fn remove_stale_temps(&self) -> usize {
        let root = match self.open_root() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(target = %self.spec.id, "stale temps not cleaned: {e}");
                return 0;
            }
        };
        let at = self.root.join(TMP_DIR);
        let tmp = match handle::open_dir_beneath(&root, TMP_DIR) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return 0,
            Err(e) => {
                tracing::warn!(target = %self.spec.id, "stale temps not cleaned: {}: {e} (exportd never follows a link there)", at.display());
                return 0;
            }
        };
        match (handle::identity(&root), handle::identity(&tmp)) {
            (Ok(a), Ok(b)) if a.0 == b.0 => {}
            _ => {
                tracing::warn!(target = %self.spec.id, "stale temps not cleaned: {} is on another file system", at.display());
                return 0;
            }
        }
        let names = match handle::list(&tmp) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(target = %self.spec.id, "stale temps not cleaned: listing {} failed: {e}", at.display());
                return 0;
            }
        };
        let mut removed = 0;
        for n in names.iter().filter(|n| temp_owner(n).is_some()) {
            let f = match handle::open_existing(&tmp, n) {
                Ok(handle::Existing::File(f)) => f,
                _ => continue, // gone, not a regular file, unreadable: keep
            };
            // Taken: its writer is gone. Held while the name is removed.
            if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
            {
                continue;
            }
            if handle::remove_in(&tmp, n).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Opens (creating as needed) `folder` below the root, fsyncing each new
    /// folder into its parent. A symlink or non-folder on the way is refused.
    fn ensure_folder(&self, root: &File, folder: &str) -> Result<File, TargetError> {
        let mut dir: Option<File> = None;
        let mut at = self.root.clone();
        for comp in folder.split('/').filter(|c| !c.is_empty()) {
            at.push(comp);
            let parent = dir.as_ref().unwrap_or(root);
            let (d, created) = match handle::ensure_dir(parent, comp) {
                Ok(x) => x,
                Err(e) if matches!(e.raw_os_error(), Some(20) | Some(40)) => {
                    return Err(TargetError::Permanent(format!(
                        "{} exists and is not a folder (symlinks below a target root are never followed)",
                        at.display()
                    )));
                }
                Err(e) => return Err(self.io_err("create folder", &at, e)),
            };
            if created {
                parent.sync_all().map_err(|e| {
                    self.io_err("fsync folder", at.parent().unwrap_or(&self.root), e)
                })?;
            }
            dir = Some(d);
        }
        match dir {
            Some(d) => Ok(d),
            None => root
                .try_clone()
                .map_err(|e| self.io_err("open", &self.root, e)),
        }
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
    Ok(h.finalize().into())
}

impl Target for FsTarget {
    fn spec(&self) -> &TargetSpec {
        &self.spec
    }

    fn put(&self, req: &PutRequest<'_>, src: &dyn Source) -> Result<PutReceipt, TargetError> {
        let root = self.open_root()?;
        let dir_path = self.root.join(req.folder);
        let final_path = dir_path.join(req.name);
        if !handle::is_component(req.name) {
            return Err(TargetError::Permanent(format!(
                "{}: {:?} is not a plain file name",
                dir_path.display(),
                req.name
            )));
        }
        let tmp = self.tmp_dir(&root)?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp_name = format!("{}.{n}", self.tag);
        let tmp_path = self.root.join(TMP_DIR).join(&tmp_name);

        let out = handle::create_new(&tmp, &tmp_name, 0o640)
            .map_err(|e| self.io_err("create", &tmp_path, e))?;
        // Held until the temp is renamed (or removed): cleanup by any
        // process sharing the archive leaves it alone meanwhile.
        match rustix::fs::flock(&out, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if is_nolock(e) => {}
            Err(e) => {
                let _ = handle::remove_in(&tmp, &tmp_name);
                return Err(self.io_err("lock", &tmp_path, e.into()));
            }
        }

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
        let (sha256, sha512, bytes) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = handle::remove_in(&tmp, &tmp_name);
                return Err(e);
            }
        };
        // The record folder is created only once a complete file is ready
        // to be renamed into it: a copy that fails or is killed while its
        // first file is written leaves no empty record folder.
        let dir = match self.ensure_folder(&root, req.folder) {
            Ok(d) => d,
            Err(e) => {
                let _ = handle::remove_in(&tmp, &tmp_name);
                return Err(e);
            }
        };

        let placed = match handle::rename_noreplace_at(&tmp, &tmp_name, &dir, req.name) {
            Ok(p) => p,
            Err(e) => {
                let _ = handle::remove_in(&tmp, &tmp_name);
                return Err(self.io_err("rename into", &final_path, e));
            }
        };
        drop(out); // releases the temp's lock
        if !placed {
            let _ = handle::remove_in(&tmp, &tmp_name);
            let mut existing = match handle::open_existing(&dir, req.name)
                .map_err(|e| self.io_err("open", &final_path, e))?
            {
                handle::Existing::File(f) => f,
                handle::Existing::Missing => {
                    return Err(TargetError::Transient(format!(
                        "{} vanished while it was being compared; retried",
                        final_path.display()
                    )));
                }
                handle::Existing::NotRegular(what) => {
                    return Err(TargetError::Conflict {
                        location: final_path.display().to_string(),
                        existing: format!(
                            "none: it is {what}, not a regular file; exportd never reads, follows or replaces it"
                        ),
                    });
                }
            };
            let got = sha256_of(&mut existing).map_err(|e| self.io_err("read", &final_path, e))?;
            if got != sha256 {
                return Err(TargetError::Conflict {
                    location: final_path.display().to_string(),
                    existing: hex::encode(got),
                });
            }
            // The same bytes may be only in the page cache (a run that
            // crashed before its fsync): make them durable before they count.
            existing
                .sync_all()
                .map_err(|e| self.io_err("fsync", &final_path, e))?;
            dir.sync_all()
                .map_err(|e| self.io_err("fsync folder", &dir_path, e))?;
            return Ok(PutReceipt {
                sha256,
                sha512,
                bytes,
                already_present: true,
                detail: None,
            });
        }
        dir.sync_all()
            .map_err(|e| self.io_err("fsync folder", &dir_path, e))?;
        Ok(PutReceipt {
            sha256,
            sha512,
            bytes,
            already_present: false,
            detail: None,
        })
    }

    fn exists(&self, folder: &str, name: &str) -> Result<bool, TargetError> {
        let root = self.open_root()?;
        let p = self.root.join(folder).join(name);
        let dir = match handle::open_dir_beneath(&root, folder) {
            Ok(d) => d,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || matches!(e.raw_os_error(), Some(20) | Some(40) | Some(18)) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(self.io_err("inspect", &p, e)),
        };
        handle::exists_in(&dir, name).map_err(|e| self.io_err("inspect", &p, e))
    }

    fn recover(&self) -> usize {
        self.remove_stale_temps()
    }

    fn check_available(&self) -> Result<(), TargetError> {
        self.open_root().map(|_| ())
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
        FsTarget::new(&TargetSpec::fs("t", root), &env(root))
    }

    fn env(root: &Path) -> TargetEnv {
        TargetEnv {
            state_dir: root.with_extension("state"),
            agent_id: "a1".into(),
        }
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
        assert_eq!(temps(&d), 0, "no temp left");
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
        assert_eq!(temps(&d), 0);
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

    /// Files in the temp folder.
    fn temps(root: &Path) -> usize {
        fs::read_dir(root.join(TMP_DIR)).unwrap().count()
    }

    fn req<'a>(folder: &'a str, name: &'a str) -> PutRequest<'a> {
        PutRequest {
            folder,
            name,
            want_sha512: false,
        }
    }

    #[test]
    fn missing_root_is_unavailable_and_never_created() {
        let d = tempdir().join("new-archive");
        let t = target(&d);
        let err = t.put(&req("f", "y"), &BytesSource(b"1")).unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!d.exists(), "the root was created");
    }

    #[test]
    fn a_plain_folder_is_adopted_then_must_keep_its_marker() {
        let d = tempdir();
        let t = target(&d);
        t.put(&req("f", "y"), &BytesSource(b"1")).unwrap();
        let m = Marker::parse(&fs::read(d.join(MARKER_NAME)).unwrap()).unwrap();
        assert_eq!(m.target_id, "t");
        assert_eq!(m.created_by, "a1");
        assert_eq!(fs::read(t.marker_copy_path()).unwrap(), m.to_bytes());
        // The volume "unmounted": the marker is gone; nothing is written.
        fs::remove_file(d.join(MARKER_NAME)).unwrap();
        let err = t.put(&req("g", "y"), &BytesSource(b"1")).unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string().contains("no .exportd-target marker"),
            "{err}"
        );
        assert!(!d.join("g").exists());
        // A fresh process with the same state_dir says the same.
        let t2 = target(&d);
        assert!(t2.put(&req("g", "y"), &BytesSource(b"1")).is_err());
        assert!(!d.join("g").exists());
        // Another target's marker: unavailable too.
        let other = Marker::new("other", "a1").unwrap();
        fs::write(d.join(MARKER_NAME), other.to_bytes()).unwrap();
        let err = t2.put(&req("g", "y"), &BytesSource(b"1")).unwrap_err();
        assert!(err.to_string().contains("wrong volume"), "{err}");
        // Back: the right marker, the backlog drains.
        fs::write(d.join(MARKER_NAME), m.to_bytes()).unwrap();
        t2.put(&req("g", "y"), &BytesSource(b"1")).unwrap();
        assert_eq!(fs::read(d.join("g/y")).unwrap(), b"1");
    }

    #[test]
    fn init_keeps_this_targets_marker_and_refuses_anothers() {
        let d = tempdir();
        let t = target(&d);
        let (m, written) = t.init().unwrap();
        assert!(written);
        let (m2, written) = target(&d).init().unwrap();
        assert!(!written);
        assert_eq!(m, m2);
        fs::write(
            d.join(MARKER_NAME),
            Marker::new("x", "b").unwrap().to_bytes(),
        )
        .unwrap();
        assert!(t.init().is_err());
    }

    #[test]
    fn symlinked_folders_and_fifos_are_never_followed() {
        let d = tempdir();
        let outside = tempdir();
        let t = target(&d);
        t.put(&req("a", "x"), &BytesSource(b"1")).unwrap();
        std::os::unix::fs::symlink(&outside, d.join("link")).unwrap();
        let err = t.put(&req("link/b", "x"), &BytesSource(b"1")).unwrap_err();
        assert!(err.to_string().contains("not a folder"), "{err}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert!(!t.exists("link", "x").unwrap());
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            d.join("a/fifo"),
            rustix::fs::Mode::from_raw_mode(0o644),
        )
        .unwrap();
        let err = t.put(&req("a", "fifo"), &BytesSource(b"1")).unwrap_err();
        assert!(matches!(err, TargetError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("FIFO"), "{err}");
        std::os::unix::fs::symlink(outside.join("z"), d.join("a/sl")).unwrap();
        let err = t.put(&req("a", "sl"), &BytesSource(b"1")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(!outside.join("z").exists());
    }

    #[test]
    fn temp_names_are_parsed_strictly() {
        assert_eq!(
            temp_owner("it.0123456789abcdef.7"),
            Some(("it.0123456789abcdef", "7"))
        );
        for n in [
            "it.0123456789abcdef.lock",
            "123-4",
            "it.0123.7",
            "it.0123456789abcdef.",
            "a b.0123456789abcdef.1",
            ".0123456789abcdef.1",
            "x",
        ] {
            assert_eq!(temp_owner(n), None, "{n}");
        }
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
