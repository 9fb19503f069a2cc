//! The `exportd` binary: the process edge (malloc arenas, the error line,
//! the exit code); every command lives in `cli`, never here.
//!
//! The `exportd` command: a thin edge over the library. Parses arguments,
//! sets up logging, calls the library, maps results to exit codes:
//! 0 success, 1 some records (or checks) failed, 2 usage or startup error.
#![deny(unsafe_code)]

mod cli;

/// At most two malloc arenas. glibc gives each thread that allocates its
/// own arena (up to 8 per core), and every arena keeps what its thread
/// freed: with 8 copy workers that alone was ~2 MiB of a ~9 MiB resident
/// set. The workers allocate little per record, so sharing costs nothing
/// measurable.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets an allocator tunable; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() {
    limit_malloc_arenas();
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
