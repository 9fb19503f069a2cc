//! Chat (IM) transcripts: the `.im` files of `im` records (spool.md), read
//! under hard caps; never writes anything.
//!
//! A `.im` file is either a ZIP archive holding exactly one entry,
//! `transcript.xml`, or that XML uncompressed; the two are told apart by the
//! ZIP local-header magic `PK\x03\x04`. ZIPs are read with hard caps (inflated
//! size, compression ratio, entry names, no encryption), and the XML with the
//! hardened helpers of [`crate::record::xml`] (no DOCTYPE, predefined entities only).
//!
//! [`parse_stream`] hands messages to a callback one at a time so a caller can
//! keep only what it needs (the compliance engine keeps one conversation);
//! [`Transcript::from_bytes`] collects everything for small consumers such as
//! the `<id>.messages.json` writer ([`messages_json`]).

mod json;
mod parser;
pub mod stream;

use std::borrow::Cow;
use std::io::{BufRead, Cursor, Read};
use std::path::Path;

pub use crate::record::Participant;
use crate::record::xml::XmlError;
use crate::time::Timestamp;

pub use json::messages_json;
pub use parser::{Parser, parse_stream};

/// The largest transcript accepted: the `.im` file itself and, for a ZIP, the
/// inflated `transcript.xml` (256 MiB).
pub const MAX_TRANSCRIPT_BYTES: u64 = 256 << 20;
/// The largest inflated/compressed ratio accepted for `transcript.xml`.
pub const MAX_RATIO: u64 = 200;
/// The ZIP local-file-header magic.
pub const ZIP_MAGIC: &[u8; 4] = b"PK\x03\x04";

const MAX_DEPTH: usize = 32;
const MAX_TEXT: usize = 4 << 20;
const MAX_ATTR_TEXT: usize = 64 << 10;
const MAX_PARTICIPANTS: usize = 100_000;
/// The most text one message may hold, its edit history included.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// A message holding more text than this is "large": one large message at a
/// time in the whole process (see [`LargeMessage`]).
pub const LARGE_MESSAGE_BYTES: usize = 1 << 20;

/// The memory budget shared by concurrent readers of transcripts (export
/// workers, compliance requests): each may hold a message of up to
/// [`LARGE_MESSAGE_BYTES`] of text at any time, but only one at a time may
/// hold a larger one (up to [`MAX_MESSAGE_BYTES`]). A parser takes this
/// permit when its message grows past the threshold and keeps it until it
/// is asked for the next item (its caller has rendered or dropped the
/// message by then) or is dropped. The holder never waits for anything
/// else, so the others only wait for it to finish one message.
#[derive(Debug)]
pub struct LargeMessage(());

/// The thread holding the permit, and how many permits it holds (a thread
/// may hold several parsers at once, e.g. a retried upload reopening its
/// source: it never waits for itself).
static LARGE_HOLDER: std::sync::Mutex<Option<(std::thread::ThreadId, usize)>> =
    std::sync::Mutex::new(None);
static LARGE_FREED: std::sync::Condvar = std::sync::Condvar::new();

impl LargeMessage {
    /// Waits for the permit.
    pub fn acquire() -> LargeMessage {
        let me = std::thread::current().id();
        let mut h = LARGE_HOLDER.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match h.as_mut() {
                None => {
                    *h = Some((me, 1));
                    break;
                }
                Some((t, n)) if *t == me => {
                    *n += 1;
                    break;
                }
                Some(_) => {
                    h = LARGE_FREED.wait(h).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
        LargeMessage(())
    }
}

impl Drop for LargeMessage {
    fn drop(&mut self) {
        let mut h = LARGE_HOLDER.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, n)) = h.as_mut() {
            *n -= 1;
            if *n == 0 {
                *h = None;
                LARGE_FREED.notify_one();
            }
        }
    }
}

