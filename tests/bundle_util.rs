//! Helpers shared by the `bundle_*` integration tests (included with
//! `#[path = "bundle_util.rs"] mod util;`; as its own test target it has no
//! tests).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use exportd::control::bundle::dsse::{self, Envelope};
use exportd::control::bundle::{BundleState, PayloadType};
use exportd::policy::model::Admin;
use serde_json::{Value, json};

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "exportd-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn admin(keyid: &str, k: &SigningKey, roles: &[&str]) -> Admin {
    Admin {
        keyid: keyid.into(),
        public_key: STANDARD.encode(k.verifying_key().to_bytes()),
        roles: roles.iter().map(|r| r.to_string()).collect(),
    }
}

/// The central key: all roles.
pub fn central() -> SigningKey {
    key(1)
}
/// An anchor holding only `export`.
pub fn ops() -> SigningKey {
    key(2)
}
/// An anchor holding only `config` (no `grant`).
pub fn cfg_only() -> SigningKey {
    key(3)
}
/// A key nobody trusts.
pub fn mallory() -> SigningKey {
    key(66)
}
/// A key to be granted by a bundle.
pub fn alice() -> SigningKey {
    key(4)
}

pub fn anchors() -> Vec<Admin> {
    vec![
        admin("central", &central(), &["config", "export", "grant"]),
        admin("ops", &ops(), &["export"]),
        admin("cfg-only", &cfg_only(), &["config"]),
    ]
}

/// A valid model (contract example, trimmed) as JSON.
pub fn model_json(version: u64) -> Value {
    json!({
        "version": version,
        "issued_at": "2026-11-21T10:00:00Z",
        "targets": [{"id": "nas1", "kind": "fs", "path": "/mnt/archive"}],
        "policies": [{
            "id": "p-voice", "name": "Trader voice to NAS", "enabled": true,
            "targets": ["nas1"],
            "filters": {"conversation_types": ["voice"], "source_2n": "primary"},
            "settings": {"decrypt": true, "file_extensions": ["wav"],
                         "path_template": "{yyyy}/{mm}/{dd}/{user_id}/{id}", "vcon": true}
        }],
        "users": [{"id": "u-1001", "name": "Ann Trader",
                   "extensions": ["+12125550100", "sip:ann@corp.example"],
                   "policies": ["p-voice"]}]
    })
}

pub fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap()
}

pub fn sign_config(v: &Value, keys: &[(&str, &SigningKey)]) -> Envelope {
    dsse::sign(PayloadType::CONFIG_MEDIA_TYPE, &bytes(v), keys)
}

pub fn sign_request(request_id: &str, keys: &[(&str, &SigningKey)]) -> Envelope {
    let v = json!({"request_id": request_id, "time_from": "2026-11-01T00:00:00Z",
                   "target": "nas1", "format": "glip"});
    dsse::sign(PayloadType::EXPORT_REQUEST_MEDIA_TYPE, &bytes(&v), keys)
}

/// Every file under `dir` with its bytes (to assert "state unchanged").
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A state dir with version `v` accepted (signed by central).
pub fn state_at(v: u64) -> TempDir {
    let dir = TempDir::new("state");
    let mut st = BundleState::load(dir.path()).unwrap();
    exportd::control::bundle::apply_envelope(
        &sign_config(&model_json(v), &[("central", &central())]),
        &anchors(),
        &mut st,
    )
    .unwrap();
    dir
}

/// PEM files of one test PKI: a CA, a server certificate for localhost and
/// 127.0.0.1, and a client certificate (the agent's).
pub struct Pki {
    /// Owns the files (removed on drop).
    pub dir: TempDir,
    /// The CA certificate.
    pub ca: PathBuf,
    /// Server certificate and key.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate.
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
}

/// Mints a fresh test PKI in a temporary directory.
pub fn mint(tag: &str) -> Pki {
    mint_cn(tag, "a1")
}

/// [`mint`] with the client certificate's common name given.
pub fn mint_cn(tag: &str, client_cn: &str) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let dir = TempDir::new(tag);
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{tag} test CA"));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let server_key = KeyPair::generate().unwrap();
    let mut sp =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = sp.signed_by(&server_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name.push(DnType::CommonName, client_cn);
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = cp.signed_by(&client_key, &issuer).unwrap();

    let p = |n: &str| dir.path().join(n);
    fs::write(p("ca.pem"), ca_cert.pem()).unwrap();
    fs::write(p("server.pem"), server_cert.pem()).unwrap();
    fs::write(p("server.key"), server_key.serialize_pem()).unwrap();
    fs::write(p("agent.pem"), client_cert.pem()).unwrap();
    fs::write(p("agent.key"), client_key.serialize_pem()).unwrap();
    Pki {
        ca: p("ca.pem"),
        server_cert: p("server.pem"),
        server_key: p("server.key"),
        client_cert: p("agent.pem"),
        client_key: p("agent.key"),
        dir,
    }
}
