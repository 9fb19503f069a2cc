//! Standard output that ends quietly when the reader has gone:
//! `exportd --help | head -1` or `exportd status | true` must not panic.
//! A write that fails with EPIPE exits the process with 0 (the reader
//! asked for no more); any other write error is reported and exits 2.
//!
//! Code that still uses `println!` (in the library, or command bodies not
//! converted yet) is covered by [`quiet_broken_pipe`], a panic hook that
//! turns "failed printing to stdout: Broken pipe" into the same quiet exit.

use std::io::{self, Write};

/// Writes `s` to stdout (no newline added), flushing it.
pub fn write_str(s: &str) {
    let mut o = io::stdout().lock();
    if let Err(e) = o.write_all(s.as_bytes()).and_then(|()| o.flush()) {
        gone(&e);
    }
}

/// What to do when stdout cannot be written.
fn gone(e: &io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    // stderr may be gone too: never panic here.
    let _ = writeln!(io::stderr(), "exportd: error: writing to stdout: {e}");
    std::process::exit(2);
}

/// Installs the panic hook that makes a `println!` into a closed pipe a
/// quiet exit 0 (`println!` panics on EPIPE; with `panic = "abort"` that
/// was exit 134); every other panic goes to the default hook.
pub fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.to_string();
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// `println!` that ends quietly on a closed pipe.
macro_rules! outln {
    () => { $crate::cli::out::write_str("\n") };
    ($($arg:tt)*) => {
        $crate::cli::out::write_str(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that ends quietly on a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::out::write_str(&format!($($arg)*)) };
}

pub(crate) use {out, outln};
