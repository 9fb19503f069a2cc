//! `<id>.messages.json`: a transcript normalised to JSON (export-layout.md).
//! Pure: never touches a file.

use serde::Serialize;

use super::{Message, Transcript};
use crate::record::Participant;

#[derive(Serialize)]
struct Doc<'a> {
    record_id: &'a str,
    conversation_id: &'a str,
    kind: &'static str,
    title: &'a str,
    owner: &'a str,
    participants: Vec<Part<'a>>,
    messages: Vec<Msg<'a>>,
}

#[derive(Serialize)]
pub(super) struct Part<'a> {
    id: &'a str,
    address: &'a str,
    name: &'a str,
    internal: bool,
}

impl<'a> From<&'a Participant> for Part<'a> {
    fn from(p: &'a Participant) -> Self {
        Part {
            id: &p.id,
            address: &p.address,
            name: &p.name,
            internal: p.internal,
        }
    }
}

#[derive(Serialize)]
pub(super) struct Msg<'a> {
    id: &'a str,
    time: String,
    from: &'a str,
    text: &'a str,
    deleted: bool,
    deleted_at: Option<String>,
    edits: Vec<EditJ<'a>>,
    attachments: Vec<&'a str>,
}

#[derive(Serialize)]
struct EditJ<'a> {
    time: String,
    by: &'a str,
    text: &'a str,
}

impl<'a> Msg<'a> {
    /// A message with its attachments' file names.
    pub(super) fn of(m: &'a Message, attachments: Vec<&'a str>) -> Msg<'a> {
        Msg {
            id: &m.id,
            time: m.timestamp.rfc3339().to_string(),
            from: &m.from,
            text: &m.text,
            deleted: m.deleted,
            deleted_at: m.deleted_at.map(|d| d.rfc3339().to_string()),
            edits: m
                .edits
                .iter()
                .map(|e| EditJ {
                    time: e.timestamp.rfc3339().to_string(),
                    by: &e.by,
                    text: &e.text,
                })
                .collect(),
            attachments,
        }
    }
}

fn msg<'a>(t: &'a Transcript, m: &'a Message) -> Msg<'a> {
    Msg::of(m, t.attachments_of(&m.id).collect())
}

/// Renders `<record_id>.messages.json` for an `im` record.
///
/// The exact shape (UTF-8, pretty-printed, keys in this order; all times RFC
/// 3339 UTC with milliseconds, e.g. `2026-11-21T14:03:07.120Z`):
///
/// ```json
/// {
///   "record_id": "<the record's id>",
///   "conversation_id": "c-77",
///   "kind": "direct" | "group" | "team",
///   "title": "Rates desk",
///   "owner": "u-1001",
///   "participants": [
///     {"id": "u-1001", "address": "ann@corp.example", "name": "Ann Trader", "internal": true}
///   ],
///   "messages": [
///     {"id": "m-3", "time": "2026-11-21T14:06:00.000Z", "from": "u-1001",
///      "text": "current text", "deleted": false, "deleted_at": null,
///      "edits": [{"time": "2026-11-21T14:06:30.000Z", "by": "u-1001", "text": "text before this edit"}],
///      "attachments": ["term-sheet.pdf"]}
///   ]
/// }
/// ```
///
/// Messages keep document order; `edits` is the edit log in document order,
/// each entry carrying the text as it was before that edit; `attachments` are
/// the file names of the transcript's `<attachment>` elements for the message.
/// Deleted messages are kept with `deleted: true` and their text.
pub fn messages_json(t: &Transcript, record_id: &str) -> Vec<u8> {
    let doc = Doc {
        record_id,
        conversation_id: &t.conversation_id,
        kind: t.kind.as_str(),
        title: &t.title,
        owner: &t.owner,
        participants: t.participants.iter().map(Part::from).collect(),
        messages: t.messages.iter().map(|m| msg(t, m)).collect(),
    };
    // Serialising plain strings, bools and vectors into memory cannot fail.
    let mut out = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}
