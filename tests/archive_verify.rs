//! `exportd archive verify` against a real export (issue #14): the untouched
//! archive verifies (exit 0), and every kind of tampering an examiner would
//! try is reported by name with exit 1, through the real binary.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use exportd::ledger::audit::sha256_hex;

/// An appliance with one folder target, after exporting `ids`.
fn exported(ids: &[&str]) -> Appliance {
    let a = Appliance::new(1);
    write_config(&a, "");
    export(&a, ids);
    a
}

fn write_config(a: &Appliance, head_extra: &str) {
    let mut c = format!("{head_extra}{}", a.head(300));
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);
}

fn export(a: &Appliance, ids: &[&str]) {
    for id in ids {
        let mut r = Rec::voice(id, "100");
        r.files.push((
            "other".into(),
            format!("{id}.mp4"),
            format!("screen of {id}").into_bytes(),
        ));
        r.write(&a.spool.join("2026/11/21"));
    }
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn folder(a: &Appliance, id: &str) -> PathBuf {
    a.targets[0].join("2026/11/21/u-1").join(id)
}

fn verify_args(a: &Appliance, args: &[&str]) -> (i32, String, String) {
    let out: Output = Command::new(exe())
        .args(["archive", "verify", "--config"])
        .arg(&a.config)
        .args(args)
        .env("EXPORTD_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verify(a: &Appliance) -> (i32, String, String) {
    verify_args(a, &[])
}

/// Exit 1 and a stdout line starting with `prefix`.
fn reported(a: &Appliance, prefix: &str) -> String {
    let (code, out, err) = verify(a);
    assert_eq!(code, 1, "exit code; stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.lines().any(|l| l.starts_with(prefix)),
        "no line starting with {prefix:?}; stdout:\n{out}\nstderr:\n{err}"
    );
    out
}

fn clean(a: &Appliance) {
    let (code, out, err) = verify(a);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("archive verify: OK"), "{out}");
}

fn audit_file(a: &Appliance) -> PathBuf {
    let mut v: Vec<PathBuf> = fs::read_dir(a.state.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    v.sort();
    v.pop().unwrap()
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn checkpoints(a: &Appliance) -> Vec<PathBuf> {
    let d = a.targets[0].join("exportd-audit/it/checkpoints");
    let mut v: Vec<PathBuf> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Rewrites an audit file with `edit` applied to its data rows, then
/// recomputes the hash chain from the first row on, as an examiner
/// trying to hide a change would (`exportd audit verify` then passes).
fn rewrite_rows(path: &Path, edit: impl FnOnce(&mut Vec<Vec<String>>)) {
    let text = fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_string();
    let mut rows: Vec<Vec<String>> = lines
        .map(|l| l.split(';').map(String::from).collect())
        .collect();
    let mut prev = rows[0][14].clone();
    edit(&mut rows);
    let mut out = format!("{header}\n");
    for r in &mut rows {
        r[14] = prev.clone();
        let body = r[..15].join(";");
        r[15] = sha256_hex(body.as_bytes());
        prev = r[15].clone();
        out.push_str(&r.join(";"));
        out.push('\n');
    }
    fs::write(path, out).unwrap();
}

fn audit_verify_ok(a: &Appliance) {
    let out = a.cmd(&["audit", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the recomputed chain fools `audit verify`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn untouched_export_verifies_and_key_is_shown() {
    let a = exported(&["r1", "r2", "r3"]);
    clean(&a);
    assert!(!checkpoints(&a).is_empty());
    let key = a.cmd(&["agent-key"]);
    assert_eq!(key.status.code(), Some(0));
    let text = String::from_utf8_lossy(&key.stdout);
    assert!(text.contains("fingerprint: "), "{text}");
    let fp = text
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .unwrap()
        .trim()
        .to_string();
    // The checkpoints are signed with that key (keyid = fingerprint).
    let cp: serde_json::Value =
        serde_json::from_slice(&fs::read(&checkpoints(&a)[0]).unwrap()).unwrap();
    assert_eq!(cp["signatures"][0]["keyid"], fp.as_str());
    let st = a.cmd(&["status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["agent_key"]["fingerprint"], fp.as_str());
    let st = a.cmd(&["status"]);
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("agent key:"),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
    // Only some days: rows of those days are checked, extras not looked for.
    let (code, out, err) = verify_args(&a, &["--from", "2000-01-01", "--to", "2999-12-31"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("not looked for"), "{err}");
    // JSON lines: a summary, no problem.
    let (code, out, _) = verify_args(&a, &["--json"]);
    assert_eq!(code, 0, "{out}");
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["summary"]["ok"], true, "{out}");
    // The key file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(a.state.join("agent.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0);
}

#[test]
fn usage_errors_exit_2() {
    let a = exported(&["r1"]);
    assert_eq!(verify_args(&a, &["--target", "nope"]).0, 2);
    assert_eq!(verify_args(&a, &["--from", "yesterday"]).0, 2);
    let out = Command::new(exe())
        .args(["archive", "verify", "--archive"])
        .arg(&a.targets[0])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--archive without --agent-key");
    // An unmounted target is not an archive whose folders are all missing.
    fs::rename(&a.targets[0], a.dir.path().join("away")).unwrap();
    let (code, out, err) = verify(&a);
    assert_eq!(code, 1, "{out}{err}");
    assert!(!out.contains("missing"), "{out}");
    assert!(err.contains("NOT verified"), "{err}");
}

#[test]
fn one_byte_flipped_is_altered() {
    let a = exported(&["r1", "r2"]);
    let f = folder(&a, "r1").join("r1.wav");
    let mut b = fs::read(&f).unwrap();
    b[3] ^= 1;
    fs::write(&f, b).unwrap();
    reported(&a, "altered t0 2026/11/21/u-1/r1:");
}

#[test]
fn content_file_removed_is_altered() {
    let a = exported(&["r1", "r2"]);
    fs::remove_file(folder(&a, "r2").join("r2.mp4")).unwrap();
    reported(&a, "altered t0 2026/11/21/u-1/r2:");
}

#[test]
fn folder_removed_is_missing() {
    let a = exported(&["r1", "r2", "r3"]);
    fs::remove_dir_all(folder(&a, "r3")).unwrap();
    let out = reported(&a, "missing t0 2026/11/21/u-1/r3:");
    assert_eq!(out.lines().filter(|l| l.starts_with("missing")).count(), 1);
}

#[test]
fn folder_added_under_a_new_id_is_extra() {
    let a = exported(&["r1", "r2"]);
    let new = folder(&a, "r9");
    fs::create_dir_all(&new).unwrap();
    for f in ["r1.wav", "r1.xml"] {
        fs::copy(folder(&a, "r1").join(f), new.join(f.replace("r1", "r9"))).unwrap();
    }
    reported(&a, "extra t0 2026/11/21/u-1/r9:");
}

#[test]
fn metadata_xml_removed_is_incomplete() {
    let a = exported(&["r1", "r2"]);
    fs::remove_file(folder(&a, "r1").join("r1.xml")).unwrap();
    reported(&a, "incomplete t0 2026/11/21/u-1/r1:");
}

#[test]
fn audit_row_edited_with_the_chain_recomputed() {
    let a = exported(&["r1", "r2", "r3"]);
    let p = audit_file(&a);
    rewrite_rows(&p, |rows| {
        let r = rows.iter_mut().find(|r| r[1] == "r2").unwrap();
        // The hour of its timestamp: `YYYY.MM.DD HH:mm:ss.SSS`.
        let hour = if &r[0][11..13] == "03" { "04" } else { "03" };
        r[0].replace_range(11..13, hour);
    });
    audit_verify_ok(&a);
    reported(&a, &format!("audit t0 {}:", file_name(&p)));
}

#[test]
fn rows_removed_with_the_chain_recomputed() {
    let a = exported(&["r1", "r2", "r3", "r4"]);
    let p = audit_file(&a);
    rewrite_rows(&p, |rows| {
        rows.retain(|r| r[1] != "r2" && r[1] != "r3");
    });
    audit_verify_ok(&a);
    let out = reported(&a, &format!("audit t0 {}:", file_name(&p)));
    // The folders of the removed rows now have no row.
    assert!(out.contains("extra t0 2026/11/21/u-1/r2"), "{out}");
}

#[test]
fn checkpoint_removed() {
    let a = exported(&["r1"]);
    export(&a, &["r2"]);
    let cps = checkpoints(&a);
    assert!(cps.len() >= 2, "{cps:?}");
    // The oldest: the chain of the next one breaks.
    fs::remove_file(&cps[0]).unwrap();
    reported(&a, &format!("audit t0 checkpoints/{}:", file_name(&cps[0])));
    // The newest: the agent knows it put it there.
    let last = cps.last().unwrap();
    fs::remove_file(last).unwrap();
    reported(&a, &format!("audit t0 checkpoints/{}:", file_name(last)));
}

#[test]
fn forged_checkpoint() {
    use exportd::proof::checkpoint::{self, Payload};
    let a = exported(&["r1", "r2"]);
    let cps = checkpoints(&a);
    let newest = cps.last().unwrap();
    let real = fs::read(newest).unwrap();
    let env: serde_json::Value = serde_json::from_slice(&real).unwrap();
    let payload =
        exportd::control::bundle::dsse::decode_b64(env["payload"].as_str().unwrap()).unwrap();
    let p: Payload = serde_json::from_slice(&payload).unwrap();
    // A later checkpoint by another key, chained to the real one, stating
    // one row less (as if the last row never was).
    let ts = checkpoint::parse_file_name(&file_name(newest)).unwrap();
    let later = exportd::time::Timestamp(ts.0 + 1000);
    let forged = Payload {
        ts: checkpoint::ts_text(later),
        rows: p.rows - 1,
        prev_checkpoint: checkpoint::file_hash(&real),
        ..p
    };
    let other = exportd::proof::key::AgentKey::from_seed([9; 32]);
    let name = checkpoint::file_name(later);
    fs::write(
        newest.with_file_name(&name),
        checkpoint::sign(&other, &forged),
    )
    .unwrap();
    let out = reported(&a, &format!("audit t0 checkpoints/{name}:"));
    assert!(out.contains("signature does not verify"), "{out}");
}

/// Without the appliance: the archive's own `exportd-audit/` (closed days).
#[test]
fn archive_alone_verifies_its_closed_days() {
    let a = exported(&["r1", "r2"]);
    // Close the day: a newer (header-only) audit file, then a run makes the
    // day's final checkpoint and puts the day file.
    let today = file_name(&audit_file(&a));
    let day: u32 = today[6..14].parse().unwrap();
    let next = a.state.join(format!("audit/audit-{}.csv", day + 1));
    fs::write(&next, format!("{}\n", exportd::ledger::audit::HEADER)).unwrap();
    export(&a, &[]);
    let archived = a.targets[0].join("exportd-audit/it").join(&today);
    assert_eq!(
        fs::read(&archived).unwrap(),
        fs::read(a.state.join("audit").join(&today)).unwrap()
    );
    let key = a.state.join("agent.pub");
    let run = |extra: &[&str]| {
        let out = Command::new(exe())
            .args(["archive", "verify", "--archive"])
            .arg(&a.targets[0])
            .arg("--agent-key")
            .arg(&key)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&[]);
    assert_eq!(code, 0, "{out}");
    // Tampering is seen from the archive alone too.
    fs::remove_file(folder(&a, "r2").join("r2.wav")).unwrap();
    let (code, out) = run(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("altered t0 2026/11/21/u-1/r2"), "{out}");
    // And the archived day file, edited with its chain recomputed.
    rewrite_rows(&archived, |rows| rows.retain(|r| r[1] != "r1"));
    let (code, out) = run(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("audit t0 {today}:")), "{out}");
}

/// SIGKILL at random points while records are exported and checkpoints
/// made every second: the clean archive still verifies after a restart (a
/// checkpoint states only durable rows; a checkpoint written but not yet
/// put is put after the restart, byte for byte).
#[test]
fn sigkill_between_checkpoints_and_rows_leaves_a_clean_archive() {
    let a = Appliance::new(1);
    write_config(&a, "checkpoint_interval_s = 1\n");
    let day = a.spool.join("2026/11/21");
    let mut n = 0;
    let seed = torture_seed("archive_verify_sigkill");
    for round in 0..3u64 {
        let mut d = a.spawn();
        let stop_after = 1200 + (seed.wrapping_add(round * 7919) % 1500);
        let t0 = std::time::Instant::now();
        while t0.elapsed().as_millis() < stop_after as u128 {
            n += 1;
            Rec::voice(&format!("k{n}"), "100").write(&day);
            std::thread::sleep(std::time::Duration::from_millis(40));
        }
        d.kill9();
    }
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(checkpoints(&a).len() >= 2, "{:?}", checkpoints(&a));
    clean(&a);
}
