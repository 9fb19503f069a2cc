//! What the lanes must support for exportd's tests.
use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};
use lane_selftest::scratch;
use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The `lane-child` binary. Tests find it the way exportd's tests find
/// `exportd`: an env override first (`LANE_CHILD_BIN`, set by the armv7
/// qemu-user lane to a wrapper script, because a qemu-user process cannot
/// exec a foreign binary without binfmt_misc), then the compile-time
/// `CARGO_BIN_EXE_lane-child` (the VM lane recreates that absolute path).
fn child_bin() -> PathBuf {
    std::env::var_os("LANE_CHILD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lane-child")))
}

/// Opt-in failure modes to check that the lane reports them:
/// LANE_SELFTEST_FAIL=1 fails this test, LANE_SELFTEST_HANG=1 hangs it.
#[test]
fn lane_env_and_injected_faults() {
    let lane = std::env::var("EXPORTD_LANE").unwrap_or_default();
    println!("EXPORTD_LANE={lane:?} CI={:?} arch={}", std::env::var("CI").ok(), std::env::consts::ARCH);
    if lane == "qemu" {
        assert_eq!(std::env::consts::ARCH, "aarch64", "the VM lane is aarch64");
    }
    if std::env::var_os("LANE_SELFTEST_HANG").is_some() {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    assert!(std::env::var_os("LANE_SELFTEST_FAIL").is_none(), "LANE_SELFTEST_FAIL is set");
}

#[test]
fn tokio_multi_thread_runs_four_workers_at_once() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    // Each task blocks its worker until all four arrive: only completes when
    // four workers really run concurrently.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
    rt.block_on(async {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let b = barrier.clone();
                tokio::spawn(async move {
                    b.wait();
                    std::thread::current().id()
                })
            })
            .collect();
        let mut ids = Vec::new();
        for h in hs {
            ids.push(h.await.unwrap());
        }
        ids.sort_by_key(|id| format!("{id:?}"));
        ids.dedup();
        assert_eq!(ids.len(), 4);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_test_macro_timers_and_blocking() {
    let t0 = tokio::time::Instant::now();
    let (a, b) = tokio::join!(
        tokio::time::sleep(Duration::from_millis(50)),
        tokio::task::spawn_blocking(|| 6 * 7)
    );
    let () = a;
    assert_eq!(b.unwrap(), 42);
    assert!(t0.elapsed() >= Duration::from_millis(50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inotify_close_write_and_moved_to() {
    let dir = scratch("inotify");
    let ino = Inotify::init().unwrap();
    ino.watches().add(&dir, WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO).unwrap();
    let mut events = ino.into_event_stream([0u8; 4096]).unwrap();
    let d2 = dir.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::write(d2.join("a.wav"), b"RIFF").unwrap();
        std::fs::write(d2.join(".b.tmp"), b"<xml/>").unwrap();
        std::fs::rename(d2.join(".b.tmp"), d2.join("b.xml")).unwrap();
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    while !seen.iter().any(|n: &String| n == "b.xml") {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("no inotify event within 20 s")
            .unwrap()
            .unwrap();
        seen.push(ev.name.unwrap().to_string_lossy().into_owned());
    }
    assert!(seen.contains(&"a.wav".to_string()), "{seen:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn raw_fork_exec_of_bin_sh() {
    let sh = CString::new("/bin/sh").unwrap();
    let argv = [c"sh".as_ptr(), c"-c".as_ptr(), c"exit 3".as_ptr(), std::ptr::null()];
    let status = unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            libc::execv(sh.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
        let mut st = 0;
        assert_eq!(libc::waitpid(pid, &mut st, 0), pid);
        st
    };
    assert!(libc::WIFEXITED(status));
    assert_eq!(libc::WEXITSTATUS(status), 3);
}

#[test]
fn child_binary_exit_code_and_env() {
    let st = Command::new(child_bin()).args(["exit", "7"]).status().unwrap();
    assert_eq!(st.code(), Some(7));
    let out = Command::new(child_bin()).args(["env", "LANE_PROBE"]).env("LANE_PROBE", "x y").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "x y");
}

#[test]
fn child_binary_sigkill() {
    let mut child = Command::new(child_bin()).arg("sleep").stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    child.kill().unwrap(); // SIGKILL
    let st = child.wait().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
}

#[test]
fn fixtures_via_manifest_dir_and_cwd() {
    let want = "hello from the fixtures\n";
    let abs = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hello.txt");
    assert_eq!(std::fs::read_to_string(abs).unwrap(), want);
    // cargo runs tests from the package root; the lanes do the same
    assert_eq!(std::fs::read_to_string("tests/fixtures/hello.txt").unwrap(), want);
}
