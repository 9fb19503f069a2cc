use super::index::SEEN;
use super::*;
use std::fs;
use std::sync::Mutex;

fn k(i: u8) -> PathKey {
    let mut k = [i; 16];
    k[7] = i.wrapping_mul(37);
    k
}

fn reopen(j: &Journal<MemStore>) -> Journal<MemStore> {
    let mut s = j.store().clone();
    s.space = None;
    Journal::open(s).unwrap()
}

#[test]
fn round_trip_and_torn_tail() {
    let mut j = Journal::open(MemStore::default()).unwrap();
    j.record_copy(k(1), 10, 5, 7).unwrap();
    j.record_done(k(2), 11, 6, Outcome::Skipped).unwrap();
    let mut store = j.store().clone();
    let full = store.bytes.len();
    store
        .bytes
        .extend_from_slice(&encode_frame(&Entry::Forget { key: k(2) })[..5]);
    let j2 = Journal::open(store).unwrap();
    assert_eq!(j2.store().bytes.len(), full);
    assert_eq!(j2.repair().torn_tail, Some((full as u64, 5)));
    assert!(j2.has_copy(&k(1), 10, 5, 7));
    assert!(!j2.has_copy(&k(1), 10, 6, 7), "a new version has no copies");
    assert!(j2.is_done(&k(2), 11, 6));
    assert!(!j2.is_done(&k(1), 10, 5));
}

#[test]
fn a_zero_filled_tail_is_cut() {
    let mut j = Journal::open(MemStore::default()).unwrap();
    j.record_done(k(1), 1, 1, Outcome::Exported).unwrap();
    let mut s = j.store().clone();
    let full = s.bytes.len();
    s.bytes.extend_from_slice(&[0u8; 5000]);
    let j = Journal::open(s).unwrap();
    assert_eq!(j.store().bytes.len(), full);
    assert!(j.repair().damaged.is_empty());
    assert!(j.is_done(&k(1), 1, 1));
}

#[test]
fn the_original_format_is_still_read() {
    let mut bytes = Vec::new();
    for e in [
        Entry::Copy {
            key: k(1),
            size: 1,
            mtime_ns: -1,
            copy: 9,
        },
        Entry::Done {
            key: k(2),
            size: 2,
            mtime_ns: 2,
            outcome: Outcome::Rejected,
        },
        Entry::Done {
            key: k(3),
            size: 3,
            mtime_ns: 3,
            outcome: Outcome::Exported,
        },
        Entry::Forget { key: k(3) },
    ] {
        bytes.extend(encode_frame(&e));
    }
    let mut j = Journal::open(MemStore {
        bytes,
        ..MemStore::default()
    })
    .unwrap();
    assert!(j.has_copy(&k(1), 1, -1, 9));
    assert_eq!(j.outcome(&k(2), 2, 2), Some(Outcome::Rejected));
    assert!(!j.is_done(&k(3), 3, 3));
    assert_eq!(j.len(), 2);
    j.compact().unwrap();
    let j = reopen(&j);
    assert!(j.has_copy(&k(1), 1, -1, 9));
    assert_eq!(j.outcome(&k(2), 2, 2), Some(Outcome::Rejected));
}

#[test]
fn every_prefix_decodes_to_a_prefix_of_entries() {
    let es = vec![
        Entry::Copy {
            key: k(1),
            size: 1,
            mtime_ns: -1,
            copy: 9,
        },
        Entry::Fin {
            key: 1,
            ver: 8,
            outcome: Outcome::Exported,
        },
        Entry::Part {
            key: 1,
            ver: 8,
            copy: 3,
            row: [7; 32],
            floor: Some([6; 32]),
        },
        Entry::Forget { key: k(1) },
    ];
    let mut buf = Vec::new();
    for e in &es {
        buf.extend(encode_frame(e));
    }
    for cut in 0..=buf.len() {
        let (got, valid) = decode_frames(&buf[..cut]);
        assert_eq!(&es[..got.len()], &got[..]);
        assert!(valid <= cut);
    }
    let mut flipped = buf.clone();
    flipped[6] ^= 1;
    assert!(decode_frames(&flipped).0.is_empty());
}

#[test]
fn a_short_append_is_cut_back_and_later_frames_stay_readable() {
    let mut j = Journal::open(MemStore::default()).unwrap();
    j.record_done(k(1), 1, 1, Outcome::Exported).unwrap();
    let before = j.store().bytes.clone();
    // The disk fills up in the middle of the next frame.
    j.store_mut().space = Some(7);
    assert!(j.record_done(k(2), 2, 2, Outcome::Exported).is_err());
    assert_eq!(j.store().bytes, before, "the short frame is cut back");
    assert!(!j.is_done(&k(2), 2, 2), "a failed append is not applied");
    // Space is back: later appends land right after the last good frame.
    j.store_mut().space = None;
    j.record_done(k(3), 3, 3, Outcome::Exported).unwrap();
    let j2 = reopen(&j);
    assert_eq!(j2.repair(), &Repair::default());
    assert!(j2.is_done(&k(1), 1, 1) && j2.is_done(&k(3), 3, 3));
}

