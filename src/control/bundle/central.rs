//! The central client (bundles, status reports); never talks anything but
//! mutual TLS and never applies a bundle except through `apply`.
//!
//! The client for `[central]`: pulls bundles and posts status reports over
//! mutual TLS (ureq + rustls on the `ring` provider).
//!
//! - `GET <url>/v1/agents/<agent_id>/bundle?after=<version>`: `200` with a
//!   DSSE envelope, `204`/`304` when there is nothing newer. Central may hold
//!   the request open (long poll), so reads wait up to
//!   [`CentralOptions::poll_timeout`] (90 s by default).
//! - `POST <url>/v1/agents/<agent_id>/status` with a [`StatusReport`].
//!
//! A fetched bundle goes through the same step as an inbox file
//! ([`crate::control::bundle::apply::apply_bytes`]); [`CentralClient::poll_once`] does
//! both. Between failed attempts the daemon waits [`Backoff::next_delay`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use ureq::tls::{ClientCert, RootCerts, TlsConfig, TlsProvider};

use super::apply::{Accepted, apply_bytes};
use super::dsse::Envelope;
use super::spool::{Spooled, spool_envelope};
use super::state::{BundleState, Store};
use super::{BundleError, DEFAULT_MAX_BUNDLE_BYTES as MAX_BUNDLE_BYTES};
use crate::policy::model::Admin;

/// The `[central]` table of exportd.toml (config.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentralConfig {
    /// Base URL, `https://host:port` (a path prefix is allowed).
    pub url: String,
    /// PEM file of the CA(s) that sign central's server certificate.
    pub ca: PathBuf,
    /// PEM file of this agent's client certificate (chain, leaf first).
    pub client_cert: PathBuf,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub client_key: PathBuf,
}

/// Timeouts of the central client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CentralOptions {
    /// TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// How long a response (or a read of its body) may take; covers
    /// central's long poll.
    pub poll_timeout: Duration,
}

impl Default for CentralOptions {
    fn default() -> Self {
        CentralOptions {
            connect_timeout: Duration::from_secs(15),
            poll_timeout: Duration::from_secs(90),
        }
    }
}

/// Why talking to central failed. Every message names the file or URL to
/// check.
#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    /// A `[central]` PEM file is unreadable or unusable.
    #[error("[central] {field} = {}: {reason}", path.display())]
    Setup {
        /// `ca`, `client_cert` or `client_key`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The URL or agent id cannot form a request URL.
    #[error("[central] url {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// No connection (refused, unreachable, name not found, reset).
    #[error(
        "cannot connect to {url}: {reason}; check [central] url, the network path and that central is up (a reset right after connecting can also mean central refused this agent's client certificate)"
    )]
    Connect {
        /// The request URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The TLS handshake failed.
    #[error("TLS with {url} failed: {reason}; {hint}")]
    Tls {
        /// The request URL.
        url: String,
        /// What failed.
        reason: String,
        /// What to check.
        hint: &'static str,
    },
    /// Central did not answer in time.
    #[error("{url} timed out ({which}); check the network path to central")]
    Timeout {
        /// The request URL.
        url: String,
        /// Which phase.
        which: String,
    },
    /// Central answered with an unexpected HTTP status.
    #[error("{url} answered HTTP {status}{}; {hint}", if body.is_empty() { String::new() } else { format!(" ({body})") })]
    Http {
        /// The request URL.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the response body.
        body: String,
        /// What to check.
        hint: &'static str,
    },
    /// Central sent a body that is not a bundle.
    #[error("{url} sent an unusable bundle: {source}")]
    Bundle {
        /// The request URL.
        url: String,
        /// Why it is unusable.
        #[source]
        source: BundleError,
    },
    /// Any other transport failure.
    #[error("request to {url} failed: {reason}")]
    Transport {
        /// The request URL.
        url: String,
        /// What failed.
        reason: String,
    },
}

