//! Writing an object: one `PutObject`, or a multipart upload (create,
//! parts streamed from the source, complete, abort on failure), every write
//! conditional (`If-None-Match: *`). Never replaces an existing key.

use std::io::{self, Read};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use exportd_hot::Sha256;

use super::S3Target;
use super::client::{Body, Call, Resp, header, read_small, send_to_target};
use super::digest::{Digests, Verified, open_at};
use super::errors::{error_code_message, xml_text};
use super::sigv4::sha256_hex;
use crate::sink::{Source, TargetError};

/// Outcome of one write attempt sequence.
pub(super) enum Written {
    /// Version id of the new object (if the bucket is versioned).
    Done(Option<String>),
    /// `412 Precondition Failed`: the key appeared meanwhile.
    Exists,
}

impl S3Target {
    pub(super) fn put_single(
        &self,
        key: &str,
        src: &dyn Source,
        d: &Digests,
        tried: &mut bool,
    ) -> Result<Written, TargetError> {
        let sha_hex = hex::encode(d.sha256);
        self.retry(|_| {
            let mut r = src.open().map_err(TargetError::Source)?;
            let mut body = Verified {
                inner: &mut *r,
                remaining: d.len,
                hasher: Sha256::new(),
                expected: d.sha256,
            };
            let mut call = Call::new("PutObject", "PUT", key)
                .header("if-none-match", "*")
                .header("x-amz-checksum-sha256", d.sha256_b64())
                .header("x-amz-sdk-checksum-algorithm", "SHA256")
                .header("content-type", "application/octet-stream");
            call = self.lock_headers(call);
            call.payload_sha256 = sha_hex.clone();
            call.body = Body::Reader(&mut body, d.len);
            *tried = true;
            let Some(resp) = self.send_conditional("PutObject", key, call)? else {
                return Ok(Written::Exists);
            };
            let status = resp.status().as_u16();
            if let Some(c) = header(&resp, "x-amz-checksum-sha256") {
                if c != d.sha256_b64() {
                    return Err(TargetError::Permanent(format!(
                        "S3 PutObject {}: server stored checksum {c}, expected {}",
                        self.location(key),
                        d.sha256_b64()
                    )));
                }
            }
            if header(&resp, "etag").is_none() {
                return Err(TargetError::Transient(format!(
                    "S3 PutObject {}: HTTP {status} without ETag",
                    self.location(key)
                )));
            }
            Ok(Written::Done(
                header(&resp, "x-amz-version-id").map(str::to_string),
            ))
        })
    }

    pub(super) fn put_multipart(
        &self,
        key: &str,
        src: &dyn Source,
        d: &Digests,
        tried: &mut bool,
    ) -> Result<Written, TargetError> {
        let parts = d.parts.as_deref().unwrap_or_default();
        let upload_id = self.create_upload(key)?;
        *tried = true;
        let result = self.upload_parts(key, src, d, parts, &upload_id);
        match result {
            Ok(Written::Done(v)) => Ok(Written::Done(v)),
            other => {
                self.abort(key, &upload_id);
                other
            }
        }
    }