/// Why a transcript was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImError {
    /// Reading the file failed.
    #[error("reading the transcript: {0}")]
    Io(#[from] std::io::Error),
    /// The file (or its inflated entry) is over [`MAX_TRANSCRIPT_BYTES`].
    #[error("transcript is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size seen (or declared).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The ZIP entry inflates beyond the caps (size or ratio): a zip bomb.
    #[error("transcript ZIP refused as a zip bomb: {0}")]
    ZipBomb(String),
    /// The ZIP container is malformed or uses an unsupported method.
    #[error("transcript ZIP is unreadable: {0}")]
    Zip(String),
    /// The ZIP does not hold exactly one entry `transcript.xml`.
    #[error("transcript ZIP layout: {0}")]
    ZipLayout(String),
    /// An entry name is absolute, has `..` or a backslash.
    #[error("transcript ZIP entry name {0:?} is unsafe (absolute, `..` or backslash)")]
    UnsafeEntry(String),
    /// An entry is encrypted (ZipCrypto or AES); never attempted.
    #[error("transcript ZIP entry {0:?} is encrypted; refused")]
    Encrypted(String),
    /// XML-level problem (including DOCTYPE / entity refusal).
    #[error(transparent)]
    Xml(#[from] XmlError),
    /// The root element is not `transcript`.
    #[error("root element is <{0}>, expected <transcript>")]
    Root(String),
    /// A required attribute is missing or empty.
    #[error("<{0}> lacks the required attribute {1:?}")]
    Missing(&'static str, &'static str),
    /// A value could not be read.
    #[error("<{0}>: {1}")]
    Invalid(&'static str, String),
}

/// The kind of conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One-on-one chat.
    Direct,
    /// Multi-person chat.
    Group,
    /// Persistent team or room.
    Team,
}

impl Kind {
    /// The transcript's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Group => "group",
            Kind::Team => "team",
        }
    }

    /// Parses the transcript's spelling.
    pub fn parse(s: &str) -> Option<Kind> {
        match s.trim() {
            "direct" => Some(Kind::Direct),
            "group" => Some(Kind::Group),
            "team" => Some(Kind::Team),
            _ => None,
        }
    }
}

/// One earlier version of a message: `<edit timestamp by>old text</edit>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// When the edit was made (UTC).
    pub timestamp: Timestamp,
    /// Who made it.
    pub by: String,
    /// The text as it was before this edit.
    pub text: String,
}

/// One `<message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Message id, unique within the conversation.
    pub id: String,
    /// When it was posted (UTC).
    pub timestamp: Timestamp,
    /// The sender's participant id.
    pub from: String,
    /// The current text: the element's own text without its `<edit>`
    /// children, surrounding whitespace trimmed.
    pub text: String,
    /// Deleted by a user (the transcript keeps it).
    pub deleted: bool,
    /// When it was deleted.
    pub deleted_at: Option<Timestamp>,
    /// Who deleted it.
    pub deleted_by: Option<String>,
    /// Edit history in document order.
    pub edits: Vec<Edit>,
}

impl Message {
    /// The last change: the latest edit or deletion, else the posting time.
    pub fn last_modified(&self) -> Timestamp {
        let mut t = self.timestamp;
        for e in &self.edits {
            t = t.max(e.timestamp);
        }
        if let Some(d) = self.deleted_at {
            t = t.max(d);
        }
        t
    }
}

/// One `<attachment message_id file/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The message it belongs to.
    pub message_id: String,
    /// The file's name (as listed by the record's `role="attachment"` file).
    pub file: String,
}

/// The conversation-level part of a transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Conversation id, shared by all records of the conversation.
    pub conversation_id: String,
    /// Direct, group or team.
    pub kind: Kind,
    /// Title (may be empty).
    pub title: String,
    /// The participant id who started it (may be empty).
    pub owner: String,
    /// Participants.
    pub participants: Vec<Participant>,
}

/// A message or attachment as it streams out of [`parse_stream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A `<message>`.
    Message(Message),
    /// An `<attachment>`.
    Attachment(Attachment),
}

