//! The command table: every command with its flags, positional arguments
//! and help text, and every flag with what it sets. The parser, `--help`,
//! `exportd help`, the completions and the man page are all made from it,
//! so a new command is one [`Command`] entry and a new flag one [`Flag`]
//! entry plus its name in the commands that take it.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::Args;

/// The configuration file a command reads when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/exportd/exportd.toml";

/// The values `--log-format` accepts.
pub const LOG_FORMATS: &[&str] = &["text", "json", "journal"];

/// The values `EXPORTD_LOG` accepts.
pub const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

/// The exit codes, as every command's help and the man page state them.
pub const EXIT_CODES: &[(u8, &str)] = &[
    (0, "success"),
    (
        1,
        "the command ran and something it checked or exported failed (records, checks, a verdict)",
    ),
    (
        2,
        "usage or startup error: bad arguments, unreadable configuration, state_dir in use",
    ),
];

/// One flag: `--long` (and `-s`), the name of its value (`None` for a
/// switch; `a|b|c` lists the accepted values), its help, and what it sets.
pub struct Flag {
    /// The long name, without `--`.
    pub long: &'static str,
    /// The short name, if any.
    pub short: Option<char>,
    /// The value's name (`FILE`, `N`, `text|json|journal`), `None` for a switch.
    pub value: Option<&'static str>,
    /// May be given more than once.
    pub repeat: bool,
    /// One line of help.
    pub help: &'static str,
    /// Stores the value (an empty string for a switch) into the arguments.
    pub set: fn(&mut Args, OsString) -> Result<()>,
}

/// One command: its words, its flags (long names; a trailing `!` marks a
/// required flag), its positional arguments as the usage shows them
/// (`[...]` optional), whether it reads the configuration (`--config`,
/// defaulting to [`DEFAULT_CONFIG`]), one line saying what it does and
/// optionally more.
pub struct Command {
    /// `status`, `audit verify`.
    pub name: &'static str,
    /// Long names of the flags it takes, `!` = required.
    pub flags: &'static [&'static str],
    /// Positional arguments as shown in the usage (`REQUEST.json`, `[ID]`).
    pub args: &'static str,
    /// Takes `--config FILE` (default [`DEFAULT_CONFIG`]).
    pub config: bool,
    /// One line: what it does.
    pub about: &'static str,
    /// More help (may be empty).
    pub more: &'static str,
}

fn os(v: OsString, flag: &str) -> Result<String> {
    v.into_string()
        .map_err(|v| anyhow::anyhow!("--{flag} {v:?} is not valid UTF-8"))
}

fn num<T: std::str::FromStr>(v: OsString, flag: &str) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let s = os(v, flag)?;
    s.parse()
        .with_context(|| format!("--{flag} {s:?} is not a valid number"))
}

fn one_of(v: OsString, flag: &str, ok: &[&str]) -> Result<String> {
    let s = os(v, flag)?;
    if !ok.contains(&s.as_str()) {
        bail!("--{flag} {s:?} is not one of {}", ok.join(", "));
    }
    Ok(s)
}

