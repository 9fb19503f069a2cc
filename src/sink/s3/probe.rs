//! `exportd check-config --probe` on an S3 target: the bucket's Object Lock
//! configuration (when the target asks for Object Lock) and one small probe
//! object written, read back and deleted. Never touches a key outside
//! `<prefix>exportd-probe/`, never deletes a version (a plain DELETE only
//! writes a delete marker on a versioned bucket) and never shortens a
//! retention.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

use super::S3Target;
use super::client::{Body, Call, read_small, send_to_target};
use super::errors::xml_text;
use super::lock::retain_until;
use crate::sink::TargetError;
use crate::time::Timestamp;

/// The folder (under the target's prefix) where probe objects are written.
pub const PROBE_FOLDER: &str = "exportd-probe";

/// How long a probe object is retained when the target uses Object Lock:
/// one day, whatever `retain_days` says (its version cannot be deleted
/// before then; a delete marker hides it at once).
const PROBE_RETAIN_DAYS: u32 = 1;

/// The bucket's Object Lock configuration (`GetObjectLockConfiguration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketLock {
    /// `ObjectLockEnabled` is `Enabled`.
    pub enabled: bool,
    /// The default retention rule, e.g. `COMPLIANCE 2557 days`, if any.
    pub default_retention: Option<String>,
}

impl S3Target {
    /// `GET /?object-lock`: the bucket's Object Lock configuration; `None`
    /// when the bucket has none (`ObjectLockConfigurationNotFoundError`).
    pub fn bucket_lock(&self) -> Result<Option<BucketLock>, TargetError> {
        let body = self.retry(|_| {
            let call = Call::new("GetObjectLockConfiguration", "GET", "").query("object-lock", "");
            let resp = self.send(call).map_err(send_to_target)?;
            let status = resp.status().as_u16();
            if status == 404 {
                let body = read_small(resp).unwrap_or_default();
                if xml_text(&body, "Code").as_deref()
                    == Some("ObjectLockConfigurationNotFoundError")
                {
                    return Ok(None);
                }
                let (code, message) = super::errors::error_code_message(&body);
                return Err(self.classify(
                    "GetObjectLockConfiguration",
                    "",
                    status,
                    code.as_deref(),
                    message.as_deref(),
                ));
            }
            if !resp.status().is_success() {
                return Err(self.status_error("GetObjectLockConfiguration", "", resp));
            }
            read_small(resp).map(Some).map_err(|e| {
                TargetError::Transient(format!(
                    "S3 GetObjectLockConfiguration s3://{}: reading the answer: {e}",
                    self.bucket
                ))
            })
        })?;
        Ok(body.map(|b| parse_bucket_lock(&b)))
    }

    /// The probe: checks the bucket's Object Lock when the target asks for
    /// it, then writes `<prefix>exportd-probe/<agent>-<random>` (with the
    /// target's lock mode for one day), reads it back with HEAD (size,
    /// checksum, retention) and deletes it with a plain DELETE. Returns
    /// what was done, for the operator.
    pub fn probe(&self, agent_id: &str) -> Result<String, TargetError> {
        let mut said = Vec::new();
        if let Some(lock) = &self.lock {
            match self.bucket_lock()? {
                Some(b) if b.enabled => said.push(format!(
                    "Object Lock enabled (default retention: {})",
                    b.default_retention.as_deref().unwrap_or("none")
                )),
                _ => {
                    return Err(TargetError::Permanent(format!(
                        "S3 bucket {} has no Object Lock, but target {} asks for {} retention; \
                         use a bucket created with Object Lock enabled (or enable it on this \
                         versioned bucket), or remove object_lock from the target",
                        self.bucket,
                        self.spec.id,
                        lock.mode.header_value()
                    )));
                }
            }
        }
        let key = format!(
            "{}{PROBE_FOLDER}/{}-{}",
            self.prefix,
            crate::sink::fs::agent_tag(agent_id),
            crate::sink::fs::start_nonce()
        );
        let body = format!(
            "exportd probe by {agent_id} at {}\n",
            Timestamp::now().rfc3339()
        );
        let version = self.probe_put(&key, body.as_bytes())?;
        let head = self.head(&key, version.as_deref())?.ok_or_else(|| {
            TargetError::Permanent(format!(
                "S3 {}: written, but HEAD does not find it (check s3:GetObject)",
                self.location(&key)
            ))
        })?;
        if head.len.is_some_and(|n| n != body.len() as u64) {
            return Err(TargetError::Permanent(format!(
                "S3 {}: stored size {:?} differs from the {} bytes sent",
                self.location(&key),
                head.len,
                body.len()
            )));
        }
        self.check_lock(&key, &head)?;
        self.probe_delete(&key)?;
        said.push(format!("probe {} written and deleted", self.location(&key)));
        if let (Some(v), Some(until)) = (&head.version_id, &head.retain_until) {
            said.push(format!(
                "its version {v} stays until {until} (Object Lock; a delete marker hides it)"
            ));
        }
        Ok(said.join("; "))
    }

