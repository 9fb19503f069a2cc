//! The streaming transcript reader and `messages.json` writer against the
//! in-memory oracle (`Transcript::from_bytes` + `messages_json`): the same
//! bytes for every good transcript (plain or ZIP, from a file or from a
//! stream read one byte at a time), the same refusal for every bad one.

#[path = "fixtures/im/spool.rs"]
mod spool;

use std::io::{Read, Write};

use exportd::record::im::stream::{ImSource, MessagesJson, TranscriptIndex, io_to_im, xml_reader};
use exportd::record::im::{ImError, Transcript, messages_json};

const XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<transcript conversation_id="c-77" kind="group" title="Rates &amp; &quot;desk&quot; ü 日本" owner="u-1001">
  <message id="m-0" timestamp="2026.11.21 14:00:00.000" from="x-9"/>
  <participants>
    <participant id="u-1001" address="ann@corp.example" name="Ann Trader" internal="true"/>
    <participant id="x-9" address="carl@partner.example" name="Carl \ back" internal="false"/>
  </participants>
  <attachment message_id="m-3" file="early.pdf"/>
  <message id="m-1" timestamp="2026.11.21 14:03:07.120" from="u-1001">Morning
 second line	tab "quoted" ü 日本 😀 &#x1F600; &lt;b&gt;</message>
  <message id="m-2" timestamp="2026.11.21 14:04:00.000" from="x-9" deleted="true"
           deleted_at="2026.11.21 14:05:00.000" deleted_by="x-9"><![CDATA[oops <raw>]]></message>
  <message id="m-3" timestamp="2026.11.22 00:06:00.000" from="u-1001">
    v3 text<edit timestamp="2026.11.22 00:06:30.000" by="u-1001">v1 text</edit><edit timestamp="2026.11.22 00:07:00.000" by="x-9">v2 text</edit>
  </message>
  <unknown><message id="nested" timestamp="x" from="y">ignored</message></unknown>
  <attachment message_id="m-3" file="term-sheet.pdf"/>
  <attachment message_id="m-1" file="rates.xlsx"/>
  <attachment message_id="m-9" file="orphan.bin"/>
</transcript>
"#;

/// Reads at most `n` bytes per call: cuts every UTF-8 sequence and ZIP
/// header somewhere.
struct Trickle<R>(R, usize);

impl<R: Read> Read for Trickle<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.1);
        self.0.read(&mut buf[..n])
    }
}

fn oracle(bytes: &[u8]) -> Result<Vec<u8>, ImError> {
    Transcript::from_bytes(bytes).map(|t| messages_json(&t, "rec-1"))
}

/// Both passes over `open()`, as the exporter runs them.
fn streamed<'a>(open: &mut dyn FnMut() -> ImSource<'a>) -> Result<Vec<u8>, ImError> {
    let index = TranscriptIndex::build(xml_reader(open())?)?;
    let mut out = Vec::new();
    MessagesJson::new(xml_reader(open())?, &index, "rec-1")
        .read_to_end(&mut out)
        .map_err(io_to_im)?;
    Ok(out)
}

fn via_file(bytes: &[u8]) -> Result<Vec<u8>, ImError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("chat.im");
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    streamed(&mut || ImSource::File(std::fs::File::open(&p).unwrap()))
}

fn via_stream(bytes: &[u8], chunk: usize) -> Result<Vec<u8>, ImError> {
    let owned = bytes.to_vec();
    streamed(&mut || {
        ImSource::Stream(Box::new(Trickle(
            std::io::Cursor::new(owned.clone()),
            chunk,
        )))
    })
}

fn same(bytes: &[u8], what: &str) {
    let want = oracle(bytes);
    let got = [
        ("file", via_file(bytes)),
        ("stream/1", via_stream(bytes, 1)),
        ("stream/3", via_stream(bytes, 3)),
        ("stream/64k", via_stream(bytes, 64 << 10)),
    ];
    for (how, g) in got {
        match (&want, &g) {
            (Ok(w), Ok(g)) => assert!(
                w == g,
                "{what} via {how}: streamed output differs:\n--- oracle\n{}\n--- streamed\n{}",
                String::from_utf8_lossy(w),
                String::from_utf8_lossy(g)
            ),
            (Err(w), Err(g)) => assert_eq!(
                std::mem::discriminant(w),
                std::mem::discriminant(g),
                "{what} via {how}: oracle {w:?}, streamed {g:?}"
            ),
            _ => panic!("{what} via {how}: oracle {want:?}, streamed {g:?}"),
        }
    }
}

