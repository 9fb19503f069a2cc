//! Encrypted recordings through the real agent: decrypt on and off, a record
//! waiting for its key (exported as soon as the identity is added, no
//! restart), and tampered ciphertext never leaving plaintext under a final name.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use exportd::age::{Encryptor, Identity};

fn encrypt(data: &[u8], to: &Identity) -> Vec<u8> {
    let mut e = Encryptor::new(Vec::new(), &[to.recipient()]).unwrap();
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn write_key(dir: &Path, name: &str, id: &Identity) {
    let p = dir.join(name);
    fs::write(
        &p,
        format!("# test identity\n{}\n", id.to_bech32().as_str()),
    )
    .unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
}

fn config(a: &Appliance, decrypt: bool) -> String {
    let mut c = a.head(1);
    c.push_str(&format!(
        "[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\nsettings = {{ decrypt = {decrypt} }}\n\n"
    ));
    c.push_str(&user("u-1", &["100"], &["p"]));
    c
}

/// A record whose media (3 chunks + 1 byte) and metadata are both encrypted.
fn write_encrypted(dir: &Path, id: &str, key: &Identity, media: &[u8]) -> Rec {
    fs::create_dir_all(dir).unwrap();
    let mut r = Rec::voice(id, "100");
    r.files = vec![("media".into(), format!("{id}.wav.age"), Vec::new())];
    fs::write(dir.join(format!("{id}.wav.age")), encrypt(media, key)).unwrap();
    fs::write(
        dir.join(format!("{id}.xml.age")),
        encrypt(r.xml().as_bytes(), key),
    )
    .unwrap();
    r
}

fn media() -> Vec<u8> {
    (0..(3 * 65536 + 1)).map(|i| (i % 251) as u8).collect()
}

#[test]
fn decrypt_on_exports_plaintext_and_originals_stay_encrypted() {
    let a = Appliance::new(1);
    let key = Identity::generate();
    write_key(&a.keys, "recorder.key", &key);
    a.write_config(&config(&a, true));
    let r = write_encrypted(&a.spool.join("d"), "e1", &key, &media());
    let before = tree_state(&a.spool);
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = a.targets[0].join("2026/11/21/u-1/e1");
    assert_eq!(fs::read(f.join("e1.wav")).unwrap(), media());
    assert_eq!(fs::read_to_string(f.join("e1.xml")).unwrap(), r.xml());
    assert_eq!(files_below(&a.targets[0]).len(), 2);
    assert_eq!(before, tree_state(&a.spool));
}

#[test]
fn decrypt_off_copies_the_bytes_as_recorded() {
    let a = Appliance::new(1);
    let key = Identity::generate();
    write_key(&a.keys, "recorder.key", &key);
    a.write_config(&config(&a, false));
    write_encrypted(&a.spool.join("d"), "e2", &key, b"secret audio");
    assert_eq!(a.run_until_idle().status.code(), Some(0));
    let f = a.targets[0].join("2026/11/21/u-1/e2");
    assert_eq!(
        fs::read(f.join("e2.wav.age")).unwrap(),
        fs::read(a.spool.join("d/e2.wav.age")).unwrap()
    );
    assert_eq!(
        fs::read(f.join("e2.xml.age")).unwrap(),
        fs::read(a.spool.join("d/e2.xml.age")).unwrap()
    );
    assert_eq!(files_below(&a.targets[0]).len(), 2);
}

#[test]
fn a_record_waits_for_its_identity_and_goes_when_it_is_added() {
    let a = Appliance::new(1);
    let key = Identity::generate();
    write_key(&a.keys, "other.key", &Identity::generate());
    a.write_config(&config(&a, true));
    write_encrypted(&a.spool.join("d"), "e3", &key, b"audio");
    let _d = a.spawn();
    wait_for(Duration::from_secs(20), || {
        a.rows_with("error").iter().any(|r| r[11] == "no_identity")
    });
    let row = a
        .rows_with("error")
        .into_iter()
        .find(|r| r[11] == "no_identity")
        .unwrap();
    assert!(row[12].contains("no identity for record"), "{row:?}");
    assert!(files_below(&a.targets[0]).is_empty());
    // A world-readable key file is refused, the record keeps waiting.
    let loose = a.keys.join("loose.key");
    fs::write(&loose, format!("{}\n", key.to_bech32().as_str())).unwrap();
    fs::set_permissions(&loose, fs::Permissions::from_mode(0o644)).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        files_below(&a.targets[0]).is_empty(),
        "a 0644 key file must be refused"
    );
    fs::remove_file(&loose).unwrap();
    // The right identity, properly protected: exported without a restart.
    write_key(&a.keys, "recorder.key", &key);
    wait_for(Duration::from_secs(20), || {
        a.targets[0].join("2026/11/21/u-1/e3/e3.xml").exists()
    });
    assert_eq!(
        fs::read(a.targets[0].join("2026/11/21/u-1/e3/e3.wav")).unwrap(),
        b"audio"
    );
}

