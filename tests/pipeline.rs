//! The core pipeline, end to end through the real binary in batch mode
//! (`run --until-idle`): matching, filters, layout, dual targets, bad input,
//! incomplete records, conflicts, the audit log.

mod common;

use std::fs;

use common::*;
use sha2::{Digest, Sha256};

fn policies_config(a: &Appliance) -> String {
    let mut c = a.head(1);
    c.push_str(
        r#"[[policies]]
id = "p-voice"
name = "Trader voice to NAS"
targets = ["t0"]
filters = { conversation_types = ["voice"], source_platforms = ["ipc_unigy", "bt_iptrade"], source_2n = "primary" }
settings = { file_extensions = ["wav"] }

[[policies]]
id = "p-all"
name = "Everything"
targets = ["t1"]
settings = { path_template = "{modality}/{platform}/{yyyy}{mm}{dd}{hh}/{user_id}/{id}" }

"#,
    );
    c.push_str(&user(
        "u-1",
        &["+12125550100", "sip:ann@corp.example", "TRD-0042"],
        &["p-voice", "p-all"],
    ));
    c.push_str(&user("u-2", &["+12125550111"], &[]));
    c
}

/// The sha256sum-style listing digest of a folder, computed independently.
fn folder_sha(dir: &std::path::Path) -> String {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut listing = String::new();
    for n in names {
        let h = hex::encode(Sha256::digest(fs::read(dir.join(&n)).unwrap()));
        listing.push_str(&format!("{h}  {n}\n"));
    }
    hex::encode(Sha256::digest(listing.as_bytes()))
}

