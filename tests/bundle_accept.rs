//! The acceptance path: persisted version across restarts, granting and
//! revoking admins, export requests, the operator functions, and a model
//! test of the version rule against the in-memory store.

#[path = "bundle_util.rs"]
mod util;

use std::os::unix::fs::PermissionsExt;

use exportd::control::bundle::ops::{
    cosign_file, keygen, load_signing_key, sign_file, verify_file,
};
use exportd::control::bundle::state::MemStore;
use exportd::control::bundle::trust::SigStatus;
use exportd::control::bundle::{Accepted, BundleError, BundleState, Role, apply_envelope};
use serde_json::json;
use util::*;

#[test]
fn accepted_version_survives_restart() {
    let dir = TempDir::new("accept");
    let mut st = BundleState::load(dir.path()).unwrap();
    assert_eq!(st.version(), 0);
    let env = sign_config(&model_json(7), &[("central", &central())]);
    let a = apply_envelope(&env, &anchors(), &mut st).unwrap();
    let Accepted::Config(c) = &a else { panic!() };
    assert_eq!(c.version, 7);
    assert_eq!(c.model.users[0].id, "u-1001");
    assert_eq!(a.audit_id(), "7");
    assert_eq!(c.signers[0].keyid, "central");

    // Files on disk.
    let bdir = dir.path().join("bundle");
    assert_eq!(
        std::fs::read_to_string(bdir.join("version")).unwrap(),
        "7\n"
    );
    assert_eq!(
        std::fs::read(bdir.join("current.json")).unwrap(),
        bytes(&model_json(7))
    );
    let mode = std::fs::metadata(&bdir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);

    // Restart: a new load still refuses the old version and lower ones.
    drop(st);
    let mut st = BundleState::load(dir.path()).unwrap();
    assert_eq!(st.version(), 7);
    assert_eq!(st.current_model().unwrap().version, 7);
    let e = apply_envelope(&env, &anchors(), &mut st).unwrap_err();
    assert!(matches!(e, BundleError::Replay { version: 7 }), "{e}");
    let e = apply_envelope(
        &sign_config(&model_json(6), &[("central", &central())]),
        &anchors(),
        &mut st,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            BundleError::Rollback {
                got: 6,
                in_force: 7
            }
        ),
        "{e}"
    );
    // Versions may skip.
    apply_envelope(
        &sign_config(&model_json(100), &[("central", &central())]),
        &anchors(),
        &mut st,
    )
    .unwrap();
    assert_eq!(BundleState::load(dir.path()).unwrap().version(), 100);
}

#[test]
fn unknown_signatures_are_ignored_next_to_a_valid_one() {
    let dir = TempDir::new("accept");
    let mut st = BundleState::load(dir.path()).unwrap();
    let env = sign_config(
        &model_json(1),
        &[("mallory", &mallory()), ("central", &central())],
    );
    let Accepted::Config(c) = apply_envelope(&env, &anchors(), &mut st).unwrap() else {
        panic!()
    };
    assert_eq!(c.signers.len(), 1);
}

