//! The S3 target through a faulty network: a small HTTP proxy on 127.0.0.1
//! (a thread of this test) between the agent and moto that, per request,
//! drops the connection mid-request, stalls past the agent's I/O timeout,
//! answers `503 SlowDown`, or forwards the request and loses the answer.
//! Afterwards every object must be present exactly once with the right bytes.
//! Skipped like tests/s3_moto.rs when moto is missing (failure under CI=true).

#[path = "support/s3_moto.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use exportd::policy::model::LockMode;
use exportd::sink::s3::{RetryPolicy, S3Options, S3Target};
use exportd::sink::{BytesSource, PutRequest, Target, TargetError};
use support::{Moto, bytes, sha256_hex};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Pass,
    /// Read the head and part of the body, then close.
    DropMidRequest,
    /// Read the request, then say nothing for this long.
    Stall(Duration),
    /// `503 SlowDown` with S3's XML body.
    SlowDown,
    /// Forward to moto, then close without passing the answer on.
    LoseResponse,
}

type Plan = Arc<dyn Fn(usize) -> Fault + Send + Sync>;

struct Proxy {
    port: u16,
    requests: Arc<AtomicUsize>,
    faults: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn start_proxy(upstream: u16, plan: Plan) -> Proxy {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let faults = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (r, f, s) = (requests.clone(), faults.clone(), stop.clone());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            if s.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let (plan, r, f) = (plan.clone(), r.clone(), f.clone());
            std::thread::spawn(move || serve(conn, upstream, plan, r, f));
        }
    });
    Proxy {
        port,
        requests,
        faults,
        stop,
    }
}

/// Reads one request (head and Content-Length body); `None` at EOF/error.
fn read_request(c: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut b).ok()? == 0 {
            return None;
        }
        head.push(b[0]);
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn serve(
    mut c: TcpStream,
    upstream: u16,
    plan: Plan,
    reqs: Arc<AtomicUsize>,
    faults: Arc<AtomicUsize>,
) {
    c.set_read_timeout(Some(Duration::from_secs(30))).ok();
    loop {
        // Wait for the next request to begin (the agent may reuse the connection).
        if !matches!(c.peek(&mut [0u8; 1]), Ok(1..)) {
            return;
        }
        let n = reqs.fetch_add(1, Ordering::SeqCst);
        let fault = plan(n);
        if fault != Fault::Pass {
            faults.fetch_add(1, Ordering::SeqCst);
        }
        if fault == Fault::DropMidRequest {
            let mut buf = [0u8; 600];
            let _ = c.read(&mut buf);
            let _ = c.shutdown(Shutdown::Both);
            return;
        }
        let Some((head, body)) = read_request(&mut c) else {
            return;
        };
        match fault {
            Fault::Stall(d) => {
                std::thread::sleep(d);
                let _ = c.shutdown(Shutdown::Both);
                return;
            }
            Fault::SlowDown => {
                let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                // As S3 does: no body in the answer to a HEAD.
                let is_head = head.starts_with(b"HEAD ");
                let resp = format!(
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{}",
                    xml.len(),
                    if is_head { "" } else { xml }
                );
                if c.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            }
            Fault::Pass | Fault::LoseResponse => {
                // One upstream connection per request, closed by moto after
                // its answer, so the answer is simply everything it sends.
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut fixed: String = head
                    .split("\r\n")
                    .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
                    .map(|l| format!("{l}\r\n"))
                    .collect();
                fixed.push_str("Connection: close\r\n\r\n");
                let Ok(mut u) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                if u.write_all(fixed.as_bytes())
                    .and_then(|_| u.write_all(&body))
                    .is_err()
                {
                    return;
                }
                let mut answer = Vec::new();
                let _ = u.read_to_end(&mut answer);
                if fault == Fault::LoseResponse {
                    let _ = c.shutdown(Shutdown::Both);
                    return;
                }
                if c.write_all(&answer).is_err() {
                    return;
                }
                // moto closed: its answer may be framed by the close, so close too.
                let _ = c.shutdown(Shutdown::Both);
                return;
            }
            Fault::DropMidRequest => unreachable!(),
        }
    }
}

fn options(io_timeout: Duration) -> S3Options {
    S3Options {
        multipart_threshold: 6 * 1024 * 1024,
        part_size: 5 * 1024 * 1024,
        retry: RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_total: Duration::from_secs(30),
        },
        connect_timeout: Duration::from_secs(2),
        io_timeout,
    }
}