#[test]
fn streamed_messages_json_equals_the_in_memory_one() {
    same(XML.as_bytes(), "plain");
    same(&spool::im_zip(XML), "zip");
    let empty = r#"<transcript conversation_id="c" kind="direct"></transcript>"#;
    same(empty.as_bytes(), "no participants, no messages");
    same(
        r#"<transcript conversation_id="c" kind="team"/>"#.as_bytes(),
        "empty root",
    );
    let one = r#"<transcript conversation_id="c" kind="direct"><participants/><message id="a" timestamp="2026.11.21 14:00:00.000" from="u">x</message></transcript>"#;
    same(one.as_bytes(), "one message");
    same(&spool::im_zip(one), "one message, zipped");
    // A BOM, and a stored (uncompressed) entry.
    let bom = format!("\u{feff}{XML}");
    same(bom.as_bytes(), "BOM");
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file(
        "transcript.xml",
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored),
    )
    .unwrap();
    w.write_all(XML.as_bytes()).unwrap();
    same(&w.finish().unwrap().into_inner(), "stored zip");
}

#[test]
fn streamed_refusals_match_the_in_memory_ones() {
    let bad_utf8 = {
        let mut b = XML.as_bytes().to_vec();
        let at = XML.find("Morning").unwrap();
        b[at + 2] = 0xC3; // a lead byte followed by ASCII
        b
    };
    let cut_utf8 = {
        let s = XML.replace("</transcript>", "");
        let mut b = s.as_bytes().to_vec();
        b.extend_from_slice("日".as_bytes().get(..2).unwrap());
        b
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad utf8", bad_utf8.clone()),
        (
            "bad utf8, zipped",
            spool::zip_entries(&[("transcript.xml", &bad_utf8)]),
        ),
        ("cut utf8 at the end", cut_utf8),
        (
            "doctype",
            XML.replace("<transcript ", "<!DOCTYPE x><transcript ")
                .into_bytes(),
        ),
        ("entity", XML.replace("Morning", "&xxe;").into_bytes()),
        ("root", b"<recording/>".to_vec()),
        ("empty", Vec::new()),
        ("three bytes", b"<tr".to_vec()),
        ("truncated", XML.as_bytes()[..300].to_vec()),
        (
            "kind",
            XML.replace("kind=\"group\"", "kind=\"x\"").into_bytes(),
        ),
        ("after root", format!("{XML}<x/>").into_bytes()),
        ("garbage zip", b"PK\x03\x04garbage".to_vec()),
        (
            "two entries",
            spool::zip_entries(&[("transcript.xml", XML.as_bytes()), ("b", b"x")]),
        ),
        (
            "other name",
            spool::zip_entries(&[("other.xml", XML.as_bytes())]),
        ),
        (
            "unsafe name",
            spool::zip_entries(&[("../transcript.xml", XML.as_bytes())]),
        ),
        ("truncated zip", {
            let mut z = spool::im_zip(XML);
            let n = z.len();
            z.truncate(n - 30);
            z
        }),
        (
            "ratio",
            spool::im_zip(&XML.replace("Morning", &" ".repeat(4 << 20))),
        ),
    ];
    for (what, bytes) in &cases {
        same(bytes, what);
    }
}

/// A ZIP written to a pipe: sizes and CRC in a data descriptor after the data.
fn streamed_zip(xml: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = zip::ZipWriter::new_stream(&mut out);
        w.start_file(
            "transcript.xml",
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated),
        )
        .unwrap();
        w.write_all(xml).unwrap();
        w.finish().unwrap();
    }
    out
}

#[test]
fn zips_with_a_data_descriptor_stream_too() {
    let z = streamed_zip(XML.as_bytes());
    assert_ne!(
        u16::from_le_bytes([z[6], z[7]]) & 8,
        0,
        "a data descriptor is used"
    );
    same(&z, "data descriptor");
    // A corrupt descriptor CRC is refused, as in memory.
    let mut bad = z.clone();
    let cd = bad.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap();
    let dd = bad[..cd]
        .windows(4)
        .rposition(|w| w == b"PK\x07\x08")
        .unwrap();
    bad[dd + 4] ^= 0xFF;
    assert!(via_stream(&bad, 7).is_err());
    // A second entry after the first is refused.
    let two = {
        let mut out = Vec::new();
        {
            let mut w = zip::ZipWriter::new_stream(&mut out);
            for name in ["transcript.xml", "x.bin"] {
                w.start_file(name, zip::write::SimpleFileOptions::default())
                    .unwrap();
                w.write_all(XML.as_bytes()).unwrap();
            }
            w.finish().unwrap();
        }
        out
    };
    same(&two, "two entries, data descriptors");
}

#[test]
fn a_corrupt_entry_is_refused_by_its_checksum() {
    // Flip a byte inside the stored data: the in-memory reader and the
    // streamed ones both refuse it (CRC-32).
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file(
        "transcript.xml",
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored),
    )
    .unwrap();
    w.write_all(XML.as_bytes()).unwrap();
    let mut z = w.finish().unwrap().into_inner();
    let at = z.windows(7).position(|w| w == b"Morning").unwrap();
    z[at] = b'W';
    assert!(oracle(&z).is_err());
    same(&z, "crc");
}
