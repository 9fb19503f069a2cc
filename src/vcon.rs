//! `<id>.vcon.json`: an IETF vCon (JSON format for vCon, syntax `0.4.0`, the
//! unsigned form) beside every exported record when a policy's
//! `settings.vcon` is on (export-layout.md).
//!
//! [`build_vcon`] is a pure function: no I/O, no clock, no randomness. The
//! same record, user, files and transcript always give the same bytes, so a
//! re-export writes the same `<id>.vcon.json` again (a no-op on a target).
//!
//! # Shape
//!
//! ```json
//! {
//!   "vcon": "0.4.0",
//!   "uuid": "019a8b7e-1a2b-8c3d-9e4f-0123456789ab",
//!   "created_at": "2026-11-21T14:05:00.000Z",
//!   "subject": "Rates desk",
//!   "extensions": ["exportd"],
//!   "parties": [
//!     {"tel": "+442079460001", "name": "Counterparty 7",
//!      "exportd": {"addresses": ["+44 20 7946 0001"], "roles": ["source"]}},
//!     {"tel": "+12125550001", "mailto": "trader0001@corp.example", "name": "Trader 0001",
//!      "exportd": {"addresses": ["+1 212 555 0001"], "roles": ["destination", "recorded"],
//!                  "user_id": "u-0001"}}
//!   ],
//!   "dialog": [
//!     {"type": "recording", "start": "2026-11-21T14:03:00.000Z", "duration": 120.0,
//!      "parties": [0, 1], "mediatype": "audio/x-wav", "filename": "<id>.wav",
//!      "url": "<id>.wav", "content_hash": "sha512-<base64url>", "application": "cisco",
//!      "exportd": {"role": "media", "size": 960044}}
//!   ],
//!   "attachments": [
//!     {"purpose": "transcript", "start": "2026-11-21T14:03:00.000Z", "party": 1,
//!      "dialog": 0, "mediatype": "text/vtt", "filename": "<id>.vtr", "url": "<id>.vtr",
//!      "content_hash": "sha512-<base64url>", "exportd": {"role": "transcript", "size": 61}}
//!   ],
//!   "exportd": {"record_id": "<id>", "modality": "voice", "source_platform": "cisco", "...": "..."}
//! }
//! ```
//!
//! Keys always appear in this order; `parties`, `dialog` and `attachments`
//! are always present (possibly empty). Pretty-printed UTF-8 with a final
//! newline.
//!
//! # Choices
//!
//! - **`vcon`** is `"0.4.0"` (deprecated by the draft but still defined; the
//!   contract names 0.4.0).
//! - **`uuid`** is a version 8 UUID derived from the record (see
//!   [`vcon_uuid`]): the first 48 bits are the record's `start_time` in Unix
//!   milliseconds (as in UUIDv7, so vCon ids sort by time), the other 74 free
//!   bits are the first bits of SHA-256(`"exportd/vcon/v1\0"` + record id). The
//!   draft suggests the SHA-1 of a host name for those bits; that would not be
//!   unique per record nor reproducible from the record alone, so the record
//!   id is hashed instead. The record id itself is in `exportd.record_id`.
//! - **`created_at`** is the record's `end_time` (the recorder closes a record
//!   when the conversation ends; never the wall clock, so output is
//!   deterministic).
//! - **`subject`**: the IM transcript's `title`, when there is one.
//! - **Parties**, in this order, merged when they are the same person: the
//!   source (calling party; always index 0, so every `party` index is valid),
//!   the destination, the record's `participants`, the transcript's
//!   participants, any message sender not listed, then the recorded party.
//!   Addresses are classified: `sip:`/`sips:` URIs go to `sip` (kept as
//!   written); phone numbers (`+`, digits and visual separators, at least 3
//!   digits; or `tel:` URIs) go to `tel` as `+` and digits (the optional `tel:`
//!   scheme prefix is left out); `mailto:` URIs and bare `user@host` go to
//!   `mailto` as the bare address; anything else (trader ids, platform ids)
//!   is only kept in `exportd.addresses`. Two entries are the same party when
//!   their normalised address (phone digits; `user@host` lower-cased for SIP
//!   and mail alike) or their participant id matches. The recorded party is
//!   found by `recorded_extension`, else the user's e-mail, else the user's id
//!   as a participant id; it gets the user's name and e-mail when it lacks
//!   them, and `exportd.user_id`. When the user's e-mail or id names another
//!   listed party (a chat participant while the recorded line is a phone
//!   number), the two are merged into one party, at the earlier index.
//! - **Dialogs** (`type`, `start`, `parties`, `mediatype`, ...):
//!   - a decrypted (or never encrypted) media file whose extension is a
//!     recording type is a `recording` dialog: `start` = record start,
//!     `duration` = end − start in seconds (float, millisecond precision),
//!     `parties` = every party (one mixed channel), the caller first, so no
//!     `originator`. Media types are from the draft's list (they are also
//!     in the reference validator's list): `.wav` `audio/x-wav`, `.mp3`
//!     `audio/x-mp3`, `.mp4`/`.m4a` `audio/x-mp4` for voice records and
//!     `video/x-mp4` otherwise (video, screen, share), `.ogg`/`.opus`
//!     `audio/ogg`, `.ogv` `video/ogg`;
//!   - a `.txt` file of an `sms` or `im` record is a `text` dialog
//!     (`text/plain`) referencing the file, sent by the source;
//!   - each IM message of the transcript (when given) is a `text` dialog with
//!     the message inline (`body`, `encoding: "none"`, `text/plain`), `start`
//!     = its timestamp, `parties` = sender first then the other transcript
//!     participants, `message_id` = the message id. Deleted messages are kept
//!     (compliance recording) and flagged in `exportd`; the edit log is in
//!     `exportd.edits`;
//!   - `cdr_only` records have no recording or text dialog (`"dialog": []`),
//!     whatever files are listed; listed files still become attachments.
//!   - `application` is the record's `source_platform`.
//! - **Attachments** (`purpose`, `start`, `party`, `dialog`, `mediatype`,
//!   `filename`, `url`, `content_hash`): every exported file that is not a
//!   dialog. `purpose` is one of [`purpose`]'s constants: `transcript`
//!   (`.vtr`, assumed WebVTT: `text/vtt`), `im_transcript` (the recorder's
//!   `.im`, ZIP or XML: `application/octet-stream`), `messages`
//!   (`<id>.messages.json`, `application/json`), `im_attachment`,
//!   `file_transfer` (content of `file_share` records), `media` (a media file
//!   of another type), `other`, and `encrypted`. `start` is the record start,
//!   or the message time for IM attachments. `party` is the message sender
//!   for IM attachments, the source for transferred files and other content,
//!   and the recorded party for what the recorder made (transcripts, messages
//!   JSON, encrypted files). `dialog` is the message's text dialog for IM
//!   attachments, else the first dialog; it is left out when the vCon has no
//!   dialog at all (the draft lists it as mandatory, but an index to a dialog
//!   that does not exist would be wrong; the reference validator accepts the
//!   omission).
//! - **Encrypted files**: a file exported as recorded (`decrypt` off, name
//!   ending in `.age`) holds age ciphertext, not media, so it is never a
//!   dialog: it is an attachment with purpose `encrypted`, mediatype
//!   `application/octet-stream`, `exportd.encryption = "age"` and
//!   `exportd.plaintext_mediatype` (the type of what is inside). Its
//!   `content_hash` is that of the ciphertext, i.e. of the exported bytes.
//! - **`url` and `content_hash`**: every file is referenced externally.
//!   `content_hash` is `sha512-` + base64url (no padding) of the SHA-512 of
//!   the exported bytes, computed while they were written. `url` is the file
//!   name as a relative URL reference (RFC 3986, percent-encoded; resolved
//!   against the location of the vCon itself, i.e. the record folder),
//!   because the archive's public location is not known when the vCon is
//!   written and may change; the draft asks for an HTTPS URL, which a
//!   consumer gets by resolving the reference against the HTTPS URL it
//!   fetched the vCon from. `filename` is the exported name.
//! - The metadata XML (`<id>.xml`) is written after the vCon, so the vCon does
//!   not reference it; its fields are in the `exportd` extension instead.
//!
//! # The `exportd` extension
//!
//! A compatible extension (listed in `extensions`, not in `critical`); every
//! field of it is an object named `exportd`:
//!
//! - top level: `record_id`, `modality`, `source_platform`, `native_id`,
//!   `native_call_id`, `location`, `start_time`, `end_time` (RFC 3339),
//!   `direction` (if given), `recorded_extension`, `secondary`, `imported`,
//!   `cdr_only`, `user` (`id`, `name`, `email`, when known) and, for IM,
//!   `conversation` (`id`, `kind`, `title`, `owner`);
//! - party: `addresses` (every address as the recorder wrote it), `id`
//!   (participant id), `internal`, `roles` (`source`, `destination`,
//!   `participant`, `sender`, `recorded`), `user_id`;
//! - dialog: `role` (the spool file role) and `size` (bytes) for file
//!   dialogs; `deleted`, `deleted_at`, `deleted_by`, `edits` (`time`, `by`,
//!   `text`: the text before that edit) for IM messages;
//! - attachment: `role`, `size`, `message_id`, `encryption`,
//!   `plaintext_mediatype`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use sha2::{Digest, Sha256, Sha512};

