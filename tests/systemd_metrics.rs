//! systemd integration (READY, STATUS, WATCHDOG over `$NOTIFY_SOCKET`; a
//! stalled main loop stops the pings), the node_exporter metrics file, and
//! what an operator sees when something is stuck: per-target health in
//! `status` and the metrics, `status --pending`, degraded modes in the
//! `STATUS=` line, an outage logged once, counters that say what is true now.

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
    // Under emulation every span below is `lane_slack()` times longer (the
    // stall too), so the order of events is checked, not a host's timing.
    let k = lane_slack();
    let ms = |n: u64| Duration::from_millis(n) * k;
    let sock_path = a.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let child = Command::new(exe())
        .args(["run", "--config"])
        .arg(&a.config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env("EXPORTD_TEST_STALL_ON_USR1", (2 * k).to_string())
        .env("EXPORTD_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut d = Daemon::new(child);
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
    recv_for(ms(2500), &mut msgs);
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
    recv_for(ms(3500), &mut msgs);
    let during = msgs
        .iter()
        .filter(|m| {
            m.1 == "WATCHDOG=1" && m.0 > stalled_at + ms(300) && m.0 < stalled_at + ms(1900)
        })
        .count();
    assert_eq!(during, 0, "a stuck loop must not ping: {msgs:?}");
    let after = msgs
        .iter()
        .filter(|m| m.1 == "WATCHDOG=1" && m.0 > stalled_at + ms(2300))
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
            t0.elapsed() < patience(Duration::from_secs(30)),
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
    // Nothing pending: no first-seen time (an alert on `time() - it` stays quiet).
    assert!(
        get("exportd_oldest_pending_first_seen_timestamp_seconds").is_none(),
        "{text}"
    );
    assert!(
        get("exportd_last_export_timestamp_seconds").unwrap() > 1.7e9,
        "{text}"
    );
    assert_eq!(get("exportd_target_up{target=\"t0\"}"), Some(1.0), "{text}");
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

fn metrics(a: &Appliance) -> Vec<(String, f64)> {
    parse_prom(&fs::read_to_string(a.state.join("metrics/exportd.prom")).unwrap_or_default())
}

fn metric(m: &[(String, f64)], k: &str) -> Option<f64> {
    m.iter().find(|(n, _)| n == k).map(|x| x.1)
}

fn exported_ids(a: &Appliance) -> Vec<String> {
    a.rows_with("export").iter().map(|r| r[0].clone()).collect()
}

/// `status --pending --json`, the `pending` object.
fn pending_json(a: &Appliance) -> serde_json::Value {
    let out = a.cmd(&["status", "--pending", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["pending"].clone()
}

fn waits_of<'a>(p: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    p["records"].as_array()?.iter().find(|r| {
        r["path"]
            .as_str()
            .is_some_and(|x| x.ends_with(&format!("/{id}.xml")))
    })
}

/// A folder target remounted read-only (a tmpfs: needs root; skipped with
/// the reason elsewhere, required under CI=true): `status`, `status
/// --pending` and the metrics say which target fails, since when and why;
/// the log says it once, not once per record and retry; a record whose
/// media is still being written is listed as such; when the target is
/// writable again everything drains, the target is ok and the counters and
/// timestamps move on.
#[test]
fn a_read_only_target_shows_in_status_pending_and_metrics_and_is_logged_once() {
    let test = "a_read_only_target_shows_in_status_pending_and_metrics_and_is_logged_once";
    let a = Appliance::new(1);
    let Some(m) = fault::SmallFs::mount(test, &a.targets[0], "16m") else {
        return;
    };
    let mut c = a.head(600);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);
    let log = a.dir.path().join("daemon.log");
    let mut d = a.spawn_logged(&log);
    let day = a.spool.join("2026/12/07");
    Rec::voice("ok-1", "100").write(&day);
    wait_until("ok-1 exported", Duration::from_secs(30), &log, || {
        exported_ids(&a).len() == 1
    });
    wait_until(
        "metrics show the export",
        Duration::from_secs(10),
        &log,
        || metric(&metrics(&a), "exportd_last_export_timestamp_seconds").is_some(),
    );
    let first_export = metric(&metrics(&a), "exportd_last_export_timestamp_seconds").unwrap();

    remount(&m.path, "ro");
    Rec::voice("ro-1", "100").write(&day);
    Rec::voice("ro-2", "100").write(&day);
    // A record whose media the recorder still writes (open, not closed).
    let mut media = fs::File::create(day.join("busy.wav")).unwrap();
    std::io::Write::write_all(&mut media, b"RIFF half").unwrap();
    fs::write(day.join("busy.xml"), Rec::voice("busy", "100").xml()).unwrap();
    wait_until(
        "t0 failing with 2 records pending",
        Duration::from_secs(30),
        &log,
        || {
            a.status_json().is_some_and(|s| {
                s["targets"]["t0"]["state"] == "failing" && s["targets"]["t0"]["pending"] == 2
            })
        },
    );
    let st = a.status_json().unwrap();
    let t0 = &st["targets"]["t0"];
    let err = &t0["last_error"];
    assert_eq!(err["code"], "target_unavailable", "{st}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("Read-only file system"),
        "the reason is shown: {st}"
    );
    assert!(t0["since"].as_str().unwrap().starts_with("20"), "{st}");
    assert_eq!(st["degraded"][0]["component"], "target", "{st}");
    assert_eq!(st["degraded"][0]["subject"], "t0", "{st}");

    // What each record waits on.
    wait_until(
        "busy listed as being written",
        Duration::from_secs(10),
        &log,
        || {
            waits_of(&pending_json(&a), "busy")
                .is_some_and(|r| r["waits_on"] == "file_being_written")
        },
    );
    let p = pending_json(&a);
    assert_eq!(p["total"], 3, "{p}");
    for id in ["ro-1", "ro-2"] {
        let r = waits_of(&p, id).unwrap_or_else(|| panic!("{id} not listed: {p}"));
        assert_eq!(r["waits_on"], "target", "{p}");
        assert_eq!(r["targets"], serde_json::json!(["t0"]), "{p}");
        assert_eq!(r["record"], id, "{p}");
        assert!(r["detail"].as_str().unwrap().contains("Read-only"), "{p}");
    }
    let busy = waits_of(&p, "busy").unwrap();
    assert!(
        busy["files"][0].as_str().unwrap().ends_with("/busy.wav"),
        "{p}"
    );
    let text = a.cmd(&["status", "--pending"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.starts_with("3 records pending"), "{text}");
    assert!(text.contains("target t0"), "{text}");
    assert!(text.contains("file_being_written"), "{text}");
    let text = a.cmd(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("DEGRADED:\n  target t0: failing (target_unavailable)"),
        "{text}"
    );
    assert!(text.contains("  t0: failing since "), "{text}");

    // (The metrics file is written just after the status file.)
    wait_until(
        "metrics show t0 down",
        Duration::from_secs(10),
        &log,
        || {
            let mm = metrics(&a);
            metric(&mm, "exportd_target_up{target=\"t0\"}") == Some(0.0)
                && metric(&mm, "exportd_target_pending_records{target=\"t0\"}") == Some(2.0)
        },
    );
    let mm = metrics(&a);
    assert_eq!(metric(&mm, "exportd_target_up{target=\"t0\"}"), Some(0.0));
    assert_eq!(
        metric(&mm, "exportd_target_pending_records{target=\"t0\"}"),
        Some(2.0)
    );
    assert!(
        metric(
            &mm,
            "exportd_errors_total{target=\"t0\",code=\"target_unavailable\"}"
        )
        .unwrap()
            >= 2.0
    );
    assert_eq!(
        metric(&mm, "exportd_degraded{component=\"target\",subject=\"t0\"}"),
        Some(1.0)
    );
    let oldest = metric(&mm, "exportd_oldest_pending_first_seen_timestamp_seconds").unwrap();
    // Retries at about 1, 2 and 4 s: the outage is logged once.
    std::thread::sleep(Duration::from_secs(5));
    let oldest_later = metric(
        &metrics(&a),
        "exportd_oldest_pending_first_seen_timestamp_seconds",
    );
    assert_eq!(oldest_later, Some(oldest), "a first-seen time, not an age");
    let logged = fs::read_to_string(&log).unwrap();
    let outage: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("target t0 is failing"))
        .collect();
    assert_eq!(outage.len(), 1, "the outage is logged once:\n{logged}");
    assert!(outage[0].contains("Read-only file system"), "{logged}");
    let per_record = logged
        .lines()
        .filter(|l| l.contains("WARN") && (l.contains("ro-1") || l.contains("ro-2")))
        .count();
    assert!(
        per_record <= 1,
        "no WARN per record and retry (only the outage's):\n{logged}"
    );

    remount(&m.path, "rw");
    drop(media);
    wait_until(
        "everything exported once writable",
        Duration::from_secs(60),
        &log,
        || exported_ids(&a).len() == 4,
    );
    wait_until("t0 ok again", Duration::from_secs(10), &log, || {
        a.status_json()
            .is_some_and(|s| s["targets"]["t0"]["state"] == "ok" && s["backlog"] == 0)
    });
    let st = a.status_json().unwrap();
    assert_eq!(st["degraded"], serde_json::json!([]), "{st}");
    assert_eq!(st["counts"]["exported"], 4, "{st}");
    assert_eq!(st["counts"]["failed"], 0, "{st}");
    wait_until("metrics show t0 up", Duration::from_secs(10), &log, || {
        metric(&metrics(&a), "exportd_target_up{target=\"t0\"}") == Some(1.0)
    });
    let mm = metrics(&a);
    assert_eq!(metric(&mm, "exportd_target_up{target=\"t0\"}"), Some(1.0));
    assert!(metric(&mm, "exportd_oldest_pending_first_seen_timestamp_seconds").is_none());
    assert!(metric(&mm, "exportd_last_export_timestamp_seconds").unwrap() > first_export);
    let logged = fs::read_to_string(&log).unwrap();
    assert_eq!(
        logged
            .lines()
            .filter(|l| l.contains("target t0 works again"))
            .count(),
        1,
        "{logged}"
    );
    assert_eq!(pending_json(&a)["total"], 0);
    let (code, _) = d.stop();
    assert_eq!(code, 0);
    drop(m);
}