/// The status report posted to central. The daemon fills it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// This agent's id.
    pub agent_id: String,
    /// The configuration version in force (0 = inline model).
    pub version_in_force: u64,
    /// The last rejected bundle, if any (`null` otherwise).
    pub last_rejection: Option<Rejection>,
    /// Records waiting to be exported.
    pub backlog: u64,
    /// Counters (exported, skipped, failed, ...), by name.
    pub counts: BTreeMap<String, u64>,
    /// On-demand export requests and their progress.
    pub requests: Vec<RequestProgress>,
    /// When the report was made (RFC 3339).
    pub sent_at: String,
}

/// A rejected bundle in a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The one-line reason ([`BundleError::one_line`]).
    pub reason: String,
    /// When it was rejected (RFC 3339).
    pub at: String,
}

impl Rejection {
    /// A rejection entry for `err` at `at` (RFC 3339, e.g.
    /// `crate::time::Timestamp::now().rfc3339().to_string()`).
    pub fn from_error(err: &BundleError, at: impl Into<String>) -> Rejection {
        Rejection {
            reason: err.one_line(),
            at: at.into(),
        }
    }
}

/// Progress of one export request in a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestProgress {
    /// The request id.
    pub request_id: String,
    /// Its state (e.g. `queued`, `running`, `done`, `failed`).
    pub status: String,
    /// Percent done, 0 to 100.
    pub percent: u8,
}

/// What one [`CentralClient::poll_once`] did.
#[derive(Debug)]
pub enum FetchOutcome {
    /// Central had nothing newer.
    NothingNew,
    /// A bundle was accepted and committed; the daemon must act on it as on
    /// an accepted inbox file.
    Applied(Accepted),
    /// Central sent a bundle that was rejected; nothing changed. Report it.
    Rejected(BundleError),
}

/// A mutual-TLS client for central.
#[derive(Debug)]
pub struct CentralClient {
    agent: ureq::Agent,
    base: String,
    agent_id_seg: String,
}

impl CentralClient {
    /// Reads the PEM files of `cfg`, checks that the client key matches the
    /// client certificate, and prepares a client for `agent_id` with the
    /// default timeouts. No connection is made yet.
    pub fn new(cfg: &CentralConfig, agent_id: &str) -> Result<CentralClient, CentralError> {
        Self::with_options(cfg, agent_id, CentralOptions::default())
    }

    /// [`CentralClient::new`] with explicit timeouts.
    pub fn with_options(
        cfg: &CentralConfig,
        agent_id: &str,
        opts: CentralOptions,
    ) -> Result<CentralClient, CentralError> {
        let base = cfg.url.trim_end_matches('/').to_string();
        let url_err = |reason: &str| CentralError::Url {
            url: cfg.url.clone(),
            reason: reason.to_string(),
        };
        let Some(rest) = base.strip_prefix("https://") else {
            return Err(url_err(
                "must start with https:// (central is reached over mutual TLS)",
            ));
        };
        if rest.is_empty() || rest.contains(['?', '#', ' ']) {
            return Err(url_err(
                "must be https://host[:port][/prefix] without query or fragment",
            ));
        }
        if agent_id.is_empty() {
            return Err(url_err("agent_id is empty; set agent_id in exportd.toml"));
        }

        let roots = read_certs("ca", &cfg.ca)?;
        let chain = read_certs("client_cert", &cfg.client_cert)?;
        let (key, key_pem) = read_key(&cfg.client_key)?;
        rustls::sign::CertifiedKey::from_der(
            chain.clone(),
            key.clone_key(),
            &rustls::crypto::ring::default_provider(),
        )
        .map_err(|e| CentralError::Setup {
            field: "client_key",
            path: cfg.client_key.clone(),
            reason: format!(
                "does not fit client_cert {} ({e}); use the key the certificate was issued for",
                cfg.client_cert.display()
            ),
        })?;

        let roots: Vec<ureq::tls::Certificate<'static>> = roots
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let chain: Vec<ureq::tls::Certificate<'static>> = chain
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        drop(key);
        let key = ureq::tls::PrivateKey::from_pem(&key_pem).map_err(|e| CentralError::Setup {
            field: "client_key",
            path: cfg.client_key.clone(),
            reason: format!("no usable private key ({e})"),
        })?;

        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .root_certs(RootCerts::new_with_certs(&roots))
            .client_cert(Some(ClientCert::new_with_certs(&chain, key)))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_recv_response(Some(opts.poll_timeout))
            .timeout_recv_body(Some(opts.poll_timeout))
            .timeout_send_body(Some(opts.poll_timeout))
            .timeout_per_read(Some(opts.poll_timeout))
            .user_agent(concat!("exportd/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(CentralClient {
            agent,
            base,
            agent_id_seg: percent_encode_segment(agent_id),
        })
    }

