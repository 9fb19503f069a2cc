//! The age header: parse, write, MAC. Pure: never accepts a non-canonical
//! header, never touches a file.
//!
//! The age v1 textual header: strict parsing, writing, and the header MAC.
//!
//! Grammar (C2SP age spec):
//! ```text
//! header  = "age-encryption.org/v1" LF *stanza mac-line
//! stanza  = "->" 1*(SP 1*VCHAR) LF body
//! body    = *(64 base64 chars LF) (0..63 base64 chars LF)   ; canonical, unpadded
//! mac     = "---" SP 43 base64 chars LF                    ; HMAC-SHA256
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::AgeError;

/// The first line of every age v1 file.
pub(crate) const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";
/// Prefix of an ASCII-armored age file (not supported).
const ARMOR_BEGIN: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";
/// Length of the symmetric file key.
pub(crate) const FILE_KEY_LEN: usize = 16;
/// Length of a wrapped file key: 16-byte key + 16-byte Poly1305 tag.
pub(crate) const WRAPPED_KEY_LEN: usize = FILE_KEY_LEN + 16;
/// Body lines are wrapped at this many base64 columns.
const COLUMNS: usize = 64;
/// ML-KEM-768 ciphertext (1088) followed by an X25519 share (32).
const HYBRID_ENC_LEN: usize = 1088 + 32;
/// Highest scrypt log2 work factor accepted (as the reference implementation).
const MAX_SCRYPT_LOG_N: u32 = 22;

/// The symmetric file key, wiped from memory on drop.
pub(crate) type FileKey = Zeroizing<[u8; FILE_KEY_LEN]>;

/// A recipient stanza, validated according to its type.
#[derive(Debug)]
pub(crate) enum Stanza {
    /// `-> X25519 <share>` with a 32-byte wrapped file key as body.
    X25519 {
        share: [u8; 32],
        body: [u8; WRAPPED_KEY_LEN],
    },
    /// `-> scrypt <salt> <log2 N>`: well-formed, but passphrases are not supported.
    Scrypt,
    /// `-> mlkem768x25519 <enc>`: well-formed, but hybrid identities are not supported.
    Hybrid,
    /// Any other type (including grease): syntactically valid, ignored.
    Other,
}

/// A parsed header, borrowing the buffer it was parsed from.
#[derive(Debug)]
pub(crate) struct Header<'a> {
    /// Recipient stanzas in file order.
    pub stanzas: Vec<Stanza>,
    /// The bytes the MAC is computed over: everything up to and including `---`.
    pub mac_input: &'a [u8],
    /// The MAC found in the file.
    pub mac: [u8; 32],
    /// Total header length, including the LF that ends the MAC line.
    pub len: usize,
}

/// Decodes canonical unpadded standard base64 (no whitespace, no padding,
/// zero trailing bits).
pub(crate) fn b64_decode(s: &[u8]) -> Option<Vec<u8>> {
    STANDARD_NO_PAD.decode(s).ok()
}

/// Encodes as unpadded standard base64.
pub(crate) fn b64_encode(data: &[u8]) -> String {
    STANDARD_NO_PAD.encode(data)
}

/// Decodes a canonical base64 argument that must be exactly `N` bytes.
fn b64_fixed<const N: usize>(s: &str) -> Option<[u8; N]> {
    b64_decode(s.as_bytes())?.try_into().ok()
}

/// Returns the line starting at `pos` (without its LF) and the position after the LF.
fn next_line(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(pos..)?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    Some((&rest[..nl], pos + nl + 1))
}

/// Why a line could not be found: the input ended, or the buffer is too small.
fn missing_line(eof: bool, what: &str) -> AgeError {
    if eof {
        AgeError::Header(format!(
            "file ends inside the header (while reading {what})"
        ))
    } else {
        AgeError::Unsupported(format!(
            "age header larger than {} bytes (too many recipients?)",
            super::stream::BUF_LEN
        ))
    }
}

