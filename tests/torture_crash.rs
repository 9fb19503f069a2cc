//! Crash storm: the daemon is SIGKILLed at random moments many times while a
//! simulated recorder writes into the spool, restarted each time, then a
//! final `run --until-idle`. Afterwards every due copy exists exactly once
//! with the right bytes, nothing else is on the target (no temp files), the
//! audit chain verifies, every due copy has an `export` row, and the spool is
//! unchanged.
//!
//! CI size: 1,500 records, 30 kills. The issue's size (5,000 records, 100
//! kills) is `crash_storm_full` (ignored):
//!
//! ```text
//! cargo test --release --test torture_crash -- --ignored --nocapture
//! ```
//!
//! Knobs: `EXPORTD_TORTURE_RECORDS`, `EXPORTD_TORTURE_KILLS`,
//! `EXPORTD_TORTURE_SEED` (the seed is always printed).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use exportd::simulate::{Rng, SimOptions, config_toml, simulate};

struct Figures {
    records: u64,
    kills: u64,
    due: usize,
    files: usize,
    duplicate_rows: usize,
    extra_rows: usize,
    secs: f64,
}

fn crash_storm(records: u64, kills: u64) -> Figures {
    let t0 = Instant::now();
    let seed = torture_seed("crash_storm");
    let mut rng = Rng::new(seed);
    let a = Appliance::new(1);
    let users = 20;
    a.write_config(&config_toml(
        "torture",
        &a.spool,
        &a.state,
        &a.keys,
        &a.targets[0],
        users,
        false,
    ));
    let log = a.dir.path().join("daemon.log");
    let sim = move |count: u64, seed: u64, spool: PathBuf| {
        simulate(&SimOptions {
            spool,
            count,
            users,
            seed,
            size_scale: 0.02,
            ..SimOptions::default()
        })
        .unwrap()
    };
    // A third already waiting, the rest written while the daemon is being killed.
    let first = records / 3;
    sim(first, seed, a.spool.clone());
    let spool = a.spool.clone();
    let rest = records - first;
    let writer = std::thread::spawn(move || sim(rest, seed ^ 0xA5A5, spool));

    let mut spool_state = None;
    let mut killed_busy = 0u64;
    for k in 0..kills {
        let mut d = a.spawn_logged(&log);
        // Random moment: mostly early (startup scan, journal replay), sometimes later.
        let ms = if rng.chance(30) {
            rng.below(60)
        } else {
            60 + rng.below(900)
        };
        std::thread::sleep(Duration::from_millis(ms));
        if d.child.as_mut().unwrap().try_wait().unwrap().is_some() {
            panic!(
                "daemon exited by itself before kill {k}; log tail:\n{}",
                tail(&std::fs::read_to_string(&log).unwrap_or_default(), 3000)
            );
        }
        d.kill9();
        killed_busy += 1;
        if spool_state.is_none() && writer.is_finished() {
            spool_state = Some(tree_state(&a.spool));
        }
    }
    writer.join().unwrap();
    let spool_state = spool_state.unwrap_or_else(|| tree_state(&a.spool));

    let out = a.run_until_idle_within(Duration::from_secs(600));
    assert_eq!(
        out.status.code(),
        Some(0),
        "final run --until-idle: {}",
        tail(&String::from_utf8_lossy(&out.stderr), 3000)
    );
    assert_eq!(
        spool_state,
        tree_state(&a.spool),
        "the spool must never change"
    );

    let due = due_copies(&a.config, &a.spool);
    assert!(
        due.len() as u64 > records / 2,
        "most simulated records are due"
    );
    let rep = check_exactly_once(&a, &due);
    // Nothing is left in an error state: no error rows except transient ones re-done.
    let errors: Vec<_> = a
        .rows_with("error")
        .into_iter()
        .filter(|r| r[11] != "incomplete")
        .collect();
    assert!(
        errors.is_empty(),
        "error rows after a crash storm: {:?}",
        &errors[..errors.len().min(5)]
    );
    let f = Figures {
        records,
        kills: killed_busy,
        due: rep.due_copies,
        files: rep.files_checked,
        duplicate_rows: rep.duplicate_rows,
        extra_rows: rep.extra_rows,
        secs: t0.elapsed().as_secs_f64(),
    };
    eprintln!(
        "[crash_storm] seed {seed}: {} records, {} SIGKILLs, {} due copies, {} files checked, {} due copies with duplicate export rows ({} extra rows), {:.1} s",
        f.records, f.kills, f.due, f.files, f.duplicate_rows, f.extra_rows, f.secs
    );
    f
}

#[test]
fn crash_storm_ci() {
    let records = env_u64("EXPORTD_TORTURE_RECORDS", 1500);
    let kills = env_u64("EXPORTD_TORTURE_KILLS", 30);
    let f = crash_storm(records, kills);
    assert_eq!(f.kills, kills);
}

#[test]
#[ignore = "long: 5,000 records and 100 SIGKILLs (about 5 min in release)"]
fn crash_storm_full() {
    let records = env_u64("EXPORTD_TORTURE_RECORDS", 5000);
    let kills = env_u64("EXPORTD_TORTURE_KILLS", 100);
    crash_storm(records, kills);
}

/// SIGKILL while a large file is being copied, and the recorder deletes the
/// record before the agent restarts: the half-written temp file must not stay
/// on the archive forever.
#[test]
fn temp_file_of_a_killed_copy_is_cleaned_up() {
    let a = Appliance::new(1);
    let mut c = a.head(600);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);
    let log = a.dir.path().join("daemon.log");
    let mut d = a.spawn_logged(&log);
    wait_until("daemon up", Duration::from_secs(30), &log, || {
        a.state.join("status.json").exists()
    });
    let day = a.spool.join("2026/11/21");
    let mut r = Rec::voice("killed", "100");
    let mut data = vec![0u8; 48 << 20];
    Rng::new(9).fill(&mut data);
    r.files[0].2 = data;
    r.write(&day);
    let t0 = Instant::now();
    let mut saw = false;
    while t0.elapsed() < Duration::from_secs(30) {
        if files_below(&a.targets[0])
            .iter()
            .any(|f| f.contains("exportd-tmp"))
        {
            saw = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    d.kill9();
    if !saw {
        eprintln!("copy finished before the kill; nothing to check");
        return;
    }
    std::fs::remove_file(day.join("killed.xml")).unwrap();
    std::fs::remove_file(day.join("killed.wav")).unwrap();
    let out = a.run_until_idle_within(Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(0));
    let temps: Vec<String> = files_below(&a.targets[0])
        .into_iter()
        .filter(|f| f.contains("exportd-tmp"))
        .collect();
    assert!(
        temps.is_empty(),
        "stale temp files on the archive: {temps:?}"
    );
}
