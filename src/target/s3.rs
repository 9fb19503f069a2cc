//! S3-compatible object storage target, with Object Lock (WORM) support.
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

mod sigv4;

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256, Sha512};
use ureq::http;

use crate::model::{ObjectLock, TargetKind, TargetSpec};
use crate::target::{PutReceipt, PutRequest, Source, Target, TargetError};
use crate::time::Timestamp;

use sigv4::{Secret, Signer, amz_date, sha256_hex, uri_encode};

/// Sources larger than this go up as a multipart upload.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// Part size of multipart uploads.
pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;
/// The smallest part size S3 accepts (all parts but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// The most parts S3 accepts in one upload.
pub const MAX_PARTS: u64 = 10_000;

/// How transient failures are retried inside one `put`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled for each further one.
    pub base_delay: Duration,
    /// Cap on one delay.
    pub max_delay: Duration,
    /// No new attempt is started once this much time has passed since the first.
    pub max_total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            max_total: Duration::from_secs(30),
        }
    }
}

/// Tunables of an [`S3Target`]; the defaults suit production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Options {
    /// Sources larger than this are sent as a multipart upload.
    pub multipart_threshold: u64,
    /// Part size for multipart uploads (at least [`MIN_PART_SIZE`] on AWS;
    /// grown automatically so that no upload exceeds [`MAX_PARTS`]).
    pub part_size: u64,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Limit for establishing a TCP connection (and resolving the name).
    pub connect_timeout: Duration,
    /// Limit for any single socket read or write to make progress: a stalled
    /// server or network fails after this long, however large the object.
    pub io_timeout: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_size: DEFAULT_PART_SIZE,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(60),
        }
    }
}

/// Why an S3 target could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum S3ConfigError {
    /// The spec is not `kind = "s3"`.
    #[error("target {0:?} is not an s3 target")]
    NotS3(String),
    /// A required field is absent or empty.
    #[error("target {target:?} (s3) needs `{field}`")]
    Missing {
        /// Target id.
        target: String,
        /// Field name.
        field: &'static str,
    },
    /// The endpoint URL is not `http(s)://host[:port][/]`.
    #[error("target {target:?}: endpoint {endpoint:?} {reason}")]
    Endpoint {
        /// Target id.
        target: String,
        /// The configured endpoint.
        endpoint: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The secret file could not be read.
    #[error("target {target:?}: cannot read secret_file {}: {source}", path.display())]
    SecretFile {
        /// Target id.
        target: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The secret file is empty (after trimming whitespace).
    #[error("target {target:?}: secret_file {} is empty", path.display())]
    EmptySecret {
        /// Target id.
        target: String,
        /// The file.
        path: PathBuf,
    },
    /// The CA file could not be read or holds no certificate.
    #[error("target {target:?}: ca file {}: {reason}", path.display())]
    Ca {
        /// Target id.
        target: String,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An `https://` endpoint without any trusted root.
    #[error(
        "target {0:?}: no trusted root certificates (none in the system store and no `ca` file)"
    )]
    NoRoots(String),
    /// [`S3Options`] out of range.
    #[error("s3 options: {0}")]
    Options(String),
}

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

fn parse_endpoint(id: &str, ep: &str) -> Result<(&'static str, String), S3ConfigError> {
    let err = |reason| S3ConfigError::Endpoint {
        target: id.to_string(),
        endpoint: ep.to_string(),
        reason,
    };
    let (scheme, rest, default_port) = if let Some(r) = ep.strip_prefix("https://") {
        ("https", r, ":443")
    } else if let Some(r) = ep.strip_prefix("http://") {
        ("http", r, ":80")
    } else {
        return Err(err("must start with https:// (or http://)"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err(err("has no host"));
    }
    if authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(err(
            "must be scheme://host[:port] without path, query or user",
        ));
    }
    let authority = authority.strip_suffix(default_port).unwrap_or(authority);
    Ok((scheme, authority.to_ascii_lowercase()))
}

fn load_roots(spec: &TargetSpec) -> Result<Vec<ureq::tls::Certificate<'static>>, S3ConfigError> {
    let mut roots: Vec<ureq::tls::Certificate<'static>> = rustls_native_certs::load_native_certs()
        .certs
        .into_iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    if let Some(path) = &spec.ca {
        let ca_err = |reason: String| S3ConfigError::Ca {
            target: spec.id.clone(),
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let mut n = 0;
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => {
                    roots.push(c.to_owned());
                    n += 1;
                }
                Ok(_) => {}
                Err(e) => return Err(ca_err(format!("not valid PEM: {e}"))),
            }
        }
        if n == 0 {
            return Err(ca_err("holds no CERTIFICATE block".into()));
        }
    }
    Ok(roots)
}

