//! The hashing passes over a [`Source`]: the first pass (size, SHA-256,
//! SHA-512, per-part SHA-256) and the verifying re-read that fails before
//! the last byte when the source changed. Never talks to the server.

use std::io::{self, Read};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use exportd_hot::{Sha256, Sha512};

use crate::sink::Source;

/// What the first pass learnt about the source.
pub(super) struct Digests {
    pub(super) len: u64,
    pub(super) sha256: [u8; 32],
    pub(super) sha512: Option<[u8; 64]>,
    /// SHA-256 of each part, when the source may go up as multipart.
    pub(super) parts: Option<Vec<[u8; 32]>>,
    pub(super) part_size: u64,
}

impl Digests {
    pub(super) fn multipart(&self, threshold: u64) -> bool {
        self.parts.is_some() && self.len > threshold
    }

    pub(super) fn sha256_b64(&self) -> String {
        B64.encode(self.sha256)
    }

    /// Whether a stored `x-amz-checksum-sha256` value is that of our bytes:
    /// the full-object SHA-256, or the composite of our parts, with or
    /// without the `-<parts>` suffix (some servers, moto among them, leave
    /// it out on HEAD).
    pub(super) fn stored_checksum_matches(&self, stored: &str) -> bool {
        if stored == self.sha256_b64() {
            return true;
        }
        self.composite_b64()
            .is_some_and(|c| c == stored || c.split('-').next() == Some(stored))
    }

    /// S3's composite checksum of a multipart object: SHA-256 of the
    /// concatenated part digests, `-<number of parts>`.
    pub(super) fn composite_b64(&self) -> Option<String> {
        let parts = self.parts.as_ref()?;
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        Some(format!("{}-{}", B64.encode(h.finalize()), parts.len()))
    }
}

pub(super) const BUF: usize = 64 * 1024;

pub(super) fn first_pass(
    src: &dyn Source,
    want_sha512: bool,
    part_size: Option<u64>,
) -> io::Result<Digests> {
    let mut r = src.open()?;
    let mut buf = vec![0u8; BUF];
    let mut h256 = Sha256::new();
    let mut h512 = want_sha512.then(Sha512::new);
    let mut part_h = Sha256::new();
    let mut part_fill = 0u64;
    let mut parts = part_size.map(|_| Vec::new());
    let ps = part_size.unwrap_or(u64::MAX);
    let mut len = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        h256.update(chunk);
        if let Some(h) = h512.as_mut() {
            h.update(chunk);
        }
        len += n as u64;
        if let Some(parts) = parts.as_mut() {
            let mut rest = chunk;
            while !rest.is_empty() {
                let take = ((ps - part_fill) as usize).min(rest.len());
                part_h.update(&rest[..take]);
                part_fill += take as u64;
                rest = &rest[take..];
                if part_fill == ps {
                    parts.push(std::mem::take(&mut part_h).finalize());
                    part_fill = 0;
                }
            }
        }
    }
    if let Some(parts) = parts.as_mut() {
        if part_fill > 0 || parts.is_empty() {
            parts.push(part_h.finalize());
        }
    }
    Ok(Digests {
        len,
        sha256: h256.finalize(),
        sha512: h512.map(Sha512::finalize),
        parts,
        part_size: ps,
    })
}

/// Re-reads exactly `len` bytes that must hash to `sha256`; fails (before
/// handing out the last byte) if the source is shorter, longer or different,
/// so the server never receives a complete wrong body.
pub(super) struct Verified<'a> {
    pub(super) inner: &'a mut dyn Read,
    pub(super) remaining: u64,
    pub(super) hasher: Sha256,
    pub(super) expected: [u8; 32],
}

impl Read for Verified<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.remaining) as usize;
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(changed("the source became shorter"));
        }
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        if self.remaining == 0 {
            let got: [u8; 32] = std::mem::take(&mut self.hasher).finalize();
            if got != self.expected {
                return Err(changed("the source bytes changed"));
            }
        }
        Ok(n)
    }
}

pub(super) fn changed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what} between the hashing pass and the upload"),
    )
}

/// Opens `src` and skips to `offset`.
pub(super) fn open_at<'s>(src: &'s dyn Source, offset: u64) -> io::Result<Box<dyn Read + 's>> {
    let mut r = src.open()?;
    let skipped = io::copy(&mut (&mut r).take(offset), &mut io::sink())?;
    if skipped != offset {
        return Err(changed("the source became shorter"));
    }
    Ok(r)
}