use crate::im::Transcript;
use crate::layout;
use crate::record::{FileRole, Modality, Record};
use crate::time::Timestamp;

/// The `vcon` syntax version written.
pub const VCON_VERSION: &str = "0.4.0";

/// The name of this crate's vCon extension (in `extensions`, and the key of
/// every extension object).
pub const EXTENSION: &str = "exportd";

/// The attachment `purpose` values written.
pub mod purpose {
    /// A transcript of the recording (`.vtr`).
    pub const TRANSCRIPT: &str = "transcript";
    /// The recorder's IM transcript file (`.im`).
    pub const IM_TRANSCRIPT: &str = "im_transcript";
    /// `<id>.messages.json`.
    pub const MESSAGES: &str = "messages";
    /// A file attached to an IM message.
    pub const IM_ATTACHMENT: &str = "im_attachment";
    /// The file of a `file_share` record.
    pub const FILE_TRANSFER: &str = "file_transfer";
    /// A media file that is not a recording type.
    pub const MEDIA: &str = "media";
    /// Any other file.
    pub const OTHER: &str = "other";
    /// A file exported as recorded, age-encrypted.
    pub const ENCRYPTED: &str = "encrypted";
}

/// The directory user the record belongs to (the owner of the recorded
/// extension). Empty strings mean unknown.
#[derive(Debug, Clone, Copy, Default)]
pub struct VconUser<'a> {
    /// Directory id (`u-1001`).
    pub id: &'a str,
    /// Display name.
    pub name: &'a str,
    /// Mail address.
    pub email: &'a str,
}

