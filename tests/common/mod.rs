//! Shared helpers for the integration tests: temporary appliances (spool,
//! targets, state), record writers, and the real `exportd` binary.
#![allow(dead_code)]

pub mod fault;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test (overridable for the QEMU lane).
pub fn exe() -> PathBuf {
    std::env::var_os("EXPORTD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_exportd")))
}

/// How many times longer a deadline is in the emulated lanes (`EXPORTD_LANE`
/// set: QEMU runs the code several times slower than the host, on a shared
/// machine): `EXPORTD_LANE_SLACK`, default 4; 1 on the host. Only for
/// deadlines (wait at most so long, fail after): a test that passes still
/// returns as soon as its condition holds.
pub fn lane_slack() -> u32 {
    if std::env::var_os("EXPORTD_LANE").is_none() {
        return 1;
    }
    std::env::var("EXPORTD_LANE_SLACK")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &u32| n >= 1)
        .unwrap_or(4)
}

/// A deadline scaled for the emulated lanes ([`lane_slack`]).
pub fn patience(d: Duration) -> Duration {
    d * lane_slack()
}

/// A temporary appliance.
pub struct Appliance {
    pub dir: tempfile::TempDir,
    pub spool: PathBuf,
    pub state: PathBuf,
    pub keys: PathBuf,
    pub targets: Vec<PathBuf>,
    pub config: PathBuf,
}

impl Appliance {
    /// Creates folders; `n_targets` folder targets named t0, t1, ...
    pub fn new(n_targets: usize) -> Appliance {
        let dir = tempfile::Builder::new()
            .prefix("exportd-it-")
            .tempdir()
            .unwrap();
        let spool = dir.path().join("spool");
        let state = dir.path().join("state");
        let keys = dir.path().join("keys");
        fs::create_dir_all(&spool).unwrap();
        fs::create_dir_all(&keys).unwrap();
        let targets: Vec<PathBuf> = (0..n_targets)
            .map(|i| dir.path().join(format!("t{i}")))
            .collect();
        for t in &targets {
            fs::create_dir_all(t).unwrap();
        }
        let config = dir.path().join("exportd.toml");
        Appliance {
            dir,
            spool,
            state,
            keys,
            targets,
            config,
        }
    }

    /// The common head of a config (agent, paths, grace, targets).
    pub fn head(&self, grace_s: u64) -> String {
        self.head_with(grace_s, "")
    }

    /// The head with `workers` copy workers (a head setting, before the tables).
    pub fn head_with_workers(&self, grace_s: u64, workers: u32) -> String {
        self.head_with(grace_s, &format!("workers = {workers}\n"))
    }

    fn head_with(&self, grace_s: u64, extra: &str) -> String {
        let mut s = format!(
            "agent_id = \"it\"\nspool = [\"{}\"]\nstate_dir = \"{}\"\nkeys_dir = \"{}\"\nincomplete_grace_s = {grace_s}\n{extra}\n",
            self.spool.display(),
            self.state.display(),
            self.keys.display()
        );
        for (i, t) in self.targets.iter().enumerate() {
            s.push_str(&format!(
                "[[targets]]\nid = \"t{i}\"\nkind = \"fs\"\npath = \"{}\"\n\n",
                t.display()
            ));
        }
        s
    }

    /// Writes the config file.
    pub fn write_config(&self, body: &str) {
        fs::write(&self.config, body).unwrap();
    }

    /// `exportd <args> --config <config>`.
    pub fn cmd(&self, args: &[&str]) -> Output {
        Command::new(exe())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("EXPORTD_LOG", "warn")
            .output()
            .unwrap()
    }

    /// `exportd <args> --config <config> <positional...>`.
    pub fn cmd_with(&self, args: &[&str], positional: &[&str]) -> Output {
        Command::new(exe())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .args(positional)
            .env("EXPORTD_LOG", "warn")
            .output()
            .unwrap()
    }

