//! The journal's frame codec and record keys. Pure: never opens, writes or
//! cuts a file, and never decides what a bad frame means (the caller does).
//!
//! Encodes and decodes one `[len: u32 LE][postcard entry][crc32 LE]` frame,
//! streams frames out of a reader, and derives the keys an entry names.
//!
//! Invariant: a frame decodes only if its length is in `1..=MAX_FRAME`, its
//! CRC matches and its body is exactly one [`Entry`]; every prefix of a valid
//! stream decodes to a prefix of its entries ([`decode_frames`]). The entry
//! variants and their postcard encoding are the on-disk format: variants are
//! only ever added at the end.

use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A record's identity in the journal: hash of spool root and relative path.
pub type PathKey = [u8; 16];

/// An audit row's `row_hash`, as bytes.
pub type RowHash = [u8; 32];

/// The largest frame accepted when decoding.
const MAX_FRAME: usize = 4096;

/// The read buffer of [`Journal::open`].
const READ_BUF: usize = 64 << 10;

/// How a finished record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every due copy is at its targets.
    Exported,
    /// Not due (imported, `bt_its`, no user, filtered).
    Skipped,
    /// Refused for good (malformed metadata); redone only if the XML changes.
    Rejected,
}

impl Outcome {
    pub(super) fn code(self) -> u64 {
        match self {
            Outcome::Exported => 1,
            Outcome::Skipped => 2,
            Outcome::Rejected => 3,
        }
    }
    pub(super) fn from_code(c: u64) -> Option<Outcome> {
        match c & 3 {
            1 => Some(Outcome::Exported),
            2 => Some(Outcome::Skipped),
            3 => Some(Outcome::Rejected),
            _ => None,
        }
    }
}

/// One journal entry. Variants 0-2 are the original format (still read);
/// new appends and compaction write 3-7.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// A record version is finished (original format).
    Done {
        /// Path key.
        key: PathKey,
        /// XML size.
        size: u64,
        /// XML mtime, ns since the epoch.
        mtime_ns: i64,
        /// How it ended.
        outcome: Outcome,
    },
    /// One copy (policy x target) of a record version is durable (original
    /// format).
    Copy {
        /// Path key.
        key: PathKey,
        /// XML size.
        size: u64,
        /// XML mtime.
        mtime_ns: i64,
        /// Hash of `policy_id \0 target_id`.
        copy: u64,
    },
    /// The record's XML is gone from the spool; forget it.
    Forget {
        /// Path key.
        key: PathKey,
    },
    /// A record version is finished (compact form).
    Fin {
        /// [`short_key`] of the path key.
        key: u64,
        /// [`version`] of the XML's size and mtime.
        ver: u64,
        /// How it ended.
        outcome: Outcome,
    },
    /// One copy is durable and its `export` row is `row` (compact form).
    Part {
        /// [`short_key`].
        key: u64,
        /// [`version`].
        ver: u64,
        /// [`copy_id`].
        copy: u64,
        /// The `row_hash` of the copy's `export` audit row.
        row: RowHash,
        /// Every `export` row of this process older than `floor` (in chain
        /// order) was journaled when this entry was written.
        floor: Option<RowHash>,
    },
    /// An `export` audit row found at recovery without its journal entry:
    /// the copy it proves is adopted (no second row) when that record's copy
    /// with the same signature is made again.
    Orphan {
        /// The row's `row_hash`.
        row: RowHash,
        /// [`row_signature`] of the row.
        sig: RowHash,
    },
    /// Every `export` row up to this one (chain order) is journaled.
    Floor {
        /// A `row_hash`, or the genesis hash.
        row: RowHash,
    },
    /// An `export` row after the floor that is journaled (written by
    /// compaction, which drops the rows of finished records).
    Ack {
        /// The row's `row_hash`.
        row: RowHash,
    },
}

/// Computes the path key of a spool file.
pub fn path_key(root: &Path, rel: &str) -> PathKey {
    let mut h = Sha256::new();
    h.update(root.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(rel.as_bytes());
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

/// The 64-bit key the index keeps of a path key (collisions among a
/// million records: about 3e-8).
pub fn short_key(k: &PathKey) -> u64 {
    u64::from_le_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]])
}

