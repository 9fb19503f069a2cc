//! DSSE envelopes: encode, sign, check one signature; never decides whom to
//! trust.
//!
//! DSSE v1 envelopes (the in-toto/sigstore "Dead Simple Signing Envelope")
//! with ed25519 signatures over the pre-authentication encoding (PAE).
//!
//! This module knows nothing about trust: it encodes, signs and checks one
//! signature against one key. [`crate::control::bundle::trust`] decides who counts.

use base64::Engine;
use base64::engine::general_purpose::{
    STANDARD, STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT,
};
use ed25519_dalek::{Signature as EdSignature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::BundleError;

/// The most signatures an envelope may carry (bounds verification work).
pub const MAX_SIGNATURES: usize = 16;

/// A DSSE v1 envelope as exchanged on the wire.
///
/// `payload` and `signatures[].sig` are base64 (standard alphabet; decoding
/// also accepts the URL-safe alphabet and missing padding, as DSSE allows).
/// Unknown envelope fields are ignored, as DSSE readers must.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The media type of the payload.
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Base64 of the payload bytes.
    pub payload: String,
    /// One or more signatures.
    pub signatures: Vec<Signature>,
}

/// One DSSE signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Which key signed (matched against [`crate::policy::model::Admin::keyid`]).
    #[serde(default)]
    pub keyid: String,
    /// Base64 of the 64-byte ed25519 signature over PAE.
    pub sig: String,
}

/// DSSE's pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, LEN as ASCII decimal
/// byte counts.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let t = payload_type.as_bytes();
    let mut out = Vec::with_capacity(32 + t.len() + payload.len());
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(t.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(t);
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// Signs `payload` as `payload_type` with each `(keyid, key)`, producing an
/// envelope with one signature per key, in the order given.
pub fn sign(payload_type: &str, payload: &[u8], keys: &[(&str, &SigningKey)]) -> Envelope {
    let mut env = Envelope {
        payload_type: payload_type.to_string(),
        payload: STANDARD.encode(payload),
        signatures: Vec::with_capacity(keys.len()),
    };
    let msg = pae(payload_type, payload);
    for (keyid, key) in keys {
        env.signatures.push(Signature {
            keyid: (*keyid).to_string(),
            sig: STANDARD.encode(key.sign(&msg).to_bytes()),
        });
    }
    env
}

/// Decodes base64 as DSSE allows: standard or URL-safe alphabet, padding
/// optional.
pub fn decode_b64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let s = s.trim();
    STANDARD_PAD_INDIFFERENT
        .decode(s)
        .or_else(|e| URL_SAFE_PAD_INDIFFERENT.decode(s).map_err(|_| e))
}

impl Envelope {
    /// Parses an envelope from JSON bytes (a file or an HTTP body).
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, BundleError> {
        let env: Envelope = serde_json::from_slice(bytes).map_err(|e| BundleError::Malformed {
            reason: format!("not a DSSE envelope JSON: {e}"),
        })?;
        env.check_signature_count()?;
        Ok(env)
    }

    /// Rejects an envelope without signatures or with more than
    /// [`MAX_SIGNATURES`].
    pub fn check_signature_count(&self) -> Result<(), BundleError> {
        if self.signatures.is_empty() {
            return Err(BundleError::Malformed {
                reason: "envelope has no signatures".into(),
            });
        }
        if self.signatures.len() > MAX_SIGNATURES {
            return Err(BundleError::Malformed {
                reason: format!(
                    "envelope has {} signatures; at most {MAX_SIGNATURES} are accepted",
                    self.signatures.len()
                ),
            });
        }
        Ok(())
    }

    /// The envelope as pretty JSON (what `exportd bundle sign` writes).
    pub fn to_json_pretty(&self) -> String {
        // Serialising plain strings and vectors cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The decoded payload bytes.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, BundleError> {
        decode_b64(&self.payload).map_err(|e| BundleError::Malformed {
            reason: format!("payload is not base64: {e}"),
        })
    }

    /// Appends a signature by `key` over this envelope's payload (co-signing,
    /// e.g. a `grant` signature next to a `config` one).
    pub fn add_signature(&mut self, keyid: &str, key: &SigningKey) -> Result<(), BundleError> {
        let payload = self.payload_bytes()?;
        let msg = pae(&self.payload_type, &payload);
        self.signatures.push(Signature {
            keyid: keyid.to_string(),
            sig: STANDARD.encode(key.sign(&msg).to_bytes()),
        });
        Ok(())
    }
}

/// Whether `sig_b64` is a valid ed25519 signature by `key` over
/// PAE(`payload_type`, `payload`). A signature that is not base64 of 64 bytes
/// is simply invalid. Uses strict verification (no malleable signatures,
/// no small-order keys).
pub fn verify_one(key: &VerifyingKey, payload_type: &str, payload: &[u8], sig_b64: &str) -> bool {
    let Ok(raw) = decode_b64(sig_b64) else {
        return false;
    };
    let Ok(sig) = EdSignature::from_slice(&raw) else {
        return false;
    };
    let msg = pae(payload_type, payload);
    key.verify_strict(&msg, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_dsse_spec_example() {
        // Example from the DSSE protocol description.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn sign_then_verify_and_tamper() {
        let k = SigningKey::from_bytes(&[7u8; 32]);
        let env = sign("t", b"{}", &[("k1", &k)]);
        let vk = k.verifying_key();
        assert!(verify_one(&vk, "t", b"{}", &env.signatures[0].sig));
        assert!(!verify_one(&vk, "u", b"{}", &env.signatures[0].sig));
        assert!(!verify_one(&vk, "t", b"{ }", &env.signatures[0].sig));
        assert!(!verify_one(&vk, "t", b"{}", "not base64!"));
        assert!(!verify_one(&vk, "t", b"{}", "AAAA"));
        let back = Envelope::from_json(env.to_json_pretty().as_bytes()).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.payload_bytes().unwrap(), b"{}");
    }

    #[test]
    fn base64_variants_accepted() {
        assert_eq!(decode_b64("+/8=").unwrap(), vec![0xfb, 0xff]);
        assert_eq!(decode_b64("+/8").unwrap(), vec![0xfb, 0xff]);
        assert_eq!(decode_b64("-_8").unwrap(), vec![0xfb, 0xff]);
        assert!(decode_b64("*").is_err());
    }

    #[test]
    fn envelope_without_signatures_is_malformed() {
        let e = Envelope::from_json(br#"{"payloadType":"t","payload":"","signatures":[]}"#);
        assert!(matches!(e, Err(BundleError::Malformed { .. })));
        let e = Envelope::from_json(b"[1,2");
        assert!(matches!(e, Err(BundleError::Malformed { .. })));
    }
}
