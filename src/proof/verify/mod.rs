//! `exportd archive verify`: checks targets against the audit log, the
//! archived day files and the signed checkpoints, streaming, with bounded
//! memory. Reads only: never writes to a target, the audit log or the
//! state folder.
//!
//! Per target: [`audit::run`] checks the checkpoints and reads every audit
//! row once, sending the target's `export` rows to an external [`Sorter`];
//! [`folders::run`] then merges those rows with a sorted walk of the
//! target, re-hashing every file. Problems are printed as they are found
//! ([`report`]); exit 0 when all holds, 1 when anything does not, 2 for a
//! usage error.
//!
//! Which rows are a target's: a row names the target kind and the policy,
//! not the target. With `--config`, a row counts for target T when its
//! `dst_folder_type` is T's kind and its policy sends to T in the model in
//! force (a policy no longer in the model: every target of that kind).
//! With `--archive`, every `export` row of the archive's kind counts (an
//! agent with two folder targets fed by different policies shows the other
//! target's rows as missing; verify such agents with `--config`).

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

use ed25519_dalek::VerifyingKey;

pub mod archive;
pub mod audit;
pub mod folders;
pub mod report;
pub mod s3;
pub mod sorter;

use archive::{Archive, FsArchive};
use report::Report;
use sorter::{RUN_ROWS, Sorter};

use super::key;

/// The command line of `exportd archive verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// `--config FILE`: the appliance's configuration.
    pub config: Option<PathBuf>,
    /// `--archive DIR`: an archive without the appliance.
    pub archive: Option<String>,
    /// `--agent-key PUB`: base64 of the agent's public key, or a file.
    pub agent_key: Option<String>,
    /// `--agent-id ID`: whose `exportd-audit/<agent_id>/` (with `--archive`,
    /// when the archive holds several agents).
    pub agent_id: Option<String>,
    /// `--target ID`, repeatable (default: every target).
    pub targets: Vec<String>,
    /// `--from YYYY-MM-DD`: only audit days from this one.
    pub from: Option<String>,
    /// `--to YYYY-MM-DD`: only audit days up to this one.
    pub to: Option<String>,
    /// `--json`: JSON lines.
    pub json: bool,
    /// `--quiet`: no progress on stderr.
    pub quiet: bool,
}

/// The usage text.
pub const USAGE: &str = "\
    exportd archive verify --config FILE [--target ID]... [--from DATE] [--to DATE] [--agent-key PUB] [--json] [--quiet]
    exportd archive verify --archive DIR|TARGET.toml --agent-key PUB [--agent-id ID] [--from DATE] [--to DATE] [--json] [--quiet]";

/// `YYYY-MM-DD` → `YYYYMMDD`.
fn day_arg(s: &str) -> Result<String, String> {
    let ok = s.len() == 10
        && s.as_bytes()[4] == b'-'
        && s.as_bytes()[7] == b'-'
        && s.bytes()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !ok {
        return Err(format!("{s:?} is not a date YYYY-MM-DD"));
    }
    Ok(s.replace('-', ""))
}

/// Parses the arguments after `archive verify`.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Options, String> {
    use lexopt::prelude::*;
    let mut o = Options::default();
    let mut p = lexopt::Parser::from_args(args);
    let s = |v: Result<OsString, lexopt::Error>| -> Result<String, String> {
        v.map_err(|e| e.to_string())?
            .into_string()
            .map_err(|_| "not UTF-8".to_string())
    };
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("config") | Short('c') => o.config = Some(s(p.value())?.into()),
            Long("archive") => o.archive = Some(s(p.value())?),
            Long("agent-key") => o.agent_key = Some(s(p.value())?),
            Long("agent-id") => o.agent_id = Some(s(p.value())?),
            Long("target") => o.targets.push(s(p.value())?),
            Long("from") => o.from = Some(day_arg(&s(p.value())?)?),
            Long("to") => o.to = Some(day_arg(&s(p.value())?)?),
            Long("json") => o.json = true,
            Long("quiet") | Short('q') => o.quiet = true,
            other => return Err(other.unexpected().to_string()),
        }
    }
    match (&o.config, &o.archive) {
        (Some(_), Some(_)) => Err("give --config or --archive, not both".into()),
        (None, None) => Err("--config FILE or --archive DIR is required".into()),
        (None, Some(_)) if o.agent_key.is_none() => {
            Err("--archive needs --agent-key PUB (the agent's public key, as `exportd agent-key` prints it)".into())
        }
        (None, Some(_)) if !o.targets.is_empty() => {
            Err("--target goes with --config; --archive names the archive itself".into())
        }
        _ => Ok(o),
    }
}

