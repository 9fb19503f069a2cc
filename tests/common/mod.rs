//! Shared helpers for the integration tests: temporary appliances (spool,
//! targets, state), record writers, and the real `exportd` binary.
#![allow(dead_code)]

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
        let mut s = format!(
            "agent_id = \"it\"\nspool = [\"{}\"]\nstate_dir = \"{}\"\nkeys_dir = \"{}\"\nincomplete_grace_s = {grace_s}\n\n",
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
            if t0.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "exportd run --until-idle did not finish in 120 s; stderr:\n{}",
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
            .env("EXPORTD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let d = Daemon { child: Some(child) };
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
        let mut files: Vec<PathBuf> = match fs::read_dir(&dir) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => return rows,
        };
        files.sort();
        for f in files {
            for (i, line) in fs::read_to_string(&f).unwrap().lines().enumerate() {
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
}

impl Daemon {
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
    /// SIGTERM and wait; returns the exit status and stderr.
    pub fn stop(&mut self) -> (i32, String) {
        self.signal("TERM");
        let c = self.child.take().unwrap();
        let out = c.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `f` until true or the timeout (then panics).
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) {
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
