//! Command-line parsing and the subcommands.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use lexopt::prelude::*;

mod demo;
mod ops;
mod plugins;

const USAGE: &str = "\
exportd: direct-export agent for call-recording appliances

USAGE:
    exportd run --config FILE [--until-idle] [--log-format text|json|journal]
    exportd check-config --config FILE
    exportd status --config FILE [--json]
    exportd audit verify --config FILE
    exportd simulate --spool DIR [--count N | --rate R --duration S]
                     [--encrypt-to RECIPIENT] [--users N] [--seed N]
                     [--size-scale F] [--log FILE] [--fsync] [--quiet]
    exportd demo [--records N] [--keep]
    exportd request submit --config FILE REQUEST.json [--detach]
    exportd request status --config FILE [ID] [--json]
    exportd target init --config FILE [--target ID]
    exportd keygen [PREFIX]
    exportd bundle sign --key FILE [--keyid ID] --type config|export-request PAYLOAD.json [--out FILE]
    exportd bundle cosign --key FILE [--keyid ID] BUNDLE.json [--out FILE]
    exportd bundle verify --config FILE BUNDLE.json

Exit codes: 0 success, 1 some records or checks failed, 2 usage or startup error.
See README.md for the configuration file.";

struct Args {
    cmd: Vec<String>,
    config: Option<PathBuf>,
    until_idle: bool,
    log_format: String,
    json: bool,
    spool: Option<PathBuf>,
    count: Option<u64>,
    rate: Option<f64>,
    duration: Option<f64>,
    encrypt_to: Option<String>,
    users: Option<usize>,
    seed: Option<u64>,
    size_scale: Option<f64>,
    log: Option<PathBuf>,
    fsync: bool,
    quiet: bool,
    records: Option<u64>,
    keep: bool,
    key: Option<PathBuf>,
    keyid: Option<String>,
    kind: Option<String>,
    out: Option<PathBuf>,
    detach: bool,
    target: Option<String>,
    rest: Vec<OsString>,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        cmd: Vec::new(),
        config: None,
        until_idle: false,
        log_format: "text".into(),
        json: false,
        spool: None,
        count: None,
        rate: None,
        duration: None,
        encrypt_to: None,
        users: None,
        seed: None,
        size_scale: None,
        log: None,
        fsync: false,
        quiet: false,
        records: None,
        keep: false,
        key: None,
        keyid: None,
        kind: None,
        out: None,
        detach: false,
        target: None,
        rest: Vec::new(),
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("config") | Short('c') => a.config = Some(p.value()?.into()),
            Long("until-idle") => a.until_idle = true,
            Long("log-format") => a.log_format = p.value()?.string()?,
            Long("log-json") => a.log_format = "json".into(),
            Long("json") => a.json = true,
            Long("spool") => a.spool = Some(p.value()?.into()),
            Long("count") => a.count = Some(p.value()?.parse()?),
            Long("rate") => a.rate = Some(p.value()?.parse()?),
            Long("duration") => a.duration = Some(p.value()?.parse()?),
            Long("encrypt-to") => a.encrypt_to = Some(p.value()?.string()?),
            Long("users") => a.users = Some(p.value()?.parse()?),
            Long("seed") => a.seed = Some(p.value()?.parse()?),
            Long("size-scale") => a.size_scale = Some(p.value()?.parse()?),
            Long("log") => a.log = Some(p.value()?.into()),
            Long("fsync") => a.fsync = true,
            Long("quiet") | Short('q') => a.quiet = true,
            Long("records") => a.records = Some(p.value()?.parse()?),
            Long("keep") => a.keep = true,
            Long("key") => a.key = Some(p.value()?.into()),
            Long("keyid") => a.keyid = Some(p.value()?.string()?),
            Long("type") => a.kind = Some(p.value()?.string()?),
            Long("out") | Short('o') => a.out = Some(p.value()?.into()),
            Long("detach") => a.detach = true,
            Long("target") => a.target = Some(p.value()?.string()?),
            Long("help") | Short('h') => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            Long("version") | Short('V') => {
                println!("exportd {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            Value(v) if a.cmd.len() < 2 && a.rest.is_empty() && is_word(&v) => {
                a.cmd.push(v.string()?);
            }
            Value(v) => a.rest.push(v),
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(a)
}

fn is_word(v: &OsString) -> bool {
    matches!(
        v.to_str(),
        Some(
            "run"
                | "check-config"
                | "status"
                | "audit"
                | "verify"
                | "simulate"
                | "demo"
                | "request"
                | "submit"
                | "bundle"
                | "sign"
                | "cosign"
                | "keygen"
                | "target"
                | "init"
        )
    )
}

fn config(a: &Args) -> Result<PathBuf> {
    a.config
        .clone()
        .context("--config FILE is required (e.g. /etc/exportd/exportd.toml)")
}

fn init_logging(format: &str, default: tracing::Level) {
    let level = std::env::var("EXPORTD_LOG")
        .ok()
        .and_then(|s| s.parse::<tracing::Level>().ok())
        .unwrap_or(default);
    // Under systemd, stderr goes to the journal: use its level prefixes.
    let format = if format == "text" && std::env::var_os("JOURNAL_STREAM").is_some() {
        "journal"
    } else {
        format
    };
    let b = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        "json" => b.json().try_init(),
        "journal" => b.with_ansi(false).event_format(JournalFormat).try_init(),
        _ => b.with_ansi(false).try_init(),
    };
}

