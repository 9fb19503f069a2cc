//! Spool races with the daemon running: an XML that arrives before its media
//! is closed, media renamed into place after the XML, a record deleted by the
//! recorder while it is being exported, the same record id written twice
//! (same bytes: no-op; different bytes: conflict row, nothing overwritten),
//! and folders created, filled, moved in and removed quickly.

mod common;

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

fn config(a: &Appliance, grace: u64) -> String {
    let mut c = a.head(grace);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    c
}

fn folder(a: &Appliance, id: &str) -> std::path::PathBuf {
    a.targets[0].join(format!("2026/11/21/u-1/{id}"))
}

fn exported(a: &Appliance, id: &str) -> bool {
    folder(a, id).join(format!("{id}.xml")).exists()
}

fn start(a: &Appliance, grace: u64) -> (Daemon, std::path::PathBuf) {
    a.write_config(&config(a, grace));
    let log = a.dir.path().join("daemon.log");
    let d = a.spawn_logged(&log);
    wait_until("daemon up", Duration::from_secs(30), &log, || {
        a.state.join("status.json").exists()
    });
    (d, log)
}

fn no_temp_files(a: &Appliance) {
    let t: Vec<String> = files_below(&a.targets[0])
        .into_iter()
        .filter(|f| f.contains("exportd-tmp"))
        .collect();
    assert!(t.is_empty(), "temp files left: {t:?}");
}

/// The recorder violates the contract: the XML is committed while the media
/// is still being written. The agent must not archive a truncated media file
/// as complete.
#[test]
fn xml_before_media_is_closed_is_not_archived_truncated() {
    let a = Appliance::new(1);
    let (mut d, log) = start(&a, 600);
    let day = a.spool.join("2026/11/21");
    fs::create_dir_all(&day).unwrap();
    let r = Rec::voice("open", "100");
    let mut media = fs::File::create(day.join("open.wav")).unwrap();
    media.write_all(b"RIFF first half ").unwrap();
    media.flush().unwrap();
    fs::write(day.join("open.xml"), r.xml()).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    media.write_all(b"and the second half").unwrap();
    drop(media);
    let full = fs::read(day.join("open.wav")).unwrap();
    // A later record proves the agent is alive and caught up.
    Rec::voice("after-open", "100").write(&day);
    wait_until(
        "later record exported",
        Duration::from_secs(30),
        &log,
        || exported(&a, "after-open"),
    );
    std::thread::sleep(Duration::from_secs(2));
    let (code, _) = d.stop();
    assert_eq!(code, 0);
    if exported(&a, "open") {
        assert_eq!(
            fs::read(folder(&a, "open").join("open.wav")).unwrap(),
            full,
            "the archive holds a truncated media file for a folder marked complete"
        );
    } else {
        assert!(
            !a.rows_with("error").is_empty(),
            "not exported and no error row"
        );
    }
    no_temp_files(&a);
}

/// Media renamed into place seconds after the XML (the XML waits; both files
/// land with the right bytes).
#[test]
fn media_renamed_after_the_xml() {
    let a = Appliance::new(1);
    let (mut d, log) = start(&a, 600);
    let day = a.spool.join("2026/11/21/late");
    fs::create_dir_all(&day).unwrap();
    let mut r = Rec::voice("late2", "100");
    r.files.push((
        "transcript".into(),
        "late2.vtr".into(),
        b"WEBVTT\n".to_vec(),
    ));
    fs::write(day.join("late2.xml"), r.xml()).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!exported(&a, "late2"));
    for (_, p, data) in &r.files {
        let part = day.join(format!("{p}.part"));
        fs::write(&part, data).unwrap();
        std::thread::sleep(Duration::from_millis(700));
        fs::rename(&part, day.join(p)).unwrap();
    }
    wait_until("late media exported", Duration::from_secs(30), &log, || {
        exported(&a, "late2")
    });
    let (code, _) = d.stop();
    assert_eq!(code, 0);
    assert_eq!(
        fs::read(folder(&a, "late2").join("late2.wav")).unwrap(),
        r.files[0].2
    );
    assert_eq!(
        fs::read(folder(&a, "late2").join("late2.vtr")).unwrap(),
        b"WEBVTT\n"
    );
    assert_eq!(a.rows_with("export").len(), 1);
    assert!(
        a.rows_with("error").is_empty(),
        "{:?}",
        a.rows_with("error")
    );
}

