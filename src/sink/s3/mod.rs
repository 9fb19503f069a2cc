//! S3-compatible object storage target, with Object Lock (WORM) support:
//! writes each key once and never replaces or deletes a stored object.
//!
//! # How an object is written
//! 1. A first pass over the [`Source`] computes SHA-256 (and SHA-512 when
//!    asked), the size and, for large sources, the SHA-256 of every part.
//! 2. `HEAD` with `x-amz-checksum-mode: ENABLED`: if the key exists, its
//!    stored checksum (or, when the server keeps none, a streamed `GET`) is
//!    compared: the same bytes is a no-op (`already_present`), different bytes
//!    is [`TargetError::Conflict`].
//! 3. A second pass sends the bytes: one `PutObject` up to
//!    [`S3Options::multipart_threshold`], otherwise a multipart upload whose
//!    parts are streamed from the source (re-opened and skipped forward after
//!    a failed part; nothing larger than an I/O buffer is held in memory).
//!    Every request carries the SHA-256 of its payload, signed
//!    (`x-amz-content-sha256`) and as `x-amz-checksum-sha256`, so the server
//!    refuses bytes that changed in transit; the source is re-hashed while it
//!    is sent and the request is aborted before its last byte if the bytes
//!    differ from the first pass. Writes carry `If-None-Match: *`, so a final
//!    name is never replaced even if another writer raced us.
//! 4. With Object Lock, `x-amz-object-lock-mode` and
//!    `x-amz-object-lock-retain-until-date` go on every `PutObject` and
//!    `CreateMultipartUpload`. A final `HEAD` of the new version reads back the
//!    version id, mode and retain-until date (the receipt's `detail`) and
//!    checks size and checksum.
//!
//! Transient failures (connection errors, timeouts, 5xx, 429, `SlowDown`) are
//! retried inside one `put` with capped exponential backoff and jitter,
//! bounded by [`RetryPolicy`]; then [`TargetError::Transient`] goes back to the
//! daemon's backlog. A failed multipart upload is aborted. A bucket should
//! still carry an `AbortIncompleteMultipartUpload` lifecycle rule for uploads
//! orphaned by a power cut.
//!
//! # TLS
//! ureq 3 over rustls 0.23 with the *ring* provider. Trusted roots are the
//! system store (`/etc/ssl/certs`, `SSL_CERT_FILE`/`SSL_CERT_DIR`, read by
//! `rustls-native-certs`) plus the target's `ca` PEM file. The system store
//! rather than a compiled-in Mozilla list: an appliance's roots then follow
//! its OS updates and the operator's trust decisions (on-premises object
//! stores usually sit behind a private CA), and no rebuild is needed when a
//! root changes. `http://` endpoints are allowed (lab and test setups).

mod client;
mod config;
mod digest;
mod errors;
mod list;
mod lock;
mod object;
mod probe;
mod sigv4;
#[cfg(test)]
mod tests;
mod upload;

use crate::policy::model::{ObjectLock, TargetSpec};
use crate::sink::{PutReceipt, PutRequest, Source, Target, TargetError};

pub use config::{RetryPolicy, S3ConfigError, S3Options};
use digest::first_pass;
pub use list::Level;
pub use probe::{BucketLock, PROBE_FOLDER};
use sigv4::{Signer, uri_encode};
use upload::Written;

/// Sources larger than this go up as a multipart upload.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// Part size of multipart uploads.
pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;
/// The smallest part size S3 accepts (all parts but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// The most parts S3 accepts in one upload.
pub const MAX_PARTS: u64 = 10_000;

/// The S3 target. Cheap to share: one connection pool per target.
pub struct S3Target {
    spec: TargetSpec,
    agent: ureq::Agent,
    signer: Signer,
    /// `http` or `https`.
    scheme: &'static str,
    /// `host[:port]` of the endpoint (default port omitted).
    host: String,
    path_style: bool,
    bucket: String,
    /// Normalised prefix: empty or ending with `/`.
    prefix: String,
    lock: Option<ObjectLock>,
    opts: S3Options,
}

