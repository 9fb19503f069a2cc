//! The power-cut lane's checker (`cross/build powercut`, cross/powercut.sh).
//!
//! `powercut_check --config FILE [--cuts N]` reads an appliance's spool,
//! state and folder targets (on the host: the lane's ext4 image copied out
//! with `debugfs rdump`, and a config whose paths point there) and checks
//! what a power cut must never leave behind, independently of the agent's own
//! journal:
//! - every due copy (computed from the spool with the library's pure parts:
//!   record parser, snapshot, matcher, layout; as `tests/common` does) is on
//!   its target with the spool's bytes (SHA-256 compared), under its final
//!   name, never a partial or zero-filled file;
//! - exactly one `export` audit row per due copy, whose `sha256` field is the
//!   hash of the folder's listing;
//! - no temp file, and no file on a target that nobody is due.
//!
//! Prints one line per problem (`LOST`, `PARTIAL`, `DUPLICATE`, `UNAUDITED`,
//! `ROW-SHA`, `EXTRA-FILE`, `TEMP`, `STRAY-ROW`) then `counts: key=value ...`;
//! exit 0 when nothing was found, 1 when something was, 2 on a usage or setup
//! error.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use exportd::export::layout::{Values, metadata_name, plan_files, sanitize_component};
use exportd::policy::matcher::{Decision, Verdict, decide};
use exportd::record::Modality;
use sha2::{Digest, Sha256};

/// Problem lines printed per kind before the rest are only counted.
const SHOW: usize = 20;

/// One due copy.
struct Due {
    record_id: String,
    policy_id: String,
    target_id: String,
    root: PathBuf,
    folder: String,
    /// (name in the folder, spool file with the bytes it must hold).
    files: Vec<(String, PathBuf)>,
    /// Generated names that may be present (messages JSON, vCon).
    optional: Vec<String>,
}

#[derive(Default)]
struct Report {
    counts: BTreeMap<&'static str, usize>,
    /// (record, policy, folder) of every copy missing a file or its row.
    lost: BTreeSet<(String, String, String)>,
}

impl Report {
    fn problem(&mut self, kind: &'static str, what: String) {
        let n = self.counts.entry(kind).or_default();
        *n += 1;
        if *n <= SHOW {
            println!("{kind} {what}");
        } else if *n == SHOW + 1 {
            println!("{kind} ... (more not shown)");
        }
    }
    fn add(&mut self, kind: &'static str, n: usize) {
        *self.counts.entry(kind).or_default() += n;
    }
    fn get(&self, kind: &str) -> usize {
        self.counts.get(kind).copied().unwrap_or(0)
    }
}

