//! Opening the journal: rebuilds the index in one streamed pass, then
//! repairs what it found. Never drops a valid frame, never trusts a bad one.
//!
//! Invariant: bad bytes with no valid frame after them are a torn tail (an
//! append cut short by a crash or a full disk) and are cut off; bad bytes
//! *followed by valid frames* are damage: every valid frame after them is
//! salvaged into the index, the bad bytes are saved beside the journal, an
//! error names the file and offset, and the journal is rewritten clean from
//! the index. A read-only open reports what it found and changes nothing.

use std::io::{self, Read};

use super::frame::{Entry, FrameReader, Step};
use super::index::{Index, apply_to};
use super::{Journal, JournalStore, Repair, Window};

/// How much of one damaged region is saved beside the journal.
const SAVE_DAMAGED_MAX: usize = 1 << 20;

/// A valid frame found after bad bytes: the entry, its offset and length.
type Salvaged = (Entry, u64, usize);

/// What the pass over the store found.
struct Found {
    rep: Repair,
    /// The end of the last valid frame.
    valid_end: u64,
    /// Damaged regions' first bytes, by offset, to save beside the journal.
    saves: Vec<(u64, Vec<u8>)>,
}

impl<S: JournalStore> Journal<S> {
    /// Reads the store into a new journal and, when `repair`, cuts its torn
    /// tail or rewrites it without its damaged bytes.
    pub(super) fn load(store: S, repair: bool) -> io::Result<Journal<S>> {
        let mut j = Journal {
            store,
            index: Index::new(),
            frames: 0,
            deferred: false,
            pending: None,
            floor: None,
            window: Window::new(None),
            repair: Repair::default(),
        };
        let found = j.read_frames()?;
        if repair {
            j.cut_torn_tail(&found)?;
            j.rewrite_damaged(&found)?;
        }
        j.repair = found.rep;
        Ok(j)
    }

    /// Streams every frame into the index, stepping over bad bytes to the
    /// next valid frame.
    fn read_frames(&mut self) -> io::Result<Found> {
        let mut f = Found {
            rep: Repair::default(),
            valid_end: 0,
            saves: Vec::new(),
        };
        let mut rd = FrameReader::new(self.store.reader()?);
        loop {
            match rd.next()? {
                Step::Frame(e, at, n) => {
                    if !f.rep.damaged.is_empty() {
                        f.rep.salvaged_frames += 1;
                    }
                    f.valid_end = at + n as u64;
                    self.frames += 1;
                    apply_to(&mut self.index, &mut self.floor, &e);
                }
                Step::End => break,
                Step::Bad(at) | Step::Torn(at) => match next_valid_frame(&mut rd)? {
                    (None, _) => {
                        f.rep.torn_tail = Some((at, rd.pos - at));
                        break;
                    }
                    (Some((e, at2, n)), save) => {
                        f.rep.damaged.push((at, at2 - at));
                        f.saves.push((at, save));
                        f.rep.salvaged_frames += 1;
                        f.valid_end = at2 + n as u64;
                        self.frames += 1;
                        apply_to(&mut self.index, &mut self.floor, &e);
                    }
                },
            }
        }
        Ok(f)
    }

    /// Cuts a torn tail after the last valid frame (when nothing before it
    /// is damaged: then the rewrite drops it).
    fn cut_torn_tail(&mut self, f: &Found) -> io::Result<()> {
        let Some((at, n)) = f.rep.torn_tail else {
            return Ok(());
        };
        if !f.rep.damaged.is_empty() {
            return Ok(());
        }
        let name = self.store.describe();
        let valid_end = f.valid_end;
        tracing::warn!(
            "journal {name}: cut a torn tail of {n} bytes at offset {at} (an append interrupted by a crash or a full disk)"
        );
        self.store.truncate(valid_end).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "journal {name}: cannot cut its torn tail at offset {valid_end}: {e}; free space or fix permissions on the state folder"
                ),
            )
        })
    }

    /// Saves the damaged regions beside the journal, says so loudly, and
    /// rewrites the journal from the index (with the salvaged frames).
    fn rewrite_damaged(&mut self, f: &Found) -> io::Result<()> {
        let rep = &f.rep;
        if rep.damaged.is_empty() {
            return Ok(());
        }
        let name = self.store.describe();
        let mut kept = Vec::new();
        for (at, bytes) in &f.saves {
            match self.store.save_damaged(*at, bytes) {
                Ok(Some(p)) => kept.push(p.display().to_string()),
                Ok(None) => {}
                Err(e) => tracing::error!("journal {name}: cannot save damaged bytes: {e}"),
            }
        }
        tracing::error!(
            "journal {name}: DAMAGED: {} region(s) of bad bytes followed by valid frames (first at offset {}, {} bytes); the {} valid frames after it were salvaged, not dropped, and the journal is rewritten without the bad bytes. Damaged bytes saved to: {}. Records whose entries were in the damaged bytes are exported again (a target finds the same bytes). Check the state disk (dmesg, SMART).",
            rep.damaged.len(),
            rep.damaged[0].0,
            rep.damaged[0].1,
            rep.salvaged_frames,
            if kept.is_empty() {
                "(not saved)".to_string()
            } else {
                kept.join(", ")
            }
        );
        self.compact().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "journal {name}: rewriting it after salvaging damaged frames failed: {e}; free space on the state disk and start again"
                ),
            )
        })
    }
}

/// Looks for the next valid frame after bad bytes, one byte at a time.
/// Returns it (None: the store ends first) and the first
/// [`SAVE_DAMAGED_MAX`] bytes stepped over.
fn next_valid_frame<R: Read>(rd: &mut FrameReader<R>) -> io::Result<(Option<Salvaged>, Vec<u8>)> {
    let mut save = Vec::new();
    loop {
        if rd.start < rd.end && save.len() < SAVE_DAMAGED_MAX {
            save.push(rd.buf[rd.start]);
        }
        rd.skip();
        match rd.next()? {
            Step::Frame(e, at, n) => return Ok((Some((e, at, n)), save)),
            Step::End => return Ok((None, save)),
            Step::Bad(_) | Step::Torn(_) => continue,
        }
    }
}
