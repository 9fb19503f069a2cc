//! The spool side under real faults, with the real binary: a spool root that
//! is an empty mount point or missing at startup (the journal must not be
//! pruned, the root is watched until it appears), transient read errors on
//! the XML and on a content file (LD_PRELOAD shim: retried, one error row
//! per outage), FIFOs listed as content (an error row, no blocked worker,
//! SIGTERM still stops the daemon), and a folder swapped with a symlink to
//! an outside folder in a `renameat2(RENAME_EXCHANGE)` loop while records
//! are exported (nothing from outside is ever archived).

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn policy(c: &mut String) {
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
}

fn config(a: &Appliance) -> String {
    let mut c = a.head(600);
    policy(&mut c);
    c
}

/// Export rows per record id.
fn exports_of(a: &Appliance, id: &str) -> usize {
    a.rows_with("export").iter().filter(|r| r[1] == id).count()
}

fn log_has(log: &Path, s: &str) -> bool {
    fs::read_to_string(log).unwrap_or_default().contains(s)
}

/// Starting with the spool root an empty mount point (the volume not
/// mounted) keeps the journal: when the real spool comes back (unmounted
/// while the daemon runs) nothing is exported again, and what is new is.
#[test]
fn an_empty_mount_point_at_startup_keeps_the_journal() {
    const T: &str = "an_empty_mount_point_at_startup_keeps_the_journal";
    let a = Appliance::new(1);
    a.write_config(&config(&a));
    let day = a.spool.join("2026/11/21");
    for i in 0..3 {
        Rec::voice(&format!("r{i}"), "100").write(&day);
    }
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(a.rows_with("export").len(), 3);

    // The volume "not mounted": an empty tmpfs over the spool root.
    let Some(m) = fault::SmallFs::mount(T, &a.spool, "1m") else {
        return;
    };
    assert!(fs::read_dir(&a.spool).unwrap().next().is_none());
    let log = a.dir.path().join("daemon.log");
    fs::remove_file(a.state.join("status.json")).unwrap();
    let mut d = a.spawn_logged(&log);
    wait_until("daemon up", Duration::from_secs(30), &log, || {
        a.state.join("status.json").exists()
    });
    // The volume is back while the daemon runs.
    drop(m);
    assert!(day.join("r0.xml").exists());
    Rec::voice("r3", "100").write(&day);
    wait_until(
        "the new record is exported",
        Duration::from_secs(60),
        &log,
        || exports_of(&a, "r3") == 1,
    );
    std::thread::sleep(Duration::from_secs(2));
    let (code, err) = d.stop();
    assert_eq!(code, 0, "{err}");
    // And once more from a fresh start: the journal still knows everything.
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log_has(&log, "treated as unknown"));
    for id in ["r0", "r1", "r2", "r3"] {
        assert_eq!(
            exports_of(&a, id),
            1,
            "{id} exported once: {:?}",
            a.rows_with("export")
        );
    }
    assert_eq!(a.cmd(&["audit", "verify"]).status.code(), Some(0));
}