/// Parses the header at the start of `buf`.
///
/// `eof` tells whether `buf` holds the whole remaining input; if it does not
/// and no MAC line is found, the header is too large for the buffer.
pub(crate) fn parse_header(buf: &[u8], eof: bool) -> Result<Header<'_>, AgeError> {
    if !buf.starts_with(VERSION_LINE) {
        return Err(bad_start(buf, eof));
    }
    let mut pos = VERSION_LINE.len();
    let mut stanzas = Vec::new();
    loop {
        let line_start = pos;
        let (line, next) = next_line(buf, pos).ok_or_else(|| missing_line(eof, "a stanza"))?;
        if line.starts_with(b"---") {
            let mac = parse_mac_line(line)?;
            check_stanza_set(&stanzas)?;
            return Ok(Header {
                stanzas,
                mac_input: &buf[..line_start + 3],
                mac,
                len: next,
            });
        }
        let Some(args_part) = line.strip_prefix(b"->") else {
            return Err(AgeError::Header(format!(
                "line {} is neither a '-> ' stanza nor the '---' MAC line",
                count_lines(buf, line_start)
            )));
        };
        let args = parse_args(args_part)?;
        let (body, after) = parse_body(buf, next, eof)?;
        pos = after;
        stanzas.push(classify(&args, &body)?);
    }
}

fn count_lines(buf: &[u8], pos: usize) -> usize {
    buf[..pos].iter().filter(|&&b| b == b'\n').count() + 1
}

fn bad_start(buf: &[u8], eof: bool) -> AgeError {
    if buf.starts_with(ARMOR_BEGIN) {
        return AgeError::Unsupported(
            "ASCII-armored (PEM) age files; recorders must write binary age files".into(),
        );
    }
    if buf.len() < VERSION_LINE.len() && VERSION_LINE.starts_with(buf) && eof {
        return AgeError::Header("file ends inside the version line".into());
    }
    if buf.starts_with(b"age-encryption.org/v1\r\n") {
        return AgeError::Header(
            "header lines end with CRLF instead of LF (was the file converted as text?)".into(),
        );
    }
    if buf.starts_with(b"age-encryption.org/") {
        return AgeError::Header(
            "unknown age format version (only age-encryption.org/v1 is supported)".into(),
        );
    }
    AgeError::Header("not an age file: it does not start with 'age-encryption.org/v1'".into())
}

/// Parses `" arg1 arg2 ..."` (what follows `->`): single spaces, 1*VCHAR each.
fn parse_args(part: &[u8]) -> Result<Vec<String>, AgeError> {
    let Some(rest) = part.strip_prefix(b" ") else {
        return Err(AgeError::Header(
            "stanza line must start with '-> ' and a recipient type".into(),
        ));
    };
    let mut args = Vec::new();
    for arg in rest.split(|&b| b == b' ') {
        if arg.is_empty() {
            return Err(AgeError::Header(
                "stanza has an empty argument (double or trailing space)".into(),
            ));
        }
        if !arg.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(AgeError::Header(
                "stanza argument contains a byte outside printable ASCII".into(),
            ));
        }
        // All bytes are ASCII, so this is valid UTF-8.
        args.push(String::from_utf8_lossy(arg).into_owned());
    }
    Ok(args)
}

/// Parses a wrapped base64 body starting at `pos`; returns it and the position after it.
fn parse_body(buf: &[u8], mut pos: usize, eof: bool) -> Result<(Vec<u8>, usize), AgeError> {
    let mut body = Vec::new();
    loop {
        let (line, next) = next_line(buf, pos).ok_or_else(|| missing_line(eof, "a stanza body"))?;
        if line.len() > COLUMNS {
            return Err(AgeError::Header(format!(
                "stanza body line longer than {COLUMNS} columns"
            )));
        }
        let decoded = b64_decode(line).ok_or_else(|| {
            AgeError::Header(
                "stanza body is not canonical unpadded base64 (or a stanza lacks its final short body line)"
                    .into(),
            )
        })?;
        body.extend_from_slice(&decoded);
        pos = next;
        if line.len() < COLUMNS {
            return Ok((body, pos));
        }
    }
}

fn parse_mac_line(line: &[u8]) -> Result<[u8; 32], AgeError> {
    let bad =
        || AgeError::Header("MAC line must be '--- ' followed by 43 base64 characters".into());
    let encoded = line.strip_prefix(b"--- ").ok_or_else(bad)?;
    if encoded.len() != 43 {
        return Err(bad());
    }
    b64_decode(encoded)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| AgeError::Header("header MAC is not canonical base64".into()))
}

