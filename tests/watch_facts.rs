//! Whether a content file is still being written is decided from facts (the
//! kernel's read lease), not from a clock: a record whose XML is complete is
//! exported at once however its folder came to be, and a file still open for
//! writing (a recorder breaking spool.md's order) is never archived short.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::*;

/// Whether this kernel (or emulator) answers read-lease questions here; the
/// agent falls back to its timer where it does not, which these tests do
/// not cover. A host run under CI=true must have them.
fn leases_work(a: &Appliance) -> bool {
    use exportd::watch::lease::{Writers, writers};
    let p = a.dir.path().join("lease-probe");
    let w = fs::File::create(&p).unwrap();
    let r = fs::File::open(&p).unwrap();
    let answer = writers(&r);
    drop(w);
    if answer == Writers::Some {
        return true;
    }
    assert!(
        !ci() || std::env::var_os("EXPORTD_LANE").is_some(),
        "read leases unavailable ({answer:?}) on {}: the agent would fall back to its timer",
        p.display()
    );
    eprintln!("SKIP: read leases unavailable here ({answer:?}); the agent falls back to its timer");
    false
}

/// The daemon, its log at debug level in a file: a failure (in a lane
/// above all) prints what it decided about each file and record.
fn spawn_debug(a: &Appliance) -> Daemon {
    let d = a.spawn_logged_env(
        &a.dir.path().join("daemon.log"),
        &[("EXPORTD_LOG", "debug")],
    );
    wait_for(Duration::from_secs(30), || {
        a.state.join("status.json").exists()
    });
    d
}

fn config(a: &Appliance) -> String {
    let mut c = a.head(600);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    c
}

fn copy_of(a: &Appliance, id: &str, name: &str) -> PathBuf {
    a.targets[0].join(format!("2026/11/21/u-1/{id}/{name}"))
}