impl S3Target {
    /// Builds the target from its configuration with default [`S3Options`]:
    /// reads the secret key from `secret_file` (whitespace trimmed) and the
    /// trusted roots. No request is made.
    pub fn new(spec: &TargetSpec) -> Result<S3Target, S3ConfigError> {
        S3Target::with_options(spec, S3Options::default())
    }

    /// [`S3Target::new`] with explicit tunables (tests use small parts and
    /// short timeouts).
    pub fn with_options(spec: &TargetSpec, opts: S3Options) -> Result<S3Target, S3ConfigError> {
        let id = spec.id.clone();
        if spec.kind != TargetKind::S3 {
            return Err(S3ConfigError::NotS3(id));
        }
        let need = |v: &Option<String>, field: &'static str| match v.as_deref() {
            Some(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            _ => Err(S3ConfigError::Missing {
                target: id.clone(),
                field,
            }),
        };
        let endpoint = need(&spec.endpoint, "endpoint")?;
        let region = need(&spec.region, "region")?;
        let bucket = need(&spec.bucket, "bucket")?;
        let access_key_id = need(&spec.access_key_id, "access_key_id")?;
        let secret_path = spec
            .secret_file
            .clone()
            .ok_or_else(|| S3ConfigError::Missing {
                target: id.clone(),
                field: "secret_file",
            })?;
        let (scheme, host) = parse_endpoint(&id, &endpoint)?;
        if opts.retry.max_attempts == 0 {
            return Err(S3ConfigError::Options(
                "retry.max_attempts must be >= 1".into(),
            ));
        }
        if opts.part_size == 0 || opts.multipart_threshold == 0 {
            return Err(S3ConfigError::Options(
                "part_size and multipart_threshold must be > 0".into(),
            ));
        }

        let secret =
            std::fs::read_to_string(&secret_path).map_err(|source| S3ConfigError::SecretFile {
                target: id.clone(),
                path: secret_path.clone(),
                source,
            })?;
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(S3ConfigError::EmptySecret {
                target: id,
                path: secret_path,
            });
        }

        let roots = load_roots(spec)?;
        if scheme == "https" && roots.is_empty() {
            return Err(S3ConfigError::NoRoots(id));
        }
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("exportd/", env!("CARGO_PKG_VERSION")))
            .timeout_resolve(Some(opts.connect_timeout))
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_per_read(Some(opts.io_timeout))
            .timeout_per_write(Some(opts.io_timeout))
            .build()
            .new_agent();

        let mut prefix = spec
            .prefix
            .clone()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(S3Target {
            spec: spec.clone(),
            agent,
            signer: Signer {
                access_key_id,
                secret: Secret::new(secret.to_string()),
                region,
            },
            scheme,
            host,
            path_style: spec.path_style.unwrap_or(false),
            bucket,
            prefix,
            lock: spec.object_lock.clone(),
            opts,
        })
    }

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

// ---------------------------------------------------------------------------
// Requests

enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    Reader(&'a mut dyn Read, u64),
}

struct Call<'a> {
    op: &'static str,
    method: &'static str,
    key: &'a str,
    query: Vec<(&'static str, String)>,
    headers: Vec<(String, String)>,
    /// Lowercase hex SHA-256 of the body.
    payload_sha256: String,
    body: Body<'a>,
}