/// Every flag of every command (one line each: `cargo fmt` leaves it so).
#[rustfmt::skip]
pub static FLAGS: &[Flag] = &[
    Flag { long: "config", short: Some('c'), value: Some("FILE"), repeat: false, help: "the configuration file (default /etc/exportd/exportd.toml)", set: |a, v| { a.config = Some(PathBuf::from(v)); Ok(()) } },
    Flag { long: "until-idle", short: None, value: None, repeat: false, help: "process what is there, wait for in-flight work, then exit (0 all exported, 1 some failed)", set: |a, _| { a.until_idle = true; Ok(()) } },
    Flag { long: "log-format", short: None, value: Some("text|json|journal"), repeat: false, help: "log line format on stderr (default text; journal under systemd)", set: |a, v| { a.log_format = one_of(v, "log-format", LOG_FORMATS)?; Ok(()) } },
    Flag { long: "log-json", short: None, value: None, repeat: false, help: "the same as --log-format json", set: |a, _| { a.log_format = "json".into(); Ok(()) } },
    Flag { long: "json", short: None, value: None, repeat: false, help: "JSON output", set: |a, _| { a.json = true; Ok(()) } },
    Flag { long: "quiet", short: Some('q'), value: None, repeat: false, help: "no progress on stderr", set: |a, _| { a.quiet = true; Ok(()) } },
    Flag { long: "archive", short: None, value: Some("DIR|TARGET.toml"), repeat: false, help: "an archive without the appliance: a folder, or a file holding one target table", set: |a, v| { a.archive = Some(os(v, "archive")?); Ok(()) } },
    Flag { long: "agent-key", short: None, value: Some("PUB"), repeat: false, help: "the agent's public key (base64, or a file such as agent.pub)", set: |a, v| { a.agent_key = Some(os(v, "agent-key")?); Ok(()) } },
    Flag { long: "agent-id", short: None, value: Some("ID"), repeat: false, help: "whose exportd-audit/<agent_id>/ (when the archive holds several agents)", set: |a, v| { a.agent_id = Some(os(v, "agent-id")?); Ok(()) } },
    Flag { long: "target", short: None, value: Some("ID"), repeat: true, help: "only this target (repeatable; default: all)", set: |a, v| { a.targets.push(os(v, "target")?); Ok(()) } },
    Flag { long: "from", short: None, value: Some("DATE"), repeat: false, help: "only audit days from YYYY-MM-DD", set: |a, v| { a.from = Some(os(v, "from")?); Ok(()) } },
    Flag { long: "to", short: None, value: Some("DATE"), repeat: false, help: "only audit days up to YYYY-MM-DD", set: |a, v| { a.to = Some(os(v, "to")?); Ok(()) } },
    Flag { long: "spool", short: None, value: Some("DIR"), repeat: false, help: "the spool root to write records into", set: |a, v| { a.spool = Some(PathBuf::from(v)); Ok(()) } },
    Flag { long: "count", short: None, value: Some("N"), repeat: false, help: "number of records (default 100)", set: |a, v| { a.count = Some(num(v, "count")?); Ok(()) } },
    Flag { long: "rate", short: None, value: Some("R"), repeat: false, help: "records per second (with --duration)", set: |a, v| { a.rate = Some(num(v, "rate")?); Ok(()) } },
    Flag { long: "duration", short: None, value: Some("S"), repeat: false, help: "seconds to write for (with --rate)", set: |a, v| { a.duration = Some(num(v, "duration")?); Ok(()) } },
    Flag { long: "encrypt-to", short: None, value: Some("RECIPIENT"), repeat: false, help: "encrypt content files to this age recipient (age1...)", set: |a, v| { a.encrypt_to = Some(os(v, "encrypt-to")?); Ok(()) } },
    Flag { long: "users", short: None, value: Some("N"), repeat: false, help: "number of simulated users (default 20)", set: |a, v| { a.users = Some(num(v, "users")?); Ok(()) } },
    Flag { long: "seed", short: None, value: Some("N"), repeat: false, help: "random seed (default 1)", set: |a, v| { a.seed = Some(num(v, "seed")?); Ok(()) } },
    Flag { long: "size-scale", short: None, value: Some("F"), repeat: false, help: "scale content sizes by F (default 1.0)", set: |a, v| { a.size_scale = Some(num(v, "size-scale")?); Ok(()) } },
    Flag { long: "log", short: None, value: Some("FILE"), repeat: false, help: "write each record's close time to FILE (latency measurements)", set: |a, v| { a.log = Some(PathBuf::from(v)); Ok(()) } },
    Flag { long: "fsync", short: None, value: None, repeat: false, help: "write like a careful recorder (fsync files and folders)", set: |a, _| { a.fsync = true; Ok(()) } },
    Flag { long: "records", short: None, value: Some("N"), repeat: false, help: "number of simulated records (default 300)", set: |a, v| { a.records = Some(num(v, "records")?); Ok(()) } },
    Flag { long: "keep", short: None, value: None, repeat: false, help: "keep the demo's folders afterwards (and print where they are)", set: |a, _| { a.keep = true; Ok(()) } },
    Flag { long: "detach", short: None, value: None, repeat: false, help: "leave the request to the daemon instead of running it here", set: |a, _| { a.detach = true; Ok(()) } },
    Flag { long: "key", short: None, value: Some("FILE"), repeat: false, help: "the signing key (as `exportd keygen` writes it)", set: |a, v| { a.key = Some(PathBuf::from(v)); Ok(()) } },
    Flag { long: "keyid", short: None, value: Some("ID"), repeat: false, help: "the key id to sign as (default: the key file's name without .key)", set: |a, v| { a.keyid = Some(os(v, "keyid")?); Ok(()) } },
    Flag { long: "type", short: None, value: Some("config|users-delta|export-request"), repeat: false, help: "the payload type", set: |a, v| { a.kind = Some(one_of(v, "type", &["config", "users-delta", "export-request"])?); Ok(()) } },
    Flag { long: "probe", short: None, value: None, repeat: false, help: "also write and remove a probe object on every target and reach central", set: |a, _| { a.probe = true; Ok(()) } },
    Flag { long: "pending", short: None, value: None, repeat: false, help: "list outstanding records and what each waits on", set: |a, _| { a.pending = true; Ok(()) } },
    Flag { long: "interval", short: None, value: Some("SECS"), repeat: false, help: "seconds between refreshes (default 2)", set: |a, v| { a.interval = Some(num(v, "interval")?); Ok(()) } },
    Flag { long: "out", short: Some('o'), value: Some("FILE"), repeat: false, help: "write the result to FILE instead of stdout", set: |a, v| { a.out = Some(PathBuf::from(v)); Ok(()) } },
];

