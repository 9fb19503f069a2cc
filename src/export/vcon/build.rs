//! The building of one vCon document: its dialogs (recordings, texts, one
//! per IM message), its attachments and its `exportd` object. Pure: no I/O,
//! no clock, no randomness.

use super::parties::{Parties, build_parties, non_empty};
use super::*;

// ------------------------------------------------------------- media types

/// The lower-case extension of a name, ignoring a trailing `.age`.
pub(super) fn extension(name: &str) -> String {
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
pub(super) fn relative_url(name: &str) -> String {
    crate::url::percent_encode(name, false)
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

/// What every part of one vCon is built from.
struct Cx<'a, 'p> {
    rec: &'a Record,
    parties: &'p Parties,
    /// The recorded party's index.
    recorded: usize,
    /// Every party's index.
    all: Vec<usize>,
    /// The record start, RFC 3339.
    start: String,
    /// The record's source platform (a dialog's `application`).
    app: &'a str,
}

/// An IM message's text dialog: (message id, dialog index, time).
type MessageDialog<'a> = (&'a str, usize, Timestamp);

/// Builds `<id>.vcon.json` for a record (see the module documentation for
/// every choice). `files` are the files written to the record folder before
/// the vCon, in the order written: content files and the messages JSON;
/// `transcript` is the parsed IM transcript of an `im` record, when it could
/// be read. Returns pretty-printed JSON with a final newline.
pub fn build_vcon(
    rec: &Record,
    user: VconUser<'_>,
    files: &[ExportedFile<'_>],
    transcript: Option<&crate::record::im::Transcript>,
) -> Vec<u8> {
    let (parties, recorded) = build_parties(rec, &user, transcript);
    let start = rfc3339(rec.start_time);
    let cx = Cx {
        rec,
        parties: &parties,
        recorded,
        all: (0..parties.0.len()).collect(),
        start: start.clone(),
        app: rec.source_platform.as_str(),
    };
    // Files that are dialogs (recordings, texts), by index into `files`.
    let mut dialog: Vec<DialogJ<'_>> = Vec::new();
    let mut is_dialog = vec![false; files.len()];
    if !rec.cdr_only {
        for (i, f) in files.iter().enumerate() {
            if let Some(d) = file_dialog(&cx, f) {
                is_dialog[i] = true;
                dialog.push(d);
            }
        }
    }
    // IM messages: one text dialog each.
    let mut messages: Vec<MessageDialog<'_>> = Vec::new();
    if let Some(t) = transcript.filter(|_| !rec.cdr_only) {
        message_dialogs(&cx, t, &mut dialog, &mut messages);
    }
    let first_dialog = (!dialog.is_empty()).then_some(0);
    let attachments = files
        .iter()
        .zip(&is_dialog)
        .filter(|(_, d)| !**d)
        .map(|(f, _)| {
            let message = transcript.and_then(|t| message_of(&cx, t, &messages, f));
            attachment(&cx, f, first_dialog, message)
        })
        .collect();
    drop(cx);

    let doc = Vcon {
        vcon: VCON_VERSION,
        uuid: vcon_uuid(rec),
        created_at: rfc3339(rec.end_time),
        subject: transcript.and_then(|t| non_empty(&t.title)),
        extensions: [EXTENSION],
        parties: parties.into_json(),
        dialog,
        attachments,
        exportd: record_ext(rec, &user, transcript, start),
    };
    // Serialising strings, numbers, bools and vectors into memory cannot fail.
    let mut out = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}

/// The dialog a written file is (a recording, or a text of an SMS or IM
/// record), if it is one. An encrypted file never is.
fn file_dialog<'a>(cx: &Cx<'a, '_>, f: &ExportedFile<'a>) -> Option<DialogJ<'a>> {
    if f.is_encrypted() {
        return None;
    }
    let ext = extension(f.name);
    let duration_ms = (cx.rec.end_time.0 - cx.rec.start_time.0).max(0);
    let (kind, mediatype, duration) = match (f.role, cx.rec.modality) {
        (ExportedRole::Spool(FileRole::Media), m) => match recording_mediatype(&ext, m) {
            Some(mt) => ("recording", mt, Some(duration_ms as f64 / 1000.0)),
            None if ext == "txt" && matches!(m, Modality::Sms | Modality::Im) => {
                ("text", "text/plain", None)
            }
            None => return None,
        },
        (ExportedRole::Spool(FileRole::Other), Modality::Sms | Modality::Im) if ext == "txt" => {
            ("text", "text/plain", None)
        }
        _ => return None,
    };
    Some(DialogJ {
        kind,
        start: cx.start.clone(),
        duration,
        parties: cx.all.clone(),
        mediatype,
        filename: Some(f.name),
        body: None,
        encoding: None,
        url: Some(relative_url(f.name)),
        content_hash: Some(f.content_hash()),
        application: cx.app,
        message_id: None,
        exportd: DialogExt {
            role: Some(role_str(f.role)),
            size: Some(f.bytes),
            ..DialogExt::default()
        },
    })
}

