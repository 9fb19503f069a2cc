//! benches/run's helper: what the `exportd` CLI does not expose.
//!
//!   exportd-bench-helper snapshot-load SNAPSHOT.bin N EXTENSION
//!       opens the snapshot N times (mmap) and looks EXTENSION up; prints the
//!       median open time in microseconds and VmRSS/VmHWM in KiB.

use std::path::Path;
use std::time::Instant;

fn proc_status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().trim_end_matches(" kB").trim().to_string())
        .unwrap_or_default()
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
                let s = exportd::snapshot::Snapshot::open(path).expect("open snapshot");
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
        _ => {
            eprintln!("usage: exportd-bench-helper snapshot-load SNAPSHOT N EXT");
            std::process::exit(2);
        }
    }
}
