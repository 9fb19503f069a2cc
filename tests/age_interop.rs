//! Interoperability of `exportd::age` with the reference `age` CLI (Debian
//! package `age`: binaries `age` and `age-keygen`).
//!
//! Without those binaries on PATH the tests fail under `CI=true` and are
//! skipped, with a message, otherwise.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use exportd::age::{AgeError, Decryptor, Encryptor, Identity, KeyStore, Recipient};

const CHUNK: usize = 64 * 1024;
const ENC_CHUNK: usize = CHUNK + 16;

/// Whether the age CLI can be used; panics under CI=true when it cannot.
fn age_cli_available(test: &str) -> bool {
    if std::env::var("EXPORTD_LANE").is_ok_and(|l| l.starts_with("qemu")) {
        eprintln!(
            "SKIPPED {test}: EXPORTD_LANE: no age CLI for the board's architecture in the lane"
        );
        return false;
    }
    let ok = |bin: &str, arg: &str| {
        Command::new(bin)
            .arg(arg)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if ok("age", "--version") && ok("age-keygen", "--version") {
        return true;
    }
    let msg =
        "the age CLI (age, age-keygen) is not on PATH; install it with `apt-get install -y age`";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {msg}; it is required under CI=true");
    }
    eprintln!("SKIPPED {test}: {msg}");
    false
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "exportd-age-interop-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs age-keygen into `path` (chmod 600) and returns the recipient.
fn keygen(path: &Path) -> Recipient {
    run(Command::new("age-keygen").arg("-o").arg(path));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    let public = run(Command::new("age-keygen").arg("-y").arg(path));
    Recipient::from_bech32(String::from_utf8(public).unwrap().trim()).expect("age-keygen -y output")
}

fn plaintext(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Decrypts everything; returns the plaintext released and the error, if any.
fn drain<R: Read>(mut d: Decryptor<R>) -> (Vec<u8>, Option<io::Error>) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 100_000];
    loop {
        match d.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Some(e)),
        }
    }
}

fn assert_payload_error(e: Option<io::Error>) {
    let e = e.expect("an error was expected");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<AgeError>());
    assert!(matches!(inner, Some(AgeError::Payload(_))), "{e}");
}

/// Offset of the first payload chunk (after the header and the 16-byte nonce).
fn chunks_start(ct: &[u8]) -> usize {
    let mac = ct
        .windows(5)
        .position(|w| w == b"\n--- ")
        .expect("MAC line")
        + 1;
    let nl = ct[mac..].iter().position(|&b| b == b'\n').unwrap();
    mac + nl + 1 + 16
}

fn store_from(path: &Path) -> KeyStore {
    let dir = path.parent().unwrap();
    let (store, errors) = KeyStore::load_dir(dir);
    assert!(errors.is_empty(), "{errors:?}");
    store
}

const SIZES: &[usize] = &[
    0,
    1,
    CHUNK - 1,
    CHUNK,
    CHUNK + 1,
    2 * CHUNK,
    3 * 1024 * 1024 + 123,
];

#[test]
fn age_cli_output_decrypts_byte_identical() {
    if !age_cli_available("age_cli_output_decrypts_byte_identical") {
        return;
    }
    let s = Scratch::new("decrypt");
    fs::create_dir(s.path("keys")).unwrap();
    let key = s.path("keys/recorder.key");
    let recipient = keygen(&key);
    let keys = store_from(&key);
    assert_eq!(keys.len(), 1);
    for (i, &len) in SIZES.iter().enumerate() {
        let data = plaintext(len, i as u8);
        fs::write(s.path("pt"), &data).unwrap();
        run(Command::new("age")
            .arg("-r")
            .arg(recipient.to_string())
            .arg("-o")
            .arg(s.path("ct"))
            .arg(s.path("pt")));
        let file = fs::File::open(s.path("ct")).unwrap();
        let (out, err) = drain(Decryptor::new(file, &keys).expect("header"));
        assert!(err.is_none(), "len {len}: {err:?}");
        assert!(out == data, "len {len}: plaintext differs");
    }
    // Several recipients, ours second.
    let other = Identity::generate().recipient();
    let data = plaintext(200_000, 99);
    fs::write(s.path("pt"), &data).unwrap();
    run(Command::new("age")
        .args(["-r", &other.to_string(), "-r", &recipient.to_string(), "-o"])
        .arg(s.path("ct"))
        .arg(s.path("pt")));
    let (out, err) = drain(Decryptor::new(fs::File::open(s.path("ct")).unwrap(), &keys).unwrap());
    assert!(err.is_none());
    assert!(out == data);
}