/// The journal alone: `run --until-idle` once with the root an empty mount
/// point and once with it missing prunes nothing; when the spool is back,
/// nothing is exported a second time.
#[test]
fn an_empty_or_missing_root_at_startup_prunes_nothing() {
    const T: &str = "an_empty_or_missing_root_at_startup_prunes_nothing";
    let a = Appliance::new(1);
    a.write_config(&config(&a));
    let day = a.spool.join("2026/11/21");
    for i in 0..3 {
        Rec::voice(&format!("r{i}"), "100").write(&day);
    }
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Missing (renamed away), then back.
    let away = a.dir.path().join("spool.away");
    fs::rename(&a.spool, &away).unwrap();
    a.run_until_idle();
    fs::rename(&away, &a.spool).unwrap();
    a.run_until_idle();
    assert_eq!(
        a.rows_with("export").len(),
        3,
        "{:?}",
        a.rows_with("export")
    );
    // An empty mount point, then the volume back.
    let Some(m) = fault::SmallFs::mount(T, &a.spool, "1m") else {
        return;
    };
    let out = a.run_until_idle();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("treated as unknown"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(m);
    a.run_until_idle();
    assert_eq!(
        a.rows_with("export").len(),
        3,
        "{:?}",
        a.rows_with("export")
    );
}

/// A root missing at startup (renamed away) keeps the journal and is
/// watched: when it is back its old records are not exported again and a
/// new one is; a root whose parents do not exist yet at startup is exported
/// from once it is created, without a restart.
#[test]
fn a_missing_root_is_watched_until_it_appears_and_the_journal_is_kept() {
    let a = Appliance::new(1);
    let late = a.dir.path().join("late/deep/spool");
    let mut c = a.head(600).replace(
        &format!("spool = [\"{}\"]", a.spool.display()),
        &format!(
            "spool = [\"{}\", \"{}\"]",
            a.spool.display(),
            late.display()
        ),
    );
    policy(&mut c);
    a.write_config(&c);
    let day = a.spool.join("2026/11/21");
    for i in 0..3 {
        Rec::voice(&format!("r{i}"), "100").write(&day);
    }
    let out = a.run_until_idle();
    assert_eq!(
        a.rows_with("export").len(),
        3,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let away = a.dir.path().join("spool.away");
    fs::rename(&a.spool, &away).unwrap();
    let log = a.dir.path().join("daemon.log");
    fs::remove_file(a.state.join("status.json")).unwrap();
    let mut d = a.spawn_logged(&log);
    wait_until("daemon up", Duration::from_secs(30), &log, || {
        a.state.join("status.json").exists()
    });
    fs::rename(&away, &a.spool).unwrap();
    let t0 = Instant::now();
    Rec::voice("r3", "100").write(&day);
    wait_until(
        "a record in the root that came back is exported",
        Duration::from_secs(60),
        &log,
        || exports_of(&a, "r3") == 1,
    );
    eprintln!(
        "[missing-root] exported {:.1} s after the root came back",
        t0.elapsed().as_secs_f64()
    );

    fs::create_dir_all(&late).unwrap();
    let t0 = Instant::now();
    Rec::voice("late1", "100").write(&late.join("x"));
    wait_until(
        "a record in a root created after start is exported",
        Duration::from_secs(60),
        &log,
        || exports_of(&a, "late1") == 1,
    );
    eprintln!(
        "[missing-root] late root exported {:.1} s after it was created",
        t0.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(1));
    let (code, err) = d.stop();
    assert_eq!(code, 0, "{err}");
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in ["r0", "r1", "r2", "r3", "late1"] {
        assert_eq!(
            exports_of(&a, id),
            1,
            "{id} exported once: {:?}",
            a.rows_with("export")
        );
    }
}

/// EIO on the metadata XML and EACCES on a content file, for as long as an
/// "outage" lasts (the shim's control file): no journal verdict, one error
/// row per record and outage however often it is retried; when the outage
/// ends both are exported, one export row each.
#[test]
fn transient_read_errors_are_retried_with_one_row_per_outage() {
    const T: &str = "transient_read_errors_are_retried_with_one_row_per_outage";
    let Some(shim) = fault::shim(T) else { return };
    for errno in ["EIO", "EACCES", "ESTALE"] {
        let a = Appliance::new(1);
        a.write_config(&config(&a));
        let control = a.dir.path().join("outage");
        fs::write(&control, b"").unwrap();
        let log = a.dir.path().join("daemon.log");
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = std::process::Command::new(exe());
        cmd.args(["run", "--config"])
            .arg(&a.config)
            .env("EXPORTD_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(f));
        let control_s = control.display().to_string();
        fault::with_shim(
            &mut cmd,
            &shim,
            &[
                ("FAULT_PATH", "/spool/d/flaky"),
                ("FAULT_READ", errno),
                ("FAULT_CONTROL", control_s.as_str()),
            ],
        );
        let mut d = Daemon::new(cmd.spawn().unwrap());
        wait_until("daemon up", Duration::from_secs(30), &log, || {
            a.state.join("status.json").exists()
        });
        let dir = a.spool.join("d");
        // The XML itself cannot be read.
        let mut x = Rec::voice("flaky-xml", "100");
        x.files[0].1 = "x.wav".into();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("x.wav"), &x.files[0].2).unwrap();
        fs::write(dir.join("flaky-xml.xml"), x.xml()).unwrap();
        // A content file cannot be read.
        let mut c = Rec::voice("content", "100");
        c.files[0].1 = "flaky-c.wav".into();
        c.write(&dir);
        Rec::voice("good", "100").write(&dir);
        wait_until("one error row each", Duration::from_secs(30), &log, || {
            a.rows_with("error").len() >= 2 && exports_of(&a, "good") == 1
        });
        // Retries at 1, 2, 4 s...: several of them, no further rows.
        std::thread::sleep(Duration::from_secs(8));
        let errors = a.rows_with("error");
        assert_eq!(errors.len(), 2, "{errno}: one row per outage: {errors:?}");
        let codes: Vec<&str> = errors.iter().map(|r| r[11].as_str()).collect();
        assert!(
            codes.contains(&"unreadable_metadata"),
            "{errno}: {errors:?}"
        );
        assert!(codes.contains(&"source_unavailable"), "{errno}: {errors:?}");
        assert!(!codes.contains(&"unsafe_path") && !codes.contains(&"no_identity"));
        assert_eq!(exports_of(&a, "content"), 0);
        assert_eq!(exports_of(&a, "flaky-xml"), 0);
        let st = a.status_json().unwrap();
        assert!(st["retrying"].as_u64().unwrap_or(0) >= 1, "{errno}: {st}");
        // The outage ends.
        fs::remove_file(&control).unwrap();
        wait_until(
            "both exported after the outage",
            Duration::from_secs(60),
            &log,
            || exports_of(&a, "content") == 1 && exports_of(&a, "flaky-xml") == 1,
        );
        std::thread::sleep(Duration::from_millis(500));
        let (code, err) = d.stop();
        assert_eq!(code, 0, "{err}");
        assert_eq!(a.rows_with("error").len(), 2, "{errno}");
        for id in ["content", "flaky-xml", "good"] {
            assert_eq!(exports_of(&a, id), 1, "{errno}: {id}");
        }
        assert_eq!(
            fs::read(a.targets[0].join("2026/11/21/u-1/content/flaky-c.wav")).unwrap(),
            c.files[0].2
        );
        assert_eq!(a.cmd(&["audit", "verify"]).status.code(), Some(0));
        eprintln!(
            "[read-outage] {errno}: 2 error rows during the outage, 1 export row each after it"
        );
    }
}

/// FIFOs listed as content (nobody writes them: a blocking open would hang
/// a worker for good) are `unsafe_path` error rows; the other records are
/// exported and SIGTERM stops the daemon promptly.
#[test]
fn fifos_in_the_spool_never_block_a_worker() {
    let a = Appliance::new(1);
    let mut c = a.head_with_workers(600, 2);
    policy(&mut c);
    a.write_config(&c);
    let log = a.dir.path().join("daemon.log");
    let mut d = a.spawn_logged(&log);
    wait_until("daemon up", Duration::from_secs(30), &log, || {
        a.state.join("status.json").exists()
    });
    let dir = a.spool.join("d");
    fs::create_dir_all(&dir).unwrap();
    for i in 0..4 {
        let mut r = Rec::voice(&format!("fifo{i}"), "100");
        r.files[0].1 = format!("pipe{i}.wav");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.join(format!("pipe{i}.wav")),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        fs::write(dir.join(format!("fifo{i}.xml")), r.xml()).unwrap();
    }
    // A FIFO with a metadata name: not a record, and nothing blocks on it.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("pipe.xml"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    for i in 0..3 {
        Rec::voice(&format!("good{i}"), "100").write(&dir);
    }
    wait_until(
        "good records exported, FIFOs answered",
        Duration::from_secs(30),
        &log,
        || {
            (0..3).all(|i| exports_of(&a, &format!("good{i}")) == 1)
                && a.rows_with("error").len() >= 4
        },
    );
    let t0 = Instant::now();
    let (code, err) = d.stop();
    let took = t0.elapsed();
    assert_eq!(code, 0, "{err}");
    assert!(
        took < patience(Duration::from_secs(5)),
        "SIGTERM took {took:?}"
    );
    let errors = a.rows_with("error");
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(
        errors
            .iter()
            .all(|r| r[11] == "unsafe_path" && r[12].contains("not a regular file")),
        "{errors:?}"
    );
}

/// A thread swaps a record's folder with a symlink to an outside folder
/// (`renameat2(RENAME_EXCHANGE)`, atomically, in a tight loop) while the
/// records listing files in it are exported: an outside file is never
/// archived; each record is exported with the inside bytes or refused.
#[test]
fn a_folder_swapped_with_a_symlink_never_exports_an_outside_file() {
    let a = Appliance::new(1);
    let mut c = a.head_with_workers(600, 4);
    policy(&mut c);
    a.write_config(&c);
    let dir = a.spool.join("d");
    let outside = a.dir.path().join("outside");
    fs::create_dir_all(dir.join("x")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    let n = common::env_u64("EXPORTD_SWAP_RECORDS", 300) as usize;
    for i in 0..n {
        let name = format!("f{i}.wav");
        fs::write(dir.join("x").join(&name), format!("INSIDE {i}")).unwrap();
        fs::write(outside.join(&name), format!("SECRET {i}")).unwrap();
        let mut r = Rec::voice(&format!("s{i}"), "100");
        r.files[0].1 = format!("x/{name}");
        fs::write(dir.join(format!("s{i}.xml")), r.xml()).unwrap();
    }
    std::os::unix::fs::symlink(&outside, dir.join("y")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A bounded storm: every swap is a folder moved in, which the watcher
    // lists again and asks the kernel about each file it holds (a lease):
    // events x files of work, so an endless storm keeps the daemon relisting
    // instead of exporting (under emulation it never got through 60
    // records). The first seconds, while the queued records are copied, are
    // what the race is about; the emulated lanes swap 500 times.
    let max_swaps = common::env_u64("EXPORTD_SWAP_MAX", 50_000);
    let swaps = {
        let stop = stop.clone();
        let dir = dir.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < max_swaps {
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    dir.join("x"),
                    rustix::fs::CWD,
                    dir.join("y"),
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .unwrap();
                n += 1;
                // A breath every 32 swaps: still thousands a second, racing
                // every open of the copy, but not an event storm that keeps
                // the daemon relisting the folder (an inotify queue overflow
                // means a rescan) instead of exporting, as under emulation.
                if n % 32 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            // Leave the real folder in place.
            if fs::symlink_metadata(dir.join("x"))
                .unwrap()
                .file_type()
                .is_symlink()
            {
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    dir.join("x"),
                    rustix::fs::CWD,
                    dir.join("y"),
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .unwrap();
            }
            n
        })
    };
    // The daemon, not `run --until-idle`: a spool whose folders are swapped
    // thousands of times a second is never idle (every swap is a folder
    // moved in, listed again), so under emulation an until-idle run never
    // ended. The swapping stops once every record has its row.
    let log = a.dir.path().join("daemon.log");
    let mut d = a.spawn_logged(&log);
    let settled = || {
        let ids: std::collections::HashSet<String> =
            a.audit_rows().into_iter().map(|r| r[1].clone()).collect();
        ids.len() >= n
    };
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            "every record exported or refused",
            Duration::from_secs(120),
            &log,
            settled,
        )
    }));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n_swaps = swaps.join().unwrap();
    if let Err(p) = waited {
        std::panic::resume_unwind(p);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (code, err) = d.stop();
    let mut leaked = Vec::new();
    for f in files_below(&a.targets[0]) {
        let b = fs::read(a.targets[0].join(&f)).unwrap();
        if String::from_utf8_lossy(&b).contains("SECRET") {
            leaked.push(f);
        }
    }
    let exports = a.rows_with("export").len();
    let errors = a.rows_with("error");
    eprintln!(
        "[swap] {n} records, {n_swaps} swaps: {exports} exported, {} refused, {} outside files archived; daemon exit {code}",
        errors.len(),
        leaked.len(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(leaked.is_empty(), "outside files archived: {leaked:?}");
    // Refused when the presence check or the copy met the symlink.
    assert!(
        errors
            .iter()
            .all(|r| r[11] == "unsafe_path" && r[12].contains("outside the spool root")),
        "{errors:?}"
    );
    let mut per: std::collections::HashMap<String, Vec<String>> = Default::default();
    for r in a.audit_rows() {
        per.entry(r[1].clone()).or_default().push(r[10].clone());
    }
    // A record refused while the symlink was in place may be exported later
    // (when a rescan or an event brings it again): with the inside bytes.
    let twice: Vec<_> = per
        .iter()
        .filter(|(_, v)| v.iter().filter(|a| *a == "export").count() > 1)
        .collect();
    assert!(twice.is_empty(), "one export row per record: {twice:?}");
    assert_eq!(per.len(), n, "every record exported or refused");
    assert!(n_swaps > 100, "the swap loop ran ({n_swaps} swaps)");
}
