//! The watch room's map from inotify watch descriptors to folder paths,
//! kept compact: a recorder that makes a folder per record has one watch
//! per folder it keeps (tens of thousands), and a map of one `PathBuf`
//! allocation per folder grew the agent's heap by ~250 bytes per folder,
//! most of it small long-lived allocations pinning pages among each
//! record's temporaries.
//!
//! Here a folder costs one 16-byte slot and its path below its spool root
//! in one shared string (no allocation per folder): the slots are a vector
//! sorted by descriptor (the kernel hands descriptors out in increasing
//! order, so adding is an append), removal leaves a tombstone, and the
//! vector and the string are rebuilt once half of either is dead. Pure:
//! no system call; the watcher owns the inotify side.

use std::path::{Path, PathBuf};

/// `base` of a slot whose string is a whole path (not below a spool root).
const WHOLE: u32 = u32::MAX;
/// `base` of a removed slot.
const DEAD: u32 = u32::MAX - 1;
/// Below this many slots or bytes a map is never rebuilt.
const REBUILD_MIN: usize = 64;

/// One watched folder: its descriptor, the spool root it is below (index
/// into `bases`, or [`WHOLE`] / [`DEAD`]) and its path (below that root,
/// or whole) as a range of `names`.
#[derive(Clone, Copy, Debug)]
struct Slot {
    wd: i32,
    base: u32,
    off: u32,
    len: u32,
}

/// Watched folders by watch descriptor (see the module docs).
#[derive(Debug, Default)]
pub struct WatchMap {
    /// Sorted by `wd`; descriptors are unique among live and dead slots.
    slots: Vec<Slot>,
    /// The paths of all slots, back to back (UTF-8: spool paths that are
    /// not are never watched, see the watcher).
    names: String,
    /// Spool roots seen so far (few; never removed).
    bases: Vec<PathBuf>,
    dead_slots: usize,
    dead_bytes: usize,
}

impl WatchMap {
    /// An empty map.
    pub fn new() -> WatchMap {
        WatchMap::default()
    }

    /// Live folders in the map.
    pub fn len(&self) -> usize {
        self.slots.len() - self.dead_slots
    }