#[test]
fn grant_then_export_then_keep_then_revoke() {
    let dir = TempDir::new("grant");
    let mut st = BundleState::load(dir.path()).unwrap();
    let anchors = anchors();

    // Before the grant alice is unknown.
    let e = apply_envelope(
        &sign_request("r-0", &[("alice", &alice())]),
        &anchors,
        &mut st,
    )
    .unwrap_err();
    assert!(matches!(e, BundleError::UnknownKey { .. }), "{e}");

    // v1 grants alice `export` (central holds `grant`).
    let mut m = model_json(1);
    m["admins"] = json!([admin("alice", &alice(), &["export"])]);
    apply_envelope(
        &sign_config(&m, &[("central", &central())]),
        &anchors,
        &mut st,
    )
    .unwrap();
    assert_eq!(st.admins().len(), 1);

    // Restart, then alice signs an export request.
    let mut st = BundleState::load(dir.path()).unwrap();
    assert_eq!(st.admins()[0].keyid, "alice");
    let a = apply_envelope(
        &sign_request("r-1", &[("alice", &alice())]),
        &anchors,
        &mut st,
    )
    .unwrap();
    let Accepted::ExportRequest(r) = &a else {
        panic!()
    };
    assert_eq!(r.request_id, "r-1");
    assert_eq!(a.audit_id(), "r-1");
    let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(v["target"], "nas1");
    assert_eq!(
        st.version(),
        1,
        "an export request does not change the version"
    );

    // The same request id again, also after a restart: rejected.
    let e = apply_envelope(
        &sign_request("r-1", &[("central", &central())]),
        &anchors,
        &mut st,
    )
    .unwrap_err();
    assert!(matches!(&e, BundleError::RequestSeen { request_id } if request_id == "r-1"));
    let mut st = BundleState::load(dir.path()).unwrap();
    let e = apply_envelope(
        &sign_request("r-1", &[("alice", &alice())]),
        &anchors,
        &mut st,
    )
    .unwrap_err();
    assert!(matches!(e, BundleError::RequestSeen { .. }), "{e}");

    // alice holds export only: she cannot sign a config.
    let e = apply_envelope(
        &sign_config(&model_json(2), &[("alice", &alice())]),
        &anchors,
        &mut st,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            BundleError::MissingRole {
                role: Role::Config,
                ..
            }
        ),
        "{e}"
    );

    // v2 without `admins` keeps alice.
    apply_envelope(
        &sign_config(&model_json(2), &[("cfg-only", &cfg_only())]),
        &anchors,
        &mut st,
    )
    .unwrap();
    let mut st = BundleState::load(dir.path()).unwrap();
    assert_eq!(st.admins().len(), 1);
    apply_envelope(
        &sign_request("r-2", &[("alice", &alice())]),
        &anchors,
        &mut st,
    )
    .unwrap();

    // v3 with `admins: []` revokes every granted key.
    let mut m = model_json(3);
    m["admins"] = json!([]);
    apply_envelope(
        &sign_config(&m, &[("central", &central())]),
        &anchors,
        &mut st,
    )
    .unwrap();
    assert!(st.admins().is_empty());
    let mut st = BundleState::load(dir.path()).unwrap();
    assert!(st.admins().is_empty());
    let e = apply_envelope(
        &sign_request("r-3", &[("alice", &alice())]),
        &anchors,
        &mut st,
    )
    .unwrap_err();
    assert!(matches!(e, BundleError::UnknownKey { .. }), "{e}");
}

#[test]
fn grant_may_come_from_a_second_signature() {
    let dir = TempDir::new("cosign");
    let mut st = BundleState::load(dir.path()).unwrap();
    let granter = key(9);
    let mut anchors = anchors();
    anchors.push(admin("granter", &granter, &["grant"]));
    let mut m = model_json(1);
    m["admins"] = json!([admin("alice", &alice(), &["export", "config"])]);
    // config role from cfg-only, grant role from granter.
    apply_envelope(
        &sign_config(&m, &[("cfg-only", &cfg_only()), ("granter", &granter)]),
        &anchors,
        &mut st,
    )
    .unwrap();
    // The granted config role works for the next bundle.
    apply_envelope(
        &sign_config(&model_json(2), &[("alice", &alice())]),
        &anchors,
        &mut st,
    )
    .unwrap();
    assert_eq!(st.version(), 2);
}

/// Model test: a random walk of versions against the in-memory store; the
/// version in force is always the highest accepted, every other bundle is a
/// replay or a rollback and leaves the store untouched.
#[test]
fn version_rule_model_test() {
    let mut st = BundleState::load_from(MemStore::default()).unwrap();
    let anchors = anchors();
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut highest = 0u64;
    for _ in 0..300 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let v = 1 + seed % 40;
        let before = st.store().files.clone();
        let r = apply_envelope(
            &sign_config(&model_json(v), &[("central", &central())]),
            &anchors,
            &mut st,
        );
        match r {
            Ok(_) => {
                assert!(v > highest);
                highest = v;
            }
            Err(BundleError::Replay { version }) => {
                assert_eq!((v, version), (highest, highest));
                assert_eq!(st.store().files, before);
            }
            Err(BundleError::Rollback { got, in_force }) => {
                assert!(got < in_force && in_force == highest);
                assert_eq!(st.store().files, before);
            }
            Err(e) => panic!("{e}"),
        }
        assert_eq!(st.version(), highest);
        let reloaded = BundleState::load_from(st.store().clone()).unwrap();
        assert_eq!(reloaded.version(), highest);
    }
    assert!(highest > 30);
}

