//! Unit tests of the folder target: atomic puts, conflicts, the marker,
//! temp names, symlinks and FIFOs below the root.

use std::fs;
use std::io::{self, Read};

use sha2::{Digest, Sha256, Sha512};

use super::temp::{agent_tag, temp_owner};
use super::*;
use crate::sink::BytesSource;
use crate::sink::marker::MARKER_NAME;

fn target(root: &Path) -> FsTarget {
    FsTarget::new(&TargetSpec::fs("t", root), &env(root))
}

fn env(root: &Path) -> TargetEnv {
    TargetEnv {
        state_dir: root.with_extension("state"),
        agent_id: "a1".into(),
    }
}

struct Failing;
impl Source for Failing {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        struct R(u32);
        impl Read for R {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                self.0 += 1;
                if self.0 > 2 {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "bad tag"));
                }
                b[..4].copy_from_slice(b"leak");
                Ok(4)
            }
        }
        Ok(Box::new(R(0)))
    }
    fn len_hint(&self) -> Option<u64> {
        None
    }
}

#[test]
fn put_is_atomic_and_never_overwrites() {
    let d = tempdir();
    let t = target(&d);
    let req = PutRequest {
        folder: "a/b",
        name: "x.wav",
        want_sha512: true,
    };
    let r = t.put(&req, &BytesSource(b"hello")).unwrap();
    assert!(!r.already_present);
    assert_eq!(r.bytes, 5);
    assert_eq!(fs::read(d.join("a/b/x.wav")).unwrap(), b"hello");
    assert!(r.sha512.is_some());
    let again = t.put(&req, &BytesSource(b"hello")).unwrap();
    assert!(again.already_present);
    let err = t.put(&req, &BytesSource(b"other")).unwrap_err();
    assert!(matches!(err, TargetError::Conflict { .. }), "{err}");
    assert_eq!(fs::read(d.join("a/b/x.wav")).unwrap(), b"hello");
    assert_eq!(temps(&d), 0, "no temp left");
    let names: Vec<_> = fs::read_dir(d.join("a/b"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn failing_source_leaves_nothing() {
    let d = tempdir();
    let t = target(&d);
    let req = PutRequest {
        folder: "f",
        name: "y.wav",
        want_sha512: false,
    };
    assert!(matches!(t.put(&req, &Failing), Err(TargetError::Source(_))));
    // No empty record folder either: it is made only for a complete file.
    assert!(!d.join("f").exists(), "no empty record folder");
    assert_eq!(temps(&d), 0);
}

/// A source handing out odd-sized reads of `data`, size unknown (as a
/// decrypting reader is).
struct Chunky(Vec<u8>);
impl Source for Chunky {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        struct R<'a>(&'a [u8], usize);
        impl Read for R<'_> {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                self.1 = (self.1 * 7 + 3) % 70_001 + 1;
                let n = self.1.min(b.len()).min(self.0.len());
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        Ok(Box::new(R(&self.0, 0)))
    }
    fn len_hint(&self) -> Option<u64> {
        None
    }
}

#[test]
fn large_sources_copy_through_two_threads_exactly() {
    let d = tempdir();
    let t = target(&d);
    let mut x = 0x9e37_79b9_u32;
    let data: Vec<u8> = (0..(2 << 20) + 12_345)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    for (name, src) in [
        ("chunky.mp4", &Chunky(data.clone()) as &dyn Source),
        ("bytes.mp4", &BytesSource(&data)),
        ("small.wav", &BytesSource(&data[..100_000])),
    ] {
        let req = PutRequest {
            folder: "big",
            name,
            want_sha512: true,
        };
        let r = t.put(&req, src).unwrap();
        let want = if name == "small.wav" {
            &data[..100_000]
        } else {
            &data[..]
        };
        assert_eq!(r.bytes, want.len() as u64, "{name}");
        assert_eq!(r.sha256, <[u8; 32]>::from(Sha256::digest(want)), "{name}");
        assert_eq!(
            r.sha512,
            Some(<[u8; 64]>::from(Sha512::digest(want))),
            "{name}"
        );
        assert!(
            fs::read(d.join("big").join(name)).unwrap() == want,
            "{name}"
        );
    }
}

/// Files in the temp folder.
fn temps(root: &Path) -> usize {
    fs::read_dir(root.join(TMP_DIR)).unwrap().count()
}

fn req<'a>(folder: &'a str, name: &'a str) -> PutRequest<'a> {
    PutRequest {
        folder,
        name,
        want_sha512: false,
    }
}

#[test]
fn missing_root_is_unavailable_and_never_created() {
    let d = tempdir().join("new-archive");
    let t = target(&d);
    let err = t.put(&req("f", "y"), &BytesSource(b"1")).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!d.exists(), "the root was created");
}

