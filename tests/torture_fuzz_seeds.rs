//! Writes the seed corpus of the fuzz targets (`fuzz/corpus/<target>/`):
//! valid inputs of every format, built with the library itself, so the
//! fuzzers start from deep inside the parsers. Ignored: run it to regenerate
//!
//! ```text
//! cargo test --test torture_fuzz_seeds -- --ignored
//! ```
//!
//! The (non-ignored) check below keeps every committed seed parseable-or-not
//! without a panic, so the corpus doubles as a regression suite in `cargo test`.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::*;

/// The identity hard-coded in `fuzz/fuzz_targets/age_decrypt.rs`.
const FUZZ_IDENTITY: &str =
    "AGE-SECRET-KEY-1K7KRVW9MAPA2SDJD76JDGLJM59T490ZRWMCQ0RF8ZWLDE8037T2S5H4DLZ";

fn corpus(target: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    fs::create_dir_all(&d).unwrap();
    d
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    fs::write(corpus(target).join(name), bytes).unwrap();
}

const TRANSCRIPT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<transcript conversation_id="c-77" kind="group" title="Rates desk" owner="u-1001">
  <participants>
    <participant id="u-1001" address="ann@corp.example" name="Ann Trader" internal="true"/>
    <participant id="x-9" address="carl@partner.example" name="Carl" internal="false"/>
  </participants>
  <message id="m-1" timestamp="2026.11.21 14:03:07.120" from="u-1001">Morning</message>
  <message id="m-2" timestamp="2026.11.21 14:04:00.000" from="x-9" deleted="true"
           deleted_at="2026.11.21 14:05:00.000" deleted_by="x-9">oops</message>
  <message id="m-3" timestamp="2026.11.21 14:06:00.000" from="u-1001">
    v2 text<edit timestamp="2026.11.21 14:06:30.000" by="u-1001">v1 text</edit>
  </message>
  <attachment message_id="m-3" file="term-sheet.pdf"/>
</transcript>
"#;

fn zip_of(name: &str, data: &[u8]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        z.start_file(
            name,
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated),
        )
        .unwrap();
        z.write_all(data).unwrap();
        z.finish().unwrap();
    }
    buf.into_inner()
}

