//! The persisted bundle state; never leaves a file half written (each is
//! replaced atomically).
//!
//! The persisted bundle state under `<state_dir>/bundle/`:
//!
//! | file            | content                                                    |
//! |-----------------|------------------------------------------------------------|
//! | `current.json`  | the payload of the configuration bundle in force, byte for byte as signed |
//! | `admins.json`   | JSON array of the granted admins (`model::Admin`)          |
//! | `version`       | the version in force, ASCII decimal                        |
//! | `requests_seen` | accepted export `request_id`s, one per line                |
//!
//! Every file is replaced atomically (temp file, fsync, rename, directory
//! fsync). `current.json` is the commit point of a configuration: once it is
//! renamed, the bundle is in force. `admins.json` (always rewritten with the
//! full resulting list) and `version` follow; should the agent stop between
//! the writes, [`BundleState::load`] rolls forward from `current.json`, whose
//! own `version` and `admins` are authoritative.
//!
//! Storage sits behind the small [`Store`] trait so the decision logic can be
//! tested against [`MemStore`], including failing writes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::BundleError;
use crate::policy::intake::source::payload_head;
use crate::policy::model::{Admin, Model};

/// File name of the payload in force.
pub const CURRENT_FILE: &str = "current.json";
/// File name of the granted admins.
pub const ADMINS_FILE: &str = "admins.json";
/// File name of the version in force.
pub const VERSION_FILE: &str = "version";
/// File name of the seen export request ids.
pub const SEEN_FILE: &str = "requests_seen";

/// Named small files, each replaced atomically.
pub trait Store {
    /// Reads a file; `Ok(None)` when it does not exist.
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, BundleError>;
    /// Replaces a file atomically and durably.
    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<(), BundleError>;
    /// Where a file lives, for messages.
    fn path_of(&self, name: &str) -> PathBuf;
    /// Opens a file to read it as a stream; `Ok(None)` when it does not
    /// exist.
    fn open(&self, name: &str) -> Result<Option<Box<dyn Read + '_>>, BundleError> {
        Ok(self
            .read(name)?
            .map(|b| Box::new(io::Cursor::new(b)) as Box<dyn Read>))
    }
    /// Replaces a file atomically and durably with the file `from` (which
    /// is consumed).
    fn install(&mut self, name: &str, from: &Path) -> Result<(), BundleError> {
        let bytes = fs::read(from).map_err(|e| BundleError::io("reading", from, e))?;
        self.write(name, &bytes)?;
        let _ = fs::remove_file(from);
        Ok(())
    }
    /// The file on disk, for a store that has one (streamed compiles).
    fn file_path(&self, _name: &str) -> Option<PathBuf> {
        None
    }
    /// The names of the files held.
    fn list(&self) -> Result<Vec<String>, BundleError>;
    /// Removes a file (a missing one is not an error).
    fn remove(&mut self, name: &str) -> Result<(), BundleError>;
}

/// The on-disk store: a directory, normally `<state_dir>/bundle/`.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// A store in `dir` (created with mode 0700 at the first write).
    pub fn new(dir: impl Into<PathBuf>) -> DirStore {
        DirStore { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Store for DirStore {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, BundleError> {
        let p = self.dir.join(name);
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BundleError::io("reading", p, e)),
        }
    }

    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
        create_private_dir(&self.dir)?;
        write_atomic(&self.dir, name, bytes)
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn open(&self, name: &str) -> Result<Option<Box<dyn Read + '_>>, BundleError> {
        let p = self.dir.join(name);
        match fs::File::open(&p) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BundleError::io("reading", p, e)),
        }
    }

    fn install(&mut self, name: &str, from: &Path) -> Result<(), BundleError> {
        create_private_dir(&self.dir)?;
        let dst = self.dir.join(name);
        let res = (|| {
            fs::File::open(from)?.sync_all()?;
            fs::rename(from, &dst)?;
            fs::File::open(&self.dir)?.sync_all()
        })();
        res.map_err(|e| BundleError::io("writing", dst, e))
    }

    fn file_path(&self, name: &str) -> Option<PathBuf> {
        Some(self.dir.join(name))
    }

    fn list(&self) -> Result<Vec<String>, BundleError> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(BundleError::io("listing", &self.dir, e)),
        };
        Ok(rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect())
    }

    fn remove(&mut self, name: &str) -> Result<(), BundleError> {
        let p = self.dir.join(name);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BundleError::io("removing", p, e)),
        }
    }
}