impl<'a> Call<'a> {
    fn new(op: &'static str, method: &'static str, key: &'a str) -> Call<'a> {
        Call {
            op,
            method,
            key,
            query: Vec::new(),
            headers: Vec::new(),
            payload_sha256: EMPTY_SHA256.to_string(),
            body: Body::Empty,
        }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_ascii_lowercase(), v.into()));
        self
    }
    fn query(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.query.push((k, v.into()));
        self
    }
}

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

type Resp = http::Response<ureq::Body>;

/// A failed request before any HTTP status was read.
enum SendError {
    /// The body reader (the source) failed.
    Source(io::Error),
    /// Network, TLS or protocol failure.
    Transport(TargetError),
}

impl S3Target {
    fn send(&self, call: Call<'_>) -> Result<Resp, SendError> {
        let (authority, path) = self.authority_and_path(call.key);
        let now = Timestamp::now();
        let mut headers = call.headers;
        headers.push(("host".into(), authority.clone()));
        headers.push(("x-amz-date".into(), amz_date(now)));
        headers.push(("x-amz-content-sha256".into(), call.payload_sha256.clone()));
        let q: Vec<(&str, &str)> = call.query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let auth =
            self.signer
                .authorization(call.method, &path, &q, &headers, &call.payload_sha256, now);

        let mut url = format!("{}://{authority}{path}", self.scheme);
        for (i, (k, v)) in call.query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&uri_encode(k, false));
            url.push('=');
            url.push_str(&uri_encode(v, false));
        }
        let mut b = http::Request::builder().method(call.method).uri(&url);
        for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
            b = b.header(k.as_str(), v.as_str());
        }
        b = b.header("authorization", auth);
        let transport = |op: &str, e: &dyn std::fmt::Display| {
            SendError::Transport(TargetError::Permanent(format!(
                "S3 {op} {}: cannot build request: {e}",
                self.location(call.key)
            )))
        };
        let result = match call.body {
            Body::Empty => {
                let req = if call.method == "PUT" || call.method == "POST" {
                    b.header("content-length", "0").body(ureq::SendBody::none())
                } else {
                    b.body(ureq::SendBody::none())
                };
                let req = req.map_err(|e| transport(call.op, &e))?;
                self.agent.run(req)
            }
            Body::Bytes(bytes) => {
                let req = b
                    .header("content-length", bytes.len())
                    .body(bytes)
                    .map_err(|e| transport(call.op, &e))?;
                self.agent.run(req)
            }
            Body::Reader(r, len) => {
                let mut guard = ErrorCatcher {
                    inner: r,
                    error: None,
                };
                let req = b
                    .header("content-length", len)
                    .body(ureq::SendBody::from_reader(&mut guard))
                    .map_err(|e| transport(call.op, &e))?;
                let res = self.agent.run(req);
                if let Some(e) = guard.error.take() {
                    return Err(SendError::Source(e));
                }
                res
            }
        };
        result.map_err(|e| SendError::Transport(self.transport_error(call.op, call.key, e)))
    }

    fn transport_error(&self, op: &str, key: &str, e: ureq::Error) -> TargetError {
        let what = format!(
            "S3 {op} {} at {}://{}",
            self.location(key),
            self.scheme,
            self.host
        );
        match e {
            ureq::Error::Timeout(t) => TargetError::Transient(format!("{what}: timed out ({t})")),
            ureq::Error::Io(e) if is_tls_config_error(&e) => {
                TargetError::Permanent(format!("{what}: TLS: {e}"))
            }
            ureq::Error::Io(e) => TargetError::Transient(format!("{what}: {e}")),
            ureq::Error::ConnectionFailed => {
                TargetError::Transient(format!("{what}: connection failed"))
            }
            ureq::Error::HostNotFound => {
                TargetError::Transient(format!("{what}: host not found (DNS)"))
            }
            ureq::Error::Protocol(e) => {
                TargetError::Transient(format!("{what}: HTTP protocol error: {e}"))
            }
            // Certificate and other TLS failures, bad URLs: a person must act.
            other => TargetError::Permanent(format!("{what}: {other}")),
        }
    }

    /// Turns a non-success response into a typed error, with the server's
    /// `<Code>` and `<Message>`.
    fn status_error(&self, op: &str, key: &str, resp: Resp) -> TargetError {
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .with_config()
            .limit(64 * 1024)
            .read_to_vec()
            .unwrap_or_default();
        let (code, message) = error_code_message(&body);
        self.classify(op, key, status, code.as_deref(), message.as_deref())
    }

    fn classify(
        &self,
        op: &str,
        key: &str,
        status: u16,
        code: Option<&str>,
        message: Option<&str>,
    ) -> TargetError {
        let mut text = format!("S3 {op} {}: HTTP {status}", self.location(key));
        if let Some(c) = code {
            text.push(' ');
            text.push_str(c);
        }
        if let Some(m) = message {
            text.push_str(": ");
            text.push_str(m);
        }
        let transient_code = matches!(
            code,
            Some(
                "SlowDown"
                    | "RequestTimeout"
                    | "InternalError"
                    | "ServiceUnavailable"
                    | "OperationAborted"
                    | "ConditionalRequestConflict"
            )
        );
        if status >= 500 || status == 429 || status == 408 || transient_code {
            TargetError::Transient(text)
        } else {
            TargetError::Permanent(text)
        }
    }

    /// Runs `f` until it succeeds, fails for good, or the retry budget is spent.
    fn retry<T>(&self, mut f: impl FnMut(u32) -> Result<T, TargetError>) -> Result<T, TargetError> {
        let p = &self.opts.retry;
        let start = Instant::now();
        let mut attempt = 1;
        loop {
            match f(attempt) {
                Err(TargetError::Transient(msg)) if attempt < p.max_attempts => {
                    let exp = p.base_delay.saturating_mul(1 << (attempt - 1).min(16));
                    let cap = exp.min(p.max_delay);
                    // Full jitter in [cap/2, cap].
                    let delay = cap / 2 + cap.mul_f64(jitter() / 2.0);
                    if start.elapsed() + delay >= p.max_total {
                        return Err(TargetError::Transient(msg));
                    }
                    tracing::debug!(attempt, delay_ms = delay.as_millis() as u64, error = %msg, "S3 request failed; retrying");
                    std::thread::sleep(delay);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// A TLS failure that retrying cannot fix: the server's certificate is not
/// trusted or does not name the host, or no common protocol version/cipher.
fn is_tls_config_error(e: &io::Error) -> bool {
    use rustls::Error as R;
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<R>())
        .is_some_and(|r| {
            matches!(
                r,
                R::InvalidCertificate(_)
                    | R::NoCertificatesPresented
                    | R::PeerIncompatible(_)
                    | R::UnsupportedNameType
            )
        })
}

/// A uniform number in [0, 1) from the standard library's random hasher keys.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Keeps the first error the body reader returned, so that a source failure
/// is told apart from a network failure after ureq gives up.
struct ErrorCatcher<'a> {
    inner: &'a mut dyn Read,
    error: Option<io::Error>,
}

impl Read for ErrorCatcher<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let kind = e.kind();
                let msg = e.to_string();
                self.error.get_or_insert(e);
                Err(io::Error::new(kind, msg))
            }
        }
    }
}

