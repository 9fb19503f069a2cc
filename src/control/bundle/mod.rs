//! Signed bundles (configuration, export requests) from central or the inbox;
//! nothing takes effect without a verified signature of a key that holds the
//! role.
//!
//! Signed configuration pushed by the central manager (config.md, "Central
//! bundle").
//!
//! A bundle is a DSSE v1 envelope signed with ed25519. It reaches the agent
//! either as a file dropped into `<state_dir>/inbox/` ([`inbox`]) or from
//! central over mutual TLS ([`central`]); both paths end in
//! [`apply::apply_envelope`], which verifies the signatures against the
//! [`trust::TrustSet`], checks the payload completely, and commits the
//! accepted result to [`state::BundleState`] under `<state_dir>/bundle/`.
//!
//! Module map:
//! - [`dsse`]: the envelope, PAE, signing and raw signature checks;
//! - [`trust`]: trust anchors plus granted admins, role checks;
//! - [`state`]: the persisted version / payload / admins / seen requests;
//! - [`apply`]: the pure accept-or-reject decisions and the commit;
//! - [`inbox`]: processing of dropped files;
//! - [`central`]: the mutual-TLS client, status reports, backoff;
//! - [`spool`]: an envelope of any size read as a stream, its payload
//!   decoded to a file and its signatures verified from it;
//! - [`streamed`]: the check-and-commit step for a spooled bundle;
//! - [`delta`]: users-delta bundles on top of the version in force;
//! - [`ops`], [`sign`]: operator functions behind `exportd keygen` and
//!   `exportd bundle` (signing streams the payload).

pub mod apply;
pub mod central;
pub mod delta;
pub mod diff;
pub mod dsse;
pub mod inbox;
pub mod ops;
pub mod sign;
pub mod spool;
pub mod state;
pub mod streamed;
pub mod trust;

use std::fmt;
use std::path::PathBuf;

use crate::policy::model::ValidationError;

pub use apply::{
    Accepted, AcceptedConfig, AcceptedRequest, apply_envelope, check_config_bundle,
    check_export_request,
};
pub use dsse::Envelope;
pub use state::BundleState;
pub use trust::{TrustSet, Verified};

/// The most bytes a bundle (envelope file or HTTP body) may have unless
/// `max_bundle_bytes` in exportd.toml says otherwise: enough for a
/// 1,000,000-user directory (~170 MiB of payload, ~230 MiB as base64).
pub const DEFAULT_MAX_BUNDLE_BYTES: u64 = 512 * 1024 * 1024;

/// A role a key may hold (config.md `[[trust]] roles`, `admins[].roles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// May sign configuration bundles.
    Config,
    /// May sign export requests.
    Export,
    /// May grant roles to other keys (bundles carrying `admins`).
    Grant,
}

impl Role {
    /// The role as written in configuration: `config`, `export` or `grant`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Config => "config",
            Role::Export => "export",
            Role::Grant => "grant",
        }
    }

    /// Parses `config`, `export` or `grant`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "config" => Some(Role::Config),
            "export" => Some(Role::Export),
            "grant" => Some(Role::Grant),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload types a bundle may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadType {
    /// `application/vnd.exportd.config+json`: a policy model (role `config`).
    Config,
    /// `application/vnd.exportd.export-request+json`: an on-demand export
    /// (role `export`).
    ExportRequest,
    /// `application/vnd.exportd.users-delta+json`: users upserted and
    /// removed on top of the version in force (role `config`).
    UsersDelta,
}

impl PayloadType {
    /// Media type of configuration bundles.
    pub const CONFIG_MEDIA_TYPE: &'static str = "application/vnd.exportd.config+json";
    /// Media type of export requests.
    pub const EXPORT_REQUEST_MEDIA_TYPE: &'static str =
        "application/vnd.exportd.export-request+json";

    /// Media type of users-delta bundles.
    pub const USERS_DELTA_MEDIA_TYPE: &'static str = "application/vnd.exportd.users-delta+json";

