//! The policy model: storage targets, export policies, users and their
//! extensions, granted admin keys (config.md). Pure data and validation:
//! never touches a file.
//!
//! The same types are read from the inline tables of `exportd.toml` and from
//! the payload of a signed central bundle; [`Model::validate`] checks a model
//! completely before it may be compiled into a snapshot.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::export::layout::Template;

/// A complete policy model, as pushed by central or written inline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Monotonic version; inline models use 0.
    #[serde(default)]
    pub version: u64,
    /// When central issued it (RFC 3339), informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    /// Storage targets.
    #[serde(default)]
    pub targets: Vec<TargetSpec>,
    /// Export policies.
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// Users with their extensions and policy assignments.
    #[serde(default)]
    pub users: Vec<User>,
    /// Keys granted roles by a `grant` signature; `None` leaves them as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admins: Option<Vec<Admin>>,
}

/// Which targets kinds exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// A mounted folder.
    Fs,
    /// S3-compatible object storage.
    S3,
}

impl TargetKind {
    /// `fs` or `s3`, as written in the audit log's `dst_folder_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Fs => "fs",
            TargetKind::S3 => "s3",
        }
    }
}

/// A storage target (`kind = "fs"` or `kind = "s3"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Identifier referenced by policies and requests.
    pub id: String,
    /// The kind of storage.
    pub kind: TargetKind,
    /// `fs`: the target root folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// `s3`: endpoint URL (`https://...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `s3`: signing region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `s3`: bucket name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// `s3`: key prefix (e.g. `ny/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `s3`: path-style addressing instead of virtual-host style.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// `s3`: access key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// `s3`: file holding the secret access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// `s3`: PEM file of extra CA certificates to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// `s3`: Object Lock (WORM) settings applied to every object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLock>,
}

impl TargetSpec {
    /// A folder target (`kind = "fs"`) rooted at `path`.
    pub fn fs(id: &str, path: impl Into<PathBuf>) -> TargetSpec {
        TargetSpec {
            id: id.to_string(),
            kind: TargetKind::Fs,
            path: Some(path.into()),
            endpoint: None,
            region: None,
            bucket: None,
            prefix: None,
            path_style: None,
            access_key_id: None,
            secret_file: None,
            ca: None,
            object_lock: None,
        }
    }
}

/// S3 Object Lock settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLock {
    /// `compliance` or `governance`.
    pub mode: LockMode,
    /// Retention from the upload, in days.
    pub retain_days: u32,
}

/// S3 Object Lock retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Nobody can shorten or remove the retention.
    Compliance,
    /// Privileged users may bypass the retention.
    Governance,
}

impl LockMode {
    /// The value of the `x-amz-object-lock-mode` header.
    pub fn header_value(self) -> &'static str {
        match self {
            LockMode::Compliance => "COMPLIANCE",
            LockMode::Governance => "GOVERNANCE",
        }
    }
}

/// An export policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Identifier referenced by users.
    pub id: String,
    /// Human-readable name (audit `policy_name`).
    #[serde(default)]
    pub name: String,
    /// A disabled policy matches nothing.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Target ids; two or more means dual archiving.
    pub targets: Vec<String>,
    /// Which records the policy takes.
    #[serde(default)]
    pub filters: Filters,
    /// How the records are exported.
    #[serde(default)]
    pub settings: Settings,
}

fn yes() -> bool {
    true
}

/// Policy filters; an empty list means "any".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    /// Allowed `modality_id` values.
    #[serde(default)]
    pub conversation_types: Vec<String>,
    /// Allowed `source_platform` values.
    #[serde(default)]
    pub source_platforms: Vec<String>,
    /// Primary, secondary or either recorder of a 2N pair.
    #[serde(default)]
    pub source_2n: Source2n,
}

/// 2N source filter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source2n {
    /// Either recorder.
    #[default]
    Any,
    /// Only records with `secondary=false`.
    Primary,
    /// Only records with `secondary=true`.
    Secondary,
}

/// Policy settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Export plaintext of age-encrypted files.
    #[serde(default)]
    pub decrypt: bool,
    /// Export IM attachments beside the transcript.
    #[serde(default)]
    pub im_attachments: bool,
    /// Only content files with these extensions (ignoring `.age`); `None` = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_extensions: Option<Vec<String>>,
    /// Folder template; default `{yyyy}/{mm}/{dd}/{user_id}/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_template: Option<String>,
    /// Write `<id>.vcon.json` beside the record.
    #[serde(default)]
    pub vcon: bool,
}

