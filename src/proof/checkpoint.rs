//! A checkpoint of the audit log: its payload, its DSSE envelope (signed by
//! the agent key, keyid = the key's fingerprint), its file name and the
//! chain between checkpoints. Pure: never touches a file.
//!
//! Payload (export-layout.md), keys in this order:
//! `{"agent_id", "ts", "file", "rows", "last_row_hash", "prev_checkpoint"}`;
//! `ts` is RFC 3339 UTC with milliseconds and the file is named after the
//! same instant, `YYYYMMDDTHHMMSS.mmmZ.json`; `rows` counts the data rows of
//! `file` (header excluded) and `last_row_hash` is the `row_hash` of the
//! last of them (the chain's tail before the file when `rows` is 0);
//! `prev_checkpoint` is the SHA-256 (hex) of the previous checkpoint file's
//! bytes, or 64 zeros for the first.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::PAYLOAD_TYPE;
use super::key::{AgentKey, public_fingerprint};
use crate::control::bundle::dsse::{self, Envelope};
use crate::ledger::audit::{GENESIS, sha256_hex};
use crate::time::{Civil, Timestamp};

/// A checkpoint's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The agent.
    pub agent_id: String,
    /// When it was made (RFC 3339 UTC, milliseconds).
    pub ts: String,
    /// The audit file, `audit-YYYYMMDD.csv`.
    pub file: String,
    /// Data rows of that file covered.
    pub rows: u64,
    /// The `row_hash` of the last covered row.
    pub last_row_hash: String,
    /// SHA-256 hex of the previous checkpoint file (64 zeros: none).
    pub prev_checkpoint: String,
}

/// `2026-12-07T08:30:00.123Z`.
pub fn ts_text(ts: Timestamp) -> String {
    let c = ts.civil();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.milli
    )
}

/// `20261207T083000.123Z.json`, the file name of a checkpoint made at `ts`.
pub fn file_name(ts: Timestamp) -> String {
    let c = ts.civil();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z.json",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.milli
    )
}

/// The instant a checkpoint file name stands for (`None`: not one).
pub fn parse_file_name(name: &str) -> Option<Timestamp> {
    let s = name.strip_suffix("Z.json")?;
    let b = s.as_bytes();
    if b.len() != 19 || b[8] != b'T' || b[15] != b'.' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let c = Civil {
        year: digits(0..4)? as i32,
        month: digits(4..6)?,
        day: digits(6..8)?,
        hour: digits(9..11)?,
        minute: digits(11..13)?,
        second: digits(13..15)?,
        milli: digits(16..19)?,
    };
    let ts = Timestamp::from_civil(c)?;
    (file_name(ts) == name).then_some(ts)
}

/// Whether `name` is an audit day file name, `audit-YYYYMMDD.csv`.
pub fn is_audit_file_name(name: &str) -> bool {
    name.len() == 18
        && name.starts_with("audit-")
        && name.ends_with(".csv")
        && name[6..14].bytes().all(|c| c.is_ascii_digit())
}

/// The hash a checkpoint's successor carries: SHA-256 hex of its bytes.
pub fn file_hash(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

/// The first checkpoint's `prev_checkpoint`.
pub const NO_PREVIOUS: &str = GENESIS;

/// Signs a payload: the checkpoint file's bytes (pretty JSON envelope and a
/// newline).
pub fn sign(key: &AgentKey, p: &Payload) -> Vec<u8> {
    // Serialising strings and a number cannot fail.
    let payload = serde_json::to_vec(p).unwrap_or_default();
    let env = dsse::sign(
        PAYLOAD_TYPE,
        &payload,
        &[(&key.fingerprint(), key.signing())],
    );
    let mut out = env.to_json_pretty().into_bytes();
    out.push(b'\n');
    out
}

/// Why a checkpoint file does not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Bad {
    /// Not a DSSE envelope of a checkpoint, or a payload that does not parse.
    #[error("malformed: {0}")]
    Malformed(String),
    /// No signature verifies with the agent key.
    #[error("signature does not verify with the agent key {0} (forged or changed)")]
    Signature(String),
    /// Signed, but inconsistent with its name or the agent.
    #[error("{0}")]
    Inconsistent(String),
}