    /// `exportd run --until-idle`, with a timeout.
    pub fn run_until_idle(&self) -> Output {
        let mut child = Command::new(exe())
            .args(["run", "--until-idle", "--config"])
            .arg(&self.config)
            .env("EXPORTD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if t0.elapsed() > patience(Duration::from_secs(120)) {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "exportd run --until-idle did not finish in {:?}; stderr:\n{}",
                    patience(Duration::from_secs(120)),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the daemon.
    pub fn spawn(&self) -> Daemon {
        let child = Command::new(exe())
            .args(["run", "--config"])
            .arg(&self.config)
            // EXPORTD_TEST_LOG=debug: the daemon's decisions in the log a
            // failing test prints.
            .env(
                "EXPORTD_LOG",
                std::env::var("EXPORTD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let d = Daemon::new(child);
        // Ready when the status file exists.
        wait_for(Duration::from_secs(30), || {
            self.state.join("status.json").exists()
        });
        d
    }

    /// Audit rows (all days), as field vectors, header excluded.
    pub fn audit_rows(&self) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        let dir = self.state.join("audit");
        // The day files only (not `.lock`, nor cut-off tails kept as
        // `audit-YYYYMMDD.csv.damaged-<offset>`).
        let mut files: Vec<PathBuf> = match fs::read_dir(&dir) {
            Ok(rd) => rd
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "csv"))
                .collect(),
            Err(_) => return rows,
        };
        files.sort();
        for f in files {
            // Complete lines only: read while the daemon appends, the last
            // line may be half there (a torn read, not a torn row).
            let text = String::from_utf8_lossy(&fs::read(&f).unwrap()).into_owned();
            for (i, line) in text.split_inclusive('\n').enumerate() {
                let Some(line) = line.strip_suffix('\n') else {
                    continue;
                };
                if i == 0 {
                    continue;
                }
                rows.push(line.split(';').map(String::from).collect());
            }
        }
        rows
    }

    /// Audit rows of one action.
    pub fn rows_with(&self, action: &str) -> Vec<Vec<String>> {
        self.audit_rows()
            .into_iter()
            .filter(|r| r[10] == action)
            .collect()
    }
}

/// A running daemon, SIGKILLed on drop.
pub struct Daemon {
    pub child: Option<Child>,
    /// The file its log goes to, if not its stderr pipe.
    pub log: Option<PathBuf>,
}

impl Daemon {
    /// A daemon started by the caller.
    pub fn new(child: Child) -> Daemon {
        Daemon {
            child: Some(child),
            log: None,
        }
    }
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
    }
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// SIGTERM and wait; returns the exit status and stderr. A daemon that
    /// does not stop within a minute (scaled by [`patience`]) is SIGKILLed
    /// and the test fails saying so, instead of hanging the whole binary
    /// until the lane's timeout kills it without a word.
    pub fn stop(&mut self) -> (i32, String) {
        self.signal("TERM");
        let c = self.child.take().unwrap();
        let pid = c.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(c.wait_with_output());
        });
        let limit = patience(Duration::from_secs(60));
        match rx.recv_timeout(limit) {
            Ok(out) => {
                let out = out.unwrap();
                (
                    out.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            }
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                let out = rx.recv().ok().and_then(|o| o.ok());
                panic!(
                    "the daemon (pid {pid}) did not stop within {limit:?} of SIGTERM; SIGKILLed; stderr tail:\n{}",
                    out.map(|o| tail(&String::from_utf8_lossy(&o.stderr), 4000).to_string())
                        .unwrap_or_default()
                );
            }
        }
    }
}

impl Drop for Daemon {
    /// SIGKILL; when the test is failing, the daemon's log (its stderr, as
    /// far as it was not read) is printed with the failure, so that a
    /// failure seen only in a lane says what the daemon decided.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.kill9();
            return;
        }
        if let Some(mut c) = self.child.take() {
            let state = match c.try_wait() {
                Ok(Some(st)) => format!("had exited ({st})"),
                _ => "was running (SIGKILLed now)".to_string(),
            };
            let _ = c.kill();
            let mut log = Vec::new();
            if let Some(f) = &self.log {
                log = fs::read(f).unwrap_or_default();
            } else if let Some(mut e) = c.stderr.take() {
                let _ = std::io::Read::read_to_end(&mut e, &mut log);
            }
            let _ = c.wait();
            eprintln!(
                "--- the daemon (pid {}) {state}; its log, tail ---\n{}\n--- end of the daemon's log ---",
                c.id(),
                tail(&String::from_utf8_lossy(&log), 8000)
            );
        }
    }
}

/// A central manager's signing key, made with `exportd keygen`, and what it
/// signs with `exportd bundle sign`.
pub struct Central {
    dir: PathBuf,
    /// The key pair's prefix (`.key`, `.pub` beside it).
    pub key: PathBuf,
}

