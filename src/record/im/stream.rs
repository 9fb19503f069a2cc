//! Transcripts read as streams, in bounded memory: never holds a whole
//! transcript nor writes anything.
//!
//! [`xml_reader`] turns a `.im` file (a seekable file, or the plaintext
//! stream of a `.im.age`) into a reader of `transcript.xml` that applies,
//! while the bytes go by, every check the in-memory path applies to the
//! whole: the ZIP caps (declared size, ratio, CRC-32, exactly one entry
//! `transcript.xml`, no encryption), the size cap and UTF-8. A check that
//! fails surfaces as the same [`ImError`] as in memory.
//!
//! [`TranscriptIndex::build`] is the first pass over it: it checks the whole
//! document and keeps only the conversation header and the attachments
//! (which may follow the messages they belong to). [`MessagesJson`] is the
//! second pass: a [`Read`] producing `<id>.messages.json` message by message,
//! byte for byte what [`super::messages_json`] builds in memory. At any time
//! one message, the index and a 64 KiB read buffer are held, whatever the
//! transcript's size.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};

use super::json::{Msg, Part};
use super::{Header, ImError, Item, MAX_TRANSCRIPT_BYTES, Parser, ZIP_MAGIC, check_bomb};
use crate::record::xml::XmlError;

/// The most bytes of attachment names an index keeps (message ids and file
/// names of every `<attachment>`).
pub const MAX_INDEX_BYTES: usize = 16 << 20;

/// A check that failed inside a reader, carried through `io::Error` to the
/// parser and turned back into its [`ImError`].
#[derive(Debug, Clone, thiserror::Error)]
enum Fault {
    #[error("transcript is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("{0}")]
    ZipBomb(String),
    #[error("{0}")]
    Zip(String),
    #[error("{0}")]
    ZipLayout(String),
    #[error("XML is not valid UTF-8 (at byte {0})")]
    NotUtf8(usize),
}

impl From<Fault> for ImError {
    fn from(f: Fault) -> ImError {
        match f {
            Fault::TooLarge { size, limit } => ImError::TooLarge { size, limit },
            Fault::ZipBomb(m) => ImError::ZipBomb(m),
            Fault::Zip(m) => ImError::Zip(m),
            Fault::ZipLayout(m) => ImError::ZipLayout(m),
            Fault::NotUtf8(at) => ImError::Xml(XmlError::NotUtf8(at)),
        }
    }
}

fn fault(f: Fault) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, f)
}

/// The [`ImError`] an I/O error read from a stream of this module stands for.
pub fn io_to_im(e: io::Error) -> ImError {
    match e.get_ref().and_then(|x| x.downcast_ref::<Fault>()) {
        Some(f) => f.clone().into(),
        None => ImError::Io(e),
    }
}

/// A quick-xml error met while reading: a fault of the stream keeps its
/// meaning, any other is malformed XML at the reader's position.
pub(crate) fn reader_error<R>(r: &quick_xml::Reader<R>, e: quick_xml::Error) -> ImError {
    match e {
        quick_xml::Error::Io(arc) => match arc.get_ref().and_then(|x| x.downcast_ref::<Fault>()) {
            Some(f) => f.clone().into(),
            None => ImError::Io(io::Error::new(arc.kind(), arc.to_string())),
        },
        other => crate::record::xml::malformed(r, other).into(),
    }
}

/// Where a `.im` file's bytes come from.
pub enum ImSource<'a> {
    /// The plaintext file itself (seekable: a ZIP's central directory is read).
    File(File),
    /// A plaintext stream (a decrypted `.im.age`): a ZIP is read front to
    /// back, its trailing central directory checked at the end.
    Stream(Box<dyn Read + 'a>),
}

/// A reader of `transcript.xml`, checked as it is read (see the module doc).
pub type XmlStream<'a> = BufReader<Utf8Check<Box<dyn Read + 'a>>>;