/// Opens a checkpoint file: a DSSE envelope of [`PAYLOAD_TYPE`] with a
/// signature by `key`, whose payload parses and matches its file `name`
/// and `agent_id`.
pub fn open(bytes: &[u8], name: &str, agent_id: &str, key: &VerifyingKey) -> Result<Payload, Bad> {
    let env = Envelope::from_json(bytes).map_err(|e| Bad::Malformed(e.to_string()))?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(Bad::Malformed(format!(
            "payloadType {:?}, expected {PAYLOAD_TYPE}",
            env.payload_type
        )));
    }
    let payload = env
        .payload_bytes()
        .map_err(|e| Bad::Malformed(e.to_string()))?;
    let signed = env
        .signatures
        .iter()
        .any(|s| dsse::verify_one(key, PAYLOAD_TYPE, &payload, &s.sig));
    if !signed {
        return Err(Bad::Signature(public_fingerprint(key)));
    }
    let p: Payload =
        serde_json::from_slice(&payload).map_err(|e| Bad::Malformed(format!("payload: {e}")))?;
    check(&p, name, agent_id)?;
    Ok(p)
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

fn check(p: &Payload, name: &str, agent_id: &str) -> Result<(), Bad> {
    let bad = |s: String| Err(Bad::Inconsistent(s));
    if p.agent_id != agent_id {
        return bad(format!("agent_id {:?}, expected {agent_id:?}", p.agent_id));
    }
    match parse_file_name(name) {
        Some(ts) if ts_text(ts) == p.ts => {}
        _ => return bad(format!("ts {:?} does not match the file name", p.ts)),
    }
    if !is_audit_file_name(&p.file) {
        return bad(format!("file {:?} is not an audit day file name", p.file));
    }
    if !is_hex64(&p.last_row_hash) || !is_hex64(&p.prev_checkpoint) {
        return bad("last_row_hash or prev_checkpoint is not 64 hex digits".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(ts: Timestamp) -> Payload {
        Payload {
            agent_id: "a1".into(),
            ts: ts_text(ts),
            file: "audit-20261207.csv".into(),
            rows: 3,
            last_row_hash: "ab".repeat(32),
            prev_checkpoint: NO_PREVIOUS.into(),
        }
    }

    #[test]
    fn names_round_trip() {
        let ts = Timestamp(1_796_632_200_123);
        let n = file_name(ts);
        assert_eq!(n.len(), "20261207T083000.123Z.json".len());
        assert_eq!(parse_file_name(&n), Some(ts));
        assert_eq!(ts_text(ts).len(), "2026-12-07T08:30:00.123Z".len());
        assert!(ts_text(ts).ends_with(".123Z"));
        assert_eq!(parse_file_name("20261307T083000.123Z.json"), None);
        assert_eq!(parse_file_name("x.json"), None);
        assert!(is_audit_file_name("audit-20261207.csv"));
        assert!(!is_audit_file_name("audit-2026120x.csv"));
    }

    #[test]
    fn payload_keys_in_contract_order() {
        let t = serde_json::to_string(&payload(Timestamp(0))).unwrap();
        let order = [
            "agent_id",
            "ts",
            "file",
            "rows",
            "last_row_hash",
            "prev_checkpoint",
        ];
        let pos: Vec<usize> = order.iter().map(|k| t.find(k).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{t}");
    }

    #[test]
    fn signed_opens_forged_and_changed_do_not() {
        let ts = Timestamp(1_796_632_200_123);
        let name = file_name(ts);
        let k = AgentKey::from_seed([1; 32]);
        let bytes = sign(&k, &payload(ts));
        assert_eq!(open(&bytes, &name, "a1", &k.public()), Ok(payload(ts)));
        let other = AgentKey::from_seed([2; 32]);
        let forged = sign(&other, &payload(ts));
        assert!(matches!(
            open(&forged, &name, "a1", &k.public()),
            Err(Bad::Signature(_))
        ));
        assert!(matches!(
            open(&bytes, &name, "a2", &k.public()),
            Err(Bad::Inconsistent(_))
        ));
        let later = file_name(Timestamp(ts.0 + 1));
        assert!(matches!(
            open(&bytes, &later, "a1", &k.public()),
            Err(Bad::Inconsistent(_))
        ));
        let mut changed = bytes.clone();
        let i = changed.iter().position(|&b| b == b'"').unwrap();
        changed[i] = b'\'';
        assert!(matches!(
            open(&changed, &name, "a1", &k.public()),
            Err(Bad::Malformed(_))
        ));
    }
}
