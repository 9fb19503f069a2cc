//! The age STREAM payload; never returns plaintext of a chunk whose tag
//! failed, nor accepts a truncated stream.
//!
//! The STREAM payload (64 KiB ChaCha20-Poly1305 chunks) and the public
//! streaming [`Decryptor`] and [`Encryptor`].

use std::io::{self, Read, Write};

use exportd_hot::Aead;
use zeroize::Zeroizing;

use super::AgeError;
use super::format::{self, FILE_KEY_LEN, FileKey};
use super::keys::{KeyStore, Recipient};

/// Plaintext bytes per chunk.
pub(crate) const CHUNK: usize = 64 * 1024;
/// Poly1305 tag length.
const TAG: usize = 16;
/// Ciphertext bytes per full chunk.
const ENC_CHUNK: usize = CHUNK + TAG;
/// The decryptor's only buffer: one encrypted chunk plus one lookahead byte,
/// which tells a full final chunk from a full non-final one.
pub(crate) const BUF_LEN: usize = ENC_CHUNK + 1;
/// Length of the payload nonce that follows the header.
const NONCE_LEN: usize = 16;

/// STREAM nonce: 11-byte big-endian chunk counter, then the last-chunk flag.
pub(crate) fn chunk_nonce(counter: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    n
}

fn payload_aead(nonce: &[u8; NONCE_LEN], file_key: &FileKey) -> Aead {
    let key = format::hkdf32(nonce, file_key.as_slice(), b"payload");
    Aead::new(&key)
}

