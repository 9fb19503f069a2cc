//! age v1 decryption and encryption of streams (X25519 only); never hands out
//! plaintext that failed authentication.
//!
//! age v1 file encryption (<https://age-encryption.org/v1>), X25519 recipients only.
//!
//! Recorders encrypt content files and metadata XML at rest in the binary (not
//! armored) age v1 format. This module decrypts them in a streaming fashion
//! ([`Decryptor`]) with the identities of a [`KeyStore`], and can produce such
//! files ([`Encryptor`]) for the recorder simulator and the tests.
//!
//! It is built directly on RustCrypto primitives rather than on the `age`
//! crate, whose dependency tree (i18n, fluent) bloats the appliance binary.
//!
//! What is implemented, following the C2SP age specification:
//! - the textual header: version line, recipient stanzas with strictly
//!   canonical unpadded base64 bodies wrapped at 64 columns, and the
//!   HMAC-SHA256 header MAC;
//! - the `X25519` recipient type (wrap and unwrap), with rejection of
//!   low-order shares (all-zero shared secret);
//! - strict parsing, without decryption, of the `scrypt` and
//!   `mlkem768x25519` stanza types (an `scrypt` stanza must be alone in its
//!   header); any other stanza type is parsed generically and ignored;
//! - the STREAM payload: 16-byte nonce, 64 KiB ChaCha20-Poly1305 chunks, the
//!   last one flagged, with detection of truncation, missing final chunk,
//!   empty non-first final chunk and trailing data.
//!
//! Not implemented: passphrases (scrypt), ASCII armor, post-quantum hybrid
//! identities. Files that need them fail with [`AgeError::Unsupported`] (or
//! [`AgeError::NoMatch`]/[`AgeError::Header`] when that is what they are).

mod format;
mod keys;
mod stream;

use std::io;

pub use keys::{Identity, KeyFileError, KeyStore, Recipient};
pub use stream::{Decryptor, Encryptor};

/// Everything that can go wrong while handling age keys or age files.
///
/// Messages say what failed and what to do about it; they never contain
/// secret material (keys, file keys, plaintext).
#[derive(thiserror::Error, Debug)]
pub enum AgeError {
    /// The header could not be parsed, or a recipient stanza is invalid.
    #[error(
        "malformed age header: {0}; the file is corrupted or was not written by an age v1 encryptor"
    )]
    Header(String),
    /// The header parsed, but none of the identities unwraps any stanza.
    #[error(
        "no identity matches any recipient stanza; add the recorder's AGE-SECRET-KEY-1 identity to the key directory"
    )]
    NoMatch,
    /// A file key was unwrapped but the header MAC does not verify.
    #[error(
        "age header MAC verification failed: the header was modified or corrupted after encryption"
    )]
    HeaderMac,
    /// The STREAM payload failed to decrypt (tampering, truncation, trailing data).
    #[error("age payload failed to decrypt: {0}")]
    Payload(String),
    /// The file or key uses an age feature this implementation does not support.
    #[error("unsupported age feature: {0}")]
    Unsupported(String),
    /// Reading the source or writing the destination failed.
    #[error("I/O error on age stream: {0}")]
    Io(#[from] io::Error),
    /// A key (identity, recipient or randomness for one) is invalid or unusable.
    #[error("age key error: {0}")]
    Key(String),
}

/// Tells whether `prefix` starts with the age v1 version line
/// (`age-encryption.org/v1\n`), i.e. whether it looks like a binary age v1 file.
///
/// This is a cheap sniffing test: it does not validate the rest of the header.
pub fn is_age_header(prefix: &[u8]) -> bool {
    prefix.starts_with(format::VERSION_LINE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_version_line() {
        assert!(is_age_header(b"age-encryption.org/v1\n-> X25519"));
        assert!(is_age_header(b"age-encryption.org/v1\n"));
        assert!(!is_age_header(b"age-encryption.org/v1"));
        assert!(!is_age_header(b"age-encryption.org/v2\n"));
        assert!(!is_age_header(b"-----BEGIN AGE ENCRYPTED FILE-----\n"));
        assert!(!is_age_header(b""));
    }

    #[test]
    fn errors_are_send_sync_and_downcastable_through_io() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<AgeError>();
        let e = io::Error::new(io::ErrorKind::InvalidData, AgeError::Payload("x".into()));
        let inner = e.get_ref().and_then(|e| e.downcast_ref::<AgeError>());
        assert!(matches!(inner, Some(AgeError::Payload(_))));
    }
}