/// Creates `dir` (and parents) with mode 0700 for the last component.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), BundleError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| BundleError::io("creating directory", dir, e))
}

/// Writes `dir/name` atomically: `dir/.name.tmp`, fsync, rename, fsync(dir).
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(name);
    let res = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &dst)?;
        fs::File::open(dir)?.sync_all()
    })();
    res.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        BundleError::io("writing", dst, e)
    })
}

/// An in-memory store for tests; can be told to fail writes of one file.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    /// The files.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Writes of this file name fail (simulates a full disk).
    pub fail_writes_of: Option<String>,
}

impl Store for MemStore {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, BundleError> {
        Ok(self.files.get(name).cloned())
    }

    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
        if self.fail_writes_of.as_deref() == Some(name) {
            return Err(BundleError::io(
                "writing",
                self.path_of(name),
                io::Error::other("simulated write failure"),
            ));
        }
        self.files.insert(name.to_string(), bytes.to_vec());
        Ok(())
    }

    fn path_of(&self, name: &str) -> PathBuf {
        PathBuf::from("mem:").join(name)
    }

    fn list(&self) -> Result<Vec<String>, BundleError> {
        Ok(self.files.keys().cloned().collect())
    }

    fn remove(&mut self, name: &str) -> Result<(), BundleError> {
        self.files.remove(name);
        Ok(())
    }
}

/// An accepted delta in the chain on top of `current.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeltaRef {
    version: u64,
    name: String,
    sha256: [u8; 32],
}

/// The file name of an accepted delta.
pub fn delta_file(version: u64) -> String {
    format!("delta-{version}.json")
}

/// The bundle state: what is in force and what was seen.
#[derive(Debug, Clone)]
pub struct BundleState<S: Store = DirStore> {
    store: S,
    version: u64,
    /// SHA-256 of `current.json` (never held in memory: it may carry a
    /// million users).
    current: Option<[u8; 32]>,
    /// The deltas accepted on top of it, in order.
    deltas: Vec<DeltaRef>,
    admins: Vec<Admin>,
    seen: BTreeSet<String>,
    /// The snapshot the daemon has in force (registered by it), on which a
    /// users delta is applied as an overlay (see [`super::delta`]).
    in_force: Option<std::sync::Arc<crate::policy::snapshot::Snapshot>>,
}

impl BundleState<DirStore> {
    /// Loads the state from `<state_dir>/bundle/`. A missing directory is a
    /// fresh state (version 0, no admins, nothing seen); nothing is created
    /// until the first commit.
    pub fn load(state_dir: &Path) -> Result<Self, BundleError> {
        Self::load_from(DirStore::new(state_dir.join("bundle")))
    }
}

