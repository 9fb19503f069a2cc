//! How many users a full configuration adds, changes and removes against
//! the model in force (`exportd bundle verify`), found by an external sort
//! of both user lists by id: bounded memory for any directory size.

use std::fs::File;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::BundleError;
use super::delta::{Changes, stream_users};
use super::state::{BundleState, Store};
use crate::policy::intake::extsort::{Entry, Sorter};
use crate::policy::intake::source::{config_users, payload_users};
use crate::policy::intake::{IntakeError, WorkDir};
use crate::policy::model::User;
use crate::policy::snapshot::fnv1a;

fn entry(u: &User, side: u32) -> Entry {
    let digest = Sha256::digest(serde_json::to_vec(u).unwrap_or_default());
    Entry {
        hash: fnv1a(u.id.as_bytes()),
        key: u.id.clone(),
        user: side,
        owner: hex::encode(&digest[..16]),
    }
}

fn io_err(work: &Path) -> impl Fn(std::io::Error) -> IntakeError + '_ {
    move |source| IntakeError::Io {
        what: "sorting in",
        path: work.to_path_buf(),
        source,
    }
}

fn counted(e: IntakeError) -> BundleError {
    BundleError::CannotApply {
        version: 0,
        reason: e.to_string(),
    }
}

/// Changes from the model in force (the bundle in force with its deltas,
/// else the inline users of the config file `cfg_path`, else none) to the
/// configuration payload in the file `new_payload`.
pub fn full_changes<S: Store>(
    state: &BundleState<S>,
    cfg_path: Option<&Path>,
    new_payload: &Path,
    work_parent: &Path,
) -> Result<Changes, BundleError> {
    let work = WorkDir::create(work_parent).map_err(counted)?;
    let ioe = io_err(work.path());
    let mut s = Sorter::new(work.path(), "diff");
    if state.current_source().is_some() {
        let overlay = state.delta_overlay()?;
        stream_users(state, &overlay, &mut |_| {}, &mut |u| {
            s.push(entry(u, 0)).map_err(&ioe)
        })?;
    } else if let Some(p) = cfg_path {
        let (cfg, _) = crate::policy::config::LocalConfig::load_head(p).map_err(|e| {
            BundleError::CannotApply {
                version: 0,
                reason: e.to_string(),
            }
        })?;
        config_users(p, &cfg, |u: User| s.push(entry(&u, 0)).map_err(&ioe)).map_err(counted)?;
    }
    let f = File::open(new_payload).map_err(|e| BundleError::io("reading", new_payload, e))?;
    payload_users(f, |u: User| s.push(entry(&u, 1)).map_err(&ioe)).map_err(counted)?;
    let mut out = Changes::default();
    let mut prev: Option<Entry> = None;
    for e in s.finish().map_err(&ioe).map_err(counted)? {
        let e = e.map_err(&ioe).map_err(counted)?;
        match prev.take() {
            Some(p) if p.key == e.key && p.user == 0 && e.user == 1 => {
                if p.owner != e.owner {
                    out.changed += 1;
                }
            }
            Some(p) => {
                count_alone(&p, &mut out);
                prev = Some(e);
            }
            None => prev = Some(e),
        }
    }
    if let Some(p) = prev {
        count_alone(&p, &mut out);
    }
    Ok(out)
}

fn count_alone(e: &Entry, out: &mut Changes) {
    if e.user == 0 {
        out.removed += 1;
    } else {
        out.added += 1;
    }
}
