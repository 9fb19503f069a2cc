//! `exportd demo`: the embedded default. A temporary spool and folder
//! target, the recorder simulator and the agent running together, and a
//! summary of what happened and where to look.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

use exportd::agent::{RunOptions, run};
use exportd::simulate::{SimOptions, config_toml, simulate};

/// Runs the demo with `records` simulated records.
pub fn demo(records: u64, keep: bool) -> Result<i32> {
    let base = std::env::temp_dir().join(format!("exportd-demo-{}", std::process::id()));
    let spool = base.join("spool");
    let target = base.join("archive");
    let state = base.join("state");
    let keys = base.join("keys");
    for d in [&spool, &target, &state, &keys] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let users = 25;
    let cfg_path = base.join("exportd.toml");
    std::fs::write(
        &cfg_path,
        config_toml("demo-rec01", &spool, &state, &keys, &target, users, true),
    )?;

    println!("exportd demo");
    println!("  spool:   {}", spool.display());
    println!("  archive: {}", target.display());
    println!("  state:   {}", state.display());
    println!();

    // The first records exist before the agent starts (startup rescan); the
    // rest arrive while it runs (inotify).
    let first = records / 3;
    let mut opts = SimOptions {
        spool: spool.clone(),
        count: first,
        users,
        seed: 42,
        progress: false,
        ..SimOptions::default()
    };
    simulate(&opts)?;

    let hold = Arc::new(AtomicBool::new(true));
    let agent = {
        let cfg = cfg_path.clone();
        let hold = hold.clone();
        std::thread::spawn(move || {
            run(
                &cfg,
                RunOptions {
                    until_idle: true,
                    hold: Some(hold),
                },
            )
        })
    };
    opts.count = records - first;
    opts.seed = 43;
    opts.rate = 200.0;
    opts.duration = Some(std::time::Duration::from_secs_f64(
        (records - first) as f64 / 200.0,
    ));
    opts.progress = true;
    simulate(&opts)?;
    hold.store(false, Ordering::SeqCst);
    let summary = agent
        .join()
        .map_err(|_| anyhow::anyhow!("agent thread panicked"))??;

    let s = &summary.status;
    println!();
    println!("| what                         | count |");
    println!("|------------------------------|------:|");
    println!("| records seen                 | {:>5} |", s.counts.seen);
    println!(
        "| records exported             | {:>5} |",
        s.counts.exported
    );
    for (k, v) in &s.exported_by_policy_target {
        println!("|   copies to {:<17}| {:>5} |", k, v);
    }
    println!("| records skipped              | {:>5} |", s.counts.skipped);
    for (k, v) in &s.skipped_by_reason {
        println!("|   skipped: {:<18}| {:>5} |", k, v);
    }
    println!(
        "| records failed               | {:>5} |",
        summary.failures.len()
    );
    for (k, v) in &s.errors_by_code {
        println!("|   errors: {:<19}| {:>5} |", k, v);
    }
    println!(
        "| bytes written                | {:>5} |",
        human(s.counts.bytes)
    );
    println!();
    match exportd::audit::verify(&state) {
        Ok(r) => println!(
            "audit log: {} rows, hash chain verified ({})",
            r.rows,
            state.join("audit").display()
        ),
        Err(e) => println!("audit log: VERIFY FAILED: {e}"),
    }
    println!("Where to look:");
    println!("  exported folders:  {}", target.display());
    println!("  audit log:         {}", state.join("audit").display());
    println!(
        "  status:            exportd status --config {}",
        cfg_path.display()
    );
    for f in summary.failures.iter().take(5) {
        println!("  failed: {f}");
    }
    if !keep {
        println!(
            "(run with --keep to keep {} after the demo)",
            base.display()
        );
        remove(&base);
    }
    Ok(if summary.failures.is_empty() { 0 } else { 1 })
}

fn human(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{}M", n >> 20)
    } else if n >= 1 << 10 {
        format!("{}K", n >> 10)
    } else {
        n.to_string()
    }
}

fn remove(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}