/// Opens the `transcript.xml` of a `.im` source (ZIP or plain XML).
pub fn xml_reader<'a>(src: ImSource<'a>) -> Result<XmlStream<'a>, ImError> {
    let inner: Box<dyn Read + 'a> = match src {
        ImSource::File(mut f) => {
            let len = f.metadata()?.len();
            if len > MAX_TRANSCRIPT_BYTES {
                return Err(ImError::TooLarge {
                    size: len,
                    limit: MAX_TRANSCRIPT_BYTES,
                });
            }
            let head = read_head(&mut f)?;
            if head != ZIP_MAGIC {
                Box::new(io::Cursor::new(head).chain(f))
            } else {
                f.seek(SeekFrom::Start(0))?;
                zip_from_file(f)?
            }
        }
        ImSource::Stream(mut s) => {
            let head = read_head(&mut s)?;
            if head != ZIP_MAGIC {
                Box::new(io::Cursor::new(head).chain(s))
            } else {
                zip_from_stream(s)?
            }
        }
    };
    Ok(BufReader::with_capacity(
        64 << 10,
        Utf8Check {
            inner,
            pos: 0,
            pending: Vec::new(),
        },
    ))
}

/// Up to the first four bytes (fewer for a shorter file).
fn read_head(r: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut h = Vec::with_capacity(4);
    r.take(4).read_to_end(&mut h)?;
    Ok(h)
}

/// Reads a ZIP through its central directory (the same checks as the
/// in-memory path), then streams the one entry from its data offset.
fn zip_from_file<'a>(f: File) -> Result<Box<dyn Read + 'a>, ImError> {
    let zerr = |e: zip::result::ZipError| ImError::Zip(e.to_string());
    let mut archive = zip::ZipArchive::new(f).map_err(zerr)?;
    if archive.len() != 1 {
        return Err(ImError::ZipLayout(format!(
            "{} entries, expected exactly one (transcript.xml)",
            archive.len()
        )));
    }
    let (declared, compressed, crc, method) = {
        let e = archive.by_index_raw(0).map_err(zerr)?;
        check_name(&String::from_utf8_lossy(e.name_raw()))?;
        if e.encrypted() {
            return Err(ImError::Encrypted("transcript.xml".into()));
        }
        (e.size(), e.compressed_size(), e.crc32(), e.compression())
    };
    check_bomb(declared, compressed)?;
    let start = {
        let e = archive.by_index(0).map_err(|e| match e {
            zip::result::ZipError::UnsupportedArchive(m) if m.contains("assword") => {
                ImError::Encrypted("transcript.xml".into())
            }
            other => zerr(other),
        })?;
        e.data_start()
            .ok_or_else(|| ImError::Zip("entry data offset unknown".into()))?
    };
    let mut f = archive.into_inner();
    f.seek(SeekFrom::Start(start))?;
    let method = match method {
        zip::CompressionMethod::Stored => 0,
        zip::CompressionMethod::Deflated => 8,
        other => {
            return Err(ImError::Zip(format!(
                "compression method {other:?} not supported"
            )));
        }
    };
    Ok(Box::new(Entry::new(
        Box::new(f),
        method,
        declared,
        compressed,
        crc,
        Trailer::None,
    )))
}

fn check_name(name: &str) -> Result<(), ImError> {
    if name.starts_with('/')
        || name.contains('\\')
        || name.split('/').any(|c| c == "..")
        || name.bytes().any(|b| b < 0x20)
    {
        return Err(ImError::UnsafeEntry(name.to_string()));
    }
    if name != "transcript.xml" {
        return Err(ImError::ZipLayout(format!(
            "entry is {name:?}, expected \"transcript.xml\""
        )));
    }
    Ok(())
}

fn le16(b: &[u8], at: usize) -> u64 {
    u16::from_le_bytes([b[at], b[at + 1]]) as u64
}

fn le32(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as u64
}

fn read_n(r: &mut dyn Read, n: usize) -> Result<Vec<u8>, ImError> {
    let mut v = vec![0u8; n];
    r.read_exact(&mut v).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ImError::Zip("truncated ZIP header".into())
        } else {
            ImError::Io(e)
        }
    })?;
    Ok(v)
}

