//! The local configuration file, `exportd.toml` (config.md): read and
//! checked, never written.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::Digest;

use crate::policy::model::{Admin, Model, Policy, TargetSpec, User};

/// `[central]`: pull pushed bundles and report status over mutual TLS.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Central {
    /// Base URL, `https://central.example:8443`.
    pub url: String,
    /// CA certificate(s) that sign central's server certificate (PEM).
    pub ca: PathBuf,
    /// This agent's client certificate (PEM).
    pub client_cert: PathBuf,
    /// This agent's client key (PEM).
    pub client_key: PathBuf,
    /// Heartbeat interval for status reports, seconds.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_s: u64,
    /// Shortest interval between two bundle polls when central answers at
    /// once instead of holding the request (long-poll), seconds.
    #[serde(default = "default_poll")]
    pub poll_interval_s: u64,
}

fn default_poll() -> u64 {
    30
}

fn default_heartbeat() -> u64 {
    60
}

/// One `[[users]]` table parsed on its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OneUser {
    users: Vec<User>,
}

/// The local file as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// This appliance's id at central.
    pub agent_id: String,
    /// Spool roots, watched recursively.
    #[serde(default = "default_spool")]
    pub spool: Vec<PathBuf>,
    /// Journal, audit log, cached bundle, request status.
    #[serde(default = "default_state")]
    pub state_dir: PathBuf,
    /// age identities.
    #[serde(default = "default_keys")]
    pub keys_dir: PathBuf,
    /// How long a missing listed file is waited for, seconds.
    #[serde(default = "default_grace")]
    pub incomplete_grace_s: u64,
    /// Copies running at once.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Who may sign what is pushed.
    #[serde(default)]
    pub trust: Vec<Admin>,
    /// Optional central manager.
    #[serde(default)]
    pub central: Option<Central>,
    /// Inline model version (0 when absent).
    #[serde(default)]
    pub version: Option<u64>,
    /// Inline targets.
    #[serde(default)]
    pub targets: Vec<TargetSpec>,
    /// Inline policies.
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// Inline users.
    #[serde(default)]
    pub users: Vec<User>,
    /// Inline granted admins.
    #[serde(default)]
    pub admins: Option<Vec<Admin>>,
    /// The largest bundle (inbox file or central response) taken in, in
    /// bytes; default [`crate::control::bundle::DEFAULT_MAX_BUNDLE_BYTES`]
    /// (512 MiB, enough for 1,000,000 users). Bundles are streamed to disk,
    /// never held in memory, whatever this is.
    #[serde(default)]
    pub max_bundle_bytes: Option<u64>,
    /// At most this many seconds between rows appended to the audit log
    /// and a signed checkpoint of it (issue #14); default 900.
    #[serde(default)]
    pub checkpoint_interval_s: Option<u64>,
    /// Where the node_exporter textfile metrics go (exportd extension);
    /// default `<state_dir>/metrics/exportd.prom`. Read at startup.
    #[serde(default)]
    pub metrics_file: Option<PathBuf>,
}

fn default_spool() -> Vec<PathBuf> {
    vec![PathBuf::from("/var/spool/recorder")]
}
fn default_state() -> PathBuf {
    PathBuf::from("/var/lib/exportd")
}
fn default_keys() -> PathBuf {
    PathBuf::from("/etc/exportd/keys")
}
fn default_grace() -> u64 {
    300
}
fn default_workers() -> usize {
    // Copies are I/O bound (they mostly wait on fsync): several in flight
    // keep latency low at 200 records/s (BENCHMARKS.md).
    8
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// TOML syntax or a field of the wrong type / unknown field.
    #[error("config {path}: {msg}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        msg: String,
    },
    /// Semantically invalid.
    #[error("config {path} is invalid:\n  - {}", .problems.join("\n  - "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<String>,
    },
}