#[test]
fn keygen_sign_verify_round_trip() {
    let dir = TempDir::new("ops");
    let prefix = dir.path().join("ops-alice");
    let info = keygen(&prefix).unwrap();
    assert_eq!(info.keyid, "ops-alice");
    assert_eq!(info.key_path, dir.path().join("ops-alice.key"));
    let mode = std::fs::metadata(&info.key_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::read_to_string(&info.pub_path).unwrap().trim(),
        info.public_key
    );
    assert!(
        info.trust_toml(&["config"])
            .contains("keyid = \"ops-alice\"")
    );
    // Never overwrites.
    assert!(matches!(keygen(&prefix), Err(BundleError::KeyFile { .. })));

    let trust_entry = exportd::policy::model::Admin {
        keyid: info.keyid.clone(),
        public_key: info.public_key.clone(),
        roles: vec!["config".into(), "export".into()],
    };
    let payload = dir.path().join("cfg.json");
    std::fs::write(&payload, bytes(&model_json(4))).unwrap();
    let env = sign_file(&info.key_path, None, "config", &payload).unwrap();
    assert_eq!(env.signatures[0].keyid, "ops-alice");
    assert_eq!(
        env.payload_bytes().unwrap(),
        std::fs::read(&payload).unwrap()
    );
    let bundle = dir.path().join("cfg.bundle.json");
    std::fs::write(&bundle, env.to_json_pretty()).unwrap();

    let state_dir = dir.path().join("state");
    let rep = verify_file(&bundle, std::slice::from_ref(&trust_entry), &state_dir).unwrap();
    assert!(rep.would_apply(), "{:?}", rep.verdict);
    assert_eq!(
        rep.signatures[0].status,
        SigStatus::Valid(vec![Role::Config, Role::Export])
    );
    assert!(
        !state_dir.exists(),
        "verify must not create or change state"
    );

    // Against anchors that do not know the key: reported, not applied.
    let rep = verify_file(&bundle, &anchors(), &state_dir).unwrap();
    assert_eq!(rep.signatures[0].status, SigStatus::UnknownKey);
    assert!(matches!(rep.verdict, Err(BundleError::UnknownKey { .. })));

    // Once v4 is in force, verify reports the replay.
    let mut st = BundleState::load(&state_dir).unwrap();
    apply_envelope(&env, std::slice::from_ref(&trust_entry), &mut st).unwrap();
    let rep = verify_file(&bundle, std::slice::from_ref(&trust_entry), &state_dir).unwrap();
    assert_eq!(rep.version_in_force, 4);
    assert!(matches!(
        rep.verdict,
        Err(BundleError::Replay { version: 4 })
    ));

    // Export requests and co-signing.
    let req = dir.path().join("req.json");
    std::fs::write(&req, br#"{"request_id":"r-9","target":"nas1"}"#).unwrap();
    let env = sign_file(&info.key_path, Some("custom-id"), "export-request", &req).unwrap();
    assert_eq!(env.signatures[0].keyid, "custom-id");
    std::fs::write(&bundle, env.to_json_pretty()).unwrap();
    let other = keygen(&dir.path().join("second")).unwrap();
    let env = cosign_file(&bundle, &other.key_path, None).unwrap();
    assert_eq!(env.signatures.len(), 2);
    assert_eq!(env.signatures[1].keyid, "second");
}

#[test]
fn sign_file_refuses_bad_input() {
    let dir = TempDir::new("ops");
    let info = keygen(&dir.path().join("k")).unwrap();
    let payload = dir.path().join("cfg.json");

    let mut bad = model_json(1);
    bad["policies"][0]["targets"] = json!(["nope"]);
    std::fs::write(&payload, bytes(&bad)).unwrap();
    let e = sign_file(&info.key_path, None, "config", &payload).unwrap_err();
    assert!(matches!(e, BundleError::Validation { .. }), "{e}");

    std::fs::write(&payload, bytes(&model_json(1))).unwrap();
    let e = sign_file(&info.key_path, None, "policy", &payload).unwrap_err();
    assert!(matches!(e, BundleError::UnknownPayloadType { .. }), "{e}");
    let e = sign_file(&info.key_path, None, "export-request", &payload).unwrap_err();
    assert!(matches!(e, BundleError::InvalidPayload { .. }), "{e}");

    // A key file others may read is refused.
    std::fs::set_permissions(&info.key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = load_signing_key(&info.key_path).unwrap_err();
    assert!(e.to_string().contains("chmod 600"), "{e}");
    // Wrong content.
    let junk = dir.path().join("junk.key");
    std::fs::write(&junk, "AAAA\n").unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        load_signing_key(&junk),
        Err(BundleError::KeyFile { .. })
    ));
}