/// The recorder deletes a record (XML and media) while its 48 MiB media is
/// being copied. Whatever the timing: never a folder marked complete with
/// wrong bytes, no temp file left, and the agent goes on with later records.
#[test]
fn record_deleted_mid_export() {
    let a = Appliance::new(1);
    let (mut d, log) = start(&a, 600);
    let day = a.spool.join("2026/11/21");
    let mut r = Rec::voice("big", "100");
    let mut data = vec![0u8; 48 << 20];
    exportd::simulate::Rng::new(5).fill(&mut data);
    r.files[0].2 = data;
    r.write(&day);
    // Wait until the copy is in flight (its temp file exists), then delete.
    let t0 = Instant::now();
    let mut saw_tmp = false;
    while t0.elapsed() < Duration::from_secs(30) && !exported(&a, "big") {
        if files_below(&a.targets[0])
            .iter()
            .any(|f| f.contains("exportd-tmp"))
        {
            saw_tmp = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    fs::remove_file(day.join("big.xml")).unwrap();
    fs::remove_file(day.join("big.wav")).unwrap();
    // A deleted record whose media vanished before it was read at all.
    let gone = Rec::voice("gone", "100");
    fs::write(day.join("gone.xml"), gone.xml()).unwrap();
    fs::remove_file(day.join("gone.xml")).unwrap();
    Rec::voice("after-delete", "100").write(&day);
    wait_until(
        "later record exported",
        Duration::from_secs(60),
        &log,
        || exported(&a, "after-delete"),
    );
    // Give an in-flight copy time to finish or fail.
    std::thread::sleep(Duration::from_secs(3));
    let (code, _) = d.stop();
    assert_eq!(code, 0);
    let big = folder(&a, "big");
    if exported(&a, "big") {
        assert_eq!(
            fs::read(big.join("big.wav")).unwrap(),
            r.files[0].2,
            "a folder marked complete must hold the right bytes"
        );
    }
    no_temp_files(&a);
    assert!(!exported(&a, "gone"));
    assert_eq!(a.cmd(&["audit", "verify"]).status.code(), Some(0));
    eprintln!(
        "[deleted] copy in flight when deleted: {saw_tmp}; outcome: {}",
        if exported(&a, "big") {
            "exported complete (read from the open file)"
        } else {
            "not exported"
        }
    );
}

/// The same record id twice: same bytes is a no-op (export row, nothing
/// rewritten); different bytes is a conflict error row and the first copy stays.
#[test]
fn same_id_written_twice() {
    let a = Appliance::new(1);
    let (mut d, log) = start(&a, 600);
    let r = Rec::voice("twice", "100");
    r.write(&a.spool.join("a"));
    wait_until("first copy", Duration::from_secs(30), &log, || {
        exported(&a, "twice")
    });
    let wav = folder(&a, "twice").join("twice.wav");
    let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&wav).unwrap());
    // Same bytes in another folder.
    r.write(&a.spool.join("b"));
    wait_until("second export row", Duration::from_secs(30), &log, || {
        a.rows_with("export").len() == 2
    });
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(&wav).unwrap()),
        ino,
        "same bytes: the existing file is not rewritten"
    );
    // Different bytes under the same id.
    let mut r2 = r.clone();
    r2.files[0].2 = b"RIFF different audio".to_vec();
    r2.write(&a.spool.join("c"));
    wait_until("conflict row", Duration::from_secs(30), &log, || {
        a.rows_with("error").iter().any(|r| r[11] == "conflict")
    });
    let (code, _) = d.stop();
    assert_eq!(code, 0);
    assert_eq!(fs::read(&wav).unwrap(), r.files[0].2, "first copy kept");
    let errs = a.rows_with("error");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0][12].contains("twice.wav") && errs[0][5].ends_with("/c"),
        "the conflict row names the file and the spool folder: {:?}",
        errs[0]
    );
    assert_eq!(files_below(&a.targets[0]).len(), 2);
    // The conflicting record is still in the spool: nothing lost.
    assert!(a.spool.join("c/twice.wav").exists());
    assert_eq!(a.cmd(&["audit", "verify"]).status.code(), Some(0));
}

