//! Shared helpers of the S3 integration tests: starting moto's S3 server
//! through `tests/support/moto_launcher.py` and talking to its boto3 side.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use exportd::policy::model::{LockMode, ObjectLock, TargetKind, TargetSpec};
use serde_json::{Value, json};

/// What CI must install for these tests.
pub const PIP: &str = "python3 -m pip install 'moto[server]==5.2.1' boto3";

/// A running moto server (with IAM auth on) and its boto3 command channel.
pub struct Moto {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Listening port on 127.0.0.1.
    pub port: u16,
    /// A valid access key.
    pub access_key: String,
    /// Its secret.
    pub secret_key: String,
    /// CA file when started with TLS.
    pub ca: Option<PathBuf>,
    /// Scratch folder (secret files).
    pub dir: PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the tests can run here; `None` = skip (reason printed).
/// Under `CI=true` a missing moto is a failure, not a skip.
fn available() -> bool {
    if std::env::var("EXPORTD_LANE").as_deref() == Ok("qemu") {
        eprintln!("SKIP: EXPORTD_LANE=qemu: no Python in the VM, S3 tests against moto skipped");
        return false;
    }
    let ok = Command::new("python3")
        .args(["-c", "import moto, boto3, flask, werkzeug, cryptography"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let msg =
            format!("python3 with moto[server] and boto3 is not available; install with: {PIP}");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true: {msg}");
        }
        eprintln!("SKIP: {msg}");
    }
    ok
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh scratch folder.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "exportd-s3-{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Moto {
    /// Starts moto (plain HTTP, or HTTPS with a CA made by the launcher).
    pub fn start(tls: bool) -> Option<Moto> {
        if !available() {
            return None;
        }
        let dir = scratch(if tls { "moto-tls" } else { "moto" });
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/moto_launcher.py"
        );
        let log = std::fs::File::create(dir.join("moto.log")).unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(script);
        if tls {
            cmd.arg("--tls");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start moto launcher");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(dir.join("moto.log")).unwrap_or_default();
            panic!("moto launcher did not start ({e}): {line:?}\n{log}")
        });
        Some(Moto {
            child,
            stdin,
            stdout,
            port: v["port"].as_u64().unwrap() as u16,
            access_key: v["access_key"].as_str().unwrap().into(),
            secret_key: v["secret_key"].as_str().unwrap().into(),
            ca: v["ca"].as_str().map(PathBuf::from),
            dir,
        })
    }

    /// Sends one command to the launcher's boto3 client and returns its answer.
    pub fn cmd(&mut self, c: Value) -> Value {
        writeln!(self.stdin, "{c}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad answer {line:?}: {e}"))
    }

    /// Creates a bucket (with Object Lock, which also turns on versioning).
    pub fn bucket(&mut self, name: &str, lock: bool) {
        let r = self.cmd(json!({"op": "create_bucket", "bucket": name, "lock": lock}));
        assert_eq!(r["ok"], true, "{r}");
    }

    /// `http(s)://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A target spec for `bucket` with valid credentials, path-style.
    pub fn spec(&self, bucket: &str, lock: Option<LockMode>) -> TargetSpec {
        spec_with(
            &self.dir,
            &self.endpoint(),
            bucket,
            &self.access_key,
            &self.secret_key,
            lock,
            self.ca.clone(),
        )
    }

    /// SHA-256 (hex) and length of the object as boto3 reads it.
    pub fn get(&mut self, bucket: &str, key: &str) -> (String, u64) {
        let r = self.cmd(json!({"op": "get", "bucket": bucket, "key": key}));
        assert!(r.get("error").is_none(), "get {key}: {r}");
        (
            r["sha256"].as_str().unwrap().into(),
            r["len"].as_u64().unwrap(),
        )
    }

    /// Version ids of exactly `key`.
    pub fn versions(&mut self, bucket: &str, key: &str) -> Vec<String> {
        let r = self.cmd(json!({"op": "versions", "bucket": bucket, "key": key}));
        r["versions"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }

    /// Keys of in-progress multipart uploads.
    pub fn uploads(&mut self, bucket: &str) -> Vec<Value> {
        let r = self.cmd(json!({"op": "uploads", "bucket": bucket}));
        r["uploads"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("{r}"))
    }
}

/// A spec written out with its own secret file.
pub fn spec_with(
    dir: &std::path::Path,
    endpoint: &str,
    bucket: &str,
    access_key: &str,
    secret: &str,
    lock: Option<LockMode>,
    ca: Option<PathBuf>,
) -> TargetSpec {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let secret_file = dir.join(format!("secret-{n}"));
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    TargetSpec {
        id: format!("s3-{n}"),
        kind: TargetKind::S3,
        path: None,
        endpoint: Some(endpoint.to_string()),
        region: Some("us-east-1".into()),
        bucket: Some(bucket.into()),
        prefix: Some("ny/".into()),
        path_style: Some(true),
        access_key_id: Some(access_key.into()),
        secret_file: Some(secret_file),
        ca,
        object_lock: lock.map(|mode| ObjectLock {
            mode,
            retain_days: 30,
        }),
    }
}

/// One moto shared by all tests of a test binary (it dies with the process:
/// the launcher exits when its stdin closes).
pub fn shared() -> Option<&'static Mutex<Moto>> {
    static M: OnceLock<Option<Mutex<Moto>>> = OnceLock::new();
    M.get_or_init(|| Moto::start(false).map(Mutex::new))
        .as_ref()
}

/// Deterministic test bytes.
pub fn bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9E37_79B9u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// The body of a `[[targets]]` table (no header) for `spec` (a bucket on
/// this moto, prefix `ny/`, compliance lock for 30 days) under `id`.
pub fn target_table(spec: &TargetSpec, id: &str, endpoint: &str) -> String {
    format!(
        "id = \"{id}\"\nkind = \"s3\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\nbucket = \"{}\"\nprefix = \"ny/\"\npath_style = true\naccess_key_id = \"{}\"\nsecret_file = \"{}\"\nobject_lock = {{ mode = \"compliance\", retain_days = 30 }}\n",
        spec.bucket.as_deref().unwrap(),
        spec.access_key_id.as_deref().unwrap(),
        spec.secret_file.as_ref().unwrap().display()
    )
}
