//! Tests of the vCon: its shape, its parties, dialogs and attachments.
//! Never built outside `cargo test`.

use super::build::relative_url;
use super::*;
use serde_json::Value;

const ID: &str = "0b6f3c1e-1111-4a3b-9c6d-000000000001";

fn record(modality: &str, cdr_only: bool, extra: &str, files: &str) -> Record {
    let xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<recording>
  <id>{ID}</id>
  <modality_id>{modality}</modality_id>
  <source_platform>teams</source_platform>
  <cdr_only>{cdr_only}</cdr_only>
  <native_id>N-1</native_id>
  <native_call_id>C-1</native_call_id>
  <location>ny-rec01</location>
  <start_time>2026.11.21 14:03:07.120</start_time>
  <end_time>2026.11.21 14:05:00.000</end_time>
  <direction>pstn_in</direction>
  <recorded_extension>+1 212 555 0100</recorded_extension>
  <source_caller_id>+44 20 7946 0958</source_caller_id>
  <source_name>Bob &amp; Co</source_name>
  <destination_caller_id>+1 (212) 555-0100</destination_caller_id>
  <destination_name>Ann Trader</destination_name>
  {extra}
  <files>
{files}
  </files>
</recording>"#
    );
    crate::record::parse(xml.as_bytes()).unwrap()
}

fn user() -> VconUser<'static> {
    VconUser {
        id: "u-1001",
        name: "Ann Trader",
        email: "ann@corp.example",
    }
}

fn file(name: &str, role: ExportedRole) -> ExportedFile<'_> {
    generated_file(name, role, name.as_bytes())
}

