//! Hostile archives (issue 21) and folder-target durability (issue 13) on the
//! folder target and compliance zips, through the real binary with real
//! symlinks, FIFOs, flocks, bind mounts and the fault shim:
//! - a symlink `<root>/.exportd-tmp -> elsewhere` never makes the stale-temp
//!   cleanup delete files elsewhere; a live temp of another appliance sharing
//!   the archive (flocked) is never deleted, a dead one is;
//! - a symlink at `compliance-exports/.<id>.zip.tmp` never makes `request
//!   submit` overwrite another file; zips 0640, `state/` 0700 and its files
//!   not world-readable after a first `request submit`;
//! - a FIFO or symlink at a record's final name is a conflict row, never a
//!   hang nor followed;
//! - "same bytes already present" is fsynced before it is journaled;
//! - an unmounted folder target (bind mount) is never written on the bare
//!   mount point, a missing root is never created, and the backlog drains
//!   once the volume is back;
//! - record ids equal to reserved names never land in reserved folders;
//! - a content file named like the metadata XML in another case is refused.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Appliance, Rec, fault, files_below, user};

fn config(a: &Appliance, template: Option<&str>) -> String {
    let mut c = a.head(1);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"All\"\ntargets = [\"t0\"]\n");
    if let Some(t) = template {
        c.push_str(&format!("settings = {{ path_template = \"{t}\" }}\n"));
    }
    c.push('\n');
    c.push_str(&user("u-1", &["100"], &["p"]));
    c
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file below `dir` with its bytes (symlinks not followed).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let b = fs::read(&p).unwrap_or_default();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_symlinked_temp_folder_never_makes_cleanup_delete_elsewhere() {
    let a = Appliance::new(1);
    a.write_config(&config(&a, None));
    let elsewhere = a.dir.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    // Names like every temp scheme: old pid temps, new ones, anything.
    for n in ["victim.txt", "999999-1", "it.0123456789abcdef.0"] {
        fs::write(elsewhere.join(n), n).unwrap();
    }
    let before = snapshot(&elsewhere);
    std::os::unix::fs::symlink(&elsewhere, a.targets[0].join(".exportd-tmp")).unwrap();
    Rec::voice("r1", "100").write(&a.spool.join("d"));
    let out = a.run_until_idle();
    assert_eq!(
        snapshot(&elsewhere),
        before,
        "files outside the target were deleted or changed; stderr: {}",
        stderr(&out)
    );
    // Nothing was written through the link either, and the record waits
    // with an error row saying why.
    assert_ne!(out.status.code(), Some(0));
    let rows = a.rows_with("error");
    assert!(
        rows.iter()
            .any(|r| r[10] == "error" && r[12].contains(".exportd-tmp")),
        "{rows:?}"
    );
    assert!(a.rows_with("export").is_empty());
    // The operator removes the link: the backlog drains.
    fs::remove_file(a.targets[0].join(".exportd-tmp")).unwrap();
    let out = a.run_until_idle();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(a.rows_with("export").len(), 1);
}

#[test]
fn a_live_temp_of_another_appliance_is_kept_and_a_dead_one_removed() {
    let a = Appliance::new(1);
    a.write_config(&config(&a, None));
    let tmp = a.targets[0].join(".exportd-tmp");
    fs::create_dir_all(&tmp).unwrap();
    // Another appliance copying into the shared archive right now: its temp
    // is flocked by its writer (this test process).
    let live = tmp.join("other-box.0123456789abcdef.7");
    fs::write(&live, b"half a copy").unwrap();
    let held = fs::File::open(&live).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    // One whose writer died (nobody holds its lock).
    let dead = tmp.join("other-box.fedcba9876543210.3");
    fs::write(&dead, b"left by a crash").unwrap();
    // Not a name exportd makes: never touched.
    let foreign = tmp.join("notes.txt");
    fs::write(&foreign, b"x").unwrap();

    Rec::voice("r1", "100").write(&a.spool.join("d"));
    let out = a.run_until_idle();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        fs::read(&live).ok().as_deref(),
        Some(&b"half a copy"[..]),
        "the live temp of another appliance was deleted"
    );
    assert!(!dead.exists(), "the dead temp was kept");
    assert!(foreign.exists(), "a name exportd does not make was removed");
    drop(held);
}

