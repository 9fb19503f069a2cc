//! The compiled policy model: an immutable snapshot file in `state_dir`,
//! opened with a memory map, with allocation-free extension lookups. Never
//! changed in place: a new model is a new file, renamed over the old.
//!
//! Layout (little endian):
//!
//! ```text
//! 0   magic "EXSNAP03"
//! 8   u32 header_len     12 u32 n_ext     16 u32 n_users
//! 20  u32 crc32 of bytes [28..]           24 u32 n_mail
//! 28  header: JSON {version, targets, policies}
//!     padding to a multiple of 4
//!     ext index: n_ext x [u64 hash][u32 user][u32 str_off], sorted by hash
//!     user index: n_users x [u32 off]
//!     id index: n_users x [u64 hash][u32 user], sorted by hash, then id
//!     mail index: n_mail x [u64 hash][u32 user] of the users with a mail
//!                 address (normalised), sorted by hash, then user
//!     blob: postcard user records and postcard extension strings
//! ```
//!
//! A lookup normalises the extension into a stack buffer, searches the hash
//! (interpolation, then halving: the hashes are uniform, so a lookup in a
//! large mapped index touches one or two pages, not one per halving),
//! compares the stored string and decodes the user record borrowing from
//! the map: no heap allocation. The id index finds a user by id the same
//! way (a delta's ids, without a pass over the users), and the mail index
//! finds the users of a mail address (a compliance export's participants).
//! Files of an older format (`EXSNAP01` without the id index, `EXSNAP02`
//! without the mail index) are not opened: they are compiled again from the
//! model in force, as any file that does not open. A swap of the model is a swap of one
//! `Arc<Snapshot>`: a record is matched against the old or the new, never a mix.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::export::layout::Template;
use crate::policy::model::{
    MAX_EXTENSION_LEN, MAX_POLICIES_PER_USER, Model, Policy, TargetSpec, User, normalize_extension,
    normalize_extension_into,
};
use crate::policy::overlay::{Effect, Overlay};

pub(crate) const MAGIC: &[u8; 8] = b"EXSNAP03";
/// Bytes of one id index entry.
pub(crate) const ID_ENTRY: usize = 12;

/// One id index entry: the id's FNV-1a hash, then the user's index.
pub(crate) fn id_entry(hash: u64, user: u32) -> [u8; ID_ENTRY] {
    let mut e = [0u8; ID_ENTRY];
    e[..8].copy_from_slice(&hash.to_le_bytes());
    e[8..].copy_from_slice(&user.to_le_bytes());
    e
}
pub(crate) const FIXED: usize = 28;

/// The mail index's key of a user's mail address: normalised as an
/// extension is (a `mailto:` scheme dropped, lower case); `None` when the
/// user has none.
pub(crate) fn mail_key(email: &str) -> Option<String> {
    let n = normalize_extension(email);
    (!n.is_empty()).then_some(n)
}

/// The policy ids of one user (bounded, allocation-free).
pub type PolicyList = heapless::Vec<u16, MAX_POLICIES_PER_USER>;

/// User `u`'s policies as indexes (`index` maps a policy id to its index),
/// checked as every intake path checks them: an empty id, more than
/// [`MAX_POLICIES_PER_USER`] policies and each unknown policy are reported,
/// one message each, through `report`.
pub(crate) fn checked_policies(
    u: &crate::policy::model::User,
    index: impl Fn(&str) -> Option<u16>,
    report: &mut dyn FnMut(String),
) -> PolicyList {
    if u.id.is_empty() {
        report("a user has an empty id".to_string());
    }
    if u.policies.len() > MAX_POLICIES_PER_USER {
        report(format!(
            "user {:?} has {} policies; at most {MAX_POLICIES_PER_USER}",
            u.id,
            u.policies.len()
        ));
    }
    let mut pl = PolicyList::new();
    for p in &u.policies {
        match index(p) {
            Some(i) => {
                let _ = pl.push(i);
            }
            None => report(format!("user {:?} names unknown policy {p:?}", u.id)),
        }
    }
    pl
}

