//! age keys and X25519 stanzas; never shows a secret key (Debug shows the
//! recipient, errors never repeat the input).
//!
//! X25519 identities and recipients, the key store, and X25519 stanza (un)wrapping.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Hrp};
use exportd_hot::Aead;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use super::AgeError;
use super::format::{self, FILE_KEY_LEN, FileKey, Stanza, WRAPPED_KEY_LEN};

const SECRET_HRP: &str = "age-secret-key-";
const PUBLIC_HRP: &str = "age";
const X25519_LABEL: &[u8] = b"age-encryption.org/v1/X25519";
/// Key files larger than this are refused (they cannot be key files).
const MAX_KEY_FILE: u64 = 1 << 20;

/// Decodes a strict Bech32 (not Bech32m) string into its lowercase HRP and 32 bytes.
fn bech32_decode_32(s: &str) -> Result<(String, Zeroizing<[u8; 32]>), &'static str> {
    let checked = CheckedHrpstring::new::<Bech32>(s)
        .map_err(|_| "not valid Bech32 (typo, truncated, mixed case or bad checksum)")?;
    checked
        .validate_segwit_padding()
        .map_err(|_| "invalid Bech32 padding")?;
    let hrp = checked.hrp().to_lowercase();
    let mut out = Zeroizing::new([0u8; 32]);
    let mut n = 0usize;
    for b in checked.byte_iter() {
        if n == 32 {
            return Err("wrong key length (expected 32 bytes)");
        }
        out[n] = b;
        n += 1;
    }
    if n != 32 {
        return Err("wrong key length (expected 32 bytes)");
    }
    Ok((hrp, out))
}

/// An X25519 age identity (`AGE-SECRET-KEY-1...`).
///
/// The secret scalar is wiped from memory when the identity is dropped, and
/// `Debug` only shows the public recipient.
pub struct Identity {
    secret: StaticSecret,
    public: [u8; 32],
}

impl Identity {
    /// Parses an `AGE-SECRET-KEY-1...` string (Bech32, as written by `age-keygen`).
    ///
    /// Post-quantum `AGE-SECRET-KEY-PQ-1...` identities give
    /// [`AgeError::Unsupported`]; anything else invalid gives [`AgeError::Key`].
    /// The error message never repeats the input.
    pub fn from_bech32(s: &str) -> Result<Identity, AgeError> {
        let (hrp, bytes) = bech32_decode_32(s).map_err(|why| {
            AgeError::Key(format!(
                "identity is not an AGE-SECRET-KEY-1 X25519 key: {why}; regenerate it with age-keygen"
            ))
        })?;
        if hrp != SECRET_HRP {
            if hrp.starts_with("age-secret-key-pq") {
                return Err(AgeError::Unsupported(
                    "post-quantum hybrid identities (AGE-SECRET-KEY-PQ-1...); use an X25519 identity from age-keygen".into(),
                ));
            }
            return Err(AgeError::Key(
                "identity does not start with AGE-SECRET-KEY-1; is this a recipient (age1...) or another kind of key?".into(),
            ));
        }
        Ok(Self::from_secret(*bytes))
    }

    fn from_secret(mut bytes: [u8; 32]) -> Identity {
        let secret = StaticSecret::from(bytes);
        bytes.zeroize();
        let public = PublicKey::from(&secret).to_bytes();
        Identity { secret, public }
    }

    /// Generates a new random identity from the operating system's CSPRNG.
    ///
    /// # Panics
    /// Panics if the operating system cannot provide randomness (getrandom
    /// fails), which leaves no safe way to create a key.
    pub fn generate() -> Identity {
        let mut bytes = Zeroizing::new([0u8; 32]);
        if let Err(e) = getrandom::fill(bytes.as_mut_slice()) {
            panic!("operating system random number generator failed: {e}");
        }
        Self::from_secret(*bytes)
    }

    /// The public recipient (`age1...`) of this identity.
    pub fn recipient(&self) -> Recipient {
        Recipient { key: self.public }
    }

