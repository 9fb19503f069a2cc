use super::*;

fn row(id: &str) -> Row {
    Row {
        ccdr_id: id.into(),
        native_id: "n;1\nx".into(),
        n_files: 2,
        bytes: 10,
        action: Action::Export.as_str(),
        ..Row::default()
    }
}

#[test]
fn chain_across_days_and_tamper_detection() {
    let d = std::env::temp_dir().join(format!("exportd-audit-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    let mut log = AuditLog::open(&d).unwrap();
    let t1 = Timestamp::parse_recorder("2026.11.21 23:59:59.000").unwrap();
    let t2 = Timestamp::parse_recorder("2026.11.22 00:00:01.000").unwrap();
    let h1 = log.append_at(t1, &row("a")).unwrap();
    log.append_at(t1, &row("b")).unwrap();
    drop(log);
    let mut log = AuditLog::open(&d).unwrap();
    log.append_at(t2, &row("c")).unwrap();
    let rep = verify(&d).unwrap();
    assert_eq!((rep.files, rep.rows), (2, 3));
    let f1 = d.join("audit/audit-20261121.csv");
    let text = fs::read_to_string(&f1).unwrap();
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .contains(&format!("{GENESIS};{h1}"))
    );
    assert!(text.contains(";n 1 x;"), "{text}");
    // one-byte tamper
    let mut b = fs::read(&f1).unwrap();
    let pos = text.find(";a;").unwrap() + 1;
    b[pos] = b'z';
    fs::write(&f1, &b).unwrap();
    match verify(&d) {
        Err(AuditError::Tampered { path, line, .. }) => {
            assert_eq!(path, f1);
            assert_eq!(line, 2);
        }
        other => panic!("{other:?}"),
    }
    // removal of a row
    b[pos] = b'a';
    let t = String::from_utf8(b).unwrap();
    let mut lines: Vec<&str> = t.lines().collect();
    lines.remove(1);
    fs::write(&f1, lines.join("\n") + "\n").unwrap();
    assert!(matches!(
        verify(&d),
        Err(AuditError::Tampered { line: 2, .. })
    ));
    let _ = fs::remove_dir_all(&d);
}

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_recorder(s).unwrap()
}

fn file(d: &Path, day: &str) -> PathBuf {
    d.join(format!("audit/audit-{day}.csv"))
}

fn ids(d: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for p in audit_files(&d.join("audit")).unwrap() {
        for l in fs::read_to_string(&p).unwrap().lines().skip(1) {
            v.push(l.split(';').nth(1).unwrap().to_string());
        }
    }
    v
}

/// When the rows of the day-file tests are stamped.
const T: &str = "2026.11.21 10:00:00.000";

/// A log in a new folder holding rows `ids` (stamped [`T`]), closed again;
/// returns the folder and its day file.
fn closed_log(ids: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(d.path()).unwrap();
    for id in ids {
        log.append_at(ts(T), &row(id)).unwrap();
    }
    drop(log);
    let f = file(d.path(), "20261121");
    (d, f)
}

fn append_bytes(p: &Path, b: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(b).unwrap();
}

#[test]
fn a_torn_row_is_cut_at_open_and_kept_aside() {
    let (d, f) = closed_log(&["a", "b"]);
    let t = ts(T);
    let good = fs::read(&f).unwrap();
    // A crash (or ENOSPC) mid-append: half a row, no newline.
    append_bytes(&f, b"2026.11.21 10:00:01.000;c;n 1 x;2;10;;;");
    let mut log = AuditLog::open(d.path()).unwrap();
    assert_eq!(fs::read(&f).unwrap(), good, "cut back to the last good row");
    let aside = d
        .path()
        .join(format!("audit/audit-20261121.csv.damaged-{}", good.len()));
    assert_eq!(
        fs::read(&aside).unwrap(),
        b"2026.11.21 10:00:01.000;c;n 1 x;2;10;;;"
    );
    log.append_at(t, &row("c")).unwrap();
    assert_eq!(verify(d.path()).unwrap().rows, 3);
    assert_eq!(ids(d.path()), ["a", "b", "c"]);
}

#[test]
fn a_zero_filled_tail_is_cut_at_open() {
    let (d, f) = closed_log(&["a"]);
    let t = ts(T);
    let good = fs::read(&f).unwrap();
    // The size reached the disk, the data blocks did not.
    append_bytes(&f, &[0u8; 5000]);
    let mut log = AuditLog::open(d.path()).unwrap();
    assert_eq!(fs::read(&f).unwrap(), good);
    log.append_at(t, &row("b")).unwrap();
    assert_eq!(verify(d.path()).unwrap().rows, 2);
}