/// Validates a stanza according to its (case-sensitive) type.
fn classify(args: &[String], body: &[u8]) -> Result<Stanza, AgeError> {
    let wrapped = |kind: &str| -> Result<[u8; WRAPPED_KEY_LEN], AgeError> {
        body.try_into().map_err(|_| {
            AgeError::Header(format!(
                "{kind} stanza body is {} bytes, expected a {WRAPPED_KEY_LEN}-byte wrapped file key",
                body.len()
            ))
        })
    };
    match args {
        [] => Err(AgeError::Header("stanza has no recipient type".into())),
        [t, rest @ ..] if t == "X25519" => {
            let [share] = rest else {
                return Err(AgeError::Header(
                    "X25519 stanza must have exactly one argument (the ephemeral share)".into(),
                ));
            };
            let share = b64_fixed::<32>(share).ok_or_else(|| {
                AgeError::Header("X25519 share is not 32 bytes of canonical base64".into())
            })?;
            Ok(Stanza::X25519 {
                share,
                body: wrapped("X25519")?,
            })
        }
        [t, rest @ ..] if t == "scrypt" => {
            let [salt, log_n] = rest else {
                return Err(AgeError::Header(
                    "scrypt stanza must have exactly two arguments (salt, work factor)".into(),
                ));
            };
            if b64_fixed::<16>(salt).is_none() {
                return Err(AgeError::Header(
                    "scrypt salt is not 16 bytes of canonical base64".into(),
                ));
            }
            parse_work_factor(log_n)?;
            wrapped("scrypt")?;
            Ok(Stanza::Scrypt)
        }
        [t, rest @ ..] if t == "mlkem768x25519" => {
            let [enc] = rest else {
                return Err(AgeError::Header(
                    "mlkem768x25519 stanza must have exactly one argument (enc)".into(),
                ));
            };
            let enc = b64_fixed::<HYBRID_ENC_LEN>(enc).ok_or_else(|| {
                AgeError::Header(format!(
                    "mlkem768x25519 enc is not {HYBRID_ENC_LEN} bytes of canonical base64"
                ))
            })?;
            let mut share = [0u8; 32];
            share.copy_from_slice(&enc[HYBRID_ENC_LEN - 32..]);
            if is_low_order(&share) {
                return Err(AgeError::Header(
                    "mlkem768x25519 X25519 share is a low-order point (all-zero shared secret)"
                        .into(),
                ));
            }
            wrapped("mlkem768x25519")?;
            Ok(Stanza::Hybrid)
        }
        _ => Ok(Stanza::Other),
    }
}

/// scrypt work factor: decimal, no sign, no leading zero, 1..=22.
fn parse_work_factor(s: &str) -> Result<u32, AgeError> {
    let b = s.as_bytes();
    let digits_ok = !b.is_empty() && b.iter().all(u8::is_ascii_digit) && b[0] != b'0';
    let value = if digits_ok && b.len() <= 2 {
        s.parse::<u32>().ok()
    } else {
        None
    };
    match value {
        Some(v) if (1..=MAX_SCRYPT_LOG_N).contains(&v) => Ok(v),
        Some(_) => Err(AgeError::Header(format!(
            "scrypt work factor above 2^{MAX_SCRYPT_LOG_N} refused"
        ))),
        None if digits_ok => Err(AgeError::Header(format!(
            "scrypt work factor above 2^{MAX_SCRYPT_LOG_N} refused"
        ))),
        None => Err(AgeError::Header(
            "scrypt work factor must be a decimal number without sign or leading zero".into(),
        )),
    }
}

/// Whether an X25519 u-coordinate gives an all-zero shared secret with every
/// clamped scalar (low-order points of the curve or its twist).
///
/// Clamped scalars are multiples of 8, which kill the 8-torsion of the curve
/// and the 4-torsion of the twist; any fixed clamped scalar that is not a
/// multiple of the large prime orders therefore maps exactly the low-order
/// inputs to zero.
pub(crate) fn is_low_order(u: &[u8; 32]) -> bool {
    const PROBE: [u8; 32] = [0x5a; 32];
    x25519_dalek::x25519(PROBE, *u) == [0u8; 32]
}

