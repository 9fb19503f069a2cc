//! A signed bundle is committed only once the daemon could put it in force
//! (issue 21, points 7 and 9), through the real binary and the inbox of a
//! running daemon:
//! - a model whose S3 target cannot be built (its `secret_file` is missing)
//!   is rejected with the reason, the old model keeps exporting, and a
//!   restart still starts (exit 0) with the old model;
//! - a model whose folder target is the spool (or inside it, or reaches it
//!   through a symbolic link) is rejected the same way.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// An appliance trusting a fresh `central` key (roles config, export), with
/// user u-1 (extension 100) exporting to t0 under the local model.
fn appliance() -> (Appliance, PathBuf) {
    let a = Appliance::new(1);
    let key = a.dir.path().join("central");
    let out = Command::new(exe())
        .arg("keygen")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = fs::read_to_string(key.with_extension("pub")).unwrap();
    let mut c = a.head(1);
    c.push_str(&format!(
        "[[trust]]\nkeyid = \"central\"\npublic_key = \"{}\"\nroles = [\"config\", \"export\"]\n\n",
        public.trim()
    ));
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);
    (a, key)
}

/// Signs `payload` (a config model) with the central key.
fn sign(a: &Appliance, key: &Path, name: &str, payload: &str) -> PathBuf {
    let p = a.dir.path().join(format!("{name}.payload.json"));
    fs::write(&p, payload).unwrap();
    let bundle = a.dir.path().join(format!("{name}.bundle.json"));
    let s = Command::new(exe())
        .args(["bundle", "sign", "--key"])
        .arg(key.with_extension("key"))
        .args(["--keyid", "central", "--type", "config"])
        .arg(&p)
        .arg("--out")
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    bundle
}

/// Drops a bundle into the inbox the way a transport does (temp name, rename).
fn drop_in(a: &Appliance, bundle: &Path, name: &str) {
    let inbox = a.state.join("inbox");
    fs::create_dir_all(&inbox).unwrap();
    let tmp = inbox.join(format!(".{name}.tmp"));
    fs::copy(bundle, &tmp).unwrap();
    fs::rename(&tmp, inbox.join(name)).unwrap();
}

/// A version-1 model: u-2 (extension 200) exports to the given targets.
fn model(targets_json: &str, policy_targets: &str) -> String {
    format!(
        r#"{{"version": 1, "issued_at": "2026-11-25T10:00:00Z",
           "targets": [{targets_json}],
           "policies": [{{"id": "p", "name": "P", "targets": [{policy_targets}]}}],
           "users": [{{"id": "u-2", "name": "Bob", "email": "bob@corp.example", "extensions": ["200"], "policies": ["p"]}}]}}"#
    )
}

/// Waits for `inbox/rejected/<name>.reason` and returns it.
fn rejection_reason(a: &Appliance, name: &str) -> String {
    let reason = a
        .state
        .join("inbox/rejected")
        .join(format!("{name}.reason"));
    wait_for(Duration::from_secs(20), || reason.exists());
    assert!(
        !a.state.join("inbox/accepted").join(name).exists(),
        "the bundle must not be accepted"
    );
    fs::read_to_string(reason).unwrap()
}

/// The old (local) model is still in force: u-1 exports, u-2 is unknown.
fn old_model_exports(a: &Appliance, id: &str) {
    Rec::voice(id, "100").write(&a.spool.join("more"));
    let want = a.targets[0].join(format!("2026/11/21/u-1/{id}/{id}.xml"));
    wait_for(Duration::from_secs(20), || want.exists());
}

fn version_in_force(a: &Appliance) -> String {
    fs::read_to_string(a.state.join("bundle/version"))
        .unwrap_or_else(|_| "0".into())
        .trim()
        .to_string()
}

fn restart_keeps_the_old_model(a: &Appliance, d: &mut Daemon) {
    let (code, stderr) = d.stop();
    assert_eq!(code, 0, "{stderr}");
    Rec::voice("after-restart", "100").write(&a.spool.join("more"));
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "a restart must start with the old model: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        a.targets[0]
            .join("2026/11/21/u-1/after-restart/after-restart.xml")
            .exists()
    );
    assert_eq!(version_in_force(a), "0");
    let st = a.cmd(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["status"]["model_version"], 0, "{v}");
}

