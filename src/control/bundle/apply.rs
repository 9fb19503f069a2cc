//! Whether a bundle is accepted, and its commit; never commits a bundle that
//! failed a check.
//!
//! The accept-or-reject decisions for bundles, and the commit.
//!
//! The `check_*` functions are pure: they read the [`BundleState`] and
//! decide, nothing more. [`BundleState::commit`] persists an accepted result.
//! [`apply_envelope`] is the one step both delivery paths (inbox file and
//! central fetch) end in: build the trust set, check, commit.
//!
//! Order of checks for a configuration bundle (the first failure is
//! reported): envelope and payloadType, signatures and role `config`
//! ([`TrustSet::verify`]), payload parses as a [`Model`] with a `version`
//! (unknown fields rejected), `admins` present ⇒ a valid `grant` signature,
//! version above the version in force, then complete validation (every
//! problem listed).

use serde_json::Value;

use super::dsse::Envelope;
use super::state::{BundleState, Store};
use super::trust::{Signer, TrustSet, parse_public_key};
use super::{BundleError, PayloadType, Role};
use crate::policy::model::{Admin, Model, ValidationError};

/// The longest export `request_id` accepted.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A configuration bundle that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedConfig {
    /// The validated model, to compile into the snapshot in force.
    pub model: Model,
    /// Its version (above the version in force when checked).
    pub version: u64,
    /// The payload bytes exactly as signed.
    pub payload: Vec<u8>,
    /// Who signed it.
    pub signers: Vec<Signer>,
    /// For a spooled bundle ([`super::streamed`]): the snapshot compiled
    /// while it was checked. `model` then has no users and `payload` is
    /// empty (the payload file became `current.json`).
    pub compiled: Option<Box<super::streamed::Compiled>>,
    /// For a users delta: its base and effect (`payload` is the delta).
    pub delta: Option<Box<super::delta::DeltaInfo>>,
    /// For a users delta applied beside the snapshot in force: the
    /// snapshot to swap in (nothing compiled, no file written).
    pub overlaid: Option<super::delta::Overlaid>,
}

/// An export request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedRequest {
    /// The request id (safe as a file name: `[A-Za-z0-9._-]`, not starting
    /// with `.`, at most [`MAX_REQUEST_ID_LEN`] bytes).
    pub request_id: String,
    /// The JSON payload exactly as signed (a JSON object; its other fields
    /// are checked by the export-request owner).
    pub payload: Vec<u8>,
    /// Who signed it.
    pub signers: Vec<Signer>,
}

/// Any accepted bundle.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// A new configuration to put in force.
    Config(AcceptedConfig),
    /// An export request to launch.
    ExportRequest(AcceptedRequest),
}

impl Accepted {
    /// What the audit row's `ccdr_id` carries: the version of a
    /// configuration or the id of an export request.
    pub fn audit_id(&self) -> String {
        match self {
            Accepted::Config(c) => c.version.to_string(),
            Accepted::ExportRequest(r) => r.request_id.clone(),
        }
    }

    /// The payload type.
    pub fn payload_type(&self) -> PayloadType {
        match self {
            Accepted::Config(c) if c.delta.is_some() => PayloadType::UsersDelta,
            Accepted::Config(_) => PayloadType::Config,
            Accepted::ExportRequest(_) => PayloadType::ExportRequest,
        }
    }
}

/// The payload type of an envelope, or the error for an unknown one.
pub fn payload_type_of(env: &Envelope) -> Result<PayloadType, BundleError> {
    PayloadType::from_media_type(&env.payload_type).ok_or_else(|| BundleError::UnknownPayloadType {
        got: env.payload_type.clone(),
    })
}

fn expect_type(env: &Envelope, expected: PayloadType) -> Result<(), BundleError> {
    let got = payload_type_of(env)?;
    if got != expected {
        return Err(BundleError::WrongPayloadType { expected, got });
    }
    Ok(())
}

/// Checks a configuration bundle against the trust set and the state in
/// force, without changing anything. See the module documentation for the
/// order of checks.
pub fn check_config_bundle<S: Store>(
    env: &Envelope,
    trust: &TrustSet,
    state: &BundleState<S>,
) -> Result<AcceptedConfig, BundleError> {
    expect_type(env, PayloadType::Config)?;
    let verified = trust.verify(env)?;
    let model = parse_config_payload(&verified.payload)?;

    if model.admins.is_some() && !verified.signed_with_role(Role::Grant) {
        return Err(BundleError::AdminsWithoutGrant);
    }

    let in_force = state.version();
    if model.version == in_force {
        return Err(BundleError::Replay { version: in_force });
    }
    if model.version < in_force {
        return Err(BundleError::Rollback {
            got: model.version,
            in_force,
        });
    }

    let errors = validate_config(&model, Some(trust));
    if !errors.is_empty() {
        return Err(BundleError::Validation { errors });
    }

    Ok(AcceptedConfig {
        version: model.version,
        model,
        payload: verified.payload,
        signers: verified.signers,
        compiled: None,
        delta: None,
        overlaid: None,
    })
}

