//! A bundle taken in without holding it in memory: the DSSE envelope is read
//! as a stream, its base64 payload decoded into a spool file beside the
//! state in force (hashing it on the way), and its signatures verified by
//! reading that file once more (ed25519 hashes its message in one SHA-512
//! pass; the message is PAE's short prefix followed by the payload).
//!
//! Nothing here decides whom to trust; [`super::trust::TrustSet`] does.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature as EdSignature, VerifyingKey};
use sha2::{Digest, Sha256};

use super::BundleError;
use super::dsse::{MAX_SIGNATURES, Signature, decode_b64};

/// The most bytes of an envelope field other than the payload.
const MAX_FIELD: usize = 1 << 20;

/// An envelope whose payload was decoded into a file.
#[derive(Debug)]
pub struct Spooled {
    /// The envelope's `payloadType`.
    pub payload_type: String,
    /// The signatures as sent.
    pub signatures: Vec<Signature>,
    /// The decoded payload (removed on drop unless [`Spooled::keep`]).
    pub file: PathBuf,
    /// Its length in bytes.
    pub len: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    keep: bool,
}

impl Spooled {
    /// Leaves the payload file in place when this is dropped (it was moved
    /// or is owned elsewhere now).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Opens the decoded payload.
    pub fn open(&self) -> Result<File, BundleError> {
        File::open(&self.file).map_err(|e| BundleError::io("reading", &self.file, e))
    }

    /// Reads the whole payload (small payloads: export requests).
    pub fn read_small(&self, max: u64) -> Result<Vec<u8>, BundleError> {
        if self.len > max {
            return Err(BundleError::InvalidPayload {
                payload_type: super::PayloadType::ExportRequest,
                reason: format!("payload of {} bytes is larger than {max}", self.len),
            });
        }
        let mut v = Vec::with_capacity(self.len as usize);
        self.open()?
            .read_to_end(&mut v)
            .map_err(|e| BundleError::io("reading", &self.file, e))?;
        Ok(v)
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.file);
        }
    }
}

fn malformed(reason: impl Into<String>) -> BundleError {
    BundleError::Malformed {
        reason: reason.into(),
    }
}

/// A byte reader over the envelope that enforces the size limit.
struct Lexer<R> {
    r: BufReader<R>,
    peeked: Option<u8>,
    read: u64,
    max: u64,
    shown: String,
}

impl<R: Read> Lexer<R> {
    fn next(&mut self) -> Result<Option<u8>, BundleError> {
        if let Some(b) = self.peeked.take() {
            return Ok(Some(b));
        }
        let mut b = [0u8; 1];
        loop {
            match self.r.read(&mut b) {
                Ok(0) => return Ok(None),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BundleError::io("reading", &self.shown, e)),
            }
        }
        self.read += 1;
        if self.read > self.max {
            return Err(BundleError::TooLarge {
                path: self.shown.clone(),
                max: self.max,
            });
        }
        Ok(Some(b[0]))
    }

    fn must(&mut self) -> Result<u8, BundleError> {
        self.next()?
            .ok_or_else(|| malformed("not a DSSE envelope JSON: unexpected end of input"))
    }

    fn peek(&mut self) -> Result<Option<u8>, BundleError> {
        if self.peeked.is_none() {
            self.peeked = self.next()?;
        }
        Ok(self.peeked)
    }

    /// The next byte that is not JSON white space.
    fn token(&mut self) -> Result<u8, BundleError> {
        loop {
            let b = self.must()?;
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Ok(b);
            }
        }
    }

    fn expect(&mut self, want: u8) -> Result<(), BundleError> {
        let b = self.token()?;
        if b != want {
            return Err(malformed(format!(
                "not a DSSE envelope JSON: expected {:?}, found {:?} at byte {}",
                want as char, b as char, self.read
            )));
        }
        Ok(())
    }

    /// A JSON string after its opening quote, raw (escapes kept), into `out`.
    fn raw_string(&mut self, out: &mut Vec<u8>) -> Result<(), BundleError> {
        loop {
            let b = self.must()?;
            push_capped(out, b)?;
            match b {
                b'"' => return Ok(()),
                b'\\' => push_capped(out, self.must()?)?,
                _ => {}
            }
        }
    }

    /// A whole JSON value, raw, bounded by [`MAX_FIELD`].
    fn raw_value(&mut self) -> Result<Vec<u8>, BundleError> {
        let mut out = Vec::new();
        let first = self.token()?;
        out.push(first);
        match first {
            b'"' => self.raw_string(&mut out)?,
            b'{' | b'[' => {
                let mut depth = 1usize;
                while depth > 0 {
                    let b = self.must()?;
                    push_capped(&mut out, b)?;
                    match b {
                        b'"' => self.raw_string(&mut out)?,
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => depth -= 1,
                        _ => {}
                    }
                }
            }
            _ => {
                while let Some(b) = self.peek()? {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.peeked = None;
                    push_capped(&mut out, b)?;
                }
            }
        }
        Ok(out)
    }
}