/// `<Code>` and `<Message>` of an S3 XML error body (first of each, bounded).
fn error_code_message(body: &[u8]) -> (Option<String>, Option<String>) {
    (xml_text(body, "Code"), xml_text(body, "Message"))
}

/// The text of the first element named `name` (local name), if any.
fn xml_text(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let mut r = crate::xml::reader(text);
    let mut inside = false;
    let mut out = String::new();
    loop {
        let ev = r.read_event().ok()?;
        match &ev {
            quick_xml::events::Event::Start(e) => {
                inside = crate::xml::local_name(e) == name;
            }
            quick_xml::events::Event::End(_) if inside => {
                return Some(out.chars().filter(|c| !c.is_control()).take(512).collect());
            }
            quick_xml::events::Event::Eof => return None,
            _ if inside => {
                crate::xml::push_text(&r, &ev, &mut out, 4096, name).ok()?;
            }
            _ => {}
        }
    }
}

fn header<'r>(resp: &'r Resp, name: &str) -> Option<&'r str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

// ---------------------------------------------------------------------------
// Hashing passes

/// What the first pass learnt about the source.
struct Digests {
    len: u64,
    sha256: [u8; 32],
    sha512: Option<[u8; 64]>,
    /// SHA-256 of each part, when the source may go up as multipart.
    parts: Option<Vec<[u8; 32]>>,
    part_size: u64,
}