#[test]
fn every_modality_filter_and_layout() {
    let a = Appliance::new(2);
    a.write_config(&policies_config(&a));
    let day = a.spool.join("2026/11/21");

    let mut r1 = Rec::voice("r1", "+1 (212) 555-0100");
    r1.files
        .push(("transcript".into(), "r1.vtr".into(), b"WEBVTT\n".to_vec()));
    r1.write(&day);
    let mut r2 = Rec::voice("r2", "tel:+1-212-555-0100");
    r2.secondary = true;
    r2.write(&day);
    let mut r3 = Rec::voice("r3", "SIP:Ann@Corp.Example");
    r3.modality = "video".into();
    r3.platform = "teams".into();
    r3.files = vec![("media".into(), "r3.mp4".into(), b"mp4 bytes".to_vec())];
    r3.write(&day);
    let mut r4 = Rec::voice("r4", "TRD-0042");
    r4.imported = true;
    r4.write(&day);
    let mut r5 = Rec::voice("r5", "TRD-0042");
    r5.platform = "bt_its".into();
    r5.write(&day);
    Rec::voice("r6", "+1 646 555 0000").write(&day);
    let mut r7 = Rec::voice("r7", "TRD-0042");
    r7.cdr_only = true;
    r7.files.clear();
    r7.write(&day);
    for (id, m, p, f) in [
        ("r8", "im", "symphony", "r8.im"),
        ("r9", "file_share", "sfb", "deal.xlsx"),
        ("r10", "screen", "screen_capture", "r10.mp4"),
        ("r11", "share", "teams", "r11.mp4"),
        ("r12", "sms", "genesys", "r12.txt"),
    ] {
        let mut r = Rec::voice(id, "mailto:ann@corp.example");
        r.modality = m.into();
        r.platform = p.into();
        r.files = vec![(
            "media".into(),
            f.into(),
            format!("content {id}").into_bytes(),
        )];
        r.write(&day);
    }
    Rec::voice("r13", "trd-0042").write(&day); // trader ids are case-sensitive
    Rec::voice("r14", "+12125550111").write(&a.spool.join("2026/11/22/deep/er")); // user without policies

    let before = tree_state(&a.spool);
    let out = a.run_until_idle();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(before, tree_state(&a.spool), "the spool must never change");

    // p-voice: only primary ipc_unigy voice (r1, r7), only .wav, metadata last.
    // r7 (cdr_only voice) is taken too: its metadata alone.
    assert_eq!(
        files_below(&a.targets[0]),
        vec![
            "2026/11/21/u-1/r1/r1.wav",
            "2026/11/21/u-1/r1/r1.xml",
            "2026/11/21/u-1/r7/r7.xml"
        ]
    );
    assert_eq!(
        fs::read(a.targets[0].join("2026/11/21/u-1/r1/r1.wav")).unwrap(),
        b"RIFF audio of r1"
    );
    assert_eq!(
        fs::read_to_string(a.targets[0].join("2026/11/21/u-1/r1/r1.xml")).unwrap(),
        r1.xml(),
        "metadata XML copied as recorded"
    );
    // p-all: everything of u-1 not imported/bt_its, under its template.
    let t1 = files_below(&a.targets[1]);
    for want in [
        "voice/ipc_unigy/2026112114/u-1/r1/r1.wav",
        "voice/ipc_unigy/2026112114/u-1/r1/r1.vtr",
        "voice/ipc_unigy/2026112114/u-1/r1/r1.xml",
        "voice/ipc_unigy/2026112114/u-1/r2/r2.wav",
        "video/teams/2026112114/u-1/r3/r3.mp4",
        "voice/ipc_unigy/2026112114/u-1/r7/r7.xml",
        "im/symphony/2026112114/u-1/r8/r8.im",
        "file_share/sfb/2026112114/u-1/r9/deal.xlsx",
        "screen/screen_capture/2026112114/u-1/r10/r10.mp4",
        "share/teams/2026112114/u-1/r11/r11.mp4",
        "sms/genesys/2026112114/u-1/r12/r12.txt",
    ] {
        assert!(t1.contains(&want.to_string()), "missing {want} in {t1:?}");
    }
    assert!(
        !t1.iter().any(|f| f.contains("/r4/")
            || f.contains("/r5/")
            || f.contains("/r6/")
            || f.contains("/r13/")
            || f.contains("/r14/")),
        "{t1:?}"
    );
    assert!(
        !t1.iter().any(|f| f.contains("exportd-tmp")),
        "no temp files: {t1:?}"
    );

    // Audit: one row per record, policy and target, for every outcome.
    let rows = a.audit_rows();
    let find = |id: &str, pol: &str, action: &str| {
        rows.iter()
            .filter(|r| r[1] == id && r[6] == pol && r[10] == action)
            .count()
    };
    assert_eq!(find("r1", "p-voice", "export"), 1);
    assert_eq!(find("r1", "p-all", "export"), 1);
    assert_eq!(find("r2", "p-voice", "skip"), 1);
    assert_eq!(find("r2", "p-all", "export"), 1);
    assert_eq!(find("r3", "p-voice", "skip"), 1);
    assert_eq!(find("r4", "", "skip"), 1);
    assert_eq!(find("r5", "", "skip"), 1);
    assert_eq!(find("r6", "", "skip"), 1);
    assert_eq!(find("r13", "", "skip"), 1);
    assert_eq!(find("r14", "", "skip"), 1);
    let code =
        |id: &str, pol: &str| rows.iter().find(|r| r[1] == id && r[6] == pol).unwrap()[11].clone();
    assert_eq!(code("r2", "p-voice"), "filter_source_2n");
    assert_eq!(code("r3", "p-voice"), "filter_conversation_type");
    assert_eq!(code("r4", ""), "imported");
    assert_eq!(code("r5", ""), "bt_its");
    assert_eq!(code("r6", ""), "no_user");
    assert_eq!(code("r14", ""), "no_policy");
    let r1v = rows
        .iter()
        .find(|r| r[1] == "r1" && r[6] == "p-voice")
        .unwrap();
    assert_eq!(r1v[2], "N-r1");
    assert_eq!(r1v[3], "2");
    assert_eq!(
        r1v[4],
        (b"RIFF audio of r1".len() + r1.xml().len()).to_string()
    );
    assert_eq!(r1v[5], day.display().to_string());
    assert_eq!(r1v[7], "Trader voice to NAS");
    assert_eq!(r1v[8], "fs");
    assert_eq!(r1v[9], "2026/11/21/u-1/r1");
    assert_eq!(r1v[13], folder_sha(&a.targets[0].join("2026/11/21/u-1/r1")));
    assert_eq!(a.cmd(&["audit", "verify"]).status.code(), Some(0));

    // A second run does nothing new.
    let n = rows.len();
    assert_eq!(a.run_until_idle().status.code(), Some(0));
    assert_eq!(a.audit_rows().len(), n, "a rerun must not export again");
}

#[test]
fn dual_targets_both_hold_the_record() {
    let a = Appliance::new(2);
    let mut c = a.head(1);
    c.push_str("[[policies]]\nid = \"p-dual\"\nname = \"Dual\"\ntargets = [\"t0\", \"t1\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p-dual"]));
    a.write_config(&c);
    Rec::voice("d1", "100").write(&a.spool.join("x"));
    assert_eq!(a.run_until_idle().status.code(), Some(0));
    for t in &a.targets {
        assert_eq!(
            files_below(t),
            vec!["2026/11/21/u-1/d1/d1.wav", "2026/11/21/u-1/d1/d1.xml"]
        );
    }
    let rows = a.rows_with("export");
    assert_eq!(rows.len(), 2);
    let mut kinds: Vec<_> = rows.iter().map(|r| r[9].clone()).collect();
    kinds.dedup();
    assert_eq!(kinds, vec!["2026/11/21/u-1/d1".to_string()]);
}

