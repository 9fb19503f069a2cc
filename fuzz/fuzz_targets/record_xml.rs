//! The recorder's metadata XML (spool.md): never panics, never follows a
//! DOCTYPE, and every accepted record only lists safe relative paths.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = exportd::record::parse(data) {
        for f in &r.files {
            assert!(
                exportd::record::check_relative_path(&f.path).is_ok(),
                "accepted an unsafe path {:?}",
                f.path
            );
        }
        // Layout of whatever was accepted must not panic either, and every
        // expanded field stays one safe component.
        let t = exportd::export::layout::Template::parse(exportd::export::layout::DEFAULT_TEMPLATE).unwrap();
        let folder = t.expand(&exportd::export::layout::Values::of(&r, "u", "p"));
        for c in folder.split('/') {
            assert!(!c.is_empty() && c != "." && c != "..", "{folder:?}");
            assert!(!c.chars().any(|ch| ch.is_control()), "{folder:?}");
        }
        let _ = exportd::export::layout::plan_files(&r, true, true, None);
    }
});