/// Folders created, filled and removed in a tight loop, whole trees moved
/// into the spool, and real records in fresh nested folders meanwhile.
#[test]
fn folders_created_and_removed_quickly() {
    let a = Appliance::new(1);
    let (mut d, log) = start(&a, 600);
    let spool = a.spool.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let top = spool.join(format!("churn-{n}"));
                let deep = top.join("a/b/c/d");
                fs::create_dir_all(&deep).unwrap();
                fs::write(deep.join("junk.wav"), b"x").unwrap();
                fs::write(deep.join(".tmp.xml"), b"<recording>").unwrap();
                fs::remove_dir_all(&top).unwrap();
                n += 1;
            }
            n
        })
    };
    let mut ids = Vec::new();
    for i in 0..40 {
        let id = format!("nest-{i:02}");
        Rec::voice(&id, "100").write(&a.spool.join(format!("2026/11/21/{i}/x/y")));
        ids.push(id);
        if i % 10 == 0 {
            // A whole tree prepared elsewhere and moved in at once.
            let stage = a.dir.path().join(format!("stage-{i}"));
            let id = format!("moved-{i:02}");
            Rec::voice(&id, "100").write(&stage.join("deep/er"));
            fs::rename(&stage, a.spool.join(format!("moved-{i}"))).unwrap();
            ids.push(id);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = Instant::now();
    while !ids.iter().all(|id| exported(&a, id)) {
        if t0.elapsed() > Duration::from_secs(60) {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let missing: Vec<&String> = ids.iter().filter(|id| !exported(&a, id)).collect();
            let st = a.status_json();
            let text = fs::read_to_string(&log).unwrap_or_default();
            let interesting: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains("cannot watch"))
                .collect();
            panic!(
                "not exported after 60 s: {missing:?}; status {st:?}; log without 'cannot watch' lines (last 40):\n{}",
                interesting[interesting.len().saturating_sub(40)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let churned = churn.join().unwrap();
    let (code, err) = d.stop();
    assert_eq!(code, 0, "{err}");
    let due = due_copies(&a.config, &a.spool);
    assert_eq!(due.len(), ids.len());
    check_exactly_once(&a, &due);
    assert!(
        a.rows_with("error").is_empty(),
        "{:?}",
        a.rows_with("error")
    );
    eprintln!(
        "[churn] {} records exported while {churned} folder trees were created and removed",
        ids.len()
    );
}

/// Two records with the same id but different media arrive at once (two
/// recorders, or a re-send) and are exported by two workers in parallel into
/// the same target folder. Whatever the interleaving: the archived media is
/// byte-identical to one of the two sources, the folder matches the `sha256`
/// of the `export` row, and the other record gets a `conflict` row.
#[test]
fn same_id_different_bytes_exported_concurrently() {
    let a = Appliance::new(1);
    let mut c = config(&a, 600);
    c = c.replacen(
        "incomplete_grace_s = 600\n",
        "incomplete_grace_s = 600\nworkers = 2\n",
        1,
    );
    a.write_config(&c);
    let log = a.dir.path().join("daemon.log");
    let mut d = a.spawn_logged(&log);
    wait_until("daemon up", Duration::from_secs(30), &log, || {
        a.state.join("status.json").exists()
    });
    let mut recs = Vec::new();
    for (i, dir) in ["x", "y"].iter().enumerate() {
        let mut r = Rec::voice("clash", "100");
        let mut data = vec![0u8; 24 << 20];
        exportd::simulate::Rng::new(i as u64 + 40).fill(&mut data);
        r.files[0].2 = data;
        // Media first in both folders, then both XMLs back to back.
        let dir = a.spool.join(dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("clash.wav"), &r.files[0].2).unwrap();
        recs.push((dir, r));
    }
    for (dir, r) in &recs {
        fs::write(dir.join("clash.xml"), r.xml()).unwrap();
    }
    wait_until("both answered", Duration::from_secs(90), &log, || {
        a.rows_with("export").len() + a.rows_with("error").len() >= 2
    });
    std::thread::sleep(Duration::from_secs(2));
    let (code, _) = d.stop();
    assert_eq!(code, 0);
    let wav = fs::read(folder(&a, "clash").join("clash.wav")).unwrap();
    let which = recs.iter().position(|(_, r)| r.files[0].2 == wav);
    assert!(
        which.is_some(),
        "archived media ({} bytes) equals neither source: interleaved writes of two workers",
        wav.len()
    );
    let exports = a.rows_with("export");
    let errors = a.rows_with("error");
    assert_eq!(exports.len(), 1, "exports {exports:?} errors {errors:?}");
    assert_eq!(errors.len(), 1, "exports {exports:?} errors {errors:?}");
    assert_eq!(errors[0][11], "conflict");
    // The export row's folder digest is the folder's real content.
    let dir = folder(&a, "clash");
    let mut files: Vec<(String, [u8; 32])> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let b = fs::read(e.path()).unwrap();
            (
                e.file_name().into_string().unwrap(),
                sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&b)).into(),
            )
        })
        .collect();
    let (_, digest) = exportd::ledger::audit::folder_digest(&mut files);
    assert_eq!(
        exports[0][13], digest,
        "export row sha256 vs folder content"
    );
    no_temp_files(&a);
}