#[test]
fn bad_input_is_an_error_row_and_the_rest_goes_on() {
    let a = Appliance::new(1);
    let mut c = a.head(1);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);
    let d = a.spool.join("bad");
    fs::create_dir_all(&d).unwrap();
    fs::write(a.dir.path().join("secret"), b"root:x:0:0").unwrap();

    fs::write(d.join("malformed.xml"), "<recording><id>x</id>").unwrap();
    let good = Rec::voice("good", "100");
    fs::write(
        d.join("missing-field.xml"),
        good.xml().replace("<location>rec01</location>", ""),
    )
    .unwrap();
    fs::write(
        d.join("modality.xml"),
        good.xml()
            .replace(">voice<", ">hologram<")
            .replace(">good<", ">g2<"),
    )
    .unwrap();
    let mut bytes = good.xml().into_bytes();
    let at = bytes.len() - 30;
    bytes[at] = 0xff;
    fs::write(d.join("not-utf8.xml"), bytes).unwrap();
    fs::write(d.join("entity.xml"), "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><recording><id>&x;</id></recording>").unwrap();
    let mut trav = Rec::voice("trav", "100");
    trav.files = vec![("media".into(), "../../secret".into(), Vec::new())];
    fs::write(d.join("trav.xml"), trav.xml()).unwrap();
    let mut abs = Rec::voice("abs", "100");
    abs.files = vec![(
        "media".into(),
        a.dir.path().join("secret").display().to_string(),
        Vec::new(),
    )];
    fs::write(d.join("abs.xml"), abs.xml()).unwrap();
    let mut link = Rec::voice("link", "100");
    link.files = vec![("media".into(), "link.wav".into(), Vec::new())];
    std::os::unix::fs::symlink(a.dir.path().join("secret"), d.join("link.wav")).unwrap();
    fs::write(d.join("link.xml"), link.xml()).unwrap();
    std::os::unix::fs::symlink(a.dir.path().join("secret"), d.join("evil.xml")).unwrap();
    good.write(&d);

    let out = a.run_until_idle();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for name in [
        "malformed.xml",
        "missing-field.xml",
        "modality.xml",
        "not-utf8.xml",
        "entity.xml",
        "trav.xml",
        "abs.xml",
        "link.xml",
    ] {
        assert!(stderr.contains(name), "stderr must name {name}: {stderr}");
    }
    assert_eq!(
        files_below(&a.targets[0]),
        vec![
            "2026/11/21/u-1/good/good.wav",
            "2026/11/21/u-1/good/good.xml"
        ]
    );
    let errors = a.rows_with("error");
    assert_eq!(errors.len(), 8, "{errors:?}");
    let all = a
        .audit_rows()
        .iter()
        .map(|r| r.join(";"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !all.contains("root:x"),
        "nothing outside the record is read"
    );
    for r in &errors {
        assert!(!r[12].is_empty(), "an error row says why: {r:?}");
    }
    assert!(
        errors
            .iter()
            .any(|r| r[11] == "unsafe_path" && r[1] == "link"),
        "{errors:?}"
    );
    // A `..` or absolute path in <files> is the documented unsafe_path.
    for name in ["trav.xml", "abs.xml"] {
        let row = errors
            .iter()
            .find(|r| r[12].contains(name))
            .unwrap_or_else(|| panic!("{name}: {errors:?}"));
        assert_eq!(row[11], "unsafe_path", "{row:?}");
    }
}

#[test]
fn file_extensions_leaving_out_the_media_is_said_in_the_export_row() {
    let a = Appliance::new(1);
    let mut c = a.head(1);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\nsettings = { file_extensions = [\"vtr\"] }\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);
    let day = a.spool.join("d");
    let mut r = Rec::voice("m1", "100");
    r.files
        .push(("transcript".into(), "m1.vtr".into(), b"WEBVTT\n".to_vec()));
    r.write(&day);
    let mut kept = Rec::voice("m2", "100");
    kept.files = vec![("transcript".into(), "m2.vtr".into(), b"WEBVTT\n".to_vec())];
    kept.write(&day);
    let out = a.run_until_idle();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = a.rows_with("export");
    let desc = |id: &str| {
        rows.iter()
            .find(|r| r[1] == id)
            .map(|r| r[12].clone())
            .unwrap_or_else(|| panic!("{id}: {rows:?}"))
    };
    assert_eq!(
        desc("m1"),
        "not exported: m1.wav (media), left out by file_extensions [vtr] (the record's media is not in this folder)"
    );
    assert_eq!(desc("m2"), "", "nothing left out, nothing said");
}

#[test]
fn missing_file_is_waited_for_then_reported_then_exported_when_it_appears() {
    let a = Appliance::new(1);
    let mut c = a.head(1);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);
    let r = Rec::voice("late", "100");
    let d = a.spool.join("d");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("late.xml"), r.xml()).unwrap();
    let t0 = std::time::Instant::now();
    let out = a.run_until_idle();
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(900),
        "the grace is waited for"
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("late.wav"));
    let e = a.rows_with("error");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0][11], "incomplete");
    assert!(files_below(&a.targets[0]).is_empty());
    fs::write(d.join("late.wav"), b"finally").unwrap();
    assert_eq!(a.run_until_idle().status.code(), Some(0));
    assert_eq!(
        fs::read(a.targets[0].join("2026/11/21/u-1/late/late.wav")).unwrap(),
        b"finally"
    );
}