/// Appends one text dialog per IM message to `dialog`, noting each in
/// `messages`.
fn message_dialogs<'a>(
    cx: &Cx<'a, '_>,
    t: &'a Transcript,
    dialog: &mut Vec<DialogJ<'a>>,
    messages: &mut Vec<MessageDialog<'a>>,
) {
    let tp: Vec<usize> = t
        .participants
        .iter()
        .filter_map(|p| cx.parties.find(&p.address, non_empty(&p.id)))
        .collect();
    for m in &t.messages {
        let sender = non_empty(&m.from)
            .and_then(|id| cx.parties.by_id(id))
            .unwrap_or(cx.recorded);
        let mut ps = vec![sender];
        for &p in if tp.is_empty() { &cx.all } else { &tp } {
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
            application: cx.app,
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

/// An IM attachment's message: (message id, its dialog, sender, time).
fn message_of<'a>(
    cx: &Cx<'_, '_>,
    t: &'a Transcript,
    messages: &[MessageDialog<'a>],
    f: &ExportedFile<'a>,
) -> Option<(&'a str, usize, usize, Timestamp)> {
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
        .and_then(|id| cx.parties.by_id(id))
        .unwrap_or(cx.recorded);
    Some((mid, d, sender, ts))
}

/// The attachment a written file that is no dialog is; `message` is the
/// IM message an attachment file belongs to, when known.
fn attachment<'a>(
    cx: &Cx<'a, '_>,
    f: &ExportedFile<'a>,
    first_dialog: Option<usize>,
    message: Option<(&'a str, usize, usize, Timestamp)>,
) -> AttachmentJ<'a> {
    let ext = extension(f.name);
    let plain_type = file_mediatype(&ext, cx.rec.modality);
    let mut a = AttachmentJ {
        purpose: purpose::OTHER,
        start: cx.start.clone(),
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
            a.party = cx.recorded;
            a.mediatype = "application/octet-stream";
            a.exportd.encryption = Some("age");
            a.exportd.plaintext_mediatype = Some(match ext.as_str() {
                "im" => "application/octet-stream",
                _ => plain_type,
            });
        }
        ExportedRole::Messages => {
            a.purpose = purpose::MESSAGES;
            a.party = cx.recorded;
            a.mediatype = "application/json";
        }
        ExportedRole::Spool(FileRole::Transcript) if ext == "im" => {
            a.purpose = purpose::IM_TRANSCRIPT;
            a.party = cx.recorded;
            a.mediatype = "application/octet-stream";
        }
        ExportedRole::Spool(FileRole::Transcript) => {
            a.purpose = purpose::TRANSCRIPT;
            a.party = cx.recorded;
        }
        ExportedRole::Spool(FileRole::Attachment) => {
            a.purpose = purpose::IM_ATTACHMENT;
            if let Some((mid, d, sender, ts)) = message {
                a.exportd.message_id = Some(mid);
                a.dialog = Some(d);
                a.party = sender;
                a.start = rfc3339(ts);
            }
        }
        ExportedRole::Spool(FileRole::Media) if cx.rec.modality == Modality::FileShare => {
            a.purpose = purpose::FILE_TRANSFER;
        }
        ExportedRole::Spool(FileRole::Media) => a.purpose = purpose::MEDIA,
        ExportedRole::Spool(FileRole::Other) => a.purpose = purpose::OTHER,
    }
    a
}

/// The vCon's `exportd` object: the record's metadata, its user and its
/// conversation.
fn record_ext<'a>(
    rec: &'a Record,
    user: &VconUser<'a>,
    transcript: Option<&'a Transcript>,
    start: String,
) -> RecordExt<'a> {
    RecordExt {
        record_id: &rec.id,
        modality: rec.modality.as_str(),
        source_platform: &rec.source_platform,
        native_id: &rec.native_id,
        native_call_id: &rec.native_call_id,
        location: &rec.location,
        start_time: start,
        end_time: rfc3339(rec.end_time),
        direction: rec.direction.as_deref(),
        recorded_extension: &rec.recorded_extension,
        secondary: rec.secondary,
        imported: rec.imported,
        cdr_only: rec.cdr_only,
        user: (!user.id.is_empty() || !user.name.is_empty() || !user.email.is_empty()).then_some(
            UserExt {
                id: user.id,
                name: user.name,
                email: user.email,
            },
        ),
        conversation: transcript.map(|t| ConversationExt {
            id: &t.conversation_id,
            kind: t.kind.as_str(),
            title: &t.title,
            owner: &t.owner,
        }),
    }
}
