//! The check-and-commit step for a spooled bundle (inbox file or central
//! response of any size): the same decisions as [`super::apply`], made on
//! the payload file without holding it in memory. A configuration is
//! compiled into a temporary snapshot while it is validated (every user is
//! checked in the stream; extensions assigned twice are found in the
//! merge), so the daemon only renames it into place.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::apply::{
    Accepted, AcceptedConfig, AcceptedRequest, Prepare, parse_request_payload, validate_config,
};
use super::spool::Spooled;
use super::state::{BundleState, Store};
use super::trust::{Signer, TrustSet};
use super::{BundleError, PayloadType, Role};
use crate::policy::intake::{self, IntakeError};
use crate::policy::model::{Model, ValidationError};

/// The most bytes an export request payload may have.
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;

/// A file removed when the last handle to it is dropped (unless it was
/// renamed away before).
#[derive(Debug, PartialEq, Eq)]
pub struct TempFile(PathBuf);

impl TempFile {
    /// Takes charge of the file at `path`.
    pub fn new(path: PathBuf) -> TempFile {
        TempFile(path)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A configuration compiled while it was checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// The snapshot file, to rename into place.
    pub snapshot: Arc<TempFile>,
    /// SHA-256 of the payload as signed.
    pub sha256: [u8; 32],
    /// Users in the model.
    pub users: u64,
    /// Extensions in the model.
    pub extensions: u64,
}

/// A fresh temporary snapshot path under `work`.
pub fn tmp_snapshot(work: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    work.join(format!(
        ".snapshot-{}-{}.tmp",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Maps an intake failure of a bundle to its rejection.
pub(crate) fn intake_rejection(e: IntakeError, pt: PayloadType, version: u64) -> BundleError {
    match e {
        IntakeError::Invalid { problems, more } => {
            let mut errors: Vec<ValidationError> =
                problems.into_iter().map(ValidationError).collect();
            if more > 0 {
                errors.push(ValidationError(format!("... and {more} more problems")));
            }
            BundleError::Validation { errors }
        }
        IntakeError::Parse { msg, .. } => BundleError::InvalidPayload {
            payload_type: pt,
            reason: msg,
        },
        e @ IntakeError::Io { .. } => BundleError::CannotApply {
            version,
            reason: e.to_string(),
        },
    }
}

/// Checks a spooled bundle against the trust set and the state in force,
/// changing nothing but the temporary snapshot it compiles under `work`.
pub fn check_spooled<S: Store>(
    sp: &Spooled,
    trust: &TrustSet,
    state: &BundleState<S>,
    work: &Path,
) -> Result<Accepted, BundleError> {
    let (pt, signers) = trust.verify_spooled(sp)?;
    match pt {
        PayloadType::ExportRequest => {
            let payload = sp.read_small(MAX_REQUEST_BYTES)?;
            let request_id = parse_request_payload(&payload)?;
            if state.has_seen(&request_id) {
                return Err(BundleError::RequestSeen { request_id });
            }
            Ok(Accepted::ExportRequest(AcceptedRequest {
                request_id,
                payload,
                signers,
            }))
        }
        PayloadType::Config => {
            check_spooled_config(sp, signers, trust, state, work).map(Accepted::Config)
        }
        PayloadType::UsersDelta => {
            // A delta is a change, not a directory: held in memory.
            let payload = sp.read_small(sp.len)?;
            super::delta::check_delta_in_force(payload, signers, state, work).map(Accepted::Config)
        }
    }
}

fn check_spooled_config<S: Store>(
    sp: &Spooled,
    signers: Vec<Signer>,
    trust: &TrustSet,
    state: &BundleState<S>,
    work: &Path,
) -> Result<AcceptedConfig, BundleError> {
    let head =
        intake::source::payload_head(sp.open()?).map_err(|reason| BundleError::InvalidPayload {
            payload_type: PayloadType::Config,
            reason,
        })?;
    if head.admins.is_some() && !signers.iter().any(|s| s.roles.contains(&Role::Grant)) {
        return Err(BundleError::AdminsWithoutGrant);
    }
    check_version(head.version, state.version())?;
    let model = Model {
        version: head.version,
        issued_at: head.issued_at.clone(),
        targets: head.targets.clone(),
        policies: head.policies.clone(),
        users: Vec::new(),
        admins: head.admins.clone(),
    };
    let errors = validate_config(&model, Some(trust));
    if !errors.is_empty() {
        return Err(BundleError::Validation { errors });
    }
    let snapshot = Arc::new(TempFile(tmp_snapshot(work)));
    let source = format!("bundle:{}", hex::encode(sp.sha256));
    let (_, stats) = intake::compile_payload(
        &|| File::open(&sp.file),
        &sp.file,
        Some(source),
        work,
        snapshot.path(),
    )
    .map_err(|e| intake_rejection(e, PayloadType::Config, head.version))?;
    Ok(AcceptedConfig {
        version: head.version,
        model,
        payload: Vec::new(),
        signers,
        compiled: Some(Box::new(Compiled {
            snapshot,
            sha256: sp.sha256,
            users: stats.users,
            extensions: stats.extensions,
        })),
        delta: None,
        overlaid: None,
    })
}

/// The version rule: above the version in force.
pub(crate) fn check_version(got: u64, in_force: u64) -> Result<(), BundleError> {
    if got == in_force {
        return Err(BundleError::Replay { version: in_force });
    }
    if got < in_force {
        return Err(BundleError::Rollback { got, in_force });
    }
    Ok(())
}

/// Verifies, checks, prepares and commits one spooled bundle (see
/// [`super::apply::apply_envelope_with`]): a configuration's payload file
/// becomes `current.json` by rename. Temporary snapshots are compiled under
/// `work` (the state directory in the daemon).
pub fn apply_spooled_with<S: Store, T>(
    mut sp: Spooled,
    anchors: &[crate::policy::model::Admin],
    state: &mut BundleState<S>,
    work: &Path,
    prepare: &mut Prepare<'_, T>,
) -> Result<(Accepted, T), BundleError> {
    let trust = state.trust(anchors)?;
    let accepted = check_spooled(&sp, &trust, state, work)?;
    let prepared =
        prepare(&accepted).map_err(|reason| super::apply::not_applied(&accepted, reason))?;
    match &accepted {
        Accepted::Config(c) if c.delta.is_some() => state.commit(&accepted)?,
        Accepted::Config(c) => {
            check_version(c.version, state.version())?;
            state.commit_config_file(c.version, &sp.file, sp.sha256, c.model.admins.as_deref())?;
            sp.keep();
        }
        Accepted::ExportRequest(_) => state.commit(&accepted)?,
    }
    Ok((accepted, prepared))
}
