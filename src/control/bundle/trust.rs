//! Who may sign what; decides only, never reads or writes a file.
//!
//! Who may sign what: the trust anchors of `exportd.toml` (`[[trust]]`) plus
//! the admins granted by the configuration bundle in force.
//!
//! Decision for an envelope (see [`TrustSet::verify`]):
//! 1. the payload must be base64 ([`BundleError::Malformed`]) and the
//!    `payloadType` known ([`BundleError::UnknownPayloadType`]);
//! 2. signatures from keyids not in the set are ignored;
//! 3. the bundle passes when at least one signature from a trusted key
//!    verifies and that key holds the role of the payload type;
//! 4. otherwise the error is, in this order of precedence:
//!    [`BundleError::BadSignature`] if a trusted key's signature failed,
//!    [`BundleError::MissingRole`] if some trusted signature verified,
//!    [`BundleError::UnknownKey`] if no signature came from a trusted key.
//!
//! A failing signature from a trusted key next to a valid one holding the
//! role does not reject the bundle (DSSE semantics: the valid ones count).

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;

use super::dsse::{self, Envelope};
use super::spool::Spooled;
use super::{BundleError, PayloadType, Role};
use crate::policy::model::Admin;

/// Parses a public key as written in `[[trust]]` / `admins`: base64 of the
/// raw 32-byte ed25519 key. Returns a human-readable reason on failure.
pub fn parse_public_key(b64: &str) -> Result<VerifyingKey, String> {
    let raw = dsse::decode_b64(b64).map_err(|e| format!("public_key is not base64 ({e})"))?;
    let bytes: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
        format!(
            "public_key decodes to {} bytes; an ed25519 public key has exactly 32",
            raw.len()
        )
    })?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| "public_key is not a valid ed25519 curve point".to_string())
}

/// Parses role names; the first unknown one is returned as the error.
pub fn parse_roles(roles: &[String]) -> Result<Vec<Role>, String> {
    let mut out = Vec::with_capacity(roles.len());
    for r in roles {
        match Role::parse(r) {
            Some(role) => {
                if !out.contains(&role) {
                    out.push(role);
                }
            }
            None => return Err(format!("unknown role {r:?}")),
        }
    }
    out.sort();
    Ok(out)
}

/// One key the agent trusts.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// The keyid signatures name.
    pub keyid: String,
    /// The ed25519 public key.
    pub key: VerifyingKey,
    /// The roles it holds.
    pub roles: Vec<Role>,
    /// `true` for a `[[trust]]` anchor, `false` for a granted admin.
    pub anchor: bool,
}

/// A valid signer of a verified bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The signer's keyid.
    pub keyid: String,
    /// The roles the signer holds.
    pub roles: Vec<Role>,
}

/// The outcome of checking one signature of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigStatus {
    /// The signature verifies with the trusted key, which holds these roles.
    Valid(Vec<Role>),
    /// The keyid is trusted but the signature does not verify.
    Invalid,
    /// The keyid is not in the trust set (the signature is ignored).
    UnknownKey,
}

/// The check of one signature, for reports (`exportd bundle verify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureCheck {
    /// The keyid the signature names.
    pub keyid: String,
    /// What was found.
    pub status: SigStatus,
}

/// A bundle whose signatures passed [`TrustSet::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The payload type.
    pub payload_type: PayloadType,
    /// The decoded payload bytes, exactly as signed.
    pub payload: Vec<u8>,
    /// The trusted keys whose signatures verified (at least one of them holds
    /// the role of `payload_type`).
    pub signers: Vec<Signer>,
}

impl Verified {
    /// Whether a valid signer holds `role`.
    pub fn signed_with_role(&self, role: Role) -> bool {
        self.signers.iter().any(|s| s.roles.contains(&role))
    }

    /// The keyids of the valid signers.
    pub fn signer_ids(&self) -> Vec<String> {
        self.signers.iter().map(|s| s.keyid.clone()).collect()
    }
}

/// The set of trusted keys: anchors plus granted admins.
#[derive(Debug, Clone, Default)]
pub struct TrustSet {
    keys: BTreeMap<String, TrustedKey>,
}

