//! Runs every C2SP age test vector (CCTV `age/testdata`) through `exportd::age`.
//!
//! Vectors live outside the repository, in `$CARGO_MANIFEST_DIR/../shared/vectors/cctv-age/`
//! (override with `EXPORTD_AGE_VECTORS`). Without them the test fails under
//! `CI=true` and is skipped, with a message, otherwise.
//!
//! Vectors needing a feature we do not implement (ASCII armor, passphrases,
//! post-quantum identities) are listed as UNSUPPORTED, except those that must
//! fail as a `header failure`, which strict parsing must reject anyway.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use exportd::age::{AgeError, Decryptor, Identity, KeyStore};
use sha2::{Digest, Sha256};

/// What a vector expects, and what we observed.
#[derive(Debug, PartialEq, Eq, Clone)]
enum Outcome {
    Success,
    NoMatch,
    HmacFailure,
    HeaderFailure,
    PayloadFailure,
    ArmorFailure,
    /// Any other error (Unsupported, Key, Io): never expected.
    Other(String),
}

struct Vector {
    name: String,
    expect: Outcome,
    payload: Option<String>,
    identities: Vec<String>,
    passphrase: bool,
    armored: bool,
    compressed: bool,
    unknown_keys: Vec<String>,
    body: Vec<u8>,
}

fn vectors_dir() -> PathBuf {
    match std::env::var_os("EXPORTD_AGE_VECTORS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors/cctv-age"),
    }
}

fn parse_vector(name: &str, raw: &[u8]) -> Result<Vector, String> {
    let split = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or("no empty line after the textual header")?;
    let text = std::str::from_utf8(&raw[..split]).map_err(|e| e.to_string())?;
    let mut v = Vector {
        name: name.to_string(),
        expect: Outcome::Other("missing expect".into()),
        payload: None,
        identities: Vec::new(),
        passphrase: false,
        armored: false,
        compressed: false,
        unknown_keys: Vec::new(),
        body: raw[split + 2..].to_vec(),
    };
    for line in text.lines() {
        let (k, val) = line
            .split_once(": ")
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        match k {
            "expect" => {
                v.expect = match val {
                    "success" => Outcome::Success,
                    "no match" => Outcome::NoMatch,
                    "HMAC failure" => Outcome::HmacFailure,
                    "header failure" => Outcome::HeaderFailure,
                    "payload failure" => Outcome::PayloadFailure,
                    "armor failure" => Outcome::ArmorFailure,
                    other => return Err(format!("unknown expect {other:?}")),
                }
            }
            "payload" => v.payload = Some(val.to_string()),
            "identity" => v.identities.push(val.to_string()),
            "passphrase" => v.passphrase = true,
            "armored" => v.armored = val == "yes",
            "compressed" => match val {
                "zlib" => v.compressed = true,
                other => return Err(format!("unknown compression {other:?}")),
            },
            "file key" | "comment" => {}
            other => v.unknown_keys.push(other.to_string()),
        }
    }
    if v.compressed {
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(&v.body[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("zlib: {e}"))?;
        v.body = out;
    }
    Ok(v)
}

fn classify(e: &AgeError) -> Outcome {
    match e {
        AgeError::Header(_) => Outcome::HeaderFailure,
        AgeError::NoMatch => Outcome::NoMatch,
        AgeError::HeaderMac => Outcome::HmacFailure,
        AgeError::Payload(_) => Outcome::PayloadFailure,
        other => Outcome::Other(other.to_string()),
    }
}

/// Decrypts; returns the outcome, the SHA-256 of all plaintext released and
/// the error message, if any.
fn run(body: &[u8], keys: &KeyStore) -> (Outcome, String, String) {
    let mut hasher = Sha256::new();
    let mut d = match Decryptor::new(body, keys) {
        Ok(d) => d,
        Err(e) => return (classify(&e), hex::encode(hasher.finalize()), e.to_string()),
    };
    let mut message = String::new();
    let mut buf = vec![0u8; 50_000];
    let outcome = loop {
        match d.read(&mut buf) {
            Ok(0) => {
                // EOF must be stable.
                match d.read(&mut buf) {
                    Ok(0) => break Outcome::Success,
                    other => break Outcome::Other(format!("read after EOF gave {other:?}")),
                }
            }
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) => {
                message = e.to_string();
                break match (
                    e.kind(),
                    e.get_ref().and_then(|i| i.downcast_ref::<AgeError>()),
                ) {
                    (io::ErrorKind::InvalidData, Some(inner)) => classify(inner),
                    _ => Outcome::Other(format!("non-age read error: {e}")),
                };
            }
        }
    };
    (outcome, hex::encode(hasher.finalize()), message)
}

