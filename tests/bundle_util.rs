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
use exportd::bundle::dsse::{self, Envelope};
use exportd::bundle::{BundleState, PayloadType};
use exportd::model::Admin;
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
    exportd::bundle::apply_envelope(
        &sign_config(&model_json(v), &[("central", &central())]),
        &anchors(),
        &mut st,
    )
    .unwrap();
    dir
}
