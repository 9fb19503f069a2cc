//! The agent with an S3 target (moto, Object Lock) beside a folder target:
//! dual archiving counts a record done only when both hold it, a failed S3
//! side is retried later without re-sending the folder copy, and a rerun
//! never creates a second object version.

mod common;

#[path = "support/s3_moto.rs"]
mod support;

use std::fs;

use common::*;
use exportd::policy::model::LockMode;
use sha2::{Digest, Sha256};

#[test]
fn dual_archive_to_folder_and_locked_bucket() {
    let Some(m) = support::shared() else { return };
    let mut moto = m.lock().unwrap_or_else(|p| p.into_inner());
    moto.bucket("agent-dual", true);
    let spec = moto.spec("agent-dual", Some(LockMode::Compliance));
    let a = Appliance::new(1);
    let dead = "http://127.0.0.1:9"; // discard port: nothing listens
    let write = |endpoint: &str| {
        let mut c = a.head(1);
        c.push_str(&format!(
            "[[targets]]\n{}\n",
            support::target_table(&spec, "s3", endpoint)
        ));
        c.push_str("[[policies]]\nid = \"p\"\nname = \"Dual\"\ntargets = [\"t0\", \"s3\"]\n\n");
        c.push_str(&user("u-1", &["100"], &["p"]));
        a.write_config(&c);
    };

    // S3 unreachable: the folder copy is made, the record is not done.
    write(dead);
    let r = Rec::voice("dual-1", "100");
    r.write(&a.spool.join("d"));
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        a.targets[0]
            .join("2026/11/21/u-1/dual-1/dual-1.xml")
            .exists()
    );
    assert_eq!(a.rows_with("export").len(), 1);
    assert!(
        a.rows_with("error")
            .iter()
            .any(|r| r[11] == "target_unavailable")
    );

    // S3 back: only the S3 copy is made now; the backlog survived the restart.
    write(&moto.endpoint());
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exports = a.rows_with("export");
    assert_eq!(exports.len(), 2, "{exports:?}");
    let s3row = exports.iter().find(|r| r[8] == "s3").unwrap();
    assert_eq!(s3row[9], "2026/11/21/u-1/dual-1");
    assert!(
        s3row[12].contains("mode=COMPLIANCE") && s3row[12].contains("version_id="),
        "{s3row:?}"
    );
    let key = "ny/2026/11/21/u-1/dual-1/dual-1.wav";
    let (sha, len) = moto.get("agent-dual", key);
    let want = fs::read(a.spool.join("d/dual-1.wav")).unwrap();
    assert_eq!(sha, hex::encode(Sha256::digest(&want)));
    assert_eq!(len, want.len() as u64);
    assert_eq!(moto.versions("agent-dual", key).len(), 1);

    // The same XML again (touched: a new version of the record): nothing new
    // is uploaded, same bytes are a no-op on both targets.
    let x = a.spool.join("d/dual-1.xml");
    let body = fs::read(&x).unwrap();
    fs::write(&x, body).unwrap();
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        moto.versions("agent-dual", key).len(),
        1,
        "no second version"
    );
    assert_eq!(
        moto.versions("agent-dual", "ny/2026/11/21/u-1/dual-1/dual-1.xml")
            .len(),
        1
    );
    assert_eq!(a.cmd(&["audit", "verify"]).status.code(), Some(0));
}

/// `check-config --probe` end to end: a bucket with Object Lock is
/// written to and cleaned; one without fails for a target that asks for it.
#[test]
fn check_config_probe_against_locked_and_plain_buckets() {
    let Some(m) = support::shared() else { return };
    let mut moto = m.lock().unwrap_or_else(|p| p.into_inner());
    moto.bucket("agent-probe-lock", true);
    moto.bucket("agent-probe-plain", false);
    let locked = moto.spec("agent-probe-lock", Some(LockMode::Compliance));
    let plain = moto.spec("agent-probe-plain", Some(LockMode::Compliance));
    let a = Appliance::new(1);
    let mut c = a.head(1);
    for (spec, id) in [(&locked, "s3"), (&plain, "s3p")] {
        c.push_str(&format!(
            "[[targets]]\n{}\n",
            support::target_table(spec, id, &moto.endpoint())
        ));
    }
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\", \"s3\", \"s3p\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);

    let out = a.cmd(&["check-config", "--probe"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("probe target t0 (fs): ok"), "{stdout}");
    assert!(
        stdout.contains("probe target s3 (s3): ok: Object Lock enabled")
            && stdout.contains("probe s3://agent-probe-lock/ny/exportd-probe/it-"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "probe target s3p (s3): FAILED: S3 bucket agent-probe-plain has no Object Lock"
        ),
        "{stdout}"
    );
    let keys =
        moto.cmd(serde_json::json!({"op": "keys", "bucket": "agent-probe-lock", "prefix": ""}));
    assert_eq!(
        keys["keys"],
        serde_json::json!([]),
        "nothing visible is left"
    );
}
