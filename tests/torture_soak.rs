//! Soak: the daemon under a steady simulated load (default 50 records/s for
//! 30 minutes), sampling its RSS, open fds, threads and export progress every
//! 10 s. The series is printed; the test fails if memory or fds keep growing
//! or the backlog does not drain.
//!
//! ```text
//! cargo build --release && EXPORTD_BIN=target/release/exportd \
//!   cargo test --release --test torture_soak -- --ignored --nocapture
//! EXPORTD_SOAK_SECS=300 ...   # a 5-minute run
//! ```
//! Knobs: `EXPORTD_SOAK_SECS` (1800), `EXPORTD_SOAK_RATE` (50),
//! `EXPORTD_SOAK_SCALE` (media size scale, per mille: 2 = 0.002).

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use exportd::simulate::{SimOptions, config_toml, simulate};

fn proc_status(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|r| r.count())
        .unwrap_or(0)
}

#[test]
#[ignore = "long: 30 min soak (EXPORTD_SOAK_SECS to shorten)"]
fn soak_steady_load() {
    let secs = env_u64("EXPORTD_SOAK_SECS", 1800);
    let rate = env_u64("EXPORTD_SOAK_RATE", 50);
    let scale = env_u64("EXPORTD_SOAK_SCALE", 2) as f64 / 1000.0;
    let seed = torture_seed("soak");
    let a = Appliance::new(1);
    a.write_config(&config_toml(
        "soak",
        &a.spool,
        &a.state,
        &a.keys,
        &a.targets[0],
        50,
        false,
    ));
    let log = a.dir.path().join("daemon.log");
    let mut d = a.spawn_logged(&log);
    wait_until("daemon up", Duration::from_secs(30), &log, || {
        a.state.join("status.json").exists()
    });
    let pid = d.pid();
    let spool = a.spool.clone();
    let writer = std::thread::spawn(move || {
        simulate(&SimOptions {
            spool,
            rate: rate as f64,
            duration: Some(Duration::from_secs(secs)),
            users: 50,
            seed,
            size_scale: scale,
            ..SimOptions::default()
        })
        .unwrap()
    });
    let exported = |a: &Appliance| a.rows_with("export").len();
    let t0 = Instant::now();
    let mut series: Vec<(u64, u64, usize, u64, usize, u64)> = Vec::new();
    eprintln!("[soak] t_s rss_kib fds threads exported status_backlog");
    loop {
        let done = writer.is_finished();
        let st = a.status_json();
        let backlog = st.as_ref().and_then(|s| s["backlog"].as_u64()).unwrap_or(0);
        let s = (
            t0.elapsed().as_secs(),
            proc_status(pid, "VmRSS:"),
            fds(pid),
            proc_status(pid, "Threads:"),
            exported(&a),
            backlog,
        );
        eprintln!("[soak] {} {} {} {} {} {}", s.0, s.1, s.2, s.3, s.4, s.5);
        series.push(s);
        if done {
            break;
        }
        std::thread::sleep(Duration::from_secs(10));
    }
    let sum = writer.join().unwrap();
    let due = due_copies(&a.config, &a.spool);
    wait_until(
        "soak backlog drained",
        Duration::from_secs(600),
        &log,
        || exported(&a) >= due.len(),
    );
    let rss_end = proc_status(pid, "VmRSS:");
    let fds_end = fds(pid);
    let (code, _) = d.stop();
    assert_eq!(code, 0);
    let rep = check_exactly_once(&a, &due);
    let n = series.len();
    let third = (n / 3).max(1);
    let early = series[..third].iter().map(|s| s.1).max().unwrap();
    let late = series[n - third..].iter().map(|s| s.1).max().unwrap();
    let fd_max = series.iter().map(|s| s.2).max().unwrap();
    let fd_min = series.iter().map(|s| s.2).min().unwrap();
    eprintln!(
        "[soak] seed {seed}: {} records in {secs} s at {rate}/s, {} due copies exported exactly once ({} duplicate rows); RSS early max {early} KiB, late max {late} KiB, at end {rss_end} KiB; fds {fd_min}..{fd_max}, at end {fds_end}",
        sum.records,
        due.len(),
        rep.extra_rows
    );
    assert!(
        late <= early * 2 + 20_000,
        "RSS keeps growing: {early} KiB early, {late} KiB late"
    );
    assert!(
        fd_max <= fd_min + 16,
        "fds keep growing: {fd_min}..{fd_max}"
    );
}