/// Parses a configuration payload: JSON, a `version` above 0, and exactly
/// the fields of [`Model`] (unknown fields are rejected).
pub fn parse_config_payload(payload: &[u8]) -> Result<Model, BundleError> {
    let invalid = |reason: String| BundleError::InvalidPayload {
        payload_type: PayloadType::Config,
        reason,
    };
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| invalid(format!("not JSON: {e}")))?;
    match value.get("version") {
        Some(v) if v.as_u64().is_some_and(|n| n > 0) => {}
        Some(_) => return Err(invalid("`version` must be an integer above 0".into())),
        None => return Err(invalid("missing `version`".into())),
    }
    serde_json::from_value(value).map_err(|e| invalid(e.to_string()))
}

/// Every validation problem of a pushed model: [`Model::validate`] plus the
/// admin checks (usable keys; with a trust set, no keyid that is a trust
/// anchor).
pub fn validate_config(model: &Model, trust: Option<&TrustSet>) -> Vec<ValidationError> {
    let mut errors = model.validate();
    if let Some(admins) = &model.admins {
        errors.extend(check_admins(admins, trust));
    }
    errors
}

/// Checks granted admins beyond [`Model::validate`] (which checks roles and
/// duplicates): usable keys, no keyid that is already a trust anchor.
fn check_admins(admins: &[Admin], trust: Option<&TrustSet>) -> Vec<ValidationError> {
    let mut errs = Vec::new();
    for a in admins {
        if a.keyid.is_empty() {
            errs.push(ValidationError("an admin has an empty keyid".into()));
        }
        if let Err(r) = parse_public_key(&a.public_key) {
            errs.push(ValidationError(format!("admin {:?}: {r}", a.keyid)));
        }
        if trust.is_some_and(|t| t.is_anchor(&a.keyid)) {
            errs.push(ValidationError(format!(
                "admin keyid {:?} is a [[trust]] anchor of exportd.toml; a push cannot redefine it",
                a.keyid
            )));
        }
    }
    errs
}

/// Whether `id` is a valid export request id.
pub fn request_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses an export request payload far enough to route it: a JSON object
/// with a file-name-safe `request_id` (see [`request_id_ok`]), which is
/// returned. The other fields belong to the export-request owner.
pub fn parse_request_payload(payload: &[u8]) -> Result<String, BundleError> {
    let invalid = |reason: String| BundleError::InvalidPayload {
        payload_type: PayloadType::ExportRequest,
        reason,
    };
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let Some(obj) = value.as_object() else {
        return Err(invalid("the payload must be a JSON object".into()));
    };
    match obj.get("request_id") {
        Some(Value::String(s)) if request_id_ok(s) => Ok(s.clone()),
        Some(Value::String(s)) => Err(invalid(format!(
            "request_id {s:?} must be 1 to {MAX_REQUEST_ID_LEN} characters of [A-Za-z0-9._-], not starting with '.'"
        ))),
        Some(_) => Err(invalid("request_id must be a string".into())),
        None => Err(invalid("missing request_id".into())),
    }
}

/// Checks an export request (role `export`) without changing anything: a
/// JSON object with a fresh, file-name-safe `request_id`.
pub fn check_export_request<S: Store>(
    env: &Envelope,
    trust: &TrustSet,
    state: &BundleState<S>,
) -> Result<AcceptedRequest, BundleError> {
    expect_type(env, PayloadType::ExportRequest)?;
    let verified = trust.verify(env)?;
    let request_id = parse_request_payload(&verified.payload)?;
    if state.has_seen(&request_id) {
        return Err(BundleError::RequestSeen { request_id });
    }
    Ok(AcceptedRequest {
        request_id,
        payload: verified.payload,
        signers: verified.signers,
    })
}

/// Checks any bundle, dispatching on its payloadType.
pub fn check_envelope<S: Store>(
    env: &Envelope,
    trust: &TrustSet,
    state: &BundleState<S>,
) -> Result<Accepted, BundleError> {
    match payload_type_of(env)? {
        PayloadType::Config => check_config_bundle(env, trust, state).map(Accepted::Config),
        PayloadType::ExportRequest => {
            check_export_request(env, trust, state).map(Accepted::ExportRequest)
        }
        PayloadType::UsersDelta => {
            let verified = trust.verify(env)?;
            super::delta::check_delta_in_force(
                verified.payload,
                verified.signers,
                state,
                &std::env::temp_dir(),
            )
            .map(Accepted::Config)
        }
    }
}

impl<S: Store> BundleState<S> {
    /// Builds the trust set in force: `anchors` from exportd.toml plus the
    /// admins granted by the configuration in force.
    pub fn trust(&self, anchors: &[Admin]) -> Result<TrustSet, BundleError> {
        TrustSet::new(anchors, self.admins())
    }