/// Reads a ZIP front to back from its local header (the magic is consumed).
fn zip_from_stream<'a>(mut s: Box<dyn Read + 'a>) -> Result<Box<dyn Read + 'a>, ImError> {
    let h = read_n(&mut s, 26)?;
    // Offsets in the 30-byte local header, minus the 4-byte magic.
    let flags = le16(&h, 2);
    let method = le16(&h, 4);
    let crc = le32(&h, 10) as u32;
    let mut compressed = le32(&h, 14);
    let mut declared = le32(&h, 18);
    let name_len = le16(&h, 22) as usize;
    let extra_len = le16(&h, 24) as usize;
    let name = read_n(&mut s, name_len)?;
    let extra = read_n(&mut s, extra_len)?;
    check_name(&String::from_utf8_lossy(&name))?;
    if flags & 1 != 0 {
        return Err(ImError::Encrypted("transcript.xml".into()));
    }
    // Sizes and CRC after the data (a data descriptor): only a deflated
    // entry can be streamed then (deflate marks its own end).
    let dd = flags & 8 != 0 && compressed == 0 && declared == 0;
    if dd && method != 8 {
        return Err(ImError::Zip(
            "a stored entry whose size follows its data cannot be streamed".into(),
        ));
    }
    let zip64 = compressed == 0xFFFF_FFFF || declared == 0xFFFF_FFFF;
    if zip64 {
        // ZIP64: the sizes are in extra field 0x0001.
        let mut i = 0;
        while i + 4 <= extra.len() {
            let (id, len) = (le16(&extra, i), le16(&extra, i + 2) as usize);
            let body = extra.get(i + 4..i + 4 + len).unwrap_or(&[]);
            if id == 1 {
                let mut at = 0;
                let mut next = || {
                    let v = body
                        .get(at..at + 8)
                        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0xFF; 8])));
                    at += 8;
                    v
                };
                if declared == 0xFFFF_FFFF {
                    declared = next().unwrap_or(u64::MAX);
                }
                if compressed == 0xFFFF_FFFF {
                    compressed = next().unwrap_or(u64::MAX);
                }
            }
            i += 4 + len;
        }
    }
    if compressed > MAX_TRANSCRIPT_BYTES {
        return Err(ImError::TooLarge {
            size: compressed,
            limit: MAX_TRANSCRIPT_BYTES,
        });
    }
    if method != 0 && method != 8 {
        return Err(ImError::Zip(format!(
            "compression method {method} not supported"
        )));
    }
    if dd {
        return Ok(Box::new(Entry::new(
            s,
            method,
            MAX_TRANSCRIPT_BYTES,
            u64::MAX,
            crc,
            Trailer::DescriptorThenDirectory { zip64 },
        )));
    }
    check_bomb(declared, compressed)?;
    Ok(Box::new(Entry::new(
        s,
        method,
        declared,
        compressed,
        crc,
        Trailer::Directory,
    )))
}

type Raw<'a> = io::Take<Box<dyn Read + 'a>>;

enum Body<'a> {
    Stored(Raw<'a>),
    Deflate(flate2::bufread::DeflateDecoder<BufReader<Raw<'a>>>),
    Done,
}

/// What follows an entry's data and is checked at its end.
#[derive(Clone, Copy)]
enum Trailer {
    /// Nothing (read through the central directory, already checked).
    None,
    /// A streamed ZIP: the central directory, of exactly one entry.
    Directory,
    /// A streamed ZIP whose sizes and CRC follow the data: the data
    /// descriptor (64-bit sizes for ZIP64), then the central directory.
    DescriptorThenDirectory { zip64: bool },
}

/// One ZIP entry's data, inflated and checked: never more than its declared
/// size, the ratio cap, CRC-32 at the end; from a stream, followed by a
/// central directory of exactly one entry.
struct Entry<'a> {
    body: Body<'a>,
    declared: u64,
    compressed: u64,
    cap: u64,
    got: u64,
    crc: u32,
    hasher: crc32fast::Hasher,
    trailer: Trailer,
}