/// What an exported file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportedRole {
    /// A content file from the record's `<files>`, with its role.
    Spool(FileRole),
    /// `<id>.messages.json`, generated from the IM transcript.
    Messages,
}

/// One file already written to the record folder.
#[derive(Debug, Clone)]
pub struct ExportedFile<'a> {
    /// Its name in the record folder.
    pub name: &'a str,
    /// What it is.
    pub role: ExportedRole,
    /// SHA-512 of the bytes written.
    pub sha512: [u8; 64],
    /// Number of bytes written.
    pub bytes: u64,
    /// For IM attachments, the message they belong to.
    pub message_id: Option<&'a str>,
}

impl ExportedFile<'_> {
    /// Whether the file was exported age-encrypted (its name ends in `.age`).
    pub fn is_encrypted(&self) -> bool {
        self.name.ends_with(".age")
    }

    /// The vCon `content_hash` of the file.
    pub fn content_hash(&self) -> String {
        content_hash(&self.sha512)
    }
}

/// One entry of the export engine's `written` list: name, SHA-256, SHA-512
/// (when asked for), bytes.
pub type Written = (String, [u8; 32], Option<[u8; 64]>, u64);

/// Maps the content files the engine has written back to the record's
/// `<files>` entries (by output name, see [`layout::output_name`]).
///
/// `decrypt` is the policy's `settings.decrypt`. Fails when a name does not
/// belong to the record or the target did not return a SHA-512 (it is
/// returned when the engine asks for it, which it does when `vcon` is on).
pub fn exported_files<'a>(
    rec: &'a Record,
    decrypt: bool,
    written: &'a [Written],
) -> Result<Vec<ExportedFile<'a>>, String> {
    written
        .iter()
        .map(|(name, _, sha512, bytes)| {
            let f = rec
                .files
                .iter()
                .find(|f| layout::output_name(f, decrypt) == *name)
                .ok_or_else(|| format!("vCon: {name:?} is not a file of record {}", rec.id))?;
            let sha512 = sha512
                .ok_or_else(|| format!("vCon: the target returned no SHA-512 for {name:?}"))?;
            Ok(ExportedFile {
                name,
                role: ExportedRole::Spool(f.role),
                sha512,
                bytes: *bytes,
                message_id: f.message_id.as_deref(),
            })
        })
        .collect()
}

/// An [`ExportedFile`] for a generated file held in memory (the messages
/// JSON): hashes `bytes`.
pub fn generated_file<'a>(name: &'a str, role: ExportedRole, bytes: &[u8]) -> ExportedFile<'a> {
    ExportedFile {
        name,
        role,
        sha512: Sha512::digest(bytes).into(),
        bytes: bytes.len() as u64,
        message_id: None,
    }
}

/// The vCon of a record as the export engine's generator hook needs it:
/// `(name, bytes)` of `<id>.vcon.json`.
///
/// `decrypt` is the policy's `settings.decrypt`; `written` the content files
/// the engine wrote (with their SHA-512, see [`exported_files`]);
/// `generated` the files the hook generated before the vCon: the one named
/// `<id>.messages.json` is referenced (hashed here from its bytes), others
/// are not. `transcript` is the parsed IM transcript, when there is one.
pub fn generate(
    rec: &Record,
    user: VconUser<'_>,
    decrypt: bool,
    written: &[Written],
    generated: &[(String, Vec<u8>)],
    transcript: Option<&Transcript>,
) -> Result<(String, Vec<u8>), String> {
    let messages = format!("{}.messages.json", layout::sanitize_component(&rec.id));
    let m = generated
        .iter()
        .find(|(n, _)| *n == messages)
        .map(|(name, bytes)| generated_file(name, ExportedRole::Messages, bytes));
    generate_with(rec, user, decrypt, written, m, transcript)
}

