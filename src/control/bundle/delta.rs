//! Delta bundles (config.md, payloadType
//! `application/vnd.exportd.users-delta+json`): users upserted and removed
//! on top of an exact base version.
//!
//! The model in force is `current.json` (the last full bundle) followed by
//! the chain of accepted deltas `delta-<version>.json` in the bundle state
//! directory. A delta is checked against that model by streaming it (the
//! full payload is never parsed whole): the resulting model is compiled
//! like a full bundle ([`crate::policy::intake`]), so unknown policies and
//! extensions assigned twice are found exactly as for a full bundle, and
//! the daemon swaps the compiled snapshot in atomically. In a running
//! agent that registered its snapshot ([`check_delta_in_force`]) the delta
//! is instead kept beside the snapshot file as an overlay
//! ([`crate::policy::overlay`]), checked by lookups in the file: nothing is
//! compiled or written, and a restart rebuilds it from the delta files
//! ([`overlay_in_force`]). The delta itself is held in memory (it is a
//! change, not a directory).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::apply::AcceptedConfig;
use super::state::{BundleState, CURRENT_FILE, Store};
use super::streamed::{Compiled, TempFile, intake_rejection, tmp_snapshot};
use super::trust::Signer;
use super::{BundleError, PayloadType};
use crate::policy::intake::source::{payload_head, payload_users};
use crate::policy::intake::{Compiler, IntakeError, ModelHead};
use crate::policy::model::{Model, Policy, TargetSpec, User, ValidationError};
use crate::policy::overlay::MAX_OVERLAY_USERS;
use crate::policy::snapshot::Snapshot;

/// A users-delta payload.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersDelta {
    /// The version this delta puts in force.
    pub version: u64,
    /// The version it applies on top of (must be the version in force).
    pub base_version: u64,
    /// When central issued it, informational.
    #[serde(default)]
    pub issued_at: Option<String>,
    /// Users added, or replacing the user with the same id entirely.
    #[serde(default)]
    pub upsert: Vec<User>,
    /// Ids of users deleted.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// What a delta (or a full bundle) does to the users in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// Users that were not in force.
    pub added: u64,
    /// Users in force whose entry changes.
    pub changed: u64,
    /// Users in force that are gone.
    pub removed: u64,
}

/// An accepted delta, as carried by [`AcceptedConfig::delta`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaInfo {
    /// The base version it applied on.
    pub base_version: u64,
    /// Its effect on the users in force.
    pub changes: Changes,
    /// Snapshot source key of the resulting chain.
    pub source: String,
}

fn invalid(reason: String) -> BundleError {
    BundleError::InvalidPayload {
        payload_type: PayloadType::UsersDelta,
        reason,
    }
}

/// Parses a delta payload and checks it on its own: versions, no id twice
/// in a list, no id in both lists.
pub fn parse_delta(payload: &[u8]) -> Result<UsersDelta, BundleError> {
    let d: UsersDelta =
        serde_json::from_slice(payload).map_err(|e| invalid(format!("not a users delta: {e}")))?;
    if d.version == 0 {
        return Err(invalid("`version` must be an integer above 0".into()));
    }
    if d.version <= d.base_version {
        return Err(invalid(format!(
            "`version` {} must be above `base_version` {}",
            d.version, d.base_version
        )));
    }
    let mut errors = Vec::new();
    let mut up = HashSet::new();
    for u in &d.upsert {
        if !up.insert(u.id.as_str()) {
            errors.push(format!("user id {:?} is upserted twice", u.id));
        }
    }
    let mut rm = HashSet::new();
    for id in &d.remove {
        if !rm.insert(id.as_str()) {
            errors.push(format!("user id {id:?} is removed twice"));
        }
        if up.contains(id.as_str()) {
            errors.push(format!(
                "user id {id:?} is both upserted and removed; an id may appear in one list only"
            ));
        }
    }
    if errors.is_empty() {
        Ok(d)
    } else {
        Err(BundleError::Validation {
            errors: errors.into_iter().map(ValidationError).collect(),
        })
    }
}