fn build(rec: &Record, files: &[ExportedFile<'_>], t: Option<&Transcript>) -> Value {
    let bytes = build_vcon(rec, user(), files, t);
    assert_eq!(bytes.last(), Some(&b'\n'));
    // Pure: the same input gives the same bytes.
    assert_eq!(bytes, build_vcon(rec, user(), files, t));
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    // Every reference into `parties` and `dialog` is in range.
    let np = v["parties"].as_array().unwrap().len();
    let nd = v["dialog"].as_array().unwrap().len();
    for d in v["dialog"].as_array().unwrap() {
        for p in d["parties"].as_array().unwrap() {
            assert!((p.as_u64().unwrap() as usize) < np);
        }
    }
    for a in v["attachments"].as_array().unwrap() {
        assert!((a["party"].as_u64().unwrap() as usize) < np);
        if let Some(d) = a.get("dialog") {
            assert!((d.as_u64().unwrap() as usize) < nd);
        }
        assert!(a["content_hash"].as_str().unwrap().starts_with("sha512-"));
    }
    v
}

const TRANSCRIPT: &str = r#"<transcript conversation_id="c-77" kind="group" title="Rates desk" owner="u-1001">
  <participants>
<participant id="u-1001" address="ann@corp.example" name="Ann Trader" internal="true"/>
<participant id="x-9" address="carl@partner.example" name="Carl" internal="false"/>
  </participants>
  <message id="m-1" timestamp="2026.11.21 14:03:07.120" from="u-1001">Morning</message>
  <message id="m-2" timestamp="2026.11.21 14:04:00.000" from="x-9" deleted="true"
       deleted_at="2026.11.21 14:05:00.000" deleted_by="x-9">oops</message>
  <message id="m-3" timestamp="2026.11.21 14:06:00.000" from="u-1001">v2 text<edit timestamp="2026.11.21 14:06:30.000" by="u-1001">v1 text</edit></message>
  <attachment message_id="m-2" file="term-sheet.pdf"/>
</transcript>"#;

#[test]
fn voice_recording_and_transcript() {
    let rec = record(
        "voice",
        false,
        "",
        r#"<file role="media">call.wav</file><file role="transcript">call.vtr</file>"#,
    );
    let files = [
        file("call.wav", ExportedRole::Spool(FileRole::Media)),
        file("call.vtr", ExportedRole::Spool(FileRole::Transcript)),
    ];
    let v = build(&rec, &files, None);
    assert_eq!(v["vcon"], "0.4.0");
    assert_eq!(v["created_at"], "2026-11-21T14:05:00.000Z");
    assert_eq!(v["extensions"], serde_json::json!(["exportd"]));
    let d = &v["dialog"][0];
    assert_eq!(v["dialog"].as_array().unwrap().len(), 1);
    assert_eq!(d["type"], "recording");
    assert_eq!(d["mediatype"], "audio/x-wav");
    assert_eq!(d["start"], "2026-11-21T14:03:07.120Z");
    assert_eq!(d["duration"].as_f64(), Some(112.88));
    assert_eq!(d["parties"], serde_json::json!([0, 1]));
    assert_eq!(d["filename"], "call.wav");
    assert_eq!(d["url"], "call.wav");
    assert_eq!(d["application"], "teams");
    assert_eq!(d["content_hash"], files[0].content_hash());
    let a = &v["attachments"][0];
    assert_eq!(a["purpose"], "transcript");
    assert_eq!(a["mediatype"], "text/vtt");
    assert_eq!(a["dialog"], 0);
    assert_eq!(a["party"], 1);
    // Source first; destination is the recorded party, with the user's data.
    let p = &v["parties"];
    assert_eq!(p[0]["tel"], "+442079460958");
    assert_eq!(p[0]["name"], "Bob & Co");
    assert_eq!(p[0]["exportd"]["roles"], serde_json::json!(["source"]));
    assert_eq!(p[1]["tel"], "+12125550100");
    assert_eq!(p[1]["mailto"], "ann@corp.example");
    assert_eq!(p[1]["exportd"]["user_id"], "u-1001");
    assert_eq!(
        p[1]["exportd"]["roles"],
        serde_json::json!(["destination", "recorded"])
    );
    let x = &v["exportd"];
    assert_eq!(x["record_id"], ID);
    assert_eq!(x["modality"], "voice");
    assert_eq!(x["native_call_id"], "C-1");
    assert_eq!(x["direction"], "pstn_in");
    assert_eq!(x["user"]["email"], "ann@corp.example");
}

#[test]
fn media_types_per_extension_and_modality() {
    for (modality, name, want) in [
        ("voice", "a.mp3", "audio/x-mp3"),
        ("voice", "a.WAV", "audio/x-wav"),
        ("voice", "a.mp4", "audio/x-mp4"),
        ("video", "a.mp4", "video/x-mp4"),
        ("screen", "a.mp4", "video/x-mp4"),
        ("share", "a.mp4", "video/x-mp4"),
    ] {
        let rec = record(
            modality,
            false,
            "",
            &format!("<file role=\"media\">{name}</file>"),
        );
        let v = build(
            &rec,
            &[file(name, ExportedRole::Spool(FileRole::Media))],
            None,
        );
        assert_eq!(v["dialog"][0]["type"], "recording", "{modality} {name}");
        assert_eq!(v["dialog"][0]["mediatype"], want, "{modality} {name}");
        assert_eq!(v["attachments"], serde_json::json!([]));
    }
}

#[test]
fn im_messages_are_text_dialogs() {
    let extra = r#"<participants><participant id="u-1001" address="ann@corp.example" name="Ann Trader" internal="true"/></participants>"#;
    let rec = record(
        "im",
        false,
        extra,
        r#"<file role="transcript">chat.im</file><file role="attachment" message_id="m-2">term-sheet.pdf</file>"#,
    );
    let t = Transcript::from_bytes(TRANSCRIPT.as_bytes()).unwrap();
    let mj = format!("{ID}.messages.json");
    let files = [
        file("chat.im", ExportedRole::Spool(FileRole::Transcript)),
        file("term-sheet.pdf", ExportedRole::Spool(FileRole::Attachment)),
        file(&mj, ExportedRole::Messages),
    ];
    let v = build(&rec, &files, Some(&t));
    assert_eq!(v["subject"], "Rates desk");
    let d = v["dialog"].as_array().unwrap();
    assert_eq!(d.len(), 3);
    assert!(
        d.iter().all(|d| d["type"] == "text"
            && d["mediatype"] == "text/plain"
            && d["encoding"] == "none")
    );
    assert_eq!(d[0]["body"], "Morning");
    assert_eq!(d[0]["message_id"], "m-1");
    let carl = v["parties"]
        .as_array()
        .unwrap()
        .iter()
        .position(|p| p["mailto"] == "carl@partner.example")
        .unwrap();
    let ann = v["parties"]
        .as_array()
        .unwrap()
        .iter()
        .position(|p| p["exportd"]["user_id"] == "u-1001")
        .unwrap();
    assert_eq!(d[1]["parties"][0], carl);
    assert_eq!(d[1]["exportd"]["deleted"], true);
    assert_eq!(d[1]["exportd"]["deleted_at"], "2026-11-21T14:05:00.000Z");
    assert_eq!(d[2]["parties"][0], ann);
    assert_eq!(d[2]["body"], "v2 text");
    assert_eq!(d[2]["exportd"]["edits"][0]["text"], "v1 text");
    let a = v["attachments"].as_array().unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(a[0]["purpose"], "im_transcript");
    assert_eq!(a[1]["purpose"], "im_attachment");
    assert_eq!(a[1]["mediatype"], "application/pdf");
    assert_eq!(a[1]["dialog"], 1);
    assert_eq!(a[1]["party"], carl);
    assert_eq!(a[1]["start"], "2026-11-21T14:04:00.000Z");
    assert_eq!(a[1]["exportd"]["message_id"], "m-2");
    assert_eq!(a[2]["purpose"], "messages");
    assert_eq!(a[2]["mediatype"], "application/json");
    assert_eq!(v["exportd"]["conversation"]["kind"], "group");
}

#[test]
fn im_without_transcript_has_no_dialog() {
    let rec = record("im", false, "", r#"<file role="transcript">chat.im</file>"#);
    let v = build(
        &rec,
        &[file("chat.im", ExportedRole::Spool(FileRole::Transcript))],
        None,
    );
    assert_eq!(v["dialog"], serde_json::json!([]));
    assert_eq!(v["attachments"][0]["purpose"], "im_transcript");
    assert!(v["attachments"][0].get("dialog").is_none());
}

#[test]
fn file_share_is_an_attachment() {
    let rec = record(
        "file_share",
        false,
        "",
        r#"<file role="media">q3.xlsx</file>"#,
    );
    let v = build(
        &rec,
        &[file("q3.xlsx", ExportedRole::Spool(FileRole::Media))],
        None,
    );
    assert_eq!(v["dialog"], serde_json::json!([]));
    let a = &v["attachments"][0];
    assert_eq!(a["purpose"], "file_transfer");
    assert_eq!(a["party"], 0);
    assert_eq!(
        a["mediatype"],
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    );
    assert!(a.get("dialog").is_none());
}

#[test]
fn sms_text_file_is_a_text_dialog() {
    let rec = record("sms", false, "", r#"<file role="other">msg.txt</file>"#);
    let v = build(
        &rec,
        &[file("msg.txt", ExportedRole::Spool(FileRole::Other))],
        None,
    );
    let d = &v["dialog"][0];
    assert_eq!(d["type"], "text");
    assert_eq!(d["mediatype"], "text/plain");
    assert_eq!(d["url"], "msg.txt");
    assert!(d.get("duration").is_none());
    assert_eq!(v["attachments"], serde_json::json!([]));
}

#[test]
fn cdr_only_has_no_dialog_content() {
    let rec = record("voice", true, "", "");
    let v = build(&rec, &[], None);
    assert_eq!(v["dialog"], serde_json::json!([]));
    assert_eq!(v["attachments"], serde_json::json!([]));
    assert_eq!(v["exportd"]["cdr_only"], true);
    assert_eq!(v["parties"].as_array().unwrap().len(), 2);
    // Even a listed media file is no dialog of a CDR-only record.
    let rec = record("voice", true, "", r#"<file role="media">a.wav</file>"#);
    let v = build(
        &rec,
        &[file("a.wav", ExportedRole::Spool(FileRole::Media))],
        None,
    );
    assert_eq!(v["dialog"], serde_json::json!([]));
    assert_eq!(v["attachments"][0]["purpose"], "media");
}

#[test]
fn encrypted_files_are_attachments() {
    let rec = record(
        "voice",
        false,
        "",
        r#"<file role="media">call.wav.age</file><file role="transcript">call.vtr.age</file>"#,
    );
    let files = [
        file("call.wav.age", ExportedRole::Spool(FileRole::Media)),
        file("call.vtr.age", ExportedRole::Spool(FileRole::Transcript)),
    ];
    let v = build(&rec, &files, None);
    assert_eq!(v["dialog"], serde_json::json!([]));
    let a = &v["attachments"][0];
    assert_eq!(a["purpose"], "encrypted");
    assert_eq!(a["mediatype"], "application/octet-stream");
    assert_eq!(a["exportd"]["encryption"], "age");
    assert_eq!(a["exportd"]["plaintext_mediatype"], "audio/x-wav");
    assert_eq!(a["exportd"]["role"], "media");
    assert_eq!(
        v["attachments"][1]["exportd"]["plaintext_mediatype"],
        "text/vtt"
    );
}

#[test]
fn parties_merge_sip_mail_and_ids() {
    let mut rec = record(
        "video",
        false,
        r#"<participants><participant id="u-7" address="Trader7@Corp.Example" name="T7" internal="true"/><participant id="x-1" address="TRD-0001" name="Desk" internal="false"/></participants>"#,
        "",
    );
    rec.recorded_extension = "sip:trader7@corp.example;transport=tls".into();
    let v = build(&rec, &[], None);
    let p = v["parties"].as_array().unwrap();
    assert_eq!(p.len(), 4, "{p:?}");
    assert_eq!(p[2]["mailto"], "Trader7@Corp.Example");
    assert_eq!(p[2]["sip"], "sip:trader7@corp.example;transport=tls");
    assert_eq!(p[2]["exportd"]["id"], "u-7");
    assert_eq!(
        p[2]["exportd"]["roles"],
        serde_json::json!(["participant", "recorded"])
    );
    // Trader ids are no tel, SIP or mail address: kept in the extension.
    assert!(p[3].get("tel").is_none() && p[3].get("mailto").is_none());
    assert_eq!(
        p[3]["exportd"]["addresses"],
        serde_json::json!(["TRD-0001"])
    );
    assert_eq!(p[3]["exportd"]["internal"], false);
}

#[test]
fn recorded_line_and_user_participant_are_one_party() {
    let extra = r#"<participants><participant id="u-1001" address="ann@corp.example" name="Ann T." internal="true"/><participant id="x-9" address="carl@partner.example" name="Carl" internal="false"/></participants>"#;
    let rec = record("im", false, extra, "");
    let t = Transcript::from_bytes(TRANSCRIPT.as_bytes()).unwrap();
    let v = build(&rec, &[], Some(&t));
    let p = v["parties"].as_array().unwrap();
    // Source, destination (= recorded line = Ann), Carl.
    assert_eq!(p.len(), 3, "{p:?}");
    assert_eq!(p[1]["tel"], "+12125550100");
    assert_eq!(p[1]["mailto"], "ann@corp.example");
    assert_eq!(p[1]["name"], "Ann Trader");
    assert_eq!(p[1]["exportd"]["id"], "u-1001");
    assert_eq!(
        p[1]["exportd"]["roles"],
        serde_json::json!(["destination", "recorded", "participant"])
    );
    // Ann's messages come from party 1, to Carl (2).
    assert_eq!(v["dialog"][0]["parties"], serde_json::json!([1, 2]));
    assert_eq!(v["dialog"][1]["parties"], serde_json::json!([2, 1]));
    assert!(v["dialog"][0].get("exportd").is_none());
}

#[test]
fn uuid_is_v8_and_stable() {
    let rec = record("voice", true, "", "");
    let u = vcon_uuid(&rec);
    assert_eq!(u.len(), 36);
    assert_eq!(&u[14..15], "8");
    assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
    // The first 48 bits are the start time in ms.
    let ms = u64::from_str_radix(&u[..8], 16).unwrap() << 16
        | u64::from_str_radix(&u[9..13], 16).unwrap();
    assert_eq!(ms as i64, rec.start_time.0);
    let mut other = rec.clone();
    other.id.push('x');
    assert_ne!(vcon_uuid(&other), u);
    assert_eq!(vcon_uuid(&rec.clone()), u);
}

#[test]
fn hashes_and_urls() {
    let f = generated_file("x", ExportedRole::Messages, b"abc");
    // SHA-512("abc"), base64url without padding: 86 characters.
    assert_eq!(
        f.content_hash(),
        "sha512-3a81oZNherrMQXNJriBBMRLm-k6JqX6iCp7u5ktV05ohkpkqJ0_BqDa6PCOj_uu9RU1EI2Q86A4qmslPpUyknw"
    );
    assert_eq!(
        relative_url("a b:c?#%é.wav"),
        "a%20b%3Ac%3F%23%25%C3%A9.wav"
    );
    assert_eq!(
        vcon_name("a/b"),
        format!("{}.vcon.json", layout::sanitize_component("a/b"))
    );
}

#[test]
fn generate_for_the_engine_hook() {
    let rec = record(
        "im",
        false,
        "",
        r#"<file role="transcript">chat.im.age</file>"#,
    );
    let t = Transcript::from_bytes(TRANSCRIPT.as_bytes()).unwrap();
    let mj = crate::record::im::messages_json(&t, &rec.id);
    let written: Vec<Written> = vec![("chat.im".into(), [0; 32], Some([7; 64]), 680)];
    let generated = vec![
        (format!("{ID}.messages.json"), mj.clone()),
        ("unrelated.txt".to_string(), b"x".to_vec()),
    ];
    let (name, bytes) = generate(&rec, user(), true, &written, &generated, Some(&t)).unwrap();
    assert_eq!(name, format!("{ID}.vcon.json"));
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    let a = v["attachments"].as_array().unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["content_hash"], content_hash(&[7; 64]));
    assert_eq!(a[1]["purpose"], "messages");
    assert_eq!(
        a[1]["content_hash"],
        content_hash(&Sha512::digest(&mj).into())
    );
    assert_eq!(a[1]["exportd"]["size"], mj.len());
    assert_eq!(v["dialog"].as_array().unwrap().len(), 3);
}

#[test]
fn maps_written_files_back_to_roles() {
    let rec = record(
        "im",
        false,
        "",
        r#"<file role="transcript">sub/chat.im.age</file><file role="attachment" message_id="m-2">t.pdf.age</file>"#,
    );
    let w: Vec<Written> = vec![
        ("chat.im".into(), [0; 32], Some([1; 64]), 10),
        ("t.pdf".into(), [0; 32], Some([2; 64]), 20),
    ];
    let files = exported_files(&rec, true, &w).unwrap();
    assert_eq!(files[0].role, ExportedRole::Spool(FileRole::Transcript));
    assert_eq!(files[1].role, ExportedRole::Spool(FileRole::Attachment));
    assert_eq!(files[1].message_id, Some("m-2"));
    assert_eq!(files[1].sha512, [2; 64]);
    // Not decrypted: the names keep `.age`, and `chat.im` is no file of it.
    assert!(exported_files(&rec, false, &w).is_err());
    let no512: Vec<Written> = vec![("chat.im".into(), [0; 32], None, 10)];
    assert!(exported_files(&rec, true, &no512).is_err());
}
