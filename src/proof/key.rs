//! The agent's own ed25519 identity: `<state_dir>/agent.key` (0600, base64
//! of the 32-byte seed, the `exportd keygen` format), made at first start,
//! and `<state_dir>/agent.pub` (base64 of the raw public key) beside it for
//! readers without access to the secret. Never overwrites either key file
//! and never accepts a secret key file others may read.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{SigningKey, VerifyingKey};

use super::{ProofError, io_err};
use crate::control::bundle::dsse::decode_b64;
use crate::control::bundle::ops::{fingerprint, load_signing_key};

/// The secret key file under the state folder.
pub const KEY_FILE: &str = "agent.key";
/// The public key file under the state folder.
pub const PUB_FILE: &str = "agent.pub";

/// The agent's signing key.
pub struct AgentKey {
    key: SigningKey,
}

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgentKey({})", self.fingerprint())
    }
}

impl AgentKey {
    /// A key from a seed (tests).
    pub fn from_seed(seed: [u8; 32]) -> AgentKey {
        AgentKey {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The secret key.
    pub fn signing(&self) -> &SigningKey {
        &self.key
    }

    /// The public key.
    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Base64 of the raw 32-byte public key (the `[[trust]]` form; what
    /// `archive verify --agent-key` takes).
    pub fn public_b64(&self) -> String {
        public_b64(&self.public())
    }

    /// The keyid of checkpoint signatures: the public key's fingerprint.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.public().as_bytes())
    }
}

/// Base64 of a raw public key.
pub fn public_b64(k: &VerifyingKey) -> String {
    STANDARD.encode(k.as_bytes())
}

/// The fingerprint of a public key (= the keyid of its signatures).
pub fn public_fingerprint(k: &VerifyingKey) -> String {
    fingerprint(k.as_bytes())
}

fn key_err(path: &Path, reason: impl Into<String>) -> ProofError {
    ProofError::Key {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Loads `<state_dir>/agent.key`, making it first when there is none
/// (written under a temp name, fsynced, linked into place without ever
/// replacing a key, folder fsynced), and (re)writes `agent.pub` when it is
/// missing or does not match.
pub fn load_or_create(state_dir: &Path) -> Result<AgentKey, ProofError> {
    let path = state_dir.join(KEY_FILE);
    if !path.exists() {
        create(state_dir, &path)?;
    }
    let key = load(&path)?;
    let pub_path = state_dir.join(PUB_FILE);
    let want = format!("{}\n", key.public_b64());
    if fs::read_to_string(&pub_path).ok().as_deref() != Some(want.as_str()) {
        crate::policy::snapshot::write_atomic(&pub_path, want.as_bytes())
            .map_err(io_err(&pub_path))?;
    }
    Ok(key)
}

/// Loads a key file (refused when group or others may read it).
pub fn load(path: &Path) -> Result<AgentKey, ProofError> {
    let key = load_signing_key(path).map_err(|e| key_err(path, e.to_string()))?;
    Ok(AgentKey { key })
}

fn create(state_dir: &Path, path: &Path) -> Result<(), ProofError> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| key_err(path, format!("no OS randomness: {e}")))?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    let tmp: PathBuf = state_dir.join(format!(".{KEY_FILE}.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let line = zeroize::Zeroizing::new(format!("{}\n", STANDARD.encode(key.to_bytes())));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(line.as_bytes())?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    // link(2) never replaces: a key made meanwhile by another process wins.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    crate::sink::fs::sync_dir(state_dir).map_err(io_err(state_dir))?;
    tracing::info!(
        "made the agent's checkpoint signing key {} (fingerprint {})",
        path.display(),
        fingerprint(key.verifying_key().as_bytes())
    );
    Ok(())
}

/// The agent's public key as stored under `state_dir`: from `agent.key`
/// when this process may read it, else from `agent.pub`. `None` when the
/// agent has not made its key yet.
pub fn read_public(state_dir: &Path) -> Result<Option<VerifyingKey>, ProofError> {
    let path = state_dir.join(KEY_FILE);
    match load(&path) {
        Ok(k) => return Ok(Some(k.public())),
        Err(_) if !path.exists() => return Ok(None),
        Err(_) => {}
    }
    let pub_path = state_dir.join(PUB_FILE);
    match fs::read_to_string(&pub_path) {
        Ok(t) => parse_public(t.trim()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(key_err(
            &path,
            "cannot be read by this user and agent.pub is missing; run as the agent's user",
        )),
        Err(e) => Err(io_err(&pub_path)(e)),
    }
}

/// Parses a public key given as base64 of its 32 raw bytes, or as the path
/// of a file holding that (e.g. a copy of `agent.pub`).
pub fn parse_public(s: &str) -> Result<VerifyingKey, ProofError> {
    let s = s.trim();
    let text = if Path::new(s).is_file() {
        fs::read_to_string(s).map_err(io_err(Path::new(s)))?
    } else {
        s.to_string()
    };
    let bad = |why: &str| key_err(Path::new(s), why);
    let raw = decode_b64(text.trim())
        .map_err(|_| bad("not base64 of a 32-byte ed25519 public key (nor a file holding it)"))?;
    let raw: [u8; 32] = raw
        .as_slice()
        .try_into()
        .map_err(|_| bad("does not decode to 32 bytes (an ed25519 public key)"))?;
    VerifyingKey::from_bytes(&raw).map_err(|_| bad("not a valid ed25519 public key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_loaded() {
        let d = tempfile::tempdir().unwrap();
        let a = load_or_create(d.path()).unwrap();
        let b = load_or_create(d.path()).unwrap();
        assert_eq!(a.public(), b.public());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(d.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_public(d.path()).unwrap(), Some(a.public()));
        assert_eq!(parse_public(&a.public_b64()).unwrap(), a.public());
        let p = d.path().join(PUB_FILE);
        assert_eq!(parse_public(p.to_str().unwrap()).unwrap(), a.public());
        assert_eq!(a.fingerprint().len(), 16);
    }

    #[test]
    fn readable_key_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        load_or_create(d.path()).unwrap();
        let p = d.path().join(KEY_FILE);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create(d.path()),
            Err(ProofError::Key { .. })
        ));
        assert!(parse_public("AAAA").is_err());
    }
}
