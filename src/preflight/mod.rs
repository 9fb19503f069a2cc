//! The pre-flight of `exportd check-config`: what the daemon will need from
//! the machine, checked without starting it. Reads files and folders, and
//! writes only a probe file in the state_dir (removed at once) and, for
//! `--probe` ([`probe`]), one probe object per target; never creates a
//! target root, writes a marker or starts a daemon.
//!
//! Every finding is listed, not only the first. An [`Level::Error`] is
//! something `run` refuses or can never use as configured until a person
//! acts (an S3 `secret_file` or CA file it cannot read makes it refuse to
//! start; an age identity file with unsafe permissions is refused; central
//! with an unusable certificate is disabled; a state_dir it cannot write).
//! A [`Level::Warning`] is something `run` accepts but an operator should
//! know (a spool root or a target volume not there yet: the agent waits
//! for it; a secret readable by group or others; no age identity while a
//! policy decrypts).

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::policy::config::{Central, LocalConfig};
use crate::policy::model::{TargetKind, TargetSpec};
use crate::sink::fs::{FsTarget, RootState};

pub mod probe;
#[cfg(test)]
mod tests;

pub use probe::{ProbeLine, probe};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `run` refuses it, or cannot use it as configured: exit 1.
    Error,
    /// `run` works, but something is missing for now or risky.
    Warning,
}

/// One thing the pre-flight found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How serious.
    pub level: Level,
    /// What, on which file or folder, and what to do.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = match self.level {
            Level::Error => "error",
            Level::Warning => "warning",
        };
        write!(f, "{l}: {}", self.message)
    }
}

/// The largest secret or PEM file read (they are a few KiB).
const MAX_SMALL_FILE: u64 = 1 << 20;

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn error(&mut self, message: String) {
        self.0.push(Finding {
            level: Level::Error,
            message,
        });
    }
    fn warn(&mut self, message: String) {
        self.0.push(Finding {
            level: Level::Warning,
            message,
        });
    }
    fn errors(&self) -> usize {
        self.0.iter().filter(|f| f.level == Level::Error).count()
    }
}

/// Checks what the daemon will need: the state_dir, the spool roots, the
/// age identities, every target's files and roots, and central's
/// certificates. `targets` are the targets of the model in force;
/// `decrypting` says whether some enabled policy decrypts (then an empty
/// keys_dir is worth a warning).
pub fn check(cfg: &LocalConfig, targets: &[TargetSpec], decrypting: bool) -> Vec<Finding> {
    let mut f = Findings::default();
    state_dir(&cfg.state_dir, &mut f);
    spool(cfg, targets, &mut f);
    keys(&cfg.keys_dir, decrypting, &mut f);
    for t in targets {
        match t.kind {
            TargetKind::S3 => s3_target(t, &mut f),
            TargetKind::Fs => fs_target(cfg, t, &mut f),
        }
    }
    if let Some(c) = &cfg.central {
        central(c, &cfg.agent_id, &mut f);
    }
    f.0
}

/// The state_dir exists (or its nearest existing folder lets it be
/// created) and a file can be created, written and removed in it.
fn state_dir(dir: &Path, f: &mut Findings) {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            let probe = dir.join(format!(
                ".exportd-preflight.{}.{}",
                std::process::id(),
                crate::sink::fs::start_nonce()
            ));
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&probe)
                .and_then(|mut file| {
                    std::io::Write::write_all(&mut file, b"exportd preflight\n")?;
                    file.sync_all()
                });
            let removed = std::fs::remove_file(&probe);
            match (written, removed) {
                (Ok(()), Ok(())) => {}
                (Err(e), _) | (Ok(()), Err(e)) => f.error(format!(
                    "state_dir {shown} is not writable ({e}); give the user exportd runs as write access to it (e.g. chown -R exportd {shown})"
                )),
            }
            agent_key(dir, f);
        }
        Ok(_) => f.error(format!(
            "state_dir {shown} is not a folder; point state_dir at a folder (journal, audit log, snapshot)"
        )),
        // Missing, or below a file (ENOTDIR): can it be created?
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(20) => {
            let Some(parent) = dir.ancestors().skip(1).find(|a| a.exists()) else {
                return;
            };
            let ok = parent.is_dir()
                && rustix::fs::access(parent, rustix::fs::Access::WRITE_OK).is_ok();
            if !ok {
                f.error(format!(
                    "state_dir {shown} does not exist and cannot be created in {}; create it (mkdir -p {shown}) and give the user exportd runs as write access",
                    parent.display()
                ));
            }
        }
        Err(e) => f.error(format!("state_dir {shown} cannot be inspected: {e}")),
    }
}