impl std::fmt::Debug for S3Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Target")
            .field("id", &self.spec.id)
            .field("endpoint", &format_args!("{}://{}", self.scheme, self.host))
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.signer.access_key_id)
            .field("object_lock", &self.lock)
            .finish_non_exhaustive()
    }
}

impl S3Target {
    /// The object key of `folder/name`: `<prefix><folder>/<name>`.
    pub fn key(&self, folder: &str, name: &str) -> String {
        let folder = folder.trim_matches('/');
        if folder.is_empty() {
            format!("{}{name}", self.prefix)
        } else {
            format!("{}{folder}/{name}", self.prefix)
        }
    }

    /// The URL of an object (`https://bucket.host/key` or, path-style,
    /// `https://host/bucket/key`); what a request for `key` is sent to.
    pub fn object_url(&self, key: &str) -> String {
        let (authority, path) = self.authority_and_path(key);
        format!("{}://{authority}{path}", self.scheme)
    }

    fn authority_and_path(&self, key: &str) -> (String, String) {
        let k = uri_encode(key, true);
        if self.path_style {
            (
                self.host.clone(),
                format!("/{}/{k}", uri_encode(&self.bucket, false)),
            )
        } else {
            (format!("{}.{}", self.bucket, self.host), format!("/{k}"))
        }
    }

    fn location(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

impl Target for S3Target {
    fn spec(&self) -> &TargetSpec {
        &self.spec
    }

    fn put(&self, req: &PutRequest<'_>, src: &dyn Source) -> Result<PutReceipt, TargetError> {
        let key = self.key(req.folder, req.name);
        let may_be_large = src
            .len_hint()
            .is_none_or(|n| n > self.opts.multipart_threshold);
        let part_size = match src.len_hint() {
            Some(n) => self.opts.part_size.max(n.div_ceil(MAX_PARTS)),
            // Unknown size: parts large enough for 5 TiB in 10 000 parts
            // would be 525 MiB; keep the configured size and let S3 refuse
            // beyond 10 000 parts (80 GB at 8 MiB), far above any recording.
            None => self.opts.part_size,
        };
        let d = first_pass(src, req.want_sha512, may_be_large.then_some(part_size))
            .map_err(TargetError::Source)?;

        if let Some(head) = self.head(&key, None)? {
            return self.existing(&key, &head, &d, false);
        }

        let mut tried = false;
        let written = if d.multipart(self.opts.multipart_threshold) {
            self.put_multipart(&key, src, &d, &mut tried)
        } else {
            self.put_single(&key, src, &d, &mut tried)
        };
        let version = match written {
            Ok(Written::Done(v)) => v,
            Ok(Written::Exists) => {
                // Someone (perhaps our own earlier attempt whose answer was
                // lost) wrote the key meanwhile.
                let head = self.head(&key, None)?.ok_or_else(|| {
                    TargetError::Transient(format!(
                        "S3 {}: precondition failed but the object is not there",
                        self.location(&key)
                    ))
                })?;
                return self.existing(&key, &head, &d, tried);
            }
            Err(e) => return Err(e),
        };

        let head = self.head(&key, version.as_deref())?.ok_or_else(|| {
            TargetError::Transient(format!(
                "S3 {}: written but HEAD does not find it yet",
                self.location(&key)
            ))
        })?;
        if head.len.is_some_and(|n| n != d.len) {
            return Err(TargetError::Permanent(format!(
                "S3 {}: stored size {:?} differs from the {} bytes sent",
                self.location(&key),
                head.len,
                d.len
            )));
        }
        if let Some(c) = head.checksum_sha256.as_deref() {
            if !d.stored_checksum_matches(c) {
                return Err(TargetError::Permanent(format!(
                    "S3 {}: stored checksum {c} does not match the bytes sent",
                    self.location(&key)
                )));
            }
        }
        self.check_lock(&key, &head)?;
        Ok(self.receipt(&d, false, &head))
    }

    fn exists(&self, folder: &str, name: &str) -> Result<bool, TargetError> {
        Ok(self.head(&self.key(folder, name), None)?.is_some())
    }

    fn describe(&self, folder: &str) -> String {
        let folder = folder.trim_matches('/');
        format!("s3://{}/{}{folder}", self.bucket, self.prefix)
    }
}