/// Extension `x` of user `u` normalised, or None (reported through
/// `report`) when it is empty or longer than [`MAX_EXTENSION_LEN`] once
/// normalised: the check every intake path makes.
pub(crate) fn checked_extension(
    u: &crate::policy::model::User,
    x: &str,
    report: &mut dyn FnMut(String),
) -> Option<String> {
    use crate::policy::model::{MAX_EXTENSION_LEN, normalize_extension};
    let n = normalize_extension(x);
    if n.is_empty() {
        report(format!("user {:?} has an empty extension {x:?}", u.id));
        None
    } else if n.len() > MAX_EXTENSION_LEN {
        report(format!(
            "user {:?}: extension {x:?} is longer than {MAX_EXTENSION_LEN} bytes",
            u.id
        ));
        None
    } else {
        Some(n)
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct UserRec<'a> {
    #[serde(borrow)]
    pub(crate) id: &'a str,
    #[serde(borrow)]
    pub(crate) name: &'a str,
    #[serde(borrow)]
    pub(crate) email: &'a str,
    pub(crate) policies: PolicyList,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) version: u64,
    pub(crate) targets: Vec<TargetSpec>,
    pub(crate) policies: Vec<Policy>,
    /// What the snapshot was compiled from (e.g. `config:<sha256>`), so an
    /// unchanged model is not parsed and compiled again at startup.
    #[serde(default)]
    pub(crate) source: Option<String>,
}

/// A user found by extension, borrowing from the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserView<'a> {
    /// Directory id.
    pub id: &'a str,
    /// Display name.
    pub name: &'a str,
    /// Mail address.
    pub email: &'a str,
    /// Indexes into [`Snapshot::policies`].
    pub policies: PolicyList,
}

/// A policy with its template parsed.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// The policy as configured.
    pub policy: Policy,
    /// Its path template.
    pub template: Template,
    /// Indexes into [`Snapshot::targets`].
    pub targets: Vec<usize>,
}

/// Why a snapshot could not be built or opened.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// I/O on the snapshot file.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The file is not a valid snapshot (it is rebuilt from the model).
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
    /// The model does not validate.
    #[error("model is invalid: {0}")]
    Invalid(String),
}

impl From<crate::policy::intake::IntakeError> for SnapshotError {
    fn from(e: crate::policy::intake::IntakeError) -> Self {
        match e {
            crate::policy::intake::IntakeError::Io { what, path, source } => SnapshotError::Io {
                path: format!("{what} {}", path.display()),
                source,
            },
            e => SnapshotError::Invalid(e.to_string()),
        }
    }
}

enum Backing {
    /// The mapped file.
    Map(memmap2::Mmap),
    Heap(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Heap(v) => v,
        }
    }
}

/// An opened snapshot (a clone shares the mapped file).
#[derive(Clone)]
pub struct Snapshot {
    /// The base file, shared by the snapshots a delta overlay derives from it.
    data: std::sync::Arc<Backing>,
    /// Users deltas kept beside the base (see [`crate::policy::overlay`]).
    overlay: Option<std::sync::Arc<Overlay>>,
    version: u64,
    targets: Vec<TargetSpec>,
    policies: Vec<CompiledPolicy>,
    source: Option<String>,
    n_ext: usize,
    n_users: usize,
    ext_at: usize,
    users_at: usize,
    ids_at: usize,
    n_mail: usize,
    mails_at: usize,
    blob_at: usize,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("source", &self.source)
            .field("users", &self.user_count())
            .field("overlay", &self.overlay.as_ref().map(|o| o.touched()))
            .finish()
    }
}