/// One target to check.
struct Job {
    id: String,
    archive: Box<dyn Archive>,
    kind: String,
    /// policy id → whether it sends to this target (None: any policy).
    policies: Option<Vec<(String, bool)>>,
    local: Option<audit::Local>,
}

/// Runs the command; returns the exit code (a usage error is printed and
/// gives 2).
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args: Vec<OsString> = args.into_iter().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("USAGE:\n{USAGE}");
        return 0;
    }
    let opts = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("exportd: archive verify: {e}\nUSAGE:\n{USAGE}");
            return 2;
        }
    };
    match run(&opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("exportd: archive verify: {e}");
            2
        }
    }
}

/// Runs a parsed command line; `Err` is a usage or setup error (exit 2).
pub fn run(o: &Options) -> Result<i32, String> {
    let (agent_id, key, jobs) = match &o.config {
        Some(cfg) => from_config(o, cfg)?,
        None => from_archive(o)?,
    };
    let mut rep = Report::new(o.json, !o.quiet);
    let n = jobs.len();
    for job in jobs {
        rep.target(&job.id);
        if let Err(e) = one_target(o, &agent_id, &key, &job, &mut rep) {
            rep.problems += 1;
            rep.counts.problems += 1;
            eprintln!(
                "exportd: archive verify: {}: stopped: {e}; this target is NOT verified",
                job.id
            );
        }
        rep.target_summary();
    }
    Ok(rep.finish(n))
}

fn one_target(
    o: &Options,
    agent_id: &str,
    key: &VerifyingKey,
    job: &Job,
    rep: &mut Report,
) -> io::Result<()> {
    let belongs = |policy: &str, kind: &str| -> bool {
        kind == job.kind
            && job.policies.as_ref().is_none_or(|ps| {
                ps.iter()
                    .find(|(id, _)| id == policy)
                    .is_none_or(|(_, to_me)| *to_me)
            })
    };
    let inp = audit::AuditInput {
        archive: &*job.archive,
        agent_id,
        key,
        local: job.local.as_ref(),
        belongs: &belongs,
        days: (o.from.clone(), o.to.clone()),
    };
    job.archive.check()?;
    let mut sorter = Sorter::new(RUN_ROWS);
    audit::run(&inp, &mut sorter, rep)?;
    rep.expected_bytes = sorter.bytes;
    let extras = o.from.is_none() && o.to.is_none();
    if !extras {
        rep.note("--from/--to: record folders without an export row are not looked for");
    }
    folders::run(&*job.archive, sorter.finish()?, extras, rep)
}

type Setup = (String, VerifyingKey, Vec<Job>);

fn from_config(o: &Options, cfg_path: &std::path::Path) -> Result<Setup, String> {
    let cfg = crate::policy::config::LocalConfig::load(cfg_path).map_err(|e| e.to_string())?;
    let model = crate::agent::model_in_force(&cfg);
    for t in &o.targets {
        if model.target(t).is_none() {
            return Err(format!(
                "--target {t:?}: no such target in the model in force"
            ));
        }
    }
    let key = match &o.agent_key {
        Some(k) => key::parse_public(k).map_err(|e| e.to_string())?,
        None => key::read_public(&cfg.state_dir)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "no agent key in {} yet (the agent makes it at its first start); give --agent-key",
                    cfg.state_dir.display()
                )
            })?,
    };
    let marks = super::publish::read_marks(&cfg.state_dir).map_err(|e| e.to_string())?;
    let mut jobs = Vec::new();
    for t in &model.targets {
        if !o.targets.is_empty() && !o.targets.contains(&t.id) {
            continue;
        }
        let archive = open_archive(t)?;
        let policies = model
            .policies
            .iter()
            .map(|p| (p.id.clone(), p.targets.contains(&t.id)))
            .collect();
        jobs.push(Job {
            id: t.id.clone(),
            archive,
            kind: t.kind.as_str().to_string(),
            policies: Some(policies),
            local: Some(audit::Local {
                audit_dir: cfg.state_dir.join("audit"),
                checkpoints_dir: cfg.state_dir.join(super::publish::LOCAL_DIR),
                mark: marks.get(&t.id).cloned().unwrap_or_default(),
            }),
        });
    }
    Ok((cfg.agent_id.clone(), key, jobs))
}

