//! The help texts, made from the command table: the overview
//! (`exportd --help`, `exportd help`), one command's help
//! (`exportd status --help`, `exportd help status`) and a group's
//! (`exportd bundle --help`).

use std::fmt::Write;

use super::table::{COMMANDS, Command, DEFAULT_CONFIG, EXIT_CODES, Flag, LOG_LEVELS, group};

const WIDTH: usize = 100;

/// Wraps `text` at [`WIDTH`], every line after the first indented by `indent`.
fn wrap(text: &str, first: usize, indent: usize) -> String {
    let mut out = String::new();
    let mut col = first;
    let mut line_start = true;
    for w in text.split_whitespace() {
        if !line_start && col + 1 + w.len() > WIDTH {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            col = indent;
            line_start = true;
        }
        if !line_start {
            out.push(' ');
            col += 1;
        }
        out.push_str(w);
        col += w.len();
        line_start = false;
    }
    out
}

fn exit_codes() -> String {
    let mut s = String::from("EXIT STATUS:\n");
    for (c, what) in EXIT_CODES {
        let _ = writeln!(s, "    {c}  {}", wrap(what, 7, 7));
    }
    s
}

/// `exportd --help`.
pub fn overview() -> String {
    let mut s = format!(
        "exportd {}: direct-export agent for call-recording appliances\n\n\
         USAGE:\n    exportd COMMAND [OPTIONS] [ARGS]\n    exportd help [COMMAND]      (or: exportd COMMAND --help)\n\n\
         COMMANDS:\n",
        env!("CARGO_PKG_VERSION")
    );
    let w = COMMANDS.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in COMMANDS {
        let _ = writeln!(s, "    {:<w$}  {}", c.name, wrap(c.about, w + 6, w + 6));
    }
    let _ = write!(
        s,
        "\nCommands that read the configuration take --config FILE (default {DEFAULT_CONFIG}).\n\
         Logs go to stderr; EXPORTD_LOG={} sets the level.\n\n{}\
         \nSee README.md for the configuration file, and `man exportd`.",
        LOG_LEVELS.join("|"),
        exit_codes()
    );
    s
}

fn flag_left(f: &Flag) -> String {
    let short = match f.short {
        Some(c) => format!("-{c}, "),
        None => "    ".into(),
    };
    match f.value {
        Some(v) => format!("{short}--{} {v}", f.long),
        None => format!("{short}--{}", f.long),
    }
}

/// `exportd CMD --help`.
pub fn command(c: &Command) -> String {
    let mut s = format!("exportd {}: {}\n\nUSAGE:\n    ", c.name, c.about);
    s.push_str(&wrap(&c.synopsis(), 4, 8));
    s.push('\n');
    if !c.more.is_empty() {
        s.push('\n');
        s.push_str(&wrap(c.more, 0, 0));
        s.push('\n');
    }
    let mut rows: Vec<(String, String)> = c
        .flags()
        .map(|(f, req)| {
            let mut help = f.help.to_string();
            if req {
                help.push_str(" (required)");
            }
            if f.repeat && !help.contains("repeatable") {
                help.push_str(" (repeatable)");
            }
            (flag_left(f), help)
        })
        .collect();
    rows.push(("-h, --help".into(), "this help".into()));
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    s.push_str("\nOPTIONS:\n");
    for (l, r) in rows {
        let _ = writeln!(s, "    {l:<w$}  {}", wrap(&r, w + 6, w + 6));
    }
    s.push('\n');
    s.push_str(&exit_codes());
    s.trim_end().to_string()
}

/// `exportd bundle --help`: the group's commands.
pub fn group_help(g: &str) -> String {
    let cmds = group(g);
    let w = cmds.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut s = format!("exportd {g}: one of\n\n");
    for c in cmds {
        let _ = writeln!(s, "    {:<w$}  {}", c.name, wrap(c.about, w + 6, w + 6));
    }
    let _ = write!(s, "\n`exportd {g} SUBCOMMAND --help` for one of them.");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_keeps_words_and_indents() {
        let long = "word ".repeat(40);
        let w = wrap(&long, 10, 10);
        let mut lines = w.lines();
        assert!(lines.next().unwrap().len() + 10 <= WIDTH);
        assert!(lines.all(|l| l.len() <= WIDTH));
        assert!(w.lines().skip(1).all(|l| l.starts_with(&" ".repeat(10))));
        assert_eq!(w.split_whitespace().count(), 40);
        assert_eq!(wrap("a b", 0, 0), "a b");
    }

    #[test]
    fn command_help_lists_every_flag() {
        for c in COMMANDS {
            let h = command(c);
            for (f, _) in c.flags() {
                assert!(
                    h.contains(&format!("--{}", f.long)),
                    "{}: --{}",
                    c.name,
                    f.long
                );
            }
            assert!(h.contains("EXIT STATUS"));
        }
        assert!(overview().contains("archive verify"));
    }
}