/// A record folder made outside the spool (same file system), to be moved
/// in whole: its files are then found by a scan, their creation unseen.
fn staged(a: &Appliance, id: &str) -> PathBuf {
    let dir = a.dir.path().join(format!("staging-{id}"));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The content file of `Rec::voice(id)` opened for writing, its first half
/// written and the XML (which lists it) complete beside it.
fn half_written(dir: &Path, id: &str) -> (fs::File, Vec<u8>) {
    let rec = Rec::voice(id, "100");
    let body = rec.files[0].2.clone();
    let mut f = fs::File::create(dir.join(&rec.files[0].1)).unwrap();
    f.write_all(&body[..body.len() / 2]).unwrap();
    f.flush().unwrap();
    fs::write(dir.join(format!("{id}.xml")), rec.xml()).unwrap();
    (f, body)
}

#[test]
fn a_record_in_a_folder_moved_in_with_a_future_mtime_is_exported_at_once() {
    // A folder that arrives whole (created before any watch on it), its
    // media stamped by a clock ahead of ours: no age says "closed", only
    // the kernel can. Before the lease, such a file counted as still being
    // written for as long as its mtime looked recent: forever.
    let a = Appliance::new(1);
    if !leases_work(&a) {
        return;
    }
    a.write_config(&config(&a));
    let mut d = spawn_debug(&a);
    let stage = staged(&a, "ahead");
    let rec = Rec::voice("ahead", "100");
    rec.write(&stage);
    let media = fs::File::options()
        .write(true)
        .open(stage.join("ahead.wav"))
        .unwrap();
    media
        .set_modified(SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
    drop(media);
    let dest = a.spool.join("2026/11/21/ahead");
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    fs::rename(&stage, &dest).unwrap();
    wait_for(Duration::from_secs(60), || {
        copy_of(&a, "ahead", "ahead.xml").exists()
    });
    assert_eq!(
        fs::read(copy_of(&a, "ahead", "ahead.wav")).unwrap(),
        rec.files[0].2
    );
    let (code, err) = d.stop();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_file_still_open_for_writing_in_a_moved_in_folder_is_waited_for() {
    let a = Appliance::new(1);
    if !leases_work(&a) {
        return;
    }
    a.write_config(&config(&a));
    let mut d = spawn_debug(&a);
    let stage = staged(&a, "open");
    let (mut f, body) = half_written(&stage, "open");
    fs::rename(&stage, a.spool.join("open")).unwrap();
    // Longer than the old fallback's 5 s of "unchanged": a clock would
    // have called the half file complete by now.
    std::thread::sleep(Duration::from_secs(7));
    assert!(
        !copy_of(&a, "open", "open.wav").exists() && a.rows_with("export").is_empty(),
        "a file open for writing was archived: {:?}",
        fs::read(copy_of(&a, "open", "open.wav")).ok()
    );
    f.write_all(&body[body.len() / 2..]).unwrap();
    drop(f);
    // The XML is in place before the export row is appended (the row is
    // the commit point, written last): wait for the row.
    wait_for(Duration::from_secs(60), || {
        copy_of(&a, "open", "open.xml").exists() && !a.rows_with("export").is_empty()
    });
    assert_eq!(fs::read(copy_of(&a, "open", "open.wav")).unwrap(), body);
    assert_eq!(a.rows_with("export").len(), 1);
    let (code, err) = d.stop();
    assert_eq!(code, 0, "{err}");
}

/// A content file deleted while it is still open for writing (a recorder
/// that cancels it, keeping the XML) shows its close only when the writer
/// lets go of it, which may be never: the record waiting on it does not
/// wait for that, but is found incomplete and reported after the grace.
#[test]
fn a_file_deleted_while_open_for_writing_is_reported_missing() {
    let a = Appliance::new(1);
    if !leases_work(&a) {
        return;
    }
    let mut c = a.head(1);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);
    let mut d = spawn_debug(&a);
    let stage = staged(&a, "gone");
    let (f, _) = half_written(&stage, "gone");
    let dir = a.spool.join("gone");
    fs::rename(&stage, &dir).unwrap();
    // Waiting on the open file (in the backlog, not incomplete: past the
    // 1 s grace it is not reported missing, it is there).
    wait_for(Duration::from_secs(30), || {
        let st = status(&a);
        st["backlog"] == 1 && st["counts"]["incomplete"] == 0
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        a.rows_with("error").is_empty(),
        "{:?}",
        a.rows_with("error")
    );
    fs::remove_file(dir.join("gone.wav")).unwrap();
    wait_for(Duration::from_secs(30), || !a.rows_with("error").is_empty());
    let e = a.rows_with("error");
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0][11], "incomplete", "{e:?}");
    drop(f);
    assert!(!copy_of(&a, "gone", "gone.xml").exists());
    let (code, err) = d.stop();
    assert_eq!(code, 0, "{err}");
}

fn status(a: &Appliance) -> serde_json::Value {
    fs::read(a.state.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

#[test]
fn a_file_open_for_writing_when_the_agent_starts_is_waited_for() {
    // The startup scan cannot have seen the file's creation either.
    let a = Appliance::new(1);
    if !leases_work(&a) {
        return;
    }
    a.write_config(&config(&a));
    let dir = a.spool.join("at-start");
    fs::create_dir_all(&dir).unwrap();
    let (mut f, body) = half_written(&dir, "atstart");
    let mut d = spawn_debug(&a);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !copy_of(&a, "atstart", "atstart.wav").exists(),
        "a file open for writing was archived at startup"
    );
    f.write_all(&body[body.len() / 2..]).unwrap();
    drop(f);
    wait_for(Duration::from_secs(60), || {
        copy_of(&a, "atstart", "atstart.xml").exists()
    });
    assert_eq!(
        fs::read(copy_of(&a, "atstart", "atstart.wav")).unwrap(),
        body
    );
    let (code, err) = d.stop();
    assert_eq!(code, 0, "{err}");
}

/// The inotify watch limit reached for real (`inotify_add_watch` failing
/// with ENOSPC past two spool watches, through the LD_PRELOAD shim): the
/// agent says so in `status`, the metrics and its log, still exports what
/// it found, finds a record written into an unwatched folder by its 30 s
/// rescan, and says it is no longer degraded once every folder is watched.
#[test]
fn the_watch_limit_is_shown_and_the_spool_is_rescanned() {
    const T: &str = "the_watch_limit_is_shown_and_the_spool_is_rescanned";
    let Some(shim) = fault::shim(T) else { return };
    let a = Appliance::new(1);
    a.write_config(&config(&a));
    for d in ["d1", "d2", "d3"] {
        Rec::voice(&format!("r-{d}"), "100").write(&a.spool.join(d));
    }
    let limit = a.dir.path().join("limit-on");
    fs::write(&limit, b"").unwrap();
    let log = a.dir.path().join("daemon.log");
    let spool = a.spool.display().to_string();
    let limit_s = limit.display().to_string();
    let faults = a.dir.path().join("faults.log");
    let faults_s = faults.display().to_string();
    let shim_s = shim.display().to_string();
    let mut d = a.spawn_logged_env(
        &log,
        &[
            ("LD_PRELOAD", shim_s.as_str()),
            ("FAULT_PATH", spool.as_str()),
            // The root and one folder.
            ("FAULT_INOTIFY_WATCHES", "2"),
            ("FAULT_CONTROL", limit_s.as_str()),
            ("FAULT_LOG", faults_s.as_str()),
        ],
    );
    let degraded = |a: &Appliance| -> Vec<String> {
        a.status_json()
            .and_then(|st| st["degraded"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|d| format!("{} {}", d["component"], d["reason"]))
            .collect()
    };
    wait_until(
        "the three records exported",
        Duration::from_secs(30),
        &log,
        || a.rows_with("export").len() == 3,
    );
    wait_until(
        "the watch limit shown",
        Duration::from_secs(10),
        &log,
        || {
            degraded(&a)
                .iter()
                .any(|d| d.contains("\"watch\"") && d.contains("max_user_watches"))
        },
    );
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("inotify watch limit reached"),
        "{}",
        tail(&text, 2000)
    );
    // The metrics file is written on its own flush, not with status.json.
    wait_until("the metrics show it", Duration::from_secs(10), &log, || {
        fs::read_to_string(a.state.join("metrics/exportd.prom"))
            .unwrap_or_default()
            .contains("exportd_degraded{component=\"watch\"")
    });
    // The last folder is not watched: a record written there is found by
    // the rescan (every 30 s while degraded), which also watches every
    // folder once the limit is lifted.
    let refused = fs::read_to_string(&faults).unwrap_or_default();
    let unwatched = ["d1", "d2", "d3"]
        .into_iter()
        .find(|d| refused.contains(&format!("/{d}\n")))
        .unwrap_or_else(|| panic!("no spool folder was refused a watch: {refused}"));
    fs::remove_file(&limit).unwrap();
    Rec::voice("late", "100").write(&a.spool.join(unwatched));
    wait_until(
        "the late record found by the rescan",
        Duration::from_secs(60),
        &log,
        || a.rows_with("export").iter().any(|r| r[1] == "late"),
    );
    wait_until("no longer degraded", Duration::from_secs(10), &log, || {
        !degraded(&a).iter().any(|d| d.contains("\"watch\""))
    });
    let (code, err) = d.stop();
    assert_eq!(code, 0, "{err}");
    assert_eq!(a.rows_with("export").len(), 4);
}
