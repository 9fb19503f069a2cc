//! Operator functions for keys and bundles; never overwrites a key nor reads
//! a signing key others may read.
//!
//! Operator functions behind the command line (the CLI owner prints):
//!
//! | command | function |
//! |---|---|
//! | `exportd keygen PREFIX` | [`keygen`] |
//! | `exportd bundle sign --key FILE [--keyid ID] --type config\|export-request PAYLOAD.json` | [`sign_file`] |
//! | (co-signing, e.g. a `grant` signature) | [`cosign_file`] |
//! | `exportd bundle verify --config FILE BUNDLE.json` | [`verify_file`] |
//!
//! Signing key files hold one line: the base64 of the 32-byte ed25519 seed
//! (RFC 8032 private key). They are created 0600 and refused when group or
//! others may read them. Public key files hold the base64 of the raw 32-byte
//! public key, the form `[[trust]] public_key` and `admins[].public_key` take.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use super::apply::{Accepted, parse_config_payload, parse_request_payload, validate_config};
use super::dsse::{self, Envelope};
use super::spool::spool_envelope;
use super::state::BundleState;
use super::streamed::check_spooled;
use super::trust::SignatureCheck;
use super::{BundleError, DEFAULT_MAX_BUNDLE_BYTES, PayloadType};
use crate::policy::model::Admin;

/// What [`keygen`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The private key file (`<prefix>.key`, mode 0600).
    pub key_path: PathBuf,
    /// The public key file (`<prefix>.pub`).
    pub pub_path: PathBuf,
    /// Suggested keyid: the file name of the prefix.
    pub keyid: String,
    /// Base64 of the raw 32-byte public key.
    pub public_key: String,
    /// First 16 hex digits of SHA-256 of the raw public key, to compare keys
    /// by eye.
    pub fingerprint: String,
}

impl KeyInfo {
    /// A `[[trust]]` table for exportd.toml with these `roles`.
    pub fn trust_toml(&self, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|r| format!("{r:?}")).collect();
        format!(
            "[[trust]]\nkeyid = {:?}\npublic_key = {:?}\nroles = [{}]\n",
            self.keyid,
            self.public_key,
            roles.join(", ")
        )
    }
}

/// SHA-256 fingerprint (16 hex digits) of a raw public key.
pub fn fingerprint(public_key: &[u8]) -> String {
    let mut h = hex::encode(Sha256::digest(public_key));
    h.truncate(16);
    h
}

/// Generates an ed25519 key pair from OS randomness and writes
/// `<prefix>.key` (0600, base64 of the 32-byte seed) and `<prefix>.pub`
/// (base64 of the raw public key). Existing files are never overwritten.
pub fn keygen(out_prefix: &Path) -> Result<KeyInfo, BundleError> {
    let key_path = with_suffix(out_prefix, ".key");
    let pub_path = with_suffix(out_prefix, ".pub");
    let keyid = out_prefix
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| BundleError::KeyFile {
            path: out_prefix.to_path_buf(),
            reason: "the prefix has no file name; give e.g. /etc/exportd/ops-alice".into(),
        })?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| BundleError::KeyFile {
        path: key_path.clone(),
        reason: format!("no OS randomness ({e}); retry on a system with a working getrandom"),
    })?;
    let sk = SigningKey::from_bytes(&seed);
    seed.fill(0);
    let public = sk.verifying_key().to_bytes();
    let public_key = STANDARD.encode(public);

    let secret_line = format!("{}\n", STANDARD.encode(sk.to_bytes()));
    create_new(&key_path, 0o600, secret_line.as_bytes())?;
    if let Err(e) = create_new(&pub_path, 0o644, format!("{public_key}\n").as_bytes()) {
        let _ = fs::remove_file(&key_path);
        return Err(e);
    }
    Ok(KeyInfo {
        key_path,
        pub_path,
        keyid,
        fingerprint: fingerprint(&public),
        public_key,
    })
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn create_new(path: &Path, mode: u32, bytes: &[u8]) -> Result<(), BundleError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                BundleError::KeyFile {
                    path: path.to_path_buf(),
                    reason: "already exists; keygen never overwrites a key: choose another prefix"
                        .into(),
                }
            } else {
                BundleError::io("creating", path, e)
            }
        })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| BundleError::io("writing", path, e))
}

/// Reads a signing key file written by [`keygen`]. Refuses files that group
/// or others may read.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, BundleError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |reason: String| BundleError::KeyFile {
        path: path.to_path_buf(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| BundleError::io("reading", path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "mode {mode:03o} lets others read the secret key; chmod 600 it (and consider the key exposed)"
        )));
    }
    if meta.len() > 4096 {
        return Err(bad(
            "too large for a key file; give the .key file written by exportd keygen".into(),
        ));
    }
    let text = fs::read_to_string(path).map_err(|e| BundleError::io("reading", path, e))?;
    let raw = dsse::decode_b64(text.trim())
        .map_err(|_| bad("not base64; give the .key file written by exportd keygen".into()))?;
    let seed: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
        bad(format!(
            "decodes to {} bytes; a key file holds the base64 of a 32-byte ed25519 seed",
            raw.len()
        ))
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The keyid for a key file when none is given: its file name without `.key`.
pub fn default_keyid(key_file: &Path) -> String {
    let name = key_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".key").unwrap_or(&name).to_string()
}

fn read_capped(path: &Path) -> Result<Vec<u8>, BundleError> {
    let f = fs::File::open(path).map_err(|e| BundleError::io("reading", path, e))?;
    let mut buf = Vec::new();
    f.take(DEFAULT_MAX_BUNDLE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| BundleError::io("reading", path, e))?;
    if buf.len() as u64 > DEFAULT_MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge {
            path: path.display().to_string(),
            max: DEFAULT_MAX_BUNDLE_BYTES,
        });
    }
    Ok(buf)
}