// ---- users-delta bundles (issue #15) ----

fn sign_delta(v: &serde_json::Value) -> exportd::control::bundle::Envelope {
    exportd::control::bundle::dsse::sign(
        exportd::control::bundle::PayloadType::USERS_DELTA_MEDIA_TYPE,
        &bytes(v),
        &[("central", &central())],
    )
}

fn user(id: &str, ext: &str) -> serde_json::Value {
    json!({"id": id, "name": id, "extensions": [ext], "policies": ["p-voice"]})
}

/// The snapshot of the model in force, compiled as the agent does at start.
fn compiled(dir: &std::path::Path) -> exportd::policy::snapshot::Snapshot {
    let st = BundleState::load(dir).unwrap();
    let out = dir.join("snap.bin");
    exportd::control::bundle::delta::compile_in_force(&st, dir, &out).unwrap();
    exportd::policy::snapshot::Snapshot::open(&out).unwrap()
}

#[test]
fn delta_on_the_version_in_force_is_applied_and_survives_restart() {
    let dir = state_at(5);
    let mut st = BundleState::load(dir.path()).unwrap();
    let d = json!({"version": 6, "base_version": 5, "issued_at": "2026-11-22T10:00:00Z",
                   "upsert": [user("u-2", "+12125550102"),
                              {"id": "u-1001", "name": "Ann Renamed", "extensions": ["TRD-1"], "policies": ["p-voice"]}],
                   "remove": []});
    let a = apply_envelope(&sign_delta(&d), &anchors(), &mut st).unwrap();
    let Accepted::Config(c) = &a else { panic!() };
    assert_eq!(c.version, 6);
    let info = c.delta.as_ref().unwrap();
    assert_eq!(info.base_version, 5);
    assert_eq!(
        (
            info.changes.added,
            info.changes.changed,
            info.changes.removed
        ),
        (1, 1, 0)
    );
    assert_eq!(c.compiled.as_ref().unwrap().users, 2);
    assert_eq!(st.version(), 6);
    drop(st);

    // Restart: the chain current.json + delta-6 is the model in force.
    let st = BundleState::load(dir.path()).unwrap();
    assert_eq!(st.version(), 6);
    assert_eq!(st.delta_versions(), vec![6]);
    let m = st.current_model().unwrap();
    assert_eq!(m.version, 6);
    assert_eq!(m.users.len(), 2);
    let snap = compiled(dir.path());
    assert_eq!(snap.version(), 6);
    assert_eq!(snap.lookup("+1 212 555 0102").unwrap().id, "u-2");
    assert_eq!(snap.lookup("TRD-1").unwrap().name, "Ann Renamed");
    assert!(
        snap.lookup("+12125550100").is_none(),
        "the replaced user's old extension is gone"
    );

    // A second delta removes u-2; then a full bundle replaces everything.
    let mut st = st;
    let d = json!({"version": 7, "base_version": 6, "remove": ["u-2"]});
    apply_envelope(&sign_delta(&d), &anchors(), &mut st).unwrap();
    assert!(compiled(dir.path()).lookup("+12125550102").is_none());
    apply_envelope(
        &sign_config(&model_json(8), &[("central", &central())]),
        &anchors(),
        &mut st,
    )
    .unwrap();
    let st = BundleState::load(dir.path()).unwrap();
    assert_eq!((st.version(), st.delta_versions()), (8, vec![]));
    assert!(!dir.path().join("bundle/delta-6.json").exists());
    assert_eq!(
        compiled(dir.path()).lookup("+12125550100").unwrap().id,
        "u-1001"
    );
}