/// `exportd bundle sign`'s check of a delta file (what needs no state).
pub fn lint_delta_file(path: &Path) -> Result<(), BundleError> {
    let bytes = std::fs::read(path).map_err(|e| BundleError::io("reading", path, e))?;
    parse_delta(&bytes).map(|_| ())
}

/// The overlay of a chain of deltas: the last word on each id touched.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    order: Vec<String>,
    last: HashMap<String, Option<User>>,
}

impl Overlay {
    pub(crate) fn apply(&mut self, d: &UsersDelta) {
        for u in &d.upsert {
            self.set(u.id.clone(), Some(u.clone()));
        }
        for id in &d.remove {
            self.set(id.clone(), None);
        }
    }

    fn set(&mut self, id: String, u: Option<User>) {
        if !self.last.contains_key(&id) {
            self.order.push(id.clone());
        }
        self.last.insert(id, u);
    }

    fn touches(&self, id: &str) -> bool {
        self.last.contains_key(id)
    }

    /// The users the overlay puts in force, in order of first mention.
    fn users(&self) -> impl Iterator<Item = &User> {
        self.order
            .iter()
            .filter_map(|id| self.last.get(id).and_then(Option::as_ref))
    }
}

/// Streams the users of the model in force with `overlay` applied: the
/// users of `current.json` the overlay does not touch, then the overlay's.
/// `seen` is called with every user of the model before the overlay (for
/// the unknown-id and changes checks).
pub(crate) fn stream_users<S: Store>(
    state: &BundleState<S>,
    overlay: &Overlay,
    seen: &mut dyn FnMut(&User),
    sink: &mut dyn FnMut(&User) -> Result<(), IntakeError>,
) -> Result<(), BundleError> {
    let r = state
        .store()
        .open(CURRENT_FILE)?
        .ok_or_else(|| no_base(state.version()))?;
    let res = payload_users(r, |u: User| {
        seen(&u);
        if overlay.touches(&u.id) {
            return Ok(());
        }
        sink(&u)
    });
    if let Err(e) = res {
        return Err(intake_rejection(
            e,
            PayloadType::UsersDelta,
            state.version(),
        ));
    }
    for u in overlay.users() {
        sink(u).map_err(|e| intake_rejection(e, PayloadType::UsersDelta, state.version()))?;
    }
    Ok(())
}

fn no_base(in_force: u64) -> BundleError {
    BundleError::DeltaBase {
        version: 0,
        base_version: 0,
        in_force,
        reason: "no configuration bundle is in force to apply a delta to; central must send a full bundle",
    }
}