#[test]
fn a_failed_cut_back_poisons_until_the_journal_is_rewritten() {
    let mut j = Journal::open(MemStore::default()).unwrap();
    j.record_done(k(1), 1, 1, Outcome::Exported).unwrap();
    j.store_mut().space = Some(5);
    j.store_mut().fail_truncate = true;
    assert!(j.record_done(k(2), 2, 2, Outcome::Exported).is_err());
    assert!(j.store().poisoned().is_some());
    // The next append rewrites everything the index knows first.
    j.store_mut().space = None;
    j.record_done(k(3), 3, 3, Outcome::Exported).unwrap();
    assert!(j.store().poisoned().is_none());
    let (_, valid) = decode_frames(&j.store().bytes);
    assert_eq!(valid, j.store().bytes.len(), "no torn frame left inside");
    let j2 = reopen(&j);
    assert!(j2.is_done(&k(1), 1, 1) && j2.is_done(&k(3), 3, 3));
    assert!(!j2.is_done(&k(2), 2, 2));
}

#[test]
fn a_failed_sync_rewrites_the_journal_before_the_next_append() {
    let mut j = Journal::open(MemStore::default()).unwrap();
    j.record_done(k(1), 1, 1, Outcome::Exported).unwrap();
    j.record_done(k(2), 2, 2, Outcome::Exported).unwrap();
    let frames_before = j.frames();
    j.sync_failed(&io::Error::from_raw_os_error(5));
    j.record_done(k(3), 3, 3, Outcome::Exported).unwrap();
    // Rewritten (compacted) then appended.
    assert!(j.frames() <= frames_before + 2);
    let j2 = reopen(&j);
    for i in 1..=3 {
        assert!(j2.is_done(&k(i), i as u64, i as i64));
    }
}

fn fin_frame(key: u64, ver: u64, outcome: Outcome) -> Vec<u8> {
    encode_frame(&Entry::Fin { key, ver, outcome })
}

#[test]
fn valid_frames_after_damage_are_salvaged_not_dropped() {
    // What an old binary left after ENOSPC: a short frame, then
    // acknowledged frames appended behind it.
    let a = fin_frame(1, 8, Outcome::Exported);
    let b = fin_frame(2, 16, Outcome::Exported);
    let c = fin_frame(3, 24, Outcome::Skipped);
    let d = encode_frame(&Entry::Part {
        key: 4,
        ver: 32,
        copy: 5,
        row: [9; 32],
        floor: None,
    });
    let mut bytes = a.clone();
    bytes.extend_from_slice(&b[..9]);
    bytes.extend_from_slice(&c);
    bytes.extend_from_slice(&[0xff; 3]);
    bytes.extend_from_slice(&d);
    let j = Journal::open(MemStore {
        bytes: bytes.clone(),
        ..MemStore::default()
    })
    .unwrap();
    let rep = j.repair().clone();
    assert_eq!(rep.damaged.len(), 2, "{rep:?}");
    assert_eq!(rep.damaged[0], (a.len() as u64, 9));
    assert_eq!(rep.salvaged_frames, 2);
    assert_eq!(rep.torn_tail, None);
    assert_eq!(j.store().damaged[0], (a.len() as u64, b[..9].to_vec()));
    assert_eq!(j.index.fin(1), Some(8 | SEEN | 1));
    assert_eq!(j.index.fin(3), Some(24 | SEEN | 2));
    assert!(j.index.is_open(4));
    // Rewritten clean: a second open finds nothing wrong.
    let (_, valid) = decode_frames(&j.store().bytes);
    assert_eq!(valid, j.store().bytes.len());
    let j2 = reopen(&j);
    assert_eq!(j2.repair(), &Repair::default());
    assert_eq!(j2.len(), 3);
    // Read-only open reports, and changes nothing.
    let ro = Journal::open_read_only(MemStore {
        bytes: bytes.clone(),
        ..MemStore::default()
    })
    .unwrap();
    assert_eq!(ro.repair(), &rep);
    assert_eq!(ro.store().bytes, bytes);
}

#[test]
fn compaction_keeps_it_small() {
    let mut j = Journal::open(MemStore::default()).unwrap();
    for round in 0..50u64 {
        for i in 0..100u8 {
            j.record_copy(k(i), round, 0, 1).unwrap();
            j.record_done(k(i), round, 0, Outcome::Exported).unwrap();
        }
    }
    assert_eq!(j.len(), 100);
    assert!(j.frames() <= 2 * 100 + 4096 + 1, "{}", j.frames());
    j.compact().unwrap();
    assert_eq!(j.frames(), 100);
    let mut j2 = reopen(&j);
    assert!(j2.is_done(&k(5), 49, 0));
    j2.begin_sweep();
    for i in 0..10u8 {
        j2.mark_seen(&k(i));
    }
    j2.prune_unseen().unwrap();
    assert_eq!(j2.len(), 10);
    let j3 = reopen(&j2);
    assert_eq!(j3.len(), 10);
    assert!(j3.is_done(&k(5), 49, 0) && !j3.is_done(&k(50), 49, 0));
}