    /// Encodes the identity as `AGE-SECRET-KEY-1...` (upper case, as `age-keygen`).
    pub fn to_bech32(&self) -> Zeroizing<String> {
        let bytes = Zeroizing::new(self.secret.to_bytes());
        let hrp = Hrp::parse_unchecked(SECRET_HRP);
        // Encoding 32 bytes under a valid HRP cannot exceed Bech32 limits.
        Zeroizing::new(bech32::encode_upper::<Bech32>(hrp, bytes.as_slice()).unwrap_or_default())
    }

    /// Tries to unwrap an X25519 stanza.
    ///
    /// Ok(None) when this identity is not the stanza's recipient; an error
    /// when the share is a low-order point, which makes the file invalid.
    pub(crate) fn unwrap_x25519(
        &self,
        share: &[u8; 32],
        body: &[u8; WRAPPED_KEY_LEN],
    ) -> Result<Option<FileKey>, AgeError> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*share));
        if shared.as_bytes().iter().fold(0u8, |acc, b| acc | b) == 0 {
            return Err(AgeError::Header(
                "X25519 stanza share is a low-order point (all-zero shared secret)".into(),
            ));
        }
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(share);
        salt[32..].copy_from_slice(&self.public);
        let wrap_key = format::hkdf32(&salt, shared.as_bytes(), X25519_LABEL);
        let aead = Aead::new(&wrap_key);
        let mut key: FileKey = Zeroizing::new([0u8; FILE_KEY_LEN]);
        key.copy_from_slice(&body[..FILE_KEY_LEN]);
        let tag = <[u8; 16]>::try_from(&body[FILE_KEY_LEN..])
            .map_err(|_| AgeError::Header("X25519 stanza body has a wrong length".into()))?;
        let nonce = [0u8; 12];
        if aead.open(&nonce, key.as_mut_slice(), &tag) {
            Ok(Some(key))
        } else {
            Ok(None)
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("recipient", &self.recipient().to_string())
            .finish_non_exhaustive()
    }
}

/// An X25519 age recipient (public key), written `age1...`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Recipient {
    key: [u8; 32],
}

impl Recipient {
    /// Parses an `age1...` recipient (Bech32).
    ///
    /// Post-quantum `age1pq1...` recipients give [`AgeError::Unsupported`];
    /// anything else invalid gives [`AgeError::Key`].
    pub fn from_bech32(s: &str) -> Result<Recipient, AgeError> {
        let (hrp, bytes) = bech32_decode_32(s).map_err(|why| {
            AgeError::Key(format!(
                "recipient is not an age1... X25519 public key: {why}; copy it again from age-keygen -y"
            ))
        })?;
        if hrp != PUBLIC_HRP {
            if hrp.starts_with("age1pq") {
                return Err(AgeError::Unsupported(
                    "post-quantum hybrid recipients (age1pq1...); use an X25519 recipient".into(),
                ));
            }
            return Err(AgeError::Key(
                "recipient does not start with age1; is this an identity or a plugin recipient?"
                    .into(),
            ));
        }
        Ok(Recipient { key: *bytes })
    }

    /// Wraps `file_key` to this recipient; returns the stanza's arguments and body.
    pub(crate) fn wrap(&self, file_key: &FileKey) -> Result<(Vec<String>, Vec<u8>), AgeError> {
        let mut eph = Zeroizing::new([0u8; 32]);
        getrandom::fill(eph.as_mut_slice()).map_err(|e| {
            AgeError::Key(format!(
                "operating system random number generator failed: {e}"
            ))
        })?;
        let eph = StaticSecret::from(*eph);
        let share = PublicKey::from(&eph).to_bytes();
        let shared = eph.diffie_hellman(&PublicKey::from(self.key));
        if shared.as_bytes().iter().fold(0u8, |acc, b| acc | b) == 0 {
            return Err(AgeError::Key(
                "recipient is a low-order X25519 point; it cannot be encrypted to".into(),
            ));
        }
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(&share);
        salt[32..].copy_from_slice(&self.key);
        let wrap_key = format::hkdf32(&salt, shared.as_bytes(), X25519_LABEL);
        let aead = Aead::new(&wrap_key);
        let mut body = vec![0u8; WRAPPED_KEY_LEN];
        body[..FILE_KEY_LEN].copy_from_slice(file_key.as_slice());
        let tag = aead
            .seal(&[0u8; 12], &mut body[..FILE_KEY_LEN])
            .ok_or_else(|| AgeError::Key("wrapping the file key failed".into()))?;
        body[FILE_KEY_LEN..].copy_from_slice(&tag);
        Ok((vec!["X25519".into(), format::b64_encode(&share)], body))
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hrp = Hrp::parse_unchecked(PUBLIC_HRP);
        match bech32::encode_lower::<Bech32>(hrp, &self.key) {
            Ok(s) => f.write_str(&s),
            Err(_) => Err(fmt::Error),
        }
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({self})")
    }
}

