//! Real disk faults on the audit log, with the real binary:
//!
//! - a full state disk (a small tmpfs as `state_dir`, filled while records
//!   arrive): no torn row stays in the log, and once space is back the
//!   backlog drains by itself with exactly one `export` row per copy,
//!   `audit verify` passes and the journal agrees (a final `run --until-idle`
//!   adds no row);
//! - a short write then ENOSPC on the audit file (the LD_PRELOAD shim's
//!   `FAULT_WRITE_LIMIT` during an outage): the same;
//! - a failed `fdatasync` of the audit file or of the journal (the shim's
//!   `FAULT_FSYNC`, with `FAULT_FSYNC_LOSE`: the unsynced bytes become
//!   zeros, as the disk has them after the kernel dropped the failed pages):
//!   what it covered is not counted durable, is cut off and written again
//!   once, never twice, and nothing written after it is hidden.
//!
//! Host-only (mount, a host-built shim): skipped with a reason when not root
//! or in an emulated lane; a failure under `CI=true` on the host.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use common::*;

fn config(a: &Appliance) -> String {
    let mut c = a.head(300);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    c
}

/// `export` rows per record id.
fn export_rows(a: &Appliance) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in a.rows_with("export") {
        *m.entry(r[1].clone()).or_default() += 1;
    }
    m
}

/// After the faults: one export row per due copy, the files right, `audit
/// verify` ok, and a `run --until-idle` over the same state finds nothing
/// left to do (the journal agrees with the log).
fn check_once_and_consistent(a: &Appliance, n: usize, log: &str) {
    let due = due_copies(&a.config, &a.spool);
    assert_eq!(due.len(), n);
    let rep = check_exactly_once(a, &due);
    assert_eq!(
        rep.duplicate_rows,
        0,
        "one export row per copy: {:?}\nrows: {:?}\nlog tail:\n{}",
        export_rows(a),
        a.audit_rows()
            .iter()
            .map(|r| format!("{} {} {}", r[0], r[1], r[10]))
            .collect::<Vec<_>>(),
        tail(log, 6000)
    );
    let rows_before = a.audit_rows().len();
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = a.audit_rows();
    assert_eq!(
        again.len(),
        rows_before,
        "the journal must know every exported copy: new rows {:?}",
        &again[rows_before..]
    );
    let v = a.cmd(&["audit", "verify"]);
    assert_eq!(v.status.code(), Some(0));
}

