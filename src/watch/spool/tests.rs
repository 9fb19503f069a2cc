//! Unit tests of the spool reader: names, containment of symlinks, FIFOs
//! and sockets, error classes, incomplete scans.

use std::ffi::OsStr;

use rustix::fd::AsFd;
use rustix::fs::FileType;

use super::open::{OUTSIDE, Walk, link_steps, open_leaf, open_walk};
use super::scan::{Entry, classify_entry};
use super::*;
use std::fs;
use std::io::Read;

#[test]
fn names() {
    assert!(is_metadata_name("a.xml"));
    assert!(is_metadata_name("a.xml.age"));
    assert!(!is_metadata_name(".a.xml"));
    assert!(!is_metadata_name("a.xml.tmp"));
    assert!(!is_metadata_name("a.wav"));
}

fn tree() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().to_path_buf();
    fs::create_dir_all(d.join("root/sub")).unwrap();
    fs::write(d.join("outside"), b"secret").unwrap();
    fs::write(d.join("root/sub/in.wav"), b"ok").unwrap();
    (t, d)
}

fn read(f: File) -> Vec<u8> {
    let mut v = Vec::new();
    SpoolFile::new(f, PathBuf::new())
        .read_to_end(&mut v)
        .unwrap();
    v
}

#[test]
fn symlinks_out_of_the_root_are_refused() {
    let (_t, d) = tree();
    std::os::unix::fs::symlink(d.join("outside"), d.join("root/sub/evil.wav")).unwrap();
    std::os::unix::fs::symlink(d.join("root/sub/in.wav"), d.join("root/sub/alias.wav")).unwrap();
    let root = fs::canonicalize(d.join("root")).unwrap();
    assert!(matches!(
        open_in_root(&root, &root.join("sub/evil.wav")),
        Err(OpenError::Refused { .. })
    ));
    assert_eq!(
        read(open_in_root(&root, &root.join("sub/alias.wav")).unwrap()),
        b"ok"
    );
    assert!(matches!(
        open_in_root(&root, &root.join("sub/none.wav")),
        Err(OpenError::Missing(_))
    ));
    // Through a symlinked folder leading out, even to a file that does not exist.
    std::os::unix::fs::symlink(d.join("elsewhere"), d.join("root/sub/out")).unwrap();
    fs::create_dir_all(d.join("elsewhere")).unwrap();
    assert!(matches!(
        open_in_root(&root, &root.join("sub/out/nothing.wav")),
        Err(OpenError::Refused { .. })
    ));
    std::os::unix::fs::symlink(d.join("gone"), d.join("root/sub/dangling")).unwrap();
    assert!(matches!(
        open_in_root(&root, &root.join("sub/dangling/x.wav")),
        Err(OpenError::Refused { .. })
    ));
    assert!(matches!(
        open_in_root(&root, &root.join("sub")),
        Err(OpenError::Refused { .. })
    ));
    let mut found = Vec::new();
    fs::write(d.join("root/sub/r.xml"), b"<recording/>").unwrap();
    let rep = scan(
        &root,
        &mut |_| {},
        &mut |x| found.push(x.rel),
        &mut |_, _| {},
    );
    assert_eq!(found, vec!["sub/r.xml".to_string()]);
    assert!(rep.complete);
    assert_eq!((rep.xmls, rep.dirs), (1, 2));
}

