//! The S3 target against moto's S3 server (started by the test through
//! `tests/support/moto_launcher.py`, which patches moto's gaps against AWS;
//! see that file and shared/notes/moto.md). Skipped with a printed reason when
//! Python/moto is missing (a failure under `CI=true`) or under
//! `EXPORTD_LANE=qemu`.

#[path = "support/s3_moto.rs"]
mod support;

use std::io::{self, Read};
use std::sync::MutexGuard;
use std::time::Duration;

use exportd::policy::model::LockMode;
use exportd::sink::s3::{RetryPolicy, S3Options, S3Target};
use exportd::sink::{BytesSource, PutRequest, Source, Target, TargetError};
use serde_json::json;
use sha2::Digest as _;
use support::{Moto, bytes, sha256_hex};

fn moto() -> Option<MutexGuard<'static, Moto>> {
    support::shared().map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
}

fn quick() -> S3Options {
    S3Options {
        retry: RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(100),
            max_total: Duration::from_secs(5),
        },
        ..S3Options::default()
    }
}

fn req<'a>(folder: &'a str, name: &'a str) -> PutRequest<'a> {
    PutRequest {
        folder,
        name,
        want_sha512: false,
    }
}

#[test]
fn locked_put_roundtrip_retention_and_delete_refused() {
    let Some(mut m) = moto() else { return };
    m.bucket("locked-a", true);
    let t =
        S3Target::with_options(&m.spec("locked-a", Some(LockMode::Compliance)), quick()).unwrap();
    let data = bytes(100_000, 1);
    let r = t
        .put(
            &PutRequest {
                folder: "2026/11/21/u-1/r1",
                name: "r1.wav",
                want_sha512: true,
            },
            &BytesSource(&data),
        )
        .unwrap();
    assert!(!r.already_present);
    assert_eq!(r.bytes, data.len() as u64);
    assert_eq!(hex::encode(r.sha256), sha256_hex(&data));
    assert!(r.sha512.is_some());
    let detail = r.detail.clone().unwrap();
    assert!(
        detail.contains("version_id=")
            && detail.contains("mode=COMPLIANCE")
            && detail.contains("retain_until="),
        "{detail}"
    );

    let key = "ny/2026/11/21/u-1/r1/r1.wav";
    assert_eq!(
        m.get("locked-a", key),
        (sha256_hex(&data), data.len() as u64)
    );
    let h = m.cmd(json!({"op": "head", "bucket": "locked-a", "key": key}));
    assert_eq!(h["ObjectLockMode"], "COMPLIANCE", "{h}");
    let until = h["ObjectLockRetainUntilDate"].as_str().unwrap_or_default();
    assert!(!until.is_empty(), "{h}");
    assert!(t.exists("2026/11/21/u-1/r1", "r1.wav").unwrap());
    assert!(!t.exists("2026/11/21/u-1/r1", "r1.xml").unwrap());

    let versions = m.versions("locked-a", key);
    assert_eq!(versions.len(), 1);
    let del = m.cmd(json!({"op": "delete_version", "bucket": "locked-a", "key": key, "version_id": versions[0]}));
    assert!(
        del.get("error").is_some(),
        "deleting a locked version must be refused: {del}"
    );
    assert_eq!(m.get("locked-a", key).0, sha256_hex(&data));
}

#[test]
fn zero_byte_object() {
    let Some(mut m) = moto() else { return };
    m.bucket("locked-zero", true);
    let t = S3Target::with_options(&m.spec("locked-zero", Some(LockMode::Governance)), quick())
        .unwrap();
    let r = t.put(&req("f", "empty.json"), &BytesSource(b"")).unwrap();
    assert_eq!(r.bytes, 0);
    assert!(r.detail.unwrap().contains("mode=GOVERNANCE"));
    assert_eq!(
        m.get("locked-zero", "ny/f/empty.json"),
        (sha256_hex(b""), 0)
    );
    let again = t.put(&req("f", "empty.json"), &BytesSource(b"")).unwrap();
    assert!(again.already_present);
}