#[test]
#[ignore = "regenerates fuzz/corpus seeds"]
fn write_seed_corpus() {
    let a = Appliance::new(1);
    // record_xml: simulated records of every modality, and test records.
    exportd::simulate::simulate(&exportd::simulate::SimOptions {
        spool: a.spool.clone(),
        count: 12,
        users: 3,
        seed: 7,
        size_scale: 0.001,
        ..Default::default()
    })
    .unwrap();
    for (i, x) in spool_xmls(&a.spool).iter().enumerate() {
        put(
            "record_xml",
            &format!("sim-{i:02}.xml"),
            &fs::read(x).unwrap(),
        );
    }
    let mut r = Rec::voice("seed-1", "+1 212 555 0100");
    r.files
        .push(("attachment".into(), "a/b.pdf".into(), vec![]));
    r.extra_xml = "  <participants><participant id=\"u\" address=\"a@b\" name=\"A\" internal=\"true\"/></participants>\n".into();
    put("record_xml", "rec.xml", r.xml().as_bytes());
    put(
        "record_xml",
        "doctype.xml",
        b"<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY a \"aaaa\"><!ENTITY b \"&a;&a;&a;\">]><recording><id>&b;</id></recording>",
    );
    // im_transcript: bare XML, zipped, simulated.
    put("im_transcript", "contract.im", TRANSCRIPT.as_bytes());
    put(
        "im_transcript",
        "contract-zip.im",
        &zip_of("transcript.xml", TRANSCRIPT.as_bytes()),
    );
    for (i, f) in files_below(&a.spool)
        .iter()
        .filter(|f| f.ends_with(".im"))
        .take(3)
        .enumerate()
    {
        put(
            "im_transcript",
            &format!("sim-{i}.im"),
            &fs::read(a.spool.join(f)).unwrap(),
        );
    }
    // config_toml: the simulator's config and a test appliance's.
    let cfg =
        exportd::simulate::config_toml("seed", &a.spool, &a.state, &a.keys, &a.targets[0], 3, true);
    put("config_toml", "sim.toml", cfg.as_bytes());
    let mut c = a.head(30);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\nfilters = { conversation_types = [\"voice\"], source_2n = \"primary\" }\nsettings = { file_extensions = [\"wav\"], path_template = \"{modality}/{yyyy}{mm}/{user_id}/{id}\", vcon = true }\n\n");
    c.push_str(&user(
        "u-1",
        &["+12125550100", "sip:ann@corp.example", "TRD-0042"],
        &["p"],
    ));
    c.push_str("[[trust]]\nkeyid = \"central\"\npublic_key = \"O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=\"\nroles = [\"config\"]\n");
    put("config_toml", "inline.toml", c.as_bytes());
    // dsse_bundle: a signed config and a signed request.
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let model = serde_json::json!({
        "version": 42, "issued_at": "2026-11-21T10:00:00Z",
        "targets": [{"id": "nas1", "kind": "fs", "path": "/mnt/archive"},
                    {"id": "s3a", "kind": "s3", "endpoint": "https://s3.example", "region": "eu-west-1",
                     "bucket": "b", "prefix": "ny/", "path_style": true, "access_key_id": "AK",
                     "secret_file": "/etc/exportd/s3a.secret", "object_lock": {"mode": "compliance", "retain_days": 7}}],
        "policies": [{"id": "p-voice", "name": "Voice", "enabled": true, "targets": ["nas1", "s3a"],
                      "filters": {"conversation_types": ["voice"], "source_platforms": ["ipc_unigy"], "source_2n": "primary"},
                      "settings": {"decrypt": true, "im_attachments": true, "file_extensions": ["wav", "vtr"],
                                   "path_template": "{yyyy}/{mm}/{dd}/{user_id}/{id}", "vcon": true}}],
        "users": [{"id": "u-1001", "name": "Ann", "email": "ann@corp.example",
                   "extensions": ["+12125550100", "sip:ann@corp.example"], "policies": ["p-voice"]}],
        "admins": [{"keyid": "ops", "public_key": "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=", "roles": ["export"]}]
    });
    let payload = serde_json::to_vec(&model).unwrap();
    let env = exportd::control::bundle::dsse::sign(
        "application/vnd.exportd.config+json",
        &payload,
        &[("central", &key)],
    );
    put(
        "dsse_bundle",
        "config.json",
        env.to_json_pretty().as_bytes(),
    );
    put("dsse_bundle", "config-payload.json", &payload);
    let req = br#"{"request_id": "r-2026-11-21-1", "time_from": "2026-11-01T00:00:00Z", "time_to": "2026-11-21T00:00:00Z", "target": "nas1", "users": ["u-1001"], "modalities": ["im", "file_share"], "attachments": true, "format": "slack"}"#;
    let env = exportd::control::bundle::dsse::sign(
        "application/vnd.exportd.export-request+json",
        req,
        &[("ops", &key)],
    );
    put(
        "dsse_bundle",
        "request.json",
        env.to_json_pretty().as_bytes(),
    );
    // journal_frames: one of each entry.
    use exportd::ledger::journal::{Entry, Outcome, encode_frame};
    let mut j = Vec::new();
    for (i, e) in [
        Entry::Done {
            key: [1; 16],
            size: 1234,
            mtime_ns: 1_700_000_000_000_000_000,
            outcome: Outcome::Exported,
        },
        Entry::Copy {
            key: [1; 16],
            size: 1234,
            mtime_ns: -5,
            copy: exportd::ledger::journal::copy_id("p", "t"),
        },
        Entry::Done {
            key: [2; 16],
            size: 0,
            mtime_ns: 0,
            outcome: Outcome::Rejected,
        },
        Entry::Forget { key: [2; 16] },
        Entry::Done {
            key: [3; 16],
            size: u64::MAX,
            mtime_ns: i64::MIN,
            outcome: Outcome::Skipped,
        },
    ]
    .iter()
    .enumerate()
    {
        let f = encode_frame(e);
        put("journal_frames", &format!("frame-{i}"), &f);
        j.extend_from_slice(&f);
    }
    put("journal_frames", "journal", &j);
    put("journal_frames", "torn", &j[..j.len() - 3]);
    // age_decrypt: files encrypted to the fuzz identity (empty, small, two chunks).
    let id = exportd::age::Identity::from_bech32(FUZZ_IDENTITY).unwrap();
    for (name, len) in [
        ("empty", 0usize),
        ("small", 100),
        ("two-chunks", 65536 + 10),
    ] {
        let mut enc = exportd::age::Encryptor::new(Vec::new(), &[id.recipient()]).unwrap();
        enc.write_all(&vec![b'x'; len]).unwrap();
        put(
            "age_decrypt",
            &format!("{name}.age"),
            &enc.finish().unwrap(),
        );
    }
}

/// Every committed seed and fuzz finding is replayed through its parser in
/// plain `cargo test` (a crash found by the fuzzer stays fixed).
#[test]
fn committed_corpus_replays_without_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let Ok(rd) = fs::read_dir(&root) else {
        return;
    };
    let keys = exportd::age::KeyStore::from_identities(vec![
        exportd::age::Identity::from_bech32(FUZZ_IDENTITY).unwrap(),
    ]);
    let mut n = 0;
    for t in rd {
        let t = t.unwrap().path();
        let target = t.file_name().unwrap().to_string_lossy().into_owned();
        for f in fs::read_dir(&t).unwrap() {
            let data = fs::read(f.unwrap().path()).unwrap();
            n += 1;
            match target.as_str() {
                "record_xml" => {
                    let _ = exportd::record::parse(&data);
                }
                "im_transcript" => {
                    let _ = exportd::record::im::Transcript::from_bytes(&data);
                }
                "dsse_bundle" => {
                    if let Ok(e) = exportd::control::bundle::dsse::Envelope::from_json(&data) {
                        let _ = e.payload_bytes();
                    }
                    let _ = exportd::control::bundle::apply::parse_config_payload(&data);
                    let _ = exportd::control::bundle::apply::parse_request_payload(&data);
                }
                "config_toml" => {
                    if let Ok(s) = std::str::from_utf8(&data) {
                        let _ = exportd::policy::config::LocalConfig::parse(s, Path::new("x.toml"));
                    }
                }
                "journal_frames" => {
                    let _ = exportd::ledger::journal::decode_frames(&data);
                }
                "age_decrypt" => {
                    use std::io::Read;
                    if let Ok(d) = exportd::age::Decryptor::new(std::io::Cursor::new(&data), &keys)
                    {
                        let _ = d.take(8 << 20).read_to_end(&mut Vec::new());
                    }
                }
                _ => {}
            }
        }
    }
    eprintln!("replayed {n} corpus inputs");
}
