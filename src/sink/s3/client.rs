//! The S3 request client: one signed HTTP request ([`Call`] to response)
//! and the retry loop with capped, jittered backoff. Knows no operation's
//! meaning; never decides whether an object is the same or different.

use std::io::{self, Read};
use std::time::Instant;

use ureq::http;

use super::S3Target;
use super::sigv4::{amz_date, uri_encode};
use crate::sink::TargetError;
use crate::time::Timestamp;

// ---------------------------------------------------------------------------
// Requests

pub(super) enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    Reader(&'a mut dyn Read, u64),
}

pub(super) struct Call<'a> {
    pub(super) op: &'static str,
    pub(super) method: &'static str,
    pub(super) key: &'a str,
    pub(super) query: Vec<(&'static str, String)>,
    pub(super) headers: Vec<(String, String)>,
    /// Lowercase hex SHA-256 of the body.
    pub(super) payload_sha256: String,
    pub(super) body: Body<'a>,
}

impl<'a> Call<'a> {
    pub(super) fn new(op: &'static str, method: &'static str, key: &'a str) -> Call<'a> {
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
    pub(super) fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_ascii_lowercase(), v.into()));
        self
    }
    pub(super) fn query(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.query.push((k, v.into()));
        self
    }
}

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

pub(super) type Resp = http::Response<ureq::Body>;

/// A failed request before any HTTP status was read.
pub(super) enum SendError {
    /// The body reader (the source) failed.
    Source(io::Error),
    /// Network, TLS or protocol failure.
    Transport(TargetError),
}

impl S3Target {
    pub(super) fn send(&self, call: Call<'_>) -> Result<Resp, SendError> {
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
}

impl S3Target {
    /// Runs `f` until it succeeds, fails for good, or the retry budget is spent.
    pub(super) fn retry<T>(
        &self,
        mut f: impl FnMut(u32) -> Result<T, TargetError>,
    ) -> Result<T, TargetError> {
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

/// A uniform number in [0, 1) from the standard library's random hasher keys.
pub(super) fn jitter() -> f64 {
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

pub(super) fn header<'r>(resp: &'r Resp, name: &str) -> Option<&'r str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

pub(super) fn send_to_target(e: SendError) -> TargetError {
    match e {
        SendError::Source(e) => TargetError::Source(e),
        SendError::Transport(e) => e,
    }
}

pub(super) fn read_small(resp: Resp) -> Result<Vec<u8>, ureq::Error> {
    resp.into_body()
        .with_config()
        .limit(1024 * 1024)
        .read_to_vec()
}
