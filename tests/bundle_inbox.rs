//! The inbox: name order, accepted/ and rejected/ with reason files,
//! skipped temporary names, no overwriting.

#[path = "bundle_util.rs"]
mod util;

use std::fs;

use exportd::control::bundle::inbox::{inbox_dir, process_inbox};
use exportd::control::bundle::{Accepted, BundleError, BundleState};
use util::*;

#[test]
fn files_processed_in_name_order_and_moved() {
    let dir = TempDir::new("inbox");
    let inbox = inbox_dir(dir.path());
    fs::create_dir_all(&inbox).unwrap();
    let central = central();
    let w = |name: &str, body: &[u8]| fs::write(inbox.join(name), body).unwrap();
    // Written out of order: a.json (v1) must be taken before b.json (v2),
    // or b would put v2 in force and a would be a rollback.
    w(
        "b.json",
        sign_config(&model_json(2), &[("central", &central)])
            .to_json_pretty()
            .as_bytes(),
    );
    w(
        "a.json",
        sign_config(&model_json(1), &[("central", &central)])
            .to_json_pretty()
            .as_bytes(),
    );
    w("c.json", b"this is not a bundle");
    w(
        "d.json",
        sign_config(&model_json(2), &[("central", &central)])
            .to_json_pretty()
            .as_bytes(),
    );
    w(
        "e-req.json",
        sign_request("r-7", &[("central", &central)])
            .to_json_pretty()
            .as_bytes(),
    );
    w(".partial", b"in transit");
    w("f.json.tmp", b"in transit");
    // A name already taken in rejected/ is not overwritten.
    fs::create_dir_all(inbox.join("rejected")).unwrap();
    fs::write(inbox.join("rejected/c.json"), b"older").unwrap();

    let mut st = BundleState::load(dir.path()).unwrap();
    let out = process_inbox(dir.path(), &anchors(), &mut st).unwrap();
    let names: Vec<&str> = out.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        ["a.json", "b.json", "c.json", "d.json", "e-req.json"]
    );
    assert!(out.iter().all(|o| o.move_error.is_none()));

    assert!(matches!(&out[0].result, Ok(Accepted::Config(c)) if c.version == 1));
    assert!(matches!(&out[1].result, Ok(Accepted::Config(c)) if c.version == 2));
    assert!(matches!(&out[2].result, Err(BundleError::Malformed { .. })));
    assert!(matches!(
        &out[3].result,
        Err(BundleError::Replay { version: 2 })
    ));
    assert!(matches!(&out[4].result, Ok(Accepted::ExportRequest(r)) if r.request_id == "r-7"));
    assert_eq!(st.version(), 2);
    assert_eq!(BundleState::load(dir.path()).unwrap().version(), 2);

    // Where the files went.
    assert_eq!(out[0].file, inbox.join("accepted/a.json"));
    assert_eq!(out[2].file, inbox.join("rejected/c.json.1"));
    assert_eq!(out[3].file, inbox.join("rejected/d.json"));
    for f in [
        "accepted/a.json",
        "accepted/b.json",
        "accepted/e-req.json",
        "rejected/d.json",
    ] {
        assert!(inbox.join(f).is_file(), "{f}");
    }
    assert_eq!(fs::read(inbox.join("rejected/c.json")).unwrap(), b"older");
    assert_eq!(
        fs::read(inbox.join("rejected/c.json.1")).unwrap(),
        b"this is not a bundle"
    );
    let reason = fs::read_to_string(inbox.join("rejected/c.json.1.reason")).unwrap();
    assert!(reason.starts_with("malformed bundle"), "{reason}");
    assert_eq!(reason.lines().count(), 1);
    let reason = fs::read_to_string(inbox.join("rejected/d.json.reason")).unwrap();
    assert!(reason.contains("version 2 is already in force"), "{reason}");
    assert!(!inbox.join("accepted/a.json.reason").exists());

    // Skipped names stay; nothing else is left in the inbox.
    let mut left: Vec<String> = fs::read_dir(&inbox)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, [".partial", "accepted", "f.json.tmp", "rejected"]);

    // A second run has nothing to do.
    assert!(
        process_inbox(dir.path(), &anchors(), &mut st)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn missing_inbox_is_created_and_empty() {
    let dir = TempDir::new("inbox");
    let mut st = BundleState::load(dir.path()).unwrap();
    assert!(
        process_inbox(dir.path(), &anchors(), &mut st)
            .unwrap()
            .is_empty()
    );
    assert!(inbox_dir(dir.path()).join("accepted").is_dir());
    assert!(inbox_dir(dir.path()).join("rejected").is_dir());
}

#[test]
fn symlinks_are_rejected_not_followed() {
    let dir = TempDir::new("inbox");
    let inbox = inbox_dir(dir.path());
    fs::create_dir_all(&inbox).unwrap();
    let target = dir.path().join("elsewhere.json");
    fs::write(
        &target,
        sign_config(&model_json(1), &[("central", &central())]).to_json_pretty(),
    )
    .unwrap();
    std::os::unix::fs::symlink(&target, inbox.join("link.json")).unwrap();
    let mut st = BundleState::load(dir.path()).unwrap();
    let out = process_inbox(dir.path(), &anchors(), &mut st).unwrap();
    assert_eq!(out.len(), 1);
    assert!(matches!(out[0].result, Err(BundleError::Malformed { .. })));
    assert_eq!(st.version(), 0);
    assert!(inbox.join("rejected/link.json.reason").is_file());
    assert!(target.is_file());
}

/// Peak RSS of this process (VmHWM), KiB.
fn vm_hwm_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A 1,000,000-user bundle (~170 MiB payload, ~230 MiB envelope), generated
/// here, signed with `bundle sign`'s streaming signer and taken from the
/// inbox: spooled, verified and compiled without holding it in memory.
/// Long (tens of seconds in release): run it with
/// `cargo test --release --test bundle_inbox -- --ignored million --nocapture`.
#[test]
#[ignore]
fn a_million_user_bundle_is_taken_in_bounded_memory() {
    use base64::Engine;
    use std::io::Write;
    use std::time::Instant;
    let n: u64 = std::env::var("EXPORTD_MILLION")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = TempDir::new("million");
    let payload = dir.path().join("payload.json");
    {
        let mut w = std::io::BufWriter::new(fs::File::create(&payload).unwrap());
        write!(
            w,
            r#"{{"version": 1, "targets": [{{"id": "nas1", "kind": "fs", "path": "/mnt/archive"}}],
               "policies": [{{"id": "p", "targets": ["nas1"]}}], "users": ["#
        )
        .unwrap();
        for i in 0..n {
            let sep = if i == 0 { "" } else { "," };
            write!(
                w,
                r#"{sep}{{"id":"u-{i}","name":"Trader {i}","email":"t{i}@corp.example","extensions":["+1917{i:07}","sip:t{i}@corp.example","TRD-{i}"],"policies":["p"]}}"#
            )
            .unwrap();
        }
        write!(w, "]}}").unwrap();
    }
    let base = vm_hwm_kib();
    let key = dir.path().join("central.key");
    fs::write(
        &key,
        format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode([1u8; 32])
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let inbox = inbox_dir(dir.path());
    fs::create_dir_all(&inbox).unwrap();
    let t = Instant::now();
    {
        let mut out = std::io::BufWriter::new(fs::File::create(inbox.join(".big.tmp")).unwrap());
        exportd::control::bundle::sign::sign_file_to(
            &key,
            Some("central"),
            "config",
            &payload,
            &mut out,
        )
        .unwrap();
    }
    fs::rename(inbox.join(".big.tmp"), inbox.join("big.json")).unwrap();
    let signed = t.elapsed();
    let mut st = BundleState::load(dir.path()).unwrap();
    let t = Instant::now();
    let out = exportd::control::bundle::inbox::process_inbox_max(
        dir.path(),
        &anchors(),
        &mut st,
        512 << 20,
        &mut |_| Ok(()),
    )
    .unwrap();
    let applied = t.elapsed();
    let Ok(Accepted::Config(c)) = &out[0].result else {
        panic!("{:?}", out[0].result)
    };
    let compiled = c.compiled.as_ref().unwrap();
    assert_eq!((compiled.users, compiled.extensions), (n, 3 * n));
    let snap = exportd::policy::snapshot::Snapshot::open(compiled.snapshot.path()).unwrap();
    assert_eq!(snap.lookup("tel:+1 917 000 0042").unwrap().id, "u-42");
    assert_eq!(st.version(), 1);
    let hwm = vm_hwm_kib();
    println!(
        "{n} users: envelope {} MiB, signed (streamed) in {:.1} s, spooled+verified+compiled in {:.1} s, \
         VmHWM {} KiB (before signing {base} KiB)",
        fs::metadata(inbox.join("accepted/big.json")).unwrap().len() >> 20,
        signed.as_secs_f64(),
        applied.as_secs_f64(),
        hwm
    );
    assert!(
        hwm < base + 32 * 1024,
        "memory must not grow with the users: VmHWM {hwm} KiB, {base} KiB before"
    );
}

#[test]
fn an_inbox_bundle_is_validated_while_it_is_compiled() {
    // The spooled path finds what the in-memory one does: an extension
    // assigned twice (after normalisation) and an unknown policy, every
    // problem listed; nothing is committed and no spool file is left.
    let dir = TempDir::new("inbox-invalid");
    let inbox = inbox_dir(dir.path());
    fs::create_dir_all(&inbox).unwrap();
    let mut m = model_json(3);
    m["users"] = serde_json::json!([
        {"id": "u-1", "extensions": ["+1 212 555 0100"], "policies": ["p-voice"]},
        {"id": "u-2", "extensions": ["tel:+12125550100"], "policies": ["p-voice", "nope"]}
    ]);
    fs::write(
        inbox.join("a.json"),
        sign_config(&m, &[("central", &central())]).to_json_pretty(),
    )
    .unwrap();
    let mut st = BundleState::load(dir.path()).unwrap();
    let out = process_inbox(dir.path(), &anchors(), &mut st).unwrap();
    let e = out[0].result.as_ref().unwrap_err();
    assert!(matches!(e, BundleError::Validation { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("assigned to both \"u-1\" and \"u-2\""),
        "{msg}"
    );
    assert!(msg.contains("unknown policy \"nope\""), "{msg}");
    assert_eq!(st.version(), 0);
    let left: Vec<String> = fs::read_dir(dir.path().join("bundle"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let stray: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".snapshot-") || n.starts_with(".intake-"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}