#[test]
fn our_output_decrypts_with_age_cli() {
    if !age_cli_available("our_output_decrypts_with_age_cli") {
        return;
    }
    let s = Scratch::new("encrypt");
    let key = s.path("recorder.key");
    let recipient = keygen(&key);
    let extra = Identity::generate().recipient();
    for (i, &len) in SIZES.iter().enumerate() {
        let data = plaintext(len, 50 + i as u8);
        let file = fs::File::create(s.path("ct")).unwrap();
        let mut enc = Encryptor::new(file, &[extra, recipient]).unwrap();
        // Uneven writes, to cross chunk boundaries mid-write.
        for part in data.chunks(10_007) {
            enc.write_all(part).unwrap();
        }
        enc.finish().unwrap().sync_all().unwrap();
        // To stdout: `age -o` creates no file for an empty plaintext.
        let out = run(Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(&key)
            .arg(s.path("ct")));
        assert!(out == data, "len {len}");
    }
}

#[test]
fn keygen_files_load_and_open_ones_are_refused() {
    if !age_cli_available("keygen_files_load_and_open_ones_are_refused") {
        return;
    }
    let s = Scratch::new("keys");
    let r1 = keygen(&s.path("a.key"));
    let r2 = keygen(&s.path("b.key"));
    // A file with two identities and comments, as `cat a b > c` would make.
    let both = [
        fs::read(s.path("a.key")).unwrap(),
        fs::read(s.path("b.key")).unwrap(),
    ]
    .concat();
    fs::write(s.path("c.key"), both).unwrap();
    fs::set_permissions(s.path("c.key"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(s.path("b.key"), fs::Permissions::from_mode(0o644)).unwrap();

    let (store, errors) = KeyStore::load_dir(&s.0);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, s.path("b.key"));
    let msg = errors[0].to_string();
    assert_eq!(
        msg,
        format!(
            "refusing key file {}: mode 0644 is readable by group or others; chmod 600 it",
            s.path("b.key").display()
        )
    );
    // b's identity still arrives through c.key; duplicates are merged.
    assert_eq!(store.len(), 2);
    let fp = store.fingerprint();

    // Both recipients decrypt.
    for r in [r1, r2] {
        let mut enc = Encryptor::new(Vec::new(), &[r]).unwrap();
        enc.write_all(b"meta").unwrap();
        let ct = enc.finish().unwrap();
        let (out, err) = drain(Decryptor::new(&ct[..], &store).unwrap());
        assert!(err.is_none());
        assert_eq!(out, b"meta");
    }

    // Removing c.key loses b's identity; fixing b.key's mode brings it back.
    fs::remove_file(s.path("c.key")).unwrap();
    let (only_a, errors) = KeyStore::load_dir(&s.0);
    assert_eq!((only_a.len(), errors.len()), (1, 1));
    assert_ne!(only_a.fingerprint(), fp);
    fs::set_permissions(s.path("b.key"), fs::Permissions::from_mode(0o600)).unwrap();
    let (fixed, errors) = KeyStore::load_dir(&s.0);
    assert!(errors.is_empty());
    assert_eq!(fixed.fingerprint(), fp);
}

#[test]
fn tampered_age_cli_files_fail_cleanly() {
    if !age_cli_available("tampered_age_cli_files_fail_cleanly") {
        return;
    }
    let s = Scratch::new("tamper");
    let key = s.path("keys/recorder.key");
    fs::create_dir(s.path("keys")).unwrap();
    let recipient = keygen(&key);
    let keys = store_from(&key);
    // Three full chunks and a short final one.
    let data = plaintext(3 * CHUNK + 100, 7);
    fs::write(s.path("pt"), &data).unwrap();
    run(Command::new("age")
        .arg("-r")
        .arg(recipient.to_string())
        .arg("-o")
        .arg(s.path("ct"))
        .arg(s.path("pt")));
    let ct = fs::read(s.path("ct")).unwrap();
    let start = chunks_start(&ct);
    assert_eq!(ct.len(), start + 3 * ENC_CHUNK + 100 + 16);

    // Flipped byte in the second chunk: only the first chunk is released.
    let mut bad = ct.clone();
    bad[start + ENC_CHUNK + 1234] ^= 0x40;
    let (out, err) = drain(Decryptor::new(&bad[..], &keys).unwrap());
    assert_payload_error(err);
    assert!(out == data[..CHUNK], "released {} bytes", out.len());

    // Flipped byte in a tag of the final chunk.
    let mut bad = ct.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let (out, err) = drain(Decryptor::new(&bad[..], &keys).unwrap());
    assert_payload_error(err);
    assert!(out == data[..3 * CHUNK]);

    // Truncated in the middle of the second chunk.
    let (out, err) = drain(Decryptor::new(&ct[..start + ENC_CHUNK + 5000], &keys).unwrap());
    assert_payload_error(err);
    assert!(out == data[..CHUNK]);

    // Missing final chunk: three authentic non-final chunks, then EOF.
    let (out, err) = drain(Decryptor::new(&ct[..start + 3 * ENC_CHUNK], &keys).unwrap());
    assert_payload_error(err);
    assert!(out == data[..3 * CHUNK]);

    // Trailing garbage after an authentic final chunk.
    let mut long = ct.clone();
    long.extend_from_slice(b"garbage");
    let (out, err) = drain(Decryptor::new(&long[..], &keys).unwrap());
    assert_payload_error(err);
    assert!(out.len() <= data.len() && out == data[..out.len()]);

    // Truncated inside the header, or right after it.
    assert!(matches!(
        Decryptor::new(&ct[..40], &keys),
        Err(AgeError::Header(_))
    ));
    assert!(matches!(
        Decryptor::new(&ct[..start - 4], &keys),
        Err(AgeError::Header(_))
    ));

    // Wrong key.
    let wrong = KeyStore::from_identities(vec![Identity::generate()]);
    assert!(matches!(
        Decryptor::new(&ct[..], &wrong),
        Err(AgeError::NoMatch)
    ));

    // A modified header MAC.
    let mut bad = ct.clone();
    let mac = ct.windows(4).position(|w| w == b"--- ").unwrap() + 4;
    bad[mac] = if bad[mac] == b'A' { b'B' } else { b'A' };
    assert!(matches!(
        Decryptor::new(&bad[..], &keys),
        Err(AgeError::HeaderMac)
    ));

    // The CLI agrees that our tampered files are bad (sanity check of the tampering).
    fs::write(s.path("bad"), &ct[..start + 3 * ENC_CHUNK]).unwrap();
    let status = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&key)
        .arg("-o")
        .arg(s.path("out"))
        .arg(s.path("bad"))
        .output()
        .unwrap()
        .status;
    assert!(!status.success());
}