/// A user with extensions and policy assignments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Directory id (`u-1001`).
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Mail address.
    #[serde(default)]
    pub email: String,
    /// Recorded extensions: phone numbers, SIP/mail URIs, trader ids.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Assigned policy ids.
    #[serde(default)]
    pub policies: Vec<String>,
}

/// An admin key granted roles by a `grant` signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Key id used in DSSE signatures.
    pub keyid: String,
    /// Base64 of the raw 32-byte ed25519 public key.
    pub public_key: String,
    /// Granted roles (`config`, `export`, `grant`).
    pub roles: Vec<String>,
}

/// One problem found by [`Model::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

/// The most policies one user may be assigned (bounded for allocation-free matching).
pub const MAX_POLICIES_PER_USER: usize = 32;
/// The most targets one policy may write to.
pub const MAX_TARGETS_PER_POLICY: usize = 8;

const MODALITIES: [&str; 7] = [
    "voice",
    "video",
    "screen",
    "share",
    "im",
    "file_share",
    "sms",
];

fn id_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':'))
}

impl Model {
    /// Checks the whole model and returns every problem found (empty = valid).
    pub fn validate(&self) -> Vec<ValidationError> {
        validate_parts(
            &self.targets,
            &self.policies,
            &self.users,
            self.admins.as_deref(),
        )
    }

    /// The target with this id.
    pub fn target(&self, id: &str) -> Option<&TargetSpec> {
        self.targets.iter().find(|t| t.id == id)
    }
}

/// `p` with `.` components and repeated or trailing separators removed and
/// `..` applied lexically (pure: symbolic links are the caller's business,
/// which compares resolved paths too).
pub fn normalize_lexically(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(c);
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Whether a target root and a spool root overlap: equal, or one inside the
/// other (compared component by component after
/// [`normalize_lexically`]; `/a/bc` does not overlap `/a/b`).
pub fn paths_overlap(target: &Path, spool: &Path) -> bool {
    let (t, s) = (normalize_lexically(target), normalize_lexically(spool));
    t.starts_with(&s) || s.starts_with(&t)
}

/// Every folder target of `targets` whose root overlaps one of `spool_roots`
/// (the spool is never written: copies landing there would be taken as new
/// records). Each `(shown, compared)` pair is a root as configured and the
/// form to compare (the caller passes resolved forms as well); one problem
/// per target and root.
pub fn spool_overlaps(
    targets: &[(String, PathBuf, PathBuf)],
    spool_roots: &[(PathBuf, PathBuf)],
) -> Vec<ValidationError> {
    let mut out = Vec::new();
    for (id, shown, t) in targets {
        for (s_shown, s) in spool_roots {
            if paths_overlap(t, s) {
                let msg = format!(
                    "target {id:?} path {} overlaps spool root {} (the spool is never written)",
                    shown.display(),
                    s_shown.display()
                );
                if !out.iter().any(|e: &ValidationError| e.0 == msg) {
                    out.push(ValidationError(msg));
                }
            }
        }
    }
    out
}

/// [`Model::validate`] on borrowed parts (no copy of a large user list).
pub fn validate_parts(
    targets: &[TargetSpec],
    policies: &[Policy],
    users: &[User],
    admins: Option<&[Admin]>,
) -> Vec<ValidationError> {
    let mut errs = Vec::new();
    let target_ids = validate_targets(targets, &mut errs);
    let policy_ids = validate_policies(policies, &target_ids, &mut errs);
    validate_users(users, &policy_ids, &mut errs);
    if let Some(admins) = admins {
        validate_admins(admins, &mut errs);
    }
    errs
}

/// Checks the targets; returns their ids.
fn validate_targets<'a>(
    targets: &'a [TargetSpec],
    errs: &mut Vec<ValidationError>,
) -> HashSet<&'a str> {
    let mut e = |s: String| errs.push(ValidationError(s));
    let mut target_ids = HashSet::new();
    for t in targets {
        if !id_ok(&t.id) {
            e(format!(
                "target id {:?} is empty or has characters outside [A-Za-z0-9-_.@:]",
                t.id
            ));
        }
        if !target_ids.insert(t.id.as_str()) {
            e(format!("target id {:?} is defined twice", t.id));
        }
        match t.kind {
            TargetKind::Fs => {
                match &t.path {
                    None => e(format!("target {:?} (fs) needs `path`", t.id)),
                    Some(p) if !p.is_absolute() => e(format!(
                        "target {:?}: path {} must be absolute",
                        t.id,
                        p.display()
                    )),
                    _ => {}
                }
                for (name, set) in [
                    ("endpoint", t.endpoint.is_some()),
                    ("bucket", t.bucket.is_some()),
                    ("object_lock", t.object_lock.is_some()),
                ] {
                    if set {
                        e(format!("target {:?} (fs) does not take `{name}`", t.id));
                    }
                }
            }
            TargetKind::S3 => {
                match t.endpoint.as_deref() {
                    None => e(format!("target {:?} (s3) needs `endpoint`", t.id)),
                    Some(u) if !(u.starts_with("https://") || u.starts_with("http://")) => e(
                        format!("target {:?}: endpoint {u:?} must start with https://", t.id),
                    ),
                    _ => {}
                }
                if t.bucket.as_deref().is_none_or(str::is_empty) {
                    e(format!("target {:?} (s3) needs `bucket`", t.id));
                }
                if t.region.as_deref().is_none_or(str::is_empty) {
                    e(format!("target {:?} (s3) needs `region`", t.id));
                }
                if t.access_key_id.is_none() || t.secret_file.is_none() {
                    e(format!(
                        "target {:?} (s3) needs `access_key_id` and `secret_file`",
                        t.id
                    ));
                }
                if let Some(l) = &t.object_lock {
                    if l.retain_days == 0 {
                        e(format!(
                            "target {:?}: object_lock.retain_days must be > 0",
                            t.id
                        ));
                    }
                }
                if t.path.is_some() {
                    e(format!("target {:?} (s3) does not take `path`", t.id));
                }
            }
        }
    }
    target_ids
}