impl<'a> Entry<'a> {
    fn new(
        inner: Box<dyn Read + 'a>,
        method: u64,
        declared: u64,
        compressed: u64,
        crc: u32,
        trailer: Trailer,
    ) -> Entry<'a> {
        let raw = inner.take(compressed);
        let body = if method == 0 {
            Body::Stored(raw)
        } else {
            Body::Deflate(flate2::bufread::DeflateDecoder::new(
                BufReader::with_capacity(32 << 10, raw),
            ))
        };
        Entry {
            body,
            declared,
            compressed,
            cap: declared.min(MAX_TRANSCRIPT_BYTES),
            got: 0,
            crc,
            hasher: crc32fast::Hasher::new(),
            trailer,
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        let body = std::mem::replace(&mut self.body, Body::Done);
        // What follows the data: for a descriptor, the bytes the inflater's
        // buffer read past the end of the deflate stream come first.
        let (rest, used): (Option<Box<dyn Read + 'a>>, u64) = match body {
            Body::Stored(t) => (Some(t.into_inner()), self.got),
            Body::Deflate(d) => {
                let used = d.total_in();
                let b = d.into_inner();
                match self.trailer {
                    Trailer::DescriptorThenDirectory { .. } => (Some(Box::new(b)), used),
                    _ => (Some(b.into_inner().into_inner()), used),
                }
            }
            Body::Done => (None, 0),
        };
        let mut rest = rest;
        if let (Trailer::DescriptorThenDirectory { zip64 }, Some(s)) = (self.trailer, &mut rest) {
            let (crc, compressed, size) = data_descriptor(s, zip64)?;
            if compressed != used {
                return Err(fault(Fault::Zip(format!(
                    "data descriptor says {compressed} compressed bytes, the entry had {used}"
                ))));
            }
            (self.crc, self.compressed, self.declared) = (crc, compressed, size);
            if self.got != size {
                return Err(fault(Fault::Zip(format!(
                    "data descriptor says {size} bytes, the entry inflated to {}",
                    self.got
                ))));
            }
        }
        if self.got < self.declared {
            return Err(fault(Fault::Zip(format!(
                "entry ends after {} of its declared {} bytes",
                self.got, self.declared
            ))));
        }
        check_bomb(self.got, self.compressed).map_err(|e| match e {
            ImError::ZipBomb(m) => fault(Fault::ZipBomb(m)),
            other => io::Error::other(other.to_string()),
        })?;
        let sum = std::mem::take(&mut self.hasher).finalize();
        if sum != self.crc {
            return Err(fault(Fault::Zip("invalid checksum (CRC-32)".into())));
        }
        if let (Trailer::Directory | Trailer::DescriptorThenDirectory { .. }, Some(s)) =
            (self.trailer, &mut rest)
        {
            central_directory_of_one(s)?;
        }
        Ok(())
    }
}

/// A data descriptor: an optional signature, CRC-32, then the compressed and
/// inflated sizes (64-bit for ZIP64).
fn data_descriptor(s: &mut dyn Read, zip64: bool) -> io::Result<(u32, u64, u64)> {
    let trunc = |e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            fault(Fault::Zip("truncated ZIP (no data descriptor)".into()))
        } else {
            e
        }
    };
    let mut w = [0u8; 4];
    s.read_exact(&mut w).map_err(trunc)?;
    if w == *b"PK\x07\x08" {
        s.read_exact(&mut w).map_err(trunc)?;
    }
    let crc = u32::from_le_bytes(w);
    let n = if zip64 { 16 } else { 8 };
    let mut b = [0u8; 16];
    s.read_exact(&mut b[..n]).map_err(trunc)?;
    let (c, u) = if zip64 {
        (
            u64::from_le_bytes(b[..8].try_into().unwrap_or([0xFF; 8])),
            u64::from_le_bytes(b[8..16].try_into().unwrap_or([0xFF; 8])),
        )
    } else {
        (le32(&b, 0), le32(&b, 4))
    };
    Ok((crc, c, u))
}

/// After the entry of a streamed ZIP: one central directory header, then
/// the end of the central directory (a second entry is a layout error).
fn central_directory_of_one(s: &mut dyn Read) -> io::Result<()> {
    let layout = |m: &str| fault(Fault::ZipLayout(m.to_string()));
    let trunc = |e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            fault(Fault::Zip("truncated ZIP (no central directory)".into()))
        } else {
            e
        }
    };
    let mut sig = [0u8; 4];
    s.read_exact(&mut sig).map_err(trunc)?;
    if sig == *b"PK\x03\x04" {
        return Err(layout(
            "more than one entry, expected exactly one (transcript.xml)",
        ));
    }
    if sig != *b"PK\x01\x02" {
        return Err(fault(Fault::Zip(
            "no central directory after the entry".into(),
        )));
    }
    let mut cd = [0u8; 42];
    s.read_exact(&mut cd).map_err(trunc)?;
    // Name, extra and comment lengths at offsets 28, 30, 32 of the 46-byte header.
    let skip = le16(&cd, 24) + le16(&cd, 26) + le16(&cd, 28);
    io::copy(&mut s.take(skip), &mut io::sink())?;
    s.read_exact(&mut sig).map_err(trunc)?;
    match &sig {
        b"PK\x05\x06" | b"PK\x06\x06" => Ok(()),
        b"PK\x01\x02" => Err(layout(
            "more than one entry, expected exactly one (transcript.xml)",
        )),
        _ => Err(fault(Fault::Zip("malformed central directory".into()))),
    }
}

