//! Unit tests of the S3 target: addressing, configuration errors, retention
//! dates, error bodies and the hashing passes. No server.

use std::io;
use std::path::PathBuf;

use exportd_hot::Sha256;

use super::client::jitter;
use super::digest::Verified;
use super::errors::error_code_message;
use super::lock::retain_until;
use super::upload::complete_xml;
use super::*;
use crate::policy::model::{LockMode, TargetKind};
use crate::sink::BytesSource;
use crate::time::{Civil, Timestamp};

fn spec(dir: &std::path::Path) -> TargetSpec {
    let secret = dir.join("secret");
    std::fs::write(&secret, "  s3cr3t-value \n").unwrap();
    TargetSpec {
        id: "s3a".into(),
        kind: TargetKind::S3,
        path: None,
        endpoint: Some("https://S3.eu-west-1.amazonaws.com:443/".into()),
        region: Some("eu-west-1".into()),
        bucket: Some("rec-archive".into()),
        prefix: Some("ny".into()),
        path_style: Some(false),
        access_key_id: Some("AKIDEXAMPLE".into()),
        secret_file: Some(secret),
        ca: None,
        object_lock: Some(ObjectLock {
            mode: LockMode::Compliance,
            retain_days: 2557,
        }),
    }
}

fn tmp() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "exportd-s3-unit-{}-{}",
        std::process::id(),
        jitter()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn addressing_and_keys() {
    let d = tmp();
    let mut s = spec(&d);
    // A CA file of its own, so the test does not depend on the machine's
    // root store (the board lanes have none).
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let ca_path = d.join("ca.pem");
    std::fs::write(&ca_path, ca.cert.pem()).unwrap();
    s.ca = Some(ca_path);
    let t = S3Target::new(&s).unwrap();
    assert_eq!(
        t.key("2026/11/21/u-1/r1", "a b.wav"),
        "ny/2026/11/21/u-1/r1/a b.wav"
    );
    assert_eq!(
        t.object_url("ny/x/a b.wav"),
        "https://rec-archive.s3.eu-west-1.amazonaws.com/ny/x/a%20b.wav"
    );
    s.path_style = Some(true);
    s.endpoint = Some("http://127.0.0.1:9000".into());
    s.prefix = None;
    let t = S3Target::new(&s).unwrap();
    assert_eq!(t.key("f", "n"), "f/n");
    assert_eq!(t.object_url("f/n"), "http://127.0.0.1:9000/rec-archive/f/n");
    assert_eq!(t.describe("f"), "s3://rec-archive/f");
    let dbg = format!("{t:?}");
    assert!(!dbg.contains("s3cr3t"), "{dbg}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn config_errors_name_the_problem() {
    let d = tmp();
    let mut s = spec(&d);
    s.secret_file = Some(d.join("missing.secret"));
    let e = S3Target::new(&s).unwrap_err().to_string();
    assert!(e.contains("missing.secret"), "{e}");
    let mut s = spec(&d);
    std::fs::write(d.join("empty"), " \n").unwrap();
    s.secret_file = Some(d.join("empty"));
    assert!(matches!(
        S3Target::new(&s),
        Err(S3ConfigError::EmptySecret { .. })
    ));
    let mut s = spec(&d);
    s.endpoint = Some("ftp://x".into());
    assert!(matches!(
        S3Target::new(&s),
        Err(S3ConfigError::Endpoint { .. })
    ));
    let mut s = spec(&d);
    s.endpoint = Some("https://host/path".into());
    assert!(matches!(
        S3Target::new(&s),
        Err(S3ConfigError::Endpoint { .. })
    ));
    let mut s = spec(&d);
    std::fs::write(d.join("ca.pem"), "not a pem").unwrap();
    s.ca = Some(d.join("ca.pem"));
    let e = S3Target::new(&s).unwrap_err().to_string();
    assert!(e.contains("ca.pem"), "{e}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn retain_until_form() {
    let now = Timestamp::from_civil(Civil {
        year: 2026,
        month: 11,
        day: 21,
        hour: 10,
        minute: 0,
        second: 7,
        milli: 999,
    })
    .unwrap();
    assert_eq!(retain_until(now, 1), "2026-11-22T10:00:07Z");
    assert_eq!(retain_until(now, 2557), "2033-11-21T10:00:07Z");
}

#[test]
fn error_body_parsing() {
    let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records.</Message><RequestId>1</RequestId></Error>"#;
    let (c, m) = error_code_message(body);
    assert_eq!(c.as_deref(), Some("InvalidAccessKeyId"));
    assert!(m.unwrap().contains("does not exist"));
    assert_eq!(error_code_message(b"<html>oops"), (None, None));
}

#[test]
fn part_hashes_and_verified_reader() {
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let d = first_pass(&BytesSource(&data), true, Some(300)).unwrap();
    assert_eq!(d.len, 1000);
    let parts = d.parts.as_ref().unwrap();
    assert_eq!(parts.len(), 4);
    let want: [u8; 32] = Sha256::digest(&data[900..]);
    assert_eq!(parts[3], want);
    assert!(d.sha512.is_some());
    assert!(d.composite_b64().unwrap().ends_with("-4"));

    let empty = first_pass(&BytesSource(b""), false, Some(300)).unwrap();
    assert_eq!(empty.parts.as_ref().unwrap().len(), 1);

    // A source that changes between passes fails before its last byte.
    let other: Vec<u8> = data.iter().map(|b| b ^ 1).collect();
    let mut r: &[u8] = &other;
    let mut v = Verified {
        inner: &mut r,
        remaining: 1000,
        hasher: Sha256::new(),
        expected: d.sha256,
    };
    let mut sink = Vec::new();
    assert!(io::copy(&mut v, &mut sink).is_err());
    assert!(sink.len() < 1000);
}

#[test]
fn complete_body_lists_the_parts_in_order() {
    let xml = complete_xml(&["\"e1\"".into(), "e<2>".into()], &[[0u8; 32], [1u8; 32]]);
    assert!(xml.starts_with(
        "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
    ));
    assert!(
        xml.contains("<Part><PartNumber>1</PartNumber><ETag>&quot;e1&quot;</ETag>"),
        "{xml}"
    );
    assert!(
        xml.contains("<PartNumber>2</PartNumber><ETag>e&lt;2&gt;</ETag>"),
        "{xml}"
    );
    assert_eq!(xml.matches("<ChecksumSHA256>").count(), 2);
    assert!(xml.ends_with("</Part></CompleteMultipartUpload>"));
}
