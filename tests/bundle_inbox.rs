//! The inbox: name order, accepted/ and rejected/ with reason files,
//! skipped temporary names, no overwriting.

#[path = "bundle_util.rs"]
mod util;

use std::fs;

use exportd::bundle::inbox::{inbox_dir, process_inbox};
use exportd::bundle::{Accepted, BundleError, BundleState};
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
