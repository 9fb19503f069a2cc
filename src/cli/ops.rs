//! Operator commands: compliance export requests, signing keys and bundles.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

use exportd::agent::{build_targets, model_in_force, target_env};
use exportd::audit::AuditLog;
use exportd::bundle::ops as bops;
use exportd::bundle::trust::SigStatus;
use exportd::config::LocalConfig;
use exportd::requests::{self, RequestEnv};
use exportd::snapshot::Snapshot;

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
            println!("{text}");
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
pub fn target_init(config: &Option<PathBuf>, only: Option<&str>) -> Result<i32> {
    use exportd::model::TargetKind;
    use exportd::target::fs::FsTarget;
    private_umask();
    let cfg_path = config.clone().context("--config FILE is required")?;
    let cfg = LocalConfig::load(&cfg_path)?;
    let model = model_in_force(&cfg);
    if let Some(id) = only {
        match model.targets.iter().find(|t| t.id == id) {
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
        .filter(|t| t.kind == TargetKind::Fs && only.is_none_or(|id| t.id == id))
        .collect();
    if specs.is_empty() {
        bail!("the model in force has no folder (kind = \"fs\") targets");
    }
    ensure_state_dir(&cfg.state_dir)?;
    // Writes state (the marker copies): one writer per state_dir.
    let _lock = exportd::state_lock::lock_exclusive(&cfg.state_dir)?;
    let env = target_env(&cfg);
    let mut code = 0;
    for spec in specs {
        let t = FsTarget::new(spec, &env);
        match t.init() {
            Ok((m, true)) => println!(
                "target {}: {} initialised (instance {})",
                spec.id,
                t.root().display(),
                m.instance
            ),
            Ok((m, false)) => println!(
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

/// `exportd request submit --config FILE REQUEST.json [--detach]`.
pub fn request_submit(config: &Option<PathBuf>, rest: &[OsString], detach: bool) -> Result<i32> {
    private_umask();
    let cfg_path = config.clone().context("--config FILE is required")?;
    let req_path = one_path(rest, "REQUEST.json")?;
    let cfg = LocalConfig::load(&cfg_path)?;
    let json =
        std::fs::read(&req_path).with_context(|| format!("reading {}", req_path.display()))?;
    let model = model_in_force(&cfg);
    let snap = Snapshot::from_model(&model).context("compiling the policy model in force")?;
    let targets = build_targets(&snap, &target_env(&cfg))?;
    ensure_state_dir(&cfg.state_dir)?;
    let audit = Mutex::new(AuditLog::open(&cfg.state_dir)?);
    let roots = cfg
        .spool
        .iter()
        .map(|r| {
            (
                r.clone(),
                std::fs::canonicalize(r).unwrap_or_else(|_| r.clone()),
            )
        })
        .collect();
    let env = RequestEnv {
        state_dir: &cfg.state_dir,
        roots,
        model: &model,
        targets: &targets,
        keys: exportd::export::load_keys(&cfg.keys_dir),
        audit: &audit,
    };
    let req = match requests::accept(&env, &json) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("exportd: {e}");
            return Ok(1);
        }
    };
    println!("request {} accepted", req.request_id);
    if detach {
        println!(
            "the running daemon picks it up at its next start; follow it with `exportd request status`"
        );
        return Ok(0);
    }
    let mut last = 255u8;
    let res = requests::execute(&env, &req, &mut |pc| {
        if pc != last {
            last = pc;
            eprint!("\rrequest {}: {pc}%", req.request_id);
        }
    });
    eprintln!();
    match res {
        Ok(s) => {
            let c = &s.counts;
            println!(
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
pub fn request_status(config: &Option<PathBuf>, rest: &[OsString], json: bool) -> Result<i32> {
    let cfg_path = config.clone().context("--config FILE is required")?;
    let cfg = LocalConfig::load(&cfg_path)?;
    let store = exportd::compliance::StatusStore::new(&cfg.state_dir);
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
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    if list.is_empty() {
        println!("no export requests");
    }
    for s in list {
        print!(
            "{:<28} {:<11} {:>3}%  submitted {}",
            s.request_id,
            format!("{:?}", s.status),
            s.percent,
            s.submitted_at
        );
        if let Some(c) = &s.completed_at {
            print!("  completed {c}");
        }
        if let Some(z) = &s.zip {
            print!("  {}", z.display());
        }
        if let Some(r) = &s.reason {
            print!("  ({r})");
        }
        println!();
    }
    Ok(0)
}

/// `exportd keygen [PREFIX]`.
pub fn keygen(rest: &[OsString], out: Option<&Path>) -> Result<i32> {
    let prefix = match (rest, out) {
        ([p], _) => PathBuf::from(p),
        ([], Some(o)) => o.to_path_buf(),
        ([], None) => PathBuf::from("exportd-signing"),
        _ => bail!("usage: exportd keygen [PREFIX]"),
    };
    let k = bops::keygen(&prefix)?;
    println!(
        "private key: {} (mode 0600; keep it offline)",
        k.key_path.display()
    );
    println!("public key:  {}", k.pub_path.display());
    println!("fingerprint: {}", k.fingerprint);
    println!();
    println!("# add to exportd.toml of the appliances that trust it:");
    println!("{}", k.trust_toml(&["config", "export"]));
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
    let kind = kind.context("--type config|export-request is required")?;
    let payload = one_path(rest, "PAYLOAD.json")?;
    let env = bops::sign_file(key, keyid, kind, &payload)?;
    write_out(out, &env.to_json_pretty())?;
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
pub fn bundle_verify(config: &Option<PathBuf>, rest: &[OsString]) -> Result<i32> {
    let cfg_path = config.clone().context("--config FILE is required")?;
    let cfg = LocalConfig::load(&cfg_path)?;
    let bundle = one_path(rest, "BUNDLE.json")?;
    let r = match bops::verify_file(&bundle, &cfg.trust, &cfg.state_dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("exportd: {}: {e}", bundle.display());
            return Ok(1);
        }
    };
    println!("payload type: {}", r.payload_type);
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
        println!("signature {}: {what}", s.keyid);
    }
    println!("version in force: {}", r.version_in_force);
    // The daemon builds the model before committing it: so does the verdict.
    let verdict = match r.verdict {
        Ok(exportd::bundle::Accepted::Config(c)) => {
            match exportd::agent::prepare_model(
                &c.model,
                "verify",
                &cfg.spool,
                &exportd::agent::target_env(&cfg),
            ) {
                Ok(_) => Ok(exportd::bundle::Accepted::Config(c)),
                Err(reason) => Err(exportd::bundle::BundleError::CannotApply {
                    version: c.version,
                    reason,
                }),
            }
        }
        other => other,
    };
    match &verdict {
        Ok(a) => {
            println!("verdict: would be applied ({})", a.audit_id());
            Ok(0)
        }
        Err(e) => {
            println!("verdict: would be REJECTED: {e}");
            Ok(1)
        }
    }
}
