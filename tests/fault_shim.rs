//! The fault-injection shim itself (tests/support/faultshim.c) does what the
//! fault tests rely on, checked with ordinary programs: a failed fdatasync,
//! a short write then ENOSPC, a read error, only on the chosen path.

mod common;

use common::fault;
use std::process::Command;

#[test]
fn shim_fails_sync_write_and_read_on_the_chosen_path_only() {
    let Some(shim) = fault::shim("shim_fails_sync_write_and_read_on_the_chosen_path_only") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let hit = d.path().join("victim.log");
    let other = d.path().join("bystander.log");
    std::fs::write(&hit, b"x").unwrap();
    std::fs::write(&other, b"x").unwrap();

    // fdatasync: `sync --data FILE` fails on the victim, not the bystander.
    let sync = |p: &std::path::Path| {
        let mut c = Command::new("sync");
        c.arg("--data").arg(p);
        fault::with_shim(
            &mut c,
            &shim,
            &[("FAULT_PATH", "victim"), ("FAULT_FSYNC", "1+")],
        )
        .status()
        .unwrap()
        .success()
    };
    assert!(!sync(&hit), "fdatasync of the victim must fail");
    assert!(sync(&other), "the bystander is not affected");

    // Writes: at most 10 bytes reach the victim, then ENOSPC.
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("printf 0123456789abcdef > {}", hit.display()));
    let ok = fault::with_shim(
        &mut c,
        &shim,
        &[("FAULT_PATH", "victim"), ("FAULT_WRITE_LIMIT", "10")],
    )
    .status()
    .unwrap()
    .success();
    assert!(!ok, "the write past the limit must fail");
    assert_eq!(std::fs::read(&hit).unwrap(), b"0123456789");

    // Reads: EIO on the victim.
    let mut c = Command::new("cat");
    c.arg(&hit);
    let out = fault::with_shim(
        &mut c,
        &shim,
        &[("FAULT_PATH", "victim"), ("FAULT_READ", "EIO")],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Input/output error"));
}

#[test]
fn small_tmpfs_runs_out_of_space() {
    let d = tempfile::tempdir().unwrap();
    let Some(fs) =
        fault::SmallFs::mount("small_tmpfs_runs_out_of_space", &d.path().join("m"), "64k")
    else {
        return;
    };
    let r = std::fs::write(fs.path.join("big"), vec![1u8; 256 * 1024]);
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
}