/// Puts `n` objects (the first a multipart one) through the proxy and checks
/// each is in moto exactly once, with the right bytes.
fn run(m: &mut Moto, bucket: &str, plan: Plan, io_timeout: Duration, n: usize) -> Proxy {
    m.bucket(bucket, true);
    let proxy = start_proxy(m.port, plan);
    let mut spec = m.spec(bucket, Some(LockMode::Compliance));
    spec.endpoint = Some(format!("http://127.0.0.1:{}", proxy.port));
    let t = S3Target::with_options(&spec, options(io_timeout)).unwrap();
    let objects: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            bytes(
                if i == 0 {
                    11 * 1024 * 1024
                } else {
                    20_000 + i * 1000
                },
                i as u8,
            )
        })
        .collect();
    for (i, data) in objects.iter().enumerate() {
        let name = format!("f{i}.wav");
        let r = t.put(
            &PutRequest {
                folder: "rec",
                name: &name,
                want_sha512: false,
            },
            &BytesSource(data),
        );
        let r = r.unwrap_or_else(|e| panic!("{bucket}/{name}: {e:?}"));
        assert_eq!(r.bytes, data.len() as u64);
    }
    for (i, data) in objects.iter().enumerate() {
        let key = format!("ny/rec/f{i}.wav");
        assert_eq!(
            m.get(bucket, &key),
            (sha256_hex(data), data.len() as u64),
            "{key}"
        );
        assert_eq!(
            m.versions(bucket, &key).len(),
            1,
            "{key}: exactly one version"
        );
    }
    assert!(
        m.uploads(bucket).is_empty(),
        "no multipart upload left behind"
    );
    proxy
}

#[test]
fn dropped_connections_mid_request() {
    let Some(mut m) = Moto::start(false) else {
        return;
    };
    let p = run(
        &mut m,
        "faults-drop",
        Arc::new(|n| {
            if n % 3 == 1 {
                Fault::DropMidRequest
            } else {
                Fault::Pass
            }
        }),
        Duration::from_secs(5),
        6,
    );
    assert!(p.faults.load(Ordering::SeqCst) >= 3, "faults were injected");
}

#[test]
fn lost_responses_do_not_duplicate() {
    let Some(mut m) = Moto::start(false) else {
        return;
    };
    // Every 4th request reaches moto but its answer is lost: retried PUTs
    // meet If-None-Match and the existence check, not a second version.
    let p = run(
        &mut m,
        "faults-lost",
        Arc::new(|n| {
            if n % 4 == 2 {
                Fault::LoseResponse
            } else {
                Fault::Pass
            }
        }),
        Duration::from_secs(5),
        6,
    );
    assert!(p.faults.load(Ordering::SeqCst) >= 3);
}

#[test]
fn stalls_past_the_timeout() {
    let Some(mut m) = Moto::start(false) else {
        return;
    };
    let io = Duration::from_millis(700);
    let p = run(
        &mut m,
        "faults-stall",
        Arc::new(move |n| {
            if n == 1 || n == 6 || n == 11 {
                Fault::Stall(Duration::from_secs(3))
            } else {
                Fault::Pass
            }
        }),
        io,
        5,
    );
    assert_eq!(p.faults.load(Ordering::SeqCst), 3);
}

#[test]
fn slowdown_then_success_and_bounded_give_up() {
    let Some(mut m) = Moto::start(false) else {
        return;
    };
    let p = run(
        &mut m,
        "faults-slow",
        Arc::new(|n| if n < 3 { Fault::SlowDown } else { Fault::Pass }),
        Duration::from_secs(5),
        3,
    );
    assert_eq!(p.faults.load(Ordering::SeqCst), 3);

    // Throttled for ever: Transient after the bounded retries, nothing written.
    m.bucket("faults-slow2", true);
    let proxy = start_proxy(m.port, Arc::new(|_| Fault::SlowDown));
    let mut spec = m.spec("faults-slow2", Some(LockMode::Compliance));
    spec.endpoint = Some(format!("http://127.0.0.1:{}", proxy.port));
    let t = S3Target::with_options(&spec, options(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    let r = t.put(
        &PutRequest {
            folder: "rec",
            name: "x.wav",
            want_sha512: false,
        },
        &BytesSource(b"abc"),
    );
    match r {
        Err(TargetError::Transient(msg)) => assert!(msg.contains("HTTP 503"), "{msg}"),
        other => panic!("expected Transient, got {other:?}"),
    }
    assert_eq!(proxy.requests.load(Ordering::SeqCst), 5, "max_attempts");
    assert!(start.elapsed() < Duration::from_secs(10));

    // Nothing listening: Transient (connection refused), not Permanent.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    spec.endpoint = Some(format!("http://127.0.0.1:{closed}"));
    let t = S3Target::with_options(&spec, options(Duration::from_secs(5))).unwrap();
    let r = t.put(
        &PutRequest {
            folder: "rec",
            name: "x.wav",
            want_sha512: false,
        },
        &BytesSource(b"abc"),
    );
    assert!(matches!(r, Err(TargetError::Transient(_))), "{r:?}");
}