    /// The DSSE `payloadType` string.
    pub fn media_type(self) -> &'static str {
        match self {
            PayloadType::Config => Self::CONFIG_MEDIA_TYPE,
            PayloadType::ExportRequest => Self::EXPORT_REQUEST_MEDIA_TYPE,
            PayloadType::UsersDelta => Self::USERS_DELTA_MEDIA_TYPE,
        }
    }

    /// The role a signer needs for this payload type.
    pub fn role(self) -> Role {
        match self {
            PayloadType::Config | PayloadType::UsersDelta => Role::Config,
            PayloadType::ExportRequest => Role::Export,
        }
    }

    /// The short name used on the command line: `config`, `users-delta`
    /// or `export-request`.
    pub fn short_name(self) -> &'static str {
        match self {
            PayloadType::Config => "config",
            PayloadType::ExportRequest => "export-request",
            PayloadType::UsersDelta => "users-delta",
        }
    }

    /// Parses a DSSE `payloadType` (exact media type).
    pub fn from_media_type(s: &str) -> Option<PayloadType> {
        match s {
            Self::CONFIG_MEDIA_TYPE => Some(PayloadType::Config),
            Self::EXPORT_REQUEST_MEDIA_TYPE => Some(PayloadType::ExportRequest),
            Self::USERS_DELTA_MEDIA_TYPE => Some(PayloadType::UsersDelta),
            _ => None,
        }
    }

    /// Parses the command-line short name.
    pub fn from_short_name(s: &str) -> Option<PayloadType> {
        match s {
            "config" => Some(PayloadType::Config),
            "export-request" => Some(PayloadType::ExportRequest),
            "users-delta" => Some(PayloadType::UsersDelta),
            _ => None,
        }
    }
}

impl fmt::Display for PayloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.media_type())
    }
}