impl Digests {
    fn multipart(&self, threshold: u64) -> bool {
        self.parts.is_some() && self.len > threshold
    }

    fn sha256_b64(&self) -> String {
        B64.encode(self.sha256)
    }

    /// Whether a stored `x-amz-checksum-sha256` value is that of our bytes:
    /// the full-object SHA-256, or the composite of our parts, with or
    /// without the `-<parts>` suffix (some servers, moto among them, leave
    /// it out on HEAD).
    fn stored_checksum_matches(&self, stored: &str) -> bool {
        if stored == self.sha256_b64() {
            return true;
        }
        self.composite_b64()
            .is_some_and(|c| c == stored || c.split('-').next() == Some(stored))
    }

    /// S3's composite checksum of a multipart object: SHA-256 of the
    /// concatenated part digests, `-<number of parts>`.
    fn composite_b64(&self) -> Option<String> {
        let parts = self.parts.as_ref()?;
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        Some(format!("{}-{}", B64.encode(h.finalize()), parts.len()))
    }
}

const BUF: usize = 64 * 1024;

fn first_pass(src: &dyn Source, want_sha512: bool, part_size: Option<u64>) -> io::Result<Digests> {
    let mut r = src.open()?;
    let mut buf = vec![0u8; BUF];
    let mut h256 = Sha256::new();
    let mut h512 = want_sha512.then(Sha512::new);
    let mut part_h = Sha256::new();
    let mut part_fill = 0u64;
    let mut parts = part_size.map(|_| Vec::new());
    let ps = part_size.unwrap_or(u64::MAX);
    let mut len = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        h256.update(chunk);
        if let Some(h) = h512.as_mut() {
            h.update(chunk);
        }
        len += n as u64;
        if let Some(parts) = parts.as_mut() {
            let mut rest = chunk;
            while !rest.is_empty() {
                let take = ((ps - part_fill) as usize).min(rest.len());
                part_h.update(&rest[..take]);
                part_fill += take as u64;
                rest = &rest[take..];
                if part_fill == ps {
                    parts.push(std::mem::take(&mut part_h).finalize().into());
                    part_fill = 0;
                }
            }
        }
    }
    if let Some(parts) = parts.as_mut() {
        if part_fill > 0 || parts.is_empty() {
            parts.push(part_h.finalize().into());
        }
    }
    Ok(Digests {
        len,
        sha256: h256.finalize().into(),
        sha512: h512.map(|h| h.finalize().into()),
        parts,
        part_size: ps,
    })
}

/// Re-reads exactly `len` bytes that must hash to `sha256`; fails (before
/// handing out the last byte) if the source is shorter, longer or different,
/// so the server never receives a complete wrong body.
struct Verified<'a> {
    inner: &'a mut dyn Read,
    remaining: u64,
    hasher: Sha256,
    expected: [u8; 32],
}

impl Read for Verified<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.remaining) as usize;
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(changed("the source became shorter"));
        }
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        if self.remaining == 0 {
            let got: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
            if got != self.expected {
                return Err(changed("the source bytes changed"));
            }
        }
        Ok(n)
    }
}

