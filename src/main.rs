//! The `exportd` command: a thin edge over the library. Parses arguments,
//! sets up logging, calls the library, maps results to exit codes:
//! 0 success, 1 some records (or checks) failed, 2 usage or startup error.
#![deny(unsafe_code)]

mod cli;

fn main() {
    let code = match cli::main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("exportd: error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}