/// A whole transcript in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// Conversation id.
    pub conversation_id: String,
    /// Direct, group or team.
    pub kind: Kind,
    /// Title.
    pub title: String,
    /// Owner participant id.
    pub owner: String,
    /// Participants.
    pub participants: Vec<Participant>,
    /// Messages in document order.
    pub messages: Vec<Message>,
    /// Attachments in document order.
    pub attachments: Vec<Attachment>,
}

impl Transcript {
    /// Parses a `.im` file's bytes (ZIP or plain XML).
    pub fn from_bytes(bytes: &[u8]) -> Result<Transcript, ImError> {
        let xml = transcript_xml(bytes)?;
        Transcript::collect(|sink| parse_stream(&xml, sink))
    }

    /// Parses a transcript XML from a reader (e.g. [`stream::xml_reader`]):
    /// the file is not held in memory, but every message is.
    pub fn from_xml<R: BufRead>(xml: R) -> Result<Transcript, ImError> {
        Transcript::collect(|sink| {
            let mut p = Parser::new(xml);
            while let Some(item) = p.next_item()? {
                sink(item);
            }
            p.finish()
        })
    }

    /// A whole transcript from a parse that hands every item to its sink,
    /// then returns the header.
    fn collect(
        parse: impl FnOnce(&mut dyn FnMut(Item)) -> Result<Header, ImError>,
    ) -> Result<Transcript, ImError> {
        let mut messages = Vec::new();
        let mut attachments = Vec::new();
        let h = parse(&mut |item| match item {
            Item::Message(m) => messages.push(m),
            Item::Attachment(a) => attachments.push(a),
        })?;
        Ok(Transcript {
            conversation_id: h.conversation_id,
            kind: h.kind,
            title: h.title,
            owner: h.owner,
            participants: h.participants,
            messages,
            attachments,
        })
    }

    /// Opens and parses a plaintext `.im` file through a read-only memory map.
    ///
    /// Files over [`MAX_TRANSCRIPT_BYTES`] are refused before mapping.
    pub fn open(path: &Path) -> Result<Transcript, ImError> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        if len > MAX_TRANSCRIPT_BYTES {
            return Err(ImError::TooLarge {
                size: len,
                limit: MAX_TRANSCRIPT_BYTES,
            });
        }
        if len == 0 {
            return Transcript::from_bytes(&[]);
        }
        let map = map_file(&file)?;
        Transcript::from_bytes(&map)
    }

    /// Attachment file names of a message, in document order.
    pub fn attachments_of<'a>(&'a self, message_id: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.attachments
            .iter()
            .filter(move |a| a.message_id == message_id)
            .map(|a| a.file.as_str())
    }
}

/// Maps a spool file read-only.
///
/// Zero-copy is chosen over copy-out: a transcript may be hundreds of MiB and
/// the parser only reads it once, front to back.
#[allow(unsafe_code)]
fn map_file(file: &std::fs::File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and private to this process. The recorder
    // closes every content file before it commits the record's metadata XML
    // (spool.md) and never modifies a committed file in place; the agent
    // never writes spool files. A truncation by a misbehaving third party
    // could raise SIGBUS while parsing — the accepted risk of mapping; the
    // bytes are otherwise treated as untrusted input.
    unsafe { memmap2::Mmap::map(file) }
}

/// Whether `bytes` start with the ZIP local-file-header magic.
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(ZIP_MAGIC)
}

