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
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::BundleError;
use crate::model::{Admin, Model};

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
}

/// The bundle state: what is in force and what was seen.
#[derive(Debug, Clone)]
pub struct BundleState<S: Store = DirStore> {
    store: S,
    version: u64,
    current: Option<Vec<u8>>,
    admins: Vec<Admin>,
    seen: BTreeSet<String>,
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
        let current = store.read(CURRENT_FILE)?;
        let current_model = match &current {
            None => None,
            Some(b) => Some(
                serde_json::from_slice::<Model>(b)
                    .map_err(|e| corrupt(&store, CURRENT_FILE, e.to_string()))?,
            ),
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
        if let Some(m) = &current_model {
            if let Some(a) = &m.admins {
                if *a != admins {
                    admins = a.clone();
                    repair(&mut store, ADMINS_FILE, &admins_json(&admins));
                }
            }
            if m.version > file_version {
                version = m.version;
                repair(&mut store, VERSION_FILE, format!("{version}\n").as_bytes());
            }
        }
        Ok(BundleState {
            store,
            version,
            current,
            admins,
            seen,
        })
    }

    /// The version in force (0 before any bundle was accepted).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The granted admins in force.
    pub fn admins(&self) -> &[Admin] {
        &self.admins
    }

    /// The payload of the configuration in force, byte for byte as signed.
    pub fn current_payload(&self) -> Option<&[u8]> {
        self.current.as_deref()
    }

    /// The model in force, parsed from [`Self::current_payload`]; `None`
    /// before any bundle was accepted (the inline model of exportd.toml
    /// applies then).
    pub fn current_model(&self) -> Option<Model> {
        self.current
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok())
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
        self.current = Some(payload.to_vec());
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
        Ok(())
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
        assert!(s.current_payload().is_none());
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
