//! Journal decoding (a torn or corrupted journal file after a crash): never
//! panics, the valid prefix is within the input, and what decodes re-encodes
//! to frames that decode to the same entries.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (entries, used) = exportd::ledger::journal::decode_frames(data);
    assert!(used <= data.len());
    let mut again = Vec::new();
    for e in &entries {
        again.extend_from_slice(&exportd::ledger::journal::encode_frame(e));
    }
    let (entries2, used2) = exportd::ledger::journal::decode_frames(&again);
    assert_eq!(used2, again.len());
    assert_eq!(entries, entries2);
    // Corrupt snapshots are refused, not trusted.
    let _ = exportd::policy::snapshot::Snapshot::from_bytes(data.to_vec());
});