/// Every command, in the order the help lists them (one line each).
#[rustfmt::skip]
pub static COMMANDS: &[Command] = &[
    Command { name: "run", flags: &["until-idle", "log-format", "log-json"], args: "", config: true, about: "the daemon: watch the spool, export every due record", more: "SIGTERM/SIGINT finish in-flight copies and stop (exit 0); SIGHUP re-reads the configuration (validated first). Holds <state_dir>/lock for its life." },
    Command { name: "check-config", flags: &["probe"], args: "", config: true, about: "validate the configuration and the model, then what the daemon will need (exit 1 with every error)", more: "Run it as the user the daemon runs as. --probe writes and removes a probe object on every target (and checks Object Lock where a target asks for it) and reaches central." },
    Command { name: "status", flags: &["json", "pending"], args: "", config: true, about: "backlog, per-target health, counts by outcome, last errors; --pending: what each outstanding record waits on", more: "Reads the state_dir; works beside the running daemon." },
    Command { name: "top", flags: &["interval", "json"], args: "", config: true, about: "a live view of throughput, backlog per target, latency and recent errors", more: "Refreshes every --interval seconds; into a pipe one plain snapshot (or JSON line) per interval. q then Enter, or Ctrl-C, quits." },
    Command { name: "audit verify", flags: &[], args: "", config: true, about: "check every audit row hash and the chain (exit 1 naming the first bad file and line)", more: "" },
    Command { name: "agent-key", flags: &["json"], args: "", config: true, about: "the agent's checkpoint signing key and its fingerprint", more: "Exit 1 when the agent has not made it yet (it does at its first start)." },
    Command { name: "archive verify", flags: &["archive", "agent-key", "agent-id", "target", "from", "to", "json", "quiet"], args: "", config: true, about: "check targets against the audit log and the signed checkpoints", more: "Two forms: with the appliance's configuration (--config, the default), or from an archive alone (--archive DIR|TARGET.toml --agent-key PUB). One line per problem on stdout; progress on stderr unless --quiet." },
    Command { name: "simulate", flags: &["spool!", "count", "rate", "duration", "encrypt-to", "users", "seed", "size-scale", "log", "fsync", "quiet"], args: "", config: false, about: "a recorder simulator writing realistic records of every modality", more: "--count N writes N records at once; --rate R --duration S writes R a second for S seconds." },
    Command { name: "demo", flags: &["records", "keep", "log-format"], args: "", config: false, about: "simulator and agent together in a temporary folder, then a summary", more: "" },
    Command { name: "request submit", flags: &["detach"], args: "REQUEST.json", config: true, about: "accept and run a compliance export request, printing progress", more: "" },
    Command { name: "request status", flags: &["json"], args: "[ID]", config: true, about: "lifecycle and progress of export requests", more: "" },
    Command { name: "target init", flags: &["target"], args: "", config: true, about: "write the .exportd-target marker into folder targets' (existing) roots", more: "" },
    Command { name: "keygen", flags: &[], args: "[PREFIX]", config: false, about: "an ed25519 signing key pair (PREFIX.key 0600, PREFIX.pub) and its [[trust]] snippet", more: "" },
    Command { name: "bundle sign", flags: &["key!", "keyid", "type!", "out"], args: "PAYLOAD.json", config: false, about: "sign a payload into a DSSE bundle", more: "" },
    Command { name: "bundle cosign", flags: &["key!", "keyid", "out"], args: "BUNDLE.json", config: false, about: "add a signature to a bundle (e.g. the grant key's)", more: "" },
    Command { name: "bundle verify", flags: &[], args: "BUNDLE.json", config: true, about: "which keys signed a bundle, and whether the agent would apply it (exit 1 if not)", more: "" },
    Command { name: "completions", flags: &[], args: "SHELL", config: false, about: "shell completions for bash, zsh or fish on stdout", more: "SHELL is bash, zsh or fish. Packaged copies: dist/completions/." },
    Command { name: "manpage", flags: &[], args: "", config: false, about: "the man page (roff) on stdout", more: "Packaged copy: dist/exportd.1." },
    Command { name: "help", flags: &[], args: "[COMMAND]", config: false, about: "this overview, or a command's help", more: "" },
];