#[test]
fn a_full_state_disk_tears_no_row_and_the_backlog_drains_once_space_is_back() {
    let test = "a_full_state_disk_tears_no_row_and_the_backlog_drains_once_space_is_back";
    let a = Appliance::new(1);
    let Some(small) = fault::SmallFs::mount(test, &a.state, "2m") else {
        return;
    };
    a.write_config(&config(&a));
    let log = a.dir.path().join("daemon.log");
    let mut d = a.spawn_logged(&log);
    wait_until("daemon up", Duration::from_secs(30), &log, || {
        a.state.join("status.json").exists()
    });
    let day = a.spool.join("2026/11/21");
    Rec::voice("before", "100").write(&day);
    wait_until("first export", Duration::from_secs(30), &log, || {
        export_rows(&a).len() == 1
    });

    // The state disk fills up while records arrive.
    let ballast = small.fill(0);
    let n = 12;
    for i in 0..n {
        Rec::voice(&format!("full-{i:02}"), "100").write(&day);
    }
    wait_until(
        "appends refused for lack of space",
        Duration::from_secs(30),
        &log,
        || {
            fs::read_to_string(&log).is_ok_and(|l| {
                l.matches("No space left on device").count() >= 3 && l.contains("retrying")
            })
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    // Whatever got through, no torn or partial row is in the log now.
    for p in exportd::ledger::audit::audit_files(&a.state.join("audit")).unwrap() {
        let b = fs::read(&p).unwrap();
        assert!(
            b.ends_with(b"\n") && !b.contains(&0),
            "{}: torn tail during the outage",
            p.display()
        );
    }
    fs::remove_file(&ballast).unwrap();
    wait_until(
        "backlog drained after space came back",
        Duration::from_secs(90),
        &log,
        || export_rows(&a).len() == n + 1,
    );
    let (code, err) = d.stop();
    assert_eq!(code, 0, "{}", tail(&err, 2000));
    check_once_and_consistent(&a, n + 1, &fs::read_to_string(&log).unwrap_or_default());
    drop(small);
}

#[test]
fn a_short_write_on_the_audit_file_is_cut_off_and_written_again_once() {
    let test = "a_short_write_on_the_audit_file_is_cut_off_and_written_again_once";
    let Some(shim) = fault::shim(test) else {
        return;
    };
    let a = Appliance::new(1);
    a.write_config(&config(&a));
    let day = a.spool.join("2026/11/21");
    let n = 8;
    for i in 0..n {
        Rec::voice(&format!("short-{i:02}"), "100").write(&day);
    }
    let control = a.dir.path().join("outage");
    let faults = a.dir.path().join("faults.log");
    fs::write(&control, b"").unwrap();
    let log = a.dir.path().join("daemon.log");
    let f = fs::File::create(&log).unwrap();
    // Header (about 170 bytes) plus two rows and a half, then ENOSPC.
    let mut cmd = std::process::Command::new(exe());
    cmd.args(["run", "--config"])
        .arg(&a.config)
        .env("EXPORTD_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(f);
    fault::with_shim(
        &mut cmd,
        &shim,
        &[
            ("FAULT_PATH", "/audit/audit-"),
            ("FAULT_WRITE_LIMIT", "900"),
            ("FAULT_CONTROL", control.to_str().unwrap()),
            ("FAULT_LOG", faults.to_str().unwrap()),
        ],
    );
    let mut d = Daemon::new(cmd.spawn().unwrap());
    wait_until(
        "a short write and ENOSPC on the audit file",
        Duration::from_secs(30),
        &log,
        || {
            fs::read_to_string(&faults)
                .is_ok_and(|l| l.contains("write-short") && l.matches("write-enospc").count() >= 2)
        },
    );
    for p in exportd::ledger::audit::audit_files(&a.state.join("audit")).unwrap() {
        let b = fs::read(&p).unwrap();
        assert!(
            b.ends_with(b"\n"),
            "{}: the short write was left in the log",
            p.display()
        );
    }
    fs::remove_file(&control).unwrap();
    wait_until("backlog drained", Duration::from_secs(90), &log, || {
        export_rows(&a).len() == n
    });
    let (code, err) = d.stop();
    assert_eq!(code, 0, "{}", tail(&err, 2000));
    check_once_and_consistent(&a, n, &fs::read_to_string(&log).unwrap_or_default());
}

#[test]
fn a_failed_audit_fdatasync_is_not_counted_durable_and_its_row_is_written_once() {
    let test = "a_failed_audit_fdatasync_is_not_counted_durable_and_its_row_is_written_once";
    let Some(shim) = fault::shim(test) else {
        return;
    };
    let a = Appliance::new(1);
    a.write_config(&config(&a));
    let day = a.spool.join("2026/11/21");
    let n = 8;
    for i in 0..n {
        Rec::voice(&format!("sync-{i:02}"), "100").write(&day);
    }
    let faults = a.dir.path().join("faults.log");
    let mut cmd = std::process::Command::new(exe());
    cmd.args(["run", "--until-idle", "--config"])
        .arg(&a.config)
        .env("EXPORTD_LOG", "info");
    // The third fdatasync of the audit file fails (EIO), once, and what it
    // should have written is lost (zeros, as the disk has it).
    fault::with_shim(
        &mut cmd,
        &shim,
        &[
            ("FAULT_PATH", "/audit/audit-"),
            ("FAULT_FSYNC", "3"),
            ("FAULT_FSYNC_LOSE", "1"),
            ("FAULT_LOG", faults.to_str().unwrap()),
        ],
    );
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{}", tail(&err, 3000));
    assert!(
        fs::read_to_string(&faults).is_ok_and(|l| l.contains("fdatasync")),
        "the fault was not injected"
    );
    assert!(err.contains("retrying"), "{}", tail(&err, 3000));
    assert_eq!(export_rows(&a).len(), n);
    check_once_and_consistent(&a, n, &err);
}

#[test]
fn a_failed_journal_fdatasync_is_cut_back_and_every_copy_is_journaled_once() {
    let test = "a_failed_journal_fdatasync_is_cut_back_and_every_copy_is_journaled_once";
    let Some(shim) = fault::shim(test) else {
        return;
    };
    let a = Appliance::new(1);
    a.write_config(&config(&a));
    let day = a.spool.join("2026/11/21");
    let n = 8;
    for i in 0..n {
        Rec::voice(&format!("jsync-{i:02}"), "100").write(&day);
    }
    let faults = a.dir.path().join("faults.log");
    let log = a.dir.path().join("daemon.log");
    let mut cmd = std::process::Command::new(exe());
    cmd.args(["run", "--config"])
        .arg(&a.config)
        .env("EXPORTD_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    // The third fdatasync of the journal fails (EIO), once, and what it
    // should have written is lost (zeros, as the disk has it).
    fault::with_shim(
        &mut cmd,
        &shim,
        &[
            ("FAULT_PATH", "journal.log"),
            ("FAULT_FSYNC", "3"),
            ("FAULT_FSYNC_LOSE", "1"),
            ("FAULT_LOG", faults.to_str().unwrap()),
        ],
    );
    let mut d = Daemon::new(cmd.spawn().unwrap());
    wait_until(
        "every record exported",
        Duration::from_secs(60),
        &log,
        || export_rows(&a).len() == n,
    );
    // The record whose journal entry failed is retried after about 1 s.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        fs::read_to_string(&faults).is_ok_and(|l| l.contains("fdatasync")),
        "the fault was not injected"
    );
    // No clean shutdown (no compaction rewriting the journal from memory):
    // the next start reads what is on disk.
    d.kill9();
    check_once_and_consistent(&a, n, &fs::read_to_string(&log).unwrap_or_default());
}
