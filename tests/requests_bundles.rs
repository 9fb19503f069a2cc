//! Chat records, compliance export requests and signed bundles through the
//! real binary: `messages.json` beside exported transcripts, `request
//! submit`/`status`, the bundle inbox of a running daemon, and `bundle
//! sign`/`verify`/`keygen`.

mod common;

use std::fs;
use std::io::Read;
use std::time::Duration;

use common::*;

const TRANSCRIPT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<transcript conversation_id="c-77" kind="direct" title="Rates desk" owner="u-1">
  <participants>
    <participant id="u-1" address="u-1@corp.example" name="Ann Trader" internal="true"/>
    <participant id="x-9" address="carl@partner.example" name="Carl" internal="false"/>
  </participants>
  <message id="m-1" timestamp="2026.11.21 23:59:07.120" from="u-1">Morning</message>
  <message id="m-2" timestamp="2026.11.22 00:04:00.000" from="x-9" deleted="true" deleted_at="2026.11.22 00:05:00.000" deleted_by="x-9">oops</message>
  <message id="m-3" timestamp="2026.11.22 00:06:00.000" from="u-1">v3 text<edit timestamp="2026.11.22 00:06:30.000" by="u-1">v1 text</edit><edit timestamp="2026.11.22 00:07:00.000" by="u-1">v2 text</edit></message>
</transcript>
"#;

fn im_appliance() -> Appliance {
    let a = Appliance::new(1);
    let mut c = a.head(1);
    c.push_str("[[policies]]\nid = \"p-chat\"\nname = \"Chat\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["sip:u-1@corp.example"], &["p-chat"]));
    a.write_config(&c);
    let mut r = Rec::voice("im-1", "sip:u-1@corp.example");
    r.modality = "im".into();
    r.platform = "symphony".into();
    r.start = "2026.11.21 23:59:00.000".into();
    r.files = vec![(
        "transcript".into(),
        "im-1.im".into(),
        TRANSCRIPT.as_bytes().to_vec(),
    )];
    r.write(&a.spool.join("2026/11/21"));
    a
}

#[test]
fn im_records_get_messages_json() {
    let a = im_appliance();
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = a.targets[0].join("2026/11/21/u-1/im-1");
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(f.join("im-1.messages.json")).unwrap()).unwrap();
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[0]["time"], "2026-11-21T23:59:07.120Z");
    assert_eq!(msgs[1]["deleted"], true);
    assert_eq!(msgs[1]["deleted_at"], "2026-11-22T00:05:00.000Z");
    assert_eq!(msgs[2]["edits"].as_array().unwrap().len(), 2);
    assert_eq!(msgs[2]["text"], "v3 text");
    assert!(f.join("im-1.im").exists() && f.join("im-1.xml").exists());
    let row = &a.rows_with("export")[0];
    assert_eq!(row[3], "3", "transcript, messages.json, xml: {row:?}");
}

