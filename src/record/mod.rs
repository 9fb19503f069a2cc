//! A conversation record: the recorder's metadata XML (spool.md), parsed from
//! bytes. Pure: never touches a file; path safety of `<files>` is checked too.

pub mod im;
pub mod xml;

use quick_xml::events::{BytesStart, Event};

use crate::record::xml::XmlError;
use crate::time::Timestamp;

/// The largest metadata XML accepted (bytes).
pub const MAX_XML_BYTES: usize = 4 << 20;
const MAX_DEPTH: usize = 32;
const MAX_FIELD: usize = 64 << 10;
const MAX_FILES: usize = 10_000;
const MAX_PARTICIPANTS: usize = 10_000;

/// The conversation type (`modality_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    /// Voice call.
    Voice,
    /// Video call.
    Video,
    /// Screen recording.
    Screen,
    /// Application share.
    Share,
    /// Instant messages.
    Im,
    /// File transfer.
    FileShare,
    /// Text message.
    Sms,
}

impl Modality {
    /// All modalities.
    pub const ALL: [Modality; 7] = [
        Modality::Voice,
        Modality::Video,
        Modality::Screen,
        Modality::Share,
        Modality::Im,
        Modality::FileShare,
        Modality::Sms,
    ];

    /// The spool's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Voice => "voice",
            Modality::Video => "video",
            Modality::Screen => "screen",
            Modality::Share => "share",
            Modality::Im => "im",
            Modality::FileShare => "file_share",
            Modality::Sms => "sms",
        }
    }

    /// Parses the spool's spelling.
    pub fn parse(s: &str) -> Option<Modality> {
        Modality::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// A file's role in `<files>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileRole {
    /// Audio/video/screen media.
    Media,
    /// A transcript (`.vtr`, `.im`).
    Transcript,
    /// An IM attachment (carries `message_id`).
    Attachment,
    /// Anything else.
    Other,
}

impl FileRole {
    /// The spool's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FileRole::Media => "media",
            FileRole::Transcript => "transcript",
            FileRole::Attachment => "attachment",
            FileRole::Other => "other",
        }
    }
}

/// One `<file>` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// Role.
    pub role: FileRole,
    /// Path relative to the XML's folder, already checked to be safe.
    pub path: String,
    /// For attachments, the message they belong to.
    pub message_id: Option<String>,
}

impl FileRef {
    /// The last path component.
    pub fn base_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// Whether the file is age-encrypted (by its `.age` suffix).
    pub fn is_encrypted(&self) -> bool {
        self.path.ends_with(".age")
    }
}

/// One `<participant>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Participant {
    /// Directory or platform id.
    pub id: String,
    /// Address (mail, SIP URI or number).
    pub address: String,
    /// Display name.
    pub name: String,
    /// Inside the firm.
    pub internal: bool,
}

/// A parsed metadata XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Conversation UUID.
    pub id: String,
    /// Conversation type.
    pub modality: Modality,
    /// Integration id.
    pub source_platform: String,
    /// Recorded by the secondary recorder of a 2N pair.
    pub secondary: bool,
    /// Imported from another system.
    pub imported: bool,
    /// Metadata without media.
    pub cdr_only: bool,
    /// Platform id.
    pub native_id: String,
    /// Platform call id.
    pub native_call_id: String,
    /// Recorder host name.
    pub location: String,
    /// Start (UTC).
    pub start_time: Timestamp,
    /// End (UTC).
    pub end_time: Timestamp,
    /// Call direction, if given.
    pub direction: Option<String>,
    /// The recorded line; the key for policy assignment.
    pub recorded_extension: String,
    /// Calling party number/URI.
    pub source_caller_id: String,
    /// Calling party name.
    pub source_name: Option<String>,
    /// Called party number/URI.
    pub destination_caller_id: Option<String>,
    /// Called party name.
    pub destination_name: Option<String>,
    /// Participants (IM, conferences).
    pub participants: Vec<Participant>,
    /// Listed content files.
    pub files: Vec<FileRef>,
}