#[test]
fn a_bundle_whose_s3_target_cannot_be_built_is_rejected_and_the_old_model_stays() {
    let (a, key) = appliance();
    let mut d = a.spawn();
    let missing = a.dir.path().join("no-such-secret");
    let targets = format!(
        r#"{{"id": "t0", "kind": "fs", "path": "{}"}},
           {{"id": "s3x", "kind": "s3", "endpoint": "http://127.0.0.1:9", "region": "us-east-1",
             "bucket": "b", "access_key_id": "AK", "secret_file": "{}"}}"#,
        a.targets[0].display(),
        missing.display()
    );
    let bundle = sign(&a, &key, "v1", &model(&targets, r#""t0", "s3x""#));
    drop_in(&a, &bundle, "0001.json");

    let reason = rejection_reason(&a, "0001.json");
    assert!(reason.contains("cannot be put in force"), "{reason}");
    assert!(
        reason.contains("s3x") && reason.contains("no-such-secret"),
        "{reason}"
    );
    assert_eq!(version_in_force(&a), "0");
    wait_for(Duration::from_secs(10), || {
        a.rows_with("config")
            .iter()
            .any(|r| r[11] == "cannot_apply")
    });
    let row = a
        .rows_with("config")
        .into_iter()
        .find(|r| r[11] == "cannot_apply")
        .unwrap();
    assert!(row[12].contains("no-such-secret"), "{row:?}");
    assert!(
        !a.rows_with("config").iter().any(|r| r[11] == "applied"),
        "nothing applied"
    );
    wait_for(Duration::from_secs(10), || {
        a.status_json()
            .and_then(|s| s["last_rejection"].as_str().map(String::from))
            .is_some_and(|r| r.contains("cannot be put in force"))
    });

    old_model_exports(&a, "old-1");
    restart_keeps_the_old_model(&a, &mut d);
}

#[test]
fn a_bundle_whose_folder_target_is_the_spool_is_rejected() {
    let (a, key) = appliance();
    let mut d = a.spawn();
    // The spool itself, a folder inside it, and a symbolic link to it.
    let link = a.dir.path().join("innocent");
    std::os::unix::fs::symlink(&a.spool, &link).unwrap();
    let cases = [
        ("0001.json", a.spool.clone()),
        ("0002.json", a.spool.join("archive")),
        ("0003.json", link.join("archive")),
    ];
    for (name, path) in &cases {
        let targets = format!(
            r#"{{"id": "t9", "kind": "fs", "path": "{}"}}"#,
            path.display()
        );
        let bundle = sign(&a, &key, name, &model(&targets, r#""t9""#));
        // `bundle verify` says it would be rejected, for the same reason.
        let v = a.cmd_with(&["bundle", "verify"], &[bundle.to_str().unwrap()]);
        let vout = String::from_utf8_lossy(&v.stdout);
        assert_eq!(v.status.code(), Some(1), "{vout}");
        assert!(vout.contains("overlaps spool root"), "{vout}");
        drop_in(&a, &bundle, name);
        let reason = rejection_reason(&a, name);
        assert!(
            reason.contains("overlaps spool root") && reason.contains("t9"),
            "{name}: {reason}"
        );
        assert_eq!(version_in_force(&a), "0");
    }
    // Nothing was written into the spool by the daemon; the old model works.
    old_model_exports(&a, "old-1");
    assert!(!a.spool.join("archive").exists());
    restart_keeps_the_old_model(&a, &mut d);
}

#[test]
fn a_local_target_reaching_the_spool_through_a_symlink_is_refused_at_start() {
    let a = Appliance::new(0);
    let link = a.dir.path().join("nas");
    std::os::unix::fs::symlink(&a.spool, &link).unwrap();
    let mut c = a.head(1);
    c.push_str(&format!(
        "[[targets]]\nid = \"t0\"\nkind = \"fs\"\npath = \"{}\"\n\n",
        link.join("archive").display()
    ));
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);
    Rec::voice("r1", "100").write(&a.spool.join("2026/11/21"));
    let before = tree_state(&a.spool);
    let out = a.run_until_idle();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("overlaps spool root"), "{err}");
    assert_eq!(tree_state(&a.spool), before, "the spool is never written");
}