/// Checks a delta against the state in force and compiles the resulting
/// model under `work` (see the module documentation).
pub fn check_delta<S: Store>(
    payload: Vec<u8>,
    signers: Vec<Signer>,
    state: &BundleState<S>,
    work: &Path,
) -> Result<AcceptedConfig, BundleError> {
    let d = parse_delta(&payload)?;
    let in_force = state.version();
    if d.base_version != in_force {
        return Err(BundleError::DeltaBase {
            version: d.version,
            base_version: d.base_version,
            in_force,
            reason: "the base does not match; central must send a full bundle (or a delta on top of the version in force)",
        });
    }
    // Fast path: the snapshot in force is the model in force; the delta is
    // merged into it as a stream (no JSON of the directory parsed).
    let in_force_snap = work.join("snapshot.bin");
    if state.current_source().is_some()
        && crate::policy::intake::merge::snapshot_source(&in_force_snap) == state.current_source()
    {
        return merge_into_snapshot(d, payload, signers, state, work, &in_force_snap);
    }
    let Some(current) = state.store().open(CURRENT_FILE)? else {
        return Err(no_base(in_force));
    };
    let head = payload_head(current).map_err(|e| BundleError::CorruptState {
        path: state.store().path_of(CURRENT_FILE),
        reason: e,
    })?;
    let mut overlay = state.delta_overlay()?;
    let before = overlay_ids(&overlay);
    overlay.apply(&d);
    let source = state.chain_source_with(&payload);
    let snapshot = Arc::new(TempFile::new(tmp_snapshot(work)));
    let mh = ModelHead {
        version: d.version,
        targets: head.targets.clone(),
        policies: head.policies.clone(),
        admins: None,
        source: Some(source.clone()),
    };
    let mut c = Compiler::new(work, &mh)
        .map_err(|e| intake_rejection(e, PayloadType::UsersDelta, d.version))?;
    let removes: HashSet<&str> = d.remove.iter().map(String::as_str).collect();
    let upserts: HashMap<&str, &User> = d.upsert.iter().map(|u| (u.id.as_str(), u)).collect();
    let mut present: HashSet<String> = HashSet::new();
    let mut changes = Changes::default();
    // Who is in force before this delta: current.json's users not touched
    // by earlier deltas, plus the earlier deltas' users.
    let mut note = |u: &User, in_force_now: bool| {
        if !in_force_now {
            return;
        }
        let id = u.id.as_str();
        if removes.contains(id) {
            present.insert(u.id.clone());
            changes.removed += 1;
        } else if let Some(n) = upserts.get(id) {
            present.insert(u.id.clone());
            if *n != u {
                changes.changed += 1;
            }
        }
    };
    let earlier = state.delta_overlay()?;
    stream_users(
        state,
        &overlay,
        &mut |u| note(u, !before.contains(&u.id)),
        &mut |u| c.add_user(u),
    )?;
    for u in earlier.users() {
        note(u, true);
    }
    let stats = c
        .finish(snapshot.path())
        .map_err(|e| intake_rejection(e, PayloadType::UsersDelta, d.version))?;
    removed_in_force(&d, |id| present.contains(id))?;
    changes.added = d.upsert.iter().filter(|u| !present.contains(&u.id)).count() as u64;
    Ok(accepted_delta(
        &d,
        (head.targets, head.policies),
        (payload, signers),
        (snapshot, stats.users, stats.extensions),
        changes,
        source,
    ))
}

fn overlay_ids(o: &Overlay) -> HashSet<String> {
    o.order.iter().cloned().collect()
}

/// Compiles the model in force (`current.json` and the delta chain) into
/// the snapshot file `out`, with runs under `work`: what a start or a
/// reload does when the snapshot is missing or stale.
pub fn compile_in_force<S: Store>(
    state: &BundleState<S>,
    work: &Path,
    out: &Path,
) -> Result<crate::policy::intake::Stats, BundleError> {
    let Some(current) = state.store().open(CURRENT_FILE)? else {
        return Err(no_base(state.version()));
    };
    let corrupt = |reason: String| BundleError::CorruptState {
        path: state.store().path_of(CURRENT_FILE),
        reason,
    };
    let head = payload_head(current).map_err(corrupt)?;
    let mh = ModelHead {
        version: state.version(),
        targets: head.targets,
        policies: head.policies,
        admins: head.admins,
        source: state.current_source(),
    };
    let version = state.version();
    let mut c =
        Compiler::new(work, &mh).map_err(|e| intake_rejection(e, PayloadType::Config, version))?;
    let overlay = state.delta_overlay()?;
    stream_users(state, &overlay, &mut |_| {}, &mut |u| c.add_user(u))?;
    c.finish(out)
        .map_err(|e| intake_rejection(e, PayloadType::Config, version))
}

/// The model in force with the delta chain applied (tools only: whole).
pub(crate) fn apply_overlay(mut m: Model, overlay: &Overlay) -> Model {
    m.users.retain(|u| !overlay.touches(&u.id));
    m.users.extend(overlay.users().cloned());
    m
}

