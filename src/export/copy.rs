//! One copy of a record to one target: its content files first, the
//! generated files next (messages JSON, vCon), the metadata XML last (its
//! presence means the folder is complete). Never writes an audit row or a
//! journal entry: the caller commits what this returns.

use std::path::Path;

use crate::export::Ctx;
use crate::export::Written;
use crate::export::layout::{PlannedFile, metadata_name};
use crate::export::sources::{MessagesSource, SpoolSource};
use crate::export::vcon::{self, ExportedFile, ExportedRole, VconUser};
use crate::ledger::audit::folder_digest;
use crate::policy::snapshot::{CompiledPolicy, UserView};
use crate::record::Record;
use crate::sink::{BytesSource, PutRequest, Source, Target, TargetError};

/// The largest `messages.json` whose messages are also listed one by one
/// in the vCon (parsed into memory for it); a larger chat's vCon references
/// the file instead.
const VCON_INLINE_MAX: u64 = 8 << 20;

/// The record's metadata XML as read from the spool.
pub(super) struct Metadata {
    /// The bytes as recorded (encrypted for a `.xml.age`).
    pub(super) raw: Vec<u8>,
    /// The plaintext.
    pub(super) plain: Vec<u8>,
    /// It is a `.xml.age`.
    pub(super) encrypted: bool,
}

/// A copy made: what its `export` row says.
pub(super) struct CopyDone {
    pub(super) n_files: u64,
    pub(super) bytes: u64,
    pub(super) digest: String,
    pub(super) detail: String,
}

/// Why a copy was not made.
pub(super) enum CopyError {
    /// The target (or the spool source it read) failed.
    Target(TargetError),
    /// A generated file could not be made from the record.
    Generate(String),
}

/// The files put into one record folder of one target so far.
struct Placed<'a> {
    target: &'a dyn Target,
    folder: &'a str,
    written: Vec<Written>,
    details: Vec<String>,
}

impl Placed<'_> {
    /// Puts one file into the folder and notes it.
    fn put(&mut self, name: &str, want_sha512: bool, src: &dyn Source) -> Result<(), CopyError> {
        let req = PutRequest {
            folder: self.folder,
            name,
            want_sha512,
        };
        let r = self.target.put(&req, src).map_err(CopyError::Target)?;
        if let Some(d) = r.detail {
            self.details.push(format!("{name}: {d}"));
        }
        self.written
            .push((name.to_string(), r.sha256, r.sha512, r.bytes));
        Ok(())
    }

    /// The copy's totals and folder digest.
    fn done(self) -> CopyDone {
        let n_files = self.written.len() as u64;
        let bytes = self.written.iter().map(|w| w.3).sum();
        let mut pairs: Vec<(String, [u8; 32])> =
            self.written.into_iter().map(|w| (w.0, w.1)).collect();
        let (_, digest) = folder_digest(&mut pairs);
        CopyDone {
            n_files,
            bytes,
            digest,
            detail: self.details.join(", "),
        }
    }
}

/// Copies one record to one target's record folder `dst`.
#[allow(clippy::too_many_arguments)]
pub(super) fn copy_one(
    ctx: &Ctx,
    target: &dyn Target,
    root_canon: &Path,
    folder: &Path,
    rec: &Record,
    cp: &CompiledPolicy,
    plan: &[PlannedFile],
    dst: &str,
    meta: &Metadata,
    user: &UserView<'_>,
) -> Result<CopyDone, CopyError> {
    let mut placed = Placed {
        target,
        folder: dst,
        written: Vec::new(),
        details: Vec::new(),
    };
    let want512 = cp.policy.settings.vcon;
    for f in plan {
        let path = folder.join(&rec.files[f.index].path);
        let len = std::fs::metadata(&path).ok().map(|m| m.len());
        let src = SpoolSource {
            root: root_canon,
            path,
            decrypt: f.decrypt,
            keys: ctx.keys.as_ref(),
            len,
        };
        placed.put(&f.out_name, want512, &src)?;
    }
    // Generated files: messages.json (streamed from the transcript), then the vCon.
    let content = placed.written.len();
    let messages = MessagesSource::of(rec, cp, folder, root_canon, ctx.keys.as_ref())?;
    if let Some(ms) = &messages {
        placed.put(&ms.name, want512, ms)?;
    }
    if cp.policy.settings.vcon {
        put_vcon(&mut placed, rec, cp, user, content, messages.as_ref())?;
    }
    // The metadata XML last: its presence means the folder is complete.
    let keep_encrypted = meta.encrypted && !cp.policy.settings.decrypt;
    let name = metadata_name(&rec.id, keep_encrypted);
    let body = if keep_encrypted {
        &meta.raw
    } else {
        &meta.plain
    };
    placed.put(&name, false, &BytesSource(body))?;
    Ok(placed.done())
}

/// Generates the vCon from the `content` files placed first and the
/// messages JSON placed after them (when any), and puts it.
fn put_vcon(
    placed: &mut Placed<'_>,
    rec: &Record,
    cp: &CompiledPolicy,
    user: &UserView<'_>,
    content: usize,
    messages: Option<&MessagesSource<'_>>,
) -> Result<(), CopyError> {
    // Memory stays bounded: a chat whose messages.json is large gets
    // a vCon that references that file (with its content hash)
    // instead of one dialog per message held in memory.
    let placed_messages = placed.written.get(content);
    let inline = placed_messages.is_some_and(|w| w.3 <= VCON_INLINE_MAX);
    let transcript = match messages {
        Some(ms) if inline => Some(ms.transcript().map_err(CopyError::Generate)?),
        _ => None,
    };
    let mfile = match (messages, placed_messages) {
        (Some(ms), Some((_, _, sha512, bytes))) => Some(ExportedFile {
            name: &ms.name,
            role: ExportedRole::Messages,
            sha512: sha512.ok_or_else(|| {
                CopyError::Generate(format!(
                    "vCon: the target returned no SHA-512 for {:?}",
                    ms.name
                ))
            })?,
            bytes: *bytes,
            message_id: None,
        }),
        _ => None,
    };
    let (name, bytes) = vcon::generate_with(
        rec,
        VconUser {
            id: user.id,
            name: user.name,
            email: user.email,
        },
        cp.policy.settings.decrypt,
        &placed.written[..content],
        mfile,
        transcript.as_ref(),
    )
    .map_err(CopyError::Generate)?;
    drop(transcript);
    placed.put(&name, false, &BytesSource(&bytes))
}
