//! The zip's entries in the Glip or Slack layout, from what the engine hands
//! it; never opens a spool file itself.
//!
//! The two zip layouts: Glip compliance export and Slack workspace export.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};

use serde_json::{Value, json};
use zip::write::SimpleFileOptions;

use super::ComplianceError;
use super::request::Format;
use super::scan::Directory;
use crate::export::layout::sanitize_component;
use crate::record::im::{Kind, Message, Participant};
use crate::time::Timestamp;

/// A conversation as listed in the index files.
#[derive(Debug, Clone)]
pub(crate) struct ConvMeta {
    pub id: String,
    pub kind: Kind,
    pub title: String,
    pub owner: String,
    pub participants: Vec<Participant>,
    pub records: Vec<String>,
    /// Unique, sanitised folder name inside the zip.
    pub dir: String,
    pub first: Option<Timestamp>,
}

/// A message with its attachment names.
pub(crate) struct Post {
    pub msg: Message,
    pub attachments: Vec<String>,
}

/// The zip being written.
pub(crate) struct Out {
    zip: zip::ZipWriter<BufWriter<File>>,
    pub format: Format,
    used_dirs: HashSet<String>,
    used_files: HashSet<String>,
}

fn zerr(e: zip::result::ZipError) -> ComplianceError {
    ComplianceError::Zip(e.to_string())
}

fn opts() -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644)
}

fn rfc(t: Timestamp) -> String {
    t.rfc3339().to_string()
}

/// Slack's `ts`: `<unix seconds>.<6 digits>`.
pub(crate) fn slack_ts(t: Timestamp) -> String {
    format!(
        "{}.{:06}",
        t.0.div_euclid(1000),
        t.0.rem_euclid(1000) * 1000
    )
}

/// A Slack channel-like name: lowercase, `[a-z0-9._-]`, at most 80 bytes.
fn slack_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(80)
        .collect();
    if out.trim_matches(['.', '-']).is_empty() {
        out = "conversation".into();
    }
    out
}

impl Out {
    pub(crate) fn new(file: File, format: Format) -> Out {
        Out {
            zip: zip::ZipWriter::new(BufWriter::with_capacity(256 << 10, file)),
            format,
            used_dirs: HashSet::new(),
            used_files: HashSet::new(),
        }
    }

    /// Starts an entry; `path` components must already be sanitised.
    pub(crate) fn entry(
        &mut self,
        path: &str,
        large: bool,
    ) -> Result<&mut dyn Write, ComplianceError> {
        self.zip
            .start_file(path, opts().large_file(large))
            .map_err(zerr)?;
        Ok(&mut self.zip)
    }

    fn json(&mut self, path: &str, v: &impl serde::Serialize) -> Result<(), ComplianceError> {
        let w = self.entry(path, false)?;
        serde_json::to_writer_pretty(&mut *w, v)
            .map_err(|e| ComplianceError::Zip(e.to_string()))?;
        w.write_all(b"\n")
            .map_err(|e| ComplianceError::Zip(e.to_string()))
    }

    /// A unique folder name for a conversation.
    pub(crate) fn conv_dir(&mut self, conversation_id: &str) -> String {
        let base = match self.format {
            Format::Glip => sanitize_component(conversation_id),
            Format::Slack => slack_name(conversation_id),
        };
        // Slack reserves the index names at the top level; keep them clear.
        let mut name = base.clone();
        let mut n = 1;
        while self.used_dirs.contains(&name)
            || matches!(name.as_str(), "Files" | "files" | "request.json")
        {
            n += 1;
            name = format!("{base}~{n}");
        }
        self.used_dirs.insert(name.clone());
        name
    }