impl TrustSet {
    /// Builds the set from the `[[trust]]` anchors of exportd.toml and the
    /// admins granted by the configuration in force
    /// ([`crate::control::bundle::BundleState::admins`]).
    ///
    /// Anchors must be well formed (32-byte base64 key, known roles, unique
    /// keyids) or [`BundleError::BadTrustKey`] names the entry. A granted admin
    /// whose keyid is also an anchor is ignored: an anchor cannot be replaced
    /// by a push.
    pub fn new(anchors: &[Admin], granted: &[Admin]) -> Result<TrustSet, BundleError> {
        let mut keys = BTreeMap::new();
        for (list, anchor) in [(anchors, true), (granted, false)] {
            for a in list {
                let bad = |reason: String| BundleError::BadTrustKey {
                    keyid: a.keyid.clone(),
                    reason,
                };
                if a.keyid.is_empty() {
                    return Err(bad("keyid is empty".into()));
                }
                let key = parse_public_key(&a.public_key).map_err(bad)?;
                let roles = parse_roles(&a.roles).map_err(bad)?;
                if let Some(prev) = keys.get(&a.keyid) {
                    let prev: &TrustedKey = prev;
                    if prev.anchor && !anchor {
                        continue;
                    }
                    return Err(bad("keyid is listed twice".into()));
                }
                keys.insert(
                    a.keyid.clone(),
                    TrustedKey {
                        keyid: a.keyid.clone(),
                        key,
                        roles,
                        anchor,
                    },
                );
            }
        }
        Ok(TrustSet { keys })
    }

    /// The trusted key with this keyid.
    pub fn get(&self, keyid: &str) -> Option<&TrustedKey> {
        self.keys.get(keyid)
    }

    /// Whether `keyid` is a `[[trust]]` anchor.
    pub fn is_anchor(&self, keyid: &str) -> bool {
        self.keys.get(keyid).is_some_and(|k| k.anchor)
    }

    /// All trusted keys, by keyid.
    pub fn keys(&self) -> impl Iterator<Item = &TrustedKey> {
        self.keys.values()
    }

    /// Decodes the payload and checks every signature, without deciding.
    /// Fails only when the payload is not base64.
    pub fn check_signatures(
        &self,
        env: &Envelope,
    ) -> Result<(Vec<u8>, Vec<SignatureCheck>), BundleError> {
        let payload = env.payload_bytes()?;
        let checks = env
            .signatures
            .iter()
            .map(|s| {
                let status = match self.keys.get(&s.keyid) {
                    None => SigStatus::UnknownKey,
                    Some(k) => {
                        if dsse::verify_one(&k.key, &env.payload_type, &payload, &s.sig) {
                            SigStatus::Valid(k.roles.clone())
                        } else {
                            SigStatus::Invalid
                        }
                    }
                };
                SignatureCheck {
                    keyid: s.keyid.clone(),
                    status,
                }
            })
            .collect();
        Ok((payload, checks))
    }

    /// Verifies an envelope: known payload type, at least one valid signature
    /// from a trusted key holding the payload type's role. See the module
    /// documentation for the order in which errors are reported.
    pub fn verify(&self, env: &Envelope) -> Result<Verified, BundleError> {
        env.check_signature_count()?;
        let (payload, checks) = self.check_signatures(env)?;
        let (payload_type, signers) = decide(&env.payload_type, checks)?;
        Ok(Verified {
            payload_type,
            payload,
            signers,
        })
    }

    /// Checks every signature of a spooled envelope, reading its payload
    /// file once (see [`super::spool::verify_file`]).
    pub fn check_spooled(&self, sp: &Spooled) -> Result<Vec<SignatureCheck>, BundleError> {
        let known: Vec<(usize, &TrustedKey)> = sp
            .signatures
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.keys.get(&s.keyid).map(|k| (i, k)))
            .collect();
        let pairs: Vec<(&VerifyingKey, &str)> = known
            .iter()
            .map(|(i, k)| (&k.key, sp.signatures[*i].sig.as_str()))
            .collect();
        let ok = super::spool::verify_file(&pairs, &sp.payload_type, &sp.file, sp.len)?;
        let mut checks: Vec<SignatureCheck> = sp
            .signatures
            .iter()
            .map(|s| SignatureCheck {
                keyid: s.keyid.clone(),
                status: SigStatus::UnknownKey,
            })
            .collect();
        for ((i, k), valid) in known.iter().zip(ok) {
            checks[*i].status = if valid {
                SigStatus::Valid(k.roles.clone())
            } else {
                SigStatus::Invalid
            };
        }
        Ok(checks)
    }

    /// [`TrustSet::verify`] for a spooled envelope: the payload type and
    /// who signed, when a trusted key holding the role signed it.
    pub fn verify_spooled(&self, sp: &Spooled) -> Result<(PayloadType, Vec<Signer>), BundleError> {
        let checks = self.check_spooled(sp)?;
        decide(&sp.payload_type, checks)
    }
}

