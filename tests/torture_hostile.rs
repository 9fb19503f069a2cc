//! Hostile input in the spool, with the daemon running: entity expansion and
//! external entities, a 1 GiB (sparse) XML, NUL bytes and traversal in file
//! names and template fields, symlinks to /etc/shadow, a zip bomb `.im`.
//! Each refused record is an error row, nothing outside the target root is
//! written, no secret is copied, and the agent keeps going.

mod common;

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

const SHADOW_MARK: &str = "root:";

fn config(a: &Appliance) -> String {
    let mut c = a.head(600);
    // A template using every field the recorder controls.
    c.push_str("[[policies]]\nid = \"p\"\nname = \"P\"\ntargets = [\"t0\"]\nsettings = { path_template = \"{location}/{extension}/{platform}/{user_id}/{id}\" }\n\n");
    c.push_str(&user("u-1", &["100", "../../../x"], &["p"]));
    c
}

fn head_xml(id: &str) -> String {
    format!(
        "<recording><id>{id}</id><modality_id>voice</modality_id><source_platform>sip</source_platform><native_id>n</native_id><native_call_id>c</native_call_id><location>rec01</location><start_time>2026.11.21 14:03:07.120</start_time><end_time>2026.11.21 14:04:00.000</end_time><recorded_extension>100</recorded_extension><source_caller_id>1</source_caller_id>"
    )
}

