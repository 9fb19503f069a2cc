//! The local config file: parse, validate, compile the inline model into a
//! snapshot and look extensions up. Never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = exportd::policy::config::LocalConfig::parse(text, std::path::Path::new("fuzz.toml")) {
        let model = cfg.inline_model();
        if let Ok(snap) = exportd::policy::snapshot::Snapshot::from_model(&model) {
            for u in &model.users {
                for e in &u.extensions {
                    let _ = snap.lookup(e);
                }
            }
            // The compiled bytes reopen identically.
            let bytes = exportd::policy::snapshot::compile(&model).unwrap();
            let again = exportd::policy::snapshot::Snapshot::from_bytes(bytes).unwrap();
            assert_eq!(again.user_count(), snap.user_count());
        }
    }
});