/// A key file that was refused or could not be used by [`KeyStore::load_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileError {
    /// The file (or directory) concerned.
    pub path: PathBuf,
    /// What is wrong and what to do, without any key material.
    pub reason: String,
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refusing key file {}: {}",
            self.path.display(),
            self.reason
        )
    }
}

impl std::error::Error for KeyFileError {}

/// A set of X25519 identities used to decrypt files.
///
/// Identities are de-duplicated by public key.
#[derive(Debug, Default)]
pub struct KeyStore {
    ids: Vec<Identity>,
}

impl KeyStore {
    /// A store without identities (every decryption gives [`AgeError::NoMatch`]).
    pub fn empty() -> KeyStore {
        KeyStore { ids: Vec::new() }
    }

    /// A store holding `v` (duplicates, by public key, are dropped).
    pub fn from_identities(v: Vec<Identity>) -> KeyStore {
        let mut store = KeyStore::empty();
        for id in v {
            store.push(id);
        }
        store
    }

    fn push(&mut self, id: Identity) {
        if !self.ids.iter().any(|o| o.public == id.public) {
            self.ids.push(id);
        }
    }

    /// Load every regular file in `dir`; each may hold several `AGE-SECRET-KEY-1...` lines, `#` comments and blank lines allowed.
    ///
    /// A file readable/writable by group or others (mode & 0o077 != 0) is
    /// refused; returns the store plus one error per refused/broken file (the
    /// caller logs them and goes on). A file with any invalid line is refused
    /// as a whole, as is a file without any identity. A missing dir = empty
    /// store + no error. Symbolic links are followed; directories, sockets and
    /// other non-regular entries are skipped. Files are read in name order.
    pub fn load_dir(dir: &Path) -> (KeyStore, Vec<KeyFileError>) {
        let mut store = KeyStore::empty();
        let mut errors = Vec::new();
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (store, errors),
            Err(e) => {
                errors.push(KeyFileError {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "cannot list key directory: {e}; check that it is a readable directory"
                    ),
                });
                return (store, errors);
            }
        };
        let mut paths = Vec::new();
        for entry in entries {
            match entry {
                Ok(e) => paths.push(e.path()),
                Err(e) => errors.push(KeyFileError {
                    path: dir.to_path_buf(),
                    reason: format!("cannot list key directory: {e}"),
                }),
            }
        }
        paths.sort();
        for path in paths {
            match load_file(&path) {
                Ok(Some(ids)) => ids.into_iter().for_each(|id| store.push(id)),
                Ok(None) => {}
                Err(reason) => errors.push(KeyFileError { path, reason }),
            }
        }
        (store, errors)
    }

    /// Number of (distinct) identities.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the store holds no identity.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// A cheap fingerprint of the loaded set: SHA-256 over the sorted public
    /// keys. Equal sets give equal fingerprints whatever the load order, so the
    /// agent can tell that an identity was added (or removed) and retry records.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut keys: Vec<[u8; 32]> = self.ids.iter().map(|i| i.public).collect();
        keys.sort_unstable();
        let mut h = Sha256::new();
        h.update(b"exportd age keystore v1\n");
        for k in &keys {
            h.update(k);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(&h.finalize());
        out
    }

    /// Unwraps the file key from the first X25519 stanza any identity opens.
    pub(crate) fn unwrap_file_key(&self, stanzas: &[Stanza]) -> Result<FileKey, AgeError> {
        let mut x25519_seen = false;
        for stanza in stanzas {
            if let Stanza::X25519 { share, body } = stanza {
                x25519_seen = true;
                for id in &self.ids {
                    if let Some(key) = id.unwrap_x25519(share, body)? {
                        return Ok(key);
                    }
                }
            }
        }
        if !x25519_seen {
            if stanzas.iter().any(|s| matches!(s, Stanza::Scrypt)) {
                return Err(AgeError::Unsupported(
                    "file is passphrase-encrypted (scrypt); recorders must encrypt to an X25519 recipient".into(),
                ));
            }
            if stanzas.iter().any(|s| matches!(s, Stanza::Hybrid)) {
                return Err(AgeError::Unsupported(
                    "file is encrypted only to post-quantum hybrid recipients (mlkem768x25519); add an X25519 recipient".into(),
                ));
            }
        }
        Err(AgeError::NoMatch)
    }
}

