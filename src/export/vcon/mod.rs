//! `<id>.vcon.json`: an IETF vCon (JSON format for vCon, syntax `0.4.0`, the
//! unsigned form) beside every exported record when a policy's
//! `settings.vcon` is on (export-layout.md). Never does I/O.
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
//!
//! # Parts
//!
//! This module holds the public entry points and the JSON shape; the
//! parties are found and merged in `parties`, and the document is built
//! in `build` (dialogs, attachments, the `exportd` object).

mod build;
mod parties;
#[cfg(test)]
mod tests;

pub use build::build_vcon;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use sha2::{Digest, Sha256, Sha512};

use crate::export::layout;
use crate::record::im::Transcript;
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