#[test]
fn a_plain_folder_is_adopted_then_must_keep_its_marker() {
    let d = tempdir();
    let t = target(&d);
    t.put(&req("f", "y"), &BytesSource(b"1")).unwrap();
    let m = Marker::parse(&fs::read(d.join(MARKER_NAME)).unwrap()).unwrap();
    assert_eq!(m.target_id, "t");
    assert_eq!(m.created_by, "a1");
    assert_eq!(fs::read(t.marker_copy_path()).unwrap(), m.to_bytes());
    // The volume "unmounted": the marker is gone; nothing is written.
    fs::remove_file(d.join(MARKER_NAME)).unwrap();
    let err = t.put(&req("g", "y"), &BytesSource(b"1")).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        err.to_string().contains("no .exportd-target marker"),
        "{err}"
    );
    assert!(!d.join("g").exists());
    // A fresh process with the same state_dir says the same.
    let t2 = target(&d);
    assert!(t2.put(&req("g", "y"), &BytesSource(b"1")).is_err());
    assert!(!d.join("g").exists());
    // Another target's marker: unavailable too.
    let other = Marker::new("other", "a1").unwrap();
    fs::write(d.join(MARKER_NAME), other.to_bytes()).unwrap();
    let err = t2.put(&req("g", "y"), &BytesSource(b"1")).unwrap_err();
    assert!(err.to_string().contains("wrong volume"), "{err}");
    // Back: the right marker, the backlog drains.
    fs::write(d.join(MARKER_NAME), m.to_bytes()).unwrap();
    t2.put(&req("g", "y"), &BytesSource(b"1")).unwrap();
    assert_eq!(fs::read(d.join("g/y")).unwrap(), b"1");
}

/// An agent killed between writing its marker temp and renaming it leaves
/// the temp behind; the next adoption (same agent, same temp name) must not
/// fail on it, and the leftover goes (the crash storm once found it).
#[test]
fn a_marker_temp_left_by_a_killed_adoption_is_replaced() {
    let d = tempdir();
    let leftover = d.join(format!(
        "{MARKER_NAME}.{}.0123456789abcdef.tmp",
        agent_tag("a1")
    ));
    fs::write(&leftover, b"half a marker").unwrap();
    // Another agent's temp is not ours to remove.
    let others = d.join(format!(
        "{MARKER_NAME}.{}.0123456789abcdef.tmp",
        agent_tag("a2")
    ));
    fs::write(&others, b"not ours").unwrap();
    let t = target(&d);
    t.put(&req("f", "y"), &BytesSource(b"1")).unwrap();
    let m = Marker::parse(&fs::read(d.join(MARKER_NAME)).unwrap()).unwrap();
    assert_eq!(m.target_id, "t");
    assert!(!leftover.exists(), "the killed adoption's temp is gone");
    assert!(others.exists());
}

#[test]
fn init_keeps_this_targets_marker_and_refuses_anothers() {
    let d = tempdir();
    let t = target(&d);
    let (m, written) = t.init().unwrap();
    assert!(written);
    let (m2, written) = target(&d).init().unwrap();
    assert!(!written);
    assert_eq!(m, m2);
    fs::write(
        d.join(MARKER_NAME),
        Marker::new("x", "b").unwrap().to_bytes(),
    )
    .unwrap();
    assert!(t.init().is_err());
}

#[test]
fn symlinked_folders_and_fifos_are_never_followed() {
    let d = tempdir();
    let outside = tempdir();
    let t = target(&d);
    t.put(&req("a", "x"), &BytesSource(b"1")).unwrap();
    std::os::unix::fs::symlink(&outside, d.join("link")).unwrap();
    let err = t.put(&req("link/b", "x"), &BytesSource(b"1")).unwrap_err();
    assert!(err.to_string().contains("not a folder"), "{err}");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!t.exists("link", "x").unwrap());
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        d.join("a/fifo"),
        rustix::fs::Mode::from_raw_mode(0o644),
    )
    .unwrap();
    let err = t.put(&req("a", "fifo"), &BytesSource(b"1")).unwrap_err();
    assert!(matches!(err, TargetError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("FIFO"), "{err}");
    std::os::unix::fs::symlink(outside.join("z"), d.join("a/sl")).unwrap();
    let err = t.put(&req("a", "sl"), &BytesSource(b"1")).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    assert!(!outside.join("z").exists());
}

#[test]
fn temp_names_are_parsed_strictly() {
    assert_eq!(
        temp_owner("it.0123456789abcdef.7"),
        Some(("it.0123456789abcdef", "7"))
    );
    for n in [
        "it.0123456789abcdef.lock",
        "123-4",
        "it.0123.7",
        "it.0123456789abcdef.",
        "a b.0123456789abcdef.1",
        ".0123456789abcdef.1",
        "x",
    ] {
        assert_eq!(temp_owner(n), None, "{n}");
    }
}

#[test]
fn agent_ids_become_safe_temp_tags() {
    assert_eq!(agent_tag("rec-01_a"), "rec-01_a");
    assert_eq!(agent_tag("a b/c.d"), "a_b_c_d");
    assert_eq!(agent_tag(""), "agent");
    assert_eq!(agent_tag(&"x".repeat(100)).len(), 64);
    assert!(temp_owner(&format!("{}.0123456789abcdef.0", agent_tag("a b"))).is_some());
}

fn tempdir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "exportd-fs-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&p);
    fs::create_dir_all(&p).unwrap();
    p
}