/// Checks the policies against the target ids; returns their ids.
fn validate_policies<'a>(
    policies: &'a [Policy],
    target_ids: &HashSet<&str>,
    errs: &mut Vec<ValidationError>,
) -> HashSet<&'a str> {
    let mut e = |s: String| errs.push(ValidationError(s));
    let mut policy_ids = HashSet::new();
    for p in policies {
        if !id_ok(&p.id) {
            e(format!(
                "policy id {:?} is empty or has characters outside [A-Za-z0-9-_.@:]",
                p.id
            ));
        }
        if !policy_ids.insert(p.id.as_str()) {
            e(format!("policy id {:?} is defined twice", p.id));
        }
        if p.targets.is_empty() {
            e(format!("policy {:?} has no targets", p.id));
        }
        if p.targets.len() > MAX_TARGETS_PER_POLICY {
            e(format!(
                "policy {:?} has {} targets; at most {MAX_TARGETS_PER_POLICY}",
                p.id,
                p.targets.len()
            ));
        }
        let mut seen = HashSet::new();
        for t in &p.targets {
            if !target_ids.contains(t.as_str()) {
                e(format!("policy {:?} names unknown target {t:?}", p.id));
            }
            if !seen.insert(t) {
                e(format!("policy {:?} names target {t:?} twice", p.id));
            }
        }
        for m in &p.filters.conversation_types {
            if !MODALITIES.contains(&m.as_str()) {
                e(format!(
                    "policy {:?}: unknown conversation type {m:?} (one of {})",
                    p.id,
                    MODALITIES.join(", ")
                ));
            }
        }
        if let Some(exts) = &p.settings.file_extensions {
            for x in exts {
                if x.is_empty() || x.contains('/') || x.contains('\0') {
                    e(format!("policy {:?}: bad file extension {x:?}", p.id));
                }
            }
        }
        if let Some(t) = &p.settings.path_template {
            if let Err(err) = Template::parse(t) {
                e(format!("policy {:?}: {err}", p.id));
            }
        }
    }
    policy_ids
}

