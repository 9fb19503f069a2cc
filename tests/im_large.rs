//! A large IM transcript exports in bounded memory (issue 21, point 6):
//! the real binary exports a transcript of `EXPORTD_BIG_TRANSCRIPT_MIB`
//! (default 24 MiB; `benches/run --only transcript` uses 108 MiB with the
//! release build) while its peak resident set (VmHWM, sampled from /proc)
//! stays under 64 MiB (the unit's `MemoryMax`), and its `messages.json` is
//! byte for byte what the in-memory writer produces (the oracle), for the
//! large transcript and for a small one, plain and zipped.

mod common;

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use exportd::record::im::{Transcript, messages_json};

/// Writes a transcript of about `mib` MiB: messages with edits, attachments
/// listed after their messages, non-ASCII text and entities. Returns the
/// number of messages.
fn write_transcript(path: &Path, mib: u64) -> u64 {
    let mut f = BufWriter::new(fs::File::create(path).unwrap());
    let target = mib << 20;
    let mut n = 0u64;
    let mut len = 0u64;
    let head = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<transcript conversation_id=\"c-big\" kind=\"group\" title=\"Big desk\" owner=\"u-1\">\n  <participants>\n    <participant id=\"u-1\" address=\"sip:u-1@corp.example\" name=\"Ann\" internal=\"true\"/>\n    <participant id=\"x-2\" address=\"x@partner.example\" name=\"Carl\" internal=\"false\"/>\n  </participants>\n";
    f.write_all(head.as_bytes()).unwrap();
    let body = "lorem ipsum dolor sit amet &amp; café 日本 ".repeat(12);
    while len < target {
        n += 1;
        let mut m = format!(
            "  <message id=\"m-{n}\" timestamp=\"2026.11.21 14:{:02}:{:02}.{:03}\" from=\"{}\">{n} {body}",
            (n / 60) % 60,
            n % 60,
            n % 1000,
            if n % 2 == 1 { "u-1" } else { "x-2" }
        );
        if n % 10 == 0 {
            m.push_str(&format!(
                "<edit timestamp=\"2026.11.21 15:00:00.000\" by=\"u-1\">old {n}</edit>"
            ));
        }
        m.push_str("</message>\n");
        if n % 100 == 0 {
            m.push_str(&format!(
                "  <attachment message_id=\"m-{n}\" file=\"f-{n}.pdf\"/>\n"
            ));
        }
        len += m.len() as u64;
        f.write_all(m.as_bytes()).unwrap();
    }
    f.write_all(b"</transcript>\n").unwrap();
    f.flush().unwrap();
    n
}

fn im_record(a: &Appliance, id: &str, transcript: &[u8]) {
    let mut r = Rec::voice(id, "sip:u-1@corp.example");
    r.modality = "im".into();
    r.platform = "symphony".into();
    r.files = vec![("transcript".into(), format!("{id}.im"), transcript.to_vec())];
    r.write(&a.spool.join("2026/11/21"));
}

fn appliance() -> Appliance {
    appliance_with("")
}

/// `settings`: the policy's settings table body (e.g. `vcon = true`).
fn appliance_with(settings: &str) -> Appliance {
    let a = Appliance::new(1);
    let mut c = a.head(1);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"Chat\"\ntargets = [\"t0\"]\n");
    if !settings.is_empty() {
        c.push_str(&format!("settings = {{ {settings} }}\n"));
    }
    c.push('\n');
    c.push_str(&user("u-1", &["sip:u-1@corp.example"], &["p"]));
    a.write_config(&c);
    a
}

