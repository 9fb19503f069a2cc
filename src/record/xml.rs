//! Hardened XML reading shared by the metadata and transcript parsers;
//! never processes a DTD and never touches a file.
//!
//! No DTD is ever processed: a `<!DOCTYPE` is refused outright, so entity
//! expansion ("billion laughs") and external entities cannot happen. Only the
//! five predefined entities and character references are resolved. Depth and
//! text sizes are bounded by the callers' limits.

use quick_xml::XmlVersion;
use quick_xml::events::{BytesRef, BytesStart, Event};

/// Why an XML document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// Not well-formed.
    #[error("malformed XML at byte {pos}: {msg}")]
    Malformed {
        /// Byte offset.
        pos: u64,
        /// What the parser said.
        msg: String,
    },
    /// A document type declaration (entities) was present.
    #[error("XML with a <!DOCTYPE> is refused (entity declarations are not allowed)")]
    Doctype,
    /// An entity other than the five predefined ones.
    #[error("XML uses the undefined entity &{0}; (only &amp; &lt; &gt; &quot; &apos; are allowed)")]
    Entity(String),
    /// The bytes are not UTF-8.
    #[error("XML is not valid UTF-8 (at byte {0}); the recorder must write UTF-8")]
    NotUtf8(usize),
    /// Nesting deeper than allowed.
    #[error("XML nests deeper than {0} levels")]
    TooDeep(usize),
    /// A text or attribute longer than allowed.
    #[error("XML text of element <{0}> is longer than {1} bytes")]
    TextTooLong(String, usize),
}

/// Checks that `bytes` are UTF-8, naming the first bad offset.
pub fn check_utf8(bytes: &[u8]) -> Result<&str, XmlError> {
    std::str::from_utf8(bytes).map_err(|e| XmlError::NotUtf8(e.valid_up_to()))
}

/// A reader configured for untrusted input.
pub fn reader(text: &str) -> quick_xml::Reader<&[u8]> {
    let mut r = quick_xml::Reader::from_str(text);
    let c = r.config_mut();
    c.check_end_names = true;
    c.expand_empty_elements = false;
    c.trim_text(false);
    r
}

/// Converts a parser error to [`XmlError`] at the reader's position.
pub fn malformed<R>(r: &quick_xml::Reader<R>, e: impl std::fmt::Display) -> XmlError {
    XmlError::Malformed {
        pos: r.buffer_position(),
        msg: e.to_string(),
    }
}

/// Reads the value of attribute `name` (predefined entities resolved).
pub fn attr<R>(
    r: &quick_xml::Reader<R>,
    e: &BytesStart<'_>,
    name: &[u8],
) -> Result<Option<String>, XmlError> {
    for a in e.attributes() {
        let a = a.map_err(|err| malformed(r, err))?;
        if a.key.local_name().as_ref() == name {
            let v = a
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|err| match err {
                    quick_xml::Error::Escape(
                        quick_xml::escape::EscapeError::UnrecognizedEntity(_, ent),
                    ) => XmlError::Entity(ent),
                    other => malformed(r, other),
                })?;
            return Ok(Some(v.into_owned()));
        }
    }
    Ok(None)
}

/// Appends the character data carried by `ev` (text, CDATA or a reference)
/// to `out`, bounded by `max` bytes. Returns `Ok(false)` if `ev` is not text.
pub fn push_text<R>(
    r: &quick_xml::Reader<R>,
    ev: &Event<'_>,
    out: &mut String,
    max: usize,
    element: &str,
) -> Result<bool, XmlError> {
    match ev {
        Event::Text(t) => {
            let s = t.xml10_content().map_err(|e| malformed(r, e))?;
            bounded_push(out, &s, max, element)?;
        }
        Event::CData(t) => {
            let s = t.xml10_content().map_err(|e| malformed(r, e))?;
            bounded_push(out, &s, max, element)?;
        }
        Event::GeneralRef(g) => {
            let c = resolve_ref(r, g)?;
            let mut b = [0u8; 4];
            bounded_push(out, c.encode_utf8(&mut b), max, element)?;
        }
        Event::DocType(_) => return Err(XmlError::Doctype),
        _ => return Ok(false),
    }
    Ok(true)
}

fn bounded_push(out: &mut String, s: &str, max: usize, element: &str) -> Result<(), XmlError> {
    if out.len() + s.len() > max {
        return Err(XmlError::TextTooLong(element.to_string(), max));
    }
    out.push_str(s);
    Ok(())
}

/// Resolves `&name;` to a char: predefined entities and character references only.
pub fn resolve_ref<R>(r: &quick_xml::Reader<R>, g: &BytesRef<'_>) -> Result<char, XmlError> {
    if g.is_char_ref() {
        return match g.resolve_char_ref() {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err(malformed(r, "bad character reference")),
            Err(e) => Err(malformed(r, e)),
        };
    }
    let name = g.decode().map_err(|e| malformed(r, e))?;
    match quick_xml::escape::resolve_predefined_entity(&name) {
        Some(s) => s.chars().next().ok_or_else(|| malformed(r, "empty entity")),
        None => Err(XmlError::Entity(name.chars().take(64).collect())),
    }
}

/// The local name of an element as UTF-8 (lossy; names are ASCII in our formats).
pub fn local_name(e: &BytesStart<'_>) -> String {
    String::from_utf8_lossy(e.local_name().as_ref()).into_owned()
}
