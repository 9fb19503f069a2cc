//! The sources an export reads from the spool: a content file (decrypted
//! on the fly when asked) and a chat's `messages.json` streamed from its
//! transcript. Read-only: never writes to the spool or to a target.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::export::Keys;
use crate::export::copy::CopyError;
use crate::policy::snapshot::CompiledPolicy;
use crate::record::{Modality, Record};
use crate::sink::{Source, TargetError};
use crate::watch::spool::{self, SpoolFile, open_error_to_io, open_in_root};

/// A content file in the spool, read (and decrypted) from the start on each open.
pub(super) struct SpoolSource<'a> {
    pub(super) root: &'a Path,
    pub(super) path: PathBuf,
    pub(super) decrypt: bool,
    pub(super) keys: &'a dyn Keys,
    pub(super) len: Option<u64>,
}

impl Source for SpoolSource<'_> {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        // Errors stay classifiable (spool::is_transient) and name the file.
        let f = open_in_root(self.root, &self.path).map_err(open_error_to_io)?;
        // The recorder wrote this file without fsync and has closed it: its
        // dirty pages are written back from now on (not changed: no byte,
        // no timestamp), so they do not pile up until the kernel's 30 s
        // expiry writes them back all at once, holding up every fsync
        // behind them (BENCHMARKS.md, "Writeback").
        crate::sink::fs::start_writeback(&f, 0, 0);
        let f = SpoolFile::new(f, self.path.clone());
        if self.decrypt {
            self.keys
                .decrypt(Box::new(io::BufReader::with_capacity(64 << 10, f)))
        } else {
            Ok(Box::new(f))
        }
    }
    fn len_hint(&self) -> Option<u64> {
        if self.decrypt { None } else { self.len }
    }
}

/// `<id>.messages.json` of an IM record, streamed from its transcript (only
/// from plaintext: with `decrypt` off, an encrypted transcript is exported as
/// recorded and no plaintext is derived from it).
///
/// Building it reads the whole transcript once (the first pass: every check,
/// the header and the attachments kept); each [`Source::open`] then reads it
/// again and produces the JSON message by message, so neither the transcript
/// nor the JSON is ever held in memory.
pub(super) struct MessagesSource<'a> {
    /// The output name.
    pub(super) name: String,
    record_id: String,
    root: &'a Path,
    path: PathBuf,
    decrypt: bool,
    keys: &'a dyn Keys,
    index: crate::record::im::stream::TranscriptIndex,
}

impl<'a> MessagesSource<'a> {
    /// The record's transcript as a [`MessagesSource`], when it gets one.
    pub(super) fn of(
        rec: &Record,
        cp: &CompiledPolicy,
        folder: &Path,
        root: &'a Path,
        keys: &'a dyn Keys,
    ) -> Result<Option<MessagesSource<'a>>, CopyError> {
        if rec.modality != Modality::Im {
            return Ok(None);
        }
        let Some(f) = rec.files.iter().find(|f| {
            let n = f.base_name();
            f.role == crate::record::FileRole::Transcript
                && (n.ends_with(".im") || n.ends_with(".im.age"))
        }) else {
            return Ok(None);
        };
        let decrypt = f.is_encrypted();
        if decrypt && !cp.policy.settings.decrypt {
            return Ok(None);
        }
        let path = folder.join(&f.path);
        let index = open_transcript_xml(root, &path, decrypt, keys)
            .and_then(crate::record::im::stream::TranscriptIndex::build)
            .map_err(|e| match e {
                // A read outage of the spool is retried like any other.
                crate::record::im::ImError::Io(e) if spool::is_transient(&e) => {
                    CopyError::Target(TargetError::Source(e))
                }
                other => CopyError::Generate(format!("transcript {}: {other}", path.display())),
            })?;
        Ok(Some(MessagesSource {
            name: format!(
                "{}.messages.json",
                crate::export::layout::sanitize_component(&rec.id)
            ),
            record_id: rec.id.clone(),
            root,
            path,
            decrypt,
            keys,
            index,
        }))
    }

    fn describe(&self, e: impl std::fmt::Display) -> String {
        format!("transcript {}: {e}", self.path.display())
    }

    /// A fresh reader of the transcript XML.
    fn xml(&self) -> Result<crate::record::im::stream::XmlStream<'_>, crate::record::im::ImError> {
        open_transcript_xml(self.root, &self.path, self.decrypt, self.keys)
    }

    /// The whole transcript, for the vCon (which lists every message).
    pub(super) fn transcript(&self) -> Result<crate::record::im::Transcript, String> {
        self.xml()
            .and_then(crate::record::im::Transcript::from_xml)
            .map_err(|e| self.describe(e))
    }
}

/// Opens a spool `.im` file (decrypting a `.im.age`) as a checked reader of
/// its `transcript.xml`.
fn open_transcript_xml<'k>(
    root: &Path,
    path: &Path,
    decrypt: bool,
    keys: &'k dyn Keys,
) -> Result<crate::record::im::stream::XmlStream<'k>, crate::record::im::ImError> {
    use crate::record::im::stream::ImSource;
    // Errors stay classifiable (spool::is_transient) and name the file.
    let f = open_in_root(root, path).map_err(open_error_to_io)?;
    let src = if decrypt {
        ImSource::Stream(keys.decrypt(Box::new(io::BufReader::with_capacity(64 << 10, f)))?)
    } else {
        ImSource::File(f)
    };
    crate::record::im::stream::xml_reader(src)
}

impl Source for MessagesSource<'_> {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        let xml = self.xml().map_err(|e| match e {
            crate::record::im::ImError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, self.describe(other)),
        })?;
        Ok(Box::new(crate::record::im::stream::MessagesJson::new(
            xml,
            &self.index,
            &self.record_id,
        )))
    }
    fn len_hint(&self) -> Option<u64> {
        None
    }
}