/// Relative symlinks: inside the root they are followed (by this code,
/// from handles), out of it (`..` past the root) they are refused.
#[test]
fn relative_symlinks_stay_inside_the_root() {
    let (_t, d) = tree();
    let root = d.join("root");
    fs::create_dir_all(root.join("other")).unwrap();
    std::os::unix::fs::symlink("../sub/in.wav", root.join("other/rel.wav")).unwrap();
    std::os::unix::fs::symlink("../sub", root.join("other/dir")).unwrap();
    std::os::unix::fs::symlink("../../outside", root.join("other/up.wav")).unwrap();
    std::os::unix::fs::symlink("../..", root.join("other/top")).unwrap();
    std::os::unix::fs::symlink("loop", root.join("other/loop")).unwrap();
    assert_eq!(
        read(open_in_root(&root, &root.join("other/rel.wav")).unwrap()),
        b"ok"
    );
    assert_eq!(
        read(open_in_root(&root, &root.join("other/dir/in.wav")).unwrap()),
        b"ok"
    );
    for bad in ["other/up.wav", "other/top/outside", "other/loop"] {
        assert!(
            matches!(
                open_in_root(&root, &root.join(bad)),
                Err(OpenError::Refused { .. })
            ),
            "{bad}"
        );
    }
    // The walk alone (a kernel without openat2) decides the same.
    let rfd = open_root(&root, OFlags::PATH).unwrap();
    let walk = |rel: &str| {
        let p = Path::new(rel);
        let comps = plain_components(p).unwrap();
        open_walk(&root, &rfd, &comps, &root.join(p))
    };
    assert_eq!(read(walk("sub/in.wav").unwrap()), b"ok");
    assert_eq!(read(walk("other/dir/in.wav").unwrap()), b"ok");
    assert!(matches!(walk("sub/none.wav"), Err(OpenError::Missing(_))));
    assert!(matches!(
        walk("other/up.wav"),
        Err(OpenError::Refused { .. })
    ));
    assert!(matches!(
        walk("other/top/outside"),
        Err(OpenError::Refused { .. })
    ));
    assert!(matches!(walk("sub"), Err(OpenError::Refused { .. })));
    // Paths that are not plain names below the root.
    assert!(matches!(
        open_in_root(&root, &root.join("sub/../sub/in.wav")),
        Err(OpenError::Refused { .. })
    ));
    assert!(matches!(
        open_in_root(&root, &d.join("outside")),
        Err(OpenError::Refused { .. })
    ));
}

/// A FIFO (with no writer: a blocking open would hang) and a socket are
/// refused at once, through both ways of opening.
#[test]
fn fifos_and_sockets_are_refused_without_blocking() {
    let (_t, d) = tree();
    let root = d.join("root");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("sub/pipe.wav"),
        FileType::Fifo,
        Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sub/sock.wav")).unwrap();
    std::os::unix::fs::symlink("pipe.wav", root.join("sub/to-pipe.wav")).unwrap();
    let t0 = std::time::Instant::now();
    for name in ["sub/pipe.wav", "sub/sock.wav", "sub/to-pipe.wav"] {
        let r = open_in_root(&root, &root.join(name));
        assert!(matches!(r, Err(OpenError::Refused { .. })), "{name}: {r:?}");
    }
    assert!(t0.elapsed() < std::time::Duration::from_secs(2));
    // The leaf opener itself, past its look: O_NONBLOCK and the check on
    // the handle refuse a FIFO too.
    let dir = open_root(&root.join("sub"), OFlags::PATH).unwrap();
    let r = open_leaf(
        dir.as_fd(),
        OsStr::new("pipe.wav"),
        Path::new("pipe.wav"),
        true,
    );
    assert!(matches!(r, Err(Walk::Err(OpenError::Refused { .. }))));
}

#[test]
fn transient_errors_are_told_from_refusals() {
    let p = PathBuf::from("/spool/a.wav");
    let io = |errno: i32| OpenError::Io {
        path: p.clone(),
        source: io::Error::from_raw_os_error(errno),
    };
    for errno in [libc::EACCES, libc::EIO, libc::ESTALE, libc::ENOMEM] {
        assert!(is_transient(&open_error_to_io(io(errno))));
        let r = ReadError {
            path: p.clone(),
            source: io::Error::from_raw_os_error(errno),
        };
        assert!(is_transient(&io::Error::other(r)));
    }
    let refused = open_error_to_io(OpenError::Refused {
        path: p.clone(),
        why: OUTSIDE,
    });
    assert!(!is_transient(&refused) && is_refusal(&refused));
    assert!(!is_refusal(&open_error_to_io(io(libc::EIO))));
    assert!(!is_transient(&io::Error::new(
        io::ErrorKind::PermissionDenied,
        "no identity opens it"
    )));
    assert!(!is_transient(&io::Error::new(
        io::ErrorKind::InvalidData,
        "tag mismatch"
    )));
}