/// The agent reads the spool with O_NOATIME: even the access times of the
/// recorder's files stay as they were (relatime would otherwise update an
/// atime older than a day on the first read).
#[test]
fn spool_access_times_are_untouched() {
    use std::os::unix::fs::MetadataExt;
    let a = Appliance::new(1);
    a.write_config(&config(&a, 600));
    let day = a.spool.join("2026/11/21");
    let mut r = Rec::voice("atime", "100");
    r.files.push((
        "transcript".into(),
        "atime.vtr".into(),
        b"WEBVTT\n".to_vec(),
    ));
    r.write(&day);
    let files = ["atime.xml", "atime.wav", "atime.vtr"];
    let three_days_ago =
        std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 24 * 3600);
    for f in files {
        // (not `touch -d`: busybox in the board VM does not parse dates)
        fs::File::options()
            .write(true)
            .open(day.join(f))
            .unwrap()
            .set_times(fs::FileTimes::new().set_accessed(three_days_ago))
            .unwrap();
    }
    let before: Vec<i64> = files
        .iter()
        .map(|f| fs::metadata(day.join(f)).unwrap().atime())
        .collect();
    let out = a.run_until_idle();
    assert_eq!(out.status.code(), Some(0));
    assert!(exported(&a, "atime"));
    let after: Vec<i64> = files
        .iter()
        .map(|f| fs::metadata(day.join(f)).unwrap().atime())
        .collect();
    assert_eq!(before, after, "access times of {files:?} changed");
}

/// Records written at once into freshly created deep folders (`mkdir -p` then
/// the files): every one is seen without a restart.
#[test]
fn records_in_new_deep_folders_are_all_seen() {
    let a = Appliance::new(1);
    let (mut d, log) = start(&a, 600);
    let n = 300;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("deep-{i:03}");
        Rec::voice(&id, "100").write(&a.spool.join(format!("d{i}/a/b/c/d/e")));
        ids.push(id);
    }
    let t0 = Instant::now();
    while !ids.iter().all(|id| exported(&a, id)) {
        if t0.elapsed() > Duration::from_secs(60) {
            let missing: Vec<&String> = ids.iter().filter(|id| !exported(&a, id)).collect();
            panic!(
                "{} of {n} records in new folders never exported: {missing:?}; status {:?}",
                missing.len(),
                a.status_json()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _) = d.stop();
    assert_eq!(code, 0);
    let _ = log;
}