impl Central {
    pub fn new(a: &Appliance) -> Central {
        let key = a.dir.path().join("central");
        let out = Command::new(exe())
            .arg("keygen")
            .arg(&key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Central {
            dir: a.dir.path().to_path_buf(),
            key,
        }
    }

    /// The config's `[[trust]]` entry for this key (config and export roles).
    pub fn trust(&self) -> String {
        format!(
            "[[trust]]\nkeyid = \"central\"\npublic_key = \"{}\"\nroles = [\"config\", \"export\"]\n\n",
            fs::read_to_string(self.key.with_extension("pub"))
                .unwrap()
                .trim()
        )
    }

    /// `payload` signed as a bundle of `kind`; the bundle's path.
    pub fn sign(&self, name: &str, kind: &str, payload: &str) -> PathBuf {
        let p = self.dir.join(format!("{name}.payload.json"));
        fs::write(&p, payload).unwrap();
        let b = self.dir.join(format!("{name}.bundle.json"));
        let s = Command::new(exe())
            .args(["bundle", "sign", "--key"])
            .arg(self.key.with_extension("key"))
            .args(["--keyid", "central", "--type", kind])
            .arg(&p)
            .arg("--out")
            .arg(&b)
            .output()
            .unwrap();
        assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
        b
    }
}

/// Drops a bundle into an agent's inbox as `name` the way a transport
/// does (written under a temp name, then renamed, as config.md asks).
pub fn drop_in(a: &Appliance, bundle: &Path, name: &str) {
    let inbox = a.state.join("inbox");
    fs::create_dir_all(&inbox).unwrap();
    let tmp = inbox.join(format!(".{name}.tmp"));
    fs::copy(bundle, &tmp).unwrap();
    fs::rename(&tmp, inbox.join(name)).unwrap();
}

/// Polls `f` until true or the timeout (then panics).
/// (The timeout is scaled in the emulated lanes: [`patience`].)
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) {
    let timeout = patience(timeout);
    let t0 = Instant::now();
    while !f() {
        if t0.elapsed() > timeout {
            panic!("condition not reached within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A record to write.
#[derive(Clone, Debug)]
pub struct Rec {
    pub id: String,
    pub modality: String,
    pub platform: String,
    pub extension: String,
    pub secondary: bool,
    pub imported: bool,
    pub cdr_only: bool,
    pub start: String,
    /// (role, relative path, content)
    pub files: Vec<(String, String, Vec<u8>)>,
    pub extra_xml: String,
}

impl Rec {
    pub fn voice(id: &str, ext: &str) -> Rec {
        Rec {
            id: id.into(),
            modality: "voice".into(),
            platform: "ipc_unigy".into(),
            extension: ext.into(),
            secondary: false,
            imported: false,
            cdr_only: false,
            start: "2026.11.21 14:03:07.120".into(),
            files: vec![(
                "media".into(),
                format!("{id}.wav"),
                format!("RIFF audio of {id}").into_bytes(),
            )],
            extra_xml: String::new(),
        }
    }

    pub fn xml(&self) -> String {
        let mut files = String::new();
        for (role, p, _) in &self.files {
            files.push_str(&format!("    <file role=\"{role}\">{p}</file>\n"));
        }
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<recording>\n  <id>{}</id>\n  <modality_id>{}</modality_id>\n  <source_platform>{}</source_platform>\n  <secondary>{}</secondary>\n  <imported>{}</imported>\n  <cdr_only>{}</cdr_only>\n  <native_id>N-{}</native_id>\n  <native_call_id>C-{}</native_call_id>\n  <location>rec01</location>\n  <start_time>{}</start_time>\n  <end_time>2026.11.21 14:09:00.000</end_time>\n  <recorded_extension>{}</recorded_extension>\n  <source_caller_id>+442079460958</source_caller_id>\n{}  <files>\n{files}  </files>\n</recording>\n",
            self.id,
            self.modality,
            self.platform,
            self.secondary,
            self.imported,
            self.cdr_only,
            self.id,
            self.id,
            self.start,
            self.extension,
            self.extra_xml
        )
    }

    /// Writes content files, then the XML (directly).
    pub fn write(&self, dir: &Path) -> PathBuf {
        fs::create_dir_all(dir).unwrap();
        for (_, p, data) in &self.files {
            let path = dir.join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, data).unwrap();
        }
        let x = dir.join(format!("{}.xml", self.id));
        fs::write(&x, self.xml()).unwrap();
        x
    }

    /// Writes content files, then the XML through a temp name renamed into place.
    pub fn write_renamed(&self, dir: &Path) -> PathBuf {
        fs::create_dir_all(dir).unwrap();
        for (_, p, data) in &self.files {
            fs::write(dir.join(p), data).unwrap();
        }
        let tmp = dir.join(format!(".{}.xml.tmp", self.id));
        fs::write(&tmp, self.xml()).unwrap();
        let x = dir.join(format!("{}.xml", self.id));
        fs::rename(&tmp, &x).unwrap();
        x
    }
}

/// Every file below `root` with (bytes, size, mtime ns, mode), for checking the spool is untouched.
pub fn tree_state(root: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u64, i64, u32)> {
    let mut m = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p.clone());
            }
            let bytes = if md.is_file() {
                fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            m.insert(
                p,
                (
                    bytes,
                    md.len(),
                    md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                    md.mode(),
                ),
            );
        }
    }
    m
}

