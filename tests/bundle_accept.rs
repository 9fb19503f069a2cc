//! The acceptance path: persisted version across restarts, granting and
//! revoking admins, export requests, the operator functions, and a model
//! test of the version rule against the in-memory store.

#[path = "bundle_util.rs"]
mod util;

use std::os::unix::fs::PermissionsExt;

use exportd::bundle::ops::{cosign_file, keygen, load_signing_key, sign_file, verify_file};
use exportd::bundle::state::MemStore;
use exportd::bundle::trust::SigStatus;
use exportd::bundle::{Accepted, BundleError, BundleState, Role, apply_envelope};
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

    let trust_entry = exportd::model::Admin {
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