    /// PutObject of the probe body, `If-None-Match: *`, with checksum and
    /// (when configured) the lock mode for [`PROBE_RETAIN_DAYS`].
    fn probe_put(&self, key: &str, body: &[u8]) -> Result<Option<String>, TargetError> {
        let sha = Sha256::digest(body);
        self.retry(|_| {
            let mut call = Call::new("PutObject", "PUT", key)
                .header("if-none-match", "*")
                .header("x-amz-checksum-sha256", B64.encode(sha))
                .header("x-amz-sdk-checksum-algorithm", "SHA256")
                .header("content-type", "text/plain");
            if let Some(lock) = &self.lock {
                call = call
                    .header("x-amz-object-lock-mode", lock.mode.header_value())
                    .header(
                        "x-amz-object-lock-retain-until-date",
                        retain_until(Timestamp::now(), PROBE_RETAIN_DAYS),
                    );
            }
            call.payload_sha256 = hex::encode(sha);
            call.body = Body::Bytes(body);
            let resp = self.send(call).map_err(send_to_target)?;
            if !resp.status().is_success() {
                return Err(self.status_error("PutObject", key, resp));
            }
            Ok(super::client::header(&resp, "x-amz-version-id").map(str::to_string))
        })
    }

    /// A plain DELETE of the probe key (no version id: on a versioned
    /// bucket it writes a delete marker and the version stays).
    fn probe_delete(&self, key: &str) -> Result<(), TargetError> {
        self.retry(|_| {
            let resp = self
                .send(Call::new("DeleteObject", "DELETE", key))
                .map_err(send_to_target)?;
            if resp.status().is_success() || resp.status().as_u16() == 404 {
                Ok(())
            } else {
                Err(self.status_error("DeleteObject", key, resp))
            }
        })
    }
}

/// Parses an `ObjectLockConfiguration` document. Pure.
fn parse_bucket_lock(body: &[u8]) -> BucketLock {
    let enabled = xml_text(body, "ObjectLockEnabled").is_some_and(|v| v.trim() == "Enabled");
    let mode = xml_text(body, "Mode");
    let period = xml_text(body, "Days")
        .map(|d| format!("{} days", d.trim()))
        .or_else(|| xml_text(body, "Years").map(|y| format!("{} years", y.trim())));
    let default_retention = match (mode, period) {
        (Some(m), Some(p)) => Some(format!("{} {p}", m.trim())),
        (Some(m), None) => Some(m.trim().to_string()),
        _ => None,
    };
    BucketLock {
        enabled,
        default_retention,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_lock_documents() {
        let on = br#"<?xml version="1.0" encoding="UTF-8"?>
<ObjectLockConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <ObjectLockEnabled>Enabled</ObjectLockEnabled>
  <Rule><DefaultRetention><Mode>COMPLIANCE</Mode><Days>2557</Days></DefaultRetention></Rule>
</ObjectLockConfiguration>"#;
        assert_eq!(
            parse_bucket_lock(on),
            BucketLock {
                enabled: true,
                default_retention: Some("COMPLIANCE 2557 days".into())
            }
        );
        let bare = b"<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>";
        assert_eq!(
            parse_bucket_lock(bare),
            BucketLock {
                enabled: true,
                default_retention: None
            }
        );
        assert!(!parse_bucket_lock(b"<ObjectLockConfiguration/>").enabled);
        assert!(!parse_bucket_lock(b"garbage").enabled);
    }

    #[test]
    fn probe_tags_are_key_safe() {
        let tag = crate::sink::fs::agent_tag;
        assert_eq!(tag("ny-rec01"), "ny-rec01");
        assert_eq!(tag("a/b c"), "a_b_c");
        assert_eq!(tag(""), "agent");
    }
}