/// Checks a payload the way the agent will (parse, `version`, unknown
/// fields, complete validation; `request_id` for export requests), except
/// for what needs the agent's state or trust anchors. Used by
/// [`sign_file`] so nobody signs a bundle that is bound to be rejected.
pub fn lint_payload(payload_type: PayloadType, payload: &[u8]) -> Result<(), BundleError> {
    match payload_type {
        PayloadType::Config => {
            let model = parse_config_payload(payload)?;
            let errors = validate_config(&model, None);
            if errors.is_empty() {
                Ok(())
            } else {
                Err(BundleError::Validation { errors })
            }
        }
        PayloadType::ExportRequest => parse_request_payload(payload).map(|_| ()),
        PayloadType::UsersDelta => super::delta::parse_delta(payload).map(|_| ()),
    }
}

/// Signs a payload file as a new envelope with one signature.
///
/// `payload_type_short` is `config` or `export-request`; the payload bytes
/// are signed exactly as they are in the file (no re-serialisation), after
/// [`lint_payload`]. `keyid` defaults to [`default_keyid`] of the key file.
pub fn sign_file(
    key_file: &Path,
    keyid: Option<&str>,
    payload_type_short: &str,
    payload_json_path: &Path,
) -> Result<Envelope, BundleError> {
    let pt = PayloadType::from_short_name(payload_type_short).ok_or_else(|| {
        BundleError::UnknownPayloadType {
            got: format!("{payload_type_short} (use --type config or --type export-request)"),
        }
    })?;
    let key = load_signing_key(key_file)?;
    let payload = read_capped(payload_json_path)?;
    lint_payload(pt, &payload)?;
    let keyid = keyid.map_or_else(|| default_keyid(key_file), str::to_string);
    Ok(dsse::sign(pt.media_type(), &payload, &[(&keyid, &key)]))
}

/// Adds a signature to an existing envelope file (e.g. the `grant`
/// signature a bundle carrying `admins` needs) and returns the envelope.
pub fn cosign_file(
    bundle_path: &Path,
    key_file: &Path,
    keyid: Option<&str>,
) -> Result<Envelope, BundleError> {
    let key = load_signing_key(key_file)?;
    let mut env = Envelope::from_json(&read_capped(bundle_path)?)?;
    let keyid = keyid.map_or_else(|| default_keyid(key_file), str::to_string);
    env.add_signature(&keyid, &key)?;
    Ok(env)
}

/// What `exportd bundle verify` found.
#[derive(Debug)]
pub struct VerifyReport {
    /// The envelope's payloadType as written.
    pub payload_type: String,
    /// Every signature: valid (with roles), invalid, or from an unknown key.
    pub signatures: Vec<SignatureCheck>,
    /// The version in force on this agent.
    pub version_in_force: u64,
    /// What the agent would do with the bundle now: `Ok` = it would be
    /// applied (nothing is committed by verify), `Err` = the rejection.
    pub verdict: Result<Accepted, BundleError>,
    /// For a configuration or delta that would be applied: how many users
    /// it adds, changes and removes against the model in force.
    pub changes: Option<super::delta::Changes>,
    /// Holds the snapshot compiled by the check until the report is dropped.
    _work: crate::policy::intake::WorkDir,
}

impl VerifyReport {
    /// Whether the bundle would be applied.
    pub fn would_apply(&self) -> bool {
        self.verdict.is_ok()
    }
}

/// Verifies a bundle file against the trust anchors of exportd.toml and the
/// state under `state_dir` (granted admins, version in force, seen
/// requests), exactly as the agent would, without changing anything.
/// `Err` only when the file, the state or the anchors cannot be read or the
/// envelope is malformed.
pub fn verify_file(
    bundle_path: &Path,
    anchors: &[Admin],
    state_dir: &Path,
) -> Result<VerifyReport, BundleError> {
    verify_file_with(bundle_path, anchors, state_dir, None)
}

/// [`verify_file`], counting changes against the inline users of the
/// config file `cfg_path` when no bundle is in force.
pub fn verify_file_with(
    bundle_path: &Path,
    anchors: &[Admin],
    state_dir: &Path,
    cfg_path: Option<&Path>,
) -> Result<VerifyReport, BundleError> {
    let work = crate::policy::intake::WorkDir::create(&std::env::temp_dir()).map_err(|e| {
        BundleError::io(
            "creating a work directory in",
            std::env::temp_dir(),
            std::io::Error::other(e.to_string()),
        )
    })?;
    let f = fs::File::open(bundle_path).map_err(|e| BundleError::io("reading", bundle_path, e))?;
    let shown = bundle_path.display().to_string();
    let sp = spool_envelope(f, u64::MAX, &shown, work.path())?;
    let state = BundleState::load(state_dir)?;
    let trust = state.trust(anchors)?;
    let signatures = trust.check_spooled(&sp)?;
    let verdict = check_spooled(&sp, &trust, &state, work.path());
    let changes = match &verdict {
        Ok(Accepted::Config(c)) => match &c.delta {
            Some(d) => Some(d.changes),
            None => super::diff::full_changes(&state, cfg_path, &sp.file, work.path()).ok(),
        },
        _ => None,
    };
    Ok(VerifyReport {
        payload_type: sp.payload_type.clone(),
        signatures,
        version_in_force: state.version(),
        verdict,
        changes,
        _work: work,
    })
}