/// Every file below `root`, relative, sorted (symlinks not followed).
fn files_below(root: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd = fs::read_dir(&dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
        for e in rd {
            let e = e.map_err(|e| format!("listing {}: {e}", dir.display()))?;
            let r = rel.join(e.file_name());
            let ft = e
                .file_type()
                .map_err(|e| format!("stat {}: {e}", root.join(&r).display()))?;
            if ft.is_dir() {
                stack.push(r);
            } else {
                out.push(r.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn sha256_file(p: &Path) -> Option<[u8; 32]> {
    fs::read(p).ok().map(|b| Sha256::digest(&b).into())
}

fn due_copies(config: &Path, rep: &mut Report) -> Result<(Vec<Due>, Vec<PathBuf>), String> {
    let cfg = exportd::policy::config::LocalConfig::load(config)
        .map_err(|e| format!("loading {}: {e}", config.display()))?;
    let snap = exportd::policy::snapshot::Snapshot::from_model(&cfg.inline_model())
        .map_err(|e| format!("compiling the model of {}: {e}", config.display()))?;
    let mut out = Vec::new();
    for spool in &cfg.spool {
        for rel in files_below(spool)? {
            let name = rel.rsplit('/').next().unwrap_or(&rel);
            if !exportd::watch::spool::is_metadata_name(name) {
                continue;
            }
            let xml = spool.join(&rel);
            let Ok(bytes) = fs::read(&xml) else {
                rep.problem("SPOOL-UNREADABLE", xml.display().to_string());
                continue;
            };
            let Ok(rec) = exportd::record::parse(&bytes) else {
                // A recorder cut while writing its XML: never due.
                rep.add("torn_recorder_xmls", 1);
                continue;
            };
            let Decision::Policies(user, verdicts) = decide(&rec, &snap) else {
                continue;
            };
            for (pi, v) in verdicts {
                if v != Verdict::Take {
                    continue;
                }
                let cp = &snap.policies()[pi];
                let s = &cp.policy.settings;
                let Ok(plan) = plan_files(
                    &rec,
                    s.decrypt,
                    s.im_attachments || rec.modality == Modality::FileShare,
                    s.file_extensions.as_deref(),
                ) else {
                    continue;
                };
                let folder = cp
                    .template
                    .expand(&Values::of(&rec, user.id, &cp.policy.id));
                let Some(dir) = xml.parent() else { continue };
                let mut files: Vec<(String, PathBuf)> = plan
                    .iter()
                    .map(|p| (p.out_name.clone(), dir.join(&rec.files[p.index].path)))
                    .collect();
                files.push((metadata_name(&rec.id, false), xml.clone()));
                let mut optional = Vec::new();
                if rec.modality == Modality::Im {
                    optional.push(format!("{}.messages.json", sanitize_component(&rec.id)));
                }
                if s.vcon {
                    optional.push(format!("{}.vcon.json", sanitize_component(&rec.id)));
                }
                for &ti in &cp.targets {
                    let spec = &snap.targets()[ti];
                    let Some(root) = spec.path.clone() else {
                        continue; // not a folder target
                    };
                    out.push(Due {
                        record_id: rec.id.clone(),
                        policy_id: cp.policy.id.clone(),
                        target_id: spec.id.clone(),
                        root,
                        folder: folder.clone(),
                        files: files.clone(),
                        optional: optional.clone(),
                    });
                }
            }
        }
    }
    let roots = snap
        .targets()
        .iter()
        .filter_map(|t| t.path.clone())
        .collect();
    Ok((out, roots))
}

/// Audit rows (every day file in name order), header lines skipped.
fn audit_rows(state: &Path) -> Result<Vec<Vec<String>>, String> {
    let dir = state.join("audit");
    let mut files: Vec<PathBuf> = match fs::read_dir(&dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("listing {}: {e}", dir.display())),
    };
    files.retain(|p| p.extension().is_some_and(|x| x == "csv"));
    files.sort();
    let mut rows = Vec::new();
    for f in files {
        let text = fs::read(&f).map_err(|e| format!("reading {}: {e}", f.display()))?;
        for line in String::from_utf8_lossy(&text).lines() {
            if line.starts_with("ts;") || line.is_empty() {
                continue;
            }
            rows.push(line.split(';').map(String::from).collect());
        }
    }
    Ok(rows)
}

fn check(config: &Path, rep: &mut Report) -> Result<(), String> {
    let (due, roots) = due_copies(config, rep)?;
    let cfg = exportd::policy::config::LocalConfig::load(config)
        .map_err(|e| format!("loading {}: {e}", config.display()))?;
    rep.add("due_copies", due.len());
    let mut expected: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    let mut optional: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    // (record, policy, folder) -> the listing hash of what is in the folder
    let mut listing: BTreeMap<(String, String, String), String> = BTreeMap::new();
    for d in &due {
        let dir = d.root.join(&d.folder);
        let mut lost = false;
        for (name, src) in &d.files {
            let rel = format!("{}/{name}", d.folder);
            expected
                .entry(d.root.clone())
                .or_default()
                .insert(rel.clone());
            let want = match fs::read(src) {
                Ok(b) => b,
                Err(e) => {
                    rep.problem("SPOOL-UNREADABLE", format!("{}: {e}", src.display()));
                    continue;
                }
            };
            let got = match fs::read(dir.join(name)) {
                Ok(b) => b,
                Err(e) => {
                    if !lost {
                        rep.problem(
                            "LOST",
                            format!(
                                "record {} policy {} target {}: {rel} missing ({e})",
                                d.record_id, d.policy_id, d.target_id
                            ),
                        );
                    }
                    lost = true;
                    rep.lost
                        .insert((d.record_id.clone(), d.policy_id.clone(), d.folder.clone()));
                    continue;
                }
            };
            rep.add("files_checked", 1);
            if Sha256::digest(&got) != Sha256::digest(&want) {
                let zero = !got.is_empty() && got.iter().all(|&b| b == 0);
                let how = if zero {
                    "zero-filled".to_string()
                } else if got.len() < want.len() && want.starts_with(&got) {
                    "truncated".to_string()
                } else {
                    "different bytes".to_string()
                };
                rep.problem(
                    "PARTIAL",
                    format!(
                        "record {} target {}: {rel}: {how}, {} bytes, spool {} has {} bytes",
                        d.record_id,
                        d.target_id,
                        got.len(),
                        src.display(),
                        want.len()
                    ),
                );
            }
        }
        for o in &d.optional {
            optional
                .entry(d.root.clone())
                .or_default()
                .insert(format!("{}/{o}", d.folder));
        }
        // What the folder holds, as the audit row's sha256 covers it.
        let mut names: Vec<String> = d.files.iter().map(|(n, _)| n.clone()).collect();
        names.extend(d.optional.iter().filter(|o| dir.join(o).exists()).cloned());
        names.sort();
        let mut text = String::new();
        for n in &names {
            if let Some(h) = sha256_file(&dir.join(n)) {
                text.push_str(&format!("{}  {n}\n", hex::encode(h)));
            }
        }
        listing.insert(
            (d.record_id.clone(), d.policy_id.clone(), d.folder.clone()),
            hex::encode(Sha256::digest(text.as_bytes())),
        );
    }
    for root in &roots {
        let want = expected.remove(root).unwrap_or_default();
        let opt = optional.remove(root).unwrap_or_default();
        let have = files_below(root)?;
        for f in have {
            if f.starts_with("exportd-audit/")
                || f.starts_with("compliance-exports/")
                || (f.starts_with(".exportd-target") && !f.contains('/'))
            {
                continue; // audit checkpoints, requests, the target's marker: not copies
            }
            if f.contains("exportd-tmp") {
                rep.problem("TEMP", format!("{}/{f}", root.display()));
            } else if !want.contains(&f) && !opt.contains(&f) {
                rep.problem(
                    "EXTRA-FILE",
                    format!(
                        "{}/{f} (no record in the spool is due there)",
                        root.display()
                    ),
                );
            }
        }
    }
    // One export row per due copy (a copy to two targets: two rows).
    let rows = audit_rows(&cfg.state_dir)?;
    let mut per_copy: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for d in &due {
        *per_copy
            .entry((d.record_id.clone(), d.policy_id.clone(), d.folder.clone()))
            .or_default() += 1;
    }
    let mut got: BTreeMap<(String, String, String), Vec<(String, String)>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.len() == 16) {
        rep.add("audit_rows", 1);
        if r[10] == "export" {
            rep.add("export_rows", 1);
            got.entry((r[1].clone(), r[6].clone(), r[9].clone()))
                .or_default()
                .push((r[13].clone(), r[0].clone()));
        }
    }
    for r in rows.iter().filter(|r| r.len() != 16) {
        rep.problem("BAD-ROW", format!("{} fields: {}", r.len(), r.join(";")));
    }
    for (k, want) in &per_copy {
        let have = got.remove(k).unwrap_or_default();
        if have.is_empty() {
            rep.lost.insert(k.clone());
            rep.problem(
                "UNAUDITED",
                format!(
                    "record {} policy {} folder {}: no export row",
                    k.0, k.1, k.2
                ),
            );
        } else if have.len() > *want {
            rep.add("extra_audit_rows", have.len() - want);
            let times: Vec<&str> = have.iter().map(|(_, ts)| ts.as_str()).collect();
            rep.problem(
                "DUPLICATE",
                format!(
                    "record {} policy {} folder {}: {} export rows, want {want}; rows at {}",
                    k.0,
                    k.1,
                    k.2,
                    have.len(),
                    times.join(", ")
                ),
            );
        }
        if let Some(h) = listing.get(k) {
            for (s, _) in have.iter().filter(|(s, _)| s != h) {
                rep.problem(
                    "ROW-SHA",
                    format!(
                        "record {} folder {}: row sha256 {s}, folder listing hashes to {h}",
                        k.0, k.2
                    ),
                );
            }
        }
    }
    for (k, v) in got {
        rep.add("extra_audit_rows", v.len());
        rep.problem(
            "STRAY-ROW",
            format!(
                "{} export row(s) for record {} policy {} folder {}, which is not due",
                v.len(),
                k.0,
                k.1,
                k.2
            ),
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let mut config = None;
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--config") => config = args.next().map(PathBuf::from),
            _ => {
                eprintln!("usage: powercut_check --config FILE");
                return ExitCode::from(2);
            }
        }
    }
    let Some(config) = config else {
        eprintln!("usage: powercut_check --config FILE");
        return ExitCode::from(2);
    };
    let mut rep = Report::default();
    if let Err(e) = check(&config, &mut rep) {
        eprintln!("powercut_check: {e}");
        return ExitCode::from(2);
    }
    // lost: due copies missing a file or their export row (each counted once); duplicated: copies
    // with more than one export row; partial: wrong bytes under a final name.
    let lost = rep.lost.len();
    let fields = [
        ("due", rep.get("due_copies")),
        ("files", rep.get("files_checked")),
        ("lost", lost),
        ("duplicated", rep.get("DUPLICATE")),
        ("partial", rep.get("PARTIAL")),
        ("extra_rows", rep.get("extra_audit_rows")),
        ("extra_files", rep.get("EXTRA-FILE")),
        ("temps", rep.get("TEMP")),
        ("row_sha", rep.get("ROW-SHA")),
        ("bad_rows", rep.get("BAD-ROW")),
        ("spool_unreadable", rep.get("SPOOL-UNREADABLE")),
        ("audit_rows", rep.get("audit_rows")),
        ("export_rows", rep.get("export_rows")),
        ("torn_recorder_xmls", rep.get("torn_recorder_xmls")),
    ];
    let line: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("counts: {}", line.join(" "));
    let bad = lost
        + rep.get("DUPLICATE")
        + rep.get("PARTIAL")
        + rep.get("extra_audit_rows")
        + rep.get("EXTRA-FILE")
        + rep.get("TEMP")
        + rep.get("ROW-SHA")
        + rep.get("BAD-ROW")
        + rep.get("SPOOL-UNREADABLE");
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