/// Reads into `buf[*have..]` until it is full or the source ends.
///
/// Returns whether the source ended. `*have` stays exact even on error, so
/// a failed read can be retried.
fn fill<R: Read>(src: &mut R, buf: &mut [u8], have: &mut usize) -> io::Result<bool> {
    while *have < buf.len() {
        match src.read(&mut buf[*have..]) {
            Ok(0) => return Ok(true),
            // `min` guards against readers that report more than they were given.
            Ok(n) => *have = (*have + n).min(buf.len()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

fn payload_error(msg: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        AgeError::Payload(msg.to_string()),
    )
}

#[derive(Debug)]
enum State {
    /// More chunks to come.
    Open,
    /// The final chunk was verified; EOF once its plaintext is drained.
    Done,
    /// This payload error is returned (repeatedly) once pending plaintext is drained.
    Failed(String),
}

/// Streaming decryptor: parses the header from `src`, unwraps the file key with any identity of the store, verifies the header MAC, then implements `std::io::Read` yielding plaintext chunk by chunk.
///
/// A chunk's plaintext is released only after its tag verified. Errors in
/// `Read` are `io::Error` of kind `InvalidData` wrapping [`AgeError::Payload`]
/// (so callers can downcast with `get_ref()`); errors of the source itself are
/// passed through unchanged and may be retried. After a payload error every
/// further read fails again.
///
/// Fixed buffers: one 64 KiB + 16 (+1 lookahead byte) chunk buffer, no growth;
/// chunks are decrypted in place. The header must fit in that buffer too. The
/// buffer is wiped on drop.
pub struct Decryptor<R: Read> {
    src: R,
    buf: Zeroizing<Box<[u8]>>,
    aead: Aead,
    /// Ciphertext bytes at `buf[..have]` (meaningful when no plaintext is pending).
    have: usize,
    /// A lookahead byte from the next chunk sits at `buf[ENC_CHUNK]`.
    carry: bool,
    /// The source returned end-of-file.
    eof: bool,
    /// Pending verified plaintext: `buf[pos..end]`.
    pos: usize,
    end: usize,
    counter: u64,
    state: State,
}

impl<R: Read> Decryptor<R> {
    /// Reads and checks the header: parse, unwrap the file key with any
    /// identity of `keys`, verify the MAC, read the payload nonce.
    ///
    /// Errors: [`AgeError::Header`] (malformed header, low-order share,
    /// missing nonce), [`AgeError::NoMatch`], [`AgeError::HeaderMac`],
    /// [`AgeError::Unsupported`], [`AgeError::Io`].
    pub fn new(mut src: R, keys: &KeyStore) -> Result<Self, AgeError> {
        let mut buf = Zeroizing::new(vec![0u8; BUF_LEN].into_boxed_slice());
        let mut have = 0;
        let mut eof = fill(&mut src, &mut buf, &mut have)?;
        let (file_key, header_len) = {
            let header = format::parse_header(&buf[..have], eof)?;
            let file_key = keys.unwrap_file_key(&header.stanzas)?;
            format::verify_mac(&header, &file_key)?;
            (file_key, header.len)
        };
        buf.copy_within(header_len..have, 0);
        have -= header_len;
        if !eof {
            eof = fill(&mut src, &mut buf, &mut have)?;
        }
        if have < NONCE_LEN {
            return Err(AgeError::Header(
                "file ends before the 16-byte payload nonce (truncated after the header)".into(),
            ));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&buf[..NONCE_LEN]);
        buf.copy_within(NONCE_LEN..have, 0);
        have -= NONCE_LEN;
        let aead = payload_aead(&nonce, &file_key);
        Ok(Decryptor {
            src,
            buf,
            aead,
            have,
            carry: false,
            eof,
            pos: 0,
            end: 0,
            counter: 0,
            state: State::Open,
        })
    }

    /// Verifies and decrypts `buf[..len]` in place as chunk `counter`.
    /// The buffer is left untouched if the tag does not verify.
    fn open(&mut self, len: usize, last: bool) -> bool {
        let nonce = chunk_nonce(self.counter, last);
        let Some((ct, rest)) = self.buf.get_mut(..len).and_then(|b| {
            let at = len.checked_sub(TAG)?;
            Some(b.split_at_mut(at))
        }) else {
            return false;
        };
        let Ok(tag) = <[u8; TAG]>::try_from(&*rest) else {
            return false;
        };
        self.aead.open(&nonce, ct, &tag)
    }

    /// Makes the chunk of `len` ciphertext bytes the pending plaintext.
    fn release(&mut self, len: usize) -> Result<(), String> {
        self.pos = 0;
        self.end = len - TAG;
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| "too many chunks".to_string())?;
        Ok(())
    }

    /// Reads, verifies and decrypts the next chunk.
    ///
    /// The outer error is an I/O error of the source (retryable); the inner
    /// one a payload error (final).
    fn next_chunk(&mut self) -> io::Result<Result<(), String>> {
        if self.carry {
            self.buf[0] = self.buf[ENC_CHUNK];
            self.have = 1;
            self.carry = false;
        }
        if !self.eof {
            self.eof = fill(&mut self.src, &mut self.buf, &mut self.have)?;
        }
        let n = self.have;
        let chunk_no = self.counter;
        if n == BUF_LEN {
            // More data follows: this must be a full, non-final chunk.
            if self.open(ENC_CHUNK, false) {
                self.carry = true;
                return Ok(self.release(ENC_CHUNK));
            }
            if self.open(ENC_CHUNK, true) {
                // An authentic final chunk, followed by data that must not be there.
                self.have = 0;
                self.state = State::Failed(
                    "unexpected data after the final chunk (trailing garbage)".into(),
                );
                return Ok(self.release(ENC_CHUNK));
            }
            return Ok(Err(format!(
                "chunk {chunk_no} failed authentication: the file is corrupted or was tampered with"
            )));
        }
        // The source ended: this must be the final chunk.
        self.have = 0;
        if n == 0 {
            return Ok(Err(if chunk_no == 0 {
                "the payload has no chunk at all (file truncated after the nonce)".into()
            } else {
                "the final chunk is missing (file truncated)".into()
            }));
        }
        if n < TAG {
            return Ok(Err(format!(
                "chunk {chunk_no} is shorter than its 16-byte tag (file truncated)"
            )));
        }
        if n == TAG && chunk_no != 0 {
            return Ok(Err(
                "the final chunk is empty, which only an empty payload may have".into(),
            ));
        }
        if self.open(n, true) {
            self.state = State::Done;
            return Ok(self.release(n));
        }
        if n == ENC_CHUNK && self.open(n, false) {
            // An authentic non-final chunk: the chunks after it were cut off.
            self.state = State::Failed("the final chunk is missing (file truncated)".into());
            return Ok(self.release(n));
        }
        Ok(Err(format!(
            "final chunk {chunk_no} failed authentication: the file is truncated, corrupted or was tampered with"
        )))
    }
}

impl<R: Read> Read for Decryptor<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.end {
                let n = out.len().min(self.end - self.pos);
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            match &self.state {
                State::Done => return Ok(0),
                State::Failed(msg) => return Err(payload_error(msg)),
                State::Open => {}
            }
            if let Err(msg) = self.next_chunk()? {
                self.pos = 0;
                self.end = 0;
                self.state = State::Failed(msg);
            }
        }
    }
}