/// Why a metadata XML was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Larger than [`MAX_XML_BYTES`].
    #[error("metadata XML is {0} bytes, over the {MAX_XML_BYTES}-byte limit")]
    TooLarge(u64),
    /// XML-level problem.
    #[error(transparent)]
    Xml(#[from] XmlError),
    /// The root element is not `recording`.
    #[error("root element is <{0}>, expected <recording>")]
    Root(String),
    /// A required element is missing or empty.
    #[error("required element <{0}> is missing or empty")]
    Missing(&'static str),
    /// A value could not be read.
    #[error("element <{0}>: {1}")]
    Invalid(&'static str, String),
    /// A `<files>` path is unsafe.
    #[error("unsafe file path {path:?} in <files>: {why}")]
    UnsafePath {
        /// The path as written.
        path: String,
        /// Why it is refused.
        why: &'static str,
    },
}

impl RecordError {
    /// The audit `error_code` of a refused metadata XML: `unsafe_path` for
    /// a `<files>` path that is absolute or has a `..` component (the
    /// documented code for containment failures), else `bad_metadata`.
    pub fn audit_code(&self) -> &'static str {
        match self {
            RecordError::UnsafePath { .. } => "unsafe_path",
            _ => "bad_metadata",
        }
    }
}

/// Checks a `<files>` entry: relative, no `..`, no empty or control characters.
pub fn check_relative_path(p: &str) -> Result<(), &'static str> {
    if p.is_empty() {
        return Err("empty path");
    }
    if p.starts_with('/') {
        return Err("absolute paths are not allowed");
    }
    if p.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("control characters are not allowed");
    }
    if p.contains('\\') {
        return Err("backslashes are not allowed");
    }
    for c in p.split('/') {
        match c {
            ".." => return Err("`..` components are not allowed"),
            "" | "." => return Err("empty or `.` components are not allowed"),
            _ if c.len() > 255 => return Err("a component is longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

fn parse_bool(field: &'static str, s: &str) -> Result<bool, RecordError> {
    match s.trim() {
        "true" | "1" | "yes" | "TRUE" | "True" => Ok(true),
        "false" | "0" | "no" | "FALSE" | "False" | "" => Ok(false),
        other => Err(RecordError::Invalid(
            field,
            format!("{other:?} is not true or false"),
        )),
    }
}

#[derive(Default)]
struct Fields {
    id: Option<String>,
    modality: Option<String>,
    source_platform: Option<String>,
    secondary: Option<String>,
    imported: Option<String>,
    cdr_only: Option<String>,
    native_id: Option<String>,
    native_call_id: Option<String>,
    location: Option<String>,
    start_time: Option<String>,
    end_time: Option<String>,
    direction: Option<String>,
    recorded_extension: Option<String>,
    source_caller_id: Option<String>,
    source_name: Option<String>,
    destination_caller_id: Option<String>,
    destination_name: Option<String>,
}

impl Fields {
    fn slot(&mut self, name: &str) -> Option<&mut Option<String>> {
        Some(match name {
            "id" => &mut self.id,
            "modality_id" => &mut self.modality,
            "source_platform" => &mut self.source_platform,
            "secondary" => &mut self.secondary,
            "imported" => &mut self.imported,
            "cdr_only" => &mut self.cdr_only,
            "native_id" => &mut self.native_id,
            "native_call_id" => &mut self.native_call_id,
            "location" => &mut self.location,
            "start_time" => &mut self.start_time,
            "end_time" => &mut self.end_time,
            "direction" => &mut self.direction,
            "recorded_extension" => &mut self.recorded_extension,
            "source_caller_id" => &mut self.source_caller_id,
            "source_name" => &mut self.source_name,
            "destination_caller_id" => &mut self.destination_caller_id,
            "destination_name" => &mut self.destination_name,
            _ => return None,
        })
    }
}

fn required(v: Option<String>, name: &'static str) -> Result<String, RecordError> {
    match v {
        Some(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(RecordError::Missing(name)),
    }
}

fn optional(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Parses a metadata XML (already decrypted when it was `.xml.age`).
pub fn parse(bytes: &[u8]) -> Result<Record, RecordError> {
    if bytes.len() > MAX_XML_BYTES {
        return Err(RecordError::TooLarge(bytes.len() as u64));
    }
    let text = xml::check_utf8(bytes)?;
    let read = read_elements(text)?;
    build_record(read.f, read.participants, read.files)
}

/// What has been read of a metadata XML so far.
#[derive(Default)]
struct Reading {
    f: Fields,
    files: Vec<FileRef>,
    participants: Vec<Participant>,
    // Path of open elements below the root: names only.
    stack: Vec<String>,
    seen_root: bool,
    text_buf: String,
    // Which element's text we are collecting (depth 1 field, or <file>).
    collecting: Option<(usize, String)>,
    file_attrs: Option<(FileRole, Option<String>)>,
}

/// Reads every element of a metadata XML into its fields, participants
/// and files, within the limits (depth, field size, counts).
fn read_elements(text: &str) -> Result<Reading, RecordError> {
    let mut r = xml::reader(text);
    let mut s = Reading::default();
    loop {
        let ev = r.read_event().map_err(|e| xml::malformed(&r, e))?;
        let more = match &ev {
            Event::Eof => false,
            Event::DocType(_) => return Err(XmlError::Doctype.into()),
            Event::Start(e) | Event::Empty(e) => s.open(&r, e, matches!(ev, Event::Empty(_)))?,
            Event::End(_) => s.close()?,
            other => {
                s.text(&r, other)?;
                true
            }
        };
        if !more {
            break;
        }
    }
    if !s.seen_root {
        return Err(XmlError::Malformed {
            pos: 0,
            msg: "no root element".into(),
        }
        .into());
    }
    Ok(s)
}

impl Reading {
    /// An element opens (`empty`: and closes at once). Returns whether
    /// reading goes on.
    fn open<R>(
        &mut self,
        r: &quick_xml::Reader<R>,
        e: &BytesStart<'_>,
        empty: bool,
    ) -> Result<bool, RecordError> {
        let name = xml::local_name(e);
        if !self.seen_root {
            if name != "recording" {
                return Err(RecordError::Root(name));
            }
            self.seen_root = true;
            return Ok(!empty);
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(XmlError::TooDeep(MAX_DEPTH).into());
        }
        let depth = self.stack.len() + 1;
        let parent = self.stack.last().map(String::as_str);
        match (depth, parent, name.as_str()) {
            (2, Some("participants"), "participant") => {
                if self.participants.len() >= MAX_PARTICIPANTS {
                    return Err(RecordError::Invalid("participants", "too many".into()));
                }
                self.participants.push(participant(r, e)?);
            }
            (2, Some("files"), "file") => {
                if self.files.len() >= MAX_FILES {
                    return Err(RecordError::Invalid("files", "too many".into()));
                }
                let role = file_role(xml::attr(r, e, b"role")?.as_deref().map(str::trim))?;
                let mid = xml::attr(r, e, b"message_id")?.filter(|s| !s.is_empty());
                if empty {
                    return Err(RecordError::UnsafePath {
                        path: String::new(),
                        why: "empty path",
                    });
                }
                self.file_attrs = Some((role, mid));
                self.collecting = Some((depth, "file".into()));
                self.text_buf.clear();
            }
            (1, _, n) if !empty && self.f.slot(n).is_some() => {
                self.collecting = Some((depth, n.to_string()));
                self.text_buf.clear();
            }
            (1, _, n) if empty => {
                if let Some(slot) = self.f.slot(n) {
                    *slot = Some(String::new());
                }
            }
            _ => {}
        }
        if !empty {
            self.stack.push(name);
        }
        Ok(true)
    }

    /// An element closes. Returns whether reading goes on (not after
    /// `</recording>`).
    fn close(&mut self) -> Result<bool, RecordError> {
        let depth = self.stack.len();
        if depth == 0 {
            // </recording>
            return Ok(false);
        }
        if let Some((d, name)) = self.collecting.take() {
            if d == depth {
                let value = std::mem::take(&mut self.text_buf);
                if name == "file" {
                    let (role, message_id) =
                        self.file_attrs.take().unwrap_or((FileRole::Media, None));
                    let path = value.trim().to_string();
                    check_relative_path(&path).map_err(|why| RecordError::UnsafePath {
                        path: path.clone(),
                        why,
                    })?;
                    self.files.push(FileRef {
                        role,
                        path,
                        message_id,
                    });
                } else if let Some(slot) = self.f.slot(&name) {
                    *slot = Some(value);
                }
            } else {
                self.collecting = Some((d, name));
            }
        }
        self.stack.pop();
        Ok(true)
    }

    /// Text, CDATA or a reference: kept when inside a collected element.
    fn text<R>(&mut self, r: &quick_xml::Reader<R>, ev: &Event<'_>) -> Result<(), RecordError> {
        if let Some((d, name)) = &self.collecting {
            if *d == self.stack.len() {
                xml::push_text(r, ev, &mut self.text_buf, MAX_FIELD, name)?;
            }
        } else if let Event::GeneralRef(g) = ev {
            // Still refuse undefined entities anywhere in the document.
            xml::resolve_ref(r, g)?;
        }
        Ok(())
    }
}

/// One `<participant>` from its attributes.
fn participant<R>(
    r: &quick_xml::Reader<R>,
    e: &BytesStart<'_>,
) -> Result<Participant, RecordError> {
    Ok(Participant {
        id: xml::attr(r, e, b"id")?.unwrap_or_default(),
        address: xml::attr(r, e, b"address")?.unwrap_or_default(),
        name: xml::attr(r, e, b"name")?.unwrap_or_default(),
        internal: parse_bool(
            "participant",
            &xml::attr(r, e, b"internal")?.unwrap_or_default(),
        )?,
    })
}

/// A `<file>`'s `role` attribute (media when absent).
fn file_role(role: Option<&str>) -> Result<FileRole, RecordError> {
    match role {
        Some("media") | None => Ok(FileRole::Media),
        Some("transcript") => Ok(FileRole::Transcript),
        Some("attachment") => Ok(FileRole::Attachment),
        Some("other") => Ok(FileRole::Other),
        Some(x) => Err(RecordError::Invalid(
            "file",
            format!("unknown role {x:?} (media, transcript, attachment or other)"),
        )),
    }
}

/// The record from the fields read: required ones present, values valid.
fn build_record(
    f: Fields,
    participants: Vec<Participant>,
    files: Vec<FileRef>,
) -> Result<Record, RecordError> {
    let modality_s = required(f.modality, "modality_id")?;
    let modality = Modality::parse(&modality_s).ok_or_else(|| {
        RecordError::Invalid(
            "modality_id",
            format!(
                "unknown modality {modality_s:?} (voice, video, screen, share, im, file_share, sms)"
            ),
        )
    })?;
    let ts = |v: Option<String>, name: &'static str| -> Result<Timestamp, RecordError> {
        let s = required(v, name)?;
        Timestamp::parse_recorder(&s).map_err(|e| RecordError::Invalid(name, e.to_string()))
    };
    let cdr_only = parse_bool("cdr_only", f.cdr_only.as_deref().unwrap_or(""))?;
    let id = required(f.id, "id")?;
    Ok(Record {
        id,
        modality,
        source_platform: required(f.source_platform, "source_platform")?,
        secondary: parse_bool("secondary", f.secondary.as_deref().unwrap_or(""))?,
        imported: parse_bool("imported", f.imported.as_deref().unwrap_or(""))?,
        cdr_only,
        native_id: required(f.native_id, "native_id")?,
        native_call_id: required(f.native_call_id, "native_call_id")?,
        location: required(f.location, "location")?,
        start_time: ts(f.start_time, "start_time")?,
        end_time: ts(f.end_time, "end_time")?,
        direction: optional(f.direction),
        recorded_extension: required(f.recorded_extension, "recorded_extension")?,
        source_caller_id: required(f.source_caller_id, "source_caller_id")?,
        source_name: optional(f.source_name),
        destination_caller_id: optional(f.destination_caller_id),
        destination_name: optional(f.destination_name),
        participants,
        files,
    })
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// A valid voice record.
    pub(crate) const SAMPLE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<recording>
  <id>0b6f3c1e-1111-4a3b-9c6d-000000000001</id>
  <modality_id>voice</modality_id>
  <source_platform>ipc_unigy</source_platform>
  <secondary>false</secondary>
  <native_id>N-1</native_id>
  <native_call_id>C-1</native_call_id>
  <location>ny-rec01</location>
  <start_time>2026.11.21 14:03:07.120</start_time>
  <end_time>2026.11.21 14:05:00.000</end_time>
  <direction>pstn_in</direction>
  <recorded_extension>+1 212 555 0100</recorded_extension>
  <source_caller_id>+442079460958</source_caller_id>
  <source_name>Bob &amp; Co</source_name>
  <vendor_extra><deep a="1">kept</deep></vendor_extra>
  <participants>
    <participant id="u-1001" address="ann@corp.example" name="Ann" internal="true"/>
  </participants>
  <files>
    <file role="media">call.wav</file>
    <file role="transcript">sub/call.vtr.age</file>
  </files>
</recording>"#;
}

#[cfg(test)]
mod tests {
    use super::tests_support::SAMPLE;
    use super::*;

    #[test]
    fn parses_sample() {
        let r = parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(r.id, "0b6f3c1e-1111-4a3b-9c6d-000000000001");
        assert_eq!(r.modality, Modality::Voice);
        assert_eq!(r.source_name.as_deref(), Some("Bob & Co"));
        assert_eq!(
            r.start_time.recorder().to_string(),
            "2026.11.21 14:03:07.120"
        );
        assert_eq!(r.files.len(), 2);
        assert_eq!(r.files[1].base_name(), "call.vtr.age");
        assert!(r.files[1].is_encrypted());
        assert_eq!(r.participants[0].name, "Ann");
        assert!(r.participants[0].internal);
        assert!(!r.secondary && !r.imported && !r.cdr_only);
    }

    #[test]
    fn refuses_hostile_and_broken_input() {
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><recording><id>&b;</id></recording>"#;
        assert!(matches!(
            parse(bomb.as_bytes()),
            Err(RecordError::Xml(XmlError::Doctype))
        ));
        let ext = SAMPLE.replace("Bob &amp; Co", "&xxe;");
        assert!(matches!(
            parse(ext.as_bytes()),
            Err(RecordError::Xml(XmlError::Entity(_)))
        ));
        let trav = SAMPLE.replace("call.wav<", "../../etc/shadow<");
        let e = parse(trav.as_bytes()).unwrap_err();
        assert!(matches!(e, RecordError::UnsafePath { .. }));
        assert_eq!(e.audit_code(), "unsafe_path");
        let inner = SAMPLE.replace("call.wav<", "sub/../call.wav<");
        assert_eq!(
            parse(inner.as_bytes()).unwrap_err().audit_code(),
            "unsafe_path"
        );
        let abs = SAMPLE.replace("call.wav<", "/etc/shadow<");
        assert!(matches!(
            parse(abs.as_bytes()),
            Err(RecordError::UnsafePath { .. })
        ));
        let unk = SAMPLE.replace(">voice<", ">hologram<");
        assert!(matches!(
            parse(unk.as_bytes()),
            Err(RecordError::Invalid("modality_id", _))
        ));
        let missing = SAMPLE.replace("<location>ny-rec01</location>", "");
        assert_eq!(
            parse(missing.as_bytes()),
            Err(RecordError::Missing("location"))
        );
        let mut bad = SAMPLE.as_bytes().to_vec();
        bad[200] = 0xff;
        assert!(matches!(
            parse(&bad),
            Err(RecordError::Xml(XmlError::NotUtf8(200)))
        ));
        assert!(matches!(
            parse(b"<recording><id>x</recording>"),
            Err(RecordError::Xml(_))
        ));
        assert!(matches!(parse(b"<other/>"), Err(RecordError::Root(_))));
        assert_eq!(parse(b"<other/>").unwrap_err().audit_code(), "bad_metadata");
        let big = vec![b' '; MAX_XML_BYTES + 1];
        assert!(matches!(parse(&big), Err(RecordError::TooLarge(_))));
        let nul = SAMPLE.replace("call.wav<", "ca\u{1}ll.wav<");
        assert!(matches!(
            parse(nul.as_bytes()),
            Err(RecordError::UnsafePath { .. })
        ));
    }

    #[test]
    fn char_refs_and_cdata() {
        let s = SAMPLE.replace("Bob &amp; Co", "B&#x6F;b <![CDATA[<&>]]>");
        assert_eq!(
            parse(s.as_bytes()).unwrap().source_name.as_deref(),
            Some("Bob <&>")
        );
    }
}
