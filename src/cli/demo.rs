//! `exportd demo`: the embedded default; works only in its own folder under
//! the temp folder, never in a configured spool or archive. A temporary
//! spool and two folder targets (dual archiving), the recorder simulator
//! and the agent running together, then what happened: the summary table,
//! one decrypted record, a compliance export request and the audit check.
//! The folder is removed at the end unless `--keep`, so its paths are only
//! printed with `--keep`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use exportd::agent::{RunOptions, RunSummary, run};
use exportd::simulate::{SimOptions, config_toml, simulate};

use super::out::outln;

/// Records a second while the agent runs.
const LIVE_RATE: f64 = 200.0;

/// Runs the demo with `records` simulated records.
pub fn demo(records: u64, keep: bool) -> Result<i32> {
    let d = Dirs::make()?;
    let users = 25;
    let recipient = d.write_key()?;
    std::fs::write(&d.config, d.config_toml(users))
        .with_context(|| format!("writing {}", d.config.display()))?;

    outln!("exportd demo: a simulated recorder and the agent, side by side");
    if keep {
        outln!("  folder: {} (kept: --keep)", d.base.display());
    } else {
        outln!("  in a temporary folder, removed at the end (--keep keeps it and prints where)");
    }
    outln!(
        "  {users} users; one policy sends every record to two folder targets, archive-a and archive-b"
    );
    outln!();

    let summary = simulate_with_agent(&d, records, users, &recipient)?;
    print_table(&summary);
    show_decrypted(&d);
    show_request(&d);
    print_audit(&d, &summary, keep);
    if !keep {
        remove(&d.base);
    }
    Ok(if summary.failures.is_empty() { 0 } else { 1 })
}

/// The demo's folders under the temp folder, and its configuration file.
struct Dirs {
    base: PathBuf,
    spool: PathBuf,
    target_a: PathBuf,
    target_b: PathBuf,
    state: PathBuf,
    keys: PathBuf,
    config: PathBuf,
}

impl Dirs {
    /// Makes `exportd-demo-<pid>/{spool,archive-a,archive-b,state,keys}` in the temp folder.
    fn make() -> Result<Dirs> {
        let base = std::env::temp_dir().join(format!("exportd-demo-{}", std::process::id()));
        let d = Dirs {
            spool: base.join("spool"),
            target_a: base.join("archive-a"),
            target_b: base.join("archive-b"),
            state: base.join("state"),
            keys: base.join("keys"),
            config: base.join("exportd.toml"),
            base,
        };
        for p in [&d.spool, &d.target_a, &d.target_b, &d.state, &d.keys] {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        Ok(d)
    }

    /// The recorder's age identity in `keys/` (0600, as the agent demands);
    /// returns its recipient.
    fn write_key(&self) -> Result<String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let id = exportd::age::Identity::generate();
        let path = self.keys.join("recorder.key");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        writeln!(f, "# exportd demo identity\n{}", id.to_bech32().as_str())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(id.recipient().to_string())
    }

    /// The simulator's configuration with a second folder target.
    fn config_toml(&self, users: usize) -> String {
        let one = config_toml(
            "demo-rec01",
            &self.spool,
            &self.state,
            &self.keys,
            &self.target_a,
            users,
            true,
        );
        let two = one
            .replacen("id = \"archive\"", "id = \"archive-a\"", 1)
            .replacen(
                "targets = [\"archive\"]",
                "targets = [\"archive-a\", \"archive-b\"]",
                1,
            )
            .replacen(
                "Everything to the archive",
                "Everything to both archives",
                1,
            );
        format!(
            "{two}[[targets]]\nid = \"archive-b\"\nkind = \"fs\"\npath = \"{}\"\n",
            self.target_b.display()
        )
    }
}

