//! Central over real mutual TLS: a CA, a server certificate for
//! 127.0.0.1/localhost and a client certificate are minted with rcgen; a
//! rustls server that REQUIRES a client certificate runs in a thread on
//! 127.0.0.1:0 and serves the bundle and status endpoints.

#[path = "bundle_util.rs"]
mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use exportd::control::bundle::central::{
    CentralClient, CentralConfig, CentralError, CentralOptions, FetchOutcome, Rejection,
    RequestProgress, StatusReport,
};
use exportd::control::bundle::{Accepted, BundleError, BundleState};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use util::*;

/// One request the server handled.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    body: Vec<u8>,
}

type Handler = dyn Fn(&Seen) -> (u16, Vec<u8>) + Send + Sync;

struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    handshake_failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// A server requiring client certificates issued by `pki`'s CA.
    fn start(pki: &Pki, handler: Box<Handler>) -> Server {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.server_cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&pki.server_key).unwrap();
        let cfg = Arc::new(
            ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, failures2, stop2) = (seen.clone(), failures.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: stops when told, or after 60 s whatever happens.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        if let Err(e) = serve_one(tcp, cfg.clone(), &*handler, &seen2) {
                            failures2.lock().unwrap().push(e);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            port,
            seen,
            handshake_failures: failures,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops the server thread and returns the handshake failures it saw.
    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.handshake_failures.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Handles one connection: TLS handshake (client certificate required), one
/// HTTP/1.1 request, one response, close.
fn serve_one(
    tcp: TcpStream,
    cfg: Arc<ServerConfig>,
    handler: &Handler,
    seen: &Mutex<Vec<Seen>>,
) -> Result<(), String> {
    tcp.set_nonblocking(false).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let conn = ServerConnection::new(cfg).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tls.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a request".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let len: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = tls.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let req = Seen {
        method,
        target,
        body,
    };
    let (status, resp_body) = handler(&req);
    seen.lock().unwrap().push(req);
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        _ => "Other",
    };
    let mut out = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n").into_bytes();
    if status != 204 {
        out.extend_from_slice(
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                resp_body.len()
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
    if status != 204 {
        out.extend_from_slice(&resp_body);
    }
    tls.write_all(&out).map_err(|e| e.to_string())?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(())
}

fn config(pki: &Pki, url: &str) -> CentralConfig {
    CentralConfig {
        url: url.to_string(),
        ca: pki.ca.clone(),
        client_cert: pki.client_cert.clone(),
        client_key: pki.client_key.clone(),
    }
}

fn fast() -> CentralOptions {
    CentralOptions {
        connect_timeout: Duration::from_secs(5),
        poll_timeout: Duration::from_secs(10),
    }
}

#[test]
fn fetch_apply_and_status_over_mutual_tls() {
    let pki = mint("mtls");
    let bundle_calls = Arc::new(Mutex::new(0u32));
    let calls = bundle_calls.clone();
    let server = Server::start(
        &pki,
        Box::new(move |req: &Seen| {
            if req.method == "GET" && req.target.starts_with("/v1/agents/a1/bundle?after=") {
                let mut n = calls.lock().unwrap();
                *n += 1;
                match *n {
                    // First a bundle signed by an unknown key, then a good one.
                    1 => (
                        200,
                        sign_config(&model_json(1), &[("mallory", &mallory())])
                            .to_json_pretty()
                            .into_bytes(),
                    ),
                    2 => (
                        200,
                        sign_config(&model_json(1), &[("central", &central())])
                            .to_json_pretty()
                            .into_bytes(),
                    ),
                    _ => (204, Vec::new()),
                }
            } else if req.method == "POST" && req.target == "/v1/agents/a1/status" {
                (200, b"{}".to_vec())
            } else {
                (404, b"{\"error\":\"no such endpoint\"}".to_vec())
            }
        }),
    );

    let client = CentralClient::with_options(&config(&pki, &server.url()), "a1", fast()).unwrap();
    let state_dir = TempDir::new("central-state");
    let mut st = BundleState::load(state_dir.path()).unwrap();

    // 1: rejected by the same check as the inbox; nothing changes.
    match client.poll_once(&anchors(), &mut st).unwrap() {
        FetchOutcome::Rejected(BundleError::UnknownKey { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(st.version(), 0);
    assert!(!state_dir.path().join("bundle").exists());

    // 2: accepted and committed; the version advances and persists.
    match client.poll_once(&anchors(), &mut st).unwrap() {
        FetchOutcome::Applied(Accepted::Config(c)) => assert_eq!(c.version, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(st.version(), 1);
    assert_eq!(BundleState::load(state_dir.path()).unwrap().version(), 1);

    // 3: nothing newer (204).
    assert!(matches!(
        client.poll_once(&anchors(), &mut st).unwrap(),
        FetchOutcome::NothingNew
    ));
    assert!(client.fetch_bundle(1).unwrap().is_none());

    // Status report.
    let mut report = StatusReport {
        agent_id: "a1".into(),
        version_in_force: st.version(),
        last_rejection: None,
        backlog: 12,
        counts: [("exported".to_string(), 40u64), ("skipped".to_string(), 2)].into(),
        requests: vec![RequestProgress {
            request_id: "r-1".into(),
            status: "running".into(),
            percent: 40,
        }],
        sent_at: "2026-11-21T10:00:00Z".into(),
    };
    client.post_status(&report).unwrap();
    report.last_rejection = Some(Rejection {
        reason: "rollback refused".into(),
        at: "2026-11-21T09:00:00Z".into(),
    });
    client.post_status(&report).unwrap();

    let seen = server.seen();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            "/v1/agents/a1/bundle?after=0",
            "/v1/agents/a1/bundle?after=0",
            "/v1/agents/a1/bundle?after=1",
            "/v1/agents/a1/bundle?after=1",
            "/v1/agents/a1/status",
            "/v1/agents/a1/status",
        ]
    );
    let v: serde_json::Value = serde_json::from_slice(&seen[4].body).unwrap();
    assert_eq!(v["agent_id"], "a1");
    assert_eq!(v["version_in_force"], 1);
    assert!(v["last_rejection"].is_null());
    assert_eq!(v["backlog"], 12);
    assert_eq!(v["counts"]["exported"], 40);
    assert_eq!(v["requests"][0]["request_id"], "r-1");
    assert_eq!(v["requests"][0]["status"], "running");
    assert_eq!(v["requests"][0]["percent"], 40);
    assert_eq!(v["sent_at"], "2026-11-21T10:00:00Z");
    let v: serde_json::Value = serde_json::from_slice(&seen[5].body).unwrap();
    assert_eq!(v["last_rejection"]["reason"], "rollback refused");
    assert_eq!(v["last_rejection"]["at"], "2026-11-21T09:00:00Z");
    assert!(server.handshake_failures.lock().unwrap().is_empty());
}

#[test]
fn client_without_certificate_is_refused() {
    let pki = mint("nocert");
    let server = Server::start(&pki, Box::new(|_: &Seen| (200, b"{}".to_vec())));

    // A plain client that trusts the CA but presents no certificate.
    let ca = ureq::tls::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]))
                .build(),
        )
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let r = agent
        .get(format!("{}/v1/agents/a1/bundle?after=0", server.url()))
        .call();
    assert!(r.is_err(), "a client without certificate got {r:?}");

    // A client certificate from another CA is refused too, with a typed error.
    let other = mint("foreign");
    let cfg = CentralConfig {
        ca: pki.ca.clone(),
        ..config(&other, &server.url())
    };
    let client = CentralClient::with_options(&cfg, "a1", fast()).unwrap();
    let e = client.fetch_bundle(0).unwrap_err();
    assert!(
        matches!(e, CentralError::Tls { .. } | CentralError::Connect { .. }),
        "{e}"
    );

    eprintln!("refused client: {e}");
    assert!(server.seen().is_empty(), "no request may get through");
    let failures = server.finish();
    assert_eq!(failures.len(), 2, "{failures:?}");
    eprintln!("server side: {failures:?}");
}

#[test]
fn server_not_signed_by_configured_ca_is_a_tls_error() {
    let pki = mint("srv");
    let other = mint("wrongca");
    let server = Server::start(&pki, Box::new(|_: &Seen| (204, Vec::new())));
    let cfg = CentralConfig {
        ca: other.ca.clone(),
        ..config(&pki, &server.url())
    };
    let client = CentralClient::with_options(&cfg, "a1", fast()).unwrap();
    let e = client.fetch_bundle(0).unwrap_err();
    assert!(matches!(e, CentralError::Tls { .. }), "{e}");
    assert!(e.to_string().contains("[central] ca"), "{e}");
    eprintln!("wrong CA: {e}");
}

#[test]
fn setup_errors_name_the_file() {
    let pki = mint("setup");
    let other = mint("setup2");
    // Key of another certificate.
    let cfg = CentralConfig {
        client_key: other.client_key.clone(),
        ..config(&pki, "https://127.0.0.1:1")
    };
    match CentralClient::new(&cfg, "a1") {
        Err(CentralError::Setup {
            field: "client_key",
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // A CA file that holds no certificate.
    let cfg = CentralConfig {
        ca: pki.client_key.clone(),
        ..config(&pki, "https://127.0.0.1:1")
    };
    match CentralClient::new(&cfg, "a1") {
        Err(e @ CentralError::Setup { field: "ca", .. }) => {
            assert!(e.to_string().contains(&*pki.client_key.to_string_lossy()))
        }
        other => panic!("{other:?}"),
    }
    // Nobody listens: a connection error naming the URL.
    let client =
        CentralClient::with_options(&config(&pki, "https://127.0.0.1:1"), "a1", fast()).unwrap();
    let e = client.fetch_bundle(0).unwrap_err();
    assert!(matches!(e, CentralError::Connect { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("https://127.0.0.1:1/v1/agents/a1/bundle?after=0")
    );
    let _ = Path::new(&pki.dir.0);
}

#[test]
fn http_errors_and_long_poll_timeout() {
    let pki = mint("http");
    let server = Server::start(
        &pki,
        Box::new(|req: &Seen| {
            if req.target.ends_with("after=7") {
                std::thread::sleep(Duration::from_millis(6000));
                (204, Vec::new())
            } else {
                (403, b"agent not enrolled".to_vec())
            }
        }),
    );
    let opts = CentralOptions {
        connect_timeout: Duration::from_secs(5),
        // Room for a TLS handshake and a 403 under emulation (qemu-user on a
        // loaded machine took over 300 ms); the 204 comes 6 s late.
        poll_timeout: Duration::from_millis(2000),
    };
    let client = CentralClient::with_options(&config(&pki, &server.url()), "a1", opts).unwrap();
    match client.fetch_bundle(0) {
        Err(CentralError::Http {
            status: 403, body, ..
        }) => assert_eq!(body, "agent not enrolled"),
        other => panic!("{other:?}"),
    }
    let e = client.fetch_bundle(7).unwrap_err();
    assert!(matches!(e, CentralError::Timeout { .. }), "{e}");
}

/// `check-config --probe`'s central line: one bundle poll with the version
/// in force; a held long poll counts as reached; refusals name the cause.
#[test]
fn probe_polls_once_and_says_what_failed() {
    let pki = mint("probe");
    let server = Server::start(
        &pki,
        Box::new(|req: &Seen| {
            if req.target.ends_with("after=9") {
                std::thread::sleep(Duration::from_millis(1500));
            }
            if req.target.ends_with("after=8") {
                (403, b"not enrolled".to_vec())
            } else {
                (204, Vec::new())
            }
        }),
    );
    let client = CentralClient::with_options(&config(&pki, &server.url()), "a1", fast()).unwrap();
    let wait = Duration::from_secs(5);
    assert_eq!(client.probe(7, wait).unwrap(), Some(204));
    let e = client.probe(8, wait).unwrap_err();
    assert!(matches!(e, CentralError::Http { status: 403, .. }), "{e}");
    assert!(e.to_string().contains("client_cert is enrolled"), "{e}");
    assert_eq!(
        client.probe(9, Duration::from_millis(300)).unwrap(),
        None,
        "a held poll is reached"
    );
    let seen: Vec<String> = server
        .seen()
        .into_iter()
        .map(|s| s.method + " " + &s.target)
        .collect();
    assert_eq!(
        &seen[..2],
        [
            "GET /v1/agents/a1/bundle?after=7",
            "GET /v1/agents/a1/bundle?after=8"
        ]
    );

    // A client certificate central does not trust.
    let other = mint("probe-foreign");
    let cfg = CentralConfig {
        ca: pki.ca.clone(),
        ..config(&other, &server.url())
    };
    let e = CentralClient::with_options(&cfg, "a1", fast())
        .unwrap()
        .probe(7, wait)
        .unwrap_err();
    assert!(
        matches!(e, CentralError::Tls { .. } | CentralError::Connect { .. }),
        "{e}"
    );
}

/// The same through the pre-flight: one line for central, ok or failed.
#[test]
fn preflight_probe_line_for_central() {
    let pki = mint("probe-line");
    let server = Server::start(&pki, Box::new(|_: &Seen| (204, Vec::new())));
    let toml = |url: &str| {
        format!(
            "agent_id = \"a1\"\nstate_dir = \"{}\"\n[central]\nurl = \"{url}\"\nca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
            pki.dir.path().join("state").display(),
            pki.ca.display(),
            pki.client_cert.display(),
            pki.client_key.display()
        )
    };
    let parse =
        |t: String| exportd::policy::config::LocalConfig::parse(&t, Path::new("t.toml")).unwrap();
    let cfg = parse(toml(&server.url()));
    let lines = exportd::preflight::probe(&cfg, &[], Duration::from_secs(5));
    assert_eq!(lines.len(), 1);
    assert!(lines[0].ok(), "{}", lines[0]);
    assert_eq!(
        lines[0].to_string(),
        format!(
            "probe central {}: ok: reached over mutual TLS (HTTP 204: nothing newer than version 0)",
            server.url()
        )
    );
    let cfg = parse(toml("https://127.0.0.1:9"));
    let lines = exportd::preflight::probe(&cfg, &[], Duration::from_secs(5));
    assert!(
        !lines[0].ok() && lines[0].to_string().contains("FAILED: cannot connect"),
        "{}",
        lines[0]
    );
}
