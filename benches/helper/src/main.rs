//! benches/run's helper: what the `exportd` CLI does not expose.
//!
//!   exportd-bench-helper snapshot-load SNAPSHOT.bin N EXTENSION
//!       opens the snapshot N times (mmap) and looks EXTENSION up; prints the
//!       median open time in microseconds and VmRSS/VmHWM in KiB.
//!
//!   exportd-bench-helper journal-gen DIR N
//!       writes DIR/journal.log as the agent leaves it after exporting N
//!       records (a copy entry and a finished entry each), streamed.
//!
//!   exportd-bench-helper journal-memory DIR N
//!       what the agent does with that journal at start-up and after: opens
//!       it, sweeps it as the start-up rescan does (N records in the spool,
//!       1 % of them gone), prunes and compacts, then journals 1,000 more
//!       records; prints the times and VmRSS/VmHWM in KiB.

use std::path::{Path, PathBuf};
use std::time::Instant;

fn proc_status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().trim_end_matches(" kB").trim().to_string())
        .unwrap_or_default()
}

fn key(i: u64) -> exportd::ledger::journal::PathKey {
    exportd::ledger::journal::path_key(Path::new("/spool"), &format!("2026/11/21/r{i}/r{i}.xml"))
}

fn journal_gen(dir: &Path, n: u64) {
    use exportd::ledger::journal::{Entry, Outcome, encode_frame, short_key, version};
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let f = std::fs::File::create(dir.join("journal.log")).unwrap();
    let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
    let copy = exportd::ledger::journal::copy_id("p", "t0");
    for i in 0..n {
        let k = short_key(&key(i));
        let ver = version(1000 + i, 1_700_000_000_000_000_000 + i as i64);
        let mut row = [0u8; 32];
        row[..8].copy_from_slice(&i.to_le_bytes());
        w.write_all(&encode_frame(&Entry::Part {
            key: k,
            ver,
            copy,
            row,
            floor: Some(row),
        }))
        .unwrap();
        w.write_all(&encode_frame(&Entry::Fin {
            key: k,
            ver,
            outcome: Outcome::Exported,
        }))
        .unwrap();
    }
    w.flush().unwrap();
}

fn journal_memory(dir: &Path, n: u64) {
    use exportd::ledger::journal::{FileStore, Journal, Outcome};
    let path = dir.join("journal.log");
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let rss0 = proc_status("VmRSS:");
    let t = Instant::now();
    let mut j = Journal::open(FileStore::new(path.clone())).expect("open journal");
    let open_s = t.elapsed().as_secs_f64();
    let known = j.len();
    let t = Instant::now();
    j.begin_sweep();
    for i in 0..n {
        if i % 100 != 0 {
            j.mark_seen(&key(i));
        }
    }
    j.prune_unseen().expect("prune and compact");
    let sweep_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let copy = exportd::ledger::journal::copy_id("p", "t0");
    for i in n..n + 1_000 {
        let (size, mtime) = (1000 + i, 1_700_000_000_000_000_000 + i as i64);
        let mut row = [0u8; 32];
        row[..8].copy_from_slice(&i.to_le_bytes());
        j.record_copy_row(key(i), size, mtime, copy, row).unwrap();
        j.record_done(key(i), size, mtime, Outcome::Exported).unwrap();
    }
    let append_s = t.elapsed().as_secs_f64();
    assert!(j.is_done(&key(n + 5), 1005 + n, 1_700_000_000_000_000_005 + n as i64));
    println!(
        "records={known} journal_bytes={bytes} open_s={open_s:.3} sweep_compact_s={sweep_s:.3} append_1k_records_s={append_s:.3} kept={} rss_before_kib={rss0} rss_kib={} hwm_kib={}",
        j.len(),
        proc_status("VmRSS:"),
        proc_status("VmHWM:")
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("snapshot-load") => {
            let path = Path::new(&args[2]);
            let n: usize = args[3].parse().unwrap();
            let ext = &args[4];
            let rss0 = proc_status("VmRSS:");
            let mut times = Vec::new();
            let mut found = false;
            let mut keep = None;
            for _ in 0..n {
                let t = Instant::now();
                let s = exportd::policy::snapshot::Snapshot::open(path).expect("open snapshot");
                found = s.lookup(ext).is_some();
                times.push(t.elapsed().as_secs_f64() * 1e6);
                keep = Some(s);
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let users = keep.as_ref().map(|s| s.user_count()).unwrap_or(0);
            println!(
                "open_us={:.1} users={} found={} rss_before_kib={} rss_kib={} hwm_kib={}",
                times[times.len() / 2],
                users,
                found,
                rss0,
                proc_status("VmRSS:"),
                proc_status("VmHWM:")
            );
        }
        Some("simulate-folders") => {
            // `exportd simulate --rate R --duration S` with each record in a
            // new folder of its own (the CLI writes day folders only).
            let opts = exportd::simulate::SimOptions {
                spool: PathBuf::from(&args[2]),
                count: 0,
                rate: args[3].parse().unwrap(),
                duration: Some(std::time::Duration::from_secs_f64(args[4].parse().unwrap())),
                log: Some(PathBuf::from(&args[5])),
                users: args[6].parse().unwrap(),
                seed: args[7].parse().unwrap(),
                size_scale: 1.0,
                progress: false,
                encrypt: None,
                fsync: false,
            };
            exportd::simulate::simulate_in(&opts, exportd::simulate::SpoolLayout::FolderPerRecord)
                .expect("simulate");
        }
        Some("journal-gen") => journal_gen(Path::new(&args[2]), args[3].parse().unwrap()),
        Some("journal-memory") => journal_memory(Path::new(&args[2]), args[3].parse().unwrap()),
        _ => {
            eprintln!(
                "usage: exportd-bench-helper snapshot-load SNAPSHOT N EXT | simulate-folders SPOOL RATE SECONDS LOG USERS SEED | journal-gen DIR N | journal-memory DIR N"
            );
            std::process::exit(2);
        }
    }
}