fn request_appliance() -> (Appliance, PathBuf) {
    let a = Appliance::new(1);
    a.write_config(&config(&a, None));
    let req = a.dir.path().join("req.json");
    fs::write(
        &req,
        r#"{"request_id": "r-1", "target": "t0", "users": ["u-1"], "modalities": ["im"], "format": "glip"}"#,
    )
    .unwrap();
    (a, req)
}

#[test]
fn a_symlinked_zip_temp_never_overwrites_another_file_and_modes_are_private() {
    let (a, req) = request_appliance();
    let victim = a.dir.path().join("victim.conf");
    fs::write(&victim, b"precious").unwrap();
    let out_dir = a.targets[0].join("compliance-exports");
    fs::create_dir_all(&out_dir).unwrap();
    std::os::unix::fs::symlink(&victim, out_dir.join(".r-1.zip.tmp")).unwrap();
    assert!(!a.state.exists());
    let out = a.cmd_with(&["request", "submit"], &[req.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(fs::read(&victim).unwrap(), b"precious", "overwritten");
    let zip = out_dir.join("r-1.zip");
    let m = fs::symlink_metadata(&zip).unwrap();
    assert!(m.file_type().is_file(), "the zip is not a regular file");
    assert_eq!(m.permissions().mode() & 0o777, 0o640, "zip mode");
    zip::ZipArchive::new(fs::File::open(&zip).unwrap()).unwrap();
    // state/ made by a first `request submit`: private.
    let mode = fs::metadata(&a.state).unwrap().permissions().mode() & 0o777;
    assert!(mode == 0o700 || mode == 0o750, "state_dir mode {mode:o}");
    let mut stack = vec![a.state.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            assert_eq!(
                m.permissions().mode() & 0o007,
                0,
                "{} is {:o}",
                p.display(),
                m.permissions().mode() & 0o777
            );
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
}

#[test]
fn a_symlinked_compliance_folder_is_refused() {
    let (a, req) = request_appliance();
    let elsewhere = a.dir.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, a.targets[0].join("compliance-exports")).unwrap();
    let out = a.cmd_with(&["request", "submit"], &[req.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("symlink"), "{}", stderr(&out));
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}

/// `run --until-idle` that must end within `secs` (a hang is a failure, not a
/// stuck test).
fn run_bounded(a: &Appliance, secs: u64) -> std::process::Output {
    let mut child = Command::new(common::exe())
        .args(["run", "--until-idle", "--config"])
        .arg(&a.config)
        .env("EXPORTD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("exportd hung for {secs} s (blocked on a FIFO?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_fifo_or_symlink_at_a_final_name_is_a_conflict_not_a_hang() {
    let a = Appliance::new(1);
    a.write_config(&config(&a, None));
    let f1 = a.targets[0].join("2026/11/21/u-1/r1");
    fs::create_dir_all(&f1).unwrap();
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        f1.join("r1.wav"),
        rustix::fs::Mode::from_raw_mode(0o644),
    )
    .unwrap();
    // A symlink at r2's final name pointing at the very bytes r2 has: the
    // old code followed it and called the copy present.
    let r2 = Rec::voice("r2", "100");
    let outside = a.dir.path().join("outside.wav");
    fs::write(&outside, &r2.files[0].2).unwrap();
    let f2 = a.targets[0].join("2026/11/21/u-1/r2");
    fs::create_dir_all(&f2).unwrap();
    std::os::unix::fs::symlink(&outside, f2.join("r2.wav")).unwrap();
    Rec::voice("r1", "100").write(&a.spool.join("d"));
    r2.write(&a.spool.join("d"));
    let out = run_bounded(&a, 60);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows = a.rows_with("error");
    for id in ["r1", "r2"] {
        assert!(
            rows.iter().any(|r| r[1] == id && r[11] == "conflict"),
            "{id}: {rows:?}"
        );
    }
    assert!(a.rows_with("export").is_empty());
    assert!(!f1.join("r1.xml").exists() && !f2.join("r2.xml").exists());
}

#[test]
fn same_bytes_already_present_are_fsynced_before_they_are_journaled() {
    let Some(shim) =
        fault::shim("same_bytes_already_present_are_fsynced_before_they_are_journaled")
    else {
        return;
    };
    let a = Appliance::new(1);
    a.write_config(&config(&a, None));
    Rec::voice("r1", "100").write(&a.spool.join("d"));
    let out = a.run_until_idle();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The journal and audit log are lost (or lag): the copy is found again
    // as "same bytes", and its fsync fails.
    fs::remove_dir_all(&a.state).unwrap();
    let folder = a.targets[0].join("2026/11/21/u-1/r1");
    let mut c = Command::new(common::exe());
    c.args(["run", "--until-idle", "--config"])
        .arg(&a.config)
        .env("EXPORTD_LOG", "warn");
    let out = fault::with_shim(
        &mut c,
        &shim,
        &[
            ("FAULT_PATH", folder.to_str().unwrap()),
            ("FAULT_FSYNC", "1+"),
        ],
    )
    .output()
    .unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "a copy whose fsync failed was counted: {}",
        stderr(&out)
    );
    assert!(a.rows_with("export").is_empty(), "{:?}", a.audit_rows());
    assert!(
        a.rows_with("error")
            .iter()
            .any(|r| r[11] == "target_unavailable" && r[12].contains("fsync")),
        "{:?}",
        a.audit_rows()
    );
    // Without the fault the copy counts, once.
    let out = a.run_until_idle();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(a.rows_with("export").len(), 1);
}

#[test]
fn a_missing_target_root_is_never_created() {
    let a = Appliance::new(1);
    fs::remove_dir(&a.targets[0]).unwrap();
    a.write_config(&config(&a, None));
    Rec::voice("r1", "100").write(&a.spool.join("d"));
    let out = a.run_until_idle();
    assert_ne!(out.status.code(), Some(0));
    assert!(!a.targets[0].exists(), "the target root was created");
    assert!(
        a.rows_with("error")
            .iter()
            .any(|r| r[11] == "target_unavailable" && r[12].contains("does not exist")),
        "{:?}",
        a.audit_rows()
    );
    // `target init` refuses a missing root too.
    let out = a.cmd(&["target", "init"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!a.targets[0].exists());
    // Created by the operator and initialised: the backlog drains.
    fs::create_dir(&a.targets[0]).unwrap();
    let out = a.cmd(&["target", "init"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(a.targets[0].join(".exportd-target").is_file());
    assert!(a.state.join("targets/t0.marker").is_file());
    let out = a.run_until_idle();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(a.rows_with("export").len(), 1);
}

/// A bind mount of `src` at `at`, unmounted on drop.
struct Bind(PathBuf);

impl Bind {
    fn mount(src: &Path, at: &Path) -> Bind {
        let st = Command::new("mount")
            .arg("--bind")
            .arg(src)
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount --bind failed");
        Bind(at.to_path_buf())
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn can_mount(test: &str) -> bool {
    if let Ok(lane) = std::env::var("EXPORTD_LANE") {
        eprintln!("SKIP {test}: host-only (bind mounts) in the {lane} lane");
        return false;
    }
    if !common::is_root() {
        if common::ci() {
            panic!("{test}: needs root (mount); required under CI=true");
        }
        eprintln!("SKIP {test}: needs root (mount)");
        return false;
    }
    true
}

#[test]
fn an_unmounted_target_is_never_written_and_drains_when_mounted_again() {
    let test = "an_unmounted_target_is_never_written_and_drains_when_mounted_again";
    if !can_mount(test) {
        return;
    }
    let a = Appliance::new(1);
    a.write_config(&config(&a, None));
    let volume = a.dir.path().join("volume");
    fs::create_dir_all(&volume).unwrap();
    let mount_point = &a.targets[0];
    let m = Bind::mount(&volume, mount_point);
    Rec::voice("r1", "100").write(&a.spool.join("d"));
    let out = a.run_until_idle();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(volume.join("2026/11/21/u-1/r1/r1.xml").is_file());

    // The volume goes away: the mount point is a bare folder on the root disk.
    drop(m);
    assert_eq!(fs::read_dir(mount_point).unwrap().count(), 0);
    Rec::voice("r2", "100").write(&a.spool.join("d"));
    let out = a.run_until_idle();
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        fs::read_dir(mount_point).unwrap().count(),
        0,
        "written on the bare mount point: {:?}",
        files_below(mount_point)
    );
    assert!(volume.join(".exportd-target").is_file(), "adopted");
    let rows = a.rows_with("error");
    assert!(
        rows.iter().any(|r| r[1] == "r2"
            && r[11] == "target_unavailable"
            && r[12].contains("no .exportd-target marker")),
        "{rows:?}"
    );

    // A daemon running while the volume is still away, then mounted again:
    // the backlog drains by itself.
    Rec::voice("r3", "100").write(&a.spool.join("d"));
    let log = a.dir.path().join("daemon.log");
    let mut d = a.spawn_logged(&log);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(fs::read_dir(mount_point).unwrap().count(), 0);
    let _m = Bind::mount(&volume, mount_point);
    common::wait_for(Duration::from_secs(90), || {
        volume.join("2026/11/21/u-1/r2/r2.xml").is_file()
            && volume.join("2026/11/21/u-1/r3/r3.xml").is_file()
    });
    let (code, _) = d.stop();
    assert_eq!(code, 0, "{}", fs::read_to_string(&log).unwrap_or_default());
    let mut exported: Vec<String> = a.rows_with("export").iter().map(|r| r[1].clone()).collect();
    exported.sort();
    assert_eq!(exported, ["r1", "r2", "r3"]);
}

#[test]
fn record_ids_named_like_reserved_folders_never_land_in_them() {
    let a = Appliance::new(1);
    a.write_config(&config(&a, Some("{id}")));
    for (n, id) in [
        (1, ".exportd-tmp"),
        (2, "compliance-exports"),
        (3, ".exportd-target"),
    ] {
        let mut r = Rec::voice(id, "100");
        r.files = vec![("media".into(), format!("m{n}.wav"), vec![n as u8; 10])];
        let dir = a.spool.join(format!("d{n}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("m{n}.wav")), vec![n as u8; 10]).unwrap();
        fs::write(dir.join(format!("rec{n}.xml")), r.xml()).unwrap();
    }
    let out = a.run_until_idle();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A second start runs the stale-temp cleanup.
    let out = a.run_until_idle();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let t = &a.targets[0];
    for f in [
        "_exportd-tmp/m1.wav",
        "_compliance-exports/m2.wav",
        "_exportd-target/m3.wav",
    ] {
        assert!(t.join(f).is_file(), "{f} missing: {:?}", files_below(t));
    }
    assert!(
        t.join(".exportd-target").is_file(),
        "the marker was replaced"
    );
    assert!(!t.join("compliance-exports").exists());
    assert_eq!(a.rows_with("export").len(), 3);
}

#[test]
fn a_content_file_named_like_the_metadata_xml_in_another_case_is_refused() {
    let a = Appliance::new(1);
    a.write_config(&config(&a, None));
    let mut r = Rec::voice("r1", "100");
    r.files = vec![("media".into(), "R1.XML".into(), b"<fake/>".to_vec())];
    r.write(&a.spool.join("d"));
    let out = a.run_until_idle();
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        a.rows_with("error").iter().any(|r| r[1] == "r1"),
        "{:?}",
        a.audit_rows()
    );
    assert!(files_below(&a.targets[0]).is_empty());
}