/// The verdict on checked signatures (see the module documentation).
fn decide(
    payload_type: &str,
    checks: Vec<SignatureCheck>,
) -> Result<(PayloadType, Vec<Signer>), BundleError> {
    let payload_type = PayloadType::from_media_type(payload_type).ok_or_else(|| {
        BundleError::UnknownPayloadType {
            got: payload_type.to_string(),
        }
    })?;
    let role = payload_type.role();
    let mut signers: Vec<Signer> = Vec::new();
    let mut first_invalid = None;
    for c in &checks {
        match &c.status {
            SigStatus::Valid(roles) => {
                if !signers.iter().any(|s| s.keyid == c.keyid) {
                    signers.push(Signer {
                        keyid: c.keyid.clone(),
                        roles: roles.clone(),
                    });
                }
            }
            SigStatus::Invalid => {
                first_invalid.get_or_insert_with(|| c.keyid.clone());
            }
            SigStatus::UnknownKey => {}
        }
    }
    if signers.iter().any(|s| s.roles.contains(&role)) {
        return Ok((payload_type, signers));
    }
    if let Some(keyid) = first_invalid {
        return Err(BundleError::BadSignature { keyid });
    }
    if !signers.is_empty() {
        return Err(BundleError::MissingRole {
            role,
            signers: signers.into_iter().map(|s| s.keyid).collect(),
        });
    }
    Err(BundleError::UnknownKey {
        keyids: checks.into_iter().map(|c| c.keyid).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use ed25519_dalek::SigningKey;

    fn admin(keyid: &str, seed: u8, roles: &[&str]) -> (Admin, SigningKey) {
        let sk = SigningKey::from_bytes(&[seed; 32]);
        let a = Admin {
            keyid: keyid.into(),
            public_key: base64::engine::general_purpose::STANDARD
                .encode(sk.verifying_key().to_bytes()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        };
        (a, sk)
    }

    #[test]
    fn public_key_lengths() {
        assert!(parse_public_key("AAAA").unwrap_err().contains("3 bytes"));
        assert!(parse_public_key("!!").is_err());
        let (a, _) = admin("k", 1, &[]);
        assert!(parse_public_key(&a.public_key).is_ok());
    }

    #[test]
    fn bad_anchor_is_named() {
        let (mut a, _) = admin("central", 1, &["config", "root"]);
        let e = TrustSet::new(&[a.clone()], &[]).unwrap_err();
        assert!(matches!(&e, BundleError::BadTrustKey { keyid, .. } if keyid == "central"));
        a.roles = vec!["config".into()];
        a.public_key = "AAAA".into();
        assert!(TrustSet::new(&[a], &[]).is_err());
    }

    #[test]
    fn granted_cannot_shadow_anchor() {
        let (anchor, ask) = admin("central", 1, &["config"]);
        let (mut evil, esk) = admin("central", 2, &["config", "grant"]);
        evil.keyid = "central".into();
        let t = TrustSet::new(&[anchor], &[evil]).unwrap();
        assert!(t.is_anchor("central"));
        let env = dsse::sign(PayloadType::CONFIG_MEDIA_TYPE, b"{}", &[("central", &esk)]);
        assert!(matches!(
            t.verify(&env),
            Err(BundleError::BadSignature { .. })
        ));
        let env = dsse::sign(PayloadType::CONFIG_MEDIA_TYPE, b"{}", &[("central", &ask)]);
        assert!(t.verify(&env).is_ok());
    }

    #[test]
    fn valid_signature_wins_over_bad_and_unknown() {
        let (a, ask) = admin("a", 1, &["config"]);
        let (b, _) = admin("b", 2, &["config"]);
        let other = SigningKey::from_bytes(&[9; 32]);
        let t = TrustSet::new(&[a, b], &[]).unwrap();
        let env = dsse::sign(
            PayloadType::CONFIG_MEDIA_TYPE,
            b"{}",
            &[("zz", &other), ("b", &other), ("a", &ask)],
        );
        let v = t.verify(&env).unwrap();
        assert_eq!(v.signer_ids(), vec!["a".to_string()]);
    }
}