/// Every file below `root`, relative, sorted.
pub fn files_below(root: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == ".exportd-target")
                || p.strip_prefix(root)
                    .is_ok_and(|r| r.starts_with("exportd-audit"))
            {
                // The target's marker (issue 13 point 6) and the audit log's
                // checkpoints and closed days (issue 14), not copies.
            } else {
                v.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    v.sort();
    v
}

/// A user table for the config.
pub fn user(id: &str, exts: &[&str], policies: &[&str]) -> String {
    format!(
        "[[users]]\nid = \"{id}\"\nname = \"User {id}\"\nemail = \"{id}@corp.example\"\nextensions = [{}]\npolicies = [{}]\n\n",
        exts.iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", "),
        policies
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Whether CI requires every peer to be present.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

// ---------------------------------------------------------------------------
// Torture-suite helpers (tests/torture_*.rs). Appended; nothing above changed.
// ---------------------------------------------------------------------------

/// A number from the environment, or a default.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A seed: `EXPORTD_TORTURE_SEED` or the clock; always printed so a failure can be replayed.
pub fn torture_seed(test: &str) -> u64 {
    let seed = env_u64(
        "EXPORTD_TORTURE_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    eprintln!("[{test}] seed {seed} (replay with EXPORTD_TORTURE_SEED={seed})");
    seed
}

impl Appliance {
    /// Starts the daemon with its log appended to `log` (a piped stderr that
    /// nobody reads would fill and block a busy daemon). Does not wait.
    pub fn spawn_logged(&self, log: &Path) -> Daemon {
        self.spawn_logged_env(log, &[])
    }

    /// [`Appliance::spawn_logged`] with more environment for the daemon.
    pub fn spawn_logged_env(&self, log: &Path, env: &[(&str, &str)]) -> Daemon {
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(exe())
            .args(["run", "--config"])
            .arg(&self.config)
            .env(
                "EXPORTD_LOG",
                std::env::var("EXPORTD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap();
        Daemon {
            child: Some(child),
            log: Some(log.to_path_buf()),
        }
    }

    /// `exportd run --until-idle` with a longer timeout than [`Appliance::run_until_idle`].
    pub fn run_until_idle_within(&self, timeout: Duration) -> Output {
        let mut child = Command::new(exe())
            .args(["run", "--until-idle", "--config"])
            .arg(&self.config)
            .env("EXPORTD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let timeout = patience(timeout);
        // Drain stderr on a thread so a chatty run cannot block on a full pipe.
        let mut err = child.stderr.take().unwrap();
        let drain = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = std::io::Read::read_to_end(&mut err, &mut s);
            s
        });
        let t0 = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if t0.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                let e = drain.join().unwrap();
                panic!(
                    "exportd run --until-idle did not finish in {timeout:?}; stderr tail:\n{}",
                    tail(&String::from_utf8_lossy(&e), 3000)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = child.wait_with_output().unwrap();
        out.stderr = drain.join().unwrap();
        out
    }

    /// The status file as JSON (None while absent or half-written).
    pub fn status_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&fs::read(self.state.join("status.json")).ok()?).ok()
    }
}

/// The last `n` bytes of a text (on a char boundary).
pub fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// Every metadata XML below a spool root (not temp names), sorted.
pub fn spool_xmls(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = files_below(root)
        .into_iter()
        .filter(|rel| {
            let name = rel.rsplit('/').next().unwrap_or(rel);
            exportd::watch::spool::is_metadata_name(name)
        })
        .map(|rel| root.join(rel))
        .collect();
    v.sort();
    v
}

/// One due copy, computed independently of the agent from the library's pure
/// parts (record parser, snapshot, matcher, layout).
#[derive(Debug, Clone)]
pub struct DueCopy {
    pub record_id: String,
    pub policy_id: String,
    pub target_id: String,
    /// Target root.
    pub root: PathBuf,
    /// Record folder relative to the target root.
    pub folder: String,
    /// (name in the folder, spool file it must equal byte for byte).
    pub files: Vec<(String, PathBuf)>,
    /// Generated names that may be present (messages JSON, vCon) depending on the build's plugins.
    pub optional: Vec<String>,
}

/// Due copies of every record in `spool` under the config at `config`.
/// Unparsable XMLs are ignored (they are error rows, not copies).
pub fn due_copies(config: &Path, spool: &Path) -> Vec<DueCopy> {
    use exportd::export::layout::{Values, metadata_name, plan_files, sanitize_component};
    use exportd::policy::matcher::{Decision, Verdict, decide};
    use exportd::record::Modality;
    let cfg = exportd::policy::config::LocalConfig::load(config).unwrap();
    let snap = exportd::policy::snapshot::Snapshot::from_model(&cfg.inline_model()).unwrap();
    let mut out = Vec::new();
    for xml in spool_xmls(spool) {
        let Ok(bytes) = fs::read(&xml) else { continue };
        let Ok(rec) = exportd::record::parse(&bytes) else {
            continue;
        };
        let Decision::Policies(user, verdicts) = decide(&rec, &snap) else {
            continue;
        };
        for (pi, v) in verdicts {
            if v != Verdict::Take {
                continue;
            }
            let cp = &snap.policies()[pi];
            let s = &cp.policy.settings;
            let plan = plan_files(
                &rec,
                s.decrypt,
                s.im_attachments || rec.modality == Modality::FileShare,
                s.file_extensions.as_deref(),
            )
            .unwrap();
            let folder = cp
                .template
                .expand(&Values::of(&rec, user.id, &cp.policy.id));
            let dir = xml.parent().unwrap();
            let mut files: Vec<(String, PathBuf)> = plan
                .iter()
                .map(|p| (p.out_name.clone(), dir.join(&rec.files[p.index].path)))
                .collect();
            files.push((metadata_name(&rec.id, false), xml.clone()));
            let mut optional = Vec::new();
            if rec.modality == Modality::Im {
                optional.push(format!("{}.messages.json", sanitize_component(&rec.id)));
            }
            if s.vcon {
                optional.push(format!("{}.vcon.json", sanitize_component(&rec.id)));
            }
            for &ti in &cp.targets {
                let spec = &snap.targets()[ti];
                out.push(DueCopy {
                    record_id: rec.id.clone(),
                    policy_id: cp.policy.id.clone(),
                    target_id: spec.id.clone(),
                    root: spec.path.clone().unwrap(),
                    folder: folder.clone(),
                    files: files.clone(),
                    optional: optional.clone(),
                });
            }
        }
    }
    out
}

/// What [`check_exactly_once`] found.
#[derive(Debug, Default, Clone)]
pub struct OnceReport {
    pub due_copies: usize,
    pub files_checked: usize,
    /// Due copies with more than one `export` row (re-done after a kill).
    pub duplicate_rows: usize,
    /// Extra `export` rows in total (rows beyond one per due copy).
    pub extra_rows: usize,
}

/// Checks every due copy exists exactly once with the right bytes, nothing
/// else (no temp files, no stray names) is below the target roots, the XML is
/// in every folder, the audit chain verifies, and each due copy has at least
/// one `export` row. Panics with a precise message otherwise.
pub fn check_exactly_once(a: &Appliance, due: &[DueCopy]) -> OnceReport {
    use std::collections::{BTreeSet, HashMap};
    let mut rep = OnceReport {
        due_copies: due.len(),
        ..OnceReport::default()
    };
    let mut expected: HashMap<PathBuf, BTreeSet<String>> = HashMap::new();
    let mut optional: HashMap<PathBuf, BTreeSet<String>> = HashMap::new();
    for d in due {
        let dir = d.root.join(&d.folder);
        for (name, src) in &d.files {
            let got = fs::read(dir.join(name)).unwrap_or_else(|e| {
                panic!(
                    "record {} policy {} target {}: {}/{name} missing: {e}",
                    d.record_id, d.policy_id, d.target_id, d.folder
                )
            });
            let want = fs::read(src).unwrap();
            assert!(
                got == want,
                "record {}: {}/{name} differs from {}",
                d.record_id,
                d.folder,
                src.display()
            );
            rep.files_checked += 1;
            let rel = format!("{}/{name}", d.folder);
            expected.entry(d.root.clone()).or_default().insert(rel);
        }
        for o in &d.optional {
            optional
                .entry(d.root.clone())
                .or_default()
                .insert(format!("{}/{o}", d.folder));
        }
    }
    let roots: BTreeSet<PathBuf> = a.targets.iter().cloned().collect();
    for root in roots {
        let want = expected.remove(&root).unwrap_or_default();
        let opt = optional.remove(&root).unwrap_or_default();
        let have: BTreeSet<String> = files_below(&root).into_iter().collect();
        let temps: Vec<&String> = have.iter().filter(|f| f.contains("exportd-tmp")).collect();
        assert!(
            temps.is_empty(),
            "temp files left in {}: {temps:?}",
            root.display()
        );
        let extra: Vec<&String> = have
            .iter()
            .filter(|f| !want.contains(*f) && !opt.contains(*f))
            .collect();
        assert!(
            extra.is_empty(),
            "files nobody is due in {}: {:?}",
            root.display(),
            &extra[..extra.len().min(20)]
        );
        assert!(want.is_subset(&have));
    }
    let v = a.cmd(&["audit", "verify"]);
    assert_eq!(
        v.status.code(),
        Some(0),
        "audit verify: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let mut rows: HashMap<(String, String, String), usize> = HashMap::new();
    for r in a.rows_with("export") {
        *rows
            .entry((r[1].clone(), r[6].clone(), r[9].clone()))
            .or_default() += 1;
    }
    let mut per: HashMap<(String, String, String), usize> = HashMap::new();
    for d in due {
        *per.entry((d.record_id.clone(), d.policy_id.clone(), d.folder.clone()))
            .or_default() += 1;
    }
    for (k, n_targets) in &per {
        let n = rows.get(k).copied().unwrap_or(0);
        assert!(
            n >= *n_targets,
            "due copy {k:?} has {n} export rows, want at least {n_targets}"
        );
        if n > *n_targets {
            rep.duplicate_rows += 1;
            rep.extra_rows += n - n_targets;
            // What the audit log says of that record, for the failure below.
            for r in a.audit_rows().iter().filter(|r| r.get(1) == Some(&k.0)) {
                eprintln!("audit row of duplicated {k:?}: {}", r.join(" | "));
            }
        }
    }
    // One export row per copy, ever: a crash between the row and the
    // journal entry is resolved at startup from the audit log.
    assert_eq!(
        rep.extra_rows, 0,
        "{} due copies have more than one export row ({} extra rows)",
        rep.duplicate_rows, rep.extra_rows
    );
    rep
}

/// An exclusive lock on a file under /tmp, for tests that change global
/// machine state (inotify limits, mounts). Released on drop.
pub struct GlobalLock(fs::File);

pub fn global_lock(name: &str) -> GlobalLock {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("/tmp/exportd-torture-{name}.lock"))
        .unwrap();
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).unwrap();
    GlobalLock(f)
}

/// Whether we are root (uid 0).
pub fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Like [`wait_for`], but the panic says what was awaited and shows the tail of a daemon log.
/// (The timeout is scaled in the emulated lanes: [`patience`].)
pub fn wait_until(what: &str, timeout: Duration, log: &Path, mut f: impl FnMut() -> bool) {
    let timeout = patience(timeout);
    let t0 = Instant::now();
    while !f() {
        if t0.elapsed() > timeout {
            panic!(
                "{what}: not reached within {timeout:?}; daemon log tail:\n{}",
                tail(&fs::read_to_string(log).unwrap_or_default(), 4000)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