/// Read access to a configured target.
fn open_archive(t: &crate::policy::model::TargetSpec) -> Result<Box<dyn Archive>, String> {
    use crate::policy::model::TargetKind;
    match (t.kind, &t.path) {
        (TargetKind::Fs, Some(p)) => Ok(Box::new(FsArchive::new(p))),
        (TargetKind::S3, _) => crate::sink::s3::S3Target::new(t)
            .map(|s| Box::new(s3::S3Archive::new(s)) as Box<dyn Archive>)
            .map_err(|e| format!("target {:?}: {e}", t.id)),
        _ => Err(format!("target {:?}: no path", t.id)),
    }
}

/// `--archive`: a folder, or a file holding one target table (the fields
/// of a `[[targets]]` table, e.g. an S3 bucket's).
fn archive_arg(arg: &str) -> Result<(String, String, Box<dyn Archive>), String> {
    let p = std::path::Path::new(arg);
    if p.is_dir() {
        let a = FsArchive::new(p);
        let id = a
            .read_small(crate::sink::marker::MARKER_NAME, 4096)
            .ok()
            .flatten()
            .and_then(|b| crate::sink::marker::Marker::parse(&b).ok())
            .map_or_else(|| "archive".to_string(), |m| m.target_id);
        return Ok((id, "fs".into(), Box::new(a)));
    }
    let text = std::fs::read_to_string(p).map_err(|e| {
        format!("--archive {arg:?}: neither a folder nor a readable target file: {e}")
    })?;
    let spec: crate::policy::model::TargetSpec =
        toml::from_str(&text).map_err(|e| format!("--archive {arg:?}: not a target table: {e}"))?;
    Ok((
        spec.id.clone(),
        spec.kind.as_str().to_string(),
        open_archive(&spec)?,
    ))
}

fn from_archive(o: &Options) -> Result<Setup, String> {
    let (id, kind, archive) = archive_arg(o.archive.as_deref().unwrap_or_default())?;
    let dir = archive.describe();
    let key =
        key::parse_public(o.agent_key.as_deref().unwrap_or_default()).map_err(|e| e.to_string())?;
    let agent_id = match &o.agent_id {
        Some(a) => a.clone(),
        None => {
            let l = archive
                .list(super::AUDIT_ROOT)
                .map_err(|e| format!("{dir}/{}: {e}", super::AUDIT_ROOT))?;
            match l.dirs.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(format!(
                        "{dir} holds no {}/ folder: not an archive written by an agent with checkpoints",
                        super::AUDIT_ROOT
                    ));
                }
                many => {
                    return Err(format!(
                        "{dir} holds several agents ({}); choose one with --agent-id",
                        many.join(", ")
                    ));
                }
            }
        }
    };
    Ok((
        agent_id,
        key,
        vec![Job {
            id,
            archive,
            kind,
            policies: None,
            local: None,
        }],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Options, String> {
        parse_args(a.iter().map(OsString::from))
    }

    #[test]
    fn usage() {
        assert!(args(&[]).is_err());
        assert!(args(&["--archive", "/a"]).is_err());
        assert!(args(&["--archive", "/a", "--config", "c"]).is_err());
        assert!(args(&["--config", "c", "--from", "2026-1-1"]).is_err());
        let o = args(&[
            "--config",
            "c",
            "--target",
            "a",
            "--target",
            "b",
            "--from",
            "2026-12-01",
        ])
        .unwrap();
        assert_eq!(o.targets, ["a", "b"]);
        assert_eq!(o.from.as_deref(), Some("20261201"));
        assert!(args(&["--archive", "/a", "--agent-key", "K"]).is_ok());
        assert!(args(&["--config", "c", "--bogus"]).is_err());
    }
}