#[test]
fn request_submit_and_status() {
    let a = im_appliance();
    let req = a.dir.path().join("req.json");
    fs::write(
        &req,
        r#"{"request_id": "r-2026-11-25-1", "time_from": "2026-11-01T00:00:00Z", "time_to": "2026-11-30T00:00:00Z", "target": "t0", "users": ["u-1"], "modalities": ["im"], "format": "glip"}"#,
    )
    .unwrap();
    let out = a.cmd_with(&["request", "submit"], &[req.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let zip_path = a.targets[0].join("compliance-exports/r-2026-11-25-1.zip");
    let mut z = zip::ZipArchive::new(fs::File::open(&zip_path).unwrap()).unwrap();
    let names: Vec<String> = z.file_names().map(String::from).collect();
    for want in [
        "People_And_Groups/users.json",
        "Teams/teams.json",
        "People_Chats/c-77/2026-11-21.json",
        "People_Chats/c-77/2026-11-22.json",
        "request.json",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing in {names:?}"
        );
    }
    let mut day2 = String::new();
    z.by_name("People_Chats/c-77/2026-11-22.json")
        .unwrap()
        .read_to_string(&mut day2)
        .unwrap();
    let posts: serde_json::Value = serde_json::from_str(&day2).unwrap();
    assert_eq!(posts.as_array().unwrap().len(), 2);
    assert_eq!(posts[0]["deleted"], true);
    assert_eq!(posts[1]["edits"].as_array().unwrap().len(), 2);

    let st = a.cmd_with(&["request", "status", "--json"], &["r-2026-11-25-1"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v[0]["status"], "Completed", "{v}");
    assert_eq!(v[0]["percent"], 100);
    let steps: Vec<String> = a
        .rows_with("request")
        .iter()
        .map(|r| r[11].clone())
        .collect();
    assert_eq!(steps, vec!["Accepted", "InProgress", "Completed"]);
    // The same id again is refused; the zip is never overwritten.
    let again = a.cmd_with(&["request", "submit"], &[req.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(a.cmd(&["audit", "verify"]).status.code(), Some(0));
}

/// `request submit` answers from the snapshot of the model in force without
/// touching the daemon's `snapshot.bin`: compiled privately when there is
/// none or it is stale (and nothing left behind), opened when current.
#[test]
fn request_submit_uses_the_snapshot_and_leaves_the_daemons_alone() {
    use std::os::unix::fs::MetadataExt;
    let a = im_appliance();
    let snap = a.state.join("snapshot.bin");
    let submit = |id: &str, user: &str| {
        let req = a.dir.path().join(format!("{id}.json"));
        fs::write(
            &req,
            format!(
                r#"{{"request_id": "{id}", "time_from": "2026-11-01T00:00:00Z", "time_to": "2026-11-30T00:00:00Z", "target": "t0", "users": ["{user}"], "modalities": ["im"]}}"#
            ),
        )
        .unwrap();
        a.cmd_with(&["request", "submit"], &[req.to_str().unwrap()])
    };
    let leftovers = || -> Vec<String> {
        fs::read_dir(&a.state)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".tmp") || n.starts_with(".intake"))
                    .collect()
            })
            .unwrap_or_default()
    };
    // No snapshot yet: compiled into a private file, which is removed.
    let out = submit("r-1", "u-1");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!snap.exists(), "the daemon's snapshot.bin is not written");
    assert!(leftovers().is_empty(), "{:?}", leftovers());
    assert!(a.targets[0].join("compliance-exports/r-1.zip").exists());

    // The daemon's snapshot, current: opened, not replaced.
    assert_eq!(a.run_until_idle().status.code(), Some(0));
    let ino = fs::metadata(&snap).unwrap().ino();
    let out = submit("r-2", "u-1");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::metadata(&snap).unwrap().ino(), ino);

    // A user added to the config: snapshot.bin is stale, the request sees
    // the model in force (u-2) and still leaves the file to the daemon.
    let mut c = fs::read_to_string(&a.config).unwrap();
    c.push_str(&user("u-2", &["+12125550177"], &["p-chat"]));
    a.write_config(&c);
    let out = submit("r-3", "u-2");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::metadata(&snap).unwrap().ino(), ino);
    assert!(leftovers().is_empty(), "{:?}", leftovers());
    let out = submit("r-4", "u-3");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"u-3\" is not a configured user"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running daemon answers an export request from the snapshot in force
