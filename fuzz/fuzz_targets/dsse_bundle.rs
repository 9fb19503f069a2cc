//! Pushed bundles: the DSSE envelope, and the config / export-request
//! payloads, validated and compiled. Never panics.
#![no_main]

use exportd::control::bundle::apply;
use exportd::control::bundle::dsse::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::from_json(data) {
        let _ = env.check_signature_count();
        let _ = apply::payload_type_of(&env);
        if let Ok(p) = env.payload_bytes() {
            payload(&p);
        }
    }
    payload(data);
});

fn payload(p: &[u8]) {
    if let Ok(model) = apply::parse_config_payload(p) {
        let errs = apply::validate_config(&model, None);
        if errs.is_empty() {
            let _ = exportd::policy::snapshot::Snapshot::from_model(&model);
        }
    }
    let _ = apply::parse_request_payload(p);
    // Issue 15: users deltas, and the streamed head of a config payload.
    let _ = exportd::control::bundle::delta::parse_delta(p);
    let _ = exportd::policy::intake::source::payload_head(p);
}