/// A source with no size hint (as for decrypted files), read in odd chunks.
struct Unsized<'a>(&'a [u8]);
impl Source for Unsized<'_> {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(Chunky(self.0)))
    }
    fn len_hint(&self) -> Option<u64> {
        None
    }
}
struct Chunky<'a>(&'a [u8]);
impl Read for Chunky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.0.len()).min(7919);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn multipart_object_with_lock() {
    let Some(mut m) = moto() else { return };
    m.bucket("locked-mp", true);
    let opts = S3Options {
        multipart_threshold: 6 * 1024 * 1024,
        part_size: 5 * 1024 * 1024,
        ..quick()
    };
    let t = S3Target::with_options(&m.spec("locked-mp", Some(LockMode::Compliance)), opts).unwrap();
    let data = bytes(11 * 1024 * 1024 + 3, 2);
    let r = t.put(&req("mp", "big.wav"), &Unsized(&data)).unwrap();
    assert!(!r.already_present);
    assert!(
        r.detail.as_deref().unwrap().contains("mode=COMPLIANCE"),
        "{:?}",
        r.detail
    );
    let key = "ny/mp/big.wav";
    assert_eq!(
        m.get("locked-mp", key),
        (sha256_hex(&data), data.len() as u64)
    );
    let h = m.cmd(json!({"op": "head", "bucket": "locked-mp", "key": key}));
    assert_eq!(h["ObjectLockMode"], "COMPLIANCE", "{h}");
    // S3's composite checksum over the three parts (moto leaves out the
    // `-3` suffix AWS adds on HEAD).
    let mut parts = Vec::new();
    for p in data.chunks(5 * 1024 * 1024) {
        parts.extend_from_slice(&sha2::Sha256::digest(p));
    }
    let composite = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        sha2::Sha256::digest(&parts),
    );
    let stored = h["ChecksumSHA256"].as_str().unwrap_or_default();
    assert_eq!(stored.split('-').next(), Some(composite.as_str()), "{h}");
    assert!(m.uploads("locked-mp").is_empty());

    // Same bytes again: recognised through the composite checksum, no new version.
    let again = t.put(&req("mp", "big.wav"), &Unsized(&data)).unwrap();
    assert!(again.already_present);
    assert_eq!(m.versions("locked-mp", key).len(), 1);
}

#[test]
fn same_bytes_no_op_different_bytes_conflict() {
    let Some(mut m) = moto() else { return };
    m.bucket("locked-dup", true);
    let t =
        S3Target::with_options(&m.spec("locked-dup", Some(LockMode::Compliance)), quick()).unwrap();
    let a = bytes(5000, 3);
    let b = bytes(5000, 4);
    let key = "ny/d/r.xml";
    t.put(&req("d", "r.xml"), &BytesSource(&a)).unwrap();
    let again = t.put(&req("d", "r.xml"), &BytesSource(&a)).unwrap();
    assert!(again.already_present);
    assert!(again.detail.unwrap().contains("mode=COMPLIANCE"));
    assert_eq!(m.versions("locked-dup", key).len(), 1);
    match t.put(&req("d", "r.xml"), &BytesSource(&b)) {
        Err(TargetError::Conflict { location, existing }) => {
            assert_eq!(existing, sha256_hex(&a));
            assert!(location.contains(key), "{location}");
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(m.versions("locked-dup", key).len(), 1);
    assert_eq!(m.get("locked-dup", key).0, sha256_hex(&a));
}

#[test]
fn bad_credentials_are_permanent_with_the_server_message() {
    let Some(mut m) = moto() else { return };
    m.bucket("plain-cred", false);
    let good = m.spec("plain-cred", None);
    let mut spec = support::spec_with(
        &m.dir,
        &m.endpoint(),
        "plain-cred",
        "AKIANOSUCHKEY0000000",
        "x",
        None,
        None,
    );
    spec.prefix = good.prefix.clone();
    let t = S3Target::with_options(&spec, quick()).unwrap();
    match t.put(&req("c", "a.wav"), &BytesSource(b"abc")) {
        Err(TargetError::Permanent(msg)) => {
            assert!(
                msg.contains("InvalidAccessKeyId") && msg.contains("does not exist"),
                "{msg}"
            )
        }
        other => panic!("expected Permanent, got {other:?}"),
    }
    // A known key with the wrong secret: the signature is checked.
    let spec = support::spec_with(
        &m.dir,
        &m.endpoint(),
        "plain-cred",
        &m.access_key,
        "wrong-secret",
        None,
        None,
    );
    let t = S3Target::with_options(&spec, quick()).unwrap();
    match t.put(&req("c", "a.wav"), &BytesSource(b"abc")) {
        Err(TargetError::Permanent(msg)) => assert!(msg.contains("SignatureDoesNotMatch"), "{msg}"),
        other => panic!("expected Permanent, got {other:?}"),
    }
    assert!(
        m.cmd(json!({"op": "keys", "bucket": "plain-cred"}))["keys"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn missing_bucket_and_lock_on_plain_bucket_are_permanent() {
    let Some(mut m) = moto() else { return };
    let t = S3Target::with_options(&m.spec("no-such-bucket", None), quick()).unwrap();
    match t.put(&req("x", "a.wav"), &BytesSource(b"abc")) {
        Err(TargetError::Permanent(msg)) => assert!(msg.contains("NoSuchBucket"), "{msg}"),
        other => panic!("expected Permanent, got {other:?}"),
    }
    m.bucket("plain-nolock", false);
    let t = S3Target::with_options(&m.spec("plain-nolock", Some(LockMode::Compliance)), quick())
        .unwrap();
    match t.put(&req("x", "a.wav"), &BytesSource(b"abc")) {
        Err(TargetError::Permanent(msg)) => assert!(msg.contains("InvalidRequest"), "{msg}"),
        other => panic!("expected Permanent, got {other:?}"),
    }
}

/// Fails after `ok` bytes, as a decryption failure found mid-stream would.
struct Failing<'a> {
    data: &'a [u8],
    ok: usize,
    hint: bool,
}
impl Source for Failing<'_> {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new((&self.data[..self.ok]).chain(Broken)))
    }
    fn len_hint(&self) -> Option<u64> {
        self.hint.then_some(self.data.len() as u64)
    }
}
struct Broken;
impl Read for Broken {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "age: decryption failed (bad MAC)",
        ))
    }
}

