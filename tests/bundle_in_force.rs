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
use std::time::Duration;

use common::*;

/// An appliance trusting a fresh `central` key (roles config, export), with
/// user u-1 (extension 100) exporting to t0 under the local model.
fn appliance() -> (Appliance, Central) {
    let a = Appliance::new(1);
    let central = Central::new(&a);
    let mut c = a.head(1);
    c.push_str(&central.trust());
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);
    (a, central)
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
    let (a, central) = appliance();
    let mut d = a.spawn();
    let missing = a.dir.path().join("no-such-secret");
    let targets = format!(
        r#"{{"id": "t0", "kind": "fs", "path": "{}"}},
           {{"id": "s3x", "kind": "s3", "endpoint": "http://127.0.0.1:9", "region": "us-east-1",
             "bucket": "b", "access_key_id": "AK", "secret_file": "{}"}}"#,
        a.targets[0].display(),
        missing.display()
    );
    let bundle = central.sign("v1", "config", &model(&targets, r#""t0", "s3x""#));
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
    let (a, central) = appliance();
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
        let bundle = central.sign(name, "config", &model(&targets, r#""t9""#));
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

fn skip_code(a: &Appliance, id: &str) -> Option<String> {
    a.rows_with("skip")
        .into_iter()
        .find(|r| r[1] == id)
        .map(|r| r[11].clone())
}

#[test]
fn a_delta_in_a_running_agent_removes_a_user_whose_record_is_pending() {
    let (a, central) = appliance();
    // A long grace: a record whose media file is missing stays pending.
    let cfg = fs::read_to_string(&a.config)
        .unwrap()
        .replace("incomplete_grace_s = 1", "incomplete_grace_s = 600");
    a.write_config(&cfg);
    let mut d = a.spawn();
    let targets = format!(
        r#"{{"id": "t0", "kind": "fs", "path": "{}"}}"#,
        a.targets[0].display()
    );
    let v1 = model(&targets, r#""t0""#).replace(
        r#""policies": ["p"]}]}"#,
        r#""policies": ["p"]}, {"id": "u-3", "extensions": ["300"], "policies": ["p"]}]}"#,
    );
    drop_in(&a, &central.sign("v1", "config", &v1), "0001.json");
    wait_for(Duration::from_secs(20), || version_in_force(&a) == "1");

    // u-3's record is seen under version 1 but waits for its media file.
    let dir = a.spool.join("pending");
    fs::create_dir_all(&dir).unwrap();
    let r = Rec::voice("pend-1", "300");
    fs::write(dir.join("pend-1.xml"), r.xml()).unwrap();
    // `exportd bundle verify` counts what the delta does.
    let delta = r#"{"version": 2, "base_version": 1,
        "upsert": [{"id": "u-4", "name": "Dan", "extensions": ["400"], "policies": ["p"]}],
        "remove": ["u-3"]}"#;
    let bundle = central.sign("v2", "users-delta", delta);
    let v = a.cmd_with(&["bundle", "verify"], &[bundle.to_str().unwrap()]);
    let vout = String::from_utf8_lossy(&v.stdout);
    assert!(
        vout.contains("users: 1 added, 0 changed, 1 removed"),
        "{vout}"
    );
    assert_eq!(v.status.code(), Some(0), "{vout}");
    let base = fs::read(a.state.join("snapshot.bin")).unwrap();
    drop_in(&a, &bundle, "0002.json");
    wait_for(Duration::from_secs(20), || version_in_force(&a) == "2");
    // The delta is kept beside the snapshot file (an overlay): the file in
    // force is not rewritten.
    assert!(fs::read(a.state.join("snapshot.bin")).unwrap() == base);
    wait_for(Duration::from_secs(20), || {
        a.state.join("inbox/accepted/0002.json").exists()
    });

    // The media arrives: the record is matched against version 2, where
    // u-3 is gone: skipped `no_user`, not exported under u-3.
    fs::write(dir.join("pend-1.wav"), b"RIFF late audio").unwrap();
    wait_for(Duration::from_secs(20), || {
        skip_code(&a, "pend-1").is_some()
    });
    assert_eq!(skip_code(&a, "pend-1").as_deref(), Some("no_user"));
    assert!(!a.targets[0].join("2026/11/21/u-3").exists());
    // The upserted user exports; u-2 of the base is still in force.
    Rec::voice("new-4", "400").write(&a.spool.join("more"));
    Rec::voice("old-2", "200").write(&a.spool.join("more"));
    for (u, id) in [("u-4", "new-4"), ("u-2", "old-2")] {
        let want = a.targets[0].join(format!("2026/11/21/{u}/{id}/{id}.xml"));
        wait_for(Duration::from_secs(20), || want.exists());
    }

    // A delta on a stale base is refused with both versions named.
    let stale = r#"{"version": 3, "base_version": 1, "remove": ["u-2"]}"#;
    drop_in(&a, &central.sign("v3", "users-delta", stale), "0003.json");
    let reason = rejection_reason(&a, "0003.json");
    assert!(
        reason.contains("base version 1") && reason.contains("version 2 is in force"),
        "{reason}"
    );

    // A restart starts with the chain (full bundle + delta) in force.
    let (code, stderr) = d.stop();
    assert_eq!(code, 0, "{stderr}");
    Rec::voice("after-4", "400").write(&a.spool.join("more"));
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        a.targets[0]
            .join("2026/11/21/u-4/after-4/after-4.xml")
            .exists()
    );
    // ... rebuilt from the delta file on top of the same snapshot file.
    assert!(fs::read(a.state.join("snapshot.bin")).unwrap() == base);
}

#[test]
fn records_in_flight_while_deltas_apply_are_matched_against_one_model() {
    // Extension 500 moves between u-a (policy pa -> t0) and u-b (policy pb
    // -> t1) with every delta while records of it flow. A record matched
    // against a mix of two models would pair a user with the other's
    // policy: u-a under t1 or u-b under t0.
    let (a, central) = appliance();
    let mut cfg = fs::read_to_string(&a.config).unwrap();
    cfg = cfg.replace(
        "[[policies]]",
        "[[targets]]\nid = \"t1\"\nkind = \"fs\"\npath = \"T1\"\n\n[[policies]]",
    );
    let t1 = a.dir.path().join("t1");
    fs::create_dir_all(&t1).unwrap();
    a.write_config(&cfg.replace("T1", t1.to_str().unwrap()));
    let mut d = a.spawn();
    let model_v1 = format!(
        r#"{{"version": 1,
           "targets": [{{"id": "t0", "kind": "fs", "path": "{}"}}, {{"id": "t1", "kind": "fs", "path": "{}"}}],
           "policies": [{{"id": "pa", "targets": ["t0"]}}, {{"id": "pb", "targets": ["t1"]}}],
           "users": [{{"id": "u-a", "extensions": ["500"], "policies": ["pa"]}},
                     {{"id": "u-b", "extensions": ["b-1"], "policies": ["pb"]}}]}}"#,
        a.targets[0].display(),
        t1.display()
    );
    drop_in(&a, &central.sign("v1", "config", &model_v1), "0001.json");
    wait_for(Duration::from_secs(20), || version_in_force(&a) == "1");
    let mut ids = Vec::new();
    for v in 2..=7u64 {
        let (ea, eb) = if v % 2 == 0 {
            (format!("a-{v}"), "500".to_string())
        } else {
            ("500".to_string(), format!("b-{v}"))
        };
        let delta = format!(
            r#"{{"version": {v}, "base_version": {}, "upsert": [
                {{"id": "u-a", "extensions": ["{ea}"], "policies": ["pa"]}},
                {{"id": "u-b", "extensions": ["{eb}"], "policies": ["pb"]}}]}}"#,
            v - 1
        );
        let b = central.sign(&format!("v{v}"), "users-delta", &delta);
        for k in 0..3 {
            let id = format!("fl-{v}-{k}");
            Rec::voice(&id, "500").write(&a.spool.join("flow"));
            ids.push(id);
        }
        drop_in(&a, &b, &format!("{v:04}.json"));
    }
    wait_for(Duration::from_secs(30), || version_in_force(&a) == "7");
    let (t0, t1) = (a.targets[0].clone(), t1.clone());
    wait_for(Duration::from_secs(30), || {
        let (f0, f1) = (files_below(&t0).join("\n"), files_below(&t1).join("\n"));
        ids.iter()
            .all(|id| f0.contains(&format!("{id}.xml")) || f1.contains(&format!("{id}.xml")))
    });
    let (f0, f1) = (files_below(&t0), files_below(&t1));
    assert!(!f0.iter().any(|f| f.contains("/u-b/")), "{f0:?}");
    assert!(!f1.iter().any(|f| f.contains("/u-a/")), "{f1:?}");
    for id in &ids {
        let n = f0
            .iter()
            .chain(&f1)
            .filter(|f| f.ends_with(&format!("{id}.xml")))
            .count();
        assert_eq!(n, 1, "{id} exported once, under one model");
    }
    let (code, stderr) = d.stop();
    assert_eq!(code, 0, "{stderr}");
}