/// `run --until-idle`, sampling the process's VmHWM until it exits.
fn run_measured(a: &Appliance) -> (i32, u64, String) {
    let mut child = Command::new(exe())
        .args(["run", "--until-idle", "--config"])
        .arg(&a.config)
        .env("EXPORTD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut hwm_kib = 0u64;
    let t0 = Instant::now();
    loop {
        if let Ok(s) = fs::read_to_string(&status) {
            if let Some(v) = s
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                hwm_kib = hwm_kib.max(v);
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1800),
            "exportd did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        hwm_kib,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn small_transcripts_give_the_in_memory_messages_json_byte_for_byte() {
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<transcript conversation_id="c-77" kind="direct" title="Rates &amp; co" owner="u-1">
  <message id="m-1" timestamp="2026.11.21 14:03:07.120" from="u-1">Morning ü 😀</message>
  <participants>
    <participant id="u-1" address="sip:u-1@corp.example" name="Ann" internal="true"/>
  </participants>
  <message id="m-2" timestamp="2026.11.21 14:04:00.000" from="u-1" deleted="true" deleted_at="2026.11.21 14:05:00.000">oops<edit timestamp="2026.11.21 14:04:30.000" by="u-1">first</edit></message>
  <attachment message_id="m-2" file="a.pdf"/>
</transcript>
"#;
    let zipped = {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file(
            "transcript.xml",
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated),
        )
        .unwrap();
        w.write_all(xml.as_bytes()).unwrap();
        w.finish().unwrap().into_inner()
    };
    let a = appliance();
    im_record(&a, "plain", xml.as_bytes());
    im_record(&a, "zipped", &zipped);
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Transcript::from_bytes(xml.as_bytes()).unwrap();
    for id in ["plain", "zipped"] {
        let got = fs::read(
            a.targets[0]
                .join("2026/11/21/u-1")
                .join(id)
                .join(format!("{id}.messages.json")),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            String::from_utf8(messages_json(&t, id)).unwrap()
        );
    }
}

/// Writes the IM record `big` with a transcript of about `mib` MiB into
/// the spool's day folder; returns the folder and the number of messages.
fn big_record(a: &Appliance, mib: u64) -> (std::path::PathBuf, u64) {
    let day = a.spool.join("2026/11/21");
    fs::create_dir_all(&day).unwrap();
    let n = write_transcript(&day.join("big.im"), mib);
    let mut r = Rec::voice("big", "sip:u-1@corp.example");
    r.modality = "im".into();
    r.platform = "symphony".into();
    r.files = Vec::new();
    r.extra_xml = String::new();
    let xml = r.xml().replace(
        "  <files>\n",
        "  <files>\n    <file role=\"transcript\">big.im</file>\n",
    );
    fs::write(day.join("big.xml"), xml).unwrap();
    (day, n)
}

#[test]
fn a_large_transcript_exports_in_bounded_memory() {
    let mib = env_u64("EXPORTD_BIG_TRANSCRIPT_MIB", 24);
    let a = appliance();
    let (day, n) = big_record(&a, mib);

    let (code, hwm_kib, stderr) = run_measured(&a);
    assert_eq!(code, 0, "{stderr}");
    println!(
        "exportd run --until-idle, {mib} MiB transcript ({n} messages): VmHWM {:.1} MiB",
        hwm_kib as f64 / 1024.0
    );
    assert!(
        hwm_kib < 64 * 1024,
        "peak resident set {hwm_kib} KiB for a {mib} MiB transcript: over the unit's 64 MiB"
    );

    let folder = a.targets[0].join("2026/11/21/u-1/big");
    let got = fs::read(folder.join("big.messages.json")).unwrap();
    let spool_bytes = fs::read(day.join("big.im")).unwrap();
    assert_eq!(fs::read(folder.join("big.im")).unwrap(), spool_bytes);
    // The oracle: the in-memory writer over the whole transcript.
    let t = Transcript::from_bytes(&spool_bytes).unwrap();
    assert_eq!(t.messages.len() as u64, n);
    let want = messages_json(&t, "big");
    drop(t);
    assert!(
        got == want,
        "streamed messages.json differs from the oracle"
    );
    let rows = a.rows_with("export");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0][3], "3",
        "transcript, messages.json, xml: {:?}",
        rows[0]
    );
}

/// With `vcon = true` the vCon of a large chat must not hold every message
/// in memory either: past 8 MiB of `messages.json` it references that file
/// (by name and content hash) instead of listing each message as a dialog.
#[test]
fn a_large_transcript_with_a_vcon_stays_bounded() {
    let mib = env_u64("EXPORTD_BIG_TRANSCRIPT_MIB", 24).div_ceil(2);
    let a = appliance_with("vcon = true");
    big_record(&a, mib);

    let (code, hwm_kib, stderr) = run_measured(&a);
    assert_eq!(code, 0, "{stderr}");
    println!(
        "exportd run --until-idle, {mib} MiB transcript with a vCon: VmHWM {:.1} MiB",
        hwm_kib as f64 / 1024.0
    );
    assert!(
        hwm_kib < 64 * 1024,
        "peak resident set {hwm_kib} KiB for a {mib} MiB transcript with a vCon: over 64 MiB"
    );
    let folder = a.targets[0].join("2026/11/21/u-1/big");
    let messages = fs::metadata(folder.join("big.messages.json"))
        .unwrap()
        .len();
    let vcon: serde_json::Value =
        serde_json::from_slice(&fs::read(folder.join("big.vcon.json")).unwrap()).unwrap();
    let text = vcon.to_string();
    assert!(
        text.contains("big.messages.json"),
        "the vCon references messages.json"
    );
    let dialogs = vcon["dialog"].as_array().map_or(0, |d| d.len());
    if messages > 8 << 20 {
        assert!(
            dialogs < 10,
            "a {messages}-byte messages.json must not be inlined as {dialogs} dialogs"
        );
    }
    let rows = a.rows_with("export");
    assert_eq!(rows.len(), 1, "{rows:?}");
}