/// One line per event with the `<N>` priority prefix journald understands
/// (sd-daemon(3)), no timestamp (the journal adds its own).
struct JournalFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let prio = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{prio}>")?;
        tracing_subscriber::fmt::FormatFields::format_fields(ctx, writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Runs the command line; returns the exit code.
pub fn main() -> Result<i32> {
    let a = parse()?;
    let cmd: Vec<&str> = a.cmd.iter().map(String::as_str).collect();
    match cmd.as_slice() {
        ["run"] => run(&a),
        ["check-config"] => check_config(&a),
        ["status"] => status(&a),
        ["audit", "verify"] => audit_verify(&a),
        ["simulate"] => simulate(&a),
        ["demo"] => {
            init_logging(&a.log_format, tracing::Level::WARN);
            demo::demo(a.records.unwrap_or(300), a.keep)
        }
        ["request", "submit"] => ops::request_submit(&a.config, &a.rest, a.detach),
        ["request", "status"] => ops::request_status(&a.config, &a.rest, a.json),
        ["target", "init"] => ops::target_init(&a.config, a.target.as_deref()),
        ["keygen"] => ops::keygen(&a.rest, a.out.as_deref()),
        ["bundle", "sign"] => ops::bundle_sign(
            a.key.as_deref(),
            a.keyid.as_deref(),
            a.kind.as_deref(),
            &a.rest,
            a.out.as_deref(),
        ),
        ["bundle", "cosign"] => ops::bundle_cosign(
            a.key.as_deref(),
            a.keyid.as_deref(),
            &a.rest,
            a.out.as_deref(),
        ),
        ["bundle", "verify"] => ops::bundle_verify(&a.config, &a.rest),
        [] => {
            eprintln!("{USAGE}");
            Ok(2)
        }
        _ => bail!(
            "unknown command {:?}; see `exportd --help`",
            a.cmd.join(" ")
        ),
    }
}

fn run(a: &Args) -> Result<i32> {
    init_logging(&a.log_format, tracing::Level::INFO);
    let cfg = config(a)?;
    let opts = exportd::agent::RunOptions {
        until_idle: a.until_idle,
        ..Default::default()
    };
    let sum = exportd::agent::run(&cfg, opts)?;
    if a.until_idle {
        for f in &sum.failures {
            eprintln!("exportd: failed: {f}");
        }
        eprintln!(
            "exportd: {} records: {} exported, {} skipped, {} failed",
            sum.counts.seen,
            sum.counts.exported,
            sum.counts.skipped,
            sum.failures.len()
        );
        return Ok(if sum.failures.is_empty() { 0 } else { 1 });
    }
    Ok(0)
}

fn check_config(a: &Args) -> Result<i32> {
    let path = config(a)?;
    match exportd::config::LocalConfig::load(&path) {
        Ok(cfg) => {
            let m = cfg.inline_model();
            let snap = exportd::snapshot::Snapshot::from_model(&m)?;
            for s in &cfg.spool {
                if !s.is_dir() {
                    eprintln!(
                        "exportd: warning: spool root {} does not exist yet",
                        s.display()
                    );
                }
            }
            for t in snap.targets() {
                if let Some(p) = &t.path {
                    if !p.is_dir() {
                        eprintln!(
                            "exportd: warning: target {:?} root {} does not exist (is it mounted?)",
                            t.id,
                            p.display()
                        );
                    }
                }
            }
            println!(
                "{}: OK (agent {}, {} spool roots, {} targets, {} policies, {} users, {} extensions)",
                path.display(),
                cfg.agent_id,
                cfg.spool.len(),
                snap.targets().len(),
                snap.policies().len(),
                snap.user_count(),
                snap.extension_count()
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!("exportd: {e}");
            Ok(1)
        }
    }
}

fn status(a: &Args) -> Result<i32> {
    let path = config(a)?;
    let cfg = exportd::config::LocalConfig::load(&path)?;
    let st = exportd::status::Status::read(&cfg.state_dir)
        .with_context(|| format!("reading {}/status.json", cfg.state_dir.display()))?;
    let jpath = cfg.state_dir.join("journal.log");
    let journal =
        exportd::journal::Journal::open_read_only(exportd::journal::FileStore::new(jpath.clone()))
            .with_context(|| format!("reading the journal {}", jpath.display()))?;
    let (exp, skip, rej) = journal.counts();
    if a.json {
        let v = serde_json::json!({
            "status": st,
            "journal": {"records": journal.len(), "exported": exp, "skipped": skip, "rejected": rej, "frames": journal.frames()},
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    match &st {
        None => println!(
            "agent {}: no status yet (the daemon has not run with this state_dir)",
            cfg.agent_id
        ),
        Some(s) => {
            let alive =
                s.state == "running" && std::path::Path::new(&format!("/proc/{}", s.pid)).exists();
            println!(
                "agent:          {} ({})",
                s.agent_id,
                if alive {
                    format!("running, pid {}", s.pid)
                } else {
                    "not running".into()
                }
            );
            println!("updated:        {}", s.updated_at);
            println!("model version:  {}", s.model_version);
            println!(
                "backlog:        {} (retrying {}, blocked {})",
                s.backlog, s.retrying, s.blocked
            );
            println!(
                "since start:    seen {}, exported {}, skipped {}, failed {}, incomplete {}, {} bytes",
                s.counts.seen,
                s.counts.exported,
                s.counts.skipped,
                s.counts.failed,
                s.counts.incomplete,
                s.counts.bytes
            );
            for (k, v) in &s.exported_by_policy_target {
                println!("  exported {k}: {v}");
            }
            for (k, v) in &s.skipped_by_reason {
                println!("  skipped {k}: {v}");
            }
            for (k, v) in &s.errors_by_code {
                println!("  errors {k}: {v}");
            }
            if let Some(r) = &s.last_rejection {
                println!("last bundle rejection: {r}");
            }
            if !s.last_errors.is_empty() {
                println!("last errors:");
                for e in &s.last_errors {
                    println!("  {} {} [{}] {}", e.at, e.path, e.code, e.message);
                }
            }
        }
    }
    println!(
        "journal:        {} records known ({exp} exported, {skip} skipped, {rej} rejected)",
        journal.len()
    );
    Ok(0)
}

fn audit_verify(a: &Args) -> Result<i32> {
    let path = config(a)?;
    let cfg = exportd::config::LocalConfig::load(&path)?;
    match exportd::audit::verify(&cfg.state_dir) {
        Ok(r) => {
            println!(
                "audit log OK: {} files, {} rows, last hash {}",
                r.files, r.rows, r.last_hash
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!("exportd: audit verify FAILED: {e}");
            Ok(1)
        }
    }
}

fn simulate(a: &Args) -> Result<i32> {
    let spool = a.spool.clone().context("--spool DIR is required")?;
    if a.rate.is_some() != a.duration.is_some() {
        bail!("--rate and --duration go together");
    }
    let encrypt = match &a.encrypt_to {
        Some(r) => Some(plugins::encryptor(r)?),
        None => None,
    };
    let opts = exportd::simulate::SimOptions {
        spool,
        count: a.count.unwrap_or(100),
        rate: a.rate.unwrap_or(0.0),
        duration: a.duration.map(std::time::Duration::from_secs_f64),
        users: a.users.unwrap_or(20),
        seed: a.seed.unwrap_or(1),
        size_scale: a.size_scale.unwrap_or(1.0),
        log: a.log.clone(),
        progress: !a.quiet,
        encrypt,
        fsync: a.fsync,
    };
    let s = exportd::simulate::simulate(&opts)
        .with_context(|| format!("writing records into {}", opts.spool.display()))?;
    if !a.quiet {
        let m: Vec<String> = s
            .by_modality
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        eprintln!(
            "simulated {} records ({}), {} content bytes",
            s.records,
            m.join(", "),
            s.bytes
        );
    }
    Ok(0)
}
