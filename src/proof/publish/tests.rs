use super::*;
use crate::ledger::audit::{Action, AuditLog, Row};
use crate::policy::model::TargetSpec;
use crate::sink::fs::{FsTarget, TargetEnv};

fn row(id: &str) -> Row {
    Row {
        ccdr_id: id.into(),
        action: Action::Export.as_str(),
        ..Row::default()
    }
}

fn day(d: u32, ms: i64) -> Timestamp {
    let c = crate::time::Civil {
        year: 2026,
        month: 12,
        day: d,
        hour: 10,
        minute: 0,
        second: 0,
        milli: 0,
    };
    Timestamp(Timestamp::from_civil(c).unwrap().0 + ms)
}

fn target(root: &Path, state: &Path) -> Arc<dyn Target> {
    fs::create_dir_all(root).unwrap();
    let t = FsTarget::new(
        &TargetSpec::fs("t0", root),
        &TargetEnv {
            state_dir: state.to_path_buf(),
            agent_id: "a1".into(),
        },
    );
    t.init().unwrap();
    Arc::new(t)
}

#[test]
fn chain_days_and_publication() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    fs::create_dir_all(&state).unwrap();
    let root = d.path().join("t0");
    let t = target(&root, &state);
    let mut log = AuditLog::open(&state).unwrap();
    log.append_at(day(6, 0), &row("r1")).unwrap();
    log.append_at(day(6, 1), &row("r2")).unwrap();

    let mut c = Checkpointer::open(&state, "a1", AgentKey::from_seed([3; 32])).unwrap();
    assert_eq!(c.checkpoint(day(6, 10)).unwrap(), 1);
    // Nothing new: nothing made.
    assert_eq!(c.checkpoint(day(6, 20)).unwrap(), 0);
    assert!(c.publish(std::slice::from_ref(&t), false));
    let cp = root.join("exportd-audit/a1/checkpoints");
    assert_eq!(fs::read_dir(&cp).unwrap().count(), 1);
    // Day 6 still open: not copied.
    assert!(!root.join("exportd-audit/a1/audit-20261206.csv").exists());

    log.append_at(day(6, 30), &row("r3")).unwrap();
    log.append_at(day(7, 0), &row("r4")).unwrap();
    // Restart: the chain continues from the newest local checkpoint.
    drop(c);
    let mut c = Checkpointer::open(&state, "a1", AgentKey::from_seed([3; 32])).unwrap();
    // Final checkpoint of day 6, then day 7; clock behind: still increasing.
    assert_eq!(c.checkpoint(day(6, 5)).unwrap(), 2);
    assert!(c.publish(std::slice::from_ref(&t), false));
    let names = local_checkpoints(&cp).unwrap();
    assert_eq!(names.len(), 3);
    assert_eq!(
        fs::read(root.join("exportd-audit/a1/audit-20261206.csv")).unwrap(),
        fs::read(state.join("audit/audit-20261206.csv")).unwrap()
    );
    assert!(!root.join("exportd-audit/a1/audit-20261207.csv").exists());
    // The chain: each names the hash of the one before.
    let key = AgentKey::from_seed([3; 32]).public();
    let mut prev = NO_PREVIOUS.to_string();
    let mut rows = Vec::new();
    for n in &names {
        let b = fs::read(cp.join(n)).unwrap();
        assert_eq!(b, fs::read(c.dir().join(n)).unwrap());
        let p = checkpoint::open(&b, n, "a1", &key).unwrap();
        assert_eq!(p.prev_checkpoint, prev);
        prev = checkpoint::file_hash(&b);
        rows.push((p.file, p.rows));
    }
    assert_eq!(
        rows,
        [
            ("audit-20261206.csv".to_string(), 2),
            ("audit-20261206.csv".to_string(), 3),
            ("audit-20261207.csv".to_string(), 1)
        ]
    );
    let marks = read_marks(&state).unwrap();
    assert_eq!(marks["t0"].checkpoint, names[2]);
    assert_eq!(marks["t0"].day, "audit-20261206.csv");
}

#[test]
fn unavailable_target_is_retried() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    fs::create_dir_all(&state).unwrap();
    let root = d.path().join("t0");
    let t = target(&root, &state);
    let mut log = AuditLog::open(&state).unwrap();
    log.append_at(day(6, 0), &row("r1")).unwrap();
    let mut c = Checkpointer::open(&state, "a1", AgentKey::from_seed([3; 32])).unwrap();
    c.checkpoint(day(6, 10)).unwrap();
    fs::rename(&root, d.path().join("away")).unwrap();
    assert!(!c.publish(std::slice::from_ref(&t), false));
    fs::rename(d.path().join("away"), &root).unwrap();
    assert!(c.publish(std::slice::from_ref(&t), false));
    assert_eq!(
        fs::read_dir(root.join("exportd-audit/a1/checkpoints"))
            .unwrap()
            .count(),
        1
    );
}