#[test]
fn a_final_name_is_never_overwritten() {
    let a = Appliance::new(1);
    let mut c = a.head(1);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);
    let folder = a.targets[0].join("2026/11/21/u-1/dup");
    fs::create_dir_all(&folder).unwrap();
    fs::write(folder.join("dup.wav"), b"somebody else's bytes").unwrap();
    Rec::voice("dup", "100").write(&a.spool.join("a"));
    let out = a.run_until_idle();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        fs::read(folder.join("dup.wav")).unwrap(),
        b"somebody else's bytes"
    );
    assert!(
        !folder.join("dup.xml").exists(),
        "an incomplete folder has no metadata XML"
    );
    let e = a.rows_with("error");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0][11], "conflict");

    // The same bytes already there is a no-op.
    fs::write(folder.join("dup.wav"), b"RIFF audio of dup").unwrap();
    let mut c2 = fs::read_to_string(&a.config).unwrap();
    c2.push_str("# touched to change the file\n");
    fs::write(&a.config, c2).unwrap();
    // A fresh state_dir would be needed to retry the failed record in batch
    // mode; here the record is retried because failures are not journaled as done.
    assert_eq!(a.run_until_idle().status.code(), Some(0));
    assert!(folder.join("dup.xml").exists());
}

#[test]
fn audit_verify_detects_a_one_byte_tamper() {
    let a = Appliance::new(1);
    let mut c = a.head(1);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);
    for i in 0..5 {
        Rec::voice(&format!("a{i}"), "100").write(&a.spool.join("x"));
    }
    assert_eq!(a.run_until_idle().status.code(), Some(0));
    let ok = a.cmd(&["audit", "verify"]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let f = fs::read_dir(a.state.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("audit-")
        })
        .unwrap();
    let mut b = fs::read(&f).unwrap();
    let text = String::from_utf8(b.clone()).unwrap();
    let third_line = text.lines().take(3).map(|l| l.len() + 1).sum::<usize>() + 30;
    b[third_line] ^= 0x01;
    fs::write(&f, &b).unwrap();
    let bad = a.cmd(&["audit", "verify"]);
    assert_eq!(bad.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(
        msg.contains(&format!("{}:4", f.display())),
        "names file and line: {msg}"
    );
}

#[test]
fn check_config_reports_every_problem() {
    let a = Appliance::new(1);
    let mut c = a.head(1);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"nope\"]\nsettings = { path_template = \"{yyyy}/{bogus}\" }\n\n");
    c.push_str(&user("u-1", &["+1 212 555 0100"], &["p"]));
    c.push_str(&user("u-2", &["tel:+12125550100"], &["p"]));
    a.write_config(&c);
    let out = a.cmd(&["check-config"]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("unknown target") && e.contains("bogus") && e.contains("assigned to both"),
        "{e}"
    );
    let mut c = a.head(1);
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\n\n");
    c.push_str(&user("u-1", &["100"], &["p"]));
    a.write_config(&c);
    let out = a.cmd(&["check-config"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An agent upgraded over a `snapshot.bin` of an older format (here
/// `EXSNAP02`, before the mail index) compiles the model again and exports
/// as before: the snapshot is a cache, never a reason to stop.
#[test]
fn a_snapshot_of_an_older_format_is_compiled_again() {
    let a = Appliance::new(2);
    a.write_config(&policies_config(&a));
    let day = a.spool.join("2026/11/21");
    Rec::voice("s1", "+12125550100").write(&day);
    let out = a.run_until_idle();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap = a.state.join("snapshot.bin");
    let mut bytes = fs::read(&snap).unwrap();
    assert_eq!(&bytes[..8], b"EXSNAP03");
    bytes[..8].copy_from_slice(b"EXSNAP02");
    fs::write(&snap, &bytes).unwrap();
    Rec::voice("s2", "TRD-0042").write(&day);
    let out = a.run_until_idle();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(&fs::read(&snap).unwrap()[..8], b"EXSNAP03");
    let exported: Vec<String> = a
        .rows_with("export")
        .iter()
        .map(|r| r.join(","))
        .filter(|r| r.contains("s2"))
        .collect();
    assert_eq!(
        exported.len(),
        2,
        "s2 matched through the recompiled snapshot: {exported:?}"
    );
}