/// `keys_dir` changed by a SIGHUP reload: the new folder is watched, so an
/// identity added to it later releases the waiting record (before, only
/// the folder the agent started with was watched).
#[test]
fn a_keys_dir_changed_by_a_reload_is_watched() {
    let a = Appliance::new(1);
    let key = Identity::generate();
    a.write_config(&config(&a, true));
    write_encrypted(&a.spool.join("d"), "e5", &key, b"audio");
    let log = a.dir.path().join("agent.log");
    let mut d = a.spawn_logged(&log);
    wait_until(
        "the record waits for its key",
        Duration::from_secs(20),
        &log,
        || a.rows_with("error").iter().any(|r| r[11] == "no_identity"),
    );
    let moved = a.dir.path().join("keys2");
    fs::create_dir(&moved).unwrap();
    fs::set_permissions(&moved, fs::Permissions::from_mode(0o700)).unwrap();
    let old = format!("keys_dir = \"{}\"", a.keys.display());
    let body = config(&a, true);
    assert!(body.contains(&old));
    a.write_config(&body.replace(&old, &format!("keys_dir = \"{}\"", moved.display())));
    d.signal("HUP");
    wait_until("the reload", Duration::from_secs(20), &log, || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("SIGHUP: reloading")
    });
    write_key(&moved, "recorder.key", &key);
    wait_until("the record exported", Duration::from_secs(20), &log, || {
        a.targets[0].join("2026/11/21/u-1/e5/e5.xml").exists()
    });
    assert_eq!(
        fs::read(a.targets[0].join("2026/11/21/u-1/e5/e5.wav")).unwrap(),
        b"audio"
    );
    let (code, _) = d.stop();
    assert_eq!(code, 0);
}

#[test]
fn tampered_ciphertext_never_leaves_plaintext_under_a_final_name() {
    let a = Appliance::new(1);
    let key = Identity::generate();
    write_key(&a.keys, "recorder.key", &key);
    a.write_config(&config(&a, true));
    let m = media();
    // flipped byte in the third chunk
    let d = a.spool.join("d");
    write_encrypted(&d, "flip", &key, &m);
    let p = d.join("flip.wav.age");
    let mut b = fs::read(&p).unwrap();
    let n = b.len();
    b[n - 100] ^= 0x01;
    fs::write(&p, b).unwrap();
    // truncated: the final chunk is missing
    write_encrypted(&d, "trunc", &key, &m);
    let p = d.join("trunc.wav.age");
    let b = fs::read(&p).unwrap();
    fs::write(&p, &b[..b.len() - 20]).unwrap();
    let out = a.run_until_idle();
    assert_eq!(out.status.code(), Some(1));
    let files = files_below(&a.targets[0]);
    assert!(
        files
            .iter()
            .all(|f| !f.ends_with(".wav") && !f.ends_with(".xml")),
        "no final name for a failed decryption: {files:?}"
    );
    assert!(
        files.iter().all(|f| !f.contains("exportd-tmp")),
        "temp files are removed: {files:?}"
    );
    let errs = a.rows_with("error");
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs.iter().all(|r| r[11] == "source_failed"), "{errs:?}");
}

#[test]
fn simulate_encrypt_to_round_trips_through_the_agent() {
    let a = Appliance::new(1);
    let key = Identity::generate();
    write_key(&a.keys, "recorder.key", &key);
    let out = std::process::Command::new(exe())
        .args([
            "simulate", "--quiet", "--count", "40", "--users", "5", "--spool",
        ])
        .arg(&a.spool)
        .args(["--encrypt-to", &key.recipient().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg =
        exportd::simulate::config_toml("it", &a.spool, &a.state, &a.keys, &a.targets[0], 5, true);
    a.write_config(&cfg);
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = files_below(&a.targets[0]);
    assert!(!files.is_empty());
    assert!(
        files.iter().all(|f| !f.ends_with(".age")),
        "all decrypted: {files:?}"
    );
    assert!(
        files.iter().any(|f| f.ends_with(".messages.json")),
        "IM records get messages.json: {files:?}"
    );
}