/// Returns the transcript XML of a `.im` file: the inflated
/// `transcript.xml` of a ZIP (with all caps applied), or the bytes themselves.
pub fn transcript_xml(bytes: &[u8]) -> Result<Cow<'_, [u8]>, ImError> {
    if bytes.len() as u64 > MAX_TRANSCRIPT_BYTES {
        return Err(ImError::TooLarge {
            size: bytes.len() as u64,
            limit: MAX_TRANSCRIPT_BYTES,
        });
    }
    if !is_zip(bytes) {
        return Ok(Cow::Borrowed(bytes));
    }
    let zerr = |e: zip::result::ZipError| ImError::Zip(e.to_string());
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(zerr)?;
    if archive.len() != 1 {
        return Err(ImError::ZipLayout(format!(
            "{} entries, expected exactly one (transcript.xml)",
            archive.len()
        )));
    }
    let (declared, compressed) = {
        let f = archive.by_index_raw(0).map_err(zerr)?;
        let name = String::from_utf8_lossy(f.name_raw()).into_owned();
        if name.starts_with('/')
            || name.contains('\\')
            || name.split('/').any(|c| c == "..")
            || name.bytes().any(|b| b < 0x20)
        {
            return Err(ImError::UnsafeEntry(name));
        }
        if name != "transcript.xml" {
            return Err(ImError::ZipLayout(format!(
                "entry is {name:?}, expected \"transcript.xml\""
            )));
        }
        if f.encrypted() {
            return Err(ImError::Encrypted(name));
        }
        (f.size(), f.compressed_size())
    };
    check_bomb(declared, compressed)?;
    let f = archive.by_index(0).map_err(|e| match e {
        zip::result::ZipError::UnsupportedArchive(m) if m.contains("assword") => {
            ImError::Encrypted("transcript.xml".into())
        }
        other => zerr(other),
    })?;
    // The declared size may lie: read at most one byte past what we allow.
    let cap = declared.min(MAX_TRANSCRIPT_BYTES);
    let mut out = Vec::with_capacity(cap.min(16 << 20) as usize);
    f.take(cap + 1).read_to_end(&mut out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            ImError::Zip(e.to_string())
        } else {
            ImError::Io(e)
        }
    })?;
    let got = out.len() as u64;
    if got > cap {
        return Err(ImError::ZipBomb(format!(
            "entry inflates past its declared size of {declared} bytes"
        )));
    }
    check_bomb(got, compressed)?;
    Ok(Cow::Owned(out))
}