/// Header-level rules that involve several stanzas.
fn check_stanza_set(stanzas: &[Stanza]) -> Result<(), AgeError> {
    if stanzas.is_empty() {
        return Err(AgeError::Header("header has no recipient stanza".into()));
    }
    if stanzas.len() > 1 && stanzas.iter().any(|s| matches!(s, Stanza::Scrypt)) {
        return Err(AgeError::Header(
            "an scrypt stanza must be the only stanza of the header".into(),
        ));
    }
    Ok(())
}

/// HKDF-SHA256 into a 32-byte key.
pub(crate) fn hkdf32(salt: &[u8], ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below the 255 * 32 HKDF-SHA256 limit, so this cannot fail.
    let _ = Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, okm.as_mut_slice());
    okm
}

fn header_mac(file_key: &FileKey) -> Hmac<Sha256> {
    let key = hkdf32(&[], file_key.as_slice(), b"header");
    <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_slice())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
}

/// Verifies the header MAC in constant time.
pub(crate) fn verify_mac(header: &Header<'_>, file_key: &FileKey) -> Result<(), AgeError> {
    let mut mac = header_mac(file_key);
    mac.update(header.mac_input);
    mac.verify_slice(&header.mac)
        .map_err(|_| AgeError::HeaderMac)
}

/// Writes a header (version line, stanzas, MAC line) for already-wrapped stanzas.
///
/// Each stanza is `(args, body)`; `args[0]` is the type.
pub(crate) fn write_header(stanzas: &[(Vec<String>, Vec<u8>)], file_key: &FileKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(VERSION_LINE.len() + stanzas.len() * 128 + 64);
    out.extend_from_slice(VERSION_LINE);
    for (args, body) in stanzas {
        out.extend_from_slice(b"->");
        for arg in args {
            out.push(b' ');
            out.extend_from_slice(arg.as_bytes());
        }
        out.push(b'\n');
        write_body(&mut out, body);
    }
    out.extend_from_slice(b"---");
    let mut mac = header_mac(file_key);
    mac.update(&out);
    let tag = mac.finalize().into_bytes();
    out.push(b' ');
    out.extend_from_slice(b64_encode(&tag).as_bytes());
    out.push(b'\n');
    out
}