/// [`check_delta`] by merging the delta into the snapshot in force
/// ([`crate::policy::intake::merge`]); a user upserted while in force
/// counts as changed.
fn merge_into_snapshot<S: Store>(
    d: UsersDelta,
    payload: Vec<u8>,
    signers: Vec<Signer>,
    state: &BundleState<S>,
    work: &Path,
    in_force: &Path,
) -> Result<AcceptedConfig, BundleError> {
    let source = state.chain_source_with(&payload);
    let snapshot = Arc::new(TempFile::new(tmp_snapshot(work)));
    let m = crate::policy::intake::merge::merge_delta(
        in_force,
        d.version,
        Some(source.clone()),
        &d.upsert,
        &d.remove,
        work,
        snapshot.path(),
    )
    .map_err(|e| intake_rejection(e, PayloadType::UsersDelta, d.version))?;
    removed_in_force(&d, |id| m.present.contains(id))?;
    let changed = d
        .upsert
        .iter()
        .filter(|u| m.present.contains(&u.id))
        .count() as u64;
    let changes = Changes {
        added: d.upsert.len() as u64 - changed,
        changed,
        removed: d.remove.len() as u64,
    };
    Ok(accepted_delta(
        &d,
        (m.targets, m.policies),
        (payload, signers),
        (snapshot, m.users, m.extensions),
        changes,
        source,
    ))
}

/// Every id the delta removes must be in force (`in_force`); otherwise
/// one validation error per id that is not.
fn removed_in_force(d: &UsersDelta, in_force: impl Fn(&str) -> bool) -> Result<(), BundleError> {
    let unknown: Vec<ValidationError> = d
        .remove
        .iter()
        .filter(|id| !in_force(id.as_str()))
        .map(|id| {
            ValidationError(format!(
                "remove names user id {id:?}, which is not in force"
            ))
        })
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(BundleError::Validation { errors: unknown })
    }
}

/// A delta accepted with its compiled snapshot: the model it leaves in force
/// (targets and policies unchanged, users in the snapshot), the payload and
/// its signers, the counts.
fn accepted_delta(
    d: &UsersDelta,
    (targets, policies): (Vec<TargetSpec>, Vec<Policy>),
    (payload, signers): (Vec<u8>, Vec<Signer>),
    (snapshot, users, extensions): (Arc<TempFile>, u64, u64),
    changes: Changes,
    source: String,
) -> AcceptedConfig {
    AcceptedConfig {
        version: d.version,
        model: Model {
            version: d.version,
            issued_at: d.issued_at.clone(),
            targets,
            policies,
            users: Vec::new(),
            admins: None,
        },
        payload,
        signers,
        compiled: Some(Box::new(Compiled {
            snapshot,
            sha256: [0; 32],
            users,
            extensions,
        })),
        delta: Some(Box::new(DeltaInfo {
            base_version: d.base_version,
            changes,
            source,
        })),
        overlaid: None,
    }
}

