//! The daemon with real inotify: live arrival in new nested folders, XML
//! renamed into place, XML before its media, reload, clean stop, and no
//! wake-ups when idle.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

fn config(a: &Appliance, grace: u64) -> String {
    let mut c = a.head(grace);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    c
}

fn exported(a: &Appliance, id: &str) -> bool {
    a.targets[0]
        .join(format!("2026/11/21/u-1/{id}/{id}.xml"))
        .exists()
}

#[test]
fn live_arrival_nested_folders_renames_and_late_media() {
    let a = Appliance::new(1);
    a.write_config(&config(&a, 600));
    Rec::voice("before", "100").write(&a.spool.join("old"));
    let mut d = a.spool();
    wait_for(Duration::from_secs(20), || exported(&a, "before"));

    // A new nested folder, created and filled at once.
    Rec::voice("nested", "100").write(&a.spool.join("2026/11/25/deep/deeper"));
    wait_for(Duration::from_secs(20), || exported(&a, "nested"));

    // XML renamed into place.
    Rec::voice("renamed", "100").write_renamed(&a.spool.join("2026/11/25"));
    wait_for(Duration::from_secs(20), || exported(&a, "renamed"));

    // XML before its media is closed: waits (grace 600 s), exported when the media lands.
    let late = Rec::voice("late", "100");
    let dir = a.spool.join("2026/11/25");
    fs::write(dir.join("late.xml"), late.xml()).unwrap();
    // The status file shows it waiting (it is flushed within a second of a change).
    wait_for(Duration::from_secs(10), || {
        let st: serde_json::Value =
            serde_json::from_slice(&fs::read(a.state.join("status.json")).unwrap()).unwrap();
        st["counts"]["incomplete"] == 1
    });
    assert!(!exported(&a, "late"), "must wait for the listed media");
    {
        use std::io::Write;
        let mut f = fs::File::create(dir.join("late.wav.part")).unwrap();
        f.write_all(b"RIFF audio of late").unwrap();
    }
    fs::rename(dir.join("late.wav.part"), dir.join("late.wav")).unwrap();
    wait_for(Duration::from_secs(20), || exported(&a, "late"));
    assert_eq!(
        fs::read(a.targets[0].join("2026/11/21/u-1/late/late.wav")).unwrap(),
        b"RIFF audio of late"
    );

    // Temp names are ignored.
    fs::write(dir.join(".hidden.xml"), Rec::voice("hidden", "100").xml()).unwrap();
    fs::write(dir.join("x.xml.tmp"), Rec::voice("tmpx", "100").xml()).unwrap();

    let (code, err) = d.stop();
    assert_eq!(code, 0, "SIGTERM stops cleanly: {err}");
    assert!(!exported(&a, "hidden") && !exported(&a, "tmpx"));
    assert_eq!(a.rows_with("export").len(), 4);
    assert_eq!(a.cmd(&["audit", "verify"]).status.code(), Some(0));
}

#[test]
fn sighup_reload_swaps_the_model() {
    let a = Appliance::new(1);
    a.write_config(&config(&a, 600));
    let mut d = a.spool();
    Rec::voice("before-reload", "200").write(&a.spool.join("a"));
    wait_for(Duration::from_secs(20), || a.rows_with("skip").len() == 1);
    let mut c = config(&a, 600);
    c.push_str(&user("u-2", &["200"], &["p"]));
    fs::write(&a.config, c).unwrap();
    d.signal("HUP");
    // The reload must be in force before the record arrives (slower under emulation).
    std::thread::sleep(patience(Duration::from_millis(500)));
    Rec::voice("after-reload", "200").write(&a.spool.join("a"));
    wait_for(Duration::from_secs(20), || {
        a.targets[0]
            .join("2026/11/21/u-2/after-reload/after-reload.xml")
            .exists()
    });
    // An invalid config on reload is refused; the model in force stays.
    fs::write(&a.config, "agent_id = \"\"\n").unwrap();
    d.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    Rec::voice("still", "200").write(&a.spool.join("a"));
    wait_for(Duration::from_secs(20), || {
        a.targets[0].join("2026/11/21/u-2/still/still.xml").exists()
    });
    let (code, _) = d.stop();
    assert_eq!(code, 0);
}

/// Voluntary context switches of a process (from /proc).
fn wakeups(pid: u32) -> u64 {
    let mut total = 0;
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let s = fs::read_to_string(t.unwrap().path().join("status")).unwrap_or_default();
        for l in s.lines() {
            if let Some(v) = l.strip_prefix("voluntary_ctxt_switches:") {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

#[test]
fn an_idle_agent_does_not_wake_up() {
    let a = Appliance::new(1);
    a.write_config(&config(&a, 600));
    let d = a.spool();
    // Startup done before counting (slower under emulation); the 3 s window is not scaled.
    std::thread::sleep(patience(Duration::from_millis(1500)));
    let w0 = wakeups(d.pid());
    std::thread::sleep(Duration::from_secs(3));
    let w1 = wakeups(d.pid());
    assert!(w1 - w0 <= 3, "idle agent woke up {} times in 3 s", w1 - w0);
}

trait SpawnExt {
    fn spool(&self) -> Daemon;
}

impl SpawnExt for Appliance {
    fn spool(&self) -> Daemon {
        self.spawn()
    }
}