    /// The bundle URL for `after_version`.
    pub fn bundle_url(&self, after_version: u64) -> String {
        format!(
            "{}/v1/agents/{}/bundle?after={after_version}",
            self.base, self.agent_id_seg
        )
    }

    /// The status URL.
    pub fn status_url(&self) -> String {
        format!("{}/v1/agents/{}/status", self.base, self.agent_id_seg)
    }

    /// Fetches the raw body of a bundle newer than `after_version`;
    /// `Ok(None)` on 204/304. Bodies above [`MAX_BUNDLE_BYTES`] are refused
    /// (the daemon uses [`CentralClient::fetch_spooled`]).
    pub fn fetch_bundle_bytes(&self, after_version: u64) -> Result<Option<Vec<u8>>, CentralError> {
        let Some((url, mut resp)) = self.get_bundle(after_version)? else {
            return Ok(None);
        };
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_BUNDLE_BYTES)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => CentralError::Bundle {
                    url: url.clone(),
                    source: BundleError::TooLarge {
                        path: url.clone(),
                        max: MAX_BUNDLE_BYTES,
                    },
                },
                e => map_err(&url, e),
            })?;
        Ok(Some(body))
    }

    /// GETs the bundle URL: the response of a 200 (with the URL, for
    /// messages), `None` on 204/304 (nothing newer), an error otherwise.
    fn get_bundle(
        &self,
        after_version: u64,
    ) -> Result<Option<(String, ureq::http::Response<ureq::Body>)>, CentralError> {
        let url = self.bundle_url(after_version);
        let mut resp = self
            .agent
            .get(&url)
            .header("accept", "application/json")
            .call()
            .map_err(|e| map_err(&url, e))?;
        match resp.status().as_u16() {
            200 => Ok(Some((url, resp))),
            204 | 304 => Ok(None),
            status => Err(http_error(&url, status, &mut resp)),
        }
    }

    /// Fetches a bundle newer than `after_version` straight into a spool
    /// file in `dir` (at most `max` bytes, never held in memory; see
    /// [`spool_envelope`]); `Ok(None)` on 204/304. A body that is not a
    /// usable envelope is `Ok(Some(Err(_)))` (a rejection); a connection
    /// lost while the body is read is a transport error.
    pub fn fetch_spooled(
        &self,
        after_version: u64,
        max: u64,
        dir: &Path,
    ) -> Result<Option<Result<Spooled, BundleError>>, CentralError> {
        let Some((url, mut resp)) = self.get_bundle(after_version)? else {
            return Ok(None);
        };
        let reader = resp
            .body_mut()
            .with_config()
            .limit(max.saturating_add(1))
            .reader();
        match spool_envelope(reader, max, &url, dir) {
            Err(BundleError::Io { path, source, .. }) if path == Path::new(&url) => {
                Err(CentralError::Transport {
                    url,
                    reason: source.to_string(),
                })
            }
            r => Ok(Some(r)),
        }
    }

    /// Fetches and parses a bundle newer than `after_version`; `Ok(None)`
    /// when central has nothing newer. The envelope is not verified here:
    /// pass it to [`crate::control::bundle::apply::apply_envelope`], or use
    /// [`CentralClient::poll_once`].
    pub fn fetch_bundle(&self, after_version: u64) -> Result<Option<Envelope>, CentralError> {
        match self.fetch_bundle_bytes(after_version)? {
            None => Ok(None),
            Some(b) => Envelope::from_json(&b)
                .map(Some)
                .map_err(|source| CentralError::Bundle {
                    url: self.bundle_url(after_version),
                    source,
                }),
        }
    }

    /// One fetch-and-apply round: fetches a bundle newer than the version
    /// in force and runs it through the same check-and-commit step as the
    /// inbox. `Err` only for transport failures (back off and retry); a bad
    /// bundle is `Ok(FetchOutcome::Rejected)`.
    pub fn poll_once<S: Store>(
        &self,
        anchors: &[Admin],
        state: &mut BundleState<S>,
    ) -> Result<FetchOutcome, CentralError> {
        let after = state.version();
        let Some(body) = self.fetch_bundle_bytes(after)? else {
            return Ok(FetchOutcome::NothingNew);
        };
        let source = self.bundle_url(after);
        Ok(match apply_bytes(&body, &source, anchors, state) {
            Ok(a) => FetchOutcome::Applied(a),
            Err(e) => FetchOutcome::Rejected(e),
        })
    }

    /// Posts a status report; any 2xx is success.
    pub fn post_status(&self, report: &StatusReport) -> Result<(), CentralError> {
        self.post_status_with(report, None)
    }

    /// Posts a status report carrying the agent's checkpoint key (issue
    /// #14) as `"agent_key": {"public_key", "fingerprint"}`, so central can
    /// record it for examiners; any 2xx is success.
    pub fn post_status_with(
        &self,
        report: &StatusReport,
        agent_key: Option<(&str, &str)>,
    ) -> Result<(), CentralError> {
        let url = self.status_url();
        let encoded = serde_json::to_value(report).map(|mut v| {
            if let (Some((public_key, fingerprint)), Some(o)) = (agent_key, v.as_object_mut()) {
                o.insert(
                    "agent_key".into(),
                    serde_json::json!({"public_key": public_key, "fingerprint": fingerprint}),
                );
            }
            v
        });
        let body =
            encoded
                .and_then(|v| serde_json::to_vec(&v))
                .map_err(|e| CentralError::Transport {
                    url: url.clone(),
                    reason: format!("cannot encode the status report: {e}"),
                })?;
        let mut resp = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .send(&body[..])
            .map_err(|e| map_err(&url, e))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(http_error(&url, status, &mut resp))
        }
    }

    /// `exportd check-config --probe`: one bundle poll (`after_version`,
    /// the version in force) over the configured mutual TLS. Nothing is
    /// applied and no body is read. `Ok` with what central answered (`200`,
    /// `204` or `304`), or `None` when central held the poll open for
    /// `wait` after the request was sent (the connection and the handshake
    /// with the client certificate succeeded: a long poll).
    pub fn probe(&self, after_version: u64, wait: Duration) -> Result<Option<u16>, CentralError> {
        let url = self.bundle_url(after_version);
        match self
            .agent
            .get(&url)
            .header("accept", "application/json")
            .config()
            .timeout_recv_response(Some(wait))
            .build()
            .call()
        {
            Ok(mut resp) => match resp.status().as_u16() {
                s @ (200 | 204 | 304) => Ok(Some(s)),
                s => Err(http_error(&url, s, &mut resp)),
            },
            Err(ureq::Error::Timeout(ureq::Timeout::RecvResponse)) => Ok(None),
            Err(e) => Err(map_err(&url, e)),
        }
    }
}

