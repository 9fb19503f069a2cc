//! systemd integration (READY, STATUS, WATCHDOG over `$NOTIFY_SOCKET`; a
//! stalled main loop stops the pings) and the node_exporter metrics file.

mod common;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn config(a: &Appliance) -> String {
    let mut c = a.head(1);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    c
}

#[test]
fn notify_ready_status_watchdog_and_a_stalled_loop() {
    let a = Appliance::new(1);
    a.write_config(&config(&a));
    let sock_path = a.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let child = Command::new(exe())
        .args(["run", "--config"])
        .arg(&a.config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env("EXPORTD_TEST_STALL_ON_USR1", "2")
        .env("EXPORTD_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut d = Daemon { child: Some(child) };
    let mut msgs: Vec<(Instant, String)> = Vec::new();
    let recv_for = |dur: Duration, msgs: &mut Vec<(Instant, String)>| {
        let t0 = Instant::now();
        let mut buf = [0u8; 512];
        while t0.elapsed() < dur {
            if let Ok(n) = sock.recv(&mut buf) {
                msgs.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        }
    };
    recv_for(Duration::from_millis(2500), &mut msgs);
    assert!(msgs.iter().any(|m| m.1 == "READY=1"), "{msgs:?}");
    assert!(
        msgs.iter().any(|m| m.1.starts_with("STATUS=backlog 0")),
        "{msgs:?}"
    );
    let pings = msgs.iter().filter(|m| m.1 == "WATCHDOG=1").count();
    assert!(pings >= 5, "WATCHDOG every 200 ms: {pings} in 2.5 s");

    // Stall the main loop for 2 s: no pings during it, pings again after.
    msgs.clear();
    d.signal("USR1");
    let stalled_at = Instant::now();
    recv_for(Duration::from_millis(3500), &mut msgs);
    let during = msgs
        .iter()
        .filter(|m| {
            m.1 == "WATCHDOG=1"
                && m.0 > stalled_at + Duration::from_millis(300)
                && m.0 < stalled_at + Duration::from_millis(1900)
        })
        .count();
    assert_eq!(during, 0, "a stuck loop must not ping: {msgs:?}");
    let after = msgs
        .iter()
        .filter(|m| m.1 == "WATCHDOG=1" && m.0 > stalled_at + Duration::from_millis(2300))
        .count();
    assert!(after >= 2, "pings resume after the stall: {msgs:?}");
    let (code, _) = d.stop();
    assert_eq!(code, 0);
}

fn parse_prom(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("name value");
            (k.to_string(), v.parse::<f64>().expect("number"))
        })
        .collect()
}

#[test]
fn metrics_file_content_and_atomic_replacement() {
    let a = Appliance::new(1);
    a.write_config(&config(&a));
    let _d = a.spawn();
    let prom = a.state.join("metrics/exportd.prom");
    wait_for(Duration::from_secs(10), || prom.exists());
    for i in 0..150 {
        Rec::voice(&format!("m{i}"), "100").write(&a.spool.join("d"));
    }
    Rec::voice("nobody", "999").write(&a.spool.join("d"));
    // Every read while the daemon rewrites the file is a complete file.
    let t0 = Instant::now();
    let mut reads = 0;
    loop {
        let text = fs::read_to_string(&prom).unwrap();
        assert!(text.ends_with('\n'), "a partial metrics file was visible");
        let m = parse_prom(&text);
        reads += 1;
        let exported = m
            .iter()
            .find(|(k, _)| k == "exportd_records_total{outcome=\"exported\"}")
            .map(|x| x.1);
        if exported == Some(150.0)
            && m.iter()
                .any(|(k, v)| k == "exportd_skipped_total{reason=\"no_user\"}" && *v == 1.0)
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "metrics did not reach the final counts: {text}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(reads > 1);
    let text = fs::read_to_string(&prom).unwrap();
    let m = parse_prom(&text);
    let get = |k: &str| m.iter().find(|(n, _)| n == k).map(|x| x.1);
    assert_eq!(
        get("exportd_copies_exported_total{policy=\"p\",target=\"t0\"}"),
        Some(150.0),
        "{text}"
    );
    assert!(get("exportd_bytes_exported_total{policy=\"p\",target=\"t0\"}").unwrap() > 0.0);
    assert_eq!(get("exportd_config_version"), Some(0.0));
    assert!(get("exportd_backlog_records").is_some());
    assert!(get("exportd_oldest_pending_age_seconds").is_some());
    let names: Vec<_> = fs::read_dir(a.state.join("metrics"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("exportd.prom")],
        "no temp files left"
    );
}