/// A deflate stream of `mib` MiB of zeros built from one repeated sync-flushed
/// block (cheap to make, inflates to `mib` MiB), and a ZIP around it whose
/// headers claim `claimed` bytes.
fn zip_bomb(mib: usize, claimed: u32) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let zeros = vec![0u8; 1 << 20];
    let mut c = Compress::new(Compression::best(), false);
    let mut block = Vec::with_capacity(1 << 16);
    c.compress_vec(&zeros, &mut block, FlushCompress::Sync)
        .unwrap();
    let mut data = Vec::new();
    for _ in 0..mib {
        data.extend_from_slice(&block);
    }
    data.extend_from_slice(&[0x03, 0x00]); // final empty fixed block
    let name = b"transcript.xml";
    let mut z = Vec::new();
    let local = |z: &mut Vec<u8>| {
        z.extend_from_slice(b"PK\x03\x04");
        z.extend_from_slice(&20u16.to_le_bytes());
        z.extend_from_slice(&0u16.to_le_bytes());
        z.extend_from_slice(&8u16.to_le_bytes());
        z.extend_from_slice(&[0; 4]); // time, date
        z.extend_from_slice(&0u32.to_le_bytes()); // crc (a lie as well)
        z.extend_from_slice(&(data.len() as u32).to_le_bytes());
        z.extend_from_slice(&claimed.to_le_bytes());
        z.extend_from_slice(&(name.len() as u16).to_le_bytes());
        z.extend_from_slice(&0u16.to_le_bytes());
        z.extend_from_slice(name);
    };
    local(&mut z);
    z.extend_from_slice(&data);
    let cd_at = z.len() as u32;
    z.extend_from_slice(b"PK\x01\x02");
    z.extend_from_slice(&20u16.to_le_bytes());
    z.extend_from_slice(&20u16.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z.extend_from_slice(&8u16.to_le_bytes());
    z.extend_from_slice(&[0; 4]);
    z.extend_from_slice(&0u32.to_le_bytes());
    z.extend_from_slice(&(data.len() as u32).to_le_bytes());
    z.extend_from_slice(&claimed.to_le_bytes());
    z.extend_from_slice(&(name.len() as u16).to_le_bytes());
    z.extend_from_slice(&[0; 12]); // extra, comment, disk, attrs
    z.extend_from_slice(&0u32.to_le_bytes()); // local header offset
    z.extend_from_slice(name);
    let cd_len = z.len() as u32 - cd_at;
    z.extend_from_slice(b"PK\x05\x06");
    z.extend_from_slice(&[0; 4]);
    z.extend_from_slice(&1u16.to_le_bytes());
    z.extend_from_slice(&1u16.to_le_bytes());
    z.extend_from_slice(&cd_len.to_le_bytes());
    z.extend_from_slice(&cd_at.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z
}

fn vm_hwm_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The `.im` parser refuses zip bombs (honest and lying headers) quickly and
/// without inflating them into memory.
#[test]
fn zip_bomb_transcripts_are_refused_cheaply() {
    for (mib, claimed) in [(1024usize, 1u32 << 30), (1024, 4096), (300, 200)] {
        let bomb = zip_bomb(mib, claimed);
        let hwm0 = vm_hwm_kib();
        let t0 = Instant::now();
        let r = exportd::record::im::Transcript::from_bytes(&bomb);
        let took = t0.elapsed();
        let grew = vm_hwm_kib().saturating_sub(hwm0);
        assert!(
            r.is_err(),
            "{mib} MiB bomb claiming {claimed} bytes was accepted"
        );
        assert!(
            took < patience(Duration::from_secs(20)),
            "{mib} MiB bomb took {took:?}"
        );
        assert!(
            grew < 400 << 10,
            "peak memory grew by {grew} KiB on a {mib} MiB bomb"
        );
        eprintln!(
            "[zip-bomb] {} KiB zip inflating to {mib} MiB, header claims {claimed} B: refused in {:.2} s ({}), peak RSS +{} KiB",
            bomb.len() >> 10,
            took.as_secs_f64(),
            r.err().unwrap(),
            grew
        );
    }
}

#[test]
fn hostile_records_are_error_rows_and_the_agent_keeps_going() {
    let a = Appliance::new(1);
    a.write_config(&config(&a));
    let log = a.dir.path().join("daemon.log");
    let outside_before = files_below(a.dir.path())
        .into_iter()
        .filter(|f| !f.starts_with("spool/") && !f.starts_with("state/"))
        .collect::<Vec<_>>();
    let mut d = a.spawn_logged(&log);
    wait_until("daemon up", Duration::from_secs(30), &log, || {
        a.state.join("status.json").exists()
    });
    let pid = d.pid();
    let io0 = rchar(pid);
    let day = a.spool.join("2026/11/21");
    fs::create_dir_all(&day).unwrap();
    let mut expect_err = 0;

    // Entity expansion ("billion laughs") and an external entity.
    let mut laughs =
        String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE recording [\n <!ENTITY l0 \"ha\">\n");
    for i in 1..10 {
        let p = format!("&l{};", i - 1);
        laughs.push_str(&format!(" <!ENTITY l{i} \"{}\">\n", p.repeat(10)));
    }
    laughs.push_str("]>\n");
    laughs.push_str(&head_xml("&l9;"));
    laughs.push_str("<files/></recording>");
    fs::write(day.join("laughs.xml"), laughs).unwrap();
    expect_err += 1;
    let xxe = format!(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE recording [<!ENTITY x SYSTEM \"file:///etc/shadow\">]>\n{}<destination_name>&x;</destination_name><files/></recording>",
        head_xml("xxe")
    );
    fs::write(day.join("xxe.xml"), xxe).unwrap();
    expect_err += 1;

    // A 1 GiB XML: a valid start, then a sparse hole.
    {
        let f = fs::File::create(day.join("huge.xml")).unwrap();
        (&f).write_all(head_xml("huge").as_bytes()).unwrap();
        f.set_len(1 << 30).unwrap();
    }
    expect_err += 1;

    // NUL bytes: raw, as a character reference, in a file name.
    let mut nul = head_xml("nul-raw").into_bytes();
    nul.extend_from_slice(b"<files><file role=\"media\">a\0b.wav</file></files></recording>");
    fs::write(day.join("nul-raw.xml"), nul).unwrap();
    expect_err += 1;
    fs::write(
        day.join("nul-ref.xml"),
        format!(
            "{}<files><file role=\"media\">a&#0;b.wav</file></files></recording>",
            head_xml("nul-ref")
        ),
    )
    .unwrap();
    expect_err += 1;

    // Traversal and absolute paths in file names.
    for (i, p) in [
        "../../../../etc/passwd",
        "/etc/passwd",
        "a/../../t0/evil.wav",
        "./../x.wav",
    ]
    .iter()
    .enumerate()
    {
        fs::write(
            day.join(format!("trav-{i}.xml")),
            format!(
                "{}<files><file role=\"media\">{p}</file></files></recording>",
                head_xml(&format!("trav-{i}"))
            ),
        )
        .unwrap();
        expect_err += 1;
    }

    // Symlinks: a media file, and a folder, pointing at /etc.
    std::os::unix::fs::symlink("/etc/shadow", day.join("shadow.wav")).unwrap();
    fs::write(
        day.join("sym-file.xml"),
        format!(
            "{}<files><file role=\"media\">shadow.wav</file></files></recording>",
            head_xml("sym-file")
        ),
    )
    .unwrap();
    expect_err += 1;
    std::os::unix::fs::symlink("/etc", day.join("etc")).unwrap();
    fs::write(
        day.join("sym-dir.xml"),
        format!(
            "{}<files><file role=\"media\">etc/shadow</file></files></recording>",
            head_xml("sym-dir")
        ),
    )
    .unwrap();
    expect_err += 1;
    // A metadata XML that is itself a symlink (to a valid record outside the spool).
    let outside = a.dir.path().join("outside.xml");
    fs::write(
        &outside,
        format!("{}<files/></recording>", head_xml("outside")),
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, day.join("link.xml")).unwrap();

    // Traversal and control bytes in template fields (sanitised, exported).
    let mut t = Rec::voice("../../../../../tmp/evil-id", "../../../x");
    t.platform = "..".into();
    t.extra_xml = String::new();
    t.files = vec![(
        "media".into(),
        "tmpl.wav".into(),
        b"template field traversal".to_vec(),
    )];
    let xml = t.xml().replace(
        "<location>rec01</location>",
        "<location>a/b\u{1}c</location>",
    );
    fs::write(day.join("tmpl.wav"), b"template field traversal").unwrap();
    fs::write(day.join("tmpl.xml"), xml).unwrap();

    // A zip bomb transcript (the IM record itself is valid).
    let bomb = zip_bomb(1024, 4096);
    let mut im = Rec::voice("bomb", "100");
    im.modality = "im".into();
    im.platform = "symphony".into();
    im.files = vec![("transcript".into(), "bomb.im".into(), bomb.clone())];
    im.write(&day);
    // The daemon reads the transcript to write <id>.messages.json: refused.
    expect_err += 1;

    // And a good record after all of it.
    Rec::voice("good", "100").write(&day);
    wait_until(
        "good record exported and every hostile one answered",
        Duration::from_secs(60),
        &log,
        || {
            a.rows_with("export").iter().any(|r| r[1] == "good")
                && a.rows_with("error").len() >= expect_err
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let read = rchar(pid).saturating_sub(io0);
    let (code, err) = d.stop();
    assert_eq!(code, 0, "{err}");

    let errors = a.rows_with("error");
    let exports = a.rows_with("export");
    for r in &errors {
        eprintln!("[hostile] error {} {}: {}", r[11], r[5], tail(&r[12], 160));
    }
    assert_eq!(
        errors.len(),
        expect_err,
        "one error row per hostile record: {errors:?}"
    );
    // The 1 GiB XML is refused from its size, not read.
    assert!(
        read < 64 << 20,
        "the daemon read {read} bytes (the 1 GiB XML must not be read)"
    );
    assert!(
        errors
            .iter()
            .any(|r| r[12].contains("huge.xml") && r[12].contains("over the limit"))
    );
    // Nothing of /etc is anywhere on the target or in the audit log.
    let shadow = fs::read_to_string("/etc/shadow").unwrap_or_default();
    for f in files_below(&a.targets[0]) {
        let b = fs::read(a.targets[0].join(&f)).unwrap();
        let s = String::from_utf8_lossy(&b);
        assert!(!f.contains("shadow") && !f.contains("passwd"), "{f}");
        assert!(
            shadow.is_empty() || !s.contains(SHADOW_MARK) || !s.contains(shadow.trim()),
            "{f} holds /etc/shadow"
        );
    }
    let audit = fs::read_to_string(
        a.state
            .join("audit")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    if let Some(first) = shadow.lines().next() {
        assert!(!audit.contains(first), "the audit log holds /etc/shadow");
    }
    // The symlinked XML is not a record.
    assert!(!exports.iter().any(|r| r[1] == "outside"));
    // Template fields stayed inside the target root, one component each.
    let tmpl = exports
        .iter()
        .find(|r| r[1].contains("evil-id"))
        .expect("template record exported");
    // Dot-leading components are escaped (issue 21 point 5: no hidden folders).
    assert_eq!(tmpl[9], "a_b_c/_._.._.._x/_/u-1/_._.._.._.._.._tmp_evil-id");
    assert!(a.targets[0].join(&tmpl[9]).join("tmpl.wav").exists());
    // The bomb is refused when the transcript is read (never expanded), as an
    // error row; nothing of it is exported.
    assert!(
        errors
            .iter()
            .any(|r| r[1] == "bomb" && r[11] == "bad_content" && r[12].contains("zip bomb")),
        "{errors:?}"
    );
    assert!(!exports.iter().any(|r| r[1] == "bomb"));
    let outside_after = files_below(a.dir.path())
        .into_iter()
        .filter(|f| {
            !f.starts_with("spool/")
                && !f.starts_with("state/")
                && !f.starts_with("t0/")
                && f != "daemon.log"
                && f != "outside.xml"
        })
        .collect::<Vec<_>>();
    assert_eq!(
        outside_before, outside_after,
        "nothing written outside the target"
    );
    assert_eq!(a.cmd(&["audit", "verify"]).status.code(), Some(0));
    eprintln!(
        "[hostile] {} error rows, {} exports; the daemon read {} KiB in total while refusing a 1 GiB XML",
        errors.len(),
        exports.len(),
        read >> 10
    );
}

fn rchar(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
