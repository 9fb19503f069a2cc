//! Command-line parsing and the subcommands: the edge that prints and maps
//! exit codes; never holds logic the library owns.
//!
//! Command-line parsing and the subcommands.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

mod demo;
mod generate;
mod help;
mod ops;
pub(crate) mod out;
mod plugins;
mod status;
mod table;
mod top;

use out::outln;
use table::{COMMANDS, Command, LOG_LEVELS};

/// The parsed command line: one field per flag of the table
/// ([`table::FLAGS`] says which flag sets which field).
#[derive(Default)]
pub struct Args {
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
    targets: Vec<String>,
    archive: Option<String>,
    agent_key: Option<String>,
    agent_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    pending: bool,
    interval: Option<f64>,
    probe: bool,
    /// Positional arguments after the command's words.
    rest: Vec<OsString>,
    /// Everything after the command's words, as given (for `archive verify`).
    raw: Vec<OsString>,
}

/// What the command line asks for.
enum Parsed {
    /// Print this text on stdout and exit 0 (help, version).
    Print(String),
    /// Run a command.
    Run(&'static Command, Box<Args>),
}

/// Finds the command named by the first words; `Err` is the usage error.
fn find_command(argv: &[OsString]) -> Result<Result<(&'static Command, usize), Parsed>> {
    let word = |i: usize| argv.get(i).and_then(|w| w.to_str()).unwrap_or("");
    let first = word(0);
    if table::groups().contains(&first) {
        let name = format!("{first} {}", word(1));
        if let Some(c) = table::command(&name) {
            return Ok(Ok((c, 2)));
        }
        match word(1) {
            "--help" | "-h" => return Ok(Err(Parsed::Print(help::group_help(first)))),
            "" => bail!(
                "`exportd {first}` needs a subcommand:\n{}",
                help::group_help(first)
            ),
            w => bail!("unknown command \"{first} {w}\"; `exportd {first} --help` lists them"),
        }
    }
    match table::command(first) {
        Some(c) if !first.contains(' ') => Ok(Ok((c, 1))),
        _ if first.starts_with('-') => bail!(
            "unknown flag {first} before the command; the command comes first (`exportd --help`)"
        ),
        _ => bail!("unknown command {first:?}; see `exportd --help`"),
    }
}

/// Parses `argv` (without the program name) against the table.
fn parse(argv: Vec<OsString>) -> Result<Parsed> {
    match argv.first().and_then(|a| a.to_str()) {
        None => bail!("no command given\n\n{}", help::overview()),
        Some("--help" | "-h") => return Ok(Parsed::Print(help::overview())),
        Some("--version" | "-V") => {
            return Ok(Parsed::Print(format!(
                "exportd {}",
                env!("CARGO_PKG_VERSION")
            )));
        }
        Some(_) => {}
    }
    let (cmd, n) = match find_command(&argv)? {
        Ok(x) => x,
        Err(p) => return Ok(p),
    };
    let mut a = Box::new(Args {
        log_format: "text".into(),
        raw: argv[n..].to_vec(),
        ..Args::default()
    });
    let mut seen: Vec<&str> = Vec::new();
    let mut p = lexopt::Parser::from_args(argv[n..].to_vec());
    while let Some(arg) = p.next()? {
        use lexopt::Arg::{Long, Short, Value};
        let name = match arg {
            Long("help") | Short('h') => return Ok(Parsed::Print(help::command(cmd))),
            Long(l) => format!("--{l}"),
            Short(c) => format!("-{c}"),
            Value(v) => {
                a.rest.push(v);
                continue;
            }
        };
        let Some((f, _)) = cmd.flags().find(|(f, _)| {
            name == format!("--{}", f.long) || f.short.is_some_and(|c| name == format!("-{c}"))
        }) else {
            return Err(foreign_flag(cmd, &name));
        };
        seen.push(f.long);
        let v = if f.value.is_some() {
            p.value()?
        } else {
            OsString::new()
        };
        (f.set)(&mut a, v)
            .map_err(|e| anyhow::anyhow!("{e:#}; see `exportd {} --help`", cmd.name))?;
    }
    check_complete(cmd, &a, &seen)?;
    Ok(Parsed::Run(cmd, a))
}

/// The error for a flag `cmd` does not take: another command's, or none's.
fn foreign_flag(cmd: &Command, name: &str) -> anyhow::Error {
    let owners: Vec<&str> = COMMANDS
        .iter()
        .filter(|c| {
            c.flags().any(|(f, _)| {
                name == format!("--{}", f.long) || f.short.is_some_and(|s| name == format!("-{s}"))
            })
        })
        .map(|c| c.name)
        .collect();
    if owners.is_empty() {
        anyhow::anyhow!(
            "unknown flag {name} for `exportd {}`; see `exportd {} --help`",
            cmd.name,
            cmd.name
        )
    } else {
        anyhow::anyhow!(
            "`exportd {}` does not take {name} (a flag of: {}); see `exportd {} --help`",
            cmd.name,
            owners.join(", "),
            cmd.name
        )
    }
}

/// Required flags present, positional arguments within the command's arity.
fn check_complete(cmd: &Command, a: &Args, seen: &[&str]) -> Result<()> {
    for (f, req) in cmd.flags() {
        if req && !seen.contains(&f.long) {
            bail!(
                "`exportd {}` needs --{} {}; see `exportd {} --help`",
                cmd.name,
                f.long,
                f.value.unwrap_or(""),
                cmd.name
            );
        }
    }
    let (min, max) = cmd.arity();
    if a.rest.len() < min {
        bail!(
            "`exportd {}` needs {}; see `exportd {} --help`",
            cmd.name,
            cmd.args,
            cmd.name
        );
    }
    if a.rest.len() > max {
        bail!(
            "unexpected argument {:?} for `exportd {}`; see `exportd {} --help`",
            a.rest[max],
            cmd.name,
            cmd.name
        );
    }
    Ok(())
}

/// The configuration file: `--config`, else the default path.
fn config(a: &Args) -> Result<PathBuf> {
    Ok(a.config
        .clone()
        .unwrap_or_else(|| PathBuf::from(table::DEFAULT_CONFIG)))
}

/// `EXPORTD_LOG`: unset or empty is `default`; an unknown value is refused.
fn log_level(default: tracing::Level) -> Result<tracing::Level> {
    match std::env::var("EXPORTD_LOG") {
        Err(std::env::VarError::NotPresent) => Ok(default),
        Ok(s) if s.trim().is_empty() => Ok(default),
        Ok(s) if LOG_LEVELS.contains(&s.trim().to_ascii_lowercase().as_str()) => {
            Ok(s.trim().parse().unwrap_or(default))
        }
        Ok(s) => bail!(
            "EXPORTD_LOG={s:?} is not a log level; use one of {}",
            LOG_LEVELS.join(", ")
        ),
        Err(std::env::VarError::NotUnicode(s)) => bail!(
            "EXPORTD_LOG={s:?} is not a log level; use one of {}",
            LOG_LEVELS.join(", ")
        ),
    }
}

fn init_logging(format: &str, default: tracing::Level) {
    let level = log_level(default).unwrap_or(default);
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
    out::quiet_broken_pipe();
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    let (cmd, a) = match parse(argv)? {
        Parsed::Print(text) => {
            outln!("{text}");
            return Ok(0);
        }
        Parsed::Run(cmd, a) => (cmd, a),
    };
    // A typo in the log level is refused by every command, not ignored.
    log_level(tracing::Level::INFO)?;
    dispatch(cmd, &a)
}

/// Calls the command's code.
fn dispatch(cmd: &Command, a: &Args) -> Result<i32> {
    let cfg = || config(a);
    match cmd.name {
        "run" => run(a),
        "check-config" => check_config(a),
        "status" => status::run(&cfg()?, a.json, a.pending),
        "top" => top::run(
            &cfg()?,
            std::time::Duration::from_secs_f64(a.interval.unwrap_or(2.0).max(0.1)),
            a.json,
        ),
        "audit verify" => audit_verify(a),
        "agent-key" => agent_key(a),
        "archive verify" => archive_verify(a),
        "simulate" => simulate(a),
        "demo" => {
            init_logging(&a.log_format, tracing::Level::WARN);
            demo::demo(a.records.unwrap_or(300), a.keep)
        }
        "request submit" => ops::request_submit(&cfg()?, &a.rest, a.detach),
        "request status" => ops::request_status(&cfg()?, &a.rest, a.json),
        "target init" => ops::target_init(&cfg()?, &a.targets),
        "keygen" => ops::keygen(&a.rest),
        "bundle sign" => ops::bundle_sign(
            a.key.as_deref(),
            a.keyid.as_deref(),
            a.kind.as_deref(),
            &a.rest,
            a.out.as_deref(),
        ),
        "bundle cosign" => ops::bundle_cosign(
            a.key.as_deref(),
            a.keyid.as_deref(),
            &a.rest,
            a.out.as_deref(),
        ),
        "bundle verify" => ops::bundle_verify(&cfg()?, &a.rest),
        "completions" => completions(a),
        "manpage" => {
            out::write_str(&generate::manpage());
            Ok(0)
        }
        "help" => help_cmd(a),
        other => bail!("command {other:?} is in the table but not dispatched (a bug)"),
    }
}

/// `exportd help [COMMAND [SUB]]`.
fn help_cmd(a: &Args) -> Result<i32> {
    let words: Vec<String> = a
        .rest
        .iter()
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    let text = match words.as_slice() {
        [] => help::overview(),
        [g] if table::groups().contains(&g.as_str()) => help::group_help(g),
        _ => match table::command(&words.join(" ")) {
            Some(c) => help::command(c),
            None => bail!(
                "unknown command {:?}; see `exportd --help`",
                words.join(" ")
            ),
        },
    };
    outln!("{text}");
    Ok(0)
}

/// `exportd completions bash|zsh|fish`.
fn completions(a: &Args) -> Result<i32> {
    let text = match a.rest[0].to_str() {
        Some("bash") => generate::bash(),
        Some("zsh") => generate::zsh(),
        Some("fish") => generate::fish(),
        _ => bail!("unknown shell {:?}: use bash, zsh or fish", a.rest[0]),
    };
    out::write_str(&text);
    Ok(0)
}

/// `exportd archive verify`: its own parser checks the combinations
/// (`--config` or `--archive`, dates); the configuration defaults as
/// everywhere when neither is given.
fn archive_verify(a: &Args) -> Result<i32> {
    let mut argv = a.raw.clone();
    if a.config.is_none() && a.archive.is_none() {
        argv.push("--config".into());
        argv.push(config(a)?.into());
    }
    Ok(exportd::proof::verify::main(argv))
}

fn run(a: &Args) -> Result<i32> {
    init_logging(&a.log_format, tracing::Level::INFO);
    let cfg = config(a)?;
    let opts = exportd::agent::RunOptions {
        until_idle: a.until_idle,
        ..Default::default()
    };
    let sum = exportd::agent::run(&cfg, opts)?;
    if a.until_idle && a.log_format == "json" {
        // The final summary as one JSON line, like the log lines around it.
        let v = serde_json::json!({"summary": {
            "records": sum.counts.seen,
            "exported": sum.counts.exported,
            "skipped": sum.counts.skipped,
            "failed": sum.failures.len(),
            "failures": sum.failures,
        }});
        eprintln!("{v}");
        return Ok(if sum.failures.is_empty() { 0 } else { 1 });
    }
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
    // Users are parsed, checked and indexed as a stream (bounded memory).
    match exportd::policy::config::LocalConfig::load_head_unchecked(&path) {
        Ok((cfg, _)) => {
            let snap = match exportd::policy::intake::check_config(&path, &cfg) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("exportd: config {}: {e}", path.display());
                    return Ok(1);
                }
            };
            if snap.user_count() == 0 {
                eprintln!(
                    "exportd: warning: {}: no [[users]]: no record will match a policy until users are configured (or a bundle brings them)",
                    path.display()
                );
            }
            if preflight(&cfg, &snap, a.probe) {
                eprintln!(
                    "exportd: {}: not ready: fix the errors above",
                    path.display()
                );
                return Ok(1);
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

/// The pre-flight (and `--probe`) of `check-config`: prints each finding
/// and probe line; true when something fails.
fn preflight(
    cfg: &exportd::policy::config::LocalConfig,
    snap: &exportd::policy::snapshot::Snapshot,
    probe: bool,
) -> bool {
    use exportd::preflight::{Level, check};
    let decrypting = snap
        .policies()
        .iter()
        .any(|p| p.policy.enabled && p.policy.settings.decrypt);
    let findings = check(cfg, snap.targets(), decrypting);
    for f in &findings {
        eprintln!("exportd: {f}");
    }
    let mut failed = findings.iter().any(|f| f.level == Level::Error);
    if probe {
        let wait = std::time::Duration::from_secs(5);
        for line in exportd::preflight::probe(cfg, snap.targets(), wait) {
            outln!("{line}");
            failed |= !line.ok();
        }
    }
    failed
}

fn agent_key(a: &Args) -> Result<i32> {
    let path = config(a)?;
    let cfg = exportd::policy::config::LocalConfig::load(&path)?;
    let Some(k) = exportd::proof::key::read_public(&cfg.state_dir)? else {
        eprintln!(
            "exportd: agent {} has no key yet in {}: it is made at the agent's first start",
            cfg.agent_id,
            cfg.state_dir.display()
        );
        return Ok(1);
    };
    let public_key = exportd::proof::key::public_b64(&k);
    let fingerprint = exportd::proof::key::public_fingerprint(&k);
    if a.json {
        let v = serde_json::json!({"agent_id": cfg.agent_id, "public_key": public_key, "fingerprint": fingerprint});
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        outln!("agent:       {}", cfg.agent_id);
        outln!("public key:  {public_key}");
        outln!("fingerprint: {fingerprint}");
    }
    Ok(0)
}

fn audit_verify(a: &Args) -> Result<i32> {
    let path = config(a)?;
    let cfg = exportd::policy::config::LocalConfig::load(&path)?;
    match exportd::ledger::audit::verify(&cfg.state_dir) {
        Ok(r) => {
            outln!(
                "audit log OK: {} files, {} rows, last hash {}",
                r.files,
                r.rows,
                r.last_hash
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