impl LocalConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<LocalConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        LocalConfig::parse(&text, path)
    }

    /// Reads the file without its `[[users]]` tables (they are neither
    /// parsed nor kept), for a daemon whose compiled snapshot is current.
    /// Returns the config and the SHA-256 of the whole file (the snapshot's
    /// source key). Users are checked when a snapshot is compiled.
    pub fn load_head(path: &Path) -> Result<(LocalConfig, [u8; 32]), ConfigError> {
        let (cfg, hash) = LocalConfig::load_head_unchecked(path)?;
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            });
        }
        Ok((cfg, hash))
    }

    /// [`LocalConfig::load_head`] without the check of what it read (a
    /// syntax error still fails): `check-config` reports the head's problems
    /// together with the users' (see [`crate::policy::intake::check_config`]).
    pub fn load_head_unchecked(path: &Path) -> Result<(LocalConfig, [u8; 32]), ConfigError> {
        use std::io::BufRead;
        let rerr = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        // Streamed line by line: a 100,000-user file (~17 MiB) is never held
        // whole; only the lines outside `[[users]]` tables are kept.
        let f = std::fs::File::open(path).map_err(rerr)?;
        let mut rd = std::io::BufReader::with_capacity(64 << 10, f);
        let mut hasher = sha2::Sha256::new();
        let mut rest = String::new();
        let mut line = String::new();
        let mut in_users = false;
        loop {
            line.clear();
            if rd.read_line(&mut line).map_err(rerr)? == 0 {
                break;
            }
            if has_multiline_string(&line) {
                // Parse the whole file instead.
                let text = std::fs::read_to_string(path).map_err(rerr)?;
                let hash: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
                return Ok((LocalConfig::parse(&text, path)?, hash));
            }
            hasher.update(line.as_bytes());
            if let Some(name) = table_header(&line) {
                in_users = name == "[[users]]";
            }
            if !in_users {
                rest.push_str(&line);
            }
        }
        let hash: [u8; 32] = hasher.finalize().into();
        // The skipped lines are not kept even as blank lines (the TOML parser
        // sizes its buffers from the text's length): on an error, the whole
        // file is parsed again for a message with the right line number.
        let cfg: LocalConfig = match toml::from_str(&rest) {
            Ok(c) => c,
            Err(_) => return Ok((LocalConfig::load(path)?, hash)),
        };
        Ok((cfg, hash))
    }

    /// Parses and validates config text (`path` is for messages). Large
    /// inline user directories are parsed one `[[users]]` table at a time,
    /// so memory stays proportional to the users, not to the TOML document.
    pub fn parse(text: &str, path: &Path) -> Result<LocalConfig, ConfigError> {
        let perr = |msg: String| ConfigError::Parse {
            path: path.to_path_buf(),
            msg,
        };
        let cfg = match split_users(text) {
            Some((rest, blocks)) => {
                let mut cfg: LocalConfig =
                    toml::from_str(&rest).map_err(|e| perr(e.to_string()))?;
                if !cfg.users.is_empty() && !blocks.is_empty() {
                    return Err(perr(
                        "users are given both as `users = [...]` and as [[users]] tables".into(),
                    ));
                }
                cfg.users.reserve(blocks.len());
                for (line, block) in blocks {
                    let one: OneUser = toml::from_str(block)
                        .map_err(|e| perr(format!("in the [[users]] table at line {line}: {e}")))?;
                    cfg.users.extend(one.users);
                }
                cfg
            }
            None => toml::from_str(text).map_err(|e| perr(e.to_string()))?,
        };
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            });
        }
        Ok(cfg)
    }

    /// The bundle size limit in force (`max_bundle_bytes` or the default).
    pub fn max_bundle_bytes(&self) -> u64 {
        self.max_bundle_bytes
            .unwrap_or(crate::control::bundle::DEFAULT_MAX_BUNDLE_BYTES)
    }

    /// Moves the inline model out of the config (no copy of the users).
    pub fn take_inline_model(&mut self) -> Model {
        let targets = std::mem::take(&mut self.targets);
        let policies = std::mem::take(&mut self.policies);
        let users = std::mem::take(&mut self.users);
        self.model_of(targets, policies, users)
    }

    /// The inline policy model.
    pub fn inline_model(&self) -> Model {
        self.model_of(
            self.targets.clone(),
            self.policies.clone(),
            self.users.clone(),
        )
    }

    /// The inline model made of these parts, with the file's version and admins.
    fn model_of(&self, targets: Vec<TargetSpec>, policies: Vec<Policy>, users: Vec<User>) -> Model {
        Model {
            version: self.version.unwrap_or(0),
            issued_at: None,
            targets,
            policies,
            users,
            admins: self.admins.clone(),
        }
    }

    /// Every problem with the file (empty = valid).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.agent_id.trim().is_empty() {
            p.push("agent_id is empty".to_string());
        }
        if self.spool.is_empty() {
            p.push("spool lists no roots".to_string());
        }
        for (i, s) in self.spool.iter().enumerate() {
            if !s.is_absolute() {
                p.push(format!(
                    "spool root {} must be an absolute path",
                    s.display()
                ));
            }
            for (j, t) in self.spool.iter().enumerate() {
                if i != j && s.starts_with(t) {
                    p.push(format!(
                        "spool root {} lies inside spool root {}",
                        s.display(),
                        t.display()
                    ));
                }
            }
        }
        if !self.state_dir.is_absolute() {
            p.push(format!(
                "state_dir {} must be an absolute path",
                self.state_dir.display()
            ));
        }
        if !self.keys_dir.is_absolute() {
            p.push(format!(
                "keys_dir {} must be an absolute path",
                self.keys_dir.display()
            ));
        }
        if self.max_bundle_bytes == Some(0) {
            p.push("max_bundle_bytes must be above 0".to_string());
        }
        if self.workers == 0 || self.workers > 64 {
            p.push(format!(
                "workers = {} must be between 1 and 64",
                self.workers
            ));
        }
        for t in &self.trust {
            if !matches!(decode_key(&t.public_key), Some(k) if k.len() == 32) {
                p.push(format!(
                    "trust key {:?}: public_key must be base64 of a raw 32-byte ed25519 key",
                    t.keyid
                ));
            }
            for r in &t.roles {
                if !matches!(r.as_str(), "config" | "export" | "grant") {
                    p.push(format!("trust key {:?}: unknown role {r:?}", t.keyid));
                }
            }
        }
        for t in &self.targets {
            if let Some(root) = &t.path {
                for s in &self.spool {
                    if root.starts_with(s) || s.starts_with(root) {
                        p.push(format!(
                            "target {:?} path {} overlaps spool root {} (the spool is never written)",
                            t.id,
                            root.display(),
                            s.display()
                        ));
                    }
                }
            }
        }
        p.extend(
            crate::policy::model::validate_parts(
                &self.targets,
                &self.policies,
                &self.users,
                self.admins.as_deref(),
            )
            .into_iter()
            .map(|e| e.0),
        );
        p
    }
}