fn read_pem_file(field: &'static str, path: &Path) -> Result<Vec<u8>, CentralError> {
    std::fs::read(path).map_err(|e| CentralError::Setup {
        field,
        path: path.to_path_buf(),
        reason: format!("cannot read: {e}; check the path and that exportd may read it"),
    })
}

fn read_certs(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, CentralError> {
    let pem = read_pem_file(field, path)?;
    let bad = |reason: String| CentralError::Setup {
        field,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "holds no -----BEGIN CERTIFICATE----- block; give a PEM certificate file".into(),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<(PrivateKeyDer<'static>, Vec<u8>), CentralError> {
    let pem = read_pem_file("client_key", path)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| CentralError::Setup {
        field: "client_key",
        path: path.to_path_buf(),
        reason: format!(
            "no usable private key ({e}); give a PEM PRIVATE KEY (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY"
        ),
    })?;
    Ok((key, pem))
}

fn http_error(url: &str, status: u16, resp: &mut ureq::http::Response<ureq::Body>) -> CentralError {
    let body = resp
        .body_mut()
        .with_config()
        .limit(4096)
        .read_to_vec()
        .map(|b| {
            let s = String::from_utf8_lossy(&b);
            let s: String = s.chars().filter(|c| !c.is_control()).take(200).collect();
            s
        })
        .unwrap_or_default();
    let hint = match status {
        401 | 403 => {
            "central refused this agent: check that client_cert is enrolled for this agent_id"
        }
        404 => "check [central] url and agent_id (central does not know this agent)",
        300..=399 => "central redirected; set [central] url to the final address",
        500..=599 => "central failed; retry later (backing off)",
        _ => "check [central] url and central's API version",
    };
    CentralError::Http {
        url: url.to_string(),
        status,
        body,
        hint,
    }
}

/// What to check for a TLS failure.
fn tls_hint(e: Option<&rustls::Error>) -> &'static str {
    match e {
        Some(rustls::Error::InvalidCertificate(_)) => {
            "central's certificate is not trusted: check that [central] ca is the CA that signs central's certificate and that the certificate names the host of [central] url"
        }
        Some(rustls::Error::AlertReceived(_)) => {
            "central refused the handshake: check that [central] client_cert/client_key are this agent's certificate, issued by a CA central trusts and not expired"
        }
        _ => {
            "check that [central] ca signs central's certificate (naming the host in url) and that client_cert/client_key are this agent's certificate as enrolled at central"
        }
    }
}

/// Maps a ureq error to a typed error naming the URL.
fn map_err(url: &str, e: ureq::Error) -> CentralError {
    let url = url.to_string();
    match e {
        ureq::Error::Rustls(e) => CentralError::Tls {
            url,
            reason: e.to_string(),
            hint: tls_hint(Some(&e)),
        },
        ureq::Error::Tls(s) => CentralError::Tls {
            url,
            reason: s.to_string(),
            hint: tls_hint(None),
        },
        ureq::Error::Timeout(t) => CentralError::Timeout {
            url,
            which: t.to_string(),
        },
        ureq::Error::HostNotFound => CentralError::Connect {
            url,
            reason: "host not found".into(),
        },
        ureq::Error::ConnectionFailed => CentralError::Connect {
            url,
            reason: "connection failed".into(),
        },
        ureq::Error::BadUri(s) => CentralError::Url { url, reason: s },
        ureq::Error::Io(io) => {
            if let Some(inner) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return CentralError::Tls {
                    url,
                    reason: inner.to_string(),
                    hint: tls_hint(Some(inner)),
                };
            }
            match io.kind() {
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                    CentralError::Timeout {
                        url,
                        which: io.to_string(),
                    }
                }
                _ => CentralError::Connect {
                    url,
                    reason: io.to_string(),
                },
            }
        }
        e => CentralError::Transport {
            url,
            reason: e.to_string(),
        },
    }
}

