//! The `exportd` binary: the process edge (malloc arenas, the error line,
//! the exit code); every command lives in `cli`, never here.
//!
//! The `exportd` command: a thin edge over the library. Parses arguments,
//! sets up logging, calls the library, maps results to exit codes:
//! 0 success, 1 some records (or checks) failed, 2 usage or startup error.
#![deny(unsafe_code)]

mod cli;

/// glibc's allocator, tuned for a small resident set (BENCHMARKS.md,
/// issue 22):
/// - One malloc arena. glibc gives each thread that allocates its own
///   arena (up to 8 per core), and every arena keeps what its thread
///   freed: with 8 copy workers that alone was ~2 MiB of a ~9 MiB resident
///   set, and a second arena still held ~0.8 MiB of free memory at 200
///   records/s. The workers allocate little per record, so sharing one
///   costs nothing measurable.
/// - Blocks of 64 KiB and more always in their own mapping. By default the
///   threshold rises to the largest block freed, after which growing
///   buffers (the watch map, the journal's shards) are moved within the
///   heap, each move leaving a hole as large as the buffer was; mapped
///   blocks grow in place (`mremap`) and go back to the kernel when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets allocator tunables; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 10);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

/// The daemon (`exportd run`) without glibc's per-thread malloc caches.
/// Each thread keeps up to 7 freed blocks of every small size for itself,
/// blocks that cannot be merged or reused by the others: at 200 records/s
/// in a folder per record the heap was 2.0 MiB resident with them and
/// 0.9 MiB without (VmHWM 8.2 -> 6.9 MiB, latency unchanged;
/// BENCHMARKS.md, issue 22). glibc reads the tunable only when a program
/// starts, and no `mallopt` sets it, so the daemon starts itself again
/// (same process, same pid: `execve` of its own binary) with
/// `GLIBC_TUNABLES` set, unless the variable is set already (the systemd
/// unit sets it; an operator's own tunables are left as they are). Where
/// that exec fails (no binary to exec, an emulator without binfmt_misc),
/// the daemon runs on with the caches.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn without_thread_caches() {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let daemon = args
        .iter()
        .skip(1)
        .find(|a| !a.to_string_lossy().starts_with('-'));
    if daemon.is_none_or(|c| c != "run") {
        return;
    }
    // An operator's own tunables are theirs: left as they are.
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let cstr = |b: &[u8]| CString::new(b).ok();
    let Some(path) = cstr(exe.as_os_str().as_bytes()) else {
        return;
    };
    let Some(argv) = args
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<Option<Vec<CString>>>()
    else {
        return;
    };
    let mut envp: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut e = k.as_bytes().to_vec();
            e.push(b'=');
            e.extend_from_slice(v.as_bytes());
            cstr(&e)
        })
        .collect();
    envp.push(c"GLIBC_TUNABLES=glibc.malloc.tcache_count=0".to_owned());
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // execve itself, not std's exec: that one is execvp, which runs a file
    // the kernel refuses (ENOEXEC: a foreign binary under qemu-user) as a
    // shell script.
    #[allow(unsafe_code)]
    // SAFETY: every pointer is to a NUL-terminated string owned above, the
    // two arrays end with a null pointer, and all outlive the call; the
    // call returns only on failure, changing nothing (the process is still
    // single-threaded here).
    unsafe {
        libc::execve(path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn without_thread_caches() {}

fn main() {
    without_thread_caches();
    tune_malloc();
    let code = match cli::main() {
        Ok(code) => code,
        Err(e) => {
            // The chain, without causes already spelled out by the message above them.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("exportd: error: {msg}");
            2
        }
    };
    std::process::exit(code);
}