fn changed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what} between the hashing pass and the upload"),
    )
}

/// Opens `src` and skips to `offset`.
fn open_at<'s>(src: &'s dyn Source, offset: u64) -> io::Result<Box<dyn Read + 's>> {
    let mut r = src.open()?;
    let skipped = io::copy(&mut (&mut r).take(offset), &mut io::sink())?;
    if skipped != offset {
        return Err(changed("the source became shorter"));
    }
    Ok(r)
}

// ---------------------------------------------------------------------------
// Object state

/// What HEAD says about an existing object.
struct Head {
    len: Option<u64>,
    checksum_sha256: Option<String>,
    version_id: Option<String>,
    lock_mode: Option<String>,
    retain_until: Option<String>,
}

impl Head {
    fn from(resp: &Resp) -> Head {
        Head {
            len: header(resp, "content-length").and_then(|v| v.parse().ok()),
            checksum_sha256: header(resp, "x-amz-checksum-sha256").map(str::to_string),
            version_id: header(resp, "x-amz-version-id").map(str::to_string),
            lock_mode: header(resp, "x-amz-object-lock-mode").map(str::to_string),
            retain_until: header(resp, "x-amz-object-lock-retain-until-date").map(str::to_string),
        }
    }

    fn detail(&self) -> Option<String> {
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
enum Compare {
    Same,
    Different(String),
}

impl S3Target {
    /// HEAD the key (latest version or `version_id`). `None` = no such key.
    fn head(&self, key: &str, version_id: Option<&str>) -> Result<Option<Head>, TargetError> {
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
            Ok((h.finalize().into(), n_total))
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

    /// Checks the retention of an object against the configured Object Lock.
    fn check_lock(&self, key: &str, head: &Head) -> Result<(), TargetError> {
        if let Some(lock) = &self.lock {
            let mode_ok = head
                .lock_mode
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case(lock.mode.header_value()));
            if !mode_ok || head.retain_until.is_none() {
                return Err(TargetError::Permanent(format!(
                    "S3 {}: object has no {} retention (mode {:?}, retain-until {:?}); \
                     the bucket must have Object Lock enabled",
                    self.location(key),
                    lock.mode.header_value(),
                    head.lock_mode,
                    head.retain_until
                )));
            }
        }
        Ok(())
    }

    fn receipt(&self, d: &Digests, already_present: bool, head: &Head) -> PutReceipt {
        PutReceipt {
            sha256: d.sha256,
            sha512: d.sha512,
            bytes: d.len,
            already_present,
            detail: head.detail(),
        }
    }

    /// The key exists: the same bytes gives a receipt, different bytes a conflict.
    fn existing(
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

    fn lock_headers<'c>(&self, mut call: Call<'c>) -> Call<'c> {
        if let Some(lock) = &self.lock {
            call = call
                .header("x-amz-object-lock-mode", lock.mode.header_value())
                .header(
                    "x-amz-object-lock-retain-until-date",
                    retain_until(Timestamp::now(), lock.retain_days),
                );
        }
        call
    }
}

fn send_to_target(e: SendError) -> TargetError {
    match e {
        SendError::Source(e) => TargetError::Source(e),
        SendError::Transport(e) => e,
    }
}

/// `now + days` as RFC 3339 UTC without fraction (`2033-11-21T10:00:00Z`),
/// the form every S3 implementation parses.
fn retain_until(now: Timestamp, days: u32) -> String {
    let t = Timestamp(now.0.div_euclid(1000) * 1000 + i64::from(days) * 86_400_000);
    let c = t.civil();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

// ---------------------------------------------------------------------------
// Uploads

/// Outcome of one write attempt sequence.
enum Written {
    /// Version id of the new object (if the bucket is versioned).
    Done(Option<String>),
    /// `412 Precondition Failed`: the key appeared meanwhile.
    Exists,
}

impl S3Target {
    fn put_single(
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
            let resp = self.send(call).map_err(send_to_target)?;
            let status = resp.status().as_u16();
            if status == 412 {
                return Ok(Written::Exists);
            }
            if !resp.status().is_success() {
                return Err(self.status_error("PutObject", key, resp));
            }
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

    fn put_multipart(
        &self,
        key: &str,
        src: &dyn Source,
        d: &Digests,
        tried: &mut bool,
    ) -> Result<Written, TargetError> {
        let parts = d.parts.as_deref().unwrap_or_default();
        let upload_id = self.retry(|_| {
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
        })?;
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

    fn upload_parts(
        &self,
        key: &str,
        src: &dyn Source,
        d: &Digests,
        parts: &[[u8; 32]],
        upload_id: &str,
    ) -> Result<Written, TargetError> {
        let mut etags = Vec::with_capacity(parts.len());
        // The open source reader and its position, reused across parts.
        let mut cur: Option<(Box<dyn Read + '_>, u64)> = None;
        for (i, part_sha) in parts.iter().enumerate() {
            let offset = i as u64 * d.part_size;
            let len = d.part_size.min(d.len - offset);
            let number = (i + 1).to_string();
            let part_b64 = B64.encode(part_sha);
            let etag = self.retry(|_| {
                let mut r = match cur.take() {
                    Some((r, pos)) if pos == offset => r,
                    _ => open_at(src, offset).map_err(TargetError::Source)?,
                };
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
                cur = Some((r, offset + len));
                Ok(etag)
            })?;
            etags.push(etag);
        }
        drop(cur);

        let mut xml = String::from(
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
        );
        for (i, (etag, sha)) in etags.iter().zip(parts).enumerate() {
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag><ChecksumSHA256>{}</ChecksumSHA256></Part>",
                i + 1,
                quick_xml::escape::escape(etag.as_str()),
                B64.encode(sha)
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let composite = d.composite_b64();
        self.retry(|_| {
            let mut call = Call::new("CompleteMultipartUpload", "POST", key)
                .query("uploadId", upload_id)
                .header("if-none-match", "*")
                .header("content-type", "application/xml");
            call.payload_sha256 = sha256_hex(xml.as_bytes());
            call.body = Body::Bytes(xml.as_bytes());
            let resp = self.send(call).map_err(send_to_target)?;
            let status = resp.status().as_u16();
            if status == 412 {
                return Ok(Written::Exists);
            }
            if !resp.status().is_success() {
                return Err(self.status_error("CompleteMultipartUpload", key, resp));
            }
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

fn read_small(resp: Resp) -> Result<Vec<u8>, ureq::Error> {
    resp.into_body()
        .with_config()
        .limit(1024 * 1024)
        .read_to_vec()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LockMode;
    use crate::target::BytesSource;
    use crate::time::Civil;

    fn spec(dir: &std::path::Path) -> TargetSpec {
        let secret = dir.join("secret");
        std::fs::write(&secret, "  s3cr3t-value \n").unwrap();
        TargetSpec {
            id: "s3a".into(),
            kind: TargetKind::S3,
            path: None,
            endpoint: Some("https://S3.eu-west-1.amazonaws.com:443/".into()),
            region: Some("eu-west-1".into()),
            bucket: Some("rec-archive".into()),
            prefix: Some("ny".into()),
            path_style: Some(false),
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_file: Some(secret),
            ca: None,
            object_lock: Some(ObjectLock {
                mode: LockMode::Compliance,
                retain_days: 2557,
            }),
        }
    }

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "exportd-s3-unit-{}-{}",
            std::process::id(),
            jitter()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn addressing_and_keys() {
        let d = tmp();
        let mut s = spec(&d);
        // A CA file of its own, so the test does not depend on the machine's
        // root store (the board lanes have none).
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let ca_path = d.join("ca.pem");
        std::fs::write(&ca_path, ca.cert.pem()).unwrap();
        s.ca = Some(ca_path);
        let t = S3Target::new(&s).unwrap();
        assert_eq!(
            t.key("2026/11/21/u-1/r1", "a b.wav"),
            "ny/2026/11/21/u-1/r1/a b.wav"
        );
        assert_eq!(
            t.object_url("ny/x/a b.wav"),
            "https://rec-archive.s3.eu-west-1.amazonaws.com/ny/x/a%20b.wav"
        );
        s.path_style = Some(true);
        s.endpoint = Some("http://127.0.0.1:9000".into());
        s.prefix = None;
        let t = S3Target::new(&s).unwrap();
        assert_eq!(t.key("f", "n"), "f/n");
        assert_eq!(t.object_url("f/n"), "http://127.0.0.1:9000/rec-archive/f/n");
        assert_eq!(t.describe("f"), "s3://rec-archive/f");
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn config_errors_name_the_problem() {
        let d = tmp();
        let mut s = spec(&d);
        s.secret_file = Some(d.join("missing.secret"));
        let e = S3Target::new(&s).unwrap_err().to_string();
        assert!(e.contains("missing.secret"), "{e}");
        let mut s = spec(&d);
        std::fs::write(d.join("empty"), " \n").unwrap();
        s.secret_file = Some(d.join("empty"));
        assert!(matches!(
            S3Target::new(&s),
            Err(S3ConfigError::EmptySecret { .. })
        ));
        let mut s = spec(&d);
        s.endpoint = Some("ftp://x".into());
        assert!(matches!(
            S3Target::new(&s),
            Err(S3ConfigError::Endpoint { .. })
        ));
        let mut s = spec(&d);
        s.endpoint = Some("https://host/path".into());
        assert!(matches!(
            S3Target::new(&s),
            Err(S3ConfigError::Endpoint { .. })
        ));
        let mut s = spec(&d);
        std::fs::write(d.join("ca.pem"), "not a pem").unwrap();
        s.ca = Some(d.join("ca.pem"));
        let e = S3Target::new(&s).unwrap_err().to_string();
        assert!(e.contains("ca.pem"), "{e}");
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn retain_until_form() {
        let now = Timestamp::from_civil(Civil {
            year: 2026,
            month: 11,
            day: 21,
            hour: 10,
            minute: 0,
            second: 7,
            milli: 999,
        })
        .unwrap();
        assert_eq!(retain_until(now, 1), "2026-11-22T10:00:07Z");
        assert_eq!(retain_until(now, 2557), "2033-11-21T10:00:07Z");
    }

    #[test]
    fn error_body_parsing() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records.</Message><RequestId>1</RequestId></Error>"#;
        let (c, m) = error_code_message(body);
        assert_eq!(c.as_deref(), Some("InvalidAccessKeyId"));
        assert!(m.unwrap().contains("does not exist"));
        assert_eq!(error_code_message(b"<html>oops"), (None, None));
    }

    #[test]
    fn part_hashes_and_verified_reader() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let d = first_pass(&BytesSource(&data), true, Some(300)).unwrap();
        assert_eq!(d.len, 1000);
        let parts = d.parts.as_ref().unwrap();
        assert_eq!(parts.len(), 4);
        let want: [u8; 32] = Sha256::digest(&data[900..]).into();
        assert_eq!(parts[3], want);
        assert!(d.sha512.is_some());
        assert!(d.composite_b64().unwrap().ends_with("-4"));

        let empty = first_pass(&BytesSource(b""), false, Some(300)).unwrap();
        assert_eq!(empty.parts.as_ref().unwrap().len(), 1);

        // A source that changes between passes fails before its last byte.
        let other: Vec<u8> = data.iter().map(|b| b ^ 1).collect();
        let mut r: &[u8] = &other;
        let mut v = Verified {
            inner: &mut r,
            remaining: 1000,
            hasher: Sha256::new(),
            expected: d.sha256,
        };
        let mut sink = Vec::new();
        assert!(io::copy(&mut v, &mut sink).is_err());
        assert!(sink.len() < 1000);
    }
}
