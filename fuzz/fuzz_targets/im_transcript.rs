//! IM transcripts (`.im`: ZIP or bare XML): never panics; and the JSON
//! rendering of an accepted transcript is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = exportd::record::im::Transcript::from_bytes(data) {
        let json = exportd::record::im::messages_json(&t, "fuzz");
        serde_json::from_slice::<serde_json::Value>(&json).expect("messages.json must be JSON");
    }
});