    /// True when no folder is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn find(&self, wd: i32) -> Result<usize, usize> {
        self.slots.binary_search_by_key(&wd, |s| s.wd)
    }

    fn live(&self, wd: i32) -> Option<&Slot> {
        self.find(wd)
            .ok()
            .map(|i| &self.slots[i])
            .filter(|s| s.base != DEAD)
    }

    /// True when `wd` names a watched folder.
    pub fn contains(&self, wd: i32) -> bool {
        self.live(wd).is_some()
    }

    /// Records `dir` as the folder watched by `wd`, below the spool root
    /// `root` when given (`dir` must then start with it), replacing what
    /// `wd` named before (the kernel gives a folder that is watched again,
    /// e.g. after a rename, its old descriptor). False, and nothing
    /// recorded, for a path that is not UTF-8.
    pub fn insert(&mut self, wd: i32, dir: &Path, root: Option<&Path>) -> bool {
        let (base, rest) = match root.and_then(|r| dir.strip_prefix(r).ok().map(|rel| (r, rel))) {
            Some((r, rel)) => (self.base_of(r), rel),
            None => (WHOLE, dir),
        };
        let Some(rest) = rest.to_str() else {
            return false;
        };
        let (Ok(off), Ok(len)) = (u32::try_from(self.names.len()), u32::try_from(rest.len()))
        else {
            return false;
        };
        self.names.push_str(rest);
        let slot = Slot { wd, base, off, len };
        match self.find(wd) {
            Ok(i) => {
                let old = std::mem::replace(&mut self.slots[i], slot);
                if old.base == DEAD {
                    self.dead_slots -= 1;
                } else {
                    self.dead_bytes += old.len as usize;
                }
            }
            Err(i) => self.slots.insert(i, slot),
        }
        self.maybe_rebuild();
        true
    }

    /// The index of spool root `r` in `bases`, added when new.
    fn base_of(&mut self, r: &Path) -> u32 {
        if let Some(i) = self.bases.iter().position(|b| b == r) {
            return i as u32;
        }
        self.bases.push(r.to_path_buf());
        (self.bases.len() - 1) as u32
    }

    /// The path of the folder watched by `wd`.
    pub fn path(&self, wd: i32) -> Option<PathBuf> {
        self.live(wd).map(|s| self.path_of(s))
    }

    fn path_of(&self, s: &Slot) -> PathBuf {
        let rest = &self.names[s.off as usize..(s.off + s.len) as usize];
        if s.base == WHOLE {
            return PathBuf::from(rest);
        }
        let root = &self.bases[s.base as usize];
        if rest.is_empty() {
            root.clone()
        } else {
            root.join(rest)
        }
    }

    /// Forgets the folder of `wd` (its watch ended); returns its path.
    pub fn remove(&mut self, wd: i32) -> Option<PathBuf> {
        let i = self.find(wd).ok()?;
        let s = self.slots[i];
        if s.base == DEAD {
            return None;
        }
        let path = self.path_of(&s);
        self.slots[i].base = DEAD;
        self.dead_slots += 1;
        self.dead_bytes += s.len as usize;
        self.maybe_rebuild();
        Some(path)
    }

    /// Rebuilds the slots and the names once half of either is dead, so
    /// that a spool whose folders come and go keeps a bounded map.
    fn maybe_rebuild(&mut self) {
        let slots_stale = self.slots.len() >= REBUILD_MIN && self.dead_slots * 2 > self.slots.len();
        let names_stale = self.names.len() >= REBUILD_MIN && self.dead_bytes * 2 > self.names.len();
        if !(slots_stale || names_stale) {
            return;
        }
        let live = self.len();
        let mut slots = Vec::with_capacity(live);
        let mut names = String::with_capacity(self.names.len() - self.dead_bytes);
        for s in self.slots.iter().filter(|s| s.base != DEAD) {
            let rest = &self.names[s.off as usize..(s.off + s.len) as usize];
            // Fits: the live bytes are fewer than the old string's.
            let off = names.len() as u32;
            names.push_str(rest);
            slots.push(Slot { off, ..*s });
        }
        self.slots = slots;
        self.names = names;
        self.dead_slots = 0;
        self.dead_bytes = 0;
    }

    /// Bytes held by the map (its two buffers and the roots).
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.names.capacity()
            + self
                .bases
                .iter()
                .map(|b| b.as_os_str().len() + std::mem::size_of::<PathBuf>())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_below_a_root_and_whole_paths_come_back_as_given() {
        let mut m = WatchMap::new();
        let root = Path::new("/var/spool/rec");
        assert!(m.insert(1, root, Some(root)));
        assert!(m.insert(2, Path::new("/var/spool/rec/2026/12/08"), Some(root)));
        assert!(m.insert(3, Path::new("/etc/exportd/keys"), None));
        // A root given that the path is not below: kept whole.
        assert!(m.insert(4, Path::new("/srv/inbox"), Some(root)));
        assert_eq!(m.path(1).unwrap(), root);
        assert_eq!(m.path(2).unwrap(), Path::new("/var/spool/rec/2026/12/08"));
        assert_eq!(m.path(3).unwrap(), Path::new("/etc/exportd/keys"));
        assert_eq!(m.path(4).unwrap(), Path::new("/srv/inbox"));
        assert_eq!(m.path(5), None);
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn a_folder_watched_again_takes_its_new_path_and_a_removed_one_is_gone() {
        let mut m = WatchMap::new();
        let root = Path::new("/s");
        m.insert(7, Path::new("/s/a"), Some(root));
        // Renamed a -> b: the kernel gives the same descriptor back.
        m.insert(7, Path::new("/s/b"), Some(root));
        assert_eq!(m.path(7).unwrap(), Path::new("/s/b"));
        assert_eq!(m.len(), 1);
        assert_eq!(m.remove(7).unwrap(), Path::new("/s/b"));
        assert_eq!(m.remove(7), None);
        assert!(!m.contains(7));
        assert!(m.is_empty());
        // The kernel reuses a descriptor after a long while.
        m.insert(7, Path::new("/s/c"), Some(root));
        assert_eq!(m.path(7).unwrap(), Path::new("/s/c"));
    }

    #[test]
    fn descriptors_out_of_order_are_found() {
        let mut m = WatchMap::new();
        let root = Path::new("/s");
        for wd in [5, 1, 9, 3, 7] {
            m.insert(wd, &root.join(format!("f{wd}")), Some(root));
        }
        for wd in [1, 3, 5, 7, 9] {
            assert_eq!(m.path(wd).unwrap(), root.join(format!("f{wd}")));
        }
    }

    #[test]
    fn a_spool_whose_folders_come_and_go_keeps_a_bounded_map() {
        let mut m = WatchMap::new();
        let root = Path::new("/var/spool/recorder");
        m.insert(1, root, Some(root));
        let mut high = 0;
        // 100,000 record folders, at most 1,000 alive at a time.
        for wd in 2..100_002 {
            let p = root.join(format!("2026/12/08/rec-{wd:08}"));
            assert!(m.insert(wd, &p, Some(root)));
            if wd > 1_001 {
                let gone = wd - 1_000;
                assert_eq!(
                    m.remove(gone).unwrap(),
                    root.join(format!("2026/12/08/rec-{gone:08}"))
                );
            }
            high = high.max(m.heap_bytes());
        }
        assert_eq!(m.len(), 1_001);
        assert_eq!(m.path(1).unwrap(), root);
        assert_eq!(
            m.path(100_001).unwrap(),
            root.join("2026/12/08/rec-00100001")
        );
        assert_eq!(m.path(99_001), None);
        // 1,001 folders of 23 bytes: well under 200 KiB at any time, not
        // ~100 bytes per folder ever added.
        assert!(high < 200 << 10, "map grew to {high} bytes");
    }

    #[test]
    fn a_folder_costs_its_slot_and_its_name_not_an_allocation() {
        let mut m = WatchMap::new();
        let root = Path::new("/var/spool/recorder");
        for wd in 1..=12_000 {
            m.insert(wd, &root.join(format!("rec-{wd:06}")), Some(root));
        }
        // 16-byte slots and 10-byte names, buffers at most doubled: under
        // 64 bytes a folder (a map of PathBufs took ~170).
        let per = m.heap_bytes() / 12_000;
        assert!(per < 64, "{per} bytes per folder");
    }
}