/// [`check_delta`] on the snapshot in force (`in_force`: a base file with
/// any overlay, whose source is the model in force): the delta is checked
/// against the resulting model by lookups in the base and kept beside it
/// ([`crate::policy::overlay`]); no file is read whole or written. Returns
/// the accepted delta (nothing compiled: the delta file is the commit) and
/// the snapshot to swap in, or `None` when this path does not apply (the
/// snapshot is not the model in force, or the overlay is full and must be
/// folded into the file: [`check_delta`] then merges or compiles).
pub fn check_delta_on<S: Store>(
    payload: Vec<u8>,
    signers: Vec<Signer>,
    state: &BundleState<S>,
    in_force: &Snapshot,
) -> Result<Option<(AcceptedConfig, Snapshot)>, BundleError> {
    let d = parse_delta(&payload)?;
    if d.base_version != state.version() {
        return Err(BundleError::DeltaBase {
            version: d.version,
            base_version: d.base_version,
            in_force: state.version(),
            reason: "the base does not match; central must send a full bundle (or a delta on top of the version in force)",
        });
    }
    if state.current_source().is_none() || in_force.source() != state.current_source().as_deref() {
        return Ok(None);
    }
    let touched = in_force.overlay().map_or(0, |o| o.touched());
    if touched + d.upsert.len() + d.remove.len() > MAX_OVERLAY_USERS {
        return Ok(None);
    }
    let source = state.chain_source_with(&payload);
    let (snap, e) = in_force
        .with_delta(d.version, Some(source.clone()), &d.upsert, &d.remove)
        .map_err(|problems| BundleError::Validation {
            errors: problems.into_iter().map(ValidationError).collect(),
        })?;
    let accepted = AcceptedConfig {
        version: d.version,
        model: Model {
            version: d.version,
            issued_at: d.issued_at.clone(),
            targets: in_force.targets().to_vec(),
            policies: in_force
                .policies()
                .iter()
                .map(|p| p.policy.clone())
                .collect(),
            users: Vec::new(),
            admins: None,
        },
        payload,
        signers,
        compiled: None,
        delta: Some(Box::new(DeltaInfo {
            base_version: d.base_version,
            changes: Changes {
                added: e.added,
                changed: e.changed,
                removed: e.removed,
            },
            source,
        })),
        overlaid: None,
    };
    Ok(Some((accepted, snap)))
}

/// The model in force from the snapshot file `base` at a restart: when the
/// file holds `current.json` with the first deltas of the chain, the later
/// deltas are applied beside it as an overlay (no compile). `None` when the
/// file is not a prefix of the chain (it is then compiled again).
pub fn overlay_in_force<S: Store>(
    state: &BundleState<S>,
    base: Snapshot,
) -> Result<Option<Snapshot>, BundleError> {
    let n = state.delta_versions().len();
    let Some(k) = (0..=n).find(|&k| state.source_after(k).as_deref() == base.source()) else {
        return Ok(None);
    };
    let deltas = state.deltas_from(k)?;
    let touched: usize = deltas.iter().map(|d| d.upsert.len() + d.remove.len()).sum();
    if touched > MAX_OVERLAY_USERS {
        return Ok(None);
    }
    let mut snap = base;
    for (i, d) in deltas.into_iter().enumerate() {
        let source = state.source_after(k + i + 1);
        match snap.with_delta(d.version, source, &d.upsert, &d.remove) {
            Ok((s, _)) => snap = s,
            Err(problems) => {
                return Err(BundleError::CorruptState {
                    path: state.store().path_of(&super::state::delta_file(d.version)),
                    reason: format!("accepted delta no longer applies: {}", problems.join("; ")),
                });
            }
        }
    }
    Ok(Some(snap))
}

/// The snapshot a users delta puts in force beside the base file (equal
/// when it is the same value).
#[derive(Debug, Clone)]
pub struct Overlaid(pub Arc<Snapshot>);

impl PartialEq for Overlaid {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Checks a users delta: beside the snapshot the daemon has in force when
/// it registered one and it is the model in force ([`check_delta_on`]:
/// milliseconds, no file written); otherwise merged into or compiled with
/// the snapshot file ([`check_delta`]), which also folds a full overlay.
pub fn check_delta_in_force<S: Store>(
    payload: Vec<u8>,
    signers: Vec<Signer>,
    state: &BundleState<S>,
    work: &Path,
) -> Result<AcceptedConfig, BundleError> {
    if let Some(snap) = state.snapshot_in_force() {
        if let Some((mut c, s)) = check_delta_on(payload.clone(), signers.clone(), state, &snap)? {
            c.overlaid = Some(Overlaid(Arc::new(s)));
            return Ok(c);
        }
    }
    check_delta(payload, signers, state, work)
}
