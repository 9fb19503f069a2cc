//! exportd's hot loops, in a crate of their own.
//!
//! The agent's release build is optimised for size (`opt-level = "s"`):
//! half of its resident set is its own code, mapped 64 KiB around every
//! page it runs. The loops every copied byte goes through are kept at
//! `opt-level = 3` by the release profile's per-package setting, which
//! applies to a crate, and generic code (the cipher and the hash state
//! machines) is compiled in the crate that names its concrete types: here,
//! behind small non-generic functions. Measured: the whole agent at `s`
//! decrypted an age file at 0.55x the speed of `age -d`, at 3 at 1.13x.
//!
//! Nothing here does I/O.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit};
use sha2::Digest;

/// ChaCha20-Poly1305 with a fixed key (age's STREAM chunks and file-key
/// wraps). The key is zeroized when dropped.
pub struct Aead(ChaCha20Poly1305);

impl Aead {
    /// The cipher for `key`.
    #[inline(never)]
    pub fn new(key: &[u8; 32]) -> Aead {
        Aead(ChaCha20Poly1305::new(&(*key).into()))
    }

    /// Verifies `tag` over `data` (no associated data) and decrypts `data`
    /// in place. False, and `data` untouched, when the tag does not verify.
    #[inline(never)]
    pub fn open(&self, nonce: &[u8; 12], data: &mut [u8], tag: &[u8; 16]) -> bool {
        self.0
            .decrypt_inout_detached(&(*nonce).into(), &[], data.into(), &(*tag).into())
            .is_ok()
    }

    /// Encrypts `data` in place (no associated data); returns its tag.
    /// `None` only for data longer than the cipher allows (256 GiB).
    #[inline(never)]
    pub fn seal(&self, nonce: &[u8; 12], data: &mut [u8]) -> Option<[u8; 16]> {
        self.0
            .encrypt_inout_detached(&(*nonce).into(), &[], data.into())
            .ok()
            .map(Into::into)
    }
}

/// SHA-256, streamed.
#[derive(Clone, Default)]
pub struct Sha256(sha2::Sha256);

impl Sha256 {
    /// A new hash.
    pub fn new() -> Sha256 {
        Sha256::default()
    }

    /// Hashes `data` after what came before.
    #[inline(never)]
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The hash of everything given.
    #[inline(never)]
    pub fn finalize(self) -> [u8; 32] {
        self.0.finalize().into()
    }

    /// The hash of `data`.
    pub fn digest(data: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(data);
        h.finalize()
    }
}

/// SHA-512, streamed.
#[derive(Clone, Default)]
pub struct Sha512(sha2::Sha512);

impl Sha512 {
    /// A new hash.
    pub fn new() -> Sha512 {
        Sha512::default()
    }

    /// Hashes `data` after what came before.
    #[inline(never)]
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The hash of everything given.
    #[inline(never)]
    pub fn finalize(self) -> [u8; 64] {
        self.0.finalize().into()
    }

    /// The hash of `data`.
    pub fn digest(data: &[u8]) -> [u8; 64] {
        let mut h = Sha512::new();
        h.update(data);
        h.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn sha2_of_known_inputs() {
        // FIPS 180-2 examples.
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut h = Sha512::new();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(
            hex(&h.finalize()),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
    }

    #[test]
    fn seal_then_open_round_trips_and_a_changed_byte_is_refused() {
        let a = Aead::new(&[7u8; 32]);
        let nonce = [1u8; 12];
        let mut data = *b"sixteen bytes!!!";
        let tag = a.seal(&nonce, &mut data).unwrap();
        assert_ne!(&data, b"sixteen bytes!!!");
        let mut bad = data;
        bad[3] ^= 1;
        assert!(!a.open(&nonce, &mut bad, &tag));
        assert!(a.open(&nonce, &mut data, &tag));
        assert_eq!(&data, b"sixteen bytes!!!");
    }

    #[test]
    fn another_nonce_gives_another_stream_and_tag() {
        // The nonce is used as given (the age vectors in the agent's tests
        // check the cipher itself against the C2SP files).
        let a = Aead::new(&[0x80; 32]);
        let mut x = [0u8; 64];
        let mut y = [0u8; 64];
        let t1 = a.seal(&[0; 12], &mut x).unwrap();
        let t2 = a.seal(&[1; 12], &mut y).unwrap();
        assert_ne!(t1, t2);
        assert_ne!(x, y);
    }
}