impl<R: Read> std::fmt::Debug for Decryptor<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("chunks", &self.counter)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Streaming encryptor to one or more X25519 recipients (used by the recorder simulator and tests). `finish()` writes the final chunk.
///
/// The header and nonce are written by [`Encryptor::new`]; a chunk is written
/// once 64 KiB are buffered and more data arrives. Dropping the encryptor
/// without calling [`Encryptor::finish`] leaves a truncated file that every
/// decryptor rejects. After a write error the encryptor refuses further use.
pub struct Encryptor<W: Write> {
    dst: W,
    buf: Zeroizing<Box<[u8]>>,
    len: usize,
    counter: u64,
    aead: Aead,
    poisoned: bool,
}

impl<W: Write> Encryptor<W> {
    /// Writes the header (one X25519 stanza per recipient) and the payload
    /// nonce to `dst`, with a fresh random file key.
    ///
    /// Errors: [`AgeError::Key`] without recipients or if randomness is
    /// unavailable, [`AgeError::Io`] if writing fails.
    pub fn new(mut dst: W, recipients: &[Recipient]) -> Result<Self, AgeError> {
        if recipients.is_empty() {
            return Err(AgeError::Key(
                "no recipient given; encrypt to at least one age1... recipient".into(),
            ));
        }
        let rng_err = |e: getrandom::Error| {
            AgeError::Key(format!(
                "operating system random number generator failed: {e}"
            ))
        };
        let mut file_key: FileKey = Zeroizing::new([0u8; FILE_KEY_LEN]);
        getrandom::fill(file_key.as_mut_slice()).map_err(rng_err)?;
        let stanzas = recipients
            .iter()
            .map(|r| r.wrap(&file_key))
            .collect::<Result<Vec<_>, _>>()?;
        let header = format::write_header(&stanzas, &file_key);
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(rng_err)?;
        dst.write_all(&header)?;
        dst.write_all(&nonce)?;
        Ok(Encryptor {
            dst,
            buf: Zeroizing::new(vec![0u8; ENC_CHUNK].into_boxed_slice()),
            len: 0,
            counter: 0,
            aead: payload_aead(&nonce, &file_key),
            poisoned: false,
        })
    }

    /// Encrypts the buffered plaintext as one chunk and writes it.
    fn seal(&mut self, last: bool) -> io::Result<()> {
        let nonce = chunk_nonce(self.counter, last);
        let len = self.len;
        let tag = self
            .aead
            .seal(&nonce, &mut self.buf[..len])
            .ok_or_else(|| io::Error::other("age chunk encryption failed"))?;
        self.buf[len..len + TAG].copy_from_slice(&tag);
        self.dst.write_all(&self.buf[..len + TAG])?;
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| io::Error::other("too many chunks"))?;
        self.len = 0;
        Ok(())
    }

    /// Writes the final chunk, flushes and returns the destination.
    pub fn finish(mut self) -> Result<W, AgeError> {
        if self.poisoned {
            return Err(AgeError::Io(io::Error::other(
                "an earlier write failed; the encrypted output is incomplete",
            )));
        }
        self.seal(true)?;
        self.dst.flush()?;
        Ok(self.dst)
    }
}

impl<W: Write> Write for Encryptor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.poisoned {
            return Err(io::Error::other(
                "an earlier write failed; the encrypted output is incomplete",
            ));
        }
        let mut rest = data;
        while !rest.is_empty() {
            if self.len == CHUNK {
                // More data follows, so the buffered chunk is not the last one.
                if let Err(e) = self.seal(false) {
                    self.poisoned = true;
                    return Err(e);
                }
            }
            let n = rest.len().min(CHUNK - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&rest[..n]);
            self.len += n;
            rest = &rest[n..];
        }
        Ok(data.len())
    }

    /// Flushes the destination; buffered plaintext stays until a chunk fills
    /// or [`Encryptor::finish`] is called.
    fn flush(&mut self) -> io::Result<()> {
        self.dst.flush()
    }
}

