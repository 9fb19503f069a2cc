//! Path template expansion (export-layout.md, issue 21 point 5): for any
//! template that parses and any field values, the expansion never panics and
//! every component is one safe, visible, unreserved name: not empty, not
//! `.`/`..`, no leading `.`, no `/`, `\` nor control byte inside, and the
//! first component never a name exportd reserves at a target root
//! (`.exportd-tmp`, `.exportd-target`, `exportd-audit`,
//! `compliance-exports`, in any case, trailing dots/spaces ignored).
//!
//! Input: the template, then the eight field values, separated by NUL bytes
//! (missing ones are empty); the first byte picks the start hour.
#![no_main]

use exportd::export::layout::{Template, Values, is_reserved_root_name};
use exportd::time::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let hour = data.first().copied().unwrap_or(0) as i64;
    let rest = data.get(1..).unwrap_or(&[]);
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.split('\0');
    let template = parts.next().unwrap_or("");
    let mut f: Vec<&str> = parts.take(7).collect();
    f.resize(7, "");
    let Ok(t) = Template::parse(template) else {
        return;
    };
    let v = Values {
        start: Timestamp(1_795_000_000_000 + hour * 3_600_000),
        id: f[0],
        user_id: f[1],
        extension: f[2],
        modality: f[3],
        platform: f[4],
        location: f[5],
        policy_id: f[6],
    };
    let folder = t.expand(&v);
    assert!(!folder.starts_with('/'), "{folder:?}");
    for (i, c) in folder.split('/').enumerate() {
        assert!(!c.is_empty() && c != "." && c != "..", "{folder:?}");
        assert!(!c.starts_with('.'), "dot-leading component in {folder:?}");
        assert!(
            !c.chars().any(|ch| ch.is_control() || ch == '\\'),
            "{folder:?}"
        );
        if i == 0 {
            assert!(!is_reserved_root_name(c), "reserved first component {folder:?}");
        }
    }
});
