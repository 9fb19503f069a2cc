//! What is already stored under a key: `HEAD` (with a `GET` probe for the
//! error text), streamed re-hashing, and the same-or-conflict comparison
//! with the bytes we hold. Never writes an object.

use std::io::{self, Read};

use exportd_hot::Sha256;

use super::S3Target;
use super::client::{Call, Resp, header, send_to_target};
use super::digest::{BUF, Digests};
use crate::sink::{PutReceipt, TargetError};

/// What HEAD says about an existing object.
pub(super) struct Head {
    pub(super) len: Option<u64>,
    pub(super) checksum_sha256: Option<String>,
    pub(super) version_id: Option<String>,
    pub(super) lock_mode: Option<String>,
    pub(super) retain_until: Option<String>,
}

impl Head {
    pub(super) fn from(resp: &Resp) -> Head {
        Head {
            len: header(resp, "content-length").and_then(|v| v.parse().ok()),
            checksum_sha256: header(resp, "x-amz-checksum-sha256").map(str::to_string),
            version_id: header(resp, "x-amz-version-id").map(str::to_string),
            lock_mode: header(resp, "x-amz-object-lock-mode").map(str::to_string),
            retain_until: header(resp, "x-amz-object-lock-retain-until-date").map(str::to_string),
        }
    }

    pub(super) fn detail(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(v) = &self.version_id {
            parts.push(format!("version_id={v}"));
        }
        if let Some(m) = &self.lock_mode {
            parts.push(format!("mode={m}"));
        }
        if let Some(r) = &self.retain_until {
            parts.push(format!("retain_until={r}"));
        }
        (!parts.is_empty()).then(|| parts.join(" "))
    }
}

/// How an existing object compares with the bytes we hold.
pub(super) enum Compare {
    Same,
    Different(String),
}

impl S3Target {
    /// HEAD the key (latest version or `version_id`). `None` = no such key.
    pub(super) fn head(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<Option<Head>, TargetError> {
        self.retry(|_| {
            let mut call =
                Call::new("HeadObject", "HEAD", key).header("x-amz-checksum-mode", "ENABLED");
            if let Some(v) = version_id {
                call = call.query("versionId", v);
            }
            let resp = self.send(call).map_err(send_to_target)?;
            match resp.status().as_u16() {
                200..=299 => Ok(Some(Head::from(&resp))),
                404 => Ok(None),
                s @ (408 | 429 | 500..) => Err(self.classify("HeadObject", key, s, None, None)),
                // A HEAD error has no body: ask again with GET for the
                // server's code and message.
                _ => Err(self.probe_error(key)),
            }
        })
    }

    fn probe_error(&self, key: &str) -> TargetError {
        let call = Call::new("HeadObject", "GET", key).header("range", "bytes=0-0");
        match self.send(call) {
            Ok(resp) if !resp.status().is_success() => self.status_error("HeadObject", key, resp),
            Ok(resp) => TargetError::Transient(format!(
                "S3 HeadObject {}: HEAD failed but GET answered HTTP {}",
                self.location(key),
                resp.status().as_u16()
            )),
            Err(e) => send_to_target(e),
        }
    }

    /// Streams the object and hashes it (for servers that keep no checksum).
    fn get_sha256(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<([u8; 32], u64), TargetError> {
        self.retry(|_| {
            let mut call = Call::new("GetObject", "GET", key);
            if let Some(v) = version_id {
                call = call.query("versionId", v);
            }
            let resp = self.send(call).map_err(send_to_target)?;
            if !resp.status().is_success() {
                return Err(self.status_error("GetObject", key, resp));
            }
            let mut r = resp.into_body().into_with_config().limit(u64::MAX).reader();
            let mut h = Sha256::new();
            let mut buf = vec![0u8; BUF];
            let mut n_total = 0u64;
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(TargetError::Transient(format!(
                            "S3 GetObject {}: reading the body: {e}",
                            self.location(key)
                        )));
                    }
                };
                h.update(&buf[..n]);
                n_total += n as u64;
            }
            Ok((h.finalize(), n_total))
        })
    }

    fn compare(&self, key: &str, head: &Head, d: &Digests) -> Result<Compare, TargetError> {
        if head
            .checksum_sha256
            .as_deref()
            .is_some_and(|c| d.stored_checksum_matches(c))
        {
            return Ok(Compare::Same);
        }
        // No checksum, another part size, or different bytes: the stored
        // bytes decide (and give the SHA-256 a conflict must name).
        self.compare_by_get(key, head, d)
    }

    fn compare_by_get(&self, key: &str, head: &Head, d: &Digests) -> Result<Compare, TargetError> {
        let (sha, _) = self.get_sha256(key, head.version_id.as_deref())?;
        Ok(if sha == d.sha256 {
            Compare::Same
        } else {
            Compare::Different(hex::encode(sha))
        })
    }

    pub(super) fn receipt(&self, d: &Digests, already_present: bool, head: &Head) -> PutReceipt {
        PutReceipt {
            sha256: d.sha256,
            sha512: d.sha512,
            bytes: d.len,
            already_present,
            detail: head.detail(),
        }
    }

    /// The key exists: the same bytes gives a receipt, different bytes a conflict.
    pub(super) fn existing(
        &self,
        key: &str,
        head: &Head,
        d: &Digests,
        written_by_us: bool,
    ) -> Result<PutReceipt, TargetError> {
        match self.compare(key, head, d)? {
            Compare::Same => {
                self.check_lock(key, head)?;
                Ok(self.receipt(d, !written_by_us, head))
            }
            Compare::Different(existing) => Err(TargetError::Conflict {
                location: self.location(key),
                existing,
            }),
        }
    }
}