fn push_capped(out: &mut Vec<u8>, b: u8) -> Result<(), BundleError> {
    if out.len() >= MAX_FIELD {
        return Err(malformed(format!(
            "an envelope field other than `payload` is larger than {MAX_FIELD} bytes"
        )));
    }
    out.push(b);
    Ok(())
}

/// Streaming base64 decoder (standard or URL-safe alphabet, padding
/// optional), writing into a file while hashing.
struct B64Sink {
    w: BufWriter<File>,
    hash: Sha256,
    len: u64,
    quad: [u8; 4],
    n: usize,
    pad: usize,
}

impl B64Sink {
    fn put(&mut self, c: u8) -> Result<(), String> {
        if c == b'=' {
            self.pad += 1;
            return if self.pad > 2 {
                Err("too much padding".into())
            } else {
                Ok(())
            };
        }
        if self.pad > 0 {
            return Err("data after padding".into());
        }
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return Err(format!("invalid character {:?}", c as char)),
        };
        self.quad[self.n] = v;
        self.n += 1;
        if self.n == 4 {
            let q = self.quad;
            self.emit(&[
                q[0] << 2 | q[1] >> 4,
                q[1] << 4 | q[2] >> 2,
                q[2] << 6 | q[3],
            ])?;
            self.n = 0;
        }
        Ok(())
    }

    fn emit(&mut self, b: &[u8]) -> Result<(), String> {
        self.hash.update(b);
        self.len += b.len() as u64;
        self.w.write_all(b).map_err(|e| e.to_string())
    }

    fn finish(mut self) -> Result<(u64, [u8; 32], File), String> {
        let q = self.quad;
        match (self.n, self.pad) {
            (0, 0) => {}
            (2, 0 | 2) => self.emit(&[q[0] << 2 | q[1] >> 4])?,
            (3, 0 | 1) => self.emit(&[q[0] << 2 | q[1] >> 4, q[1] << 4 | q[2] >> 2])?,
            _ => return Err("truncated base64".into()),
        }
        let f = self.w.into_inner().map_err(|e| e.error().to_string())?;
        Ok((self.len, self.hash.finalize().into(), f))
    }
}

