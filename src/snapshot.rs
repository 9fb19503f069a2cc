//! The compiled policy model: an immutable snapshot file in `state_dir`,
//! opened with a memory map, with allocation-free extension lookups.
//!
//! Layout (little endian):
//!
//! ```text
//! 0   magic "EXSNAP01"
//! 8   u32 header_len     12 u32 n_ext     16 u32 n_users
//! 20  u32 crc32 of bytes [28..]           24 u32 reserved
//! 28  header: JSON {version, targets, policies}
//!     padding to a multiple of 4
//!     ext index: n_ext x [u64 hash][u32 user][u32 str_off], sorted by hash
//!     user index: n_users x [u32 off]
//!     blob: postcard user records and postcard extension strings
//! ```
//!
//! A lookup normalises the extension into a stack buffer, binary-searches the
//! hash, compares the stored string and decodes the user record borrowing
//! from the map: no heap allocation. A swap of the model is a swap of one
//! `Arc<Snapshot>`: a record is matched against the old or the new, never a mix.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::layout::Template;
use crate::model::{
    MAX_EXTENSION_LEN, MAX_POLICIES_PER_USER, Model, Policy, TargetSpec, normalize_extension,
    normalize_extension_into,
};

const MAGIC: &[u8; 8] = b"EXSNAP01";
const FIXED: usize = 28;

/// The policy ids of one user (bounded, allocation-free).
pub type PolicyList = heapless::Vec<u16, MAX_POLICIES_PER_USER>;

#[derive(Serialize, Deserialize)]
struct UserRec<'a> {
    #[serde(borrow)]
    id: &'a str,
    #[serde(borrow)]
    name: &'a str,
    #[serde(borrow)]
    email: &'a str,
    policies: PolicyList,
}

#[derive(Serialize, Deserialize)]
struct Header {
    version: u64,
    targets: Vec<TargetSpec>,
    policies: Vec<Policy>,
    /// What the snapshot was compiled from (e.g. `config:<sha256>`), so an
    /// unchanged model is not parsed and compiled again at startup.
    #[serde(default)]
    source: Option<String>,
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

enum Backing {
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

/// An opened snapshot.
pub struct Snapshot {
    data: Backing,
    version: u64,
    targets: Vec<TargetSpec>,
    policies: Vec<CompiledPolicy>,
    source: Option<String>,
    n_ext: usize,
    n_users: usize,
    ext_at: usize,
    users_at: usize,
    blob_at: usize,
}

fn fnv1a(s: &[u8]) -> u64 {
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
        FIXED + header.len() + exts.len() * 16 + user_offs.len() * 4 + blob.len() + 4,
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&(exts.len() as u32).to_le_bytes());
    out.extend_from_slice(&(user_offs.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 8]);
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
        crate::target::fs::sync_dir(d)?;
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
        if check_crc && crc32fast::hash(&b[FIXED..]) != crc {
            return Err(bad("checksum mismatch"));
        }
        let header: Header =
            serde_json::from_slice(b.get(FIXED..FIXED + hl).ok_or_else(|| bad("header"))?)
                .map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        let ext_at = (FIXED + hl).div_ceil(4) * 4;
        let users_at = ext_at + n_ext * 16;
        let blob_at = users_at + n_users * 4;
        if blob_at > b.len() {
            return Err(bad("index beyond end"));
        }
        let mut policies = Vec::with_capacity(header.policies.len());
        for p in header.policies {
            let template = Template::parse(
                p.settings
                    .path_template
                    .as_deref()
                    .unwrap_or(crate::layout::DEFAULT_TEMPLATE),
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
            data,
            version: header.version,
            targets: header.targets,
            policies,
            source: header.source,
            n_ext,
            n_users,
            ext_at,
            users_at,
            blob_at,
        })
    }

    /// Drops this process's mappings of the snapshot's pages once a lookup
    /// is done. The pages stay in the page cache and fault back in on the
    /// next lookup; without this, lookups spread over 100,000 users would
    /// make the whole file (~14 MiB) resident in the agent over time.
    pub fn release_pages(&self) {
        if let Backing::Map(m) = &self.data {
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

    /// Number of users.
    pub fn user_count(&self) -> usize {
        self.n_users
    }

    /// Number of extensions.
    pub fn extension_count(&self) -> usize {
        self.n_ext
    }

    /// The `i`-th user.
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
        let h = fnv1a(n.as_bytes());
        let b = self.data.bytes();
        let entry = |i: usize| -> Option<(u64, u32, u32)> {
            let at = self.ext_at + i * 16;
            Some((u64_at(b, at)?, u32_at(b, at + 8)?, u32_at(b, at + 12)?))
        };
        // lower bound on hash
        let (mut lo, mut hi) = (0usize, self.n_ext);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if entry(mid)?.0 < h {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut i = lo;
        while i < self.n_ext {
            let (eh, user, off) = entry(i)?;
            if eh != h {
                break;
            }
            if self.ext_str(off as usize)? == n.as_str() {
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
    use crate::model::*;

    pub(crate) fn model(n_users: usize) -> Model {
        Model {
            version: 7,
            targets: vec![TargetSpec::fs("nas1", "/mnt/a")],
            policies: vec![Policy {
                id: "p".into(),
                name: "P".into(),
                enabled: true,
                targets: vec!["nas1".into()],
                filters: Filters::default(),
                settings: Settings::default(),
            }],
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

    #[test]
    fn corruption_is_detected() {
        let mut b = compile(&model(10)).unwrap();
        let n = b.len();
        b[n - 3] ^= 0x40;
        assert!(matches!(
            Snapshot::from_bytes(b),
            Err(SnapshotError::Corrupt(_))
        ));
        assert!(Snapshot::from_bytes(b"EXSNAP01".to_vec()).is_err());
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