fn check_bomb(size: u64, compressed: u64) -> Result<(), ImError> {
    if size > MAX_TRANSCRIPT_BYTES {
        return Err(ImError::ZipBomb(format!(
            "inflated size {size} bytes is over the {MAX_TRANSCRIPT_BYTES}-byte cap"
        )));
    }
    // Tiny entries are exempt: a 300-byte transcript can compress 200:1 only
    // in theory, and a ratio on a handful of bytes says nothing.
    if size > 64 << 10 && size > compressed.max(1).saturating_mul(MAX_RATIO) {
        return Err(ImError::ZipBomb(format!(
            "ratio {size}:{compressed} is over {MAX_RATIO}:1"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<transcript conversation_id="c-77" kind="direct" title="Rates desk" owner="u-1001">
  <participants>
    <participant id="u-1001" address="ann@corp.example" name="Ann Trader" internal="true"/>
    <participant id="x-9" address="carl@partner.example" name="Carl" internal="false"/>
  </participants>
  <message id="m-1" timestamp="2026.11.21 14:03:07.120" from="u-1001">Morning &amp; hi</message>
  <message id="m-2" timestamp="2026.11.21 14:04:00.000" from="x-9" deleted="true"
           deleted_at="2026.11.21 14:05:00.000" deleted_by="x-9">oops</message>
  <message id="m-3" timestamp="2026.11.21 14:06:00.000" from="u-1001">
    v3 text<edit timestamp="2026.11.21 14:06:30.000" by="u-1001">v1 text</edit><edit timestamp="2026.11.21 14:07:30.000" by="u-1001">v2 text</edit>
  </message>
  <attachment message_id="m-3" file="term-sheet.pdf"/>
</transcript>"#;

    fn one_large(id: &str) -> String {
        format!(
            r#"<transcript conversation_id="c" kind="team"><message id="{id}" timestamp="2026.11.21 14:03:07.120" from="u">{}</message><message id="small" timestamp="2026.11.21 14:03:07.120" from="u">x</message></transcript>"#,
            "y".repeat(LARGE_MESSAGE_BYTES + 10)
        )
    }

    #[test]
    fn one_large_message_at_a_time_across_threads_never_within_one() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Barrier};
        let a_xml = one_large("a");
        // One thread may hold two parsers in a large message at once.
        let mut p1 = Parser::new(a_xml.as_bytes());
        let mut p2 = Parser::new(a_xml.as_bytes());
        assert!(matches!(p1.next_item(), Ok(Some(Item::Message(_)))));
        assert!(matches!(p2.next_item(), Ok(Some(Item::Message(_)))));
        drop((p1, p2));

        let held = Arc::new(Barrier::new(2));
        let b_done = Arc::new(AtomicBool::new(false));
        let (h2, d2) = (held.clone(), b_done.clone());
        let mut pa = Parser::new(a_xml.as_bytes());
        assert!(matches!(pa.next_item(), Ok(Some(Item::Message(m))) if m.id == "a"));
        let b = std::thread::spawn(move || {
            let xml = one_large("b");
            let mut pb = Parser::new(xml.as_bytes());
            h2.wait();
            let first = pb.next_item();
            d2.store(true, Ordering::SeqCst);
            assert!(matches!(first, Ok(Some(Item::Message(m))) if m.id == "b"));
            pb.finish().unwrap();
        });
        held.wait();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            !b_done.load(Ordering::SeqCst),
            "a second large message is parsed while the first is held"
        );
        // Asking for the next item releases the permit.
        assert!(matches!(pa.next_item(), Ok(Some(Item::Message(m))) if m.id == "small"));
        b.join().unwrap();
        assert!(b_done.load(Ordering::SeqCst));
        pa.finish().unwrap();
    }

    #[test]
    fn parses_sample() {
        let t = Transcript::from_bytes(SAMPLE.as_bytes()).unwrap();
        assert_eq!(t.conversation_id, "c-77");
        assert_eq!(t.kind, Kind::Direct);
        assert_eq!(t.participants.len(), 2);
        assert!(!t.participants[1].internal);
        assert_eq!(t.messages.len(), 3);
        assert_eq!(t.messages[0].text, "Morning & hi");
        assert!(t.messages[1].deleted);
        assert_eq!(t.messages[1].deleted_by.as_deref(), Some("x-9"));
        assert_eq!(t.messages[2].text, "v3 text");
        assert_eq!(t.messages[2].edits.len(), 2);
        assert_eq!(t.messages[2].edits[0].text, "v1 text");
        assert_eq!(t.messages[2].edits[1].text, "v2 text");
        assert_eq!(
            t.messages[2].last_modified().rfc3339().to_string(),
            "2026-11-21T14:07:30.000Z"
        );
        assert_eq!(
            t.attachments_of("m-3").collect::<Vec<_>>(),
            ["term-sheet.pdf"]
        );
    }

    #[test]
    fn refuses_bad_input() {
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE t [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><transcript conversation_id="c" kind="team"><message id="m" timestamp="2026.11.21 14:03:07.120" from="u">&b;</message></transcript>"#;
        assert!(matches!(
            Transcript::from_bytes(bomb.as_bytes()),
            Err(ImError::Xml(XmlError::Doctype))
        ));
        let ent = SAMPLE.replace("Morning &amp; hi", "&xxe;");
        assert!(matches!(
            Transcript::from_bytes(ent.as_bytes()),
            Err(ImError::Xml(XmlError::Entity(_)))
        ));
        let kind = SAMPLE.replace("kind=\"direct\"", "kind=\"broadcast\"");
        assert!(matches!(
            Transcript::from_bytes(kind.as_bytes()),
            Err(ImError::Invalid(..))
        ));
        let ts = SAMPLE.replace("2026.11.21 14:03:07.120", "yesterday");
        assert!(matches!(
            Transcript::from_bytes(ts.as_bytes()),
            Err(ImError::Invalid(..))
        ));
        assert!(matches!(
            Transcript::from_bytes(b"<recording/>"),
            Err(ImError::Root(_))
        ));
        assert!(Transcript::from_bytes(b"").is_err());
        assert!(Transcript::from_bytes(&SAMPLE.as_bytes()[..300]).is_err());
        assert!(Transcript::from_bytes(b"PK\x03\x04garbage").is_err());
    }
}
