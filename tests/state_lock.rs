//! One state-writing exportd per state_dir (issue 13, point 7): a second
//! `run` beside a running daemon is refused (exit 2, naming the daemon's
//! pid) before it touches the journal, while the read-only commands keep
//! working.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;

fn config(a: &Appliance) -> String {
    let mut c = a.head(1);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"All\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["+12125550100"], &["p"]));
    c
}

#[test]
fn a_second_run_beside_the_daemon_is_refused_and_the_journal_is_untouched() {
    let a = Appliance::new(1);
    a.write_config(&config(&a));
    let day = a.spool.join("2026/11/21");
    Rec::voice("r1", "+12125550100").write(&day);

    let mut d = a.spawn();
    wait_for(Duration::from_secs(30), || a.rows_with("export").len() == 1);
    let jpath = a.state.join("journal.log");
    wait_for(Duration::from_secs(10), || {
        fs::metadata(&jpath).map(|m| m.len() > 0).unwrap_or(false)
    });
    let before = fs::read(&jpath).unwrap();
    let ino = fs::metadata(&jpath).unwrap().ino();

    let out = a.cmd(&["run", "--until-idle"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    let want = format!(
        "another exportd (pid {}) is using {}; stop it first",
        d.pid(),
        a.state.display()
    );
    assert!(err.contains(&want), "expected {want:?} in stderr: {err}");

    // The journal is the daemon's: same inode, same bytes.
    assert_eq!(fs::metadata(&jpath).unwrap().ino(), ino);
    assert_eq!(fs::read(&jpath).unwrap(), before);
    assert_eq!(a.rows_with("export").len(), 1);

    // Read-only commands keep working beside the daemon.
    let st = a.cmd(&["status"]);
    assert_eq!(
        st.status.code(),
        Some(0),
        "status: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let av = a.cmd(&["audit", "verify"]);
    assert_eq!(
        av.status.code(),
        Some(0),
        "audit verify: {}",
        String::from_utf8_lossy(&av.stderr)
    );

    // The daemon is unaffected: it still exports a new record.
    Rec::voice("r2", "+12125550100").write(&day);
    wait_for(Duration::from_secs(30), || a.rows_with("export").len() == 2);
    let (code, _) = d.stop();
    assert_eq!(code, 0);

    // Once it stopped, the lock is free again.
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(a.rows_with("export").len(), 2);
}

#[test]
fn a_sigkilled_daemon_leaves_no_stale_lock() {
    let a = Appliance::new(1);
    a.write_config(&config(&a));
    Rec::voice("r1", "+12125550100").write(&a.spool.join("2026/11/21"));
    let mut d = a.spawn();
    wait_for(Duration::from_secs(30), || a.rows_with("export").len() == 1);
    d.kill9();
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(a.rows_with("export").len(), 1);
}