/// A record version's 61-bit hash (size and mtime), low 3 bits clear.
pub fn version(size: u64, mtime_ns: i64) -> u64 {
    let mut h = Sha256::new();
    h.update(size.to_le_bytes());
    h.update(mtime_ns.to_le_bytes());
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]) & !7
}

/// Computes the copy id of a (policy, target) pair.
pub fn copy_id(policy_id: &str, target_id: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(policy_id.as_bytes());
    h.update([0]);
    h.update(target_id.as_bytes());
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// The signature of an `export` row: SHA-256 of the fields that identify a
/// copy (record, native id, source folder, policy, target kind and folder,
/// files, bytes, folder digest) as they appear in the CSV line. Two rows
/// with the same signature record the same bytes at the same place.
pub fn row_signature(csv_fields: &[&str]) -> Option<RowHash> {
    if csv_fields.len() < 14 {
        return None;
    }
    let mut h = Sha256::new();
    for i in [1usize, 2, 3, 4, 5, 6, 8, 9, 13] {
        h.update(csv_fields[i].as_bytes());
        h.update([0]);
    }
    Some(h.finalize().into())
}

/// Encodes one entry as a frame.
pub fn encode_frame(e: &Entry) -> Vec<u8> {
    let body = postcard::to_allocvec(e).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out
}

/// What [`decode_one`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid frame of `len` bytes.
    Frame(Entry, usize),
    /// The buffer ends inside a frame that may still be valid.
    Short,
    /// Not a valid frame.
    Bad,
}

/// Decodes the frame at the start of `buf`.
pub fn decode_one(buf: &[u8]) -> Decoded {
    if buf.len() < 4 {
        return Decoded::Short;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 || len > MAX_FRAME {
        return Decoded::Bad;
    }
    if buf.len() < len + 8 {
        return Decoded::Short;
    }
    let body = &buf[4..4 + len];
    let c = &buf[4 + len..len + 8];
    if u32::from_le_bytes([c[0], c[1], c[2], c[3]]) != crc32fast::hash(body) {
        return Decoded::Bad;
    }
    match postcard::take_from_bytes::<Entry>(body) {
        Ok((e, [])) => Decoded::Frame(e, len + 8),
        _ => Decoded::Bad,
    }
}

/// Decodes frames from `buf`. Returns the entries and the length of the valid
/// prefix (anything after it is torn or damaged).
pub fn decode_frames(buf: &[u8]) -> (Vec<Entry>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Decoded::Frame(e, n) = decode_one(&buf[pos..]) {
        out.push(e);
        pos += n;
    }
    (out, pos)
}

/// Streams frames out of a reader through one fixed buffer.
pub(super) struct FrameReader<R: Read> {
    rd: R,
    pub(super) buf: Vec<u8>,
    pub(super) start: usize,
    pub(super) end: usize,
    /// File offset of `buf[start]`.
    pub(super) pos: u64,
    eof: bool,
}

pub(super) enum Step {
    Frame(Entry, u64, usize),
    /// Bad bytes at this offset (the rest of the file may hold valid frames).
    Bad(u64),
    /// The file ends inside a frame starting at this offset.
    Torn(u64),
    End,
}

impl<R: Read> FrameReader<R> {
    pub(super) fn new(rd: R) -> Self {
        FrameReader {
            rd,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            pos: 0,
            eof: false,
        }
    }
    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end < self.buf.len() {
            match self.rd.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    pub(super) fn next(&mut self) -> io::Result<Step> {
        loop {
            match decode_one(&self.buf[self.start..self.end]) {
                Decoded::Frame(e, n) => {
                    let at = self.pos;
                    self.start += n;
                    self.pos += n as u64;
                    return Ok(Step::Frame(e, at, n));
                }
                Decoded::Bad => return Ok(Step::Bad(self.pos)),
                Decoded::Short if self.eof => {
                    return Ok(if self.start == self.end {
                        Step::End
                    } else {
                        Step::Torn(self.pos)
                    });
                }
                Decoded::Short => self.fill()?,
            }
        }
    }
    /// Skips one byte (looking for the next valid frame).
    pub(super) fn skip(&mut self) {
        if self.start < self.end {
            self.start += 1;
            self.pos += 1;
        }
    }
}