/// `<state_dir>/agent.key`, when made already, must be private: a key
/// group or others may read is refused and the daemon signs no checkpoints.
fn agent_key(state_dir: &Path, f: &mut Findings) {
    let p = state_dir.join(crate::proof::key::KEY_FILE);
    if let Ok(m) = std::fs::symlink_metadata(&p) {
        let mode = m.mode() & 0o7777;
        if m.is_file() && mode & 0o077 != 0 {
            f.error(format!(
                "agent key {} has mode {mode:04o}: the daemon refuses a key group or others may read and signs no audit checkpoints; run `chmod 600 {}`",
                p.display(),
                p.display()
            ));
        }
    }
}

/// Each spool root is a folder that can be listed (a missing one, or a
/// symlink to nothing, is waited for); no folder target overlaps one once
/// symbolic links are resolved.
fn spool(cfg: &LocalConfig, targets: &[TargetSpec], f: &mut Findings) {
    for root in &cfg.spool {
        let shown = root.display();
        let link = match std::fs::symlink_metadata(root) {
            Ok(m) => m.file_type().is_symlink(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                f.warn(format!(
                    "spool root {shown} does not exist yet; the agent waits for it and exports its records once it appears"
                ));
                continue;
            }
            Err(e) => {
                f.error(format!("spool root {shown} cannot be inspected: {e}"));
                continue;
            }
        };
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => {
                if let Err(e) = std::fs::read_dir(root) {
                    f.error(format!(
                        "spool root {shown} cannot be listed ({e}); give the user exportd runs as read access to it"
                    ));
                }
            }
            Ok(_) => f.error(format!(
                "spool root {shown} is not a folder; spool lists the recorder's spool folders"
            )),
            Err(e) if link && e.kind() == std::io::ErrorKind::NotFound => f.warn(format!(
                "spool root {shown} is a symbolic link to {}, which does not exist; the agent waits for it",
                std::fs::read_link(root)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )),
            Err(e) => f.error(format!("spool root {shown} cannot be inspected: {e}")),
        }
    }
    for p in crate::agent::setup::spool_overlap_problems(targets, &cfg.spool) {
        f.error(format!("{p}; `run` refuses this configuration"));
    }
}

/// The age identities in keys_dir: every file must load (permissions 0600
/// or 0400, valid identities).
fn keys(dir: &Path, decrypting: bool, f: &mut Findings) {
    let shown = dir.display();
    let none_msg = |why: &str| {
        format!(
            "keys_dir {shown} {why}, but a policy decrypts: encrypted records wait (no_identity) until the recorder's age identity is put there (a file of mode 0600)"
        )
    };
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if decrypting {
                f.warn(none_msg("does not exist"));
            }
        }
        Err(e) => f.error(format!("keys_dir {shown} cannot be inspected: {e}")),
        Ok(m) if !m.is_dir() => f.error(format!(
            "keys_dir {shown} is not a folder; point keys_dir at the folder of age identity files"
        )),
        Ok(_) => {
            let (store, errors) = crate::age::KeyStore::load_dir(dir);
            for e in errors {
                f.error(format!("age identity: {e}"));
            }
            if store.is_empty() && decrypting {
                f.warn(none_msg("holds no usable identity"));
            }
        }
    }
}

/// Reads a small file (bounded), checking it is a regular file; the error
/// says what to do.
fn read_small(path: &Path) -> Result<(Vec<u8>, u32), String> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist; check the path".to_string(),
        std::io::ErrorKind::PermissionDenied => {
            format!("cannot be read ({e}); give the user exportd runs as read access")
        }
        _ => format!("cannot be opened: {e}"),
    })?;
    let m = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?;
    if !m.is_file() {
        return Err("is not a regular file".into());
    }
    let mut b = Vec::new();
    file.take(MAX_SMALL_FILE + 1)
        .read_to_end(&mut b)
        .map_err(|e| format!("cannot be read: {e}"))?;
    if b.len() as u64 > MAX_SMALL_FILE {
        return Err(format!("is larger than {MAX_SMALL_FILE} bytes"));
    }
    Ok((b, m.mode() & 0o7777))
}