/// Checks the users against the policy ids, and that no extension is
/// assigned twice.
fn validate_users(users: &[User], policy_ids: &HashSet<&str>, errs: &mut Vec<ValidationError>) {
    let mut e = |s: String| errs.push(ValidationError(s));
    let mut user_ids = HashSet::new();
    let mut owners: HashMap<String, &str> = HashMap::new();
    for u in users {
        if u.id.is_empty() {
            e("a user has an empty id".to_string());
        }
        if !user_ids.insert(u.id.as_str()) {
            e(format!("user id {:?} is defined twice", u.id));
        }
        if u.policies.len() > MAX_POLICIES_PER_USER {
            e(format!(
                "user {:?} has {} policies; at most {MAX_POLICIES_PER_USER}",
                u.id,
                u.policies.len()
            ));
        }
        for p in &u.policies {
            if !policy_ids.contains(p.as_str()) {
                e(format!("user {:?} names unknown policy {p:?}", u.id));
            }
        }
        for x in &u.extensions {
            let n = normalize_extension(x);
            if n.is_empty() {
                e(format!("user {:?} has an empty extension {x:?}", u.id));
                continue;
            }
            if n.len() > MAX_EXTENSION_LEN {
                e(format!(
                    "user {:?}: extension {x:?} is longer than {MAX_EXTENSION_LEN} bytes",
                    u.id
                ));
                continue;
            }
            match owners.get(&n) {
                Some(other) if *other == u.id => {
                    e(format!("user {:?} lists extension {x:?} twice", u.id))
                }
                Some(other) => e(format!(
                    "extension {x:?} (normalised {n:?}) is assigned to both {other:?} and {:?}",
                    u.id
                )),
                None => {
                    owners.insert(n, &u.id);
                }
            }
        }
    }
}

/// Checks the granted admins: each key once, known roles only.
fn validate_admins(admins: &[Admin], errs: &mut Vec<ValidationError>) {
    let mut e = |s: String| errs.push(ValidationError(s));
    let mut ids = HashSet::new();
    for a in admins {
        if !ids.insert(a.keyid.as_str()) {
            e(format!("admin keyid {:?} is listed twice", a.keyid));
        }
        for r in &a.roles {
            if !matches!(r.as_str(), "config" | "export" | "grant") {
                e(format!("admin {:?}: unknown role {r:?}", a.keyid));
            }
        }
    }
}

/// The longest normalised extension accepted.
pub const MAX_EXTENSION_LEN: usize = 255;

/// Normalises a recorded extension or a configured one (config.md):
/// trim; a `sip:`/`tel:`/`mailto:` prefix is ignored; URIs compare
/// case-insensitively; phone numbers compare on their digits with a leading
/// `+` kept. Anything else (a trader id) is compared exactly after trimming.
pub fn normalize_extension(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    normalize_extension_into(raw, &mut out);
    out
}

