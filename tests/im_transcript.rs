//! `.im` transcripts: ZIP and plain XML, hostile containers, messages.json.

#[path = "fixtures/im/spool.rs"]
mod spool;

use exportd::record::im::{ImError, Kind, Transcript, messages_json};
use exportd::record::xml::XmlError;

const XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<transcript conversation_id="c-77" kind="group" title="Rates desk" owner="u-1001">
  <participants>
    <participant id="u-1001" address="ann@corp.example" name="Ann Trader" internal="true"/>
    <participant id="x-9" address="carl@partner.example" name="Carl" internal="false"/>
  </participants>
  <message id="m-1" timestamp="2026.11.21 14:03:07.120" from="u-1001">Morning</message>
  <message id="m-2" timestamp="2026.11.21 14:04:00.000" from="x-9" deleted="true"
           deleted_at="2026.11.21 14:05:00.000" deleted_by="x-9">oops</message>
  <message id="m-3" timestamp="2026.11.22 00:06:00.000" from="u-1001">
    v3 text<edit timestamp="2026.11.22 00:06:30.000" by="u-1001">v1 text</edit><edit timestamp="2026.11.22 00:07:00.000" by="x-9">v2 text</edit>
  </message>
  <attachment message_id="m-3" file="term-sheet.pdf"/>
  <attachment message_id="m-3" file="rates.xlsx"/>
</transcript>
"#;

/// Finds the central directory header and the local header of the first entry.
fn patch_sizes(
    zip: &mut [u8],
    compressed: Option<u32>,
    uncompressed: Option<u32>,
    flags: Option<u16>,
) {
    let cd = zip.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    if let Some(c) = compressed {
        zip[18..22].copy_from_slice(&c.to_le_bytes());
        zip[cd + 20..cd + 24].copy_from_slice(&c.to_le_bytes());
    }
    if let Some(u) = uncompressed {
        zip[22..26].copy_from_slice(&u.to_le_bytes());
        zip[cd + 24..cd + 28].copy_from_slice(&u.to_le_bytes());
    }
    if let Some(f) = flags {
        zip[6..8].copy_from_slice(&f.to_le_bytes());
        zip[cd + 8..cd + 10].copy_from_slice(&f.to_le_bytes());
    }
}

#[test]
fn zip_and_plain_parse_the_same() {
    let plain = Transcript::from_bytes(XML.as_bytes()).unwrap();
    let zipped = Transcript::from_bytes(&spool::im_zip(XML)).unwrap();
    assert_eq!(plain, zipped);
    assert_eq!(plain.kind, Kind::Group);
    assert_eq!(plain.messages.len(), 3);
    assert_eq!(plain.messages[2].text, "v3 text");
    assert_eq!(plain.messages[2].edits[1].by, "x-9");

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("chat.im");
    std::fs::write(&p, spool::im_zip(XML)).unwrap();
    assert_eq!(Transcript::open(&p).unwrap(), plain);
    std::fs::write(&p, XML).unwrap();
    assert_eq!(Transcript::open(&p).unwrap(), plain);
    std::fs::write(&p, b"").unwrap();
    assert!(Transcript::open(&p).is_err());
}

#[test]
fn messages_json_exact_shape() {
    let t = Transcript::from_bytes(XML.as_bytes()).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&messages_json(&t, "rec-1")).unwrap();
    let expected = serde_json::json!({
        "record_id": "rec-1",
        "conversation_id": "c-77",
        "kind": "group",
        "title": "Rates desk",
        "owner": "u-1001",
        "participants": [
            {"id": "u-1001", "address": "ann@corp.example", "name": "Ann Trader", "internal": true},
            {"id": "x-9", "address": "carl@partner.example", "name": "Carl", "internal": false}
        ],
        "messages": [
            {"id": "m-1", "time": "2026-11-21T14:03:07.120Z", "from": "u-1001", "text": "Morning",
             "deleted": false, "deleted_at": null, "edits": [], "attachments": []},
            {"id": "m-2", "time": "2026-11-21T14:04:00.000Z", "from": "x-9", "text": "oops",
             "deleted": true, "deleted_at": "2026-11-21T14:05:00.000Z", "edits": [], "attachments": []},
            {"id": "m-3", "time": "2026-11-22T00:06:00.000Z", "from": "u-1001", "text": "v3 text",
             "deleted": false, "deleted_at": null,
             "edits": [
                {"time": "2026-11-22T00:06:30.000Z", "by": "u-1001", "text": "v1 text"},
                {"time": "2026-11-22T00:07:00.000Z", "by": "x-9", "text": "v2 text"}
             ],
             "attachments": ["term-sheet.pdf", "rates.xlsx"]}
        ]
    });
    assert_eq!(v, expected);
}

