//! The audit row codec: formats one `;`-separated CSV row, its chain hash
//! and a folder's digest, and checks one row. Pure: never touches a file.
//!
//! Invariant: `row_hash` is the SHA-256 (lowercase hex) of the row's text up
//! to and including `prev_hash`, exactly as written: fields are cleaned
//! ([`clean_field`]) *before* hashing, so `audit verify` checks the text a
//! reader sees. The header, the field order and the hash are the on-disk
//! format (export-layout.md).

use sha2::{Digest, Sha256};

use crate::time::Timestamp;

/// The header line of every audit file.
pub const HEADER: &str = "ts;ccdr_id;native_id;n_files;bytes;src_folder_path;policy_id;policy_name;dst_folder_type;dst_folder_path;action;error_code;error_desc;sha256;prev_hash;row_hash";

/// The `prev_hash` of the very first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A copy was written (or was already there).
    Export,
    /// Not due: imported, `bt_its`, no user, filtered.
    Skip,
    /// Failed; `error_code`/`error_desc` say why.
    Error,
    /// A configuration bundle was applied or rejected.
    Config,
    /// A compliance export request changed state.
    Request,
}

impl Action {
    /// The log's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Export => "export",
            Action::Skip => "skip",
            Action::Error => "error",
            Action::Config => "config",
            Action::Request => "request",
        }
    }
}

/// One row's content (without the chain fields).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    /// Record id, or config version, or request id.
    pub ccdr_id: String,
    /// The record's native id.
    pub native_id: String,
    /// Files written to the folder.
    pub n_files: u64,
    /// Bytes written to the folder.
    pub bytes: u64,
    /// Absolute folder of the record's XML.
    pub src_folder_path: String,
    /// Policy id.
    pub policy_id: String,
    /// Policy name.
    pub policy_name: String,
    /// Target kind (`fs`, `s3`).
    pub dst_folder_type: String,
    /// Record folder relative to the target root.
    pub dst_folder_path: String,
    /// Action (`export`, `skip`, ...); use [`Action::as_str`].
    pub action: &'static str,
    /// Short machine-readable code.
    pub error_code: String,
    /// What happened, for a person.
    pub error_desc: String,
    /// SHA-256 of the folder's `sha256sum` listing.
    pub sha256: String,
}

/// Replaces `;`, CR and LF by a space so a field never breaks the row, and
/// neutralises a field a spreadsheet would evaluate as a formula (OWASP's
/// CSV injection advice): one starting with `=`, `+`, `-`, `@`, a tab or a
/// carriage return gets a leading `'`.
pub fn clean_field(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        out.push('\'');
    }
    out.extend(s.chars().map(|c| {
        if c == ';' || c == '\n' || c == '\r' {
            ' '
        } else {
            c
        }
    }));
    out
}

/// Formats the row text up to and including `prev_hash` (what `row_hash` covers).
pub fn row_body(ts: Timestamp, r: &Row, prev_hash: &str) -> String {
    let f = [
        ts.recorder().to_string(),
        clean_field(&r.ccdr_id),
        clean_field(&r.native_id),
        r.n_files.to_string(),
        r.bytes.to_string(),
        clean_field(&r.src_folder_path),
        clean_field(&r.policy_id),
        clean_field(&r.policy_name),
        clean_field(&r.dst_folder_type),
        clean_field(&r.dst_folder_path),
        r.action.to_string(),
        clean_field(&r.error_code),
        clean_field(&r.error_desc),
        clean_field(&r.sha256),
        prev_hash.to_string(),
    ];
    f.join(";")
}

/// Lowercase hex SHA-256 of `text`.
pub fn sha256_hex(text: &[u8]) -> String {
    hex::encode(Sha256::digest(text))
}

/// The `sha256sum`-style listing of a folder's files (sorted by name) and its hash.
pub fn folder_digest(files: &mut [(String, [u8; 32])]) -> (String, String) {
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut listing = String::new();
    for (name, h) in files.iter() {
        listing.push_str(&hex::encode(h));
        listing.push_str("  ");
        listing.push_str(name);
        listing.push('\n');
    }
    let h = sha256_hex(listing.as_bytes());
    (listing, h)
}

/// Checks one line (without its `\n`) as a data row: 16 fields, a valid
/// timestamp and a `row_hash` that is the SHA-256 of the rest. Returns its
/// `prev_hash` and `row_hash`.
pub fn check_row(line: &[u8]) -> Option<(&str, &str)> {
    let line = std::str::from_utf8(line).ok()?;
    let (body, hash) = line.rsplit_once(';')?;
    let (_, prev) = body.rsplit_once(';')?;
    if body.split(';').count() != 15 || hash.len() != 64 || prev.len() != 64 {
        return None;
    }
    let ts = body.split(';').next()?;
    if Timestamp::parse_recorder(ts).is_err() || sha256_hex(body.as_bytes()) != hash {
        return None;
    }
    Some((prev, hash))
}

/// The audit file name of the UTC day of `ts`.
pub fn file_name(ts: Timestamp) -> String {
    let c = ts.civil();
    format!("audit-{:04}{:02}{:02}.csv", c.year, c.month, c.day)
}