/// Readable once, then broken: fails during the upload pass, not the hashing pass.
struct FailsSecondTime<'a> {
    data: &'a [u8],
    opened: std::sync::atomic::AtomicUsize,
    ok: usize,
}
impl Source for FailsSecondTime<'_> {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        if self
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            == 0
        {
            Ok(Box::new(self.data))
        } else {
            Ok(Box::new((&self.data[..self.ok]).chain(Broken)))
        }
    }
    fn len_hint(&self) -> Option<u64> {
        Some(self.data.len() as u64)
    }
}

#[test]
fn source_errors_leave_nothing_behind() {
    let Some(mut m) = moto() else { return };
    m.bucket("locked-src", true);
    let opts = S3Options {
        multipart_threshold: 6 * 1024 * 1024,
        part_size: 5 * 1024 * 1024,
        ..quick()
    };
    let t =
        S3Target::with_options(&m.spec("locked-src", Some(LockMode::Compliance)), opts).unwrap();
    let data = bytes(12 * 1024 * 1024, 5);
    let r = t.put(
        &req("s", "a.wav"),
        &Failing {
            data: &data,
            ok: 1000,
            hint: false,
        },
    );
    assert!(matches!(r, Err(TargetError::Source(_))), "{r:?}");

    // Failing while the bytes are being sent: single PUT, then multipart.
    for (name, len, ok) in [
        ("b.wav", 300_000, 200_000),
        ("c.wav", 12 * 1024 * 1024, 7 * 1024 * 1024),
    ] {
        let src = FailsSecondTime {
            data: &data[..len],
            opened: Default::default(),
            ok,
        };
        let r = t.put(&req("s", name), &src);
        assert!(matches!(r, Err(TargetError::Source(_))), "{name}: {r:?}");
    }
    let keys = m.cmd(json!({"op": "keys", "bucket": "locked-src"}));
    assert!(keys["keys"].as_array().unwrap().is_empty(), "{keys}");
    assert!(
        m.uploads("locked-src").is_empty(),
        "multipart upload not aborted"
    );
}