/// Appends a body wrapped at 64 columns, always ending with a short (maybe empty) line.
pub(crate) fn write_body(out: &mut Vec<u8>, body: &[u8]) {
    let encoded = b64_encode(body);
    let mut chunks = encoded.as_bytes().chunks(COLUMNS).peekable();
    let mut last_len = 0;
    while let Some(line) = chunks.next() {
        out.extend_from_slice(line);
        out.push(b'\n');
        last_len = line.len();
        if chunks.peek().is_none() {
            break;
        }
    }
    if encoded.is_empty() || last_len == COLUMNS {
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_with(stanza_text: &str) -> Vec<u8> {
        let mut v = VERSION_LINE.to_vec();
        v.extend_from_slice(stanza_text.as_bytes());
        v.extend_from_slice(b"--- ");
        v.extend_from_slice(b64_encode(&[7u8; 32]).as_bytes());
        v.extend_from_slice(b"\npayload");
        v
    }

    #[test]
    fn base64_is_canonical_and_unpadded() {
        assert_eq!(b64_decode(b"").unwrap(), b"");
        assert_eq!(b64_decode(b"Zg").unwrap(), b"f");
        assert_eq!(b64_decode(b"Zm8").unwrap(), b"fo");
        assert_eq!(b64_decode(b"Zm9v").unwrap(), b"foo");
        // Padding is refused.
        assert!(b64_decode(b"Zg==").is_none());
        assert!(b64_decode(b"Zm8=").is_none());
        // Non-zero trailing bits are not canonical.
        assert!(b64_decode(b"Zh").is_none());
        assert!(b64_decode(b"Zm9").is_none());
        // Impossible length, whitespace, CR, URL-safe alphabet.
        assert!(b64_decode(b"Zm9vY").is_none());
        assert!(b64_decode(b"Zm 9v").is_none());
        assert!(b64_decode(b"Zm9v\r").is_none());
        assert!(b64_decode(b"-_-_").is_none());
        assert_eq!(b64_encode(b"fo"), "Zm8");
    }

    #[test]
    fn body_wrapping_round_trips_and_ends_with_short_line() {
        for len in [0usize, 1, 16, 32, 47, 48, 49, 95, 96, 97, 200] {
            let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            write_body(&mut out, &body);
            let text = std::str::from_utf8(&out).unwrap();
            let lines: Vec<&str> = text.split_terminator('\n').collect();
            let (last, full) = lines.split_last().unwrap();
            assert!(last.len() < COLUMNS, "len {len}");
            assert!(full.iter().all(|l| l.len() == COLUMNS), "len {len}");
            let (parsed, end) = parse_body(&out, 0, true).unwrap();
            assert_eq!(parsed, body);
            assert_eq!(end, out.len());
        }
        // 48 bytes = exactly one full line, so an empty line must follow.
        let mut out = Vec::new();
        write_body(&mut out, &[0u8; 48]);
        assert!(out.ends_with(b"\n\n"));
    }

    #[test]
    fn body_rules() {
        // A short line ends the body; the next line is not part of it.
        let (b, end) = parse_body(b"Zm8\nZm8\n", 0, true).unwrap();
        assert_eq!((b.as_slice(), end), (&b"fo"[..], 4));
        // Over-long line.
        let long = format!("{}\n", "A".repeat(68));
        assert!(parse_body(long.as_bytes(), 0, true).is_err());
        // A full line followed by EOF: missing final short line.
        let full = format!("{}\n", "A".repeat(64));
        assert!(matches!(
            parse_body(full.as_bytes(), 0, true),
            Err(AgeError::Header(_))
        ));
        // Not at EOF and out of buffer: too large.
        assert!(matches!(
            parse_body(full.as_bytes(), 0, false),
            Err(AgeError::Unsupported(_))
        ));
        // CR, padding.
        assert!(parse_body(b"Zm8\r\n", 0, true).is_err());
        assert!(parse_body(b"Zm8=\n", 0, true).is_err());
    }

    #[test]
    fn args_rules() {
        assert_eq!(parse_args(b" a b").unwrap(), vec!["a", "b"]);
        assert!(parse_args(b"").is_err());
        assert!(parse_args(b" ").is_err());
        assert!(parse_args(b"a").is_err());
        assert!(parse_args(b" a  b").is_err());
        assert!(parse_args(b" a ").is_err());
        assert!(parse_args(b" a\tb").is_err());
        assert!(parse_args(b" a\xc3\xa9").is_err());
    }

    #[test]
    fn parses_grease_and_finds_header_end() {
        let buf = header_with("-> some-grease x\n\n-> other\nZm9v\n");
        let h = parse_header(&buf, true).unwrap();
        assert_eq!(h.stanzas.len(), 2);
        assert!(h.stanzas.iter().all(|s| matches!(s, Stanza::Other)));
        assert_eq!(&buf[h.len..], b"payload");
        assert!(h.mac_input.ends_with(b"\n---"));
        assert_eq!(h.mac, [7u8; 32]);
    }

    #[test]
    fn header_rejections() {
        let cases: &[&[u8]] = &[
            b"",
            b"age-encryption.org/v1",
            b"age-encryption.org/v2\n-> a\n\n--- x\n",
            b"age-encryption.org/v1\r\n",
            b"age-encryption.org/v1\n",
            b"age-encryption.org/v1\n-> a\n",
            b"age-encryption.org/v1\n-> a\n\n",
            b"age-encryption.org/v1\n-> a\n\n---\n",
            b"age-encryption.org/v1\n-> a\n\n--- AAAA\n",
            b"age-encryption.org/v1\n->\n\n--- AAAA\n",
            b"age-encryption.org/v1\n--> a\n\n--- AAAA\n",
            b"age-encryption.org/v1\n-> a\n--- AAAA\n",
            b"age-encryption.org/v1\nxx\n",
        ];
        for c in cases {
            assert!(
                matches!(parse_header(c, true), Err(AgeError::Header(_))),
                "{:?}",
                String::from_utf8_lossy(c)
            );
        }
        // No stanza at all.
        assert!(parse_header(&header_with(""), true).is_err());
        // MAC line with trailing space / not canonical.
        let mut b = header_with("-> a\n\n");
        let at = b.len() - b"\npayload".len();
        b.insert(at, b' ');
        assert!(parse_header(&b, true).is_err());
        assert!(matches!(
            parse_header(b"-----BEGIN AGE ENCRYPTED FILE-----\n", true),
            Err(AgeError::Unsupported(_))
        ));
    }

    #[test]
    fn known_types_are_validated() {
        let share = b64_encode(&[9u8; 32]);
        let body32 = b64_encode(&[1u8; 32]);
        let ok = format!("-> X25519 {share}\n{body32}\n");
        let buf = header_with(&ok);
        let h = parse_header(&buf, true).unwrap();
        assert!(matches!(h.stanzas[0], Stanza::X25519 { .. }));
        for bad in [
            format!("-> X25519\n{body32}\n"),
            format!("-> X25519 {share} extra\n{body32}\n"),
            format!("-> X25519 {}\n{body32}\n", b64_encode(&[9u8; 31])),
            format!("-> X25519 {share}\n{}\n", b64_encode(&[1u8; 33])),
            format!("-> X25519 {share}\n\n"),
            format!(
                "-> scrypt {} 10\n{body32}\n-> X25519 {share}\n{body32}\n",
                b64_encode(&[0u8; 16])
            ),
            format!("-> scrypt {} 010\n{body32}\n", b64_encode(&[0u8; 16])),
            format!("-> scrypt {} 23\n{body32}\n", b64_encode(&[0u8; 16])),
            format!("-> scrypt {} 0\n{body32}\n", b64_encode(&[0u8; 16])),
            format!("-> scrypt {} 10\n{body32}\n", b64_encode(&[0u8; 15])),
        ] {
            assert!(
                matches!(
                    parse_header(&header_with(&bad), true),
                    Err(AgeError::Header(_))
                ),
                "{bad}"
            );
        }
        // Unknown casing is just another (ignored) type.
        let lower = format!("-> x25519 {share}\n{body32}\n");
        let buf = header_with(&lower);
        let h = parse_header(&buf, true).unwrap();
        assert!(matches!(h.stanzas[0], Stanza::Other));
        let scrypt = format!("-> scrypt {} 18\n{body32}\n", b64_encode(&[0u8; 16]));
        let buf = header_with(&scrypt);
        let h = parse_header(&buf, true).unwrap();
        assert!(matches!(h.stanzas[0], Stanza::Scrypt));
    }

    #[test]
    fn work_factor_parsing() {
        assert_eq!(parse_work_factor("1").unwrap(), 1);
        assert_eq!(parse_work_factor("22").unwrap(), 22);
        for bad in [
            "",
            "0",
            "23",
            "010",
            "+10",
            "-10",
            "0xa",
            "10a",
            "a10",
            "99999999999999999999",
        ] {
            assert!(parse_work_factor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn low_order_points_are_detected() {
        let mut p_minus_1 = [0xffu8; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(is_low_order(&[0u8; 32]));
        assert!(is_low_order(&one));
        assert!(is_low_order(&p_minus_1));
        assert!(!is_low_order(&x25519_dalek::X25519_BASEPOINT_BYTES));
    }

    #[test]
    fn written_header_parses_and_verifies() {
        let key: FileKey = Zeroizing::new([3u8; 16]);
        let stanzas = vec![
            (
                vec!["X25519".to_string(), b64_encode(&[9u8; 32])],
                vec![5u8; 32],
            ),
            (vec!["grease".to_string()], vec![]),
        ];
        let hdr = write_header(&stanzas, &key);
        let h = parse_header(&hdr, true).unwrap();
        assert_eq!(h.len, hdr.len());
        verify_mac(&h, &key).unwrap();
        let other: FileKey = Zeroizing::new([4u8; 16]);
        assert!(matches!(verify_mac(&h, &other), Err(AgeError::HeaderMac)));
    }
}
