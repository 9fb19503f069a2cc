//! Operator commands (requests, keys, bundles): print and map exit codes;
//! never decide what the library decides.
//!
//! Operator commands: compliance export requests, signing keys and bundles.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

use super::out::{out, outln};

use exportd::agent::{build_targets, model_in_force, snapshot_to_read, target_env};
use exportd::control::bundle::ops as bops;
use exportd::control::bundle::trust::SigStatus;
use exportd::ledger::audit::AuditLog;
use exportd::policy::config::LocalConfig;
use exportd::requests::{self, RequestEnv};

fn one_path(rest: &[OsString], what: &str) -> Result<PathBuf> {
    match rest {
        [p] => Ok(PathBuf::from(p)),
        [] => bail!("{what} is required"),
        _ => bail!("exactly one {what} is expected, got {}", rest.len()),
    }
}

fn write_out(out: Option<&Path>, text: &str) -> Result<()> {
    match out {
        Some(p) => std::fs::write(p, format!("{text}\n"))
            .with_context(|| format!("writing {}", p.display())),
        None => {
            outln!("{text}");
            Ok(())
        }
    }
}

/// Files this command creates in `state_dir` are not for other users: at
/// most 0640 (folders 0750), whatever the operator's shell umask is.
fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o027));
}

/// Creates `state_dir` (0700, as the daemon keeps it) when it is missing.
fn ensure_state_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// `exportd target init --config FILE [--target ID]`: writes the
/// `.exportd-target` marker into each folder target's (existing) root, or
/// keeps the one there when it is this target's, and records it in
/// `state_dir/targets/`.
pub fn target_init(cfg_path: &Path, only: &[String]) -> Result<i32> {
    use exportd::policy::model::TargetKind;
    use exportd::sink::fs::FsTarget;
    private_umask();
    let cfg = LocalConfig::load(cfg_path)?;
    let model = model_in_force(&cfg);
    for id in only {
        match model.targets.iter().find(|t| t.id == *id) {
            None => {
                let ids: Vec<&str> = model.targets.iter().map(|t| t.id.as_str()).collect();
                bail!("unknown target {id:?} (configured: {})", ids.join(", "));
            }
            Some(t) if t.kind != TargetKind::Fs => {
                bail!(
                    "target {id:?} is not a folder target (kind {})",
                    t.kind.as_str()
                );
            }
            Some(_) => {}
        }
    }
    let specs: Vec<_> = model
        .targets
        .iter()
        .filter(|t| t.kind == TargetKind::Fs && (only.is_empty() || only.contains(&t.id)))
        .collect();
    if specs.is_empty() {
        bail!("the model in force has no folder (kind = \"fs\") targets");
    }
    ensure_state_dir(&cfg.state_dir)?;
    // Writes state (the marker copies): one writer per state_dir.
    let _lock = exportd::ledger::state_lock::lock_exclusive(&cfg.state_dir)?;
    let env = target_env(&cfg);
    let mut code = 0;
    for spec in specs {
        let t = FsTarget::new(spec, &env);
        match t.init() {
            Ok((m, true)) => outln!(
                "target {}: {} initialised (instance {})",
                spec.id,
                t.root().display(),
                m.instance
            ),
            Ok((m, false)) => outln!(
                "target {}: {} already holds this target's marker (instance {}); recorded in {}",
                spec.id,
                t.root().display(),
                m.instance,
                t.marker_copy_path().display()
            ),
            Err(e) => {
                eprintln!("exportd: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// Builds what a request runs against (the model in force, its targets,
/// keys, the audit log) and calls `f` with it.
/// The users are never parsed whole: the snapshot in force answers for
/// them (see [`exportd::agent::snapshot_to_read`]).
fn with_request_env<T>(cfg_path: &Path, f: impl FnOnce(&RequestEnv<'_>) -> T) -> Result<T> {
    let (cfg, sha) = LocalConfig::load_head(cfg_path)?;
    let cfg = &cfg;
    ensure_state_dir(&cfg.state_dir)?;
    let snap = snapshot_to_read(cfg_path, &cfg.state_dir, &sha)
        .context("opening the snapshot of the policy model in force")?;
    let targets = build_targets(&snap, &target_env(cfg))?;
    let audit = Mutex::new(AuditLog::open(&cfg.state_dir)?);
    let roots = exportd::watch::spool::canonical_roots(&cfg.spool);
    let env = RequestEnv {
        state_dir: &cfg.state_dir,
        roots,
        snap: &snap,
        targets: &targets,
        keys: exportd::export::load_keys(&cfg.keys_dir),
        audit: &audit,
    };
    Ok(f(&env))
}

/// Accepts and runs one request in this process (the demo's).
pub fn run_request(
    cfg_path: &Path,
    json: &[u8],
    progress: &mut dyn FnMut(u8),
) -> Result<requests::compliance::Summary> {
    private_umask();
    with_request_env(cfg_path, |env| -> Result<_> {
        let req = requests::accept(env, json)?;
        Ok(requests::execute(env, &req, progress)?)
    })?
}

/// `exportd request submit --config FILE REQUEST.json [--detach]`.
pub fn request_submit(cfg_path: &Path, rest: &[OsString], detach: bool) -> Result<i32> {
    private_umask();
    let req_path = one_path(rest, "REQUEST.json")?;
    let json =
        std::fs::read(&req_path).with_context(|| format!("reading {}", req_path.display()))?;
    with_request_env(cfg_path, |env| submit_in(env, &json, detach))?
}

fn submit_in(env: &RequestEnv<'_>, json: &[u8], detach: bool) -> Result<i32> {
    let req = match requests::accept(env, json) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("exportd: {e}");
            return Ok(1);
        }
    };
    outln!("request {} accepted", req.request_id);
    if detach {
        outln!(
            "the running daemon picks it up at its next start; follow it with `exportd request status`"
        );
        return Ok(0);
    }
    let mut last = 255u8;
    let res = requests::execute(env, &req, &mut |pc| {
        if pc != last {
            last = pc;
            eprint!("\rrequest {}: {pc}%", req.request_id);
        }
    });
    eprintln!();
    match res {
        Ok(s) => {
            let c = &s.counts;
            outln!(
                "request {} completed: {} ({} conversations, {} messages, {} deleted, {} edits, {} files){}",
                s.request_id,
                s.zip.display(),
                c.conversations,
                c.messages,
                c.deleted,
                c.edits,
                c.files,
                if s.beyond_retention {
                    "; the range reaches beyond what the appliance still holds (see request.json)"
                } else {
                    ""
                }
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!("exportd: {e}");
            Ok(1)
        }
    }
}

/// `exportd request status --config FILE [ID] [--json]`.
pub fn request_status(cfg_path: &Path, rest: &[OsString], json: bool) -> Result<i32> {
    let cfg = LocalConfig::load(cfg_path)?;
    let store = exportd::requests::compliance::StatusStore::new(&cfg.state_dir);
    let list = match rest {
        [] => store.list()?,
        [id] => {
            let id = id.to_string_lossy();
            match store.get(&id)? {
                Some(s) => vec![s],
                None => {
                    eprintln!(
                        "exportd: no request {id:?} in {}",
                        cfg.state_dir.join("requests").display()
                    );
                    return Ok(1);
                }
            }
        }
        _ => bail!("at most one request id"),
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    if list.is_empty() {
        outln!("no export requests");
    }
    for s in list {
        out!(
            "{:<28} {:<11} {:>3}%  submitted {}",
            s.request_id,
            format!("{:?}", s.status),
            s.percent,
            s.submitted_at
        );
        if let Some(c) = &s.completed_at {
            out!("  completed {c}");
        }
        if let Some(z) = &s.zip {
            out!("  {}", z.display());
        }
        if let Some(r) = &s.reason {
            out!("  ({r})");
        }
        outln!();
    }
    Ok(0)
}

/// `exportd keygen [PREFIX]`.
pub fn keygen(rest: &[OsString]) -> Result<i32> {
    let prefix = match rest {
        [p] => PathBuf::from(p),
        [] => PathBuf::from("exportd-signing"),
        _ => bail!("usage: exportd keygen [PREFIX]"),
    };
    let k = bops::keygen(&prefix)?;
    outln!(
        "private key: {} (mode 0600; keep it offline)",
        k.key_path.display()
    );
    outln!("public key:  {}", k.pub_path.display());
    outln!("fingerprint: {}", k.fingerprint);
    outln!();
    outln!("# add to exportd.toml of the appliances that trust it:");
    outln!("{}", k.trust_toml(&["config", "export"]));
    Ok(0)
}

/// `exportd bundle sign`.
pub fn bundle_sign(
    key: Option<&Path>,
    keyid: Option<&str>,
    kind: Option<&str>,
    rest: &[OsString],
    out: Option<&Path>,
) -> Result<i32> {
    let key = key.context("--key FILE is required")?;
    let kind = kind.context("--type config|users-delta|export-request is required")?;
    let payload = one_path(rest, "PAYLOAD.json")?;
    // Streamed: the payload is checked, signed and encoded in chunks, never
    // held whole (a 1,000,000-user directory is ~170 MiB).
    match out {
        Some(p) => {
            let tmp = p.with_extension("tmp");
            let mut w = std::io::BufWriter::new(
                std::fs::File::create(&tmp)
                    .with_context(|| format!("writing {}", tmp.display()))?,
            );
            let res =
                exportd::control::bundle::sign::sign_file_to(key, keyid, kind, &payload, &mut w);
            drop(w);
            if let Err(e) = res {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
            std::fs::rename(&tmp, p).with_context(|| format!("writing {}", p.display()))?;
        }
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            exportd::control::bundle::sign::sign_file_to(key, keyid, kind, &payload, &mut w)?;
        }
    }
    Ok(0)
}

/// `exportd bundle cosign` (adds a signature, e.g. a `grant` key's).
pub fn bundle_cosign(
    key: Option<&Path>,
    keyid: Option<&str>,
    rest: &[OsString],
    out: Option<&Path>,
) -> Result<i32> {
    let key = key.context("--key FILE is required")?;
    let bundle = one_path(rest, "BUNDLE.json")?;
    let env = bops::cosign_file(&bundle, key, keyid)?;
    write_out(out, &env.to_json_pretty())?;
    Ok(0)
}

/// `exportd bundle verify --config FILE BUNDLE.json`.
pub fn bundle_verify(cfg_path: &Path, rest: &[OsString]) -> Result<i32> {
    let (cfg, _) = LocalConfig::load_head(cfg_path)?;
    let bundle = one_path(rest, "BUNDLE.json")?;
    let r = match bops::verify_file_with(&bundle, &cfg.trust, &cfg.state_dir, Some(cfg_path)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("exportd: {}: {e}", bundle.display());
            return Ok(1);
        }
    };
    outln!("payload type: {}", r.payload_type);
    for s in &r.signatures {
        let what = match &s.status {
            SigStatus::Valid(roles) => format!(
                "valid, roles {}",
                roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            SigStatus::Invalid => "INVALID signature".to_string(),
            SigStatus::UnknownKey => "unknown key (ignored)".to_string(),
        };
        outln!("signature {}: {what}", s.keyid);
    }
    outln!("version in force: {}", r.version_in_force);
    // The daemon builds the model before committing it: so does the verdict.
    let verdict = match r.verdict {
        Ok(exportd::control::bundle::Accepted::Config(c)) => {
            let env = exportd::agent::target_env(&cfg);
            let prepared = match &c.compiled {
                Some(compiled) => exportd::agent::prepare_compiled(&c, compiled, &cfg.spool, &env),
                None => exportd::agent::prepare_model(&c.model, "verify", &cfg.spool, &env),
            };
            match prepared {
                Ok(_) => Ok(exportd::control::bundle::Accepted::Config(c)),
                Err(reason) => Err(exportd::control::bundle::BundleError::CannotApply {
                    version: c.version,
                    reason,
                }),
            }
        }
        other => other,
    };
    if let (Ok(_), Some(ch)) = (&verdict, r.changes) {
        outln!(
            "users: {} added, {} changed, {} removed (against version {} in force)",
            ch.added,
            ch.changed,
            ch.removed,
            r.version_in_force
        );
    }
    match &verdict {
        Ok(a) => {
            outln!("verdict: would be applied ({})", a.audit_id());
            Ok(0)
        }
        Err(e) => {
            outln!("verdict: would be REJECTED: {e}");
            Ok(1)
        }
    }
}
