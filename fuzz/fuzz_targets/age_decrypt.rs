//! age v1 decryption of hostile files with a fixed identity (so that seeds
//! encrypted to it reach the STREAM payload). Never panics; output bounded.
#![no_main]

use std::io::Read;
use std::sync::OnceLock;

use exportd::age::{Decryptor, Identity, KeyStore};
use libfuzzer_sys::fuzz_target;

/// The fuzzing identity; `fuzz/corpus/age_decrypt` seeds are encrypted to it.
pub const FUZZ_IDENTITY: &str =
    "AGE-SECRET-KEY-1K7KRVW9MAPA2SDJD76JDGLJM59T490ZRWMCQ0RF8ZWLDE8037T2S5H4DLZ";

fn keys() -> &'static KeyStore {
    static K: OnceLock<KeyStore> = OnceLock::new();
    K.get_or_init(|| {
        let id = Identity::from_bech32(FUZZ_IDENTITY).expect("fuzz identity");
        KeyStore::from_identities(vec![id])
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Decryptor::new(std::io::Cursor::new(data), keys()) {
        let mut out = Vec::new();
        let _ = d.take(8 << 20).read_to_end(&mut out);
    }
});
