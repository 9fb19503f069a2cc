//! Real fault injection for the integration tests: the LD_PRELOAD shim in
//! `tests/support/faultshim.c` (failed fsync, short writes and ENOSPC, read
//! and open errors, on chosen paths only) and size-limited tmpfs mounts.
//!
//! Both need the host: the shim is built with the host's `cc` (an x86 `.so`
//! cannot load into the emulated lanes' binaries) and mounting needs root.
//! Where they cannot be had, the helpers return `None` after printing why;
//! under `CI=true` on the host a missing prerequisite is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Why a host-only fault cannot run here, or None when it can. Panics under
/// CI=true on the host when it should be able to and cannot.
fn host_only(test: &str, need_root: bool) -> Option<String> {
    if let Ok(lane) = std::env::var("EXPORTD_LANE") {
        return Some(format!(
            "{test}: skipped in the {lane} lane (host-only fault injection; runs on the host in CI)"
        ));
    }
    if need_root && !super::is_root() {
        let msg = format!("{test}: needs root (mount)");
        if super::ci() {
            panic!("{msg}; required under CI=true");
        }
        return Some(msg);
    }
    None
}

/// The built shim (`libfaultshim.so`), or None (reason printed) where it
/// cannot be used. Built once per test binary.
pub fn shim(test: &str) -> Option<PathBuf> {
    if let Some(why) = host_only(test, false) {
        eprintln!("SKIP {why}");
        return None;
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = BUILT.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/faultshim.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("libfaultshim-{}.so", std::process::id()));
        let st = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&out)
            .arg(&src)
            .arg("-ldl")
            .status();
        match st {
            Ok(s) if s.success() => Ok(out),
            Ok(s) => Err(format!("cc failed ({s}) building {}", src.display())),
            Err(e) => Err(format!("cannot run cc: {e}")),
        }
    });
    match r {
        Ok(p) => Some(p.clone()),
        Err(e) => {
            if super::ci() {
                panic!("{test}: {e}; the fault shim is required under CI=true");
            }
            eprintln!("SKIP {test}: {e}");
            None
        }
    }
}

/// Sets `cmd` up to run under the shim with the given `FAULT_*` variables.
pub fn with_shim<'a>(cmd: &'a mut Command, shim: &Path, vars: &[(&str, &str)]) -> &'a mut Command {
    cmd.env("LD_PRELOAD", shim);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

/// A tmpfs of a fixed size mounted at a fresh folder; unmounted on drop.
pub struct SmallFs {
    /// The mount point.
    pub path: PathBuf,
}

impl SmallFs {
    /// Mounts `size` (e.g. "256k") at `at` (created). None (reason printed)
    /// where mounting is not possible.
    pub fn mount(test: &str, at: &Path, size: &str) -> Option<SmallFs> {
        if let Some(why) = host_only(test, true) {
            eprintln!("SKIP {why}");
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .expect("run mount");
        if !st.success() {
            let msg = format!("{test}: mount -t tmpfs failed ({st})");
            if super::ci() {
                panic!("{msg}; required under CI=true");
            }
            eprintln!("SKIP {msg}");
            return None;
        }
        Some(SmallFs {
            path: at.to_path_buf(),
        })
    }

    /// Fills the file system up with a ballast file, leaving about `leave`
    /// bytes free. Returns the ballast's path (remove it to free space).
    pub fn fill(&self, leave: u64) -> PathBuf {
        let ballast = self.path.join("ballast");
        let free = {
            let out = Command::new("df")
                .args(["-B1", "--output=avail"])
                .arg(&self.path)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let want = free.saturating_sub(leave);
        std::fs::write(&ballast, vec![0u8; want as usize]).ok();
        ballast
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
