//! The pull parser of a transcript XML: one message or attachment at a
//! time, checked against the caps (depth, text, message size, counts) as
//! it goes; never holds more than one message.

use std::io::BufRead;

use quick_xml::events::{BytesStart, Event};

use super::{
    Attachment, Edit, Header, ImError, Item, Kind, LARGE_MESSAGE_BYTES, LargeMessage,
    MAX_ATTR_TEXT, MAX_DEPTH, MAX_MESSAGE_BYTES, MAX_PARTICIPANTS, MAX_TEXT, MAX_TRANSCRIPT_BYTES,
    Message, Participant, stream,
};
use crate::record::xml::{self, XmlError};
use crate::time::Timestamp;

fn ts_attr<R>(
    r: &quick_xml::Reader<R>,
    e: &quick_xml::events::BytesStart<'_>,
    el: &'static str,
    name: &'static str,
) -> Result<Option<Timestamp>, ImError> {
    match xml::attr(r, e, name.as_bytes())?.filter(|s| !s.trim().is_empty()) {
        None => Ok(None),
        Some(s) => Timestamp::parse_recorder(&s)
            .map(Some)
            .map_err(|err| ImError::Invalid(el, format!("{name}: {err}"))),
    }
}

fn req_attr<R>(
    r: &quick_xml::Reader<R>,
    e: &quick_xml::events::BytesStart<'_>,
    el: &'static str,
    name: &'static str,
) -> Result<String, ImError> {
    let v = xml::attr(r, e, name.as_bytes())?
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or(ImError::Missing(el, name))?;
    if v.len() > MAX_ATTR_TEXT {
        return Err(XmlError::TextTooLong(el.to_string(), MAX_ATTR_TEXT).into());
    }
    Ok(v)
}

fn opt_attr<R>(
    r: &quick_xml::Reader<R>,
    e: &quick_xml::events::BytesStart<'_>,
    el: &'static str,
    name: &'static str,
) -> Result<String, ImError> {
    let v = xml::attr(r, e, name.as_bytes())?.unwrap_or_default();
    if v.len() > MAX_ATTR_TEXT {
        return Err(XmlError::TextTooLong(el.to_string(), MAX_ATTR_TEXT).into());
    }
    Ok(v.trim().to_string())
}

fn parse_bool(el: &'static str, s: &str) -> Result<bool, ImError> {
    match s.trim() {
        "true" | "1" | "yes" | "TRUE" | "True" => Ok(true),
        "false" | "0" | "no" | "FALSE" | "False" | "" => Ok(false),
        other => Err(ImError::Invalid(
            el,
            format!("{other:?} is not true or false"),
        )),
    }
}

struct OpenMessage {
    msg: Message,
    depth: usize,
    /// Depth of the open `<edit>` (its text goes to the edit), if any.
    edit: Option<(usize, Edit)>,
    /// Bytes of text held for this message (its text and every edit's).
    size: usize,
}

impl OpenMessage {
    fn text_len(&self) -> usize {
        self.msg.text.len() + self.edit.as_ref().map_or(0, |(_, e)| e.text.len())
    }

    /// Counts `n` more bytes held for this message: one message (its text and
    /// edit history) is the most a streaming reader holds at once, so it is
    /// bounded as a whole, not only per text.
    fn grow(&mut self, n: usize, large: &mut Option<LargeMessage>) -> Result<(), ImError> {
        self.size += n;
        if self.size > LARGE_MESSAGE_BYTES && large.is_none() {
            *large = Some(LargeMessage::acquire());
        }
        if self.size > MAX_MESSAGE_BYTES {
            return Err(ImError::Invalid(
                "message",
                format!(
                    "message {:?} holds more than {MAX_MESSAGE_BYTES} bytes of text and edits",
                    self.msg.id
                ),
            ));
        }
        Ok(())
    }
}

/// Streams a transcript XML: `sink` receives every message and attachment
/// in document order; the conversation header is returned at the end.
///
/// Only one message is held at a time. Unknown elements are ignored; the text
/// of unknown children of a `<message>` counts as message text, the text of
/// `<edit>` children as the edit's (old) text.
pub fn parse_stream(xml_bytes: &[u8], sink: &mut dyn FnMut(Item)) -> Result<Header, ImError> {
    if xml_bytes.len() as u64 > MAX_TRANSCRIPT_BYTES {
        return Err(ImError::TooLarge {
            size: xml_bytes.len() as u64,
            limit: MAX_TRANSCRIPT_BYTES,
        });
    }
    let text = xml::check_utf8(xml_bytes)?;
    let mut p = Parser::new(text.as_bytes());
    while let Some(item) = p.next_item()? {
        sink(item);
    }
    p.finish()
}

