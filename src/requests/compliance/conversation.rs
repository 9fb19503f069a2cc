//! One conversation of a compliance export (step 4 of [`super::run`]): its
//! in-range messages, deduplicated, one JSON per UTC day, then its
//! attachments. Holds only this conversation's messages; never another's.

use std::collections::{BTreeMap, HashMap};

use super::out::{ConvMeta, Out, Post};
use super::package::copy_file;
use super::select::{ConvBuild, Source};
use super::{ComplianceError, Counts, ExportRequest, Run, Validated, plain_name, transcript_xml};
use crate::record::im::{self, Item, Message};

/// Writes one conversation; `None` when it has no message in range.
pub(super) fn write_conversation(
    req: &ExportRequest,
    v: &Validated,
    run: &mut Run<'_, '_>,
    out: &mut Out,
    c: ConvBuild,
    counts: &mut Counts,
) -> Result<Option<ConvMeta>, ComplianceError> {
    let mut book = InRange::default();
    let mut contributing = Vec::new();
    for src in &c.sources {
        if read_transcript(v, run, src, &mut book) {
            contributing.push(src.record_id.clone());
        }
    }
    if book.day_of.is_empty() {
        return Ok(None);
    }
    let dir = out.conv_dir(&c.header.conversation_id);
    let mut meta = ConvMeta {
        id: c.header.conversation_id.clone(),
        kind: c.header.kind,
        title: c.header.title.clone(),
        owner: c.header.owner.clone(),
        participants: c.header.participants.clone(),
        records: contributing,
        dir,
        first: None,
    };
    let days = std::mem::take(&mut book.days);
    write_days(out, &mut meta, days, &book.names, counts)?;
    if req.attachments {
        copy_attachments(run, out, &meta, &c.sources, &book, counts)?;
    }
    counts.conversations += 1;
    counts.records += meta.records.len() as u64;
    Ok(Some(meta))
}

/// One conversation's in-range messages by UTC day, and the attachment file
/// names of its messages.
#[derive(Default)]
struct InRange {
    /// day -> message id -> message.
    days: BTreeMap<i64, HashMap<String, Message>>,
    /// message id -> the day it is kept under.
    day_of: HashMap<String, i64>,
    /// message id -> attachment file names, in document order, each once.
    names: HashMap<String, Vec<String>>,
}

impl InRange {
    /// Keeps a message; of two copies with the same id, the one with the
    /// later change (then more edits, then deleted) wins.
    fn add_message(&mut self, m: Message) {
        let day = m.timestamp.day_number();
        match self.day_of.get(&m.id).copied() {
            Some(d) => {
                let Some(slot) = self.days.get_mut(&d) else {
                    return;
                };
                let newer = slot.get(&m.id).is_none_or(|old| {
                    (m.last_modified(), m.edits.len(), m.deleted)
                        > (old.last_modified(), old.edits.len(), old.deleted)
                });
                if newer {
                    if d == day {
                        slot.insert(m.id.clone(), m);
                    } else {
                        slot.remove(&m.id);
                        self.day_of.insert(m.id.clone(), day);
                        self.days.entry(day).or_default().insert(m.id.clone(), m);
                    }
                }
            }
            None => {
                self.day_of.insert(m.id.clone(), day);
                self.days.entry(day).or_default().insert(m.id.clone(), m);
            }
        }
    }

    /// Notes an attachment of a message (each file name once).
    fn add_attachment(&mut self, message_id: String, file: String) {
        let list = self.names.entry(message_id).or_default();
        if !list.contains(&file) {
            list.push(file);
        }
    }
}

