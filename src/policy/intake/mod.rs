//! The intake pipeline: a policy model is parsed, validated and compiled
//! into its snapshot one user at a time, in memory bounded by a fixed run
//! size, whatever the number of users.
//!
//! ```text
//! exportd.toml [[users]] tables ─┐  (source: one table at a time)
//! bundle payload file "users" ───┤  (source: serde visit_seq, one user at a time)
//!                                ▼
//!                      compile::Compiler ── user records ─► users.blob / users.off
//!                                │
//!                                ├─ (ext hash, ext, user) ─► extsort runs ─┐
//!                                └─ (user id)             ─► extsort runs ─┤ k-way merge:
//!                                                                          ▼ duplicates found
//!                                                              snapshot.bin (EXSNAP03)
//! ```
//!
//! Runs live in a private work directory (under `state_dir`, or the system
//! temp directory for `check-config`) removed when the compile ends.
//! `check-config`, the first start, SIGHUP reload and bundle apply all
//! compile through here.

pub mod compile;
pub mod extsort;
pub mod merge;
pub mod source;

use std::io;
use std::path::{Path, PathBuf};

pub use compile::{Compiler, Stats};

use crate::policy::model::{Admin, Policy, TargetSpec};

/// The most problems listed in one error (the rest are counted).
pub const MAX_PROBLEMS: usize = 50;

/// Everything of a model but its users.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelHead {
    /// Model version.
    pub version: u64,
    /// Storage targets.
    pub targets: Vec<TargetSpec>,
    /// Export policies.
    pub policies: Vec<Policy>,
    /// Granted admins (`None`: unchanged).
    pub admins: Option<Vec<Admin>>,
    /// What the snapshot is compiled from (see `Snapshot::source`).
    pub source: Option<String>,
}

/// Why a model could not be taken in.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// A work or output file could not be written or read.
    #[error("{what} {}: {source}; check that the directory exists, is writable and has free space", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The model's text does not parse (with the place of the error).
    #[error("{}: {msg}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        msg: String,
    },
    /// The model parsed but does not validate.
    #[error("model is invalid ({} problem(s)):\n  - {}{}", problems.len() + more, problems.join("\n  - "), if *more > 0 { format!("\n  - ... and {more} more") } else { String::new() })]
    Invalid {
        /// The first [`MAX_PROBLEMS`] problems.
        problems: Vec<String>,
        /// How many more were found.
        more: usize,
    },
}