/// A pull parser over a transcript XML read from any buffered reader: one
/// message (or attachment) at a time, so memory does not grow with the
/// transcript. [`parse_stream`] is this parser over bytes in memory; a
/// reader from [`stream::xml_reader`] also checks UTF-8 and the size caps as
/// the bytes go by.
pub struct Parser<R: BufRead> {
    r: quick_xml::Reader<R>,
    buf: Vec<u8>,
    st: State,
}

/// What a [`Parser`] has read and holds between events.
#[derive(Default)]
struct State {
    header: Option<Header>,
    /// Names of open elements below the root.
    stack: Vec<String>,
    open: Option<OpenMessage>,
    root_closed: bool,
    ended: bool,
    /// Held while the current (or last returned) message is large.
    large: Option<LargeMessage>,
}

impl<R: BufRead> Parser<R> {
    /// A parser reading `inner` (untrusted: no DOCTYPE, predefined entities only).
    pub fn new(inner: R) -> Parser<R> {
        let mut r = quick_xml::Reader::from_reader(inner);
        let c = r.config_mut();
        c.check_end_names = true;
        c.expand_empty_elements = false;
        c.trim_text(false);
        Parser {
            r,
            buf: Vec::new(),
            st: State::default(),
        }
    }

    /// The conversation header as read so far (the root's attributes, and
    /// the participants met so far).
    pub fn header(&self) -> Option<&Header> {
        self.st.header.as_ref()
    }

    /// The next message or attachment in document order; `None` at the end
    /// of a complete document.
    pub fn next_item(&mut self) -> Result<Option<Item>, ImError> {
        // The caller is done with the previous item.
        self.st.large = None;
        if self.st.ended {
            return Ok(None);
        }
        loop {
            self.buf.clear();
            let r = &mut self.r;
            let ev = r
                .read_event_into(&mut self.buf)
                .map_err(|e| stream::reader_error(r, e))?;
            let r = &self.r;
            let item = match &ev {
                Event::Eof => return self.st.eof(r).map(|()| None),
                Event::DocType(_) => return Err(XmlError::Doctype.into()),
                Event::Start(e) | Event::Empty(e) => {
                    self.st.start(r, e, matches!(ev, Event::Empty(_)))?
                }
                Event::End(_) => self.st.end(),
                other => {
                    self.st.text(r, other)?;
                    None
                }
            };
            if item.is_some() {
                return Ok(item);
            }
        }
    }

    /// Reads to the end and returns the complete header (every participant).
    pub fn finish(mut self) -> Result<Header, ImError> {
        while self.next_item()?.is_some() {}
        self.st.header.ok_or_else(|| {
            XmlError::Malformed {
                pos: 0,
                msg: "no root element".into(),
            }
            .into()
        })
    }
}

impl State {
    /// The end of the input: fine only after the root element closed.
    fn eof<R>(&mut self, r: &quick_xml::Reader<R>) -> Result<(), ImError> {
        self.ended = true;
        match &self.header {
            Some(_) if self.root_closed => Ok(()),
            Some(_) => Err(xml::malformed(r, "unexpected end of document").into()),
            None => Err(XmlError::Malformed {
                pos: 0,
                msg: "no root element".into(),
            }
            .into()),
        }
    }