#[test]
fn compactions_racing_group_committed_appends_lose_nothing() {
    let d = std::env::temp_dir().join(format!("exportd-journal-race-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    let path = d.join("journal.log");
    let j = Arc::new(Mutex::new(
        Journal::open(FileStore::new(path.clone())).unwrap(),
    ));
    let workers: Vec<_> = (0..4u8)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                for i in 0..150u8 {
                    let key = [t, i, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0, 0, 0];
                    let (r, p) = j.lock().unwrap().with_deferred(|j| {
                        j.record_copy_row(key, 1, 1, 9, [i; 32])?;
                        j.record_done(key, 1, 1, Outcome::Exported)
                    });
                    r.unwrap();
                    if let Some(p) = p {
                        p.wait().unwrap();
                    }
                }
            })
        })
        .collect();
    let compactor = {
        let j = j.clone();
        std::thread::spawn(move || {
            for _ in 0..40 {
                j.lock().unwrap().compact().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    for w in workers {
        w.join().unwrap();
    }
    compactor.join().unwrap();
    drop(j);
    let j = Journal::open(FileStore::new(path)).unwrap();
    assert_eq!(j.repair(), &Repair::default());
    assert_eq!(j.len(), 600, "every record survives the renames");
    for t in 0..4u8 {
        for i in 0..150u8 {
            let key = [t, i, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0, 0, 0];
            assert!(j.is_done(&key, 1, 1));
        }
    }
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn the_floor_is_the_oldest_row_not_yet_journaled() {
    let w = Window::new(Some([1; 32]));
    assert_eq!(w.floor(), Some([1; 32]));
    let a = w.register([2; 32]);
    let b = w.register([3; 32]);
    assert_eq!(w.floor(), Some([2; 32]));
    w.acknowledge(b);
    assert_eq!(w.floor(), Some([2; 32]), "a is still open");
    assert_eq!(w.acked(), vec![[3; 32]]);
    w.acknowledge(a);
    assert_eq!(w.floor(), Some([3; 32]));
    assert!(w.acked().is_empty());
}

#[test]
fn copies_carry_their_row_and_floor_and_orphans_are_adopted() {
    let mut j = Journal::open(MemStore::default()).unwrap();
    let w = Window::new(Some([1; 32]));
    j.set_window(w.clone());
    let t = w.register([2; 32]);
    j.record_copy_row(k(1), 1, 1, 5, [2; 32]).unwrap();
    w.acknowledge(t);
    j.record_recovery(&[([8; 32], [9; 32])], [2; 32]).unwrap();
    assert_eq!(j.orphan(&[9; 32]), Some([8; 32]));
    j.compact().unwrap();
    let mut j2 = reopen(&j);
    assert_eq!(j2.floor(), Some([2; 32]));
    assert!(j2.has_copy(&k(1), 1, 1, 5));
    assert_eq!(j2.orphan(&[9; 32]), Some([8; 32]));
    // Adopting the orphan row retires it.
    j2.record_copy_row(k(2), 2, 2, 5, [8; 32]).unwrap();
    assert_eq!(j2.orphans(), 0);
    let mut rows = Vec::new();
    j2.scan_rows(&mut |r| rows.push(*r)).unwrap();
    assert!(
        rows.contains(&[2; 32]) && rows.contains(&[8; 32]),
        "{rows:?}"
    );
}

#[test]
fn the_entries_compaction_writes_rebuild_the_same_index() {
    let mut a = Index::new();
    let mut floor = None;
    for e in [
        Entry::Fin {
            key: 1,
            ver: 8,
            outcome: Outcome::Exported,
        },
        Entry::Part {
            key: 2,
            ver: 16,
            copy: 3,
            row: [5; 32],
            floor: None,
        },
        Entry::Part {
            key: 2,
            ver: 16,
            copy: 4,
            row: [0; 32],
            floor: None,
        },
        Entry::Orphan {
            row: [7; 32],
            sig: [8; 32],
        },
        Entry::Fin {
            key: 3,
            ver: 24,
            outcome: Outcome::Rejected,
        },
        // A copy of a newer version reopens a finished record.
        Entry::Part {
            key: 3,
            ver: 32,
            copy: 1,
            row: [9; 32],
            floor: None,
        },
    ] {
        apply_to(&mut a, &mut floor, &e);
    }
    let live = |ix: &Index| {
        let mut v = Vec::new();
        ix.live_entries(&mut |e| {
            v.push(e.clone());
            Ok(())
        })
        .unwrap();
        v
    };
    let written = live(&a);
    let mut b = Index::new();
    for e in &written {
        apply_to(&mut b, &mut floor, e);
    }
    let again = live(&b);
    assert_eq!(written.len(), again.len());
    assert!(written.iter().all(|e| again.contains(e)), "{again:?}");
    assert_eq!((a.len(), b.len()), (3, 3));
    assert_eq!(a.counts(), b.counts());
    assert!(b.has_open_copy(2, 16, 3) && b.has_open_copy(2, 16, 4));
    assert!(b.has_open_copy(3, 32, 1) && b.fin(3).is_none());
    assert_eq!(b.orphan(&[8; 32]), Some([7; 32]));
}
