//! `exportd check-config` as an operator runs it: every missing or unsafe
//! file named at once (errors exit 1, warnings exit 0), and `--probe` on
//! folder targets (a mounted one is written and left clean, an unmounted
//! one fails). S3 probes are in `s3_moto.rs`, central's in
//! `bundle_central.rs`; the checks one by one in `src/preflight/tests.rs`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::*;

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn policy(a: &Appliance, extra_targets: &str, settings: &str) -> String {
    let mut c = a.head(1);
    c.push_str(extra_targets);
    c.push_str(&format!(
        "[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\nsettings = {{ {settings} }}\n\n"
    ));
    c.push_str(&user("u-1", &["100"], &["p"]));
    c
}

#[test]
fn every_missing_or_unsafe_file_is_named_at_once() {
    let a = Appliance::new(1);
    let p = |n: &str| a.dir.path().join(n);
    let s3 = format!(
        "[[targets]]\nid = \"s3a\"\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:9\"\nregion = \"us-east-1\"\nbucket = \"b\"\naccess_key_id = \"AK\"\nsecret_file = \"{}\"\nca = \"{}\"\n\n",
        p("s3a.secret").display(),
        p("s3-ca.pem").display()
    );
    let mut c = policy(&a, &s3, "decrypt = true");
    c = c.replacen(
        "[[targets]]",
        &format!(
            "[central]\nurl = \"https://127.0.0.1:9\"\nca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n\n[[targets]]",
            p("central-ca.pem").display(),
            p("agent.pem").display(),
            p("agent.key").display()
        ),
        1,
    );
    a.write_config(&c);
    fs::write(a.keys.join("rec.key"), "AGE-SECRET-KEY-1 placeholder\n").unwrap();
    fs::set_permissions(a.keys.join("rec.key"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::remove_dir(&a.spool).unwrap();

    let out = a.cmd(&["check-config"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    for (needle, file) in [
        ("error: target \"s3a\": secret_file", "s3a.secret"),
        ("error: target \"s3a\": ca", "s3-ca.pem"),
        ("error: [central] ca", "central-ca.pem"),
        ("error: [central] client_cert", "agent.pem"),
        ("error: [central] client_key", "agent.key"),
        ("error: age identity", "rec.key"),
        ("warning: spool root", "spool"),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(needle) && l.contains(file)),
            "{needle} {file}:\n{stderr}"
        );
    }
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(stderr.contains("not ready"), "{stderr}");
    assert!(!stdout.contains("OK"), "{stdout}");

    // Fixed, but the secret readable by others: a warning, exit 0.
    fs::write(p("s3a.secret"), "SECRET\n").unwrap();
    fs::set_permissions(p("s3a.secret"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::create_dir(&a.spool).unwrap();
    fs::remove_file(a.keys.join("rec.key")).unwrap();
    a.write_config(&policy(
        &a,
        &s3.replace(&format!("ca = \"{}\"\n", p("s3-ca.pem").display()), ""),
        "",
    ));
    let out = a.cmd(&["check-config"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: target \"s3a\": secret_file {} has mode 0644",
            p("s3a.secret").display()
        )) && stderr.contains(&format!("chmod 600 {}", p("s3a.secret").display())),
        "{stderr}"
    );
    assert!(stdout.contains("OK"), "{stdout}");
}

#[test]
fn state_dir_that_cannot_be_written_fails() {
    let a = Appliance::new(1);
    // A file where the state folder should be: `run` could never lock it.
    fs::write(&a.state, "").unwrap();
    a.write_config(&policy(&a, "", ""));
    let out = a.cmd(&["check-config"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: state_dir {} is not a folder",
            a.state.display()
        )),
        "{stderr}"
    );
}

#[test]
fn probe_writes_and_cleans_a_mounted_folder_and_fails_an_unmounted_one() {
    let a = Appliance::new(2);
    let mut c = a.head(1);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\", \"t1\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);
    let init = a.cmd(&["target", "init"]);
    assert_eq!(init.status.code(), Some(0), "{}", text(&init).1);

    let out = a.cmd(&["check-config", "--probe"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    for t in ["t0", "t1"] {
        assert!(
            stdout.contains(&format!(
                "probe target {t} (fs): ok: probe file written, fsynced and removed"
            )),
            "{stdout}"
        );
    }
    for t in &a.targets {
        let tmp = t.join(".exportd-tmp");
        assert_eq!(
            fs::read_dir(&tmp).unwrap().count(),
            0,
            "nothing left in {tmp:?}"
        );
    }

    // t1's volume "unmounted": the bare mount point has no marker.
    fs::remove_file(a.targets[1].join(".exportd-target")).unwrap();
    fs::remove_dir(a.targets[1].join(".exportd-tmp")).unwrap();
    let out = a.cmd(&["check-config", "--probe"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("probe target t0 (fs): ok"), "{stdout}");
    assert!(
        stdout.contains("probe target t1 (fs): FAILED: target t1:")
            && stdout.contains("no .exportd-target marker (volume not mounted?)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: target \"t1\""),
        "without --probe it is a warning: {stderr}"
    );
    assert_eq!(
        fs::read_dir(&a.targets[1]).unwrap().count(),
        0,
        "nothing written to an unmounted target"
    );
}