    /// `CreateMultipartUpload` (with the retention headers): the upload id.
    fn create_upload(&self, key: &str) -> Result<String, TargetError> {
        self.retry(|_| {
            let mut call = Call::new("CreateMultipartUpload", "POST", key)
                .query("uploads", "")
                .header("x-amz-checksum-algorithm", "SHA256")
                .header("content-type", "application/octet-stream");
            call = self.lock_headers(call);
            let resp = self.send(call).map_err(send_to_target)?;
            if !resp.status().is_success() {
                return Err(self.status_error("CreateMultipartUpload", key, resp));
            }
            let body = read_small(resp).map_err(|e| {
                TargetError::Transient(format!(
                    "S3 CreateMultipartUpload {}: {e}",
                    self.location(key)
                ))
            })?;
            xml_text(&body, "UploadId")
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    TargetError::Transient(format!(
                        "S3 CreateMultipartUpload {}: no UploadId in the answer",
                        self.location(key)
                    ))
                })
        })
    }

    /// Sends every part, then completes the upload with their ETags.
    fn upload_parts(
        &self,
        key: &str,
        src: &dyn Source,
        d: &Digests,
        parts: &[[u8; 32]],
        upload_id: &str,
    ) -> Result<Written, TargetError> {
        let mut etags = Vec::with_capacity(parts.len());
        let mut cursor = SourceCursor { src, open: None };
        for (i, part_sha) in parts.iter().enumerate() {
            etags.push(self.upload_part(key, upload_id, d, i, part_sha, &mut cursor)?);
        }
        drop(cursor);
        let xml = complete_xml(&etags, parts);
        self.complete_upload(key, upload_id, d, &xml)
    }

    /// `UploadPart` of part `i` (numbered from 1 on the wire), streamed from
    /// the source and verified against its first-pass SHA-256: its ETag.
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        d: &Digests,
        i: usize,
        part_sha: &[u8; 32],
        cur: &mut SourceCursor<'_>,
    ) -> Result<String, TargetError> {
        let offset = i as u64 * d.part_size;
        let len = d.part_size.min(d.len - offset);
        let number = (i + 1).to_string();
        let part_b64 = B64.encode(part_sha);
        self.retry(|_| {
            let mut r = cur.take_at(offset).map_err(TargetError::Source)?;
            let mut body = Verified {
                inner: &mut *r,
                remaining: len,
                hasher: Sha256::new(),
                expected: *part_sha,
            };
            let mut call = Call::new("UploadPart", "PUT", key)
                .query("partNumber", number.clone())
                .query("uploadId", upload_id)
                .header("x-amz-checksum-sha256", part_b64.clone())
                .header("x-amz-sdk-checksum-algorithm", "SHA256");
            call.payload_sha256 = hex::encode(part_sha);
            call.body = Body::Reader(&mut body, len);
            let resp = self.send(call).map_err(send_to_target)?;
            if !resp.status().is_success() {
                return Err(self.status_error("UploadPart", key, resp));
            }
            if let Some(c) = header(&resp, "x-amz-checksum-sha256") {
                if c != part_b64 {
                    return Err(TargetError::Transient(format!(
                        "S3 UploadPart {} part {number}: server checksum {c}, expected {part_b64}",
                        self.location(key)
                    )));
                }
            }
            let etag = header(&resp, "etag").map(str::to_string).ok_or_else(|| {
                TargetError::Transient(format!(
                    "S3 UploadPart {} part {number}: no ETag",
                    self.location(key)
                ))
            })?;
            cur.open = Some((r, offset + len));
            Ok(etag)
        })
    }

    /// `CompleteMultipartUpload` with the parts list `xml`; checks the
    /// composite checksum the server computed.
    fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        d: &Digests,
        xml: &str,
    ) -> Result<Written, TargetError> {
        let composite = d.composite_b64();
        self.retry(|_| {
            let mut call = Call::new("CompleteMultipartUpload", "POST", key)
                .query("uploadId", upload_id)
                .header("if-none-match", "*")
                .header("content-type", "application/xml");
            call.payload_sha256 = sha256_hex(xml.as_bytes());
            call.body = Body::Bytes(xml.as_bytes());
            let Some(resp) = self.send_conditional("CompleteMultipartUpload", key, call)? else {
                return Ok(Written::Exists);
            };
            let version = header(&resp, "x-amz-version-id").map(str::to_string);
            let body = read_small(resp).map_err(|e| {
                TargetError::Transient(format!(
                    "S3 CompleteMultipartUpload {}: {e}",
                    self.location(key)
                ))
            })?;
            // S3 may answer 200 and put the error in the body.
            if body.windows(7).any(|w| w == b"<Error>") {
                let (code, message) = error_code_message(&body);
                return Err(self.classify(
                    "CompleteMultipartUpload",
                    key,
                    200,
                    code.as_deref(),
                    message.as_deref(),
                ));
            }
            if let (Some(got), Some(want)) =
                (xml_text(&body, "ChecksumSHA256"), composite.as_deref())
            {
                // AWS answers `<base64>-<parts>`; some servers leave out the suffix.
                if got != want && want.split('-').next() != Some(got.as_str()) {
                    return Err(TargetError::Permanent(format!(
                        "S3 CompleteMultipartUpload {}: server checksum {got}, expected {want}",
                        self.location(key)
                    )));
                }
            }
            Ok(Written::Done(version))
        })
    }

    /// Sends a conditional write (`If-None-Match: *`): `None` when the
    /// server answers `412 Precondition Failed` (the key appeared
    /// meanwhile), the response when it succeeded, a classified error else.
    fn send_conditional(
        &self,
        op: &'static str,
        key: &str,
        call: Call<'_>,
    ) -> Result<Option<Resp>, TargetError> {
        let resp = self.send(call).map_err(send_to_target)?;
        if resp.status().as_u16() == 412 {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.status_error(op, key, resp));
        }
        Ok(Some(resp))
    }

    fn abort(&self, key: &str, upload_id: &str) {
        let r = self.retry(|_| {
            let call =
                Call::new("AbortMultipartUpload", "DELETE", key).query("uploadId", upload_id);
            let resp = self.send(call).map_err(send_to_target)?;
            match resp.status().as_u16() {
                200..=299 | 404 => Ok(()),
                _ => Err(self.status_error("AbortMultipartUpload", key, resp)),
            }
        });
        if let Err(e) = r {
            tracing::warn!(location = %self.location(key), error = %e, "aborting a failed multipart upload failed; a lifecycle rule must clean it up");
        }
    }
}

/// The open source reader and its position, reused across parts: the next
/// part continues where the last one stopped; after a failed part the
/// source is re-opened and skipped forward.
struct SourceCursor<'s> {
    src: &'s dyn Source,
    open: Option<(Box<dyn Read + 's>, u64)>,
}

impl<'s> SourceCursor<'s> {
    /// A reader positioned at `offset` (taken out of the cursor).
    fn take_at(&mut self, offset: u64) -> io::Result<Box<dyn Read + 's>> {
        match self.open.take() {
            Some((r, pos)) if pos == offset => Ok(r),
            _ => open_at(self.src, offset),
        }
    }
}

/// The `CompleteMultipartUpload` body: every part's number, ETag and
/// SHA-256, in order.
pub(super) fn complete_xml(etags: &[String], parts: &[[u8; 32]]) -> String {
    let mut xml =
        String::from("<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    for (i, (etag, sha)) in etags.iter().zip(parts).enumerate() {
        xml.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag><ChecksumSHA256>{}</ChecksumSHA256></Part>",
            i + 1,
            quick_xml::escape::escape(etag.as_str()),
            B64.encode(sha)
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
}