/// [`generate`] with the messages JSON already written (streamed): its
/// name, SHA-512 and size come from the target's receipt.
pub fn generate_with(
    rec: &Record,
    user: VconUser<'_>,
    decrypt: bool,
    written: &[Written],
    messages: Option<ExportedFile<'_>>,
    transcript: Option<&Transcript>,
) -> Result<(String, Vec<u8>), String> {
    let mut files = exported_files(rec, decrypt, written)?;
    files.extend(messages);
    Ok((
        vcon_name(&rec.id),
        build_vcon(rec, user, &files, transcript),
    ))
}

/// The file name of a record's vCon: `<id>.vcon.json` (sanitised like every
/// name in the record folder).
pub fn vcon_name(record_id: &str) -> String {
    format!("{}.vcon.json", layout::sanitize_component(record_id))
}

/// `sha512-<base64url, no padding>`.
pub fn content_hash(sha512: &[u8; 64]) -> String {
    format!("sha512-{}", URL_SAFE_NO_PAD.encode(sha512))
}

/// The vCon `uuid` of a record: a version 8 UUID whose first 48 bits are the
/// start time (Unix ms) and whose remaining free bits come from
/// SHA-256(`"exportd/vcon/v1\0"` + record id). Lower-case, hyphenated.
pub fn vcon_uuid(rec: &Record) -> String {
    let mut b = [0u8; 16];
    let ms = (rec.start_time.0.max(0) as u64) & 0xFFFF_FFFF_FFFF;
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    let mut h = Sha256::new();
    h.update(b"exportd/vcon/v1\0");
    h.update(rec.id.as_bytes());
    let h = h.finalize();
    b[6..].copy_from_slice(&h[..10]);
    b[6] = (b[6] & 0x0F) | 0x80; // version 8
    b[8] = (b[8] & 0x3F) | 0x80; // variant 10
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

// ---------------------------------------------------------------- JSON shape

#[derive(Serialize)]
struct Vcon<'a> {
    vcon: &'static str,
    uuid: String,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    extensions: [&'static str; 1],
    parties: Vec<PartyJ>,
    dialog: Vec<DialogJ<'a>>,
    attachments: Vec<AttachmentJ<'a>>,
    exportd: RecordExt<'a>,
}

#[derive(Serialize)]
struct PartyJ {
    #[serde(skip_serializing_if = "Option::is_none")]
    tel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mailto: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    exportd: PartyExt,
}

#[derive(Serialize, Default)]
struct PartyExt {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    addresses: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    internal: Option<bool>,
    roles: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
}

#[derive(Serialize)]
struct DialogJ<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    start: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<f64>,
    parties: Vec<usize>,
    mediatype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    filename: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_hash: Option<String>,
    application: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "DialogExt::is_empty")]
    exportd: DialogExt<'a>,
}

#[derive(Serialize, Default)]
struct DialogExt<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    edits: Vec<EditExt<'a>>,
}

impl DialogExt<'_> {
    fn is_empty(&self) -> bool {
        self.role.is_none()
            && self.size.is_none()
            && !self.deleted
            && self.deleted_at.is_none()
            && self.deleted_by.is_none()
            && self.edits.is_empty()
    }
}

#[derive(Serialize)]
struct EditExt<'a> {
    time: String,
    by: &'a str,
    text: &'a str,
}

#[derive(Serialize)]
struct AttachmentJ<'a> {
    purpose: &'static str,
    start: String,
    party: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    dialog: Option<usize>,
    mediatype: &'static str,
    filename: &'a str,
    url: String,
    content_hash: String,
    exportd: AttachmentExt<'a>,
}

#[derive(Serialize)]
struct AttachmentExt<'a> {
    role: &'static str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plaintext_mediatype: Option<&'static str>,
}

#[derive(Serialize)]
struct RecordExt<'a> {
    record_id: &'a str,
    modality: &'static str,
    source_platform: &'a str,
    native_id: &'a str,
    native_call_id: &'a str,
    location: &'a str,
    start_time: String,
    end_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    direction: Option<&'a str>,
    recorded_extension: &'a str,
    secondary: bool,
    imported: bool,
    cdr_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<UserExt<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conversation: Option<ConversationExt<'a>>,
}

#[derive(Serialize)]
struct UserExt<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    email: &'a str,
}

#[derive(Serialize)]
struct ConversationExt<'a> {
    id: &'a str,
    kind: &'static str,
    title: &'a str,
    owner: &'a str,
}

// ------------------------------------------------------------------ parties

/// An address sorted into the vCon party field it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Addr {
    /// `+` and digits (or digits only).
    Tel(String),
    /// A SIP URI as written.
    Sip(String),
    /// A bare `user@host`.
    Mailto(String),
    /// Not a tel, SIP or mail address.
    Other,
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn phone_digits(s: &str) -> Option<String> {
    let s = s.trim();
    let (plus, rest) = match s.strip_prefix('+') {
        Some(r) => (true, r),
        None => (false, s),
    };
    if !rest
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')'))
    {
        return None;
    }
    let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 3 {
        return None;
    }
    Some(if plus { format!("+{digits}") } else { digits })
}