/// The table header on `line` (`[name]` or `[[name]]`, spaces removed), if
/// the line is one.
pub(crate) fn table_header(l: &str) -> Option<String> {
    let t = l.split('#').next().unwrap_or("").trim();
    let ok = t.starts_with('[')
        && t.ends_with(']')
        && t.trim_matches(|c| c == '[' || c == ']')
            .trim()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'"' | b' '));
    ok.then(|| t.replace(' ', ""))
}

/// Whether `s` opens or closes a multi-line string: then table headers
/// cannot be told from lines of text.
pub(crate) fn has_multiline_string(s: &str) -> bool {
    s.contains("'''") || s.contains("\"\"\"")
}

/// Cuts every `[[users]]` table out of the TOML text: returns the rest and
/// the tables (with their 1-based first line). `None` when the text has
/// multi-line strings (then the split is not attempted and the whole
/// document is parsed at once). A table ends at the next table header.
fn split_users(text: &str) -> Option<(String, Vec<(usize, &str)>)> {
    if has_multiline_string(text) {
        return None;
    }
    let mut rest = String::with_capacity(text.len().min(1 << 16));
    let mut blocks = Vec::new();
    let mut in_users: Option<(usize, usize)> = None; // (first line, byte start)
    let mut pos = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if let Some(name) = table_header(line) {
            if let Some((l, start)) = in_users.take() {
                blocks.push((l, &text[start..pos]));
            }
            if name == "[[users]]" {
                in_users = Some((i + 1, pos));
            }
        }
        if in_users.is_none() {
            rest.push_str(line);
        } else {
            // Keeps the line numbers of the rest for error messages.
            rest.push('\n');
        }
        pos += line.len();
    }
    if let Some((l, start)) = in_users {
        blocks.push((l, &text[start..]));
    }
    Some((rest, blocks))
}