/// Loads one key file: Ok(None) for entries that are not regular files.
fn load_file(path: &Path) -> Result<Option<Vec<Identity>>, String> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return Err(format!("cannot stat it: {e}")),
    };
    if !meta.is_file() {
        return Ok(None);
    }
    let mut file = fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    // Check the mode of what was actually opened.
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?;
    if !meta.is_file() {
        return Ok(None);
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        let mut what = Vec::new();
        for (mask, word) in [
            (0o044, "readable"),
            (0o022, "writable"),
            (0o011, "executable"),
        ] {
            if mode & mask != 0 {
                what.push(word);
            }
        }
        return Err(format!(
            "mode {mode:04o} is {} by group or others; chmod 600 it",
            what.join(" and ")
        ));
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(format!(
            "it is larger than {MAX_KEY_FILE} bytes, so not a key file; move it out of the key directory"
        ));
    }
    // Sized up front so that reading does not reallocate (and leave copies behind).
    let capacity = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
    let mut text = Zeroizing::new(String::with_capacity(capacity));
    (&mut file)
        .take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it as UTF-8 text: {e}"))?;
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match Identity::from_bech32(line) {
            Ok(id) => ids.push(id),
            Err(AgeError::Unsupported(what)) => {
                return Err(format!("line {} holds an unsupported key: {what}", n + 1));
            }
            Err(_) => {
                return Err(format!(
                    "line {} is not an AGE-SECRET-KEY-1 identity, a # comment or blank; fix or remove that line",
                    n + 1
                ));
            }
        }
    }
    if ids.is_empty() {
        return Err("it holds no AGE-SECRET-KEY-1 identity; remove it or add the identity".into());
    }
    Ok(Some(ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    // From the C2SP age test vectors (x25519).
    const VECTOR_ID: &str =
        "AGE-SECRET-KEY-1EGTZVFFV20835NWYV6270LXYVK2VKNX2MMDKWYKLMGR48UAWX40Q2P2LM0";

    #[test]
    fn identity_round_trips_and_hides_secret() {
        let id = Identity::from_bech32(VECTOR_ID).unwrap();
        assert_eq!(id.to_bech32().as_str(), VECTOR_ID);
        let dbg = format!("{id:?}");
        assert!(!dbg.contains("AGE-SECRET"), "{dbg}");
        assert!(dbg.contains("age1"), "{dbg}");
        let r = id.recipient();
        assert_eq!(Recipient::from_bech32(&r.to_string()).unwrap(), r);
        // Lower case is the same key.
        let lower = Identity::from_bech32(&VECTOR_ID.to_lowercase()).unwrap();
        assert_eq!(lower.recipient(), r);
    }

    #[test]
    fn generated_identities_differ_and_round_trip() {
        let a = Identity::generate();
        let b = Identity::generate();
        assert_ne!(a.recipient(), b.recipient());
        let a2 = Identity::from_bech32(&a.to_bech32()).unwrap();
        assert_eq!(a2.recipient(), a.recipient());
    }

    #[test]
    fn bad_keys_are_rejected_without_echo() {
        let mut typo = VECTOR_ID.to_string();
        typo.replace_range(20..21, "Q");
        for bad in [
            "",
            "AGE-SECRET-KEY-1",
            typo.as_str(),
            "age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq",
        ] {
            match Identity::from_bech32(bad) {
                Err(AgeError::Key(msg)) => {
                    assert!(bad.len() < 20 || !msg.contains(&bad[16..]), "{msg}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let id = Identity::from_bech32(VECTOR_ID).unwrap();
        assert!(Recipient::from_bech32(&id.to_bech32()).is_err());
        assert!(Identity::from_bech32(&id.recipient().to_string()).is_err());
        // Mixed case is invalid Bech32.
        let mut mixed = VECTOR_ID.to_string();
        mixed.replace_range(0..1, "a");
        assert!(Identity::from_bech32(&mixed).is_err());
    }

    #[test]
    fn wrap_unwrap_round_trip() {
        let id = Identity::generate();
        let other = Identity::generate();
        let fk: FileKey = Zeroizing::new([0x42; 16]);
        let (args, body) = id.recipient().wrap(&fk).unwrap();
        assert_eq!(args[0], "X25519");
        let share = format::b64_decode(args[1].as_bytes()).unwrap();
        let share: [u8; 32] = share.try_into().unwrap();
        let body: [u8; 32] = body.try_into().unwrap();
        assert_eq!(
            *id.unwrap_x25519(&share, &body).unwrap().unwrap(),
            [0x42; 16]
        );
        assert!(other.unwrap_x25519(&share, &body).unwrap().is_none());
        assert!(matches!(
            id.unwrap_x25519(&[0u8; 32], &body),
            Err(AgeError::Header(_))
        ));
    }

    #[test]
    fn store_dedups_and_fingerprints_sets() {
        let a = Identity::generate();
        let b = Identity::generate();
        let a_again = Identity::from_bech32(&a.to_bech32()).unwrap();
        let b_again = Identity::from_bech32(&b.to_bech32()).unwrap();
        let ab = KeyStore::from_identities(vec![a, b]);
        let ba = KeyStore::from_identities(vec![b_again, a_again]);
        assert_eq!(ab.len(), 2);
        assert_eq!(ab.fingerprint(), ba.fingerprint());
        assert_ne!(ab.fingerprint(), KeyStore::empty().fingerprint());
        let dup = KeyStore::from_identities(vec![
            Identity::from_bech32(VECTOR_ID).unwrap(),
            Identity::from_bech32(VECTOR_ID).unwrap(),
        ]);
        assert_eq!(dup.len(), 1);
        assert!(KeyStore::empty().is_empty());
    }

    #[test]
    fn load_dir_modes_comments_and_errors() {
        let dir = std::env::temp_dir().join(format!("exportd-age-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let a = Identity::generate();
        let b = Identity::generate();
        let write = |name: &str, text: &str, mode: u32| {
            let p = dir.join(name);
            fs::write(&p, text).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        };
        write(
            "a.key",
            &format!(
                "# created: now\n# public key: {}\n\n{}\r\n  {}  \n",
                a.recipient(),
                *a.to_bech32(),
                *b.to_bech32()
            ),
            0o600,
        );
        let open_secret = Identity::generate().to_bech32();
        let broken_secret = Identity::generate().to_bech32();
        write("open.key", &format!("{}\n", *open_secret), 0o644);
        write(
            "broken.key",
            &format!("{}\nnot a key\n", *broken_secret),
            0o400,
        );
        write("empty.key", "# nothing\n", 0o600);
        fs::create_dir_all(dir.join("subdir")).unwrap();
        let (store, errs) = KeyStore::load_dir(&dir);
        assert_eq!(store.len(), 2);
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 3, "{msgs:?}");
        assert!(
            msgs.iter()
                .any(|m| m.contains("open.key: mode 0644 is readable") && m.contains("chmod 600")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("broken.key") && m.contains("line 2")),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.contains("empty.key")), "{msgs:?}");
        for secret in [&open_secret, &broken_secret] {
            assert!(msgs.iter().all(|m| !m.contains(&secret[15..])), "{msgs:?}");
        }
        assert!(msgs.iter().all(|m| !m.contains("not a key")), "{msgs:?}");
        let (none, errs) = KeyStore::load_dir(&dir.join("missing"));
        assert!(none.is_empty() && errs.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
