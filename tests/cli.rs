//! The command line as a user meets it: help for every command, unknown
//! commands and flags, flags of another command, output into a closed pipe,
//! refused log settings, and the packaged completions and man page (which
//! must equal what the binary generates: `EXPORTD_BLESS=1 cargo test --test
//! cli` rewrites them under dist/). Only runs the binary; quick.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::exe;

fn exportd(args: &[&str]) -> Output {
    Command::new(exe())
        .args(args)
        .env_remove("EXPORTD_LOG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every command's words, as `exportd --help` lists them.
fn commands() -> Vec<String> {
    let o = exportd(&["--help"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let help = text(&o.stdout);
    let list = help
        .split("COMMANDS:\n")
        .nth(1)
        .expect("a COMMANDS section")
        .split("\n\n")
        .next()
        .unwrap();
    let cmds: Vec<String> = list
        .lines()
        .filter(|l| l.starts_with("    ") && !l.starts_with("     "))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            // "audit verify  check ..." : one or two words before the double space.
            let name = l.trim_start().split("  ").next().unwrap();
            assert!(words.len() > 1, "{l}");
            name.to_string()
        })
        .collect();
    assert!(cmds.len() >= 15, "{cmds:?}");
    cmds
}

#[test]
fn every_command_has_help_with_its_flags_and_exit_codes() {
    for c in commands() {
        let words: Vec<&str> = c.split(' ').collect();
        let mut args = words.clone();
        args.push("--help");
        let o = exportd(&args);
        assert_eq!(o.status.code(), Some(0), "{c} --help: {}", text(&o.stderr));
        let h = text(&o.stdout);
        assert!(h.starts_with(&format!("exportd {c}: ")), "{c}: {h}");
        assert!(h.contains(&format!("exportd {c}")), "{c}: no usage line");
        assert!(
            h.contains("EXIT STATUS") && h.contains("usage or startup error"),
            "{c}: {h}"
        );
        // `help CMD` says the same.
        let mut hargs = vec!["help"];
        hargs.extend(&words);
        let o2 = exportd(&hargs);
        assert_eq!(o2.status.code(), Some(0), "help {c}");
        assert_eq!(text(&o2.stdout), h, "help {c} differs from {c} --help");
    }
    let s = text(&exportd(&["status", "--help"]).stdout);
    assert!(s.contains("--json") && s.contains("--config FILE"), "{s}");
    assert!(s.contains("/etc/exportd/exportd.toml"), "{s}");
    let g = exportd(&["bundle", "--help"]);
    assert_eq!(g.status.code(), Some(0));
    assert!(text(&g.stdout).contains("bundle sign") && text(&g.stdout).contains("bundle cosign"));
}

#[test]
fn unknown_commands_and_flags_are_named_with_a_hint() {
    let o = exportd(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let e = text(&o.stderr);
    assert!(
        e.contains("unknown command \"frobnicate\"") && e.contains("--help"),
        "{e}"
    );

    let o = exportd(&["bundle", "frob"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("unknown command \"bundle frob\""),
        "{}",
        text(&o.stderr)
    );

    let o = exportd(&["status", "--frob"]);
    assert_eq!(o.status.code(), Some(2));
    let e = text(&o.stderr);
    assert!(
        e.contains("unknown flag --frob") && e.contains("exportd status --help"),
        "{e}"
    );

    let o = exportd(&["help", "frob"]);
    assert_eq!(o.status.code(), Some(2));

    let o = exportd(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("COMMANDS:"));
}

#[test]
fn a_flag_of_another_command_is_refused() {
    for (args, flag, owner) in [
        (&["status", "--keep"][..], "--keep", "demo"),
        (&["keygen", "--config", "x.toml"][..], "--config", "status"),
        (&["check-config", "--until-idle"][..], "--until-idle", "run"),
        (&["agent-key", "--spool", "/tmp"][..], "--spool", "simulate"),
    ] {
        let o = exportd(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = text(&o.stderr);
        assert!(
            e.contains(&format!("does not take {flag}")),
            "{args:?}: {e}"
        );
        assert!(e.contains(owner), "{args:?}: {e}");
    }
    // Missing required flags and extra arguments: usage errors too.
    let o = exportd(&["simulate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("needs --spool DIR"),
        "{}",
        text(&o.stderr)
    );
    let o = exportd(&["status", "extra"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("unexpected argument \"extra\""));
}

#[test]
fn config_defaults_to_etc() {
    // No --config: the default path is read (and named when it is missing).
    if Path::new("/etc/exportd/exportd.toml").exists() {
        eprintln!("skipped: this host has /etc/exportd/exportd.toml");
        return;
    }
    let o = exportd(&["status"]);
    assert_eq!(o.status.code(), Some(2));
    let e = text(&o.stderr);
    assert!(
        e.contains("/etc/exportd/exportd.toml") && !e.contains("required"),
        "{e}"
    );
}

/// Runs `exportd args` with stdout a pipe whose reading end is already closed.
fn into_closed_pipe(args: &[&str]) -> Output {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) fills two new descriptors; each is owned exactly once below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(r);
    Command::new(exe())
        .args(args)
        .stdout(Stdio::from(w))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    for args in [
        &["--help"][..],
        &["help", "status"],
        &["manpage"],
        &["completions", "bash"],
    ] {
        let o = into_closed_pipe(args);
        let e = text(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {:?} {e}", o.status);
        assert!(
            !e.contains("panicked") && !e.contains("Broken pipe"),
            "{args:?}: {e}"
        );
    }
}

#[test]
fn check_config_warns_without_users_and_ends_quietly_into_a_closed_pipe() {
    let a = common::Appliance::new(1);
    let policy = "[[policies]]\nid = \"p\"\nname = \"p\"\ntargets = [\"t0\"]\n\n";
    a.write_config(&format!("{}{policy}", a.head(1)));
    let cfg = a.config.to_str().unwrap();
    let o = exportd(&["check-config", "--config", cfg]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("no [[users]]"),
        "{}",
        text(&o.stderr)
    );
    // check-config's body still prints with println!: the panic hook makes
    // EPIPE there the same quiet exit.
    let o = into_closed_pipe(&["check-config", "--config", cfg]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains("panicked"), "{}", text(&o.stderr));

    let user = common::user("u-1", &["+12125550100"], &["p"]);
    a.write_config(&format!("{}{policy}{user}", a.head(1)));
    let o = exportd(&["check-config", "--config", cfg]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        !text(&o.stderr).contains("no [[users]]"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn unknown_log_settings_are_refused_with_the_accepted_values() {
    let o = exportd(&[
        "run",
        "--log-format",
        "xml",
        "--config",
        "/nonexistent.toml",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = text(&o.stderr);
    assert!(
        e.contains("\"xml\"") && e.contains("text, json, journal"),
        "{e}"
    );

    let o = Command::new(exe())
        .args(["keygen", "--help"])
        .env("EXPORTD_LOG", "verbose")
        .output()
        .unwrap();
    // --help is answered before anything else
    assert_eq!(o.status.code(), Some(0));
    let o = Command::new(exe())
        .args(["check-config", "--config", "/nonexistent.toml"])
        .env("EXPORTD_LOG", "verbose")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = text(&o.stderr);
    assert!(
        e.contains("EXPORTD_LOG=\"verbose\"") && e.contains("error, warn, info, debug, trace"),
        "{e}"
    );
}

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dist")
}

/// The emulated lanes see only `tests/` and `../shared/` of the source tree
/// (cross/README.md): the packaged files are checked on the host.
fn dist_or_skip() -> bool {
    if !dist().is_dir() && std::env::var_os("EXPORTD_LANE").is_some() {
        eprintln!("skipped: dist/ is not in this lane's copy of the tree (checked on the host)");
        return false;
    }
    true
}

#[test]
fn packaged_completions_and_manpage_are_current_and_complete() {
    let cmds = commands();
    let files = [
        (&["completions", "bash"][..], "completions/exportd.bash"),
        (&["completions", "zsh"], "completions/_exportd"),
        (&["completions", "fish"], "completions/exportd.fish"),
        (&["manpage"], "exportd.1"),
    ];
    if !dist_or_skip() {
        return;
    }
    let bless = std::env::var_os("EXPORTD_BLESS").is_some();
    for (args, file) in files {
        let o = exportd(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        let generated = text(&o.stdout);
        for c in &cmds {
            let last = c.rsplit(' ').next().unwrap();
            let roffed = last.replace('-', "\\-");
            assert!(
                generated.contains(last) || generated.contains(&roffed),
                "{file}: {c} missing"
            );
        }
        let path = dist().join(file);
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        let packaged = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            packaged == generated,
            "dist/{file} is stale: run `EXPORTD_BLESS=1 cargo test --test cli` and commit dist/"
        );
    }
}

#[test]
fn bash_completion_script_parses() {
    if !dist_or_skip() {
        return;
    }
    let Ok(bash) = which("bash") else {
        eprintln!("skipped: no bash");
        return;
    };
    let o = Command::new(bash)
        .args([
            "-n",
            dist().join("completions/exportd.bash").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .ok_or(())
}