#[test]
fn unsynced_rows_behind_a_lost_block_are_cut_at_open() {
    let (d, f) = closed_log(&["a", "b", "c", "d"]);
    let t = ts(T);
    // Power cut with c and d unsynced: c's block never written (NULs),
    // d's block was.
    let text = fs::read_to_string(&f).unwrap();
    let c_at = text.find("\n2026.11.21 10:00:00.000;c;").unwrap() + 1;
    let c_end = c_at + text[c_at..].find('\n').unwrap() + 1;
    let mut b = text.clone().into_bytes();
    b[c_at..c_end - 1].fill(0);
    fs::write(&f, &b).unwrap();
    let mut log = AuditLog::open(d.path()).unwrap();
    assert_eq!(fs::read(&f).unwrap(), &text.as_bytes()[..c_at]);
    log.append_at(t, &row("e")).unwrap();
    verify(d.path()).unwrap();
    assert_eq!(ids(d.path()), ["a", "b", "e"]);
}

#[test]
fn a_changed_row_followed_by_good_rows_is_not_cut() {
    let (d, f) = closed_log(&["a", "b", "c"]);
    let text = fs::read_to_string(&f).unwrap();
    let changed = text.replace(";b;", ";B;");
    fs::write(&f, &changed).unwrap();
    match AuditLog::open(d.path()) {
        Err(AuditError::Tampered { why, .. }) => {
            assert!(why.contains("left as it is"), "{why}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a changed row must not be repaired away"),
    }
    assert_eq!(
        fs::read_to_string(&f).unwrap(),
        changed,
        "evidence untouched"
    );
    // A removed row (the chain breaks, every row verifies on its own).
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(2);
    fs::write(&f, lines.join("\n") + "\n").unwrap();
    assert!(matches!(
        AuditLog::open(d.path()),
        Err(AuditError::Tampered { .. })
    ));
}

#[test]
fn a_torn_header_is_written_again() {
    let d = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(d.path()).unwrap();
    log.append_at(ts("2026.11.21 10:00:00.000"), &row("a"))
        .unwrap();
    drop(log);
    // The next day's file was created, its header torn.
    fs::write(file(d.path(), "20261122"), &HEADER.as_bytes()[..20]).unwrap();
    let mut log = AuditLog::open(d.path()).unwrap();
    assert_eq!(
        fs::read_to_string(file(d.path(), "20261122")).unwrap(),
        format!("{HEADER}\n")
    );
    log.append_at(ts("2026.11.22 10:00:00.000"), &row("b"))
        .unwrap();
    // An empty file (crash between create and header) the same.
    fs::write(file(d.path(), "20261123"), b"").unwrap();
    drop(log);
    let mut log = AuditLog::open(d.path()).unwrap();
    log.append_at(ts("2026.11.23 10:00:00.000"), &row("c"))
        .unwrap();
    let rep = verify(d.path()).unwrap();
    assert_eq!((rep.files, rep.rows), (3, 3));
}

#[test]
fn a_failed_sync_is_cut_off_and_the_chain_continues_from_the_durable_row() {
    let d = tempfile::tempdir().unwrap();
    let t = ts("2026.11.21 10:00:00.000");
    let mut log = AuditLog::open(d.path()).unwrap();
    log.append_at(t, &row("a")).unwrap();
    let (_, pb) = log.append_deferred(t, &row("b")).unwrap();
    let (_, pc) = log.append_deferred(t, &row("c")).unwrap();
    assert!(pb.wait_with(|_| Err(io::Error::other("EIO"))).is_err());
    // c was covered by the failed sync: never durable.
    assert!(pc.wait().is_err());
    // The next append cuts b and c off and chains to a.
    log.append_at(t, &row("d")).unwrap();
    assert_eq!(ids(d.path()), ["a", "d"]);
    verify(d.path()).unwrap();
    // b and c are written again by their callers: once each.
    log.append_at(t, &row("b")).unwrap();
    log.append_at(t, &row("c")).unwrap();
    assert_eq!(ids(d.path()), ["a", "d", "b", "c"]);
    assert_eq!(verify(d.path()).unwrap().rows, 4);
}

#[test]
fn a_clock_stepped_back_keeps_appending_to_the_newest_file() {
    let d = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(d.path()).unwrap();
    log.append_at(ts("2026.11.22 00:00:05.000"), &row("a"))
        .unwrap();
    // NTP steps the clock back across midnight; the RTC of a board
    // without battery restarts in 2020.
    log.append_at(ts("2026.11.21 23:59:58.000"), &row("b"))
        .unwrap();
    drop(log);
    let mut log = AuditLog::open(d.path()).unwrap();
    log.append_at(ts("2020.01.01 00:00:03.000"), &row("c"))
        .unwrap();
    assert!(!file(d.path(), "20261121").exists());
    assert!(!file(d.path(), "20200101").exists());
    // The clock comes back: a new file, chained to the newest.
    log.append_at(ts("2026.11.23 00:00:01.000"), &row("d"))
        .unwrap();
    let rep = verify(d.path()).unwrap();
    assert_eq!((rep.files, rep.rows), (2, 4));
    assert_eq!(ids(d.path()), ["a", "b", "c", "d"]);
    let t22 = fs::read_to_string(file(d.path(), "20261122")).unwrap();
    assert!(t22.contains("\n2026.11.21 23:59:58.000;b;"), "{t22}");
}

#[test]
fn the_old_day_is_durable_before_the_new_day_gets_a_row() {
    let d = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(d.path()).unwrap();
    let (_, p1) = log
        .append_deferred(ts("2026.11.21 23:59:59.990"), &row("a"))
        .unwrap();
    assert!(!p1.is_durable());
    let (_, p2) = log
        .append_deferred(ts("2026.11.22 00:00:00.010"), &row("b"))
        .unwrap();
    assert!(p1.is_durable(), "the old day's row was synced first");
    p1.wait().unwrap();
    p2.wait().unwrap();
    verify(d.path()).unwrap();
}

#[test]
fn another_process_rows_are_chained_to() {
    let d = tempfile::tempdir().unwrap();
    let t = ts("2026.11.21 10:00:00.000");
    let mut a = AuditLog::open(d.path()).unwrap();
    let mut b = AuditLog::open(d.path()).unwrap();
    a.append_at(t, &row("a1")).unwrap();
    b.append_at(t, &row("b1")).unwrap();
    a.append_at(t, &row("a2")).unwrap();
    b.append_at(ts("2026.11.22 10:00:00.000"), &row("b2"))
        .unwrap();
    a.append_at(t, &row("a3")).unwrap();
    assert_eq!(verify(d.path()).unwrap().rows, 5);
    assert_eq!(ids(d.path()), ["a1", "b1", "a2", "b2", "a3"]);
}

#[test]
fn formula_fields_are_neutralised_and_still_verify() {
    for (raw, want) in [
        ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
        ("+1", "'+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\r=1", "' =1"),
        ("rec-1", "rec-1"),
        ("/spool/a", "/spool/a"),
        ("", ""),
    ] {
        assert_eq!(clean_field(raw), want, "{raw:?}");
    }
    let d = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(d.path()).unwrap();
    let mut r = row("=cmd|' /C calc'!A0");
    r.policy_name = "-policy".into();
    r.error_desc = "@x".into();
    log.append_at(ts("2026.11.21 10:00:00.000"), &r).unwrap();
    verify(d.path()).unwrap();
    let text = fs::read_to_string(file(d.path(), "20261121")).unwrap();
    let f: Vec<&str> = text.lines().nth(1).unwrap().split(';').collect();
    assert_eq!(f[1], "'=cmd|' /C calc'!A0");
    assert_eq!(f[7], "'-policy");
    assert_eq!(f[12], "'@x");
}

#[test]
fn a_fifo_or_link_under_an_audit_name_is_an_error_not_a_hang() {
    let d = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(d.path()).unwrap();
    log.append_at(ts("2026.11.21 10:00:00.000"), &row("a"))
        .unwrap();
    drop(log);
    let fifo = file(d.path(), "20261122");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let e = AuditLog::open(d.path()).err().expect("a FIFO is refused");
    assert!(e.to_string().contains("not a regular file"), "{e}");
    assert!(verify(d.path()).is_err());
    fs::remove_file(&fifo).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &fifo).unwrap();
    assert!(AuditLog::open(d.path()).is_err());
    assert!(verify(d.path()).is_err());
}

#[test]
fn a_second_repair_keeps_the_first_cut_off_bytes() {
    let (d, f) = closed_log(&["a"]);
    let good = fs::read(&f).unwrap().len();
    append_bytes(&f, b"torn one");
    drop(AuditLog::open(d.path()).unwrap());
    append_bytes(&f, b"torn two");
    drop(AuditLog::open(d.path()).unwrap());
    let base = d
        .path()
        .join(format!("audit/audit-20261121.csv.damaged-{good}"));
    assert_eq!(fs::read(&base).unwrap(), b"torn one");
    let second = base.with_file_name(format!("audit-20261121.csv.damaged-{good}-1"));
    assert_eq!(fs::read(second).unwrap(), b"torn two");
    verify(d.path()).unwrap();
}

#[test]
fn folder_digest_matches_sha256sum_listing() {
    let mut files = vec![
        ("b.wav".to_string(), [1u8; 32]),
        ("a.xml".to_string(), [2u8; 32]),
    ];
    let (listing, h) = folder_digest(&mut files);
    assert!(listing.starts_with(&format!("{}  a.xml\n", hex::encode([2u8; 32]))));
    assert_eq!(h, sha256_hex(listing.as_bytes()));
}