/// Why a vector cannot be checked, or None if it can.
fn unsupported_reason(v: &Vector, parsed_ids: usize) -> Option<String> {
    if !v.unknown_keys.is_empty() {
        return Some(format!("unknown vector keys {:?}", v.unknown_keys));
    }
    if v.armored {
        return Some("ASCII armor".into());
    }
    if v.expect == Outcome::HeaderFailure {
        // Strict parsing must reject it whatever the identities.
        return None;
    }
    if parsed_ids < v.identities.len() {
        return Some("post-quantum hybrid identity (ML-KEM)".into());
    }
    if v.identities.is_empty() && v.passphrase {
        return Some("scrypt passphrase".into());
    }
    None
}

#[test]
fn c2sp_age_vectors() {
    let dir = vectors_dir();
    if !dir.is_dir() {
        let msg = format!(
            "age test vectors not found at {} (set EXPORTD_AGE_VECTORS)",
            dir.display()
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}; they are required under CI=true");
        }
        eprintln!("SKIPPED c2sp_age_vectors: {msg}");
        return;
    }
    let mut names: Vec<String> = fs::read_dir(&dir)
        .expect("list vectors dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n != "README.md" && n != "LICENSE" && !n.starts_with('.'))
        .collect();
    names.sort();

    let mut passed = Vec::new();
    let mut unsupported = Vec::new();
    let mut failures = Vec::new();
    for name in &names {
        let raw = fs::read(dir.join(name)).expect("read vector");
        let v = match parse_vector(name, &raw) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{name}: cannot parse vector: {e}"));
                continue;
            }
        };
        let ids: Vec<Identity> = v
            .identities
            .iter()
            .filter_map(|s| Identity::from_bech32(s).ok())
            .collect();
        let parsed_ids = ids.len();
        let keys = KeyStore::from_identities(ids);
        let (got, hash, message) = run(&v.body, &keys);

        if let Some(reason) = unsupported_reason(&v, parsed_ids) {
            eprintln!("UNSUPPORTED {}: {reason} (expect {:?})", v.name, v.expect);
            // Whatever we do not support must still never decrypt.
            if got == Outcome::Success {
                failures.push(format!(
                    "{}: unsupported vector decrypted successfully",
                    v.name
                ));
            }
            unsupported.push(v.name.clone());
            continue;
        }

        let mut problems = Vec::new();
        if got != v.expect {
            problems.push(format!("expected {:?}, got {:?}", v.expect, got));
        }
        if matches!(v.expect, Outcome::Success | Outcome::PayloadFailure) {
            match &v.payload {
                Some(want) if *want == hash => {}
                Some(want) => {
                    problems.push(format!("released plaintext hash {hash} != expected {want}"))
                }
                None => problems.push("vector lacks a payload hash".into()),
            }
        }
        if problems.is_empty() {
            eprintln!("ok {}: {:?} {message}", v.name, v.expect);
            passed.push(v.name.clone());
        } else {
            failures.push(format!("{}: {} [{message}]", v.name, problems.join("; ")));
        }
    }

    eprintln!(
        "age vectors: {} checked and passed, {} failed, {} unsupported (of {})",
        passed.len(),
        failures.len(),
        unsupported.len(),
        names.len()
    );
    assert!(
        failures.is_empty(),
        "failing vectors:\n{}",
        failures.join("\n")
    );
    assert!(
        passed.len() >= 90,
        "only {} vectors were checked; the suite at {} looks incomplete",
        passed.len(),
        dir.display()
    );
}