fn remount(at: &std::path::Path, opts: &str) {
    for _ in 0..50 {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(at)
            .status()
            .unwrap()
            .success();
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("remount {opts} of {} failed", at.display());
}

/// A record reported incomplete (counted failed, shown in last errors) and
/// exported once its file lands counts as exported: `failed` goes back to
/// 0 and its error leaves `last errors`.
#[test]
fn counters_say_what_is_true_now_after_a_failure_then_a_success() {
    let a = Appliance::new(1);
    // (and the metrics go where `metrics_file` says)
    let prom = a.dir.path().join("textfile/exportd.prom");
    let c = config(&a).replacen(
        "incomplete_grace_s = 1\n",
        &format!(
            "incomplete_grace_s = 1\nmetrics_file = \"{}\"\n",
            prom.display()
        ),
        1,
    );
    a.write_config(&c);
    let log = a.dir.path().join("daemon.log");
    let mut d = a.spawn_logged(&log);
    let dir = a.spool.join("late");
    let rec = Rec::voice("late", "100");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("late.xml"), rec.xml()).unwrap();
    wait_until("reported incomplete", Duration::from_secs(30), &log, || {
        a.status_json().is_some_and(|s| {
            s["counts"]["failed"] == 1
                && s["last_errors"].as_array().is_some_and(|e| {
                    e.iter()
                        .any(|e| e["code"] == "incomplete" && e["record"] == "late")
                })
        })
    });
    fs::write(dir.join("late.wav"), b"RIFF late audio").unwrap();
    wait_until(
        "exported, failure gone",
        Duration::from_secs(30),
        &log,
        || {
            a.status_json().is_some_and(|s| {
                s["counts"]["exported"] == 1
                    && s["counts"]["failed"] == 0
                    && s["last_errors"].as_array().is_some_and(|e| e.is_empty())
            })
        },
    );
    wait_until(
        "metrics file updated",
        Duration::from_secs(10),
        &log,
        || fs::read_to_string(&prom).is_ok_and(|t| t.contains("exportd_failed_records 0\n")),
    );
    assert!(
        !a.state.join("metrics").exists(),
        "not in the default place"
    );
    let (code, _) = d.stop();
    assert_eq!(code, 0);
}