    /// Persists an accepted bundle. A configuration replaces the payload and
    /// version (admins replaced when the model has `Some`, kept when `None`,
    /// `Some(vec![])` revokes all); an export request is added to the seen
    /// set. The version / seen checks are repeated, so a result checked
    /// against an older state cannot be committed twice.
    pub fn commit(&mut self, accepted: &Accepted) -> Result<(), BundleError> {
        match accepted {
            Accepted::Config(c) => {
                let in_force = self.version();
                if c.version == in_force {
                    return Err(BundleError::Replay { version: in_force });
                }
                if c.version < in_force {
                    return Err(BundleError::Rollback {
                        got: c.version,
                        in_force,
                    });
                }
                if c.delta.is_some() {
                    return self.commit_delta(c.version, &c.payload);
                }
                self.commit_config(c.version, &c.payload, c.model.admins.as_deref())
            }
            Accepted::ExportRequest(r) => {
                if self.has_seen(&r.request_id) {
                    return Err(BundleError::RequestSeen {
                        request_id: r.request_id.clone(),
                    });
                }
                self.commit_request(&r.request_id)
            }
        }
    }
}

/// Verifies, checks and commits one envelope: the single step both the
/// inbox and the central fetch end in. On `Ok` the result is durable and the
/// caller must act on it (put the model in force, launch the export); on
/// `Err` nothing changed.
///
/// Commits a configuration without first building what it needs; the daemon
/// uses [`apply_envelope_with`] so that a model it cannot put in force is
/// never committed.
pub fn apply_envelope<S: Store>(
    env: &Envelope,
    anchors: &[Admin],
    state: &mut BundleState<S>,
) -> Result<Accepted, BundleError> {
    apply_envelope_with(env, anchors, state, &mut |_| Ok(())).map(|(a, ())| a)
}

/// Prepares an accepted bundle for use before it is committed: for a
/// configuration, builds what putting it in force needs (compiled snapshot,
/// targets, environment checks such as spool overlap) and returns it, or the
/// reason it cannot be put in force.
pub type Prepare<'a, T> = dyn FnMut(&Accepted) -> Result<T, String> + 'a;

/// The error for a verified bundle the agent cannot put in force (the
/// `prepare` step refused it with `reason`).
pub(super) fn not_applied(accepted: &Accepted, reason: String) -> BundleError {
    match accepted {
        Accepted::Config(c) => BundleError::CannotApply {
            version: c.version,
            reason,
        },
        Accepted::ExportRequest(r) => BundleError::InvalidPayload {
            payload_type: PayloadType::ExportRequest,
            reason: format!("request {:?}: {reason}", r.request_id),
        },
    }
}

/// [`apply_envelope`] with a preparation step between the checks and the
/// commit: `prepare` runs on the accepted bundle and only when it succeeds is
/// the bundle committed. A configuration whose preparation fails is rejected
/// with [`BundleError::CannotApply`] and nothing is committed: the version in
/// force stays, and a restart starts with it. Returns the accepted bundle
/// with what `prepare` built.
pub fn apply_envelope_with<S: Store, T>(
    env: &Envelope,
    anchors: &[Admin],
    state: &mut BundleState<S>,
    prepare: &mut Prepare<'_, T>,
) -> Result<(Accepted, T), BundleError> {
    let trust = state.trust(anchors)?;
    let accepted = check_envelope(env, &trust, state)?;
    let prepared = prepare(&accepted).map_err(|reason| not_applied(&accepted, reason))?;
    state.commit(&accepted)?;
    Ok((accepted, prepared))
}

/// [`apply_envelope`] for raw bytes (a file or an HTTP body): rejects more
/// than [`super::DEFAULT_MAX_BUNDLE_BYTES`] and malformed JSON first.
pub fn apply_bytes<S: Store>(
    bytes: &[u8],
    source: &str,
    anchors: &[Admin],
    state: &mut BundleState<S>,
) -> Result<Accepted, BundleError> {
    apply_bytes_with(bytes, source, anchors, state, &mut |_| Ok(())).map(|(a, ())| a)
}

/// [`apply_envelope_with`] for raw bytes: rejects more than
/// [`super::DEFAULT_MAX_BUNDLE_BYTES`] and malformed JSON first.
pub fn apply_bytes_with<S: Store, T>(
    bytes: &[u8],
    source: &str,
    anchors: &[Admin],
    state: &mut BundleState<S>,
    prepare: &mut Prepare<'_, T>,
) -> Result<(Accepted, T), BundleError> {
    if bytes.len() as u64 > super::DEFAULT_MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge {
            path: source.to_string(),
            max: super::DEFAULT_MAX_BUNDLE_BYTES,
        });
    }
    let env = Envelope::from_json(bytes)?;
    apply_envelope_with(&env, anchors, state, prepare)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        for ok in ["r-2026-11-21-1", "a", "A.b_c-9"] {
            assert!(request_id_ok(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(!request_id_ok(bad), "{bad}");
        }
    }
}