fn decode_key(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
agent_id  = "ny-rec01"
spool     = ["/var/spool/recorder"]
state_dir = "/var/lib/exportd"
keys_dir  = "/etc/exportd/keys"
incomplete_grace_s = 300

[[trust]]
keyid = "central-2026"
public_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
roles = ["config", "export", "grant"]

[central]
url = "https://central.example:8443"
ca = "/etc/exportd/central-ca.pem"
client_cert = "/etc/exportd/agent.pem"
client_key  = "/etc/exportd/agent.key"

[[targets]]
id = "nas1"
kind = "fs"
path = "/mnt/archive"

[[policies]]
id = "p-voice"
name = "Trader voice to NAS"
enabled = true
targets = ["nas1"]
filters = { conversation_types = ["voice"], source_platforms = ["ipc_unigy", "bt_iptrade"], source_2n = "primary" }
settings = { decrypt = true, im_attachments = true, file_extensions = ["wav", "vtr"], path_template = "{yyyy}/{mm}/{dd}/{user_id}/{id}", vcon = true }

[[users]]
id = "u-1001"
name = "Ann Trader"
email = "ann@corp.example"
extensions = ["+12125550100", "sip:ann@corp.example", "TRD-0042"]
policies = ["p-voice"]
"#;

    #[test]
    fn contract_sample_parses() {
        let c = LocalConfig::parse(SAMPLE, Path::new("x.toml")).unwrap();
        assert_eq!(c.agent_id, "ny-rec01");
        assert_eq!(
            c.policies[0]
                .settings
                .file_extensions
                .as_ref()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(c.central.as_ref().unwrap().heartbeat_s, 60);
        assert_eq!(c.inline_model().users[0].extensions.len(), 3);
    }

    #[test]
    fn problems_are_all_reported() {
        let bad = SAMPLE
            .replace("targets = [\"nas1\"]", "targets = [\"nas2\"]")
            .replace("/mnt/archive", "/var/spool/recorder/out");
        match LocalConfig::parse(&bad, Path::new("x.toml")) {
            Err(ConfigError::Invalid { problems, .. }) => {
                assert!(
                    problems.iter().any(|p| p.contains("unknown target")),
                    "{problems:?}"
                );
                assert!(
                    problems.iter().any(|p| p.contains("overlaps spool")),
                    "{problems:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        let typo = SAMPLE.replace("incomplete_grace_s", "incomplete_grace");
        assert!(matches!(
            LocalConfig::parse(&typo, Path::new("x.toml")),
            Err(ConfigError::Parse { .. })
        ));
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;

    const TEXT: &str = r#"agent_id = "a"
spool = ["/s"]

[[users]]   # first
id = "u1"
extensions = [
  "100",
  "101",
]
policies = ["p"]

[[targets]]
id = "t"
kind = "fs"
path = "/t"

[[users]]
id = "u2"
extensions = ["200"]
policies = ["p"]

[[policies]]
id = "p"
targets = ["t"]
"#;

    #[test]
    fn users_tables_are_parsed_one_by_one_wherever_they_are() {
        let c = LocalConfig::parse(TEXT, Path::new("x.toml")).unwrap();
        assert_eq!(c.users.len(), 2);
        assert_eq!(c.users[0].extensions, vec!["100", "101"]);
        assert_eq!(c.users[1].id, "u2");
        assert_eq!(c.targets.len(), 1);
        assert_eq!(c.policies.len(), 1);
        let whole: LocalConfig = toml::from_str(TEXT).unwrap();
        assert_eq!(whole, c, "same result as parsing the whole document");
    }

    #[test]
    fn errors_in_a_users_table_name_its_line() {
        let bad = TEXT.replace("id = \"u2\"", "id = \"u2\"\ncolour = 1");
        match LocalConfig::parse(&bad, Path::new("x.toml")) {
            Err(ConfigError::Parse { msg, .. }) => assert!(msg.contains("line 17"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn head_skips_users() {
        let d = std::env::temp_dir().join(format!("exportd-head-{}.toml", std::process::id()));
        std::fs::write(&d, TEXT).unwrap();
        let (c, h) = LocalConfig::load_head(&d).unwrap();
        assert!(c.users.is_empty());
        assert_eq!(c.policies.len(), 1);
        assert_ne!(h, [0; 32]);
        let _ = std::fs::remove_file(&d);
    }
}