impl Command {
    /// The flags it takes, with whether each is required.
    pub fn flags(&self) -> impl Iterator<Item = (&'static Flag, bool)> + '_ {
        let cfg = self.config.then(|| (flag("config"), false));
        cfg.into_iter().chain(self.flags.iter().map(|n| {
            let req = n.ends_with('!');
            (flag(n.trim_end_matches('!')), req)
        }))
    }

    /// The least and most positional arguments.
    pub fn arity(&self) -> (usize, usize) {
        let words: Vec<&str> = self.args.split_whitespace().collect();
        let min = words.iter().filter(|w| !w.starts_with('[')).count();
        let max = if self.name == "help" { 2 } else { words.len() };
        (min, max)
    }

    /// `exportd NAME [--flag V]... ARGS`.
    pub fn synopsis(&self) -> String {
        let mut s = format!("exportd {}", self.name);
        for (f, req) in self.flags() {
            let mut one = format!("--{}", f.long);
            if let Some(v) = f.value {
                one.push(' ');
                one.push_str(v);
            }
            if f.repeat {
                one.push_str("...");
            }
            if req {
                s.push_str(&format!(" {one}"));
            } else {
                s.push_str(&format!(" [{one}]"));
            }
        }
        if !self.args.is_empty() {
            s.push(' ');
            s.push_str(self.args);
        }
        s
    }
}

/// The flag with this long name (the table is checked by a unit test).
pub fn flag(long: &str) -> &'static Flag {
    FLAGS
        .iter()
        .find(|f| f.long == long)
        .unwrap_or_else(|| panic!("flag --{long} is not in FLAGS"))
}

/// The command with these words, if any.
pub fn command(name: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// The first words of multi-word commands (`audit`, `bundle`, ...).
pub fn groups() -> Vec<&'static str> {
    let mut g: Vec<&str> = COMMANDS
        .iter()
        .filter_map(|c| c.name.split_once(' ').map(|(g, _)| g))
        .collect();
    g.dedup();
    g
}

/// The commands of a group (`bundle` → sign, cosign, verify).
pub fn group(g: &str) -> Vec<&'static Command> {
    COMMANDS
        .iter()
        .filter(|c| c.name.split_once(' ').is_some_and(|(x, _)| x == g))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_flag_exists_once() {
        for c in COMMANDS {
            for (f, _) in c.flags() {
                assert!(FLAGS.iter().filter(|x| x.long == f.long).count() == 1);
            }
        }
        let mut longs: Vec<&str> = FLAGS.iter().map(|f| f.long).collect();
        longs.sort_unstable();
        longs.dedup();
        assert_eq!(longs.len(), FLAGS.len(), "a flag is listed twice");
    }

    #[test]
    fn every_flag_is_used_by_some_command() {
        for f in FLAGS {
            assert!(
                COMMANDS
                    .iter()
                    .any(|c| c.flags().any(|(x, _)| x.long == f.long)),
                "--{} is in no command",
                f.long
            );
        }
    }

    #[test]
    fn synopsis_and_arity() {
        let c = command("bundle sign").unwrap();
        assert_eq!(
            c.synopsis(),
            "exportd bundle sign --key FILE [--keyid ID] --type config|users-delta|export-request [--out FILE] PAYLOAD.json"
        );
        assert_eq!(c.arity(), (1, 1));
        assert_eq!(command("request status").unwrap().arity(), (0, 1));
        assert!(
            command("status")
                .unwrap()
                .synopsis()
                .contains("[--config FILE]")
        );
        assert_eq!(
            groups(),
            ["audit", "archive", "request", "target", "bundle"]
        );
    }
}