fn classify(address: &str) -> Addr {
    let a = address.trim();
    if strip_prefix_ci(a, "sip:").is_some() || strip_prefix_ci(a, "sips:").is_some() {
        return Addr::Sip(a.to_string());
    }
    if let Some(rest) = strip_prefix_ci(a, "tel:") {
        // Parameters (`;phone-context=...`) are dropped from the normalised form.
        let num = rest.split(';').next().unwrap_or("");
        return phone_digits(num).map_or(Addr::Other, Addr::Tel);
    }
    if let Some(rest) = strip_prefix_ci(a, "mailto:") {
        return Addr::Mailto(rest.to_string());
    }
    if let Some(d) = phone_digits(a) {
        return Addr::Tel(d);
    }
    if a.contains('@') && !a.contains(':') && !a.chars().any(char::is_whitespace) {
        return Addr::Mailto(a.to_string());
    }
    Addr::Other
}

/// The key two addresses of the same party share.
fn addr_key(address: &str) -> Option<String> {
    let a = address.trim();
    if a.is_empty() {
        return None;
    }
    Some(match classify(a) {
        Addr::Tel(d) => format!("tel:{d}"),
        Addr::Sip(s) => {
            let rest = strip_prefix_ci(&s, "sips:")
                .or_else(|| strip_prefix_ci(&s, "sip:"))
                .unwrap_or(&s);
            // Drop URI parameters and headers: `user@host;transport=tcp`.
            let rest = rest.split([';', '?']).next().unwrap_or(rest);
            format!("uri:{}", rest.to_ascii_lowercase())
        }
        Addr::Mailto(m) => format!("uri:{}", m.to_ascii_lowercase()),
        Addr::Other => format!("raw:{}", a.to_lowercase()),
    })
}

#[derive(Default)]
struct PartyB {
    tel: Option<String>,
    sip: Option<String>,
    mailto: Option<String>,
    name: Option<String>,
    keys: Vec<String>,
    ext: PartyExt,
}

#[derive(Default)]
struct Parties(Vec<PartyB>);

fn non_empty(s: &str) -> Option<&str> {
    let t = s.trim();
    (!t.is_empty()).then_some(t)
}

impl Parties {
    fn by_key(&self, key: &str) -> Option<usize> {
        self.0.iter().position(|p| p.keys.iter().any(|k| k == key))
    }

    fn by_id(&self, id: &str) -> Option<usize> {
        self.0
            .iter()
            .position(|p| p.ext.id.as_deref() == Some(id) || p.ext.user_id.as_deref() == Some(id))
    }

    fn find(&self, address: &str, id: Option<&str>) -> Option<usize> {
        addr_key(address)
            .and_then(|k| self.by_key(&k))
            .or_else(|| id.and_then(|i| self.by_id(i)))
    }

    /// Adds (or merges into an existing party) and returns the index.
    fn add(
        &mut self,
        address: &str,
        name: Option<&str>,
        id: Option<&str>,
        internal: Option<bool>,
        role: &'static str,
    ) -> usize {
        let id = id.and_then(non_empty);
        let i = match self.find(address, id) {
            Some(i) => i,
            None => {
                self.0.push(PartyB::default());
                self.0.len() - 1
            }
        };
        self.merge(i, address, name, id, internal, role);
        i
    }

    fn merge(
        &mut self,
        i: usize,
        address: &str,
        name: Option<&str>,
        id: Option<&str>,
        internal: Option<bool>,
        role: &'static str,
    ) {
        let p = &mut self.0[i];
        if let Some(a) = non_empty(address) {
            match classify(a) {
                Addr::Tel(d) => {
                    p.tel.get_or_insert(d);
                }
                Addr::Sip(s) => {
                    p.sip.get_or_insert(s);
                }
                Addr::Mailto(m) => {
                    p.mailto.get_or_insert(m);
                }
                Addr::Other => {}
            }
            // (No let chains: the MSRV is 1.85.)
            if let Some(k) = addr_key(a).filter(|k| !p.keys.contains(k)) {
                p.keys.push(k);
            }
            if !p.ext.addresses.iter().any(|x| x == a) {
                p.ext.addresses.push(a.to_string());
            }
        }
        if let Some(n) = name.and_then(non_empty) {
            p.name.get_or_insert_with(|| n.to_string());
        }
        if let Some(id) = id {
            p.ext.id.get_or_insert_with(|| id.to_string());
        }
        if let Some(v) = internal {
            p.ext.internal.get_or_insert(v);
        }
        if !p.ext.roles.contains(&role) {
            p.ext.roles.push(role);
        }
    }