impl IntakeError {
    /// The problems of an [`IntakeError::Invalid`] (empty otherwise).
    pub fn problems(&self) -> &[String] {
        match self {
            IntakeError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// Validation problems, bounded.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    list: Vec<String>,
    more: usize,
}

impl Problems {
    pub(crate) fn push(&mut self, p: String) {
        if self.list.len() < MAX_PROBLEMS {
            self.list.push(p);
        } else {
            self.more += 1;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(crate) fn into_error(self) -> IntakeError {
        IntakeError::Invalid {
            problems: self.list,
            more: self.more,
        }
    }
}

/// A private work directory, removed with everything in it on drop.
#[derive(Debug)]
pub struct WorkDir(PathBuf);

impl WorkDir {
    /// Creates `<parent>/.intake-<pid>-<n>` (mode 0700).
    pub fn create(parent: &Path) -> Result<WorkDir, IntakeError> {
        use std::os::unix::fs::DirBuilderExt;
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = parent.join(format!(".intake-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&p)
            .map_err(|source| IntakeError::Io {
                what: "creating work directory",
                path: p.clone(),
                source,
            })?;
        Ok(WorkDir(p))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes what a killed intake left in a state directory: work
/// directories and temporary snapshots in it, spooled bundle payloads in
/// its `bundle/`. Call it only while holding the state lock.
pub fn clean_stale(state_dir: &Path) {
    for (dir, prefix) in [
        (state_dir.to_path_buf(), ".intake-"),
        (state_dir.to_path_buf(), ".snapshot-"),
        (state_dir.join("bundle"), ".incoming-"),
    ] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                let p = e.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
    }
}

/// The head of the inline model of a config file read by
/// [`crate::policy::config::LocalConfig::load_head`].
pub fn config_head(cfg: &crate::policy::config::LocalConfig, src_key: Option<String>) -> ModelHead {
    ModelHead {
        version: cfg.version.unwrap_or(0),
        targets: cfg.targets.clone(),
        policies: cfg.policies.clone(),
        admins: cfg.admins.clone(),
        source: src_key,
    }
}

/// Compiles the inline model of the config file at `cfg_path` (whose head
/// `cfg` was read by `load_head`) into the snapshot file `out`, with runs
/// under `work_parent`.
pub fn compile_config(
    cfg_path: &Path,
    cfg: &crate::policy::config::LocalConfig,
    src_key: Option<String>,
    work_parent: &Path,
    out: &Path,
) -> Result<Stats, IntakeError> {
    let mut c = Compiler::new(work_parent, &config_head(cfg, src_key))?;
    source::config_users(cfg_path, cfg, |u| c.add_user(&u))?;
    c.finish(out)
}

/// `check-config`: every problem of the file (those of its head, as
/// [`crate::policy::config::LocalConfig::problems`] lists them, then the
/// users'), found by compiling the inline model of `cfg_path` in a private
/// directory under the system temp directory (removed before returning);
/// the compiled snapshot is opened when there is none. `cfg` is the head as
/// read by `load_head_unchecked`.
pub fn check_config(
    cfg_path: &Path,
    cfg: &crate::policy::config::LocalConfig,
) -> Result<crate::policy::snapshot::Snapshot, IntakeError> {
    let mut problems = Problems::default();
    for p in cfg.problems() {
        problems.push(p);
    }
    let work = WorkDir::create(&std::env::temp_dir())?;
    let out = work.path().join("snapshot.bin");
    match compile_config(cfg_path, cfg, None, work.path(), &out) {
        Ok(_) if problems.is_empty() => {}
        Ok(_) => return Err(problems.into_error()),
        Err(IntakeError::Invalid { problems: ps, more }) => {
            for p in ps {
                // The head's problems are found by both checks.
                if !problems.list.contains(&p) {
                    problems.push(p);
                }
            }
            problems.more += more;
            return Err(problems.into_error());
        }
        Err(e) => return Err(e),
    }
    crate::policy::snapshot::Snapshot::open(&out).map_err(|e| IntakeError::Invalid {
        problems: vec![format!("the compiled snapshot does not open: {e}")],
        more: 0,
    })
}

/// Compiles a configuration payload read twice through `open` (head, then
/// users) into the snapshot file `out`. A payload that does not parse is
/// [`IntakeError::Parse`] naming `shown`.
pub fn compile_payload<R: io::Read>(
    open: &dyn Fn() -> io::Result<R>,
    shown: &Path,
    src_key: Option<String>,
    work_parent: &Path,
    out: &Path,
) -> Result<(source::PayloadHead, Stats), IntakeError> {
    let rerr = |source| IntakeError::Io {
        what: "reading",
        path: shown.to_path_buf(),
        source,
    };
    let head = source::payload_head(open().map_err(rerr)?).map_err(|msg| IntakeError::Parse {
        path: shown.to_path_buf(),
        msg,
    })?;
    let mut c = Compiler::new(work_parent, &head.model_head(src_key))?;
    source::payload_users(open().map_err(rerr)?, |u| c.add_user(&u)).map_err(|e| match e {
        IntakeError::Parse { msg, .. } => IntakeError::Parse {
            path: shown.to_path_buf(),
            msg,
        },
        e => e,
    })?;
    let stats = c.finish(out)?;
    Ok((head, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{Model, User};
    use crate::policy::snapshot::{self, Snapshot};

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("exportd-intake-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn model(n: usize) -> Model {
        Model {
            version: 7,
            targets: vec![TargetSpec::fs("nas1", "/mnt/a")],
            policies: vec![crate::policy::model::tests_support::policy_p()],
            users: (0..n)
                .map(|i| User {
                    id: format!("u-{i}"),
                    name: format!("User {i}"),
                    email: match i % 9 {
                        0 => String::new(),
                        1 => "Shared@Corp.Example".into(),
                        _ => format!("u{i}@corp.example"),
                    },
                    extensions: vec![format!("+1212{i:07}"), format!("sip:U{i}@Corp.Example")],
                    policies: vec!["p".into()],
                })
                .collect(),
            ..Model::default()
        }
    }

    fn head(m: &Model) -> ModelHead {
        ModelHead {
            version: m.version,
            targets: m.targets.clone(),
            policies: m.policies.clone(),
            admins: m.admins.clone(),
            source: Some("src".into()),
        }
    }

    #[test]
    fn streamed_snapshot_is_the_in_memory_one_byte_for_byte() {
        let d = dir("same");
        let m = model(500);
        let mut c = Compiler::new(&d, &head(&m)).unwrap();
        for u in &m.users {
            c.add_user(u).unwrap();
        }
        let out = d.join("snap");
        let st = c.finish(&out).unwrap();
        assert_eq!((st.users, st.extensions), (500, 1000));
        let want = snapshot::compile_from(&m, Some("src")).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), want);
        let s = Snapshot::open(&out).unwrap();
        assert_eq!(s.lookup("tel:+1 212 000 0499").unwrap().id, "u-499");
        let left: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "work directory removed: {left:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn every_problem_is_found_and_nothing_is_left() {
        let d = dir("bad");
        let mut m = model(20);
        m.users[3].extensions.push("sip:u7@corp.example".into());
        m.users[4].policies.push("nope".into());
        m.users[5].id = "u-6".into();
        let mut c = Compiler::new(&d, &head(&m)).unwrap();
        for u in &m.users {
            c.add_user(u).unwrap();
        }
        let out = d.join("snap");
        let e = c.finish(&out).unwrap_err();
        let p = e.problems().join("\n");
        assert!(
            p.contains("assigned to both \"u-3\" and \"u-7\"")
                || p.contains("assigned to both \"u-7\" and \"u-3\""),
            "{p}"
        );
        assert!(p.contains("unknown policy \"nope\""), "{p}");
        assert!(p.contains("user id \"u-6\" is defined twice"), "{p}");
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn payload_compiles_from_two_passes() {
        let d = dir("payload");
        let m = model(30);
        let bytes = serde_json::to_vec(&m).unwrap();
        let out = d.join("snap");
        let open = || Ok::<_, io::Error>(bytes.as_slice());
        let (h, st) = compile_payload(&open, Path::new("p.json"), None, &d, &out).unwrap();
        assert_eq!((h.version, h.users, st.users), (7, 30, 30));
        assert_eq!(std::fs::read(&out).unwrap(), snapshot::compile(&m).unwrap());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