#[test]
fn zip_bombs_are_refused() {
    // Ratio: 4 MiB of blanks deflate to a few KiB.
    let mut big = XML.replace("Morning", &" ".repeat(4 << 20));
    big.push(' ');
    assert!(matches!(
        Transcript::from_bytes(&spool::im_zip(&big)),
        Err(ImError::ZipBomb(_))
    ));

    // Declared size over the 256 MiB cap: refused before inflating.
    let mut z = spool::im_zip(XML);
    patch_sizes(&mut z, None, Some(300 << 20), None);
    assert!(matches!(
        Transcript::from_bytes(&z),
        Err(ImError::ZipBomb(_))
    ));

    // Declared size lies low: reading stops one byte past it.
    let mut z = spool::im_zip(XML);
    patch_sizes(&mut z, None, Some(100), None);
    assert!(matches!(
        Transcript::from_bytes(&z),
        Err(ImError::ZipBomb(_))
    ));
}

#[test]
fn hostile_containers_are_refused() {
    for name in [
        "../transcript.xml",
        "/transcript.xml",
        "a\\transcript.xml",
        "x/../../transcript.xml",
    ] {
        let z = spool::zip_entries(&[(name, XML.as_bytes())]);
        assert!(
            matches!(Transcript::from_bytes(&z), Err(ImError::UnsafeEntry(_))),
            "{name}"
        );
    }
    let z = spool::zip_entries(&[("other.xml", XML.as_bytes())]);
    assert!(matches!(
        Transcript::from_bytes(&z),
        Err(ImError::ZipLayout(_))
    ));
    let z = spool::zip_entries(&[("transcript.xml", XML.as_bytes()), ("extra.bin", b"x")]);
    assert!(matches!(
        Transcript::from_bytes(&z),
        Err(ImError::ZipLayout(_))
    ));
    let mut z = spool::im_zip(XML);
    patch_sizes(&mut z, None, None, Some(1));
    assert!(matches!(
        Transcript::from_bytes(&z),
        Err(ImError::Encrypted(_))
    ));
    let mut z = spool::im_zip(XML);
    let n = z.len();
    z.truncate(n - 30);
    assert!(matches!(Transcript::from_bytes(&z), Err(ImError::Zip(_))));
}

#[test]
fn entity_bomb_and_external_entities_are_refused() {
    let lol = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<transcript conversation_id="c" kind="team"><message id="m" timestamp="2026.11.21 01:00:00.000" from="u">&lol2;</message></transcript>"#;
    assert!(matches!(
        Transcript::from_bytes(lol.as_bytes()),
        Err(ImError::Xml(XmlError::Doctype))
    ));
    assert!(matches!(
        Transcript::from_bytes(&spool::im_zip(lol)),
        Err(ImError::Xml(XmlError::Doctype))
    ));
    let xxe = XML.replace(">Morning<", ">&xxe;<");
    assert!(matches!(
        Transcript::from_bytes(xxe.as_bytes()),
        Err(ImError::Xml(XmlError::Entity(_)))
    ));
    let missing = XML.replace(r#" from="x-9" deleted"#, " deleted");
    assert!(matches!(
        Transcript::from_bytes(missing.as_bytes()),
        Err(ImError::Missing("message", "from"))
    ));
}

#[test]
fn arbitrary_bytes_never_panic() {
    let base = spool::im_zip(XML);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..2000 {
        let mut b = if i % 2 == 0 {
            base.clone()
        } else {
            XML.as_bytes().to_vec()
        };
        for _ in 0..(1 + i % 8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let pos = (seed as usize) % b.len();
            b[pos] = (seed >> 32) as u8;
        }
        let _ = Transcript::from_bytes(&b);
        let _ = Transcript::from_bytes(&b[..(seed as usize) % b.len()]);
    }
}