#[test]
fn https_with_custom_ca() {
    let Some(mut m) = Moto::start(true) else {
        return;
    };
    m.bucket("locked-tls", true);
    let spec = m.spec("locked-tls", Some(LockMode::Compliance));
    assert!(spec.endpoint.as_deref().unwrap().starts_with("https://"));
    let t = S3Target::with_options(&spec, quick()).unwrap();
    let data = bytes(4096, 6);
    t.put(&req("tls", "a.wav"), &BytesSource(&data)).unwrap();
    assert_eq!(m.get("locked-tls", "ny/tls/a.wav").0, sha256_hex(&data));

    // Without the CA the server is not trusted: a permanent error, no retry storm.
    let mut untrusted = spec.clone();
    untrusted.ca = None;
    let t = S3Target::with_options(&untrusted, quick()).unwrap();
    match t.put(&req("tls", "b.wav"), &BytesSource(&data)) {
        Err(TargetError::Permanent(msg)) => assert!(msg.to_lowercase().contains("cert"), "{msg}"),
        other => panic!("expected Permanent, got {other:?}"),
    }
}

/// The key of the probe object named in a probe's report.
fn probe_key<'a>(said: &'a str, bucket: &str) -> &'a str {
    let at = format!("probe s3://{bucket}/");
    said.split(&at)
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("no probe key in {said:?}"))
}

fn keys(m: &mut Moto, bucket: &str) -> serde_json::Value {
    m.cmd(json!({"op": "keys", "bucket": bucket, "prefix": "ny/"}))["keys"].clone()
}

#[test]
fn probe_on_an_object_lock_bucket_leaves_only_a_hidden_one_day_version() {
    let Some(mut m) = moto() else { return };
    m.bucket("probe-locked", true);
    let t = S3Target::with_options(&m.spec("probe-locked", Some(LockMode::Compliance)), quick())
        .unwrap();
    assert!(t.bucket_lock().unwrap().is_some_and(|b| b.enabled));
    let said = t.probe("ny-rec01").unwrap();
    assert!(said.starts_with("Object Lock enabled"), "{said}");
    let key = probe_key(&said, "probe-locked").to_string();
    assert!(key.starts_with("ny/exportd-probe/ny-rec01-"), "{key}");
    // A plain DELETE: a delete marker hides it; the locked version stays
    // until its (one day) retention ends, as the report says.
    assert!(said.contains("stays until"), "{said}");
    assert_eq!(keys(&mut m, "probe-locked"), json!([]));
    let got = m.cmd(json!({"op": "get", "bucket": "probe-locked", "key": key}));
    assert!(got.get("error").is_some(), "{got}");
    assert_eq!(m.versions("probe-locked", &key).len(), 1);
}

#[test]
fn probe_fails_when_the_bucket_lacks_the_object_lock_asked_for() {
    let Some(mut m) = moto() else { return };
    m.bucket("probe-plain", false);
    let t = S3Target::with_options(&m.spec("probe-plain", Some(LockMode::Governance)), quick())
        .unwrap();
    assert_eq!(t.bucket_lock().unwrap(), None);
    let e = t.probe("it").unwrap_err().to_string();
    assert!(
        e.contains("S3 bucket probe-plain has no Object Lock") && e.contains("GOVERNANCE"),
        "{e}"
    );
    assert_eq!(keys(&mut m, "probe-plain"), json!([]), "nothing written");

    // The same bucket for a target without Object Lock: written and gone.
    let t = S3Target::with_options(&m.spec("probe-plain", None), quick()).unwrap();
    let said = t.probe("it").unwrap();
    assert!(
        said.starts_with("probe s3://probe-plain/ny/exportd-probe/it-"),
        "{said}"
    );
    assert!(!said.contains("stays until"), "{said}");
    assert_eq!(keys(&mut m, "probe-plain"), json!([]));
}

#[test]
fn probe_with_a_wrong_secret_is_refused() {
    let Some(m) = moto() else { return };
    let mut spec = m.spec("probe-any", None);
    std::fs::write(spec.secret_file.as_ref().unwrap(), "wrong\n").unwrap();
    spec.prefix = Some("x/".into());
    let t = S3Target::with_options(&spec, quick()).unwrap();
    let e = t.probe("it").unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("PutObject"), "{e}");
}
