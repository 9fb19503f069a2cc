//! `exportd bundle sign` for payloads of any size: the payload file is
//! checked as a stream (a configuration is compiled in a temporary
//! directory, so every problem the agent would find is found here), signed
//! by reading it twice (ed25519 hashes the message once for the nonce and
//! once for the challenge), and the envelope is written with the payload
//! base64-encoded on the fly. Nothing proportional to the payload is held.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::hazmat::{ExpandedSecretKey, raw_sign_byupdate};
use sha2::{Digest, Sha512};

use super::dsse::Signature;
use super::ops::{default_keyid, load_signing_key};
use super::spool::pae_prefix;
use super::{BundleError, PayloadType};
use crate::policy::intake::{self, WorkDir};

/// Checks a payload file the way the agent will, as a stream (see
/// [`super::ops::lint_payload`] for the in-memory form).
pub fn lint_payload_file(pt: PayloadType, path: &Path) -> Result<(), BundleError> {
    match pt {
        PayloadType::Config => {
            let work = WorkDir::create(&std::env::temp_dir()).map_err(cannot)?;
            let out = work.path().join("snapshot.bin");
            intake::compile_payload(&|| File::open(path), path, None, work.path(), &out)
                .map(|_| ())
                .map_err(|e| super::streamed::intake_rejection(e, pt, 0))
        }
        PayloadType::UsersDelta => super::delta::lint_delta_file(path),
        PayloadType::ExportRequest => {
            let mut v = Vec::new();
            File::open(path)
                .and_then(|f| {
                    f.take(super::streamed::MAX_REQUEST_BYTES)
                        .read_to_end(&mut v)
                })
                .map_err(|e| BundleError::io("reading", path, e))?;
            super::apply::parse_request_payload(&v).map(|_| ())
        }
    }
}

fn cannot(e: intake::IntakeError) -> BundleError {
    BundleError::CannotApply {
        version: 0,
        reason: e.to_string(),
    }
}

/// Signs PAE(`payload_type`, the file's bytes) reading the file twice.
pub fn sign_stream(
    key: &SigningKey,
    payload_type: &str,
    path: &Path,
) -> Result<ed25519_dalek::Signature, BundleError> {
    let f = File::open(path).map_err(|e| BundleError::io("reading", path, e))?;
    let len = f
        .metadata()
        .map_err(|e| BundleError::io("reading", path, e))?
        .len();
    let prefix = pae_prefix(payload_type, len);
    let file = Mutex::new(f);
    let failed: Mutex<Option<io::Error>> = Mutex::new(None);
    let esk = ExpandedSecretKey::from(key.as_bytes());
    let update = |h: &mut Sha512| -> Result<(), ed25519_dalek::SignatureError> {
        h.update(&prefix);
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        let res = (|| {
            f.seek(SeekFrom::Start(0))?;
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0u64;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                h.update(&buf[..n]);
            }
            if total == len {
                Ok(())
            } else {
                Err(io::Error::other(
                    "the payload file changed while it was signed",
                ))
            }
        })();
        res.map_err(|e| {
            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            ed25519_dalek::SignatureError::new()
        })
    };
    let sig = raw_sign_byupdate::<Sha512, _>(&esk, update, &key.verifying_key());
    if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(BundleError::io("reading", path, e));
    }
    sig.map_err(|e| BundleError::KeyFile {
        path: path.to_path_buf(),
        reason: format!("signing failed: {e}"),
    })
}

/// Writes a DSSE envelope for the payload file at `path`, its base64
/// encoded in chunks.
pub fn write_envelope(
    out: &mut dyn Write,
    payload_type: &str,
    path: &Path,
    signatures: &[Signature],
) -> io::Result<()> {
    writeln!(out, "{{")?;
    writeln!(
        out,
        "  \"payloadType\": {},",
        serde_json::to_string(payload_type).map_err(io::Error::other)?
    )?;
    write!(out, "  \"payload\": \"")?;
    let mut f = File::open(path)?;
    // A multiple of 3: every chunk but the last encodes without padding.
    let mut buf = vec![0u8; 48 << 10];
    let mut text = String::with_capacity(64 << 10);
    loop {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        text.clear();
        STANDARD.encode_string(&buf[..n], &mut text);
        out.write_all(text.as_bytes())?;
        if n < buf.len() {
            break;
        }
    }
    writeln!(out, "\",")?;
    let sigs = serde_json::to_string_pretty(signatures).map_err(io::Error::other)?;
    writeln!(out, "  \"signatures\": {}", sigs.replace('\n', "\n  "))?;
    writeln!(out, "}}")?;
    out.flush()
}

/// `exportd bundle sign` as a stream: checks the payload file, signs it and
/// writes the envelope to `out`.
pub fn sign_file_to(
    key_file: &Path,
    keyid: Option<&str>,
    payload_type_short: &str,
    payload_path: &Path,
    out: &mut dyn Write,
) -> Result<(), BundleError> {
    let pt = PayloadType::from_short_name(payload_type_short).ok_or_else(|| {
        BundleError::UnknownPayloadType {
            got: format!("{payload_type_short} (use --type config, users-delta or export-request)"),
        }
    })?;
    let key = load_signing_key(key_file)?;
    lint_payload_file(pt, payload_path)?;
    let keyid = keyid.map_or_else(|| default_keyid(key_file), str::to_string);
    let sig = sign_stream(&key, pt.media_type(), payload_path)?;
    let sigs = [Signature {
        keyid,
        sig: STANDARD.encode(sig.to_bytes()),
    }];
    write_envelope(out, pt.media_type(), payload_path, &sigs)
        .map_err(|e| BundleError::io("writing the envelope of", payload_path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::bundle::dsse;

    #[test]
    fn streamed_signature_and_envelope_match_the_in_memory_ones() {
        let d = std::env::temp_dir().join(format!("exportd-sign-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let k = SigningKey::from_bytes(&[9u8; 32]);
        for len in [0usize, 1, 2, 3, 100, (48 << 10) + 1, 3 * (48 << 10)] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let p = d.join("payload");
            std::fs::write(&p, &payload).unwrap();
            let sig = sign_stream(&k, "t/x", &p).unwrap();
            let env = dsse::sign("t/x", &payload, &[("k", &k)]);
            assert_eq!(
                STANDARD.encode(sig.to_bytes()),
                env.signatures[0].sig,
                "{len}"
            );
            let mut out = Vec::new();
            write_envelope(&mut out, "t/x", &p, &env.signatures).unwrap();
            assert_eq!(dsse::Envelope::from_json(&out).unwrap(), env, "{len}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