    /// Merges party `j` into party `i` and removes `j`; returns `i`'s new
    /// index.
    fn absorb(&mut self, i: usize, j: usize) -> usize {
        let q = self.0.remove(j);
        let i = if j < i { i - 1 } else { i };
        let p = &mut self.0[i];
        p.tel = p.tel.take().or(q.tel);
        p.sip = p.sip.take().or(q.sip);
        p.mailto = p.mailto.take().or(q.mailto);
        p.name = p.name.take().or(q.name);
        for k in q.keys {
            if !p.keys.contains(&k) {
                p.keys.push(k);
            }
        }
        for a in q.ext.addresses {
            if !p.ext.addresses.contains(&a) {
                p.ext.addresses.push(a);
            }
        }
        p.ext.id = p.ext.id.take().or(q.ext.id);
        p.ext.internal = p.ext.internal.or(q.ext.internal);
        p.ext.user_id = p.ext.user_id.take().or(q.ext.user_id);
        for r in q.ext.roles {
            if !p.ext.roles.contains(&r) {
                p.ext.roles.push(r);
            }
        }
        i
    }

    fn into_json(self) -> Vec<PartyJ> {
        self.0
            .into_iter()
            .map(|p| PartyJ {
                tel: p.tel,
                sip: p.sip,
                mailto: p.mailto,
                name: p.name,
                exportd: p.ext,
            })
            .collect()
    }
}

/// Builds the parties; returns them with the recorded party's index.
fn build_parties(rec: &Record, user: &VconUser<'_>, t: Option<&Transcript>) -> (Parties, usize) {
    let mut ps = Parties::default();
    // The source first and always, so that index 0 exists.
    ps.0.push(PartyB::default());
    ps.merge(
        0,
        &rec.source_caller_id,
        rec.source_name.as_deref(),
        None,
        None,
        "source",
    );
    let dest = rec.destination_caller_id.as_deref().unwrap_or("");
    let dest_name = rec.destination_name.as_deref();
    if non_empty(dest).is_some() || dest_name.and_then(non_empty).is_some() {
        ps.add(dest, dest_name, None, None, "destination");
    }
    let tparts = t.map(|t| t.participants.as_slice()).unwrap_or(&[]);
    for p in rec.participants.iter().chain(tparts) {
        ps.add(
            &p.address,
            Some(&p.name),
            Some(&p.id),
            Some(p.internal),
            "participant",
        );
    }
    if let Some(t) = t {
        for m in &t.messages {
            if let Some(id) = non_empty(&m.from).filter(|id| ps.by_id(id).is_none()) {
                ps.add("", None, Some(id), None, "sender");
            }
        }
    }
    let found = addr_key(&rec.recorded_extension)
        .and_then(|k| ps.by_key(&k))
        .or_else(|| addr_key(user.email).and_then(|k| ps.by_key(&k)))
        .or_else(|| non_empty(user.id).and_then(|id| ps.by_id(id)));
    let recorded = match found {
        Some(i) => {
            ps.merge(i, &rec.recorded_extension, None, None, None, "recorded");
            i
        }
        None => ps.add(&rec.recorded_extension, None, None, None, "recorded"),
    };
    // The user's mail address or id may name a party already listed apart
    // (a chat participant, when the recorded line is a phone number): it is
    // the same person, so the two become one (no index is handed out yet).
    let mut recorded = recorded;
    let same = addr_key(user.email)
        .and_then(|k| ps.by_key(&k))
        .or_else(|| non_empty(user.id).and_then(|id| ps.by_id(id)));
    if let Some(j) = same.filter(|&j| j != recorded) {
        // The later one goes into the earlier one: the source stays index 0.
        recorded = ps.absorb(recorded.min(j), recorded.max(j));
    }
    if let Some(e) = non_empty(user.email) {
        ps.merge(recorded, e, None, None, None, "recorded");
    }
    let p = &mut ps.0[recorded];
    if let Some(n) = non_empty(user.name) {
        p.name.get_or_insert_with(|| n.to_string());
    }
    if let Some(id) = non_empty(user.id) {
        p.ext.user_id.get_or_insert_with(|| id.to_string());
    }
    (ps, recorded)
}

// ------------------------------------------------------------- media types

/// The lower-case extension of a name, ignoring a trailing `.age`.
fn extension(name: &str) -> String {
    let plain = name.strip_suffix(".age").unwrap_or(name);
    match plain.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => String::new(),
    }
}

/// The vCon recording media type of a file, if it is a recording type.
fn recording_mediatype(ext: &str, modality: Modality) -> Option<&'static str> {
    let audio_only = modality == Modality::Voice;
    Some(match ext {
        "wav" => "audio/x-wav",
        "mp3" => "audio/x-mp3",
        "m4a" => "audio/x-mp4",
        "mp4" if audio_only => "audio/x-mp4",
        "mp4" => "video/x-mp4",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "ogv" => "video/ogg",
        _ => return None,
    })
}

