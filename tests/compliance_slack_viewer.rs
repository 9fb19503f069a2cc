//! CI check: a `--format slack` export opens in slack-export-viewer 4.0.0.
//!
//! Needs `slack-export-viewer` on PATH (or its path in
//! `SLACK_EXPORT_VIEWER`). Install (PyPI): on Python >= 3.12
//! `pip install slack-export-viewer==4.0.0`; on Python 3.11 (Debian
//! bookworm) `pip install --ignore-requires-python slack-export-viewer==4.0.0`
//! works: 4.0.0 declares `Requires-Python >=3.12` but runs on 3.11.
//!
//! Missing tool: under `CI=true` the test fails; otherwise it prints why and
//! passes as skipped. `EXPORTD_LANE=qemu` skips it (no Python inside the VM).

#[path = "fixtures/im/spool.rs"]
mod spool;

use std::path::PathBuf;
use std::process::Command;

use exportd::requests::compliance::{self, ExportRequest, Format, PlainOpener, RequestContext};
use exportd::time::Timestamp;

fn viewer() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SLACK_EXPORT_VIEWER") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("slack-export-viewer"))
        .find(|p| p.is_file())
}

fn collect_html(dir: &std::path::Path, out: &mut String) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_html(&p, out);
        } else if p.extension().is_some_and(|x| x == "html") {
            out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
}

#[test]
fn slack_export_renders_in_slack_export_viewer() {
    if std::env::var("EXPORTD_LANE").as_deref() == Ok("qemu") {
        println!("skipped: EXPORTD_LANE=qemu (no Python inside the VM)");
        return;
    }
    let Some(tool) = viewer() else {
        let why = "slack-export-viewer not found on PATH (pip install --ignore-requires-python slack-export-viewer==4.0.0)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why}");
        }
        println!("skipped: {why}");
        return;
    };

    let tmp = tempfile::tempdir().unwrap();
    let spool_dir = tmp.path().join("spool");
    std::fs::create_dir_all(&spool_dir).unwrap();
    spool::standard_spool(&spool_dir);
    let opener = PlainOpener;
    let users = spool::users();
    let ctx = RequestContext {
        spool_roots: vec![spool_dir],
        users: &users,
        opener: &opener,
        output_dir: tmp.path().join("archive"),
        now: Timestamp::parse_rfc3339("2026-11-25T12:00:00Z").unwrap(),
    };
    let req = ExportRequest {
        request_id: "r-slack-viewer".into(),
        time_from: Some("2026-11-20T00:00:00Z".into()),
        time_to: Some("2026-11-23T00:00:00Z".into()),
        target: "nas1".into(),
        users: None,
        modalities: None,
        attachments: true,
        format: Format::Slack,
    };
    let s = compliance::run(&req, &ctx, &mut |_| {}).unwrap();

    let html_dir = tmp.path().join("html");
    let out = Command::new(&tool)
        .arg("-z")
        .arg(&s.zip)
        .args(["--html-only", "--no-browser", "--show-dms", "-o"])
        .arg(&html_dir)
        .env("TZ", "UTC")
        .env("HOME", tmp.path())
        .current_dir(tmp.path())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", tool.display()));
    assert!(
        out.status.success(),
        "slack-export-viewer failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut html = String::new();
    collect_html(&html_dir, &mut html);
    for needle in [
        "Team update",          // team -> channel
        "Morning all",          // group -> mpim
        "Out today",            // group message only in Bob's record
        "Agreed at 99.75",      // direct -> dm
        "Final terms attached", // edited message, current text
        "Ann Trader",           // user names resolved from users.json
        "2026-11-21 09:30:00",  // TZ=UTC rendering of the ts
    ] {
        assert!(html.contains(needle), "{needle:?} not in the rendered HTML");
    }
    assert!(
        !html.contains("Partner room chatter"),
        "a team owned by an external leaked"
    );
}