pub(crate) fn fnv1a(s: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in s {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The first index in `0..n` of a table sorted by hash whose hash
/// (`key(i)`) is `>= h` (`n` when none is): the position the uniform hashes
/// predict, then doubling steps from there until `h` is bracketed, then
/// halving. A search touches the entries near its guess (one or two pages
/// of a mapped index) instead of one page per halving; the worst case
/// (hashes far from uniform) is still O(log n) probes. `None` only when an
/// entry cannot be read.
pub(crate) fn lower_bound(key: impl Fn(usize) -> Option<u64>, n: usize, h: u64) -> Option<usize> {
    if n == 0 {
        return Some(0);
    }
    let (first, last) = (key(0)?, key(n - 1)?);
    if h <= first {
        return Some(0);
    }
    if h > last {
        return Some(n);
    }
    // Now first < h <= last, so n >= 2. Invariant: key(i) < h for i < lo,
    // key(i) >= h for i >= hi.
    let (mut lo, mut hi) = (1usize, n - 1);
    let guess = (u128::from(h - first) * (n - 1) as u128 / u128::from(last - first)) as usize;
    let g = guess.clamp(lo, hi);
    let mut step = 1usize;
    if key(g)? >= h {
        hi = g;
        while hi > lo {
            let p = hi.saturating_sub(step).max(lo);
            if key(p)? >= h {
                hi = p;
                step = step.saturating_mul(2);
            } else {
                lo = p + 1;
                break;
            }
        }
    } else {
        lo = g + 1;
        while lo < hi {
            let p = (lo + step - 1).min(hi - 1);
            if key(p)? < h {
                lo = p + 1;
                step = step.saturating_mul(2);
            } else {
                hi = p;
                break;
            }
        }
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if key(mid)? < h {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// Compiles a validated model into snapshot bytes.
pub fn compile(model: &Model) -> Result<Vec<u8>, SnapshotError> {
    compile_from(model, None)
}

/// [`compile`], recording what the model came from (see [`Snapshot::source`]).
pub fn compile_from(model: &Model, source: Option<&str>) -> Result<Vec<u8>, SnapshotError> {
    let errs = model.validate();
    if let Some(e) = errs.first() {
        return Err(SnapshotError::Invalid(format!(
            "{} ({} problems)",
            e,
            errs.len()
        )));
    }
    let header = serde_json::to_vec(&Header {
        version: model.version,
        targets: model.targets.clone(),
        policies: model.policies.clone(),
        source: source.map(str::to_string),
    })
    .map_err(|e| SnapshotError::Invalid(e.to_string()))?;

    let mut blob: Vec<u8> = Vec::new();
    let mut user_offs: Vec<u32> = Vec::with_capacity(model.users.len());
    let mut exts: Vec<(u64, u32, u32, String)> = Vec::new();
    for (ui, u) in model.users.iter().enumerate() {
        let mut policies = PolicyList::new();
        for p in &u.policies {
            if let Some(i) = model.policies.iter().position(|x| &x.id == p) {
                let _ = policies.push(i as u16);
            }
        }
        let rec = UserRec {
            id: &u.id,
            name: &u.name,
            email: &u.email,
            policies,
        };
        user_offs.push(blob.len() as u32);
        let bytes =
            postcard::to_allocvec(&rec).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        blob.extend_from_slice(&bytes);
        for x in &u.extensions {
            let n = normalize_extension(x);
            exts.push((fnv1a(n.as_bytes()), ui as u32, 0, n));
        }
    }
    exts.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.3.cmp(&b.3)));
    // The id index: sorted as the streaming compiler's external sort sorts.
    let mut ids: Vec<(u64, &str, u32)> = model
        .users
        .iter()
        .enumerate()
        .map(|(i, u)| (fnv1a(u.id.as_bytes()), u.id.as_str(), i as u32))
        .collect();
    ids.sort_unstable();
    // The mail index: sorted by hash, then user (as the other writers do).
    let mut mails: Vec<(u64, u32)> = model
        .users
        .iter()
        .enumerate()
        .filter_map(|(i, u)| mail_key(&u.email).map(|m| (fnv1a(m.as_bytes()), i as u32)))
        .collect();
    mails.sort_unstable();
    for e in exts.iter_mut() {
        e.2 = blob.len() as u32;
        let bytes = postcard::to_allocvec(e.3.as_str())
            .map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        blob.extend_from_slice(&bytes);
    }
    if blob.len() > u32::MAX as usize {
        return Err(SnapshotError::Invalid(
            "model too large for a snapshot".into(),
        ));
    }

    let mut out = Vec::with_capacity(
        FIXED
            + header.len()
            + exts.len() * 16
            + user_offs.len() * (4 + ID_ENTRY)
            + mails.len() * ID_ENTRY
            + blob.len()
            + 4,
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&(exts.len() as u32).to_le_bytes());
    out.extend_from_slice(&(user_offs.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&(mails.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    for (h, u, off, _) in &exts {
        out.extend_from_slice(&h.to_le_bytes());
        out.extend_from_slice(&u.to_le_bytes());
        out.extend_from_slice(&off.to_le_bytes());
    }
    for off in &user_offs {
        out.extend_from_slice(&off.to_le_bytes());
    }
    for (h, _, u) in &ids {
        out.extend_from_slice(&id_entry(*h, *u));
    }
    for (h, u) in &mails {
        out.extend_from_slice(&id_entry(*h, *u));
    }
    out.extend_from_slice(&blob);
    let crc = crc32fast::hash(&out[FIXED..]);
    out[20..24].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Writes snapshot bytes to `path` atomically (temp, fsync, rename, dir fsync).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(d) = path.parent() {
        crate::sink::fs::sync_dir(d)?;
    }
    Ok(())
}

/// CRC-32 of the file's bytes after the fixed header, read in 64 KiB steps.
fn stream_crc(f: &std::fs::File) -> io::Result<u32> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = f;
    f.seek(SeekFrom::Start(FIXED as u64))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(h.finalize())
}

#[allow(unsafe_code)]
fn map_file(f: &std::fs::File) -> io::Result<memmap2::Mmap> {
    // SAFETY: the snapshot file is private to the agent (state_dir) and is
    // only ever replaced by rename, never modified in place, so the mapped
    // pages cannot change under us.
    unsafe { memmap2::Mmap::map(f) }
}

impl Snapshot {
    /// Opens a snapshot file with a memory map.
    pub fn open(path: &Path) -> Result<Snapshot, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: path.display().to_string(),
            source,
        };
        let f = std::fs::File::open(path).map_err(io)?;
        // The checksum is computed with read(2) through a small buffer, not
        // through the map: a 100,000-user snapshot is ~14 MiB, and reading it
        // via the map would make every page resident in this process.
        let crc = stream_crc(&f).map_err(io)?;
        // Drop the file from the page cache (it was just read, or written
        // by the compiler, in large folios): with MADV_RANDOM, lookups then
        // bring in single pages, and a lookup maps a few KiB, not a 2 MiB
        // folio. Clean pages only; nothing is lost.
        let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
        let map = map_file(&f).map_err(io)?;
        // Lookups touch a few pages at random: no read-ahead around them.
        let _ = map.advise(memmap2::Advice::Random);
        // Nor a whole 2 MiB folio mapped at once for a 16-byte index entry
        // (large page-cache folios can be PMD-mapped otherwise).
        let _ = map.advise(memmap2::Advice::NoHugePage);
        if u32_at(&map, 20) != Some(crc) {
            return Err(SnapshotError::Corrupt("checksum mismatch".into()));
        }
        Snapshot::from_backing(Backing::Map(map), false)
    }

    /// Builds an in-memory snapshot (tests, `check-config`).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Snapshot, SnapshotError> {
        Snapshot::from_backing(Backing::Heap(bytes), true)
    }

    /// Compiles a model and opens it in memory.
    pub fn from_model(model: &Model) -> Result<Snapshot, SnapshotError> {
        Snapshot::from_bytes(compile(model)?)
    }

    fn from_backing(data: Backing, check_crc: bool) -> Result<Snapshot, SnapshotError> {
        let b = data.bytes();
        let bad = |s: &str| SnapshotError::Corrupt(s.to_string());
        if b.len() < FIXED || &b[..8] != MAGIC {
            return Err(bad("bad magic"));
        }
        let hl = u32_at(b, 8).ok_or_else(|| bad("short"))? as usize;
        let n_ext = u32_at(b, 12).ok_or_else(|| bad("short"))? as usize;
        let n_users = u32_at(b, 16).ok_or_else(|| bad("short"))? as usize;
        let crc = u32_at(b, 20).ok_or_else(|| bad("short"))?;
        let n_mail = u32_at(b, 24).ok_or_else(|| bad("short"))? as usize;
        if check_crc && crc32fast::hash(&b[FIXED..]) != crc {
            return Err(bad("checksum mismatch"));
        }
        let header: Header =
            serde_json::from_slice(b.get(FIXED..FIXED + hl).ok_or_else(|| bad("header"))?)
                .map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        let ext_at = (FIXED + hl).div_ceil(4) * 4;
        let users_at = ext_at + n_ext * 16;
        let ids_at = users_at + n_users * 4;
        let mails_at = ids_at + n_users * ID_ENTRY;
        let blob_at = mails_at + n_mail * ID_ENTRY;
        if blob_at > b.len() {
            return Err(bad("index beyond end"));
        }
        let mut policies = Vec::with_capacity(header.policies.len());
        for p in header.policies {
            let template = Template::parse(
                p.settings
                    .path_template
                    .as_deref()
                    .unwrap_or(crate::export::layout::DEFAULT_TEMPLATE),
            )
            .map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
            let targets = p
                .targets
                .iter()
                .filter_map(|t| header.targets.iter().position(|x| &x.id == t))
                .collect();
            policies.push(CompiledPolicy {
                policy: p,
                template,
                targets,
            });
        }
        Ok(Snapshot {
            data: std::sync::Arc::new(data),
            overlay: None,
            version: header.version,
            targets: header.targets,
            policies,
            source: header.source,
            n_ext,
            n_users,
            ext_at,
            users_at,
            ids_at,
            n_mail,
            mails_at,
            blob_at,
        })
    }

    /// Drops this process's mappings of the snapshot's pages once a lookup
    /// is done. The pages stay in the page cache and fault back in on the
    /// next lookup; without this, lookups spread over 100,000 users would
    /// make the whole file (~14 MiB) resident in the agent over time.
    pub fn release_pages(&self) {
        if let Backing::Map(m) = &*self.data {
            #[allow(unsafe_code)]
            // SAFETY: a read-only shared mapping of a file that is never
            // modified in place: MADV_DONTNEED only drops page-table entries,
            // and the next access reads the same bytes from the page cache
            // (also while another thread is reading the map).
            let _ = unsafe { m.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }

    /// What the snapshot was compiled from, if recorded.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// The model version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Targets, in model order.
    pub fn targets(&self) -> &[TargetSpec] {
        &self.targets
    }

    /// Policies, in model order.
    pub fn policies(&self) -> &[CompiledPolicy] {
        &self.policies
    }

    /// Number of users (the base file's not hidden, plus the overlay's).
    pub fn user_count(&self) -> usize {
        match &self.overlay {
            Some(o) => self.n_users - o.hidden() as usize + o.live_users() as usize,
            None => self.n_users,
        }
    }

    /// Number of extensions. With a delta overlay: the base file's plus the
    /// overlay's (the base extensions of hidden users are still counted).
    pub fn extension_count(&self) -> usize {
        self.n_ext
            + self
                .overlay
                .as_ref()
                .map_or(0, |o| o.extension_count() as usize)
    }

    /// The delta overlay in force on top of the base file, if any.
    pub fn overlay(&self) -> Option<&Overlay> {
        self.overlay.as_deref()
    }

    /// This snapshot with a users delta applied beside the base file (no
    /// file written): checked against the resulting model by lookups in
    /// the base (see [`Overlay::apply`]). The result shares the base file's
    /// mapping; `self` is unchanged (a record in flight keeps its model).
    pub fn with_delta(
        &self,
        version: u64,
        source: Option<String>,
        upsert: &[User],
        remove: &[String],
    ) -> Result<(Snapshot, Effect), Vec<String>> {
        let empty = Overlay::default();
        let prior = self.overlay.as_deref().unwrap_or(&empty);
        let (overlay, effect) = prior.apply(self, upsert, remove)?;
        Ok((
            Snapshot {
                data: self.data.clone(),
                overlay: Some(std::sync::Arc::new(overlay)),
                version,
                targets: self.targets.clone(),
                policies: self.policies.clone(),
                source,
                n_ext: self.n_ext,
                n_users: self.n_users,
                ext_at: self.ext_at,
                users_at: self.users_at,
                ids_at: self.ids_at,
                n_mail: self.n_mail,
                mails_at: self.mails_at,
                blob_at: self.blob_at,
            },
            effect,
        ))
    }

    /// The ids among `ids` that users of the base file have: a search of
    /// the id index per id (a few pages each), not a pass over the users.
    /// The pages touched are released afterwards.
    pub(crate) fn ids_among<'i>(
        &self,
        ids: &std::collections::HashSet<&'i str>,
    ) -> std::collections::HashSet<&'i str> {
        let found = ids
            .iter()
            .filter(|id| self.find_id(id).is_some())
            .copied()
            .collect();
        self.release_pages();
        found
    }

    /// The index of the base file's user with this id, if there is one.
    pub(crate) fn find_id(&self, id: &str) -> Option<usize> {
        let h = fnv1a(id.as_bytes());
        let b = self.data.bytes();
        let entry = |i: usize| self.ids_at + i * ID_ENTRY;
        let mut i = lower_bound(|i| u64_at(b, entry(i)), self.n_users, h)?;
        while i < self.n_users && u64_at(b, entry(i))? == h {
            let u = u32_at(b, entry(i) + 8)? as usize;
            if self.user(u)?.id == id {
                return Some(u);
            }
            i += 1;
        }
        None
    }

    /// The user in force with this id: the overlay's (or none, when the
    /// overlay removes it), else the base file's.
    pub fn user_by_id(&self, id: &str) -> Option<UserView<'_>> {
        if let Some(o) = &self.overlay {
            if o.hides(id) {
                return o.user_by_id(id);
            }
        }
        self.user(self.find_id(id)?)
    }

    /// Calls `f` with each user in force whose mail address is `raw` (after
    /// normalisation, see [`mail_key`]): the overlay's first, then the base
    /// file's not hidden by it, until `f` returns `true`. Returns whether it
    /// did. No heap allocation for addresses up to the extension length.
    pub fn users_by_mail(&self, raw: &str, f: &mut dyn FnMut(UserView<'_>) -> bool) -> bool {
        let mut n: heapless::String<MAX_EXTENSION_LEN> = heapless::String::new();
        let long;
        let n: &str = if normalize_extension_into(raw, &mut n) {
            &n
        } else {
            long = normalize_extension(raw);
            &long
        };
        if n.is_empty() {
            return false;
        }
        if let Some(o) = &self.overlay {
            if o.users_by_mail(n, f) {
                return true;
            }
        }
        let h = fnv1a(n.as_bytes());
        let b = self.data.bytes();
        let entry = |i: usize| self.mails_at + i * ID_ENTRY;
        let Some(mut i) = lower_bound(|i| u64_at(b, entry(i)), self.n_mail, h) else {
            return false;
        };
        while i < self.n_mail && u64_at(b, entry(i)) == Some(h) {
            let user = u32_at(b, entry(i) + 8).and_then(|u| self.user(u as usize));
            if let Some(u) = user {
                let hidden = self.overlay.as_ref().is_some_and(|o| o.hides(u.id));
                if !hidden && mail_key(u.email).as_deref() == Some(n) && f(u) {
                    return true;
                }
            }
            i += 1;
        }
        false
    }

    /// The `i`-th user of the base file (an overlay's users are not numbered).
    pub fn user(&self, i: usize) -> Option<UserView<'_>> {
        if i >= self.n_users {
            return None;
        }
        let b = self.data.bytes();
        let off = u32_at(b, self.users_at + i * 4)? as usize;
        let rec: UserRec<'_> = postcard::from_bytes(b.get(self.blob_at + off..)?).ok()?;
        Some(UserView {
            id: rec.id,
            name: rec.name,
            email: rec.email,
            policies: rec.policies,
        })
    }

    fn ext_str(&self, off: usize) -> Option<&str> {
        let b = self.data.bytes();
        postcard::from_bytes::<&str>(b.get(self.blob_at + off..)?).ok()
    }

    /// Finds the user a recorded extension belongs to. No heap allocation.
    pub fn lookup(&self, raw_extension: &str) -> Option<UserView<'_>> {
        let mut n: heapless::String<MAX_EXTENSION_LEN> = heapless::String::new();
        if !normalize_extension_into(raw_extension, &mut n) || n.is_empty() {
            return None;
        }
        match &self.overlay {
            None => self.lookup_normalised(&n),
            Some(o) => {
                if let Some(u) = o.lookup(&n) {
                    return Some(u);
                }
                self.lookup_normalised(&n).filter(|u| !o.hides(u.id))
            }
        }
    }

    /// Finds the user of the base file holding the normalised extension `n`
    /// (the overlay not consulted).
    pub(crate) fn lookup_normalised(&self, n: &str) -> Option<UserView<'_>> {
        let h = fnv1a(n.as_bytes());
        let b = self.data.bytes();
        let entry = |i: usize| -> Option<(u64, u32, u32)> {
            let at = self.ext_at + i * 16;
            Some((u64_at(b, at)?, u32_at(b, at + 8)?, u32_at(b, at + 12)?))
        };
        let mut i = lower_bound(|i| entry(i).map(|e| e.0), self.n_ext, h)?;
        while i < self.n_ext {
            let (eh, user, off) = entry(i)?;
            if eh != h {
                break;
            }
            if self.ext_str(off as usize)? == n {
                return self.user(user as usize);
            }
            i += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::*;

    pub(crate) fn model(n_users: usize) -> Model {
        Model {
            version: 7,
            targets: vec![TargetSpec::fs("nas1", "/mnt/a")],
            policies: vec![crate::policy::model::tests_support::policy_p()],
            users: (0..n_users)
                .map(|i| User {
                    id: format!("u-{i}"),
                    name: format!("User {i}"),
                    email: format!("u{i}@corp.example"),
                    extensions: vec![
                        format!("+1212{i:07}"),
                        format!("sip:U{i}@Corp.Example"),
                        format!("TRD-{i}"),
                    ],
                    policies: vec!["p".into()],
                })
                .collect(),
            ..Model::default()
        }
    }

    #[test]
    fn lookups() {
        let s = Snapshot::from_model(&model(1000)).unwrap();
        assert_eq!(s.version(), 7);
        assert_eq!(s.user_count(), 1000);
        assert_eq!(s.extension_count(), 3000);
        assert_eq!(s.lookup("+1 212 000 0042").unwrap().id, "u-42");
        assert_eq!(s.lookup("mailto:u999@corp.example").unwrap().id, "u-999");
        assert_eq!(s.lookup(" TRD-5 ").unwrap().email, "u5@corp.example");
        assert!(s.lookup("trd-5").is_none());
        assert!(s.lookup("+12120009999").is_none());
        assert!(s.lookup("").is_none());
        assert_eq!(s.lookup("TRD-5").unwrap().policies.as_slice(), &[0]);
        assert_eq!(s.policies()[0].targets, vec![0]);
    }

    fn mail_ids(s: &Snapshot, raw: &str) -> Vec<String> {
        let mut ids = Vec::new();
        s.users_by_mail(raw, &mut |u| {
            ids.push(u.id.to_string());
            false
        });
        ids.sort();
        ids
    }

    #[test]
    fn users_are_found_by_mail_and_id_through_a_delta_overlay() {
        let mut m = model(2000);
        // Some share a desk address, some have none.
        for (i, u) in m.users.iter_mut().enumerate() {
            if i % 100 == 1 {
                u.email = format!("Desk{}@Corp.Example", i % 3);
            }
            if i % 100 == 2 {
                u.email.clear();
            }
        }
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("snapshot.bin");
        write_atomic(&path, &compile(&m).unwrap()).unwrap();
        let s = Snapshot::open(&path).unwrap();
        assert_eq!(mail_ids(&s, "u42@corp.example"), ["u-42"]);
        assert_eq!(mail_ids(&s, " mailto:U1999@CORP.example"), ["u-1999"]);
        assert!(mail_ids(&s, "u2@corp.example").is_empty(), "u-2 has none");
        assert!(mail_ids(&s, "").is_empty());
        assert!(mail_ids(&s, "nobody@corp.example").is_empty());
        // desk1: i % 100 == 1 and i % 3 == 1.
        let want: Vec<String> = {
            let mut v: Vec<String> = (0..2000)
                .filter(|i| i % 100 == 1 && i % 3 == 1)
                .map(|i| format!("u-{i}"))
                .collect();
            v.sort();
            v
        };
        assert_eq!(mail_ids(&s, "desk1@corp.example"), want);
        // `f` returning true stops the walk.
        let mut calls = 0;
        assert!(s.users_by_mail("desk1@corp.example", &mut |_| {
            calls += 1;
            true
        }));
        assert_eq!(calls, 1);
        assert_eq!(s.user_by_id("u-7").unwrap().email, "u7@corp.example");
        assert!(s.user_by_id("u-7 ").is_none());

        // A delta: u-42 gets a new address, u-101 (desk2) is removed, a new
        // user takes desk1's address.
        let mut u42 = m.users[42].clone();
        u42.email = "renamed@corp.example".into();
        let new = User {
            id: "n-1".into(),
            name: String::new(),
            email: "DESK1@corp.example".into(),
            extensions: vec!["+19990000001".into()],
            policies: vec!["p".into()],
        };
        let (o, _) = s
            .with_delta(8, None, &[u42, new], &["u-101".into()])
            .unwrap();
        assert!(mail_ids(&o, "u42@corp.example").is_empty());
        assert_eq!(mail_ids(&o, "renamed@corp.example"), ["u-42"]);
        let mut want1 = want.clone();
        want1.push("n-1".into());
        want1.sort();
        assert_eq!(mail_ids(&o, "desk1@corp.example"), want1);
        assert!(!mail_ids(&o, "desk2@corp.example").contains(&"u-101".to_string()));
        assert!(mail_ids(&s, "desk2@corp.example").contains(&"u-101".to_string()));
        assert!(o.user_by_id("u-101").is_none());
        assert_eq!(o.user_by_id("u-42").unwrap().email, "renamed@corp.example");
        assert_eq!(o.user_by_id("n-1").unwrap().email, "DESK1@corp.example");
        assert_eq!(o.user_by_id("u-43").unwrap().email, "u43@corp.example");
        // The same model compiled gives the same answers.
        let mut m2 = m.clone();
        m2.users.retain(|u| u.id != "u-101");
        let c = Snapshot::from_model(&m2).unwrap();
        assert_eq!(
            mail_ids(&c, "desk2@corp.example"),
            mail_ids(&o, "desk2@corp.example")
        );
    }

    #[test]
    fn corruption_is_detected() {
        let mut b = compile(&model(10)).unwrap();
        let n = b.len();
        b[n - 3] ^= 0x40;
        assert!(matches!(
            Snapshot::from_bytes(b),
            Err(SnapshotError::Corrupt(_))
        ));
        assert!(Snapshot::from_bytes(b"EXSNAP03".to_vec()).is_err());
        // A file of a format before the id index or the mail index is not
        // opened (it is compiled again from the model in force).
        for magic in [b"EXSNAP01", b"EXSNAP02"] {
            let mut old = compile(&model(10)).unwrap();
            old[..8].copy_from_slice(magic);
            assert!(matches!(
                Snapshot::from_bytes(old),
                Err(SnapshotError::Corrupt(_))
            ));
        }
    }

    #[test]
    fn base_ids_are_found_in_a_mapped_file_and_in_memory() {
        let d = std::env::temp_dir().join(format!("exportd-snap-ids-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("snapshot.bin");
        // More than one 64 KiB buffer of user records.
        let bytes = compile(&model(3000)).unwrap();
        write_atomic(&p, &bytes).unwrap();
        let want: std::collections::HashSet<&str> = ["u-0", "u-1500", "u-2999", "u-3000", "x"]
            .into_iter()
            .collect();
        for s in [
            Snapshot::open(&p).unwrap(),
            Snapshot::from_bytes(bytes).unwrap(),
        ] {
            let mut got: Vec<&str> = s.ids_among(&want).into_iter().collect();
            got.sort();
            assert_eq!(got, vec!["u-0", "u-1500", "u-2999"]);
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn lower_bound_agrees_with_a_plain_search() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for n in [0usize, 1, 2, 3, 5, 64, 1000, 4097] {
            // Uniform, clustered in the low bits, and few distinct values.
            for skew in 0..3 {
                let mut v: Vec<u64> = (0..n)
                    .map(|_| match skew {
                        0 => next(),
                        1 => next() >> 40,
                        _ => next() % 7,
                    })
                    .collect();
                v.sort_unstable();
                let probes: Vec<u64> = v
                    .iter()
                    .copied()
                    .chain(v.iter().map(|x| x.wrapping_add(1)))
                    .chain((0..50).map(|_| next()))
                    .chain([0, 1, u64::MAX])
                    .collect();
                for h in probes {
                    let want = v.partition_point(|&x| x < h);
                    let got = lower_bound(|i| v.get(i).copied(), v.len(), h);
                    assert_eq!(got, Some(want), "n={n} skew={skew} h={h}");
                }
            }
        }
    }

    #[test]
    fn users_are_found_by_id() {
        let s = Snapshot::from_model(&model(5000)).unwrap();
        for i in [0, 1, 2500, 4999] {
            assert_eq!(s.find_id(&format!("u-{i}")), Some(i));
        }
        assert_eq!(s.find_id("u-5000"), None);
        assert_eq!(s.find_id(""), None);
        let empty = Snapshot::from_model(&model(0)).unwrap();
        assert_eq!(empty.find_id("u-0"), None);
    }

    #[test]
    fn file_round_trip_with_mmap() {
        let d = std::env::temp_dir().join(format!("exportd-snap-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("snapshot.bin");
        write_atomic(&p, &compile(&model(50)).unwrap()).unwrap();
        let s = Snapshot::open(&p).unwrap();
        assert_eq!(s.lookup("TRD-49").unwrap().id, "u-49");
        let _ = std::fs::remove_dir_all(&d);
    }
}