impl<W: Write> std::fmt::Debug for Encryptor<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("chunks", &self.counter)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::age::Identity;

    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn encrypt(id: &Identity, data: &[u8], write_size: usize) -> Vec<u8> {
        let mut e = Encryptor::new(Vec::new(), &[id.recipient()]).unwrap();
        for part in data.chunks(write_size.max(1)) {
            e.write_all(part).unwrap();
        }
        e.finish().unwrap()
    }

    /// Reads everything; returns the plaintext released and the error if any.
    fn drain<R: Read>(mut d: R) -> (Vec<u8>, Option<io::Error>) {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 10_000];
        loop {
            match d.read(&mut buf) {
                Ok(0) => return (out, None),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    fn is_payload(e: &io::Error) -> bool {
        e.kind() == io::ErrorKind::InvalidData
            && matches!(
                e.get_ref().and_then(|e| e.downcast_ref::<AgeError>()),
                Some(AgeError::Payload(_))
            )
    }

    /// Returns one byte per read, with interruptions.
    struct Trickle<'a> {
        data: &'a [u8],
        tick: bool,
    }
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.tick = !self.tick;
            if self.tick {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = out.len().min(self.data.len()).min(1);
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn nonce_layout() {
        assert_eq!(chunk_nonce(0, false), [0; 12]);
        assert_eq!(chunk_nonce(0, true), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(chunk_nonce(1, false), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(
            chunk_nonce(0x0102_0304_0506_0708, true),
            [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 1]
        );
        assert_eq!(chunk_nonce(u64::MAX, false)[..3], [0, 0, 0]);
    }

    #[test]
    fn round_trips_at_chunk_boundaries() {
        let id = Identity::generate();
        let keys = KeyStore::from_identities(vec![Identity::from_bech32(&id.to_bech32()).unwrap()]);
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 17] {
            let data = plaintext(len);
            for ws in [1000, CHUNK, 3 * CHUNK] {
                let ct = encrypt(&id, &data, ws);
                let chunks = len.div_ceil(CHUNK).max(1);
                let (out, err) = drain(Decryptor::new(&ct[..], &keys).unwrap());
                assert!(err.is_none(), "len {len}: {err:?}");
                assert_eq!(out, data, "len {len}");
                // Size: header + nonce + data + one tag per chunk.
                let payload = len + NONCE_LEN + chunks * TAG;
                assert!(ct.len() > payload && ct.len() < payload + 300, "len {len}");
            }
        }
    }

    #[test]
    fn works_with_byte_at_a_time_interrupted_source() {
        let id = Identity::generate();
        let data = plaintext(CHUNK + 5);
        let ct = encrypt(&id, &data, 777);
        let keys = KeyStore::from_identities(vec![id]);
        let d = Decryptor::new(
            Trickle {
                data: &ct,
                tick: false,
            },
            &keys,
        )
        .unwrap();
        let (out, err) = drain(d);
        assert!(err.is_none());
        assert_eq!(out, data);
    }

    #[test]
    fn tampering_releases_only_verified_chunks() {
        let id = Identity::generate();
        let data = plaintext(3 * CHUNK + 10);
        let ct = encrypt(&id, &data, CHUNK);
        let keys = KeyStore::from_identities(vec![id]);
        let payload_start = ct.len() - (data.len() + 4 * TAG) - NONCE_LEN;
        let chunks_start = payload_start + NONCE_LEN;
        // Flip a byte in each chunk in turn.
        for chunk in 0..4 {
            let mut bad = ct.clone();
            bad[chunks_start + chunk * ENC_CHUNK + 5] ^= 1;
            let (out, err) = drain(Decryptor::new(&bad[..], &keys).unwrap());
            assert!(is_payload(&err.unwrap()));
            assert_eq!(out, data[..chunk * CHUNK], "chunk {chunk}");
        }
        // Truncations everywhere interesting.
        for cut in [
            chunks_start,
            chunks_start + 1,
            chunks_start + 15,
            chunks_start + ENC_CHUNK - 1,
            chunks_start + ENC_CHUNK,
            chunks_start + ENC_CHUNK + 1,
            chunks_start + 2 * ENC_CHUNK,
            chunks_start + 3 * ENC_CHUNK,
            ct.len() - 1,
        ] {
            let (out, err) = drain(Decryptor::new(&ct[..cut], &keys).unwrap());
            let err = err.unwrap_or_else(|| panic!("cut {cut} accepted"));
            assert!(is_payload(&err), "{err}");
            let verified = (cut - chunks_start) / ENC_CHUNK * CHUNK;
            assert_eq!(out, data[..verified], "cut {cut}");
            // Errors are sticky.
            let mut d = Decryptor::new(&ct[..cut], &keys).unwrap();
            let _ = drain(&mut d);
            assert!(d.read(&mut [0u8; 4]).is_err());
        }
        // Truncated inside the nonce / right after the header: header failure.
        for cut in [payload_start, payload_start + 15] {
            assert!(matches!(
                Decryptor::new(&ct[..cut], &keys),
                Err(AgeError::Header(_))
            ));
        }
        // Trailing data after the final chunk.
        for extra in [&b"x"[..], &[0u8; 100_000][..]] {
            let mut long = ct.clone();
            long.extend_from_slice(extra);
            let (out, err) = drain(Decryptor::new(&long[..], &keys).unwrap());
            assert!(is_payload(&err.unwrap()));
            assert!(out.len() <= data.len() && out == data[..out.len()]);
        }
    }

    #[test]
    fn header_errors_are_classified() {
        let id = Identity::generate();
        let ct = encrypt(&id, b"hello", 10);
        let keys = KeyStore::from_identities(vec![id]);
        let other = KeyStore::from_identities(vec![Identity::generate()]);
        assert!(matches!(
            Decryptor::new(&ct[..], &other),
            Err(AgeError::NoMatch)
        ));
        assert!(matches!(
            Decryptor::new(&ct[..], &KeyStore::empty()),
            Err(AgeError::NoMatch)
        ));
        let mac_at = ct.windows(4).position(|w| w == b"--- ").unwrap() + 4;
        let mut bad = ct.clone();
        // Change the MAC's first character to another valid, canonical one.
        bad[mac_at] = if bad[mac_at] == b'A' { b'B' } else { b'A' };
        assert!(matches!(
            Decryptor::new(&bad[..], &keys),
            Err(AgeError::HeaderMac)
        ));
        assert!(matches!(
            Decryptor::new(&b"hello"[..], &keys),
            Err(AgeError::Header(_))
        ));
        assert!(matches!(
            Decryptor::new(&b""[..], &keys),
            Err(AgeError::Header(_))
        ));
    }

    #[test]
    fn mutated_and_truncated_inputs_never_panic() {
        let id = Identity::generate();
        let data = plaintext(300);
        let ct = encrypt(&id, &data, 300);
        let keys = KeyStore::from_identities(vec![id]);
        let check = |input: &[u8]| {
            if let Ok(d) = Decryptor::new(input, &keys) {
                let (out, err) = drain(d);
                // Whatever is released is authentic plaintext.
                assert!(out.len() <= data.len() && out == data[..out.len()]);
                if let Some(e) = err {
                    assert!(is_payload(&e));
                }
            }
        };
        for cut in 0..ct.len() {
            check(&ct[..cut]);
        }
        let mut x = 0x2545_f491_u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as usize
        };
        for _ in 0..3000 {
            let mut bad = ct.clone();
            for _ in 0..1 + next() % 3 {
                let at = next() % bad.len();
                match next() % 4 {
                    0 => bad[at] ^= 1 << (next() % 8),
                    1 => bad[at] = b"\n -AZaz09+/="[next() % 12],
                    2 => {
                        bad.remove(at);
                    }
                    _ => bad.insert(at, b"\n -A/"[next() % 5]),
                }
            }
            check(&bad);
        }
    }

    #[test]
    fn multiple_recipients_and_empty_recipient_list() {
        let a = Identity::generate();
        let b = Identity::generate();
        let mut e = Encryptor::new(Vec::new(), &[a.recipient(), b.recipient()]).unwrap();
        e.write_all(b"to both").unwrap();
        let ct = e.finish().unwrap();
        for id in [a, b] {
            let (out, err) =
                drain(Decryptor::new(&ct[..], &KeyStore::from_identities(vec![id])).unwrap());
            assert!(err.is_none());
            assert_eq!(out, b"to both");
        }
        assert!(matches!(
            Encryptor::new(Vec::new(), &[]),
            Err(AgeError::Key(_))
        ));
    }
}