/// A folder that cannot be opened when its turn comes (here: swapped
/// for a symlink after its parent was listed) makes the scan incomplete,
/// and the symlink is not followed.
#[test]
fn a_folder_that_cannot_be_listed_makes_the_scan_incomplete() {
    let (_t, d) = tree();
    let root = d.join("root");
    fs::create_dir_all(root.join("a")).unwrap();
    fs::create_dir_all(d.join("elsewhere")).unwrap();
    fs::write(d.join("elsewhere/out.xml"), b"<recording/>").unwrap();
    fs::write(root.join("sub/in.xml"), b"<recording/>").unwrap();
    let mut found = Vec::new();
    let mut failed = Vec::new();
    let rep = scan(
        &root,
        &mut |dir| {
            if dir == root.join("a") {
                fs::remove_dir(dir).unwrap();
                std::os::unix::fs::symlink(d.join("elsewhere"), dir).unwrap();
            }
        },
        &mut |x| found.push(x.rel),
        &mut |p, _| failed.push(p.to_path_buf()),
    );
    assert!(!rep.complete);
    assert_eq!(failed, vec![root.join("a")]);
    assert_eq!(found, vec!["sub/in.xml".to_string()]);
}

/// A root that cannot be opened is an incomplete scan, not an empty one.
#[test]
fn a_missing_root_is_an_incomplete_scan() {
    let (_t, d) = tree();
    let mut errors = 0;
    let rep = scan(&d.join("nothing"), &mut |_| {}, &mut |_| {}, &mut |_, _| {
        errors += 1
    });
    assert!(!rep.complete);
    assert_eq!(errors, 1);
    // A missing root is not a missing file: opening below it is an I/O
    // error (retried), never "missing" (which would forget the record).
    assert!(matches!(
        open_in_root(&d.join("nothing"), &d.join("nothing/a.xml")),
        Err(OpenError::Io { .. })
    ));
}

#[test]
fn entries_are_classified_by_type_name_and_depth() {
    use Entry::*;
    assert_eq!(classify_entry(FileType::Directory, "2026", 0), Descend);
    assert_eq!(classify_entry(FileType::Directory, ".hidden", 0), Skip);
    assert_eq!(
        classify_entry(FileType::Directory, "deep", MAX_DEPTH - 2),
        Descend
    );
    assert_eq!(
        classify_entry(FileType::Directory, "deep", MAX_DEPTH - 1),
        Skip
    );
    assert_eq!(classify_entry(FileType::RegularFile, "r.xml", 0), Metadata);
    assert_eq!(
        classify_entry(FileType::RegularFile, "r.xml.age", 0),
        Metadata
    );
    assert_eq!(classify_entry(FileType::RegularFile, "r.wav", 0), Content);
    assert_eq!(classify_entry(FileType::RegularFile, "r.wav.tmp", 0), Skip);
    assert_eq!(classify_entry(FileType::RegularFile, ".r.xml", 0), Skip);
    assert_eq!(classify_entry(FileType::Symlink, "r.xml", 0), Skip);
    assert_eq!(classify_entry(FileType::Fifo, "r.wav", 0), Skip);
}

#[test]
fn symlink_targets_become_walk_steps() {
    let root = Path::new("/spool/root");
    let mut pre = Some(vec![root.to_path_buf(), PathBuf::from("/mnt/root")]);
    let steps = |t: &str, pre: &mut Option<Vec<PathBuf>>| link_steps(root, Path::new(t), pre);
    assert_eq!(
        steps("../sub/./in.wav", &mut pre),
        Ok((
            false,
            vec![b"..".to_vec(), b"sub".to_vec(), b"in.wav".to_vec()]
        ))
    );
    assert_eq!(
        steps("/mnt/root/a/b", &mut pre),
        Ok((true, vec![b"a".to_vec(), b"b".to_vec()]))
    );
    assert_eq!(steps("/spool/root", &mut pre), Ok((true, vec![])));
    assert_eq!(steps("/spool/other/x", &mut pre), Err(OUTSIDE));
}