/// [`normalize_extension`] into a caller-provided buffer (allocation-free with
/// a `heapless::String`). Returns `false` when the buffer is too small.
pub fn normalize_extension_into<W: std::fmt::Write>(raw: &str, out: &mut W) -> bool {
    let t = raw.trim();
    let mut had_scheme = false;
    let mut rest = t;
    for scheme in ["sip:", "tel:", "mailto:"] {
        if t.len() >= scheme.len()
            && t.as_bytes()[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
        {
            rest = t[scheme.len()..].trim_start();
            had_scheme = true;
            break;
        }
    }
    if is_phone(rest) {
        let mut first = true;
        for c in rest.chars() {
            if first && c == '+' && out.write_char('+').is_err() {
                return false;
            }
            if c.is_ascii_digit() && out.write_char(c).is_err() {
                return false;
            }
            if !c.is_whitespace() {
                first = false;
            }
        }
        return true;
    }
    let uri = had_scheme || rest.contains('@') || rest.contains(':');
    for c in rest.chars() {
        let c = if uri { c.to_ascii_lowercase() } else { c };
        let c = if uri && !c.is_ascii() {
            // Non-ASCII URIs: lowercase by Unicode rules, one char at a time.
            let mut l = c.to_lowercase();
            let first = l.next().unwrap_or(c);
            if l.next().is_some() { c } else { first }
        } else {
            c
        };
        if out.write_char(c).is_err() {
            return false;
        }
    }
    true
}

/// A phone number: digits with optional leading `+` and the usual separators.
fn is_phone(s: &str) -> bool {
    let mut digits = 0;
    for (i, c) in s.char_indices() {
        match c {
            '0'..='9' => digits += 1,
            '+' if i == 0 => {}
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return false,
        }
    }
    digits > 0
}

/// Fixtures shared by the policy tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// Policy `p` ("P"), enabled, writing to `nas1`, no filters, default settings.
    pub(crate) fn policy_p() -> Policy {
        Policy {
            id: "p".into(),
            name: "P".into(),
            enabled: true,
            targets: vec!["nas1".into()],
            filters: Filters::default(),
            settings: Settings::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn spool_overlap_is_by_component_after_normalising() {
        use std::path::Path;
        assert!(super::paths_overlap(
            Path::new("/srv/spool"),
            Path::new("/srv/spool/")
        ));
        assert!(super::paths_overlap(
            Path::new("/srv/spool/./x"),
            Path::new("/srv/spool")
        ));
        assert!(super::paths_overlap(
            Path::new("/srv"),
            Path::new("/srv/spool")
        ));
        assert!(super::paths_overlap(
            Path::new("/srv/other/../spool/a"),
            Path::new("/srv/spool")
        ));
        assert!(!super::paths_overlap(
            Path::new("/srv/spool2"),
            Path::new("/srv/spool")
        ));
        assert!(!super::paths_overlap(
            Path::new("/archive"),
            Path::new("/srv/spool")
        ));
        let t = [(
            "nas".to_string(),
            PathBuf::from("/srv/spool"),
            PathBuf::from("/srv/spool"),
        )];
        let s = [(PathBuf::from("/srv/spool"), PathBuf::from("/srv/spool"))];
        let e = super::spool_overlaps(&t, &s);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].0.contains("overlaps spool root /srv/spool"),
            "{}",
            e[0].0
        );
    }

    use super::*;

    #[test]
    fn normalisation_rules() {
        assert_eq!(normalize_extension(" +1 (212) 555-0100 "), "+12125550100");
        assert_eq!(normalize_extension("tel:+1-212-555-0100"), "+12125550100");
        assert_eq!(normalize_extension("2125550100"), "2125550100");
        assert_eq!(
            normalize_extension("SIP:Ann@Corp.Example"),
            "ann@corp.example"
        );
        assert_eq!(
            normalize_extension("mailto:ann@corp.example"),
            "ann@corp.example"
        );
        assert_eq!(
            normalize_extension("sip:ann@corp.example"),
            "ann@corp.example"
        );
        assert_eq!(normalize_extension("ANN@CORP.EXAMPLE"), "ann@corp.example");
        assert_eq!(normalize_extension(" TRD-0042 "), "TRD-0042");
        assert_ne!(
            normalize_extension("trd-0042"),
            normalize_extension("TRD-0042")
        );
        assert_eq!(normalize_extension("+44 20 7946 0958"), "+442079460958");
        assert_ne!(
            normalize_extension("+12125550100"),
            normalize_extension("12125550100")
        );
    }

    #[test]
    fn normalisation_into_small_buffer_fails_cleanly() {
        let mut s: heapless::String<4> = heapless::String::new();
        assert!(!normalize_extension_into("+12125550100", &mut s));
    }

    fn sample() -> Model {
        Model {
            version: 1,
            targets: vec![TargetSpec::fs("nas1", "/mnt/archive")],
            policies: vec![tests_support::policy_p()],
            users: vec![User {
                id: "u1".into(),
                name: "U".into(),
                email: String::new(),
                extensions: vec!["+1 212 555 0100".into()],
                policies: vec!["p".into()],
            }],
            ..Model::default()
        }
    }

    #[test]
    fn validation_catches_references_and_duplicates() {
        assert!(sample().validate().is_empty());
        let mut m = sample();
        m.users.push(User {
            id: "u2".into(),
            name: String::new(),
            email: String::new(),
            extensions: vec!["tel:+12125550100".into()],
            policies: vec!["nope".into()],
        });
        m.policies[0].targets.push("missing".into());
        m.policies[0].settings.path_template = Some("{yyyy}/{bogus}".into());
        let errs: Vec<String> = m.validate().into_iter().map(|e| e.0).collect();
        assert!(
            errs.iter().any(|e| e.contains("assigned to both")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.contains("unknown policy")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.contains("unknown target")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.contains("bogus")), "{errs:?}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let j = r#"{"id":"p","targets":["a"],"settings":{"decrypt":true,"colour":1}}"#;
        assert!(serde_json::from_str::<Policy>(j).is_err());
    }
}