impl<S: Store> BundleState<S> {
    /// Loads the state from any store, rolling an interrupted commit forward
    /// (see the module documentation).
    pub fn load_from(mut store: S) -> Result<Self, BundleError> {
        let corrupt = |store: &S, name: &str, reason: String| BundleError::CorruptState {
            path: store.path_of(name),
            reason,
        };
        let file_version = match store.read(VERSION_FILE)? {
            None => 0,
            Some(b) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| corrupt(&store, VERSION_FILE, "not a decimal number".into()))?,
        };
        let (current, current_model) = match store.open(CURRENT_FILE)? {
            None => (None, None),
            Some(r) => {
                let mut r = HashReader {
                    inner: r,
                    hash: Sha256::new(),
                };
                let head = payload_head(&mut r).map_err(|e| corrupt(&store, CURRENT_FILE, e))?;
                (Some(r.hash.finalize().into()), Some(head))
            }
        };
        let mut admins: Vec<Admin> = match store.read(ADMINS_FILE)? {
            None => Vec::new(),
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| corrupt(&store, ADMINS_FILE, e.to_string()))?,
        };
        let seen = match store.read(SEEN_FILE)? {
            None => BTreeSet::new(),
            Some(b) => std::str::from_utf8(&b)
                .map_err(|_| corrupt(&store, SEEN_FILE, "not UTF-8".into()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
        };
        let mut version = file_version;
        let deltas = match &current_model {
            Some(m) => delta_chain(&mut store, m.version)?,
            None => Vec::new(),
        };
        if let Some(m) = &current_model {
            if let Some(a) = &m.admins {
                if *a != admins {
                    admins = a.clone();
                    repair(&mut store, ADMINS_FILE, &admins_json(&admins));
                }
            }
            let end = deltas.last().map_or(m.version, |d| d.version);
            if end > file_version {
                version = end;
                repair(&mut store, VERSION_FILE, format!("{version}\n").as_bytes());
            }
        }
        Ok(BundleState {
            store,
            version,
            current,
            deltas,
            admins,
            seen,
            in_force: None,
        })
    }

    /// The overlay of the accepted deltas, read from their files.
    pub(crate) fn delta_overlay(&self) -> Result<super::delta::Overlay, BundleError> {
        let mut o = super::delta::Overlay::default();
        for delta in self.deltas_from(0)? {
            o.apply(&delta);
        }
        Ok(o)
    }

    /// The snapshot source key the chain would have with one more delta
    /// (`payload`) accepted.
    pub(crate) fn chain_source_with(&self, payload: &[u8]) -> String {
        let mut shas: Vec<[u8; 32]> = self.deltas.iter().map(|d| d.sha256).collect();
        shas.push(Sha256::digest(payload).into());
        chain_source(self.current.unwrap_or_default(), &shas)
    }

    /// Persists an accepted delta: its file is the commit point, the
    /// version file follows.
    pub(crate) fn commit_delta(&mut self, version: u64, payload: &[u8]) -> Result<(), BundleError> {
        let name = delta_file(version);
        self.store.write(&name, payload)?;
        self.deltas.push(DeltaRef {
            version,
            name,
            sha256: Sha256::digest(payload).into(),
        });
        self.after_commit(version, None);
        Ok(())
    }

    /// The version in force (0 before any bundle was accepted).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The granted admins in force.
    pub fn admins(&self) -> &[Admin] {
        &self.admins
    }

    /// The snapshot source key of the configuration in force
    /// (`bundle:<sha256 of the payload>`); `None` before any bundle.
    pub fn current_source(&self) -> Option<String> {
        let shas: Vec<[u8; 32]> = self.deltas.iter().map(|d| d.sha256).collect();
        self.current.map(|h| chain_source(h, &shas))
    }

    /// Registers the snapshot the daemon has in force: a users delta is
    /// then checked and applied beside it, without writing a file.
    pub fn set_snapshot_in_force(
        &mut self,
        snap: Option<std::sync::Arc<crate::policy::snapshot::Snapshot>>,
    ) {
        self.in_force = snap;
    }

    /// The snapshot registered with [`Self::set_snapshot_in_force`].
    pub fn snapshot_in_force(&self) -> Option<std::sync::Arc<crate::policy::snapshot::Snapshot>> {
        self.in_force.clone()
    }

    /// The snapshot source key of `current.json` with the first `k` deltas
    /// of the chain (`None` before any bundle or past the chain's end).
    pub(crate) fn source_after(&self, k: usize) -> Option<String> {
        let shas: Vec<[u8; 32]> = self.deltas.get(..k)?.iter().map(|d| d.sha256).collect();
        self.current.map(|h| chain_source(h, &shas))
    }

    /// The accepted deltas from the `k`-th on, parsed from their files.
    pub(crate) fn deltas_from(
        &self,
        k: usize,
    ) -> Result<Vec<super::delta::UsersDelta>, BundleError> {
        let mut out = Vec::new();
        for d in self.deltas.iter().skip(k) {
            let b = self
                .store
                .read(&d.name)?
                .ok_or_else(|| BundleError::CorruptState {
                    path: self.store.path_of(&d.name),
                    reason: "accepted delta file is missing".into(),
                })?;
            out.push(
                super::delta::parse_delta(&b).map_err(|e| BundleError::CorruptState {
                    path: self.store.path_of(&d.name),
                    reason: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }

    /// The versions of the deltas in force on top of `current.json`.
    pub fn delta_versions(&self) -> Vec<u64> {
        self.deltas.iter().map(|d| d.version).collect()
    }

    /// The file holding the payload in force, byte for byte as signed, when
    /// the store keeps files on disk.
    pub fn current_file(&self) -> Option<PathBuf> {
        self.current?;
        self.store.file_path(CURRENT_FILE)
    }

    /// The model in force, parsed whole from the payload in force (tools
    /// only: the agent compiles it as a stream); `None` before any bundle
    /// was accepted (the inline model of exportd.toml applies then).
    pub fn current_model(&self) -> Option<Model> {
        self.current?;
        let r = self.store.open(CURRENT_FILE).ok()??;
        let m: Model = serde_json::from_reader(io::BufReader::new(r)).ok()?;
        let overlay = self.delta_overlay().ok()?;
        let mut m = super::delta::apply_overlay(m, &overlay);
        m.version = self.version;
        Some(m)
    }

    /// Whether an export request id was already accepted.
    pub fn has_seen(&self, request_id: &str) -> bool {
        self.seen.contains(request_id)
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Persists a new configuration: payload, then the full admin list, then
    /// the version. `admins = None` keeps the granted admins,
    /// `Some(vec![])` revokes all. On error before the payload is in place
    /// nothing changed; after it, the configuration is in force and only a
    /// warning is logged for the follow-up files (repaired at the next load).
    pub(crate) fn commit_config(
        &mut self,
        version: u64,
        payload: &[u8],
        admins: Option<&[Admin]>,
    ) -> Result<(), BundleError> {
        self.store.write(CURRENT_FILE, payload)?;
        self.current = Some(Sha256::digest(payload).into());
        self.drop_deltas();
        self.after_commit(version, admins);
        Ok(())
    }

    /// [`Self::commit_config`] for a payload spooled to the file `from`
    /// (moved into place, never read into memory) with its SHA-256.
    pub(crate) fn commit_config_file(
        &mut self,
        version: u64,
        from: &Path,
        sha256: [u8; 32],
        admins: Option<&[Admin]>,
    ) -> Result<(), BundleError> {
        self.store.install(CURRENT_FILE, from)?;
        self.current = Some(sha256);
        self.drop_deltas();
        self.after_commit(version, admins);
        Ok(())
    }

    /// A full bundle replaces the model: the deltas before it go (a delta
    /// file left by a crash here is stale: its base is below the new
    /// version, and it is removed at the next load).
    fn drop_deltas(&mut self) {
        for d in std::mem::take(&mut self.deltas) {
            if let Err(e) = self.store.remove(&d.name) {
                tracing::warn!(error = %e, "bundle state: could not remove {}", d.name);
            }
        }
    }

    /// The follow-up files of a committed configuration.
    fn after_commit(&mut self, version: u64, admins: Option<&[Admin]>) {
        self.version = version;
        if let Some(a) = admins {
            self.admins = a.to_vec();
        }
        let admins_bytes = admins_json(&self.admins);
        repair(&mut self.store, ADMINS_FILE, &admins_bytes);
        repair(
            &mut self.store,
            VERSION_FILE,
            format!("{version}\n").as_bytes(),
        );
    }

    /// Records an export request id as seen (durably, before the daemon
    /// starts the export).
    pub(crate) fn commit_request(&mut self, request_id: &str) -> Result<(), BundleError> {
        let mut next = self.seen.clone();
        next.insert(request_id.to_string());
        let mut text = String::new();
        for id in &next {
            text.push_str(id);
            text.push('\n');
        }
        self.store.write(SEEN_FILE, text.as_bytes())?;
        self.seen = next;
        Ok(())
    }
}

/// `bundle:<sha256 of current.json>`, and with deltas
/// `+<sha256 of the deltas' hashes>`.
fn chain_source(current: [u8; 32], deltas: &[[u8; 32]]) -> String {
    let mut s = format!("bundle:{}", hex::encode(current));
    if !deltas.is_empty() {
        let mut h = Sha256::new();
        for d in deltas {
            h.update(d);
        }
        s.push('+');
        s.push_str(&hex::encode(h.finalize()));
    }
    s
}

/// The chain of delta files on top of version `base`; files that are not
/// part of it and at or below `base` (superseded) are removed.
fn delta_chain<S: Store>(store: &mut S, base: u64) -> Result<Vec<DeltaRef>, BundleError> {
    let mut found: Vec<(u64, u64, String, [u8; 32])> = Vec::new();
    for name in store.list()? {
        let Some(v) = name
            .strip_prefix("delta-")
            .and_then(|r| r.strip_suffix(".json"))
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        let Some(b) = store.read(&name)? else {
            continue;
        };
        let d = super::delta::parse_delta(&b).map_err(|e| BundleError::CorruptState {
            path: store.path_of(&name),
            reason: e.to_string(),
        })?;
        if d.version != v {
            continue;
        }
        found.push((d.base_version, d.version, name, Sha256::digest(&b).into()));
    }
    let mut chain = Vec::new();
    let mut at = base;
    while let Some(i) = found.iter().position(|f| f.0 == at) {
        let (_, v, name, sha256) = found.swap_remove(i);
        at = v;
        chain.push(DeltaRef {
            version: v,
            name,
            sha256,
        });
    }
    for (_, v, name, _) in found {
        if v <= base {
            let _ = store.remove(&name);
        }
    }
    Ok(chain)
}

/// A reader hashing what passes through.
struct HashReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn admins_json(admins: &[Admin]) -> Vec<u8> {
    // Admin is plain strings: serialisation cannot fail.
    let mut v = serde_json::to_vec_pretty(admins).unwrap_or_else(|_| b"[]".to_vec());
    v.push(b'\n');
    v
}

/// Writes a derived file; a failure is logged, not fatal (the file is
/// re-derived from `current.json` at the next load or commit).
fn repair<S: Store>(store: &mut S, name: &str, bytes: &[u8]) {
    if let Err(e) = store.write(name, bytes) {
        tracing::warn!(error = %e, "bundle state: could not update {name}; it is re-derived at the next start");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_json(version: u64, admins: Option<&[Admin]>) -> Vec<u8> {
        let m = Model {
            version,
            admins: admins.map(<[Admin]>::to_vec),
            ..Model::default()
        };
        serde_json::to_vec(&m).unwrap()
    }

    fn alice() -> Admin {
        Admin {
            keyid: "alice".into(),
            public_key: "x".into(),
            roles: vec!["export".into()],
        }
    }

    #[test]
    fn fresh_state_is_version_zero() {
        let s = BundleState::load_from(MemStore::default()).unwrap();
        assert_eq!(s.version(), 0);
        assert!(s.admins().is_empty());
        assert!(s.current_source().is_none());
    }

    #[test]
    fn interrupted_commit_rolls_forward() {
        // current.json written, admins.json and version not.
        let mut store = MemStore::default();
        store.files.insert(VERSION_FILE.into(), b"3\n".to_vec());
        store
            .files
            .insert(CURRENT_FILE.into(), model_json(4, Some(&[alice()])));
        let s = BundleState::load_from(store).unwrap();
        assert_eq!(s.version(), 4);
        assert_eq!(s.admins(), &[alice()]);
        assert_eq!(s.store().files.get(VERSION_FILE).unwrap(), b"4\n");
        assert!(s.store().files.contains_key(ADMINS_FILE));
    }

    #[test]
    fn failed_payload_write_changes_nothing() {
        let store = MemStore {
            fail_writes_of: Some(CURRENT_FILE.into()),
            ..MemStore::default()
        };
        let mut s = BundleState::load_from(store).unwrap();
        assert!(s.commit_config(5, &model_json(5, None), None).is_err());
        assert_eq!(s.version(), 0);
        assert!(s.store().files.is_empty());
    }

    #[test]
    fn failed_follow_up_write_is_repaired_on_load() {
        let store = MemStore {
            fail_writes_of: Some(ADMINS_FILE.into()),
            ..MemStore::default()
        };
        let mut s = BundleState::load_from(store).unwrap();
        s.commit_config(5, &model_json(5, Some(&[alice()])), Some(&[alice()]))
            .unwrap();
        assert_eq!(s.admins(), &[alice()]);
        let mut store = s.store().clone();
        store.fail_writes_of = None;
        let s = BundleState::load_from(store).unwrap();
        assert_eq!(s.version(), 5);
        assert_eq!(s.admins(), &[alice()]);
    }

    #[test]
    fn corrupt_version_is_reported() {
        let mut store = MemStore::default();
        store.files.insert(VERSION_FILE.into(), b"seven".to_vec());
        let e = BundleState::load_from(store).unwrap_err();
        assert!(matches!(e, BundleError::CorruptState { .. }));
    }

    #[test]
    fn dir_store_round_trip() {
        let dir = std::env::temp_dir().join(format!("exportd-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut s = BundleState::load(&dir).unwrap();
        assert!(!dir.exists());
        s.commit_config(2, &model_json(2, None), None).unwrap();
        s.commit_request("r-1").unwrap();
        let s = BundleState::load(&dir).unwrap();
        assert_eq!(s.version(), 2);
        assert!(s.has_seen("r-1"));
        let names: BTreeSet<String> = fs::read_dir(dir.join("bundle"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            names,
            [ADMINS_FILE, CURRENT_FILE, SEEN_FILE, VERSION_FILE]
                .map(String::from)
                .into()
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
