//! The S3 target's configuration: tunables, configuration errors, endpoint
//! parsing, trusted roots and building an [`S3Target`] from its spec. Makes
//! no request and never writes a file.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::sigv4::{Secret, Signer};
use super::{DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PART_SIZE, S3Target};
use crate::policy::model::{TargetKind, TargetSpec};

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
    /// Part size for multipart uploads (at least
    /// [`MIN_PART_SIZE`](super::MIN_PART_SIZE) on AWS; grown automatically
    /// so that no upload exceeds [`MAX_PARTS`](super::MAX_PARTS)).
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
}