impl Read for Entry<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = match &mut self.body {
            Body::Stored(r) => r.read(buf),
            Body::Deflate(r) => r.read(buf),
            Body::Done => return Ok(0),
        }
        .map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                fault(Fault::Zip(e.to_string()))
            } else {
                e
            }
        })?;
        if n == 0 {
            self.finish()?;
            return Ok(0);
        }
        self.got += n as u64;
        if self.got > self.cap {
            return Err(fault(Fault::ZipBomb(format!(
                "entry inflates past its declared size of {} bytes",
                self.declared
            ))));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Checks that the bytes read are UTF-8 (naming the first bad offset, as
/// [`crate::record::xml::check_utf8`] does on a whole document) and at most
/// [`MAX_TRANSCRIPT_BYTES`].
pub struct Utf8Check<R> {
    inner: R,
    pos: u64,
    /// The start of a sequence cut by the end of the last read.
    pending: Vec<u8>,
}

impl<R: Read> Read for Utf8Check<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            if !self.pending.is_empty() {
                let at = self.pos - self.pending.len() as u64;
                return Err(fault(Fault::NotUtf8(at as usize)));
            }
            return Ok(0);
        }
        let start = self.pos;
        self.pos += n as u64;
        if self.pos > MAX_TRANSCRIPT_BYTES {
            return Err(fault(Fault::TooLarge {
                size: self.pos,
                limit: MAX_TRANSCRIPT_BYTES,
            }));
        }
        let mut chunk = &buf[..n];
        let mut chunk_at = start;
        if !self.pending.is_empty() {
            // Complete the cut sequence with the first bytes of this read.
            let seq_at = start - self.pending.len() as u64;
            let take = (4 - self.pending.len()).min(chunk.len());
            let mut joined = self.pending.clone();
            joined.extend_from_slice(&chunk[..take]);
            let used = match std::str::from_utf8(&joined) {
                Ok(_) => take,
                Err(e) if e.valid_up_to() > 0 => e.valid_up_to() - self.pending.len(),
                Err(e) if e.error_len().is_none() => {
                    // Still incomplete: keep waiting (only when this read was short).
                    self.pending = joined;
                    return Ok(n);
                }
                Err(_) => return Err(fault(Fault::NotUtf8(seq_at as usize))),
            };
            self.pending.clear();
            chunk = &chunk[used..];
            chunk_at += used as u64;
        }
        if let Err(e) = std::str::from_utf8(chunk) {
            let bad = chunk_at + e.valid_up_to() as u64;
            match e.error_len() {
                Some(_) => return Err(fault(Fault::NotUtf8(bad as usize))),
                None => self.pending = chunk[e.valid_up_to()..].to_vec(),
            }
        }
        Ok(n)
    }
}

/// The first pass over a transcript: the whole document checked, its header
/// (with every participant) and attachments kept, messages dropped.
#[derive(Debug, Clone)]
pub struct TranscriptIndex {
    /// The conversation header.
    pub header: Header,
    /// Attachment file names by message id, in document order.
    pub attachments: HashMap<String, Vec<String>>,
    /// Number of messages.
    pub messages: u64,
}

