//! `exportd archive verify` on an S3 target (moto, Object Lock): the
//! checkpoints and the closed day are objects under the prefix, the
//! untouched bucket verifies, and an object replaced by a new version, an
//! object hidden by a delete marker, a folder removed, a folder added, a
//! removed checkpoint and a forged one are reported
//! (Object Lock keeps the old versions, but the current view is what a
//! reader gets, so that is what is checked).

mod common;

#[path = "support/s3_moto.rs"]
mod support;

use std::fs;
use std::process::Command;

use common::*;
use exportd::policy::model::LockMode;
use serde_json::json;

/// Changes the bucket as an intruder with credentials would: boto3 against
/// moto, `ops` as (op, key, body) with op `put` or `delete`.
fn tamper(moto: &support::Moto, bucket: &str, ops: &[(&str, &str, &str)]) {
    let script = r#"
import sys, json, boto3
a = json.loads(sys.argv[1])
s3 = boto3.client("s3", endpoint_url=a["endpoint"], region_name="us-east-1",
                  aws_access_key_id=a["ak"], aws_secret_access_key=a["sk"])
for op, key, body in a["ops"]:
    if op == "put":
        s3.put_object(Bucket=a["bucket"], Key=key, Body=body.encode(), ChecksumAlgorithm="SHA256")
    else:
        s3.delete_object(Bucket=a["bucket"], Key=key)
"#;
    let arg = json!({"endpoint": moto.endpoint(), "ak": moto.access_key, "sk": moto.secret_key,
                     "bucket": bucket, "ops": ops});
    let out = Command::new("python3")
        .args(["-c", script, &arg.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn verify(a: &Appliance, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(exe())
        .args(["archive", "verify"])
        .args(args)
        .env("EXPORTD_LOG", "warn")
        .output()
        .unwrap();
    let _ = a;
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn s3_target_verifies_and_tampering_is_reported() {
    let Some(m) = support::shared() else { return };
    let mut moto = m.lock().unwrap_or_else(|p| p.into_inner());
    let bucket = "verify-s3";
    moto.bucket(bucket, true);
    let spec = moto.spec(bucket, Some(LockMode::Compliance));
    let a = Appliance::new(1);
    let table = support::target_table(&spec, "s3", &moto.endpoint());
    let mut c = a.head(300);
    c.push_str(&format!("[[targets]]\n{table}\n"));
    c.push_str("[[policies]]\nid = \"p\"\nname = \"Dual\"\ntargets = [\"t0\", \"s3\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);
    for id in ["s1", "s2", "s3"] {
        Rec::voice(id, "100").write(&a.spool.join("2026/11/21"));
    }
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Close the day (a newer, header-only audit file): the final checkpoint
    // and the day file go to both targets.
    let mut days: Vec<String> = fs::read_dir(a.state.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".csv"))
        .collect();
    days.sort();
    let today = days.pop().unwrap();
    let n: u32 = today[6..14].parse().unwrap();
    fs::write(
        a.state.join(format!("audit/audit-{}.csv", n + 1)),
        format!("{}\n", exportd::ledger::audit::HEADER),
    )
    .unwrap();
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // (moto refuses boto3's own ListObjectsV2 signature: objects are
    // fetched by name, the names from the agent's local copies.)
    let day_key = format!("ny/exportd-audit/it/{today}");
    let (_, len) = moto.get(bucket, &day_key);
    assert_eq!(
        len,
        fs::metadata(a.state.join("audit").join(&today))
            .unwrap()
            .len()
    );
    let mut local: Vec<String> = fs::read_dir(a.state.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("Z.json"))
        .collect();
    local.sort();
    let checkpoint = format!("ny/exportd-audit/it/checkpoints/{}", local.last().unwrap());
    moto.get(bucket, &checkpoint);

    let cfg = a.config.to_str().unwrap().to_string();
    let (code, out, err) = verify(&a, &["--config", &cfg]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("checked s3: 3 record folders"), "{out}");

    // Without the appliance: the bucket's own exportd-audit/ and the key.
    let tfile = a.dir.path().join("s3-target.toml");
    fs::write(&tfile, &table).unwrap();
    let pubkey = a.state.join("agent.pub");
    let archive_args = [
        "--archive",
        tfile.to_str().unwrap(),
        "--agent-key",
        pubkey.to_str().unwrap(),
    ];
    let (code, out, err) = verify(&a, &archive_args);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");

    // A checkpoint signed by another key, chained to the newest one.
    let newest = fs::read(a.state.join("checkpoints").join(local.last().unwrap())).unwrap();
    let forged_name = {
        use exportd::proof::checkpoint::{self, Payload};
        let env: serde_json::Value = serde_json::from_slice(&newest).unwrap();
        let raw =
            exportd::control::bundle::dsse::decode_b64(env["payload"].as_str().unwrap()).unwrap();
        let p: Payload = serde_json::from_slice(&raw).unwrap();
        let ts = checkpoint::parse_file_name(local.last().unwrap()).unwrap();
        let later = exportd::time::Timestamp(ts.0 + 1000);
        let forged = Payload {
            ts: checkpoint::ts_text(later),
            prev_checkpoint: checkpoint::file_hash(&newest),
            ..p
        };
        let other = exportd::proof::key::AgentKey::from_seed([9; 32]);
        let name = checkpoint::file_name(later);
        (
            name,
            String::from_utf8(checkpoint::sign(&other, &forged)).unwrap(),
        )
    };
    let forged_key = format!("ny/exportd-audit/it/checkpoints/{}", forged_name.0);
    tamper(
        &moto,
        bucket,
        &[
            ("put", "ny/2026/11/21/u-1/s1/s1.wav", "not the recording"),
            ("delete", "ny/2026/11/21/u-1/s2/s2.xml", ""),
            ("delete", "ny/2026/11/21/u-1/s3/s3.wav", ""),
            ("delete", "ny/2026/11/21/u-1/s3/s3.xml", ""),
            ("put", "ny/2026/11/21/u-1/s9/s9.xml", "<recording/>"),
            ("delete", &checkpoint, ""),
            ("put", &forged_key, &forged_name.1),
        ],
    );
    let (code, out, err) = verify(&a, &["--config", &cfg, "--target", "s3"]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    let cp_name = checkpoint.rsplit('/').next().unwrap();
    for want in [
        "altered s3 2026/11/21/u-1/s1:".to_string(),
        "incomplete s3 2026/11/21/u-1/s2:".to_string(),
        "missing s3 2026/11/21/u-1/s3:".to_string(),
        "extra s3 2026/11/21/u-1/s9:".to_string(),
        format!("audit s3 checkpoints/{cp_name}:"),
        format!("audit s3 checkpoints/{}: signature", forged_name.0),
    ] {
        assert!(out.lines().any(|l| l.starts_with(&want)), "{want}: {out}");
    }
    assert!(!out.contains(" t0 "), "--target s3 only: {out}");
    let (code, out, _) = verify(&a, &archive_args);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("altered s3 2026/11/21/u-1/s1"), "{out}");
}