/// Throughput against `age -d` on a 256 MiB file. Not a correctness test:
/// run it in release mode with
/// `cargo test --release --test age_interop -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark; run explicitly in release mode"]
fn throughput_vs_age_cli() {
    if !age_cli_available("throughput_vs_age_cli") {
        return;
    }
    use std::time::Instant;
    let s = Scratch::new("bench");
    let key = s.path("keys/recorder.key");
    fs::create_dir(s.path("keys")).unwrap();
    let recipient = keygen(&key);
    let keys = store_from(&key);
    let data = plaintext(256 * 1024 * 1024, 3);
    fs::write(s.path("pt"), &data).unwrap();
    drop(data);
    run(Command::new("age")
        .arg("-r")
        .arg(recipient.to_string())
        .arg("-o")
        .arg(s.path("ct"))
        .arg(s.path("pt")));
    let mib = 256.0;
    for round in 0..2 {
        let t = Instant::now();
        let status = Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(&key)
            .arg("-o")
            .arg("/dev/null")
            .arg(s.path("ct"))
            .status()
            .unwrap();
        assert!(status.success());
        let age_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let file = fs::File::open(s.path("ct")).unwrap();
        let mut d = Decryptor::new(file, &keys).unwrap();
        let n = io::copy(&mut d, &mut io::sink()).unwrap();
        let ours_s = t.elapsed().as_secs_f64();
        assert_eq!(n, 256 * 1024 * 1024);
        eprintln!(
            "round {round}: age -d {:.0} MiB/s ({age_s:.2}s), exportd Decryptor {:.0} MiB/s ({ours_s:.2}s)",
            mib / age_s,
            mib / ours_s
        );
    }
}