/// with its users delta beside it: a user the delta adds is accepted, and
/// its record is found by the user's mail address (the mail index through
/// the overlay); a user of the inline model the bundle replaced is refused.
#[test]
fn a_request_in_the_daemon_finds_a_delta_users_records_by_mail_address() {
    let a = Appliance::new(1);
    let central = Central::new(&a);
    let mut c = a.head(1);
    c.push_str(&central.trust());
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);
    // A chat recorded under Carol's mail address (no extension of hers).
    let transcript = TRANSCRIPT
        .replace("c-77", "c-carol")
        .replace("u-1@corp.example", "carol@corp.example");
    let mut r = Rec::voice("im-carol", "Carol@Corp.Example");
    r.modality = "im".into();
    r.platform = "symphony".into();
    r.files = vec![(
        "transcript".into(),
        "im-carol.im".into(),
        transcript.into_bytes(),
    )];
    r.write(&a.spool.join("2026/11/21"));
    let _d = a.spawn();

    let inbox = a.state.join("inbox");
    let full = central.sign(
        "v1",
        "config",
        &format!(
            r#"{{"version": 1, "targets": [{{"id": "t0", "kind": "fs", "path": "{}"}}],
               "policies": [{{"id": "p", "name": "P", "targets": ["t0"]}}],
               "users": [{{"id": "u-2", "email": "bob@corp.example", "extensions": ["200"], "policies": ["p"]}}]}}"#,
            a.targets[0].display()
        ),
    );
    drop_in(&a, &full, "0001.json");
    wait_for(Duration::from_secs(20), || {
        inbox.join("accepted/0001.json").exists()
    });
    let delta = central.sign(
        "v2",
        "users-delta",
        r#"{"version": 2, "base_version": 1, "upsert": [{"id": "u-3", "name": "Carol", "email": "carol@corp.example", "extensions": ["300"], "policies": ["p"]}]}"#,
    );
    drop_in(&a, &delta, "0002.json");
    wait_for(Duration::from_secs(20), || {
        inbox.join("accepted/0002.json").exists()
    });
    let request = |id: &str, user: &str| {
        format!(
            r#"{{"request_id": "{id}", "time_from": "2026-11-01T00:00:00Z", "time_to": "2026-11-30T00:00:00Z", "target": "t0", "users": ["{user}"], "modalities": ["im"]}}"#
        )
    };
    drop_in(
        &a,
        &central.sign("r1", "export-request", &request("r-carol", "u-3")),
        "0003.json",
    );
    let status = |id: &str| -> serde_json::Value {
        fs::read(a.state.join(format!("requests/{id}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    };
    wait_for(Duration::from_secs(30), || {
        matches!(
            status("r-carol")["status"].as_str(),
            Some("Completed" | "Failed")
        )
    });
    assert_eq!(
        status("r-carol")["status"],
        "Completed",
        "{}",
        status("r-carol")
    );
    let zip_path = a.targets[0].join("compliance-exports/r-carol.zip");
    let mut z = zip::ZipArchive::new(fs::File::open(&zip_path).unwrap()).unwrap();
    let mut users = String::new();
    z.by_name("People_And_Groups/users.json")
        .unwrap()
        .read_to_string(&mut users)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&users).unwrap();
    assert_eq!(v[0]["id"], "c-carol", "{v}");
    let emails: Vec<&str> = v[0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["email"].as_str())
        .collect();
    assert!(emails.contains(&"carol@corp.example"), "{v}");

    // u-1 was the inline model's: not in force since the bundle.
    drop_in(
        &a,
        &central.sign("r2", "export-request", &request("r-old", "u-1")),
        "0004.json",
    );
    wait_for(Duration::from_secs(30), || {
        status("r-old")["status"].as_str() == Some("Failed")
    });
    assert!(
        status("r-old")["reason"]
            .to_string()
            .contains("not a configured user"),
        "{}",
        status("r-old")
    );
}

#[test]
fn signed_bundles_through_the_inbox_of_a_running_daemon() {
    let a = Appliance::new(1);
    let central = Central::new(&a);
    let mut c = a.head(1);
    c.push_str(&central.trust());
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);
    let _d = a.spawn();

    // Version 1 assigns extension 200 to a new user.
    let bundle = central.sign(
        "v1",
        "config",
        &format!(
            r#"{{"version": 1, "issued_at": "2026-11-25T10:00:00Z",
               "targets": [{{"id": "t0", "kind": "fs", "path": "{}"}}],
               "policies": [{{"id": "p", "name": "P", "targets": ["t0"]}}],
               "users": [{{"id": "u-2", "name": "Bob", "email": "bob@corp.example", "extensions": ["200"], "policies": ["p"]}}]}}"#,
            a.targets[0].display()
        ),
    );
    let v = a.cmd_with(&["bundle", "verify"], &[bundle.to_str().unwrap()]);
    assert_eq!(
        v.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );

    let inbox = a.state.join("inbox");
    drop_in(&a, &bundle, "0001.json");
    wait_for(Duration::from_secs(20), || {
        inbox.join("accepted/0001.json").exists()
    });
    Rec::voice("after-bundle", "200").write(&a.spool.join("x"));
    wait_for(Duration::from_secs(20), || {
        a.targets[0]
            .join("2026/11/21/u-2/after-bundle/after-bundle.xml")
            .exists()
    });

    // A replay of the same bundle is rejected, with a reason file and an audit row.
    drop_in(&a, &bundle, "0002.json");
    wait_for(Duration::from_secs(20), || {
        inbox.join("rejected/0002.json.reason").exists()
    });
    let reason = fs::read_to_string(inbox.join("rejected/0002.json.reason")).unwrap();
    assert!(reason.to_lowercase().contains("version"), "{reason}");
    wait_for(Duration::from_secs(10), || a.rows_with("config").len() == 2);
    let rows = a.rows_with("config");
    assert_eq!(rows[0][1], "1");
    assert_eq!(rows[0][11], "applied");
    assert_ne!(rows[1][11], "applied");
    let v2 = a.cmd_with(&["bundle", "verify"], &[bundle.to_str().unwrap()]);
    assert_eq!(v2.status.code(), Some(1), "a replay would be rejected");
}