#[test]
fn delta_on_another_base_is_refused_naming_both_versions() {
    let dir = state_at(5);
    let before = snapshot(dir.path());
    let mut st = BundleState::load(dir.path()).unwrap();
    let d = json!({"version": 9, "base_version": 4, "upsert": [user("u-2", "200")]});
    let e = apply_envelope(&sign_delta(&d), &anchors(), &mut st).unwrap_err();
    assert!(matches!(e, BundleError::DeltaBase { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("base version 4") && msg.contains("version 5 is in force"),
        "{msg}"
    );
    assert!(msg.contains("full bundle"), "{msg}");
    assert_eq!(e.code(), "delta_base");
    assert_eq!(st.version(), 5);
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn delta_validation_errors_change_nothing() {
    let dir = state_at(5);
    let before = snapshot(dir.path());
    let mut st = BundleState::load(dir.path()).unwrap();
    let cases = [
        // A new user taking u-1001's extension (normalised: tel: and spaces).
        (
            json!({"version": 6, "base_version": 5, "upsert": [user("u-2", "tel:+1 212 555 0100")]}),
            "assigned to both",
        ),
        (
            json!({"version": 6, "base_version": 5, "remove": ["u-404"]}),
            "not in force",
        ),
        (
            json!({"version": 6, "base_version": 5, "upsert": [user("u-2", "2")], "remove": ["u-2"]}),
            "both upserted and removed",
        ),
        (
            json!({"version": 6, "base_version": 5, "upsert": [{"id": "u-2", "extensions": ["3"], "policies": ["nope"]}]}),
            "unknown policy",
        ),
    ];
    for (d, want) in cases {
        let e = apply_envelope(&sign_delta(&d), &anchors(), &mut st).unwrap_err();
        assert!(matches!(e, BundleError::Validation { .. }), "{want}: {e}");
        assert!(e.to_string().contains(want), "{want}: {e}");
        assert_eq!(st.version(), 5);
    }
    assert_eq!(snapshot(dir.path()), before);
    // Replacing the owner of an extension with a user keeping it is fine:
    // the old entry goes with the user it belonged to.
    let d = json!({"version": 6, "base_version": 5, "upsert": [{"id": "u-1001", "extensions": ["+12125550100"], "policies": ["p-voice"]}]});
    apply_envelope(&sign_delta(&d), &anchors(), &mut st).unwrap();
}

#[test]
fn verify_counts_users_added_changed_and_removed_by_a_full_bundle() {
    use exportd::control::bundle::ops::verify_file;
    let dir = state_at(5); // u-1001 in force
    let mut m = model_json(6);
    m["users"] = json!([
        {"id": "u-1001", "name": "Ann Renamed", "extensions": ["+12125550100"], "policies": ["p-voice"]},
        user("u-2", "200"),
        user("u-3", "300")
    ]);
    let bundle = dir.path().join("b.json");
    std::fs::write(
        &bundle,
        sign_config(&m, &[("central", &central())]).to_json_pretty(),
    )
    .unwrap();
    let rep = verify_file(&bundle, &anchors(), dir.path()).unwrap();
    assert!(rep.would_apply(), "{:?}", rep.verdict);
    let ch = rep.changes.unwrap();
    assert_eq!((ch.added, ch.changed, ch.removed), (2, 1, 0));
    // The same directory without u-1001, and u-2 unchanged: one removed.
    m["users"] = json!([user("u-2", "200")]);
    std::fs::write(
        &bundle,
        sign_config(&m, &[("central", &central())]).to_json_pretty(),
    )
    .unwrap();
    let ch = verify_file(&bundle, &anchors(), dir.path())
        .unwrap()
        .changes
        .unwrap();
    assert_eq!((ch.added, ch.changed, ch.removed), (1, 0, 1));
    assert_eq!(BundleState::load(dir.path()).unwrap().version(), 5);
}

/// A delta kept beside the snapshot in force (an overlay, no file written):
/// checked against the resulting model by lookups in the base, and after a
/// restart rebuilt from the accepted delta files on top of the same base.
#[test]
fn a_delta_overlay_on_the_snapshot_in_force_matches_the_compiled_model() {
    use exportd::control::bundle::delta::{check_delta_on, overlay_in_force};
    use exportd::policy::snapshot::Snapshot;
    let dir = state_at(5);
    let mut st = BundleState::load(dir.path()).unwrap();
    let base_file = dir.path().join("base.bin");
    drop(compiled(dir.path()));
    std::fs::rename(dir.path().join("snap.bin"), &base_file).unwrap();
    let base = Snapshot::open(&base_file).unwrap();
    let signers = Vec::new();
    // Refused: another base, an extension u-1001 still holds, an unknown id.
    let refused = [
        json!({"version": 9, "base_version": 4, "upsert": [user("u-2", "200")]}),
        json!({"version": 6, "base_version": 5, "upsert": [user("u-2", "tel:+1 212 555 0100")]}),
        json!({"version": 6, "base_version": 5, "remove": ["u-404"]}),
    ];
    for d in refused {
        assert!(check_delta_on(bytes(&d), signers.clone(), &st, &base).is_err());
    }
    // u-1001's extension moves to u-2 when u-1001 is removed.
    let d = json!({"version": 6, "base_version": 5,
                   "upsert": [user("u-2", "tel:+1 212 555 0100")], "remove": ["u-1001"]});
    let (c, snap) = check_delta_on(bytes(&d), signers.clone(), &st, &base)
        .unwrap()
        .unwrap();
    let ch = c.delta.as_ref().unwrap().changes;
    assert_eq!((ch.added, ch.changed, ch.removed), (1, 0, 1));
    assert_eq!(snap.lookup("+12125550100").unwrap().id, "u-2");
    assert!(snap.lookup("sip:ann@corp.example").is_none());
    assert_eq!(base.lookup("+12125550100").unwrap().id, "u-1001");
    st.commit(&Accepted::Config(c)).unwrap();
    assert_eq!(snap.source(), st.current_source().as_deref());
    // A second delta on the overlaid snapshot.
    let d = json!({"version": 7, "base_version": 6, "upsert": [user("u-1001", "TRD-9")]});
    let (c, snap) = check_delta_on(bytes(&d), signers, &st, &snap)
        .unwrap()
        .unwrap();
    st.commit(&Accepted::Config(c)).unwrap();
    drop(st);

    // Restart: the base file plus the two delta files is the model in force,
    // the same as compiling current.json and the chain.
    let st = BundleState::load(dir.path()).unwrap();
    let again = overlay_in_force(&st, Snapshot::open(&base_file).unwrap())
        .unwrap()
        .unwrap();
    let full = compiled(dir.path());
    assert_eq!(again.source(), full.source());
    assert_eq!(
        (again.version(), again.user_count()),
        (7, full.user_count())
    );
    for ext in ["+12125550100", "sip:ann@corp.example", "TRD-9", "200"] {
        assert_eq!(again.lookup(ext), full.lookup(ext), "{ext}");
        assert_eq!(snap.lookup(ext), full.lookup(ext), "{ext}");
    }
    // A snapshot of another model is not overlaid (it is compiled again).
    let other = Snapshot::from_model(&exportd::policy::model::Model::default()).unwrap();
    assert!(overlay_in_force(&st, other).unwrap().is_none());
}