    /// The zip path of an attachment, unique within the export:
    /// `Files/<conversation>/<name>`; a second file of the same name for
    /// another message is prefixed with that message's id.
    pub(crate) fn file_path(
        &mut self,
        conv: &ConvMeta,
        message_id: &str,
        name: &str,
    ) -> Option<String> {
        let name = sanitize_component(name);
        let key = format!("{}\0{}\0{}", conv.dir, message_id, name);
        if self.used_files.contains(&key) {
            return None;
        }
        self.used_files.insert(key);
        let mut path = format!("Files/{}/{}", conv.dir, name);
        let mut n = 1;
        while self.used_files.contains(&path) {
            n += 1;
            path = format!(
                "Files/{}/{}",
                conv.dir,
                sanitize_component(&format!("{message_id}_{n}_{name}"))
            );
        }
        self.used_files.insert(path.clone());
        Some(path)
    }

    /// Writes one UTC day of one conversation.
    pub(crate) fn day(
        &mut self,
        conv: &ConvMeta,
        date: &str,
        posts: &[Post],
    ) -> Result<(), ComplianceError> {
        match self.format {
            Format::Glip => {
                let top = if conv.kind == Kind::Team {
                    "Team_Chats"
                } else {
                    "People_Chats"
                };
                let v: Vec<Value> = posts.iter().map(glip_post).collect();
                self.json(&format!("{top}/{}/{date}.json", conv.dir), &v)
            }
            Format::Slack => {
                let v: Vec<Value> = posts.iter().map(|p| slack_message(conv, p)).collect();
                self.json(&format!("{}/{date}.json", conv.dir), &v)
            }
        }
    }

    /// Writes the index files of the layout.
    pub(crate) fn index(
        &mut self,
        convs: &[ConvMeta],
        users: &dyn Directory,
    ) -> Result<(), ComplianceError> {
        match self.format {
            Format::Glip => {
                let people: Vec<Value> = convs
                    .iter()
                    .filter(|c| c.kind != Kind::Team)
                    .map(|c| glip_conv(c, users))
                    .collect();
                let teams: Vec<Value> = convs
                    .iter()
                    .filter(|c| c.kind == Kind::Team)
                    .map(|c| glip_conv(c, users))
                    .collect();
                self.json("People_And_Groups/users.json", &people)?;
                self.json("Teams/teams.json", &teams)
            }
            Format::Slack => {
                self.json("users.json", &slack_users(convs, users))?;
                let of = |k: Kind| -> Vec<Value> {
                    convs
                        .iter()
                        .filter(|c| c.kind == k)
                        .map(slack_conv)
                        .collect()
                };
                self.json("channels.json", &of(Kind::Team))?;
                self.json("groups.json", &Vec::<Value>::new())?;
                self.json("dms.json", &of(Kind::Direct))?;
                self.json("mpims.json", &of(Kind::Group))
            }
        }
    }

    /// Writes `request.json`.
    pub(crate) fn request_json(&mut self, v: &Value) -> Result<(), ComplianceError> {
        self.json("request.json", v)
    }

    /// Finishes the zip and returns the file, flushed (not yet fsynced).
    pub(crate) fn finish(self) -> Result<File, ComplianceError> {
        let w = self.zip.finish().map_err(zerr)?;
        w.into_inner()
            .map_err(|e| ComplianceError::Zip(e.error().to_string()))
    }
}

fn edits_json(m: &Message, slack: bool) -> Vec<Value> {
    m.edits
        .iter()
        .map(|e| {
            if slack {
                json!({"ts": slack_ts(e.timestamp), "user": e.by, "text": e.text})
            } else {
                json!({"time": rfc(e.timestamp), "by": e.by, "text": e.text})
            }
        })
        .collect()
}

fn glip_post(p: &Post) -> Value {
    let m = &p.msg;
    json!({
        "id": m.id,
        "creationTime": rfc(m.timestamp),
        "lastModifiedTime": rfc(m.last_modified()),
        "creatorId": m.from,
        "text": m.text,
        "deleted": m.deleted,
        "deletedTime": m.deleted_at.map(rfc),
        "deletedBy": m.deleted_by,
        "edits": edits_json(m, false),
        "attachments": p.attachments,
    })
}