/// Streams one record's transcript into `book`; whether it had a message in
/// range. A transcript that cannot be read is skipped (reported); what was
/// read of it before the error stays in `book`.
fn read_transcript(v: &Validated, run: &mut Run<'_, '_>, src: &Source, book: &mut InRange) -> bool {
    let xml = match transcript_xml(run.opener, &src.transcript) {
        Ok(x) => x,
        Err(why) => {
            run.skip(
                src.transcript.clone(),
                format!("record {}: {why}", src.record_id),
            );
            return false;
        }
    };
    let mut any = false;
    let mut parser = im::Parser::new(xml);
    let res = loop {
        match parser.next_item() {
            Ok(Some(Item::Message(m))) => {
                if v.contains(m.timestamp) {
                    any = true;
                    book.add_message(m);
                }
            }
            Ok(Some(Item::Attachment(a))) => book.add_attachment(a.message_id, a.file),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    drop(parser);
    if let Err(e) = res {
        run.skip(
            src.transcript.clone(),
            format!("record {}: {e}", src.record_id),
        );
        return false;
    }
    any
}

/// One day's posts in time order (then by id), each with its attachments.
fn day_posts(msgs: HashMap<String, Message>, names: &HashMap<String, Vec<String>>) -> Vec<Post> {
    let mut posts: Vec<Post> = msgs
        .into_values()
        .map(|m| {
            let attachments = names.get(&m.id).cloned().unwrap_or_default();
            Post {
                msg: m,
                attachments,
            }
        })
        .collect();
    posts.sort_by(|a, b| (a.msg.timestamp, &a.msg.id).cmp(&(b.msg.timestamp, &b.msg.id)));
    posts
}

/// Writes one JSON per UTC day that has a message, counting what it holds.
fn write_days(
    out: &mut Out,
    meta: &mut ConvMeta,
    days: BTreeMap<i64, HashMap<String, Message>>,
    names: &HashMap<String, Vec<String>>,
    counts: &mut Counts,
) -> Result<(), ComplianceError> {
    for (_, msgs) in days {
        let posts = day_posts(msgs, names);
        let Some(first) = posts.first() else { continue };
        meta.first.get_or_insert(first.msg.timestamp);
        let date = first.msg.timestamp.date().to_string();
        for p in &posts {
            counts.messages += 1;
            counts.deleted += u64::from(p.msg.deleted);
            counts.edits += p.msg.edits.len() as u64;
        }
        out.day(meta, &date, &posts)?;
    }
    Ok(())
}

/// Copies the attachments of the messages kept into the zip.
fn copy_attachments(
    run: &mut Run<'_, '_>,
    out: &mut Out,
    meta: &ConvMeta,
    sources: &[Source],
    book: &InRange,
    counts: &mut Counts,
) -> Result<(), ComplianceError> {
    for src in sources {
        for (mid, rel) in &src.attachments {
            if !book.day_of.contains_key(mid) {
                continue;
            }
            let Some(zp) = out.file_path(meta, mid, &plain_name(rel)) else {
                continue;
            };
            if copy_file(run, out, &src.dir, rel, &zp)? {
                counts.files += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::im::Edit;
    use crate::time::Timestamp;

    const DAY: i64 = 86_400_000;

    fn msg(id: &str, ts: i64, text: &str) -> Message {
        Message {
            id: id.into(),
            timestamp: Timestamp(ts),
            from: "u-1".into(),
            text: text.into(),
            deleted: false,
            deleted_at: None,
            deleted_by: None,
            edits: Vec::new(),
        }
    }

    fn texts(book: &InRange) -> Vec<(i64, String)> {
        let mut v: Vec<(i64, String)> = book
            .days
            .iter()
            .flat_map(|(d, m)| m.values().map(move |m| (*d, m.text.clone())))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_later_change_of_two_copies_wins() {
        let mut book = InRange::default();
        book.add_message(msg("m-1", 1000, "first"));
        let mut edited = msg("m-1", 1000, "edited");
        edited.edits.push(Edit {
            timestamp: Timestamp(2000),
            by: "u-1".into(),
            text: "first".into(),
        });
        book.add_message(edited);
        // An older copy arriving later does not replace it.
        book.add_message(msg("m-1", 1000, "stale"));
        assert_eq!(texts(&book), vec![(0, "edited".to_string())]);
        assert_eq!(book.day_of.len(), 1);
    }

    #[test]
    fn a_newer_copy_on_another_day_moves_the_message() {
        let mut book = InRange::default();
        book.add_message(msg("m-1", 1000, "old"));
        let mut moved = msg("m-1", DAY + 5, "moved");
        moved.deleted = true;
        moved.deleted_at = Some(Timestamp(DAY + 6));
        book.add_message(moved);
        assert_eq!(texts(&book), vec![(1, "moved".to_string())]);
        assert_eq!(book.day_of.get("m-1"), Some(&1));
        // The emptied day stays, and writes nothing.
        assert!(book.days.get(&0).is_some_and(|m| m.is_empty()));
    }

    #[test]
    fn posts_of_a_day_are_in_time_then_id_order_with_their_files() {
        let mut book = InRange::default();
        book.add_message(msg("b", 20, "b"));
        book.add_message(msg("c", 10, "c"));
        book.add_message(msg("a", 20, "a"));
        book.add_attachment("a".into(), "x.pdf".into());
        book.add_attachment("a".into(), "x.pdf".into());
        book.add_attachment("a".into(), "y.pdf".into());
        let day = book.days.remove(&0).unwrap();
        let posts = day_posts(day, &book.names);
        let ids: Vec<&str> = posts.iter().map(|p| p.msg.id.as_str()).collect();
        assert_eq!(ids, ["c", "a", "b"]);
        assert_eq!(posts[1].attachments, ["x.pdf", "y.pdf"]);
        assert!(posts[0].attachments.is_empty());
    }
}
