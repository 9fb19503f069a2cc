//! A metadata XML refused for what it is (over the size limit, or an
//! encrypted one that does not decrypt) gets one error row per version, also
//! when it is brought to the engine twice (a folder scan and a close event
//! can both bring it): the second time finds it journaled and does nothing.

mod common;

use std::fs;
use std::io::Write;
use std::time::{Duration, SystemTime};

use common::*;
use exportd::export::{Options, Outcome, process};
use exportd::ledger::journal;
use exportd::policy::config::LocalConfig;
use exportd::watch::spool::XmlRef;

#[test]
fn a_refused_xml_met_twice_gets_one_error_row() {
    let a = Appliance::new(1);
    a.write_config(&a.head(300));
    let day = a.spool.join("2026/11/21");
    fs::create_dir_all(&day).unwrap();
    let long_ago = SystemTime::now() - Duration::from_secs(60);

    // Over the limit: a valid start, then a sparse hole to 64 MiB.
    let huge = day.join("huge.xml");
    {
        let mut f = fs::File::create(&huge).unwrap();
        f.write_all(b"<?xml version=\"1.0\"?>\n<recording><id>huge</id>")
            .unwrap();
        f.set_len(64 << 20).unwrap();
        f.set_modified(long_ago).unwrap();
    }
    // Encrypted, but not age at all; written a minute ago (not mid-write).
    let bad = day.join("bad.xml.age");
    {
        let f = fs::File::create(&bad).unwrap();
        (&f).write_all(b"not an age file\n").unwrap();
        f.set_modified(long_ago).unwrap();
    }

    let (cfg, hash) = LocalConfig::load_head(&a.config).unwrap();
    let ctx = exportd::agent::make_ctx(&a.config, &cfg, &hash).unwrap();
    for (path, code) in [(&huge, "bad_metadata"), (&bad, "decrypt_failed")] {
        let x = XmlRef::stat(&a.spool, path).unwrap();
        let first = process(
            &ctx,
            &x,
            Options {
                grace_expired: false,
                from_scan: true,
            },
        );
        assert_eq!(
            first.outcome,
            Outcome::Finished(journal::Outcome::Rejected),
            "{}",
            path.display()
        );
        let second = process(&ctx, &x, Options::default());
        assert_eq!(second.outcome, Outcome::AlreadyDone, "{}", path.display());
        assert!(second.tallies.is_empty(), "{:?}", second.tallies);
        let rows: Vec<_> = a
            .rows_with("error")
            .into_iter()
            .filter(|r| r[12].contains(&*path.display().to_string()))
            .collect();
        assert_eq!(rows.len(), 1, "one row for {}: {rows:?}", path.display());
        assert_eq!(rows[0][11], code, "{rows:?}");
    }
}