fn slack_message(conv: &ConvMeta, p: &Post) -> Value {
    let m = &p.msg;
    let mut v = json!({
        "type": "message",
        "user": m.from,
        "text": m.text,
        "ts": slack_ts(m.timestamp),
        "client_msg_id": m.id,
    });
    if let Some(last) = m.edits.iter().max_by_key(|e| e.timestamp) {
        v["edited"] = json!({"user": last.by, "ts": slack_ts(last.timestamp)});
        v["edit_history"] = Value::Array(edits_json(m, true));
    }
    if m.deleted {
        // Slack exports drop deleted messages; a compliance export keeps them,
        // marked the way Slack marks a deleted message left in place.
        v["subtype"] = json!("tombstone");
        v["deleted"] = json!(true);
        v["deleted_ts"] = json!(m.deleted_at.map(slack_ts));
        v["deleted_by"] = json!(m.deleted_by);
    }
    if !p.attachments.is_empty() {
        v["files"] = Value::Array(
            p.attachments
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    json!({
                        "id": format!("{}-{}", m.id, i + 1),
                        "name": a,
                        "title": a,
                        "url_private": format!("Files/{}/{}", conv.dir, sanitize_component(a)),
                    })
                })
                .collect(),
        );
    }
    v
}

fn email_of(p: &Participant, users: &dyn Directory) -> Option<String> {
    if let Some(m) = users.mail_of(&p.id, &p.address) {
        return Some(m);
    }
    let a = p.address.trim();
    let a = a.strip_prefix("mailto:").unwrap_or(a);
    (a.contains('@') && !a.contains(':')).then(|| a.to_string())
}

fn glip_conv(c: &ConvMeta, users: &dyn Directory) -> Value {
    let members: Vec<Value> = c
        .participants
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "name": p.name,
                "email": email_of(p, users),
                "address": p.address,
                "internal": p.internal,
            })
        })
        .collect();
    let folder = if c.kind == Kind::Team {
        "Team_Chats"
    } else {
        "People_Chats"
    };
    json!({
        "id": c.id,
        "kind": c.kind.as_str(),
        "title": c.title,
        "owner": c.owner,
        "members": members,
        "folder": format!("{folder}/{}", c.dir),
        "records": c.records,
    })
}

fn slack_conv(c: &ConvMeta) -> Value {
    let created = c.first.map(|t| t.0.div_euclid(1000)).unwrap_or(0);
    let members: Vec<&str> = c.participants.iter().map(|p| p.id.as_str()).collect();
    match c.kind {
        Kind::Direct => json!({
            // slack-export-viewer reads a DM's folder by its id.
            "id": c.dir,
            "created": created,
            "members": members,
            "exportd_conversation_id": c.id,
        }),
        _ => json!({
            "id": c.dir,
            "name": c.dir,
            "created": created,
            "creator": c.owner,
            "is_archived": false,
            "is_general": false,
            "members": members,
            "topic": {"value": c.title, "creator": c.owner, "last_set": created},
            "purpose": {"value": "", "creator": "", "last_set": 0},
            "exportd_conversation_id": c.id,
        }),
    }
}

fn slack_users(convs: &[ConvMeta], users: &dyn Directory) -> Vec<Value> {
    let mut seen: BTreeMap<&str, &Participant> = BTreeMap::new();
    for c in convs {
        for p in &c.participants {
            seen.entry(p.id.as_str()).or_insert(p);
        }
    }
    seen.values()
        .map(|p| {
            let name = if p.name.is_empty() {
                p.id.clone()
            } else {
                p.name.clone()
            };
            json!({
                "id": p.id,
                "name": p.id,
                "real_name": name,
                "deleted": false,
                "is_bot": false,
                "is_restricted": !p.internal,
                "profile": {
                    "real_name": name,
                    "display_name": name,
                    "email": email_of(p, users),
                    "image_72": "",
                    "image_512": "",
                },
            })
        })
        .collect()
}