/// A request refused after it parsed (here: a target that is not
/// configured) gets a `Failed` status with the reason, so its sender can
/// read why; the same id sent again, corrected, is then accepted (it was
/// never accepted before), while an accepted id stays refused.
#[test]
fn a_refused_request_has_a_failed_status_and_can_be_sent_again() {
    let a = im_appliance();
    let req = a.dir.path().join("req.json");
    let body = |target: &str| {
        format!(
            r#"{{"request_id": "r-refused-1", "target": "{target}", "users": ["u-1"], "modalities": ["im"]}}"#
        )
    };
    fs::write(&req, body("nas-9")).unwrap();
    let out = a.cmd_with(&["request", "submit"], &[req.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    let st = a.cmd_with(&["request", "status", "--json"], &["r-refused-1"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v[0]["status"], "Failed", "{v}");
    let reason = v[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("nas-9") && reason.contains("t0"),
        "{reason}"
    );

    fs::write(&req, body("t0")).unwrap();
    let out = a.cmd_with(&["request", "submit"], &[req.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = a.cmd_with(&["request", "status", "--json"], &["r-refused-1"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v[0]["status"], "Completed", "{v}");
    assert!(
        a.targets[0]
            .join("compliance-exports/r-refused-1.zip")
            .exists()
    );
    let again = a.cmd_with(&["request", "submit"], &[req.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    let st = a.cmd_with(&["request", "status", "--json"], &["r-refused-1"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(
        v[0]["status"], "Completed",
        "an accepted request is never replaced: {v}"
    );
}

/// An unfinished request is resumed when the agent starts again, but not
/// for ever: one the agent stopped while running (out of memory under the
/// unit's MemoryMax, a crash) more than `MAX_RESUMES` times fails instead,
/// so it cannot keep the service in a restart loop that stops every export.
#[test]
fn a_request_that_keeps_stopping_the_agent_is_not_resumed_for_ever() {
    let a = im_appliance();
    let submit = |id: &str| {
        let req = a.dir.path().join(format!("{id}.json"));
        fs::write(
            &req,
            format!(r#"{{"request_id": "{id}", "target": "t0", "users": ["u-1"], "modalities": ["im"]}}"#),
        )
        .unwrap();
        let out = a.cmd_with(&["request", "submit", "--detach"], &[req.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let status = |id: &str| -> serde_json::Value {
        let st = a.cmd_with(&["request", "status", "--json"], &[id]);
        serde_json::from_slice::<serde_json::Value>(&st.stdout).unwrap()[0].clone()
    };
    let resumes = |id: &str| a.state.join("requests").join(format!("{id}.resumes"));
    // Accepted, left to the daemon; as if the agent had died while running
    // it twice already, and once for the other.
    submit("r-looping");
    submit("r-once");
    assert_eq!(status("r-looping")["status"], "Accepted");
    fs::write(resumes("r-looping"), "2\n").unwrap();
    fs::write(resumes("r-once"), "1\n").unwrap();
    let out = a.run_until_idle();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = status("r-looping");
    assert_eq!(st["status"], "Failed", "{st}");
    assert!(
        st["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("stopped while running this request 3 times"),
        "{st}"
    );
    assert!(
        !a.targets[0]
            .join("compliance-exports/r-looping.zip")
            .exists()
    );
    let st = status("r-once");
    assert_eq!(st["status"], "Completed", "resumed below the limit: {st}");
    assert_eq!(fs::read_to_string(resumes("r-once")).unwrap().trim(), "2");
    let steps: Vec<(String, String)> = a
        .rows_with("request")
        .iter()
        .map(|r| (r[1].clone(), r[11].clone()))
        .collect();
    assert!(
        steps.contains(&("r-looping".into(), "Failed".into())),
        "{steps:?}"
    );
    assert_eq!(a.cmd(&["audit", "verify"]).status.code(), Some(0));
}