impl TranscriptIndex {
    /// Reads a whole transcript XML (see [`xml_reader`]).
    pub fn build<R: BufRead>(xml: R) -> Result<TranscriptIndex, ImError> {
        let mut p = Parser::new(xml);
        let mut attachments: HashMap<String, Vec<String>> = HashMap::new();
        let mut kept = 0usize;
        let mut messages = 0u64;
        while let Some(item) = p.next_item()? {
            match item {
                Item::Message(_) => messages += 1,
                Item::Attachment(a) => {
                    kept += a.message_id.len() + a.file.len();
                    if kept > MAX_INDEX_BYTES {
                        return Err(ImError::Invalid(
                            "attachment",
                            format!("the attachment list is over {MAX_INDEX_BYTES} bytes"),
                        ));
                    }
                    attachments.entry(a.message_id).or_default().push(a.file);
                }
            }
        }
        Ok(TranscriptIndex {
            header: p.finish()?,
            attachments,
            messages,
        })
    }
}

/// The second pass: `<record_id>.messages.json` produced message by message
/// as it is read (the bytes of [`super::messages_json`]).
pub struct MessagesJson<'i, R: BufRead> {
    parser: Parser<R>,
    index: &'i TranscriptIndex,
    record_id: &'i str,
    state: State,
    out: Vec<u8>,
    at: usize,
}

#[derive(PartialEq, Eq)]
enum State {
    Head,
    First,
    More,
    Done,
}

impl<'i, R: BufRead> MessagesJson<'i, R> {
    /// Renders the document of `xml` (the same transcript `index` was built from).
    pub fn new(xml: R, index: &'i TranscriptIndex, record_id: &'i str) -> Self {
        MessagesJson {
            parser: Parser::new(xml),
            index,
            record_id,
            state: State::Head,
            out: Vec::with_capacity(64 << 10),
            at: 0,
        }
    }

    fn refill(&mut self) -> Result<(), ImError> {
        self.out.clear();
        self.at = 0;
        match self.state {
            State::Head => {
                let h = &self.index.header;
                let s = |v: &str| serde_json::to_string(v).unwrap_or_default();
                let parts: Vec<Part<'_>> = h.participants.iter().map(Part::from).collect();
                let parts = serde_json::to_vec_pretty(&parts).unwrap_or_default();
                self.out.extend_from_slice(
                    format!(
                        "{{\n  \"record_id\": {},\n  \"conversation_id\": {},\n  \"kind\": {},\n  \"title\": {},\n  \"owner\": {},\n  \"participants\": ",
                        s(self.record_id),
                        s(&h.conversation_id),
                        s(h.kind.as_str()),
                        s(&h.title),
                        s(&h.owner)
                    )
                    .as_bytes(),
                );
                indent_into(&mut self.out, &parts, b"  ");
                self.out.extend_from_slice(b",\n  \"messages\": [");
                self.state = State::First;
            }
            State::First | State::More => loop {
                match self.parser.next_item()? {
                    Some(Item::Message(m)) => {
                        let att: Vec<&str> = self
                            .index
                            .attachments
                            .get(&m.id)
                            .map(|v| v.iter().map(String::as_str).collect())
                            .unwrap_or_default();
                        let j = serde_json::to_vec_pretty(&Msg::of(&m, att)).unwrap_or_default();
                        if self.state == State::More {
                            self.out.push(b',');
                        }
                        self.out.extend_from_slice(b"\n    ");
                        indent_into(&mut self.out, &j, b"    ");
                        self.state = State::More;
                        break;
                    }
                    Some(Item::Attachment(_)) => {}
                    None => {
                        if self.state == State::More {
                            self.out.extend_from_slice(b"\n  ");
                        }
                        self.out.extend_from_slice(b"]\n}\n");
                        self.state = State::Done;
                        break;
                    }
                }
            },
            State::Done => {}
        }
        Ok(())
    }
}

/// Appends `json` (pretty-printed at depth 0) with every line after the
/// first indented by `pad` (JSON strings hold no raw newline).
fn indent_into(out: &mut Vec<u8>, json: &[u8], pad: &[u8]) {
    for (i, line) in json.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
            out.extend_from_slice(pad);
        }
        out.extend_from_slice(line);
    }
}

impl<R: BufRead> Read for MessagesJson<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at >= self.out.len() {
            if self.state == State::Done {
                return Ok(0);
            }
            self.refill().map_err(|e| match e {
                ImError::Io(e) => e,
                other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
            })?;
        }
        let n = buf.len().min(self.out.len() - self.at);
        buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
