//! The pre-flight against temporary folders: each missing or unsafe file
//! is named, with its level.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;
use crate::policy::config::LocalConfig;

struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        fs::create_dir(root.join("spool")).unwrap();
        fs::create_dir(root.join("keys")).unwrap();
        fs::create_dir(root.join("nas")).unwrap();
        Scratch { _dir: dir, root }
    }
    fn p(&self, n: &str) -> PathBuf {
        self.root.join(n)
    }
    /// A config with one folder target (`nas`) and `extra` appended.
    fn config(&self, extra: &str) -> LocalConfig {
        let text = format!(
            "agent_id = \"a1\"\nspool = [\"{}\"]\nstate_dir = \"{}\"\nkeys_dir = \"{}\"\n{extra}\n[[targets]]\nid = \"nas\"\nkind = \"fs\"\npath = \"{}\"\n",
            self.p("spool").display(),
            self.p("state").display(),
            self.p("keys").display(),
            self.p("nas").display()
        );
        LocalConfig::parse(&text, Path::new("test.toml")).unwrap()
    }
}

fn write_mode(p: &Path, body: &[u8], mode: u32) {
    fs::write(p, body).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn run(cfg: &LocalConfig, decrypting: bool) -> Vec<Finding> {
    check(cfg, &cfg.targets, decrypting)
}

/// The one finding whose message contains `needle`, with its level.
fn one<'a>(fs: &'a [Finding], needle: &str) -> &'a Finding {
    let m: Vec<&Finding> = fs.iter().filter(|f| f.message.contains(needle)).collect();
    assert_eq!(m.len(), 1, "{needle:?} in {fs:#?}");
    m[0]
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn a_ready_appliance_has_no_findings() {
    let b = Scratch::new();
    let id = crate::age::Identity::generate();
    write_mode(
        &b.p("keys/rec.key"),
        format!("{}\n", *id.to_bech32()).as_bytes(),
        0o600,
    );
    let cfg = b.config("");
    assert_eq!(run(&cfg, true), vec![]);
    assert!(!b.p("state").exists(), "the state_dir is not created");
    fs::create_dir(b.p("state")).unwrap();
    assert_eq!(run(&cfg, true), vec![]);
    assert_eq!(
        fs::read_dir(b.p("state")).unwrap().count(),
        0,
        "probe removed"
    );
    assert!(
        !b.p("nas/.exportd-target").exists(),
        "a plain folder is not adopted"
    );
}

fn s3_table(secret: &Path, ca: Option<&Path>) -> String {
    let ca = ca
        .map(|c| format!("ca = \"{}\"\n", c.display()))
        .unwrap_or_default();
    format!(
        "[[targets]]\nid = \"s3a\"\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:9\"\nregion = \"us-east-1\"\nbucket = \"b\"\naccess_key_id = \"AK\"\nsecret_file = \"{}\"\n{ca}\n",
        secret.display()
    )
}