/// A fresh spool file name in `dir`.
fn spool_path(dir: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    dir.join(format!(
        ".incoming-{}-{}.json",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Reads an envelope from `r` (at most `max` bytes; `shown` names it in
/// messages) and decodes its payload into a new file in `dir`.
pub fn spool_envelope(
    r: impl Read,
    max: u64,
    shown: &str,
    dir: &Path,
) -> Result<Spooled, BundleError> {
    super::state::create_private_dir(dir)?;
    let file = spool_path(dir);
    let mut lx = Lexer {
        r: BufReader::with_capacity(64 << 10, r),
        peeked: None,
        read: 0,
        max,
        shown: shown.to_string(),
    };
    let mut sp = Spooled {
        payload_type: String::new(),
        signatures: Vec::new(),
        file,
        len: 0,
        sha256: [0; 32],
        keep: false,
    };
    let mut seen: Vec<String> = Vec::new();
    lx.expect(b'{')?;
    let first = lx.token()?;
    if first != b'}' {
        if first != b'"' {
            return Err(malformed("not a DSSE envelope JSON: expected a field name"));
        }
        loop {
            let mut raw = vec![b'"'];
            lx.raw_string(&mut raw)?;
            let key: String = serde_json::from_slice(&raw)
                .map_err(|e| malformed(format!("not a DSSE envelope JSON: {e}")))?;
            if seen.contains(&key) {
                return Err(malformed(format!(
                    "not a DSSE envelope JSON: duplicate field `{key}`"
                )));
            }
            lx.expect(b':')?;
            field(&mut lx, &key, &mut sp)?;
            seen.push(key);
            match lx.token()? {
                b',' => lx.expect(b'"')?,
                b'}' => break,
                b => {
                    return Err(malformed(format!(
                        "not a DSSE envelope JSON: expected ',' or '}}', found {:?}",
                        b as char
                    )));
                }
            }
        }
    }
    if let Some(b) = skip_ws(&mut lx)? {
        return Err(malformed(format!(
            "not a DSSE envelope JSON: trailing characters ({:?}) after the envelope",
            b as char
        )));
    }
    for f in ["payloadType", "payload", "signatures"] {
        if !seen.iter().any(|s| s == f) {
            return Err(malformed(format!(
                "not a DSSE envelope JSON: missing field `{f}`"
            )));
        }
    }
    check_signature_count(&sp.signatures)?;
    Ok(sp)
}

fn skip_ws<R: Read>(lx: &mut Lexer<R>) -> Result<Option<u8>, BundleError> {
    while let Some(b) = lx.next()? {
        if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

/// Reads one field's value.
fn field<R: Read>(lx: &mut Lexer<R>, key: &str, sp: &mut Spooled) -> Result<(), BundleError> {
    let parse_err =
        |e: serde_json::Error| malformed(format!("not a DSSE envelope JSON: {key}: {e}"));
    match key {
        "payload" => payload(lx, sp),
        "payloadType" => {
            sp.payload_type = serde_json::from_slice(&lx.raw_value()?).map_err(parse_err)?;
            Ok(())
        }
        "signatures" => {
            sp.signatures = serde_json::from_slice(&lx.raw_value()?).map_err(parse_err)?;
            Ok(())
        }
        _ => {
            // Unknown envelope fields are ignored, as DSSE readers must.
            serde_json::from_slice::<serde::de::IgnoredAny>(&lx.raw_value()?).map_err(parse_err)?;
            Ok(())
        }
    }
}

/// Decodes the `payload` string into the spool file.
fn payload<R: Read>(lx: &mut Lexer<R>, sp: &mut Spooled) -> Result<(), BundleError> {
    if lx.token()? != b'"' {
        return Err(malformed(
            "not a DSSE envelope JSON: payload must be a string",
        ));
    }
    let f = File::create(&sp.file).map_err(|e| BundleError::io("writing", &sp.file, e))?;
    let mut sink = B64Sink {
        w: BufWriter::with_capacity(64 << 10, f),
        hash: Sha256::new(),
        len: 0,
        quad: [0; 4],
        n: 0,
        pad: 0,
    };
    let bad = |e: String| malformed(format!("payload is not base64: {e}"));
    loop {
        // Fast path: whole buffered chunks up to the closing quote or an
        // escape, without a call per byte.
        if lx.peeked.is_none() {
            let buf =
                lx.r.fill_buf()
                    .map_err(|e| BundleError::io("reading", &lx.shown, e))?;
            let n = buf
                .iter()
                .position(|&b| b == b'"' || b == b'\\')
                .unwrap_or(buf.len());
            if n > 0 {
                lx.read += n as u64;
                if lx.read > lx.max {
                    return Err(BundleError::TooLarge {
                        path: lx.shown.clone(),
                        max: lx.max,
                    });
                }
                for &c in &buf[..n] {
                    sink.put(c).map_err(bad)?;
                }
                lx.r.consume(n);
                continue;
            }
        }
        let mut c = lx.must()?;
        if c == b'"' {
            break;
        }
        if c == b'\\' {
            c = match lx.must()? {
                b'/' => b'/',
                other => return Err(bad(format!("escape \\{}", other as char))),
            };
        }
        sink.put(c).map_err(bad)?;
    }
    let (len, sha, f) = sink.finish().map_err(bad)?;
    f.sync_all()
        .map_err(|e| BundleError::io("writing", &sp.file, e))?;
    sp.len = len;
    sp.sha256 = sha;
    Ok(())
}

fn check_signature_count(sigs: &[Signature]) -> Result<(), BundleError> {
    if sigs.is_empty() {
        return Err(malformed("envelope has no signatures"));
    }
    if sigs.len() > MAX_SIGNATURES {
        return Err(malformed(format!(
            "envelope has {} signatures; at most {MAX_SIGNATURES} are accepted",
            sigs.len()
        )));
    }
    Ok(())
}

/// DSSE's PAE before the payload bytes.
pub fn pae_prefix(payload_type: &str, payload_len: u64) -> Vec<u8> {
    format!(
        "DSSEv1 {} {payload_type} {payload_len} ",
        payload_type.len()
    )
    .into_bytes()
}

/// Checks each `(key, sig_b64)` over PAE(`payload_type`, the file's bytes),
/// reading the file once. Strict, as [`super::dsse::verify_one`]: a weak
/// key or a small-order `R` never verifies.
pub fn verify_file(
    checks: &[(&VerifyingKey, &str)],
    payload_type: &str,
    file: &Path,
    len: u64,
) -> Result<Vec<bool>, BundleError> {
    let mut verifiers: Vec<Option<ed25519_dalek::StreamVerifier>> =
        checks.iter().map(|(key, sig)| start(key, sig)).collect();
    if verifiers.iter().all(Option::is_none) {
        // Nothing can verify: the payload need not be read.
        return Ok(vec![false; checks.len()]);
    }
    let prefix = pae_prefix(payload_type, len);
    for v in verifiers.iter_mut().flatten() {
        v.update(&prefix);
    }
    let mut f = File::open(file).map_err(|e| BundleError::io("reading", file, e))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BundleError::io("reading", file, e)),
        };
        total += n as u64;
        for v in verifiers.iter_mut().flatten() {
            v.update(&buf[..n]);
        }
    }
    if total != len {
        return Err(BundleError::io(
            "reading",
            file,
            io::Error::other("the spooled payload changed while it was verified"),
        ));
    }
    Ok(verifiers
        .into_iter()
        .map(|v| v.is_some_and(|v| v.finalize_and_verify().is_ok()))
        .collect())
}

fn start(key: &VerifyingKey, sig_b64: &str) -> Option<ed25519_dalek::StreamVerifier> {
    let raw = decode_b64(sig_b64).ok()?;
    let sig = EdSignature::from_slice(&raw).ok()?;
    let r = VerifyingKey::from_bytes(sig.r_bytes()).ok()?;
    if key.is_weak() || r.is_weak() {
        return None;
    }
    key.verify_stream(&sig).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::bundle::dsse;
    use ed25519_dalek::SigningKey;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("exportd-spool-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn spooled_envelope_verifies_like_the_in_memory_one() {
        let d = dir("ok");
        let k = SigningKey::from_bytes(&[7u8; 32]);
        let other = SigningKey::from_bytes(&[8u8; 32]);
        for payload in [&b""[..], b"{}", b"ab", b"abc", &[0xffu8; 1000][..]] {
            let env = dsse::sign("t/x", payload, &[("k", &k)]);
            let mut json = serde_json::to_value(&env).unwrap();
            json["extra"] = serde_json::json!({"a": [1, "}"]});
            let text = serde_json::to_vec_pretty(&json).unwrap();
            let sp = spool_envelope(text.as_slice(), 1 << 20, "x", &d).unwrap();
            assert_eq!(std::fs::read(&sp.file).unwrap(), payload);
            assert_eq!(sp.len, payload.len() as u64);
            let sig = sp.signatures[0].sig.as_str();
            let vk = k.verifying_key();
            let ok = verify_file(
                &[(&vk, sig), (&other.verifying_key(), sig)],
                "t/x",
                &sp.file,
                sp.len,
            )
            .unwrap();
            assert_eq!(ok, vec![true, false]);
            let bad = verify_file(&[(&vk, sig)], "t/y", &sp.file, sp.len).unwrap();
            assert_eq!(bad, vec![false]);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn limits_and_malformed_envelopes() {
        let d = dir("bad");
        let big = format!(
            r#"{{"payloadType":"t","payload":"{}","signatures":[]}}"#,
            "A".repeat(100)
        );
        let e = spool_envelope(big.as_bytes(), 50, "big.json", &d).unwrap_err();
        assert!(matches!(e, BundleError::TooLarge { max: 50, .. }), "{e}");
        for bad in [
            r#"{"payloadType":"t","payload":"*","signatures":[{"sig":"AA"}]}"#,
            r#"{"payloadType":"t","payload":"AA","signatures":[]}"#,
            r#"{"payloadType":"t","signatures":[{"sig":"AA"}]}"#,
            r#"{"payloadType":"t","payload":"AA","payload":"AA","signatures":[{"sig":"AA"}]}"#,
            r#"{"payloadType":"t","payload":"AA","signatures":[{"sig":"AA"}]} x"#,
            "[1,2",
        ] {
            let e = spool_envelope(bad.as_bytes(), 1 << 20, "x", &d).unwrap_err();
            assert!(matches!(e, BundleError::Malformed { .. }), "{bad}: {e}");
        }
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            0,
            "spool files removed"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