/// Percent-encodes one URL path segment (RFC 3986 unreserved bytes kept).
pub fn percent_encode_segment(s: &str) -> String {
    crate::url::percent_encode(s, false)
}

/// Capped exponential backoff with full jitter: the `n`-th consecutive
/// failure waits a uniformly random time in `[0, min(cap, base * 2^n)]`.
/// [`Backoff::reset`] after a success.
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
    rng: Box<dyn FnMut() -> u64 + Send>,
}

impl std::fmt::Debug for Backoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backoff")
            .field("base", &self.base)
            .field("cap", &self.cap)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

impl Backoff {
    /// Base 1 s, cap 5 min, OS randomness.
    pub fn new() -> Backoff {
        Backoff::with_rng(Duration::from_secs(1), Duration::from_secs(300), || {
            // Without OS randomness, fall back to the time (jitter only needs
            // to spread agents, not to be secret).
            getrandom::u64().unwrap_or_else(|_| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0)
            })
        })
    }

    /// A backoff with explicit bounds and a source of uniform random `u64`s
    /// (injectable for deterministic tests).
    pub fn with_rng(
        base: Duration,
        cap: Duration,
        rng: impl FnMut() -> u64 + Send + 'static,
    ) -> Backoff {
        Backoff {
            base,
            cap,
            failures: 0,
            rng: Box::new(rng),
        }
    }

    /// The upper bound of the next delay: `min(cap, base * 2^failures)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Records a failure and returns how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling_ms = self.ceiling().as_millis().min(u64::MAX as u128) as u64;
        self.failures = self.failures.saturating_add(1);
        let r = (self.rng)();
        Duration::from_millis(r % ceiling_ms.saturating_add(1))
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets the failures (call after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_ceiling_doubles_to_cap_and_resets() {
        let mut b = Backoff::with_rng(Duration::from_secs(1), Duration::from_secs(300), || {
            u64::MAX
        });
        let mut got = Vec::new();
        for _ in 0..12 {
            got.push(b.next_delay().as_millis() as u64);
        }
        // u64::MAX % (c + 1) for c = ceiling in ms.
        let expect: Vec<u64> = [
            1_000u64, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000,
            300_000, 300_000,
        ]
        .iter()
        .map(|c| u64::MAX % (c + 1))
        .collect();
        assert_eq!(got, expect);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn backoff_full_jitter_spans_zero_to_ceiling() {
        let seq = std::sync::Arc::new(std::sync::Mutex::new(vec![0u64, 1_000, 999, 4_000, 4_001]));
        let s2 = seq.clone();
        let mut b = Backoff::with_rng(
            Duration::from_secs(1),
            Duration::from_secs(300),
            move || s2.lock().map(|mut v| v.remove(0)).unwrap_or(0),
        );
        assert_eq!(b.next_delay(), Duration::ZERO); // ceiling 1 s
        assert_eq!(b.next_delay(), Duration::from_millis(1_000)); // ceiling 2 s
        assert_eq!(b.next_delay(), Duration::from_millis(999)); // ceiling 4 s
        assert_eq!(b.next_delay(), Duration::from_millis(4_000)); // ceiling 8 s
        assert_eq!(b.next_delay(), Duration::from_millis(4_001)); // ceiling 16 s
        assert!(seq.lock().unwrap().is_empty());
    }

    #[test]
    fn backoff_never_overflows() {
        let mut b = Backoff::with_rng(Duration::from_secs(1), Duration::from_secs(300), || {
            u64::MAX - 1
        });
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(300));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(300));
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(percent_encode_segment("ny-rec01"), "ny-rec01");
        assert_eq!(percent_encode_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn url_must_be_https() {
        let cfg = CentralConfig {
            url: "http://central".into(),
            ca: "/nonexistent".into(),
            client_cert: "/nonexistent".into(),
            client_key: "/nonexistent".into(),
        };
        assert!(matches!(
            CentralClient::new(&cfg, "a1"),
            Err(CentralError::Url { .. })
        ));
        let cfg = CentralConfig {
            url: "https://central".into(),
            ..cfg
        };
        match CentralClient::new(&cfg, "a1") {
            Err(CentralError::Setup { field: "ca", .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