#[test]
fn s3_secret_and_ca_files() {
    let b = Scratch::new();
    // Missing secret and missing CA: both listed, both errors.
    let cfg = b.config(&s3_table(&b.p("s3.secret"), Some(&b.p("ca.pem"))));
    let f = run(&cfg, false);
    let s = one(&f, "secret_file");
    assert_eq!(s.level, Level::Error);
    assert!(
        s.message.contains("target \"s3a\"")
            && s.message.contains("s3.secret")
            && s.message.contains("does not exist"),
        "{s}"
    );
    let c = one(&f, "ca.pem");
    assert_eq!(c.level, Level::Error);
    assert_eq!(f.len(), 2, "{f:#?}");

    // World-readable secret: a warning with the chmod; a CA without a
    // certificate: an error.
    write_mode(&b.p("s3.secret"), b"SECRET\n", 0o644);
    fs::write(b.p("ca.pem"), "not a certificate\n").unwrap();
    let f = run(&cfg, false);
    let s = one(&f, "secret_file");
    assert_eq!(s.level, Level::Warning);
    assert!(
        s.message
            .contains(&format!("chmod 600 {}", b.p("s3.secret").display())),
        "{s}"
    );
    assert_eq!(one(&f, "ca.pem").level, Level::Error);

    // Private secret, no CA: nothing; an empty secret or a folder: errors.
    fs::set_permissions(b.p("s3.secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = b.config(&s3_table(&b.p("s3.secret"), None));
    assert_eq!(run(&cfg, false), vec![]);
    fs::write(b.p("s3.secret"), " \n").unwrap();
    assert_eq!(one(&run(&cfg, false), "is empty").level, Level::Error);
    let cfg = b.config(&s3_table(&b.p("spool"), None));
    assert_eq!(
        one(&run(&cfg, false), "not a regular file").level,
        Level::Error
    );
}

#[test]
fn central_certificates_and_key() {
    let b = Scratch::new();
    let central = format!(
        "[central]\nurl = \"https://127.0.0.1:9\"\nca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
        b.p("ca.pem").display(),
        b.p("agent.pem").display(),
        b.p("agent.key").display()
    );
    let cfg = b.config(&central);
    let f = run(&cfg, false);
    for what in [
        "[central] ca",
        "[central] client_cert",
        "[central] client_key",
    ] {
        let x = one(&f, what);
        assert_eq!(x.level, Level::Error);
        assert!(
            x.message.contains("does not exist") && x.message.contains("central disabled"),
            "{x}"
        );
    }

    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    fs::write(b.p("ca.pem"), cert.pem()).unwrap();
    fs::write(b.p("agent.pem"), cert.pem()).unwrap();
    write_mode(&b.p("agent.key"), key.serialize_pem().as_bytes(), 0o640);
    let f = run(&cfg, false);
    let k = one(&f, "client_key");
    assert_eq!(k.level, Level::Warning, "{k}");
    assert!(k.message.contains("chmod 600"), "{k}");
    assert_eq!(f.len(), 1, "{f:#?}");

    // A key that is not the certificate's.
    let other = rcgen::KeyPair::generate().unwrap();
    write_mode(&b.p("agent.key"), other.serialize_pem().as_bytes(), 0o600);
    let f = run(&cfg, false);
    assert_eq!(one(&f, "does not fit").level, Level::Error);
}

#[test]
fn age_identities() {
    let b = Scratch::new();
    let cfg = b.config("");
    // Nothing to decrypt: an empty keys_dir is fine.
    assert_eq!(run(&cfg, false), vec![]);
    assert_eq!(
        one(&run(&cfg, true), "no usable identity").level,
        Level::Warning
    );
    let id = crate::age::Identity::generate();
    write_mode(
        &b.p("keys/open.key"),
        format!("{}\n", *id.to_bech32()).as_bytes(),
        0o644,
    );
    let f = run(&cfg, false);
    let x = one(&f, "open.key");
    assert_eq!(x.level, Level::Error);
    assert!(x.message.contains("chmod 600"), "{x}");
    fs::remove_dir_all(b.p("keys")).unwrap();
    assert_eq!(run(&cfg, false), vec![]);
    assert_eq!(
        one(&run(&cfg, true), "does not exist").level,
        Level::Warning
    );
}

#[test]
fn spool_roots() {
    let b = Scratch::new();
    fs::remove_dir(b.p("spool")).unwrap();
    let cfg = b.config("");
    assert_eq!(one(&run(&cfg, false), "spool root").level, Level::Warning);
    std::os::unix::fs::symlink(b.p("nowhere"), b.p("spool")).unwrap();
    let x = run(&cfg, false);
    let x = one(&x, "symbolic link");
    assert_eq!(x.level, Level::Warning);
    fs::remove_file(b.p("spool")).unwrap();
    fs::write(b.p("spool"), "").unwrap();
    assert_eq!(one(&run(&cfg, false), "not a folder").level, Level::Error);
    // A spool root reaching a folder target through a link.
    fs::remove_file(b.p("spool")).unwrap();
    std::os::unix::fs::symlink(b.p("nas"), b.p("spool")).unwrap();
    assert_eq!(one(&run(&cfg, false), "overlaps").level, Level::Error);
}

#[test]
fn state_dir_not_writable() {
    let b = Scratch::new();
    // A file where the folder should be.
    fs::write(b.p("state"), "").unwrap();
    let cfg = b.config("");
    assert_eq!(one(&run(&cfg, false), "state_dir").level, Level::Error);
    // Cannot be created below a file.
    let text = format!(
        "agent_id = \"a1\"\nspool = [\"{}\"]\nstate_dir = \"{}\"\nkeys_dir = \"{}\"\n",
        b.p("spool").display(),
        b.p("state/sub").display(),
        b.p("keys").display()
    );
    let cfg2 = LocalConfig::parse(&text, Path::new("t.toml")).unwrap();
    let x = run(&cfg2, false);
    assert!(
        one(&x, "state_dir").message.contains("cannot be created"),
        "{x:#?}"
    );
    // A folder that cannot be written: as root, /proc (no file can be made there).
    let ro = if is_root() {
        PathBuf::from("/proc")
    } else {
        fs::remove_file(b.p("state")).unwrap();
        fs::create_dir(b.p("state")).unwrap();
        fs::set_permissions(b.p("state"), fs::Permissions::from_mode(0o500)).unwrap();
        b.p("state")
    };
    let text = text.replace(
        &b.p("state/sub").display().to_string(),
        &ro.display().to_string(),
    );
    let cfg3 = LocalConfig::parse(&text, Path::new("t.toml")).unwrap();
    let x = run(&cfg3, false);
    let s = one(&x, "state_dir");
    assert_eq!(s.level, Level::Error);
    assert!(s.message.contains("not writable"), "{s}");
}

#[test]
fn agent_key_readable_by_others() {
    let b = Scratch::new();
    fs::create_dir(b.p("state")).unwrap();
    let cfg = b.config("");
    crate::proof::key::load_or_create(&b.p("state")).unwrap();
    assert_eq!(run(&cfg, false), vec![]);
    fs::set_permissions(b.p("state/agent.key"), fs::Permissions::from_mode(0o640)).unwrap();
    let x = run(&cfg, false);
    let k = one(&x, "agent key");
    assert_eq!(k.level, Level::Error);
    assert!(k.message.contains("chmod 600"), "{k}");
}

#[test]
fn folder_target_roots() {
    let b = Scratch::new();
    let cfg = b.config("");
    fs::remove_dir(b.p("nas")).unwrap();
    let x = run(&cfg, false);
    let x = one(&x, "target \"nas\"");
    assert_eq!(x.level, Level::Warning);
    assert!(
        x.message.contains("does not exist (volume not mounted?)"),
        "{x}"
    );
    assert!(!b.p("nas").exists());
    fs::create_dir(b.p("nas")).unwrap();
    fs::write(
        b.p("nas/.exportd-target"),
        crate::sink::marker::Marker::new("elsewhere", "x")
            .unwrap()
            .to_bytes(),
    )
    .unwrap();
    assert_eq!(one(&run(&cfg, false), "another target").level, Level::Error);
}
