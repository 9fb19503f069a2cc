//! The `exportd` command: a thin edge over the library. Parses arguments,
//! sets up logging, calls the library, maps results to exit codes:
//! 0 success, 1 some records (or checks) failed, 2 usage or startup error.
#![deny(unsafe_code)]

mod cli;

fn main() {
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