/// The first third of the records exist before the agent starts (found by
/// its startup scan); the rest arrive while it runs (noticed by inotify as
/// each closes), age-encrypted, at [`LIVE_RATE`] a second. The agent runs
/// until idle; a progress line shows both sides.
fn simulate_with_agent(
    d: &Dirs,
    records: u64,
    users: usize,
    recipient: &str,
) -> Result<RunSummary> {
    let first = records / 3;
    let live = records - first;
    let mut opts = SimOptions {
        spool: d.spool.clone(),
        count: first,
        users,
        seed: 42,
        progress: false,
        ..SimOptions::default()
    };
    let s = simulate(&opts)?;
    outln!(
        "1. before the agent starts, the recorder has written {} records ({})",
        s.records,
        exportd::human::bytes(s.bytes)
    );
    outln!(
        "2. the agent starts (its startup scan finds those); {live} more arrive live, {LIVE_RATE} a second, age-encrypted"
    );

    let hold = Arc::new(AtomicBool::new(true));
    let done = Arc::new(AtomicBool::new(false));
    let agent = {
        let cfg = d.config.clone();
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
    let progress = {
        let (spool, state, done) = (d.spool.clone(), d.state.clone(), done.clone());
        // On a terminal one line rewritten 4 times a second; else a line every 2 s.
        let tty = std::io::stderr().is_terminal();
        let every = if tty { 1 } else { 8 };
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !done.load(Ordering::SeqCst) {
                if n % every == 0 {
                    progress_line(&spool, &state, records, tty);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    opts.count = live;
    opts.seed = 43;
    opts.rate = LIVE_RATE;
    opts.duration = Some(Duration::from_secs_f64(live as f64 / LIVE_RATE));
    opts.encrypt = Some(super::plugins::encryptor(recipient)?);
    let sim = simulate(&opts);
    hold.store(false, Ordering::SeqCst);
    let summary = agent
        .join()
        .map_err(|_| anyhow::anyhow!("agent thread panicked"));
    done.store(true, Ordering::SeqCst);
    let _ = progress.join();
    let (sim, summary) = (sim?, summary??);
    progress_line(&d.spool, &d.state, records, false);
    outln!(
        "   the recorder wrote {} records live ({})",
        sim.records,
        exportd::human::bytes(sim.bytes)
    );
    Ok(summary)
}

/// `recorder N/M records | agent: seen, exported, backlog` on stderr
/// (`rewrite`: over the previous line, for a terminal).
fn progress_line(spool: &Path, state: &Path, total: u64, rewrite: bool) {
    let written = count_records(spool);
    let agent = match exportd::agent::status::Status::read(state) {
        Ok(Some(s)) => format!(
            "seen {}, exported {}, backlog {}",
            s.counts.seen, s.counts.exported, s.backlog
        ),
        _ => "starting".to_string(),
    };
    let line = format!("   recorder {written}/{total} records | agent {agent}");
    if rewrite {
        eprint!("\r{line:<78}");
    } else {
        eprintln!("{line}");
    }
}

/// Metadata files (`*.xml`, `*.xml.age`) below `dir`.
fn count_records(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        match e.file_type() {
            Ok(t) if t.is_dir() => n += count_records(&e.path()),
            Ok(_)
                if !name.starts_with('.')
                    && (name.ends_with(".xml") || name.ends_with(".xml.age")) =>
            {
                n += 1
            }
            _ => {}
        }
    }
    n
}

/// The table of what happened.
fn print_table(summary: &RunSummary) {
    let s = &summary.status;
    outln!();
    outln!("3. what the agent did");
    outln!("| what                         |     count |");
    outln!("|------------------------------|----------:|");
    outln!("| records seen                 | {:>9} |", s.counts.seen);
    outln!(
        "| records exported             | {:>9} |",
        s.counts.exported
    );
    for (k, v) in &s.exported_by_policy_target {
        outln!("|   copies {:<20}| {:>9} |", k, v);
    }
    outln!("| records skipped              | {:>9} |", s.counts.skipped);
    for (k, v) in &s.skipped_by_reason {
        outln!("|   skipped: {:<18}| {:>9} |", k, v);
    }
    outln!(
        "| records failed               | {:>9} |",
        summary.failures.len()
    );
    for (k, v) in &s.errors_by_code {
        outln!("|   errors: {:<19}| {:>9} |", k, v);
    }
    outln!(
        "| written                      | {:>9} |",
        exportd::human::bytes(s.counts.bytes)
    );
    for f in summary.failures.iter().take(5) {
        outln!("  failed: {f}");
    }
    outln!();
}

/// The first file below `dir` (sorted walk) that `pick` accepts.
fn find_file(dir: &Path, pick: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if let Some(f) = find_file(&p, pick) {
                return Some(f);
            }
        } else if p.file_name().and_then(|n| n.to_str()).is_some_and(pick) {
            return Some(p);
        }
    }
    None
}

/// The first bytes of a file, as text where printable.
fn head(p: &Path) -> String {
    use std::io::Read;
    let mut b = [0u8; 12];
    let n = std::fs::File::open(p)
        .and_then(|mut f| f.read(&mut b))
        .unwrap_or(0);
    b[..n]
        .iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                c as char
            } else {
                '.'
            }
        })
        .collect()
}