/// Why a bundle was rejected, or why a bundle operation failed.
///
/// Every message is one line, says what failed and what to do; it is meant
/// for the log, the `.reason` file, the audit row and the status report.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The envelope is not a DSSE v1 envelope (bad JSON, bad base64, no
    /// signatures).
    #[error(
        "malformed bundle: {reason}; the sender must produce a DSSE v1 envelope {{payloadType, payload (base64), signatures: [{{keyid, sig (base64)}}]}}"
    )]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The `payloadType` is none of the known media types.
    #[error(
        "unknown payloadType {got:?}; expected {}, {} or {}",
        PayloadType::CONFIG_MEDIA_TYPE,
        PayloadType::USERS_DELTA_MEDIA_TYPE,
        PayloadType::EXPORT_REQUEST_MEDIA_TYPE
    )]
    UnknownPayloadType {
        /// The payloadType found.
        got: String,
    },
    /// A known payload type, but not the one this check handles.
    #[error("wrong payloadType {got}; this step only takes {expected}")]
    WrongPayloadType {
        /// What the step handles.
        expected: PayloadType,
        /// What the bundle carries.
        got: PayloadType,
    },
    /// No signature is from a key in the trust set.
    #[error(
        "bundle is signed only by unknown keys {keyids:?}; sign it with a key listed in [[trust]] of exportd.toml or granted by an accepted bundle's `admins`"
    )]
    UnknownKey {
        /// The keyids of the signatures found.
        keyids: Vec<String>,
    },
    /// A signature from a trusted key does not verify (tampered payload or
    /// wrong key).
    #[error(
        "signature of key {keyid:?} does not verify over this payload; the bundle was altered after signing or signed with another key than the one trusted as {keyid:?}; re-sign it"
    )]
    BadSignature {
        /// The trusted keyid whose signature failed.
        keyid: String,
    },
    /// Valid signatures, but none from a key holding the needed role.
    #[error(
        "no valid signature holds role {role:?} (valid signers: {signers:?}); have it signed by a key with role {role:?}"
    )]
    MissingRole {
        /// The role needed.
        role: Role,
        /// The keyids whose signatures verified.
        signers: Vec<String>,
    },
    /// A configuration bundle carries `admins` but no valid `grant` signature.
    #[error(
        "bundle carries `admins` but no valid signature holds role \"grant\"; the whole bundle is rejected: add a signature from a key with role \"grant\" or drop `admins`"
    )]
    AdminsWithoutGrant,
    /// The payload is not a well-formed payload of its type (bad JSON,
    /// unknown or missing field).
    #[error("invalid {payload_type} payload: {reason}; fix the payload and re-sign it")]
    InvalidPayload {
        /// The payload type.
        payload_type: PayloadType,
        /// What is wrong.
        reason: String,
    },
    /// The model parsed but did not validate; every problem is listed.
    #[error("configuration does not validate ({} problem(s)): {}; fix them and re-sign with a new version", errors.len(), join(errors))]
    Validation {
        /// All problems found by [`crate::policy::model::Model::validate`] and the
        /// admin key checks.
        errors: Vec<ValidationError>,
    },
    /// Every check passed, but the model cannot be put in force (a target
    /// cannot be built, e.g. an S3 `secret_file` is missing; the snapshot
    /// cannot be compiled; a folder target overlaps a spool root). Nothing
    /// was committed: the configuration in force stays.
    #[error(
        "configuration version {version} cannot be put in force: {reason}; the configuration in force stays; fix it and send a bundle with a new version"
    )]
    CannotApply {
        /// The bundle's version.
        version: u64,
        /// Why.
        reason: String,
    },
    /// The bundle's version is lower than the version in force.
    #[error(
        "rollback refused: bundle version {got} is lower than version {in_force} in force; issue a bundle with a version above {in_force}"
    )]
    Rollback {
        /// The bundle's version.
        got: u64,
        /// The version in force.
        in_force: u64,
    },
    /// The bundle's version equals the version in force.
    #[error(
        "replay refused: version {version} is already in force; issue a bundle with a version above {version}"
    )]
    Replay {
        /// The version in force (and of the bundle).
        version: u64,
    },
    /// A users delta whose base is not the version in force.
    #[error(
        "delta version {version} on top of base version {base_version} refused: version {in_force} is in force; {reason}"
    )]
    DeltaBase {
        /// The delta's version.
        version: u64,
        /// The delta's base version.
        base_version: u64,
        /// The version in force.
        in_force: u64,
        /// What to do.
        reason: &'static str,
    },
    /// The export request's `request_id` was already accepted once.
    #[error(
        "export request {request_id:?} was already accepted; use a new request_id to run it again"
    )]
    RequestSeen {
        /// The repeated request id.
        request_id: String,
    },
    /// A bundle or file is larger than the limit (`max_bundle_bytes`,
    /// default [`DEFAULT_MAX_BUNDLE_BYTES`]).
    #[error(
        "{path} is larger than {max} bytes; send a smaller bundle (a delta) or raise max_bundle_bytes in exportd.toml"
    )]
    TooLarge {
        /// The file or URL.
        path: String,
        /// The limit.
        max: u64,
    },
    /// A trust anchor or granted admin entry is unusable.
    #[error(
        "trusted key {keyid:?}: {reason}; fix [[trust]] in exportd.toml (public_key is base64 of the raw 32-byte ed25519 key, roles among config/export/grant)"
    )]
    BadTrustKey {
        /// The keyid of the entry.
        keyid: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{action} {}: {source}; check that the path exists and exportd may access it", path.display())]
    Io {
        /// What was being done (`reading`, `writing`, ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A persisted state file is unreadable (corrupted or edited by hand).
    #[error("state file {} is corrupt: {reason}; restore it from backup or remove {} to start from the inline model (version 0)", path.display(), path.display())]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A signing key file is unusable.
    #[error("signing key {}: {reason}", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
}

fn join(errors: &[ValidationError]) -> String {
    let v: Vec<&str> = errors.iter().map(|e| e.0.as_str()).collect();
    v.join("; ")
}

impl BundleError {
    /// A short stable code for status reports and metrics (`bad_signature`,
    /// `rollback`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::Malformed { .. } => "malformed",
            BundleError::UnknownPayloadType { .. } => "unknown_payload_type",
            BundleError::WrongPayloadType { .. } => "wrong_payload_type",
            BundleError::UnknownKey { .. } => "unknown_key",
            BundleError::BadSignature { .. } => "bad_signature",
            BundleError::MissingRole { .. } => "missing_role",
            BundleError::AdminsWithoutGrant => "admins_without_grant",
            BundleError::InvalidPayload { .. } => "invalid_payload",
            BundleError::Validation { .. } => "validation",
            BundleError::CannotApply { .. } => "cannot_apply",
            BundleError::Rollback { .. } => "rollback",
            BundleError::Replay { .. } => "replay",
            BundleError::DeltaBase { .. } => "delta_base",
            BundleError::RequestSeen { .. } => "request_seen",
            BundleError::TooLarge { .. } => "too_large",
            BundleError::BadTrustKey { .. } => "bad_trust_key",
            BundleError::Io { .. } => "io",
            BundleError::CorruptState { .. } => "corrupt_state",
            BundleError::KeyFile { .. } => "key_file",
        }
    }

    /// The message on one line (newlines from nested errors replaced), for
    /// `.reason` files and audit rows.
    pub fn one_line(&self) -> String {
        self.to_string().replace(['\n', '\r'], " ")
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        BundleError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