/// The media type of an attachment file.
fn file_mediatype(ext: &str, modality: Modality) -> &'static str {
    if let Some(m) = recording_mediatype(ext, modality) {
        return m;
    }
    match ext {
        "pdf" => "application/pdf",
        "json" => "application/json",
        "xml" => "application/xml",
        "zip" => "application/zip",
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "htm" | "html" => "text/html",
        "vtt" | "vtr" => "text/vtt",
        "eml" => "message/rfc822",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "tif" | "tiff" => "image/tiff",
        "doc" => "application/msword",
        "xls" => "application/vnd.ms-excel",
        "ppt" => "application/vnd.ms-powerpoint",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        _ => "application/octet-stream",
    }
}

/// A file name as a relative URL reference: everything but RFC 3986
/// unreserved characters percent-encoded (so a `:` can never read as a
/// scheme, nor `?`/`#` as query or fragment).
fn relative_url(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn role_str(role: ExportedRole) -> &'static str {
    match role {
        ExportedRole::Spool(r) => r.as_str(),
        ExportedRole::Messages => "messages",
    }
}

fn rfc3339(t: Timestamp) -> String {
    t.rfc3339().to_string()
}

// ------------------------------------------------------------------- build

/// Builds `<id>.vcon.json` for a record (see the module documentation for
/// every choice). `files` are the files written to the record folder before
/// the vCon, in the order written: content files and the messages JSON;
/// `transcript` is the parsed IM transcript of an `im` record, when it could
/// be read. Returns pretty-printed JSON with a final newline.
pub fn build_vcon(
    rec: &Record,
    user: VconUser<'_>,
    files: &[ExportedFile<'_>],
    transcript: Option<&crate::im::Transcript>,
) -> Vec<u8> {
    let (parties, recorded) = build_parties(rec, &user, transcript);
    let all: Vec<usize> = (0..parties.0.len()).collect();
    let start = rfc3339(rec.start_time);
    let duration_ms = (rec.end_time.0 - rec.start_time.0).max(0);
    let app = rec.source_platform.as_str();

    let mut dialog: Vec<DialogJ<'_>> = Vec::new();
    // Files that are dialogs, by index into `files`.
    let mut is_dialog = vec![false; files.len()];
    if !rec.cdr_only {
        for (i, f) in files.iter().enumerate() {
            if f.is_encrypted() {
                continue;
            }
            let ext = extension(f.name);
            let (kind, mediatype, duration) = match (f.role, rec.modality) {
                (ExportedRole::Spool(FileRole::Media), m) => match recording_mediatype(&ext, m) {
                    Some(mt) => ("recording", mt, Some(duration_ms as f64 / 1000.0)),
                    None if ext == "txt" && matches!(m, Modality::Sms | Modality::Im) => {
                        ("text", "text/plain", None)
                    }
                    None => continue,
                },
                (ExportedRole::Spool(FileRole::Other), Modality::Sms | Modality::Im)
                    if ext == "txt" =>
                {
                    ("text", "text/plain", None)
                }
                _ => continue,
            };
            is_dialog[i] = true;
            dialog.push(DialogJ {
                kind,
                start: start.clone(),
                duration,
                parties: all.clone(),
                mediatype,
                filename: Some(f.name),
                body: None,
                encoding: None,
                url: Some(relative_url(f.name)),
                content_hash: Some(f.content_hash()),
                application: app,
                message_id: None,
                exportd: DialogExt {
                    role: Some(role_str(f.role)),
                    size: Some(f.bytes),
                    ..DialogExt::default()
                },
            });
        }
    }

    // IM messages: one text dialog each. Message id -> (dialog, sender, time).
    let mut messages: Vec<(&str, usize, Timestamp)> = Vec::new();
    if let Some(t) = transcript.filter(|_| !rec.cdr_only) {
        let tp: Vec<usize> = t
            .participants
            .iter()
            .filter_map(|p| parties.find(&p.address, non_empty(&p.id)))
            .collect();
        for m in &t.messages {
            let sender = non_empty(&m.from)
                .and_then(|id| parties.by_id(id))
                .unwrap_or(recorded);
            let mut ps = vec![sender];
            for &p in if tp.is_empty() { &all } else { &tp } {
                if !ps.contains(&p) {
                    ps.push(p);
                }
            }
            messages.push((m.id.as_str(), dialog.len(), m.timestamp));
            dialog.push(DialogJ {
                kind: "text",
                start: rfc3339(m.timestamp),
                duration: None,
                parties: ps,
                mediatype: "text/plain",
                filename: None,
                body: Some(&m.text),
                encoding: Some("none"),
                url: None,
                content_hash: None,
                application: app,
                message_id: non_empty(&m.id),
                exportd: DialogExt {
                    deleted: m.deleted,
                    deleted_at: m.deleted_at.map(rfc3339),
                    deleted_by: m.deleted_by.as_deref(),
                    edits: m
                        .edits
                        .iter()
                        .map(|e| EditExt {
                            time: rfc3339(e.timestamp),
                            by: &e.by,
                            text: &e.text,
                        })
                        .collect(),
                    ..DialogExt::default()
                },
            });
        }
    }
    let first_dialog = (!dialog.is_empty()).then_some(0);
    // An IM attachment's message: (message id, its dialog, sender, time).
    let message_of = |f: &ExportedFile<'_>| -> Option<(&str, usize, usize, Timestamp)> {
        let t = transcript?;
        let mid = f.message_id.or_else(|| {
            t.attachments
                .iter()
                .find(|a| a.file.rsplit('/').next() == Some(f.name))
                .map(|a| a.message_id.as_str())
        })?;
        let &(mid, d, ts) = messages.iter().find(|(id, _, _)| *id == mid)?;
        let sender = t
            .messages
            .iter()
            .find(|m| m.id == mid)
            .and_then(|m| non_empty(&m.from))
            .and_then(|id| parties.by_id(id))
            .unwrap_or(recorded);
        Some((mid, d, sender, ts))
    };

    let mut attachments = Vec::new();
    for (i, f) in files.iter().enumerate() {
        if is_dialog[i] {
            continue;
        }
        let ext = extension(f.name);
        let plain_type = file_mediatype(&ext, rec.modality);
        let mut a = AttachmentJ {
            purpose: purpose::OTHER,
            start: start.clone(),
            party: 0,
            dialog: first_dialog,
            mediatype: plain_type,
            filename: f.name,
            url: relative_url(f.name),
            content_hash: f.content_hash(),
            exportd: AttachmentExt {
                role: role_str(f.role),
                size: f.bytes,
                message_id: f.message_id,
                encryption: None,
                plaintext_mediatype: None,
            },
        };
        match f.role {
            _ if f.is_encrypted() => {
                a.purpose = purpose::ENCRYPTED;
                a.party = recorded;
                a.mediatype = "application/octet-stream";
                a.exportd.encryption = Some("age");
                a.exportd.plaintext_mediatype = Some(match ext.as_str() {
                    "im" => "application/octet-stream",
                    _ => plain_type,
                });
            }
            ExportedRole::Messages => {
                a.purpose = purpose::MESSAGES;
                a.party = recorded;
                a.mediatype = "application/json";
            }
            ExportedRole::Spool(FileRole::Transcript) if ext == "im" => {
                a.purpose = purpose::IM_TRANSCRIPT;
                a.party = recorded;
                a.mediatype = "application/octet-stream";
            }
            ExportedRole::Spool(FileRole::Transcript) => {
                a.purpose = purpose::TRANSCRIPT;
                a.party = recorded;
            }
            ExportedRole::Spool(FileRole::Attachment) => {
                a.purpose = purpose::IM_ATTACHMENT;
                if let Some((mid, d, sender, ts)) = message_of(f) {
                    a.exportd.message_id = Some(mid);
                    a.dialog = Some(d);
                    a.party = sender;
                    a.start = rfc3339(ts);
                }
            }
            ExportedRole::Spool(FileRole::Media) if rec.modality == Modality::FileShare => {
                a.purpose = purpose::FILE_TRANSFER;
            }
            ExportedRole::Spool(FileRole::Media) => a.purpose = purpose::MEDIA,
            ExportedRole::Spool(FileRole::Other) => a.purpose = purpose::OTHER,
        }
        attachments.push(a);
    }

    let doc = Vcon {
        vcon: VCON_VERSION,
        uuid: vcon_uuid(rec),
        created_at: rfc3339(rec.end_time),
        subject: transcript.and_then(|t| non_empty(&t.title)),
        extensions: [EXTENSION],
        parties: parties.into_json(),
        dialog,
        attachments,
        exportd: RecordExt {
            record_id: &rec.id,
            modality: rec.modality.as_str(),
            source_platform: &rec.source_platform,
            native_id: &rec.native_id,
            native_call_id: &rec.native_call_id,
            location: &rec.location,
            start_time: start.clone(),
            end_time: rfc3339(rec.end_time),
            direction: rec.direction.as_deref(),
            recorded_extension: &rec.recorded_extension,
            secondary: rec.secondary,
            imported: rec.imported,
            cdr_only: rec.cdr_only,
            user: (!user.id.is_empty() || !user.name.is_empty() || !user.email.is_empty())
                .then_some(UserExt {
                    id: user.id,
                    name: user.name,
                    email: user.email,
                }),
            conversation: transcript.map(|t| ConversationExt {
                id: &t.conversation_id,
                kind: t.kind.as_str(),
                title: &t.title,
                owner: &t.owner,
            }),
        },
    };
    // Serialising strings, numbers, bools and vectors into memory cannot fail.
    let mut out = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
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
        assert!(d.iter().all(|d| d["type"] == "text"
            && d["mediatype"] == "text/plain"
            && d["encoding"] == "none"));
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
        let mj = crate::im::messages_json(&t, &rec.id);
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
}