/// A spool root that is missing and a central whose TLS files are missing:
/// `status`, the metrics and the sd_notify `STATUS=` line say so; once the
/// root appears, the spool part clears.
#[test]
fn degraded_modes_show_in_status_metrics_and_the_notify_status() {
    let a = Appliance::new(1);
    let missing = a.dir.path().join("later/spool");
    let mut c = config(&a).replace(
        &format!("spool = [\"{}\"]", a.spool.display()),
        &format!("spool = [\"{}\"]", missing.display()),
    );
    let no = a.dir.path().join("none");
    c = c.replacen(
        "\n[[targets]]",
        &format!(
            "\n[central]\nurl = \"https://127.0.0.1:9\"\nca = \"{0}/ca.pem\"\nclient_cert = \"{0}/a.pem\"\nclient_key = \"{0}/a.key\"\n\n[[targets]]",
            no.display()
        ),
        1,
    );
    a.write_config(&c);
    let sock_path = a.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let child = Command::new(exe())
        .args(["run", "--config"])
        .arg(&a.config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("EXPORTD_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut d = Daemon::new(child);
    let mut buf = [0u8; 1024];
    let t0 = Instant::now();
    let line = loop {
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if m.starts_with("STATUS=") && m.contains("DEGRADED") && m.contains("spool root") {
                break m;
            }
        }
        assert!(
            t0.elapsed() < patience(Duration::from_secs(20)),
            "no degraded STATUS= line"
        );
    };
    assert!(line.contains("central disabled since"), "{line}");
    assert!(
        line.contains(&format!("spool root {} unavailable", missing.display())),
        "{line}"
    );
    let st = a.status_json().unwrap();
    let comps: Vec<&str> = st["degraded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["component"].as_str().unwrap())
        .collect();
    assert_eq!(comps, ["central", "spool"], "{st}");
    assert!(
        st["degraded"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("ca.pem"),
        "{st}"
    );
    let text = String::from_utf8_lossy(&a.cmd(&["status"]).stdout).into_owned();
    assert!(
        text.contains("DEGRADED:\n  central: central is configured but disabled"),
        "{text}"
    );
    assert!(
        text.contains(&format!("  spool {}: ", missing.display())),
        "{text}"
    );
    wait_for(Duration::from_secs(10), || {
        metric(
            &metrics(&a),
            "exportd_degraded{component=\"central\",subject=\"\"}",
        )
        .is_some()
    });
    let mm = metrics(&a);
    let spool = format!(
        "exportd_degraded{{component=\"spool\",subject=\"{}\"}}",
        missing.display()
    );
    assert_eq!(metric(&mm, &spool), Some(1.0));
    assert_eq!(
        metric(&mm, "exportd_degraded{component=\"central\",subject=\"\"}"),
        Some(1.0)
    );
    // The root appears: exported from, no longer degraded.
    Rec::voice("r1", "100").write(&missing.join("d"));
    wait_for(Duration::from_secs(30), || {
        a.status_json().is_some_and(|s| {
            s["counts"]["exported"] == 1 && s["degraded"].as_array().is_some_and(|d| d.len() == 1)
        })
    });
    // (The metrics file is written just after the status file.)
    wait_for(Duration::from_secs(10), || {
        metric(&metrics(&a), &spool).is_none()
    });
    let (code, _) = d.stop();
    assert_eq!(code, 0);
}

/// `exportd top` into a pipe: one plain snapshot per interval (no escape
/// codes) with the throughput and the target table; `--json`: one JSON
/// object per line.
#[test]
fn top_prints_plain_snapshots_into_a_pipe_and_json_lines() {
    use std::io::BufRead;
    let a = Appliance::new(1);
    a.write_config(&config(&a));
    let log = a.dir.path().join("daemon.log");
    let mut d = a.spawn_logged(&log);
    Rec::voice("t-1", "100").write(&a.spool.join("d"));
    wait_until("exported", Duration::from_secs(30), &log, || {
        a.status_json()
            .is_some_and(|s| s["counts"]["exported"] == 1 && s["targets"]["t0"]["state"] == "ok")
    });
    let lines = |json: bool, want: usize| -> Vec<String> {
        let mut cmd = Command::new(exe());
        cmd.args(["top", "--interval", "0.2", "--config"])
            .arg(&a.config);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut got = Vec::new();
        let mut snapshots = 0;
        for l in out.lines() {
            let l = l.unwrap();
            if json || l.starts_with("exportd top:") {
                snapshots += 1;
            }
            if snapshots > want {
                break;
            }
            got.push(l);
        }
        let _ = child.kill();
        let _ = child.wait();
        got
    };
    let text = lines(false, 2).join("\n");
    assert!(
        !text.contains('\x1b'),
        "no escape codes into a pipe: {text:?}"
    );
    assert_eq!(
        text.matches("exportd top: agent it (running").count(),
        2,
        "{text}"
    );
    assert!(
        text.contains("throughput  0.0 records/s"),
        "rates from the 2nd snapshot: {text}"
    );
    assert!(
        text.contains("totals      exported 1, skipped 0, failed now 0"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("t0 "))
        .expect("target row");
    assert_eq!(row.split_whitespace().nth(1), Some("ok"), "{text}");
    let json = lines(true, 2);
    assert_eq!(json.len(), 2, "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json[1]).unwrap();
    assert_eq!(v["targets"]["t0"]["state"], "ok", "{v}");
    assert_eq!(v["counts"]["exported"], 1, "{v}");
    assert!(v["records_per_s"].is_number(), "{v}");
    let (code, _) = d.stop();
    assert_eq!(code, 0);
}

/// `run --until-idle --log-format json`: the log lines carry the record id
/// and its path as separate fields, a rejection says why in the line itself,
/// and the run ends with a JSON summary.
#[test]
fn until_idle_in_json_mode_logs_fields_and_ends_with_a_json_summary() {
    let a = Appliance::new(1);
    a.write_config(&config(&a));
    let dir = a.spool.join("d");
    Rec::voice("good", "100").write(&dir);
    let bad = Rec::voice("bad", "100");
    bad.write(&dir);
    let xml = bad
        .xml()
        .replace("  <source_caller_id>+442079460958</source_caller_id>\n", "");
    fs::write(dir.join("bad.xml"), xml).unwrap();
    let out = Command::new(exe())
        .args(["run", "--until-idle", "--log-format", "json", "--config"])
        .arg(&a.config)
        .env("EXPORTD_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let exported = lines
        .iter()
        .find(|v| v["fields"]["message"] == "exported")
        .expect("an export line");
    assert_eq!(exported["fields"]["record"], "good", "{exported}");
    assert!(
        exported["fields"]["path"]
            .as_str()
            .unwrap()
            .ends_with("/d/good.xml"),
        "{exported}"
    );
    assert_eq!(exported["fields"]["target"], "t0", "{exported}");
    let rejected = lines
        .iter()
        .find(|v| v["fields"]["code"] == "bad_metadata")
        .expect("a rejection line");
    let msg = rejected["fields"]["message"].as_str().unwrap();
    assert!(msg.starts_with("rejected (bad_metadata): "), "{rejected}");
    assert!(
        msg.contains("source_caller_id"),
        "the reason is in the line: {rejected}"
    );
    assert!(
        rejected["fields"]["path"]
            .as_str()
            .unwrap()
            .ends_with("/d/bad.xml")
    );
    let sum = &lines.last().unwrap()["summary"];
    assert_eq!(sum["records"], 2, "{err}");
    assert_eq!(sum["exported"], 1, "{err}");
    assert_eq!(sum["failed"], 1, "{err}");
    assert!(
        sum["failures"][0]
            .as_str()
            .unwrap()
            .contains("source_caller_id"),
        "{err}"
    );
}