    /// An element opens (`empty`: and closes at once); returns the item it
    /// completes, if any (an empty `<message/>`, an `<attachment>`).
    fn start<R>(
        &mut self,
        r: &quick_xml::Reader<R>,
        e: &BytesStart<'_>,
        empty: bool,
    ) -> Result<Option<Item>, ImError> {
        let name = xml::local_name(e);
        if self.root_closed {
            return Err(xml::malformed(r, "content after the root element").into());
        }
        let Some(h) = self.header.as_mut() else {
            self.header = Some(root_header(r, e, name)?);
            if empty {
                self.root_closed = true;
            }
            return Ok(None);
        };
        if self.stack.len() >= MAX_DEPTH {
            return Err(XmlError::TooDeep(MAX_DEPTH).into());
        }
        let depth = self.stack.len() + 1;
        let parent = self.stack.last().map(String::as_str);
        let mut item = None;
        match (depth, parent, name.as_str()) {
            (2, Some("participants"), "participant") => {
                if h.participants.len() >= MAX_PARTICIPANTS {
                    return Err(ImError::Invalid("participants", "too many".into()));
                }
                h.participants.push(Participant {
                    id: req_attr(r, e, "participant", "id")?,
                    address: opt_attr(r, e, "participant", "address")?,
                    name: opt_attr(r, e, "participant", "name")?,
                    internal: parse_bool(
                        "participant",
                        &opt_attr(r, e, "participant", "internal")?,
                    )?,
                });
            }
            (1, _, "message") => {
                let msg = message(r, e)?;
                if empty {
                    item = Some(Item::Message(msg));
                } else {
                    self.open = Some(OpenMessage {
                        msg,
                        depth,
                        edit: None,
                        size: 0,
                    });
                }
            }
            (2, Some("message"), "edit") => {
                let edit = Edit {
                    timestamp: ts_attr(r, e, "edit", "timestamp")?
                        .ok_or(ImError::Missing("edit", "timestamp"))?,
                    by: opt_attr(r, e, "edit", "by")?,
                    text: String::new(),
                };
                if let Some(m) = self.open.as_mut() {
                    m.grow(edit.by.len(), &mut self.large)?;
                    if empty {
                        m.msg.edits.push(edit);
                    } else {
                        m.edit = Some((depth, edit));
                    }
                }
            }
            (1, _, "attachment") => {
                item = Some(Item::Attachment(Attachment {
                    message_id: req_attr(r, e, "attachment", "message_id")?,
                    file: req_attr(r, e, "attachment", "file")?,
                }));
            }
            _ => {}
        }
        if !empty {
            self.stack.push(name);
        }
        Ok(item)
    }

    /// An element closes; returns the message it completes, if any.
    fn end(&mut self) -> Option<Item> {
        let Some(_) = self.stack.pop() else {
            self.root_closed = true;
            return None;
        };
        let depth = self.stack.len() + 1;
        if let Some(m) = self.open.as_mut() {
            if let Some((d, _)) = &m.edit {
                if *d == depth {
                    if let Some((_, mut ed)) = m.edit.take() {
                        ed.text = ed.text.trim().to_string();
                        m.msg.edits.push(ed);
                    }
                }
            }
            if m.depth == depth {
                if let Some(mut m) = self.open.take() {
                    m.msg.text = m.msg.text.trim().to_string();
                    return Some(Item::Message(m.msg));
                }
            }
        }
        None
    }

    /// Text, CDATA or a reference: the open message's (or edit's) text.
    fn text<R>(&mut self, r: &quick_xml::Reader<R>, ev: &Event<'_>) -> Result<(), ImError> {
        if let Some(m) = self.open.as_mut() {
            let before = m.text_len();
            let out = match m.edit.as_mut() {
                Some((_, ed)) => &mut ed.text,
                None => &mut m.msg.text,
            };
            xml::push_text(r, ev, out, MAX_TEXT, "message")?;
            let added = m.text_len() - before;
            m.grow(added, &mut self.large)?;
        } else if let Event::GeneralRef(g) = ev {
            xml::resolve_ref(r, g)?;
        }
        Ok(())
    }
}

/// The header from the root element's attributes (no participants yet).
fn root_header<R>(
    r: &quick_xml::Reader<R>,
    e: &BytesStart<'_>,
    name: String,
) -> Result<Header, ImError> {
    if name != "transcript" {
        return Err(ImError::Root(name));
    }
    let kind_s = req_attr(r, e, "transcript", "kind")?;
    let kind = Kind::parse(&kind_s).ok_or_else(|| {
        ImError::Invalid(
            "transcript",
            format!("kind {kind_s:?} is not direct, group or team"),
        )
    })?;
    Ok(Header {
        conversation_id: req_attr(r, e, "transcript", "conversation_id")?,
        kind,
        title: opt_attr(r, e, "transcript", "title")?,
        owner: opt_attr(r, e, "transcript", "owner")?,
        participants: Vec::new(),
    })
}

/// A `<message>` from its attributes (no text or edits yet).
fn message<R>(r: &quick_xml::Reader<R>, e: &BytesStart<'_>) -> Result<Message, ImError> {
    let deleted = parse_bool("message", &opt_attr(r, e, "message", "deleted")?)?;
    Ok(Message {
        id: req_attr(r, e, "message", "id")?,
        timestamp: ts_attr(r, e, "message", "timestamp")?
            .ok_or(ImError::Missing("message", "timestamp"))?,
        from: req_attr(r, e, "message", "from")?,
        text: String::new(),
        deleted,
        deleted_at: ts_attr(r, e, "message", "deleted_at")?,
        deleted_by: Some(opt_attr(r, e, "message", "deleted_by")?).filter(|s| !s.is_empty()),
        edits: Vec::new(),
    })
}