/// A warning when a secret file may be read or changed by group or others.
fn private_mode(what: &str, path: &Path, mode: u32, f: &mut Findings) {
    if mode & 0o077 != 0 {
        f.warn(format!(
            "{what} {} has mode {mode:04o}: group or others may read or change it; run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
}

/// A PEM file holding at least one certificate.
fn pem_certs(what: &str, path: &Path, f: &mut Findings) -> bool {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let shown = path.display();
    match read_small(path) {
        Err(why) => f.error(format!("{what} {shown} {why}")),
        Ok((b, _)) => match CertificateDer::pem_slice_iter(&b).collect::<Result<Vec<_>, _>>() {
            Err(e) => f.error(format!("{what} {shown} is not valid PEM: {e}")),
            Ok(c) if c.is_empty() => f.error(format!(
                "{what} {shown} holds no -----BEGIN CERTIFICATE----- block; give a PEM certificate file"
            )),
            Ok(_) => return true,
        },
    }
    false
}

/// An S3 target: its secret_file and CA file, then the target as `run`
/// builds it.
fn s3_target(t: &TargetSpec, f: &mut Findings) {
    let before = f.errors();
    let who = format!("target {:?}", t.id);
    if let Some(p) = &t.secret_file {
        match read_small(p) {
            Err(why) => f.error(format!("{who}: secret_file {} {why}", p.display())),
            Ok((b, _)) if String::from_utf8_lossy(&b).trim().is_empty() => f.error(format!(
                "{who}: secret_file {} is empty; put the secret access key in it",
                p.display()
            )),
            Ok((_, mode)) => private_mode(&format!("{who}: secret_file"), p, mode, f),
        }
    }
    if let Some(p) = &t.ca {
        pem_certs(&format!("{who}: ca"), p, f);
    }
    if f.errors() == before {
        if let Err(e) = crate::sink::s3::S3Target::new(t) {
            f.error(format!("{e}; `run` refuses to start"));
        }
    }
}

/// A folder target: its root and marker, as the agent will find them.
fn fs_target(cfg: &LocalConfig, t: &TargetSpec, f: &mut Findings) {
    let ft = FsTarget::new(t, &crate::agent::setup::target_env(cfg));
    match ft.inspect() {
        Ok(RootState::Marked(_)) | Ok(RootState::Adoptable) => {}
        Ok(RootState::Absent(why)) => f.warn(format!(
            "target {:?}: {why}; its copies wait until it is there",
            t.id
        )),
        Err(e) => f.error(e.to_string()),
    }
}

/// `[central]`: its CA, client certificate and key, and that they fit.
fn central(c: &Central, agent_id: &str, f: &mut Findings) {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let mut local = Findings::default();
    pem_certs("[central] ca", &c.ca, &mut local);
    pem_certs("[central] client_cert", &c.client_cert, &mut local);
    let shown = c.client_key.display();
    match read_small(&c.client_key) {
        Err(why) => local.error(format!("[central] client_key {shown} {why}")),
        Ok((b, mode)) => match PrivateKeyDer::from_pem_slice(&b) {
            Err(e) => local.error(format!(
                "[central] client_key {shown} holds no usable private key ({e})"
            )),
            Ok(_) => private_mode("[central] client_key", &c.client_key, mode, &mut local),
        },
    }
    if local.errors() == 0 {
        let cc = central_config(c);
        if let Err(e) = crate::control::bundle::central::CentralClient::new(&cc, agent_id) {
            local.error(e.to_string());
        }
    }
    for mut x in local.0 {
        if x.level == Level::Error {
            x.message
                .push_str("; until it is fixed the daemon runs with central disabled");
        }
        f.0.push(x);
    }
}

/// The client configuration of `[central]`.
fn central_config(c: &Central) -> crate::control::bundle::central::CentralConfig {
    crate::control::bundle::central::CentralConfig {
        url: c.url.clone(),
        ca: c.ca.clone(),
        client_cert: c.client_cert.clone(),
        client_key: c.client_key.clone(),
    }
}