/// One encrypted content file of the spool and its decrypted copies.
fn show_decrypted(d: &Dirs) {
    outln!("4. one encrypted record, decrypted by the agent (policy: decrypt = true)");
    let is_media =
        |n: &str| n.ends_with(".age") && !n.ends_with(".xml.age") && !n.ends_with(".im.age");
    let is_voice = |n: &str| n.ends_with(".wav.age");
    let found = find_file(&d.spool, &is_voice).or_else(|| find_file(&d.spool, &is_media));
    let Some(src) = found else {
        outln!("   (no encrypted content file in the spool)");
        return;
    };
    let name = src
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .trim_end_matches(".age")
        .to_string();
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let rel = src
        .strip_prefix(&d.spool)
        .unwrap_or(&src)
        .display()
        .to_string();
    outln!(
        "   spool:     {rel} ({}, begins \"{}\")",
        exportd::human::bytes(size(&src)),
        head(&src)
    );
    for (id, root) in [("archive-a", &d.target_a), ("archive-b", &d.target_b)] {
        match find_file(root, &|n| n == name) {
            Some(p) => {
                let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
                outln!(
                    "   {id}: {rel} ({}, begins \"{}\")",
                    exportd::human::bytes(size(&p)),
                    head(&p)
                );
            }
            None => outln!("   {id}: no copy of {name}"),
        }
    }
    outln!();
}

/// A compliance export of every chat, in the RingCentral-Glip layout.
fn show_request(d: &Dirs) {
    outln!("5. a compliance export request: every chat and file share, with attachments, as a zip");
    let json = br#"{"request_id": "demo-1", "target": "archive-a", "modalities": ["im", "file_share"], "attachments": true, "format": "glip"}"#;
    match super::ops::run_request(&d.config, json, &mut |_| {}) {
        Ok(s) => {
            let c = &s.counts;
            let size = std::fs::metadata(&s.zip).map(|m| m.len()).unwrap_or(0);
            let rel = s
                .zip
                .strip_prefix(&d.base)
                .unwrap_or(&s.zip)
                .display()
                .to_string();
            outln!(
                "   request demo-1: {} conversations, {} messages, {} files -> {rel} ({})",
                c.conversations,
                c.messages,
                c.files,
                exportd::human::bytes(size)
            );
        }
        Err(e) => outln!("   request demo-1 FAILED: {e:#}"),
    }
    outln!();
}

/// The audit check, and where to look when the folder is kept.
fn print_audit(d: &Dirs, summary: &RunSummary, keep: bool) {
    match exportd::ledger::audit::verify(&d.state) {
        Ok(r) => outln!("6. audit log: {} rows, hash chain verified", r.rows),
        Err(e) => outln!("6. audit log: VERIFY FAILED: {e}"),
    }
    if !keep {
        return;
    }
    outln!();
    outln!("Where to look:");
    outln!(
        "  exported folders:  {} and {}",
        d.target_a.display(),
        d.target_b.display()
    );
    outln!("  audit log:         {}", d.state.join("audit").display());
    outln!(
        "  status:            exportd status --config {}",
        d.config.display()
    );
    outln!(
        "  archive check:     exportd archive verify --config {}",
        d.config.display()
    );
    if !summary.failures.is_empty() {
        outln!(
            "  failures:          exportd status --config {}",
            d.config.display()
        );
    }
}

fn remove(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}
