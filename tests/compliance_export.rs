//! Compliance export engine: selection, ownership, layouts, request.json,
//! status lifecycle.

#[path = "fixtures/im/spool.rs"]
mod spool;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use exportd::policy::model::{Model, TargetSpec};
use exportd::policy::snapshot::Snapshot;
use exportd::requests::compliance::{
    self, ComplianceError, Directory, ExportRequest, Format, PlainOpener, Progress, RequestContext,
    State, StatusStore,
};
use exportd::time::Timestamp;
use serde_json::Value;

fn now() -> Timestamp {
    Timestamp::parse_rfc3339("2026-11-25T12:00:00Z").unwrap()
}

fn req(id: &str) -> ExportRequest {
    ExportRequest {
        request_id: id.into(),
        time_from: Some("2026-11-20T00:00:00Z".into()),
        time_to: Some("2026-11-23T00:00:00Z".into()),
        target: "nas1".into(),
        users: None,
        modalities: None,
        attachments: true,
        format: Format::Glip,
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    spool: PathBuf,
    out: PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let out = tmp.path().join("archive");
    std::fs::create_dir_all(&spool).unwrap();
    spool::standard_spool(&spool);
    Env {
        spool,
        out,
        _tmp: tmp,
    }
}

/// The configured users as the agent has them: the compiled snapshot,
/// whose indexes answer the engine (by id, extension, mail address).
fn company() -> Snapshot {
    Snapshot::from_model(&Model {
        targets: vec![TargetSpec::fs("nas1", "/unused")],
        users: spool::users(),
        ..Model::default()
    })
    .unwrap()
}

fn run(
    e: &Env,
    r: &ExportRequest,
) -> (Result<compliance::Summary, ComplianceError>, Vec<Progress>) {
    run_with(e, r, &company())
}

fn run_with(
    e: &Env,
    r: &ExportRequest,
    users: &dyn Directory,
) -> (Result<compliance::Summary, ComplianceError>, Vec<Progress>) {
    let opener = PlainOpener;
    let ctx = RequestContext {
        spool_roots: vec![e.spool.clone()],
        users,
        opener: &opener,
        output_dir: e.out.clone(),
        now: now(),
    };
    let mut events = Vec::new();
    let res = compliance::run(r, &ctx, &mut |p| events.push(p));
    (res, events)
}

fn entries(zip: &Path) -> BTreeMap<String, Vec<u8>> {
    spool::read_zip(zip).into_iter().collect()
}

fn json(m: &BTreeMap<String, Vec<u8>>, name: &str) -> Value {
    let b = m
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing; have {:?}", m.keys().collect::<Vec<_>>()));
    serde_json::from_slice(b).unwrap()
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn glip_export_full() {
    let e = env();
    let (res, events) = run(&e, &req("r-full"));
    let s = res.unwrap();
    assert_eq!(s.zip, e.out.join("compliance-exports/r-full.zip"));
    assert!(!e.out.join("compliance-exports/.r-full.zip.tmp").exists());
    let z = entries(&s.zip);
    let names: Vec<&str> = z.keys().map(String::as_str).collect();

    // Ownership: the direct chat with an external is in, the group owned by
    // Bob (configured) is in, the team owned by Ann is in; the team owned by
    // the external Carl and the group owned by Dave are out.
    let people = json(&z, "People_And_Groups/users.json");
    assert_eq!(ids(&people), ["c-direct", "c-group"]);
    let teams = json(&z, "Teams/teams.json");
    assert_eq!(ids(&teams), ["c-team"]);
    assert!(
        !names.iter().any(|n| n.contains("c-team-ext")
            || n.contains("c-group-ext")
            || n.contains("c-other"))
    );

    let direct = &people[0];
    assert_eq!(direct["kind"], "direct");
    assert_eq!(direct["title"], "Ann & Carl");
    assert_eq!(direct["owner"], "u-1001");
    assert_eq!(direct["members"][1]["internal"], false);
    assert_eq!(direct["members"][1]["email"], "carl@partner.example");
    assert_eq!(direct["members"][0]["name"], "Ann Trader");

    // Two UTC days for the direct chat.
    let d20 = json(&z, "People_Chats/c-direct/2026-11-20.json");
    let d21 = json(&z, "People_Chats/c-direct/2026-11-21.json");
    assert_eq!(ids(&d20), ["m-1"]);
    assert_eq!(ids(&d21), ["m-2", "m-3", "m-4"]);
    assert_eq!(d20[0]["creationTime"], "2026-11-20T23:59:58.500Z");
    assert_eq!(d20[0]["lastModifiedTime"], "2026-11-20T23:59:58.500Z");
    assert_eq!(d20[0]["creatorId"], "u-1001");
    let deleted = &d21[0];
    assert_eq!(deleted["deleted"], true);
    assert_eq!(deleted["text"], "wrong chat, ignore");
    assert_eq!(deleted["lastModifiedTime"], "2026-11-21T00:05:00.000Z");
    assert_eq!(deleted["deletedBy"], "x-9");
    let edited = &d21[1];
    assert_eq!(edited["text"], "Final terms attached");
    assert_eq!(edited["deleted"], false);
    assert_eq!(edited["lastModifiedTime"], "2026-11-21T09:32:00.000Z");
    let edits = edited["edits"].as_array().unwrap();
    assert_eq!(edits.len(), 2);
    assert_eq!(edits[0]["text"], "Draft terms");
    assert_eq!(edits[0]["time"], "2026-11-21T09:31:00.000Z");
    assert_eq!(edits[1]["text"], "Terms v2 <draft>");
    assert_eq!(edits[1]["by"], "u-1001");
    assert_eq!(edited["attachments"][0], "term-sheet.pdf");
    assert_eq!(z["Files/c-direct/term-sheet.pdf"], b"%PDF-1.4 term sheet");

    // Group: two records merged, messages deduplicated by id.
    let g21 = json(&z, "People_Chats/c-group/2026-11-21.json");
    let g22 = json(&z, "People_Chats/c-group/2026-11-22.json");
    assert_eq!(ids(&g21), ["g-1", "g-2"]);
    assert_eq!(ids(&g22), ["g-3"]);
    assert_eq!(
        people[1]["records"],
        serde_json::json!(["rec-group-ann", "rec-group-bob"])
    );
    assert_eq!(ids(&json(&z, "Team_Chats/c-team/2026-11-22.json")), ["t-1"]);

    let r = json(&z, "request.json");
    assert_eq!(r["request"]["request_id"], "r-full");
    assert_eq!(r["requested"]["from"], "2026-11-20T00:00:00Z");
    assert_eq!(r["covered"]["from"], "2026-11-20T00:00:00.000Z");
    assert_eq!(r["covered"]["to"], "2026-11-22T12:00:00.000Z");
    assert_eq!(r["beyond_retention"], false);
    assert_eq!(r["oldest_record"], "2026-11-01T09:00:00.000Z");
    let c = &r["counts"];
    assert_eq!(c["conversations"], 3);
    assert_eq!(c["messages"], 8);
    assert_eq!(c["deleted"], 1);
    assert_eq!(c["edits"], 2);
    assert_eq!(c["files"], 1);
    assert_eq!(c["records"], 4);
    assert_eq!(s.counts.messages, 8);

    // The zip bomb and the entity bomb were skipped and reported, not hidden.
    let skipped = r["skipped"].to_string();
    assert!(skipped.contains("zip bomb"), "{skipped}");
    assert!(skipped.contains("DOCTYPE"), "{skipped}");
    assert_eq!(r["skipped_count"], 2);
    assert_eq!(s.skipped, 2);
    assert!(
        events
            .iter()
            .any(|p| matches!(p, Progress::Skipped { reason, .. } if reason.contains("zip bomb")))
    );
    assert!(matches!(events.last(), Some(Progress::Finished { .. })));
    assert!(events.iter().filter_map(Progress::percent).is_sorted());

    // Never overwritten.
    let (again, _) = run(&e, &req("r-full"));
    assert!(matches!(again, Err(ComplianceError::Exists(_))));
}

#[test]
fn attachments_off_and_range_filter() {
    let e = env();
    let mut r = req("r-day");
    r.attachments = false;
    r.time_from = Some("2026-11-21T00:00:00Z".into());
    r.time_to = Some("2026-11-22T00:00:00Z".into());
    let s = run(&e, &r).0.unwrap();
    let z = entries(&s.zip);
    assert!(!z.keys().any(|k| k.starts_with("Files/")));
    assert!(!z.contains_key("People_Chats/c-direct/2026-11-20.json"));
    assert!(!z.contains_key("People_Chats/c-group/2026-11-22.json"));
    assert_eq!(
        ids(&json(&z, "People_Chats/c-direct/2026-11-21.json")),
        ["m-2", "m-3", "m-4"]
    );
    // The team only has a message on the 22nd: not listed at all.
    assert_eq!(ids(&json(&z, "Teams/teams.json")), Vec::<String>::new());
    // Attachment names stay on the post even without the files.
    let d21 = json(&z, "People_Chats/c-direct/2026-11-21.json");
    assert_eq!(d21[1]["attachments"][0], "term-sheet.pdf");
    assert_eq!(json(&z, "request.json")["counts"]["files"], 0);
}

#[test]
fn user_filter_selects_records_of_that_user() {
    let e = env();
    let mut r = req("r-bob");
    r.users = Some(vec!["u-1002".into()]);
    let s = run(&e, &r).0.unwrap();
    let z = entries(&s.zip);
    // Only Bob's group record matches Bob... and Ann's team lists Bob as a
    // participant, so it is his conversation too.
    assert_eq!(ids(&json(&z, "People_And_Groups/users.json")), ["c-group"]);
    assert_eq!(ids(&json(&z, "Teams/teams.json")), ["c-team"]);
    let mut r = req("r-nobody");
    r.users = Some(vec!["u-9999".into()]);
    assert!(matches!(
        run(&e, &r).0,
        Err(ComplianceError::UnknownUser(_))
    ));
}

/// The snapshot's indexes (what the agent uses) and a walk over the list of
/// users give the same export: same entries, same bytes, for every user
/// filter and both layouts.
#[test]
fn the_snapshot_answers_as_the_list_of_users_does() {
    let e = env();
    let snap = company();
    let list = spool::users();
    let filters: [Option<&[&str]>; 4] = [
        None,
        Some(&["u-1001"]),
        Some(&["u-1002"]),
        Some(&["u-1001", "u-1002"]),
    ];
    let mut n = 0;
    for users in filters {
        for format in [Format::Glip, Format::Slack] {
            let mut zips = Vec::new();
            for dir in [&snap as &dyn Directory, &list] {
                n += 1;
                let mut r = req(&format!("r-same-{n}"));
                r.users = users.map(|u| u.iter().map(|s| s.to_string()).collect());
                r.format = format;
                let s = run_with(&e, &r, dir).0.unwrap();
                let mut z = entries(&s.zip);
                // request.json names the request id: the rest must be equal.
                z.remove("request.json");
                zips.push(z);
            }
            assert!(!zips[0].is_empty());
            assert_eq!(zips[0], zips[1], "users {users:?}, {format:?}");
        }
    }
}

#[test]
fn empty_range_still_produces_a_zip() {
    let e = env();
    let mut r = req("r-empty");
    r.time_from = Some("2027-01-01T00:00:00Z".into());
    r.time_to = Some("2027-01-02T00:00:00Z".into());
    let s = run(&e, &r).0.unwrap();
    let z = entries(&s.zip);
    assert_eq!(
        z.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "People_And_Groups/users.json",
            "Teams/teams.json",
            "request.json"
        ]
    );
    assert_eq!(
        json(&z, "People_And_Groups/users.json"),
        serde_json::json!([])
    );
    assert_eq!(json(&z, "Teams/teams.json"), serde_json::json!([]));
    let rj = json(&z, "request.json");
    for k in [
        "conversations",
        "messages",
        "deleted",
        "edits",
        "files",
        "records",
    ] {
        assert_eq!(rj["counts"][k], 0, "{k}");
    }
    assert_eq!(rj["beyond_retention"], false);
    // Nothing on the appliance that late: the covered range is empty.
    assert_eq!(rj["covered"]["from"], rj["covered"]["to"]);
}

#[test]
fn beyond_retention_is_reported() {
    let e = env();
    let mut r = req("r-old");
    r.time_from = Some("2026-10-01T00:00:00Z".into());
    let s = run(&e, &r).0.unwrap();
    assert!(s.beyond_retention);
    let rj = json(&entries(&s.zip), "request.json");
    assert_eq!(rj["beyond_retention"], true);
    assert_eq!(rj["covered"]["from"], "2026-11-01T09:00:00.000Z");
    let note = rj["note"].as_str().unwrap();
    assert!(
        note.contains("2026-11-01T09:00:00.000Z") && note.contains("beyond retention"),
        "{note}"
    );

    // All history: never beyond retention.
    let mut r = req("r-all");
    r.time_from = None;
    r.time_to = None;
    let s = run(&e, &r).0.unwrap();
    assert!(!s.beyond_retention);
    let rj = json(&entries(&s.zip), "request.json");
    assert_eq!(rj["requested"]["from"], Value::Null);
    assert_eq!(rj["counts"]["messages"], 8);
}

#[test]
fn other_modalities_only_when_asked() {
    let e = env();
    let mut r = req("r-voice");
    r.time_from = None;
    r.modalities = Some(vec!["voice".into()]);
    let s = run(&e, &r).0.unwrap();
    let z = entries(&s.zip);
    let rj = json(&z, "request.json");
    assert_eq!(rj["other_records"][0]["id"], "rec-voice-old");
    assert_eq!(rj["counts"]["records"], 1);
    assert_eq!(z["Files/rec-voice-old/call.wav"], b"RIFF....WAVE");
}

#[test]
fn slack_layout_files() {
    let e = env();
    let mut r = req("r-slack");
    r.format = Format::Slack;
    let s = run(&e, &r).0.unwrap();
    let z = entries(&s.zip);
    for f in [
        "users.json",
        "channels.json",
        "groups.json",
        "dms.json",
        "mpims.json",
        "request.json",
    ] {
        assert!(z.contains_key(f), "{f}");
    }
    assert_eq!(ids(&json(&z, "channels.json")), ["c-team"]);
    assert_eq!(ids(&json(&z, "dms.json")), ["c-direct"]);
    assert_eq!(json(&z, "mpims.json")[0]["name"], "c-group");
    assert_eq!(json(&z, "groups.json"), serde_json::json!([]));
    let users = json(&z, "users.json");
    assert!(ids(&users).contains(&"x-9".to_string()));
    let day = json(&z, "c-direct/2026-11-21.json");
    assert_eq!(day[0]["type"], "message");
    assert_eq!(day[0]["subtype"], "tombstone");
    assert_eq!(day[0]["ts"], "1795219201.000000");
    assert_eq!(day[1]["edited"]["ts"], "1795253520.000000");
    assert_eq!(day[1]["edit_history"].as_array().unwrap().len(), 2);
    assert_eq!(day[1]["files"][0]["name"], "term-sheet.pdf");
    assert!(z.contains_key("c-team/2026-11-22.json"));
}

#[test]
fn status_lifecycle_with_fake_clock() {
    let e = env();
    let state = e.out.parent().unwrap().join("state");
    let store = StatusStore::new(&state);
    let t0 = Timestamp::parse_rfc3339("2026-11-25T12:00:00Z").unwrap();
    let clock = std::cell::Cell::new(t0);
    let st = store.accept("r-life", clock.get()).unwrap();
    assert_eq!(st.status, State::Accepted);
    assert!(matches!(
        store.accept("r-life", t0),
        Err(compliance::StatusError::Exists(_))
    ));

    let opener = PlainOpener;
    let users = company();
    let ctx = RequestContext {
        spool_roots: vec![e.spool.clone()],
        users: &users,
        opener: &opener,
        output_dir: e.out.clone(),
        now: t0,
    };
    let mut seen = Vec::new();
    let s = compliance::run_tracked(&req("r-life"), &ctx, &store, &|| clock.get(), &mut |p| {
        seen.push(p)
    })
    .unwrap();
    let st = store.get("r-life").unwrap().unwrap();
    assert_eq!(st.status, State::Completed);
    assert_eq!(st.percent, 100);
    assert_eq!(st.zip.as_deref(), Some(s.zip.as_path()));
    assert_eq!(st.completed_at.as_deref(), Some("2026-11-25T12:00:00.000Z"));
    let raw: Value =
        serde_json::from_slice(&std::fs::read(state.join("requests/r-life.json")).unwrap())
            .unwrap();
    for k in [
        "request_id",
        "status",
        "percent",
        "reason",
        "submitted_at",
        "updated_at",
        "completed_at",
        "zip",
    ] {
        assert!(raw.get(k).is_some(), "{k}");
    }

    // A second request with the same id fails (the zip exists) and says why.
    store
        .put(&compliance::RequestStatus {
            request_id: "r-dup".into(),
            ..st.clone()
        })
        .unwrap();
    let mut dup = req("r-life");
    dup.request_id = "r-dup".into();
    std::fs::copy(&s.zip, e.out.join("compliance-exports/r-dup.zip")).unwrap();
    assert!(compliance::run_tracked(&dup, &ctx, &store, &|| clock.get(), &mut |_| {}).is_err());
    let failed = store.get("r-dup").unwrap().unwrap();
    assert_eq!(failed.status, State::Failed);
    assert!(failed.reason.unwrap().contains("never overwritten"));

    // 29 days later: still there. 30 days: removed and Expired.
    let day = 86_400_000;
    assert!(store.expire(Timestamp(t0.0 + 29 * day)).unwrap().is_empty());
    assert!(s.zip.exists());
    assert_eq!(
        store.expire(Timestamp(t0.0 + 30 * day)).unwrap(),
        ["r-life"]
    );
    assert!(!s.zip.exists());
    let st = store.get("r-life").unwrap().unwrap();
    assert_eq!(st.status, State::Expired);
    assert_eq!(st.updated_at, "2026-12-25T12:00:00.000Z");
    // Idempotent.
    assert!(store.expire(Timestamp(t0.0 + 60 * day)).unwrap().is_empty());
    assert_eq!(store.list().unwrap().len(), 2);
}
