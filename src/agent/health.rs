//! Per-target health for the status room: ok, failing (transient errors,
//! retried with backoff) or blocked (refused; its copies wait for a
//! configuration change), since when, the last error; and when an outage is
//! worth a log line: once when it starts, a summary every
//! [`SUMMARY_EVERY`] while it lasts, once when it ends. Pure: it never logs
//! or writes; the status room does with what it returns.

use std::collections::BTreeMap;

use crate::agent::status::{LastError, TargetStatus};
use crate::time::Timestamp;

/// How often a lasting outage is summed up in the log.
pub const SUMMARY_EVERY_MS: i64 = 5 * 60 * 1000;

/// A target's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Its last copy worked (or it was not used yet).
    Ok,
    /// Transient errors: copies are retried with backoff.
    Failing,
    /// Refused: copies wait for a configuration change.
    Blocked,
}

impl State {
    /// `ok`, `failing`, `blocked`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Failing => "failing",
            State::Blocked => "blocked",
        }
    }

    /// The state an error row's code puts its target in, if the code is
    /// about the target (not the record: a conflict, a bad source file).
    pub fn of_code(code: &str) -> Option<State> {
        match code {
            "target_unavailable" => Some(State::Failing),
            "target_refused" => Some(State::Blocked),
            _ => None,
        }
    }
}

/// An error on a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure<'a> {
    /// The error row's code.
    pub code: &'a str,
    /// Its description.
    pub message: &'a str,
    /// The record id ('' when unknown).
    pub record: &'a str,
    /// The record's XML.
    pub path: &'a str,
}

/// What the status room is to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// An outage began (or a failing target is now refusing).
    Down {
        /// Target id.
        target: String,
        /// Its new state.
        state: State,
        /// The error that began it.
        error: LastError,
    },
    /// An outage lasts.
    Still {
        /// Target id.
        target: String,
        /// Its state.
        state: State,
        /// For how long, milliseconds.
        for_ms: i64,
        /// Records failed on it since it began.
        failures: u64,
        /// The last error.
        error: Option<LastError>,
    },
    /// An outage ended: a copy worked again.
    Up {
        /// Target id.
        target: String,
        /// How long it lasted, milliseconds.
        after_ms: i64,
        /// Records that had failed on it.
        failures: u64,
    },
}

#[derive(Debug, Clone)]
struct One {
    state: State,
    since: Timestamp,
    failures: u64,
    last_error: Option<LastError>,
    last_export: Option<Timestamp>,
    next_summary: Option<Timestamp>,
}

impl One {
    fn new(at: Timestamp) -> One {
        One {
            state: State::Ok,
            since: at,
            failures: 0,
            last_error: None,
            last_export: None,
            next_summary: None,
        }
    }
}

/// The health of every target of the model in force.
#[derive(Debug, Default)]
pub struct Health {
    targets: BTreeMap<String, One>,
}

impl Health {
    /// The targets of the model in force now: new ones start ok, ones no
    /// longer in the model are dropped.
    pub fn set_targets(&mut self, ids: &[String], at: Timestamp) {
        self.targets.retain(|k, _| ids.contains(k));
        for id in ids {
            self.targets
                .entry(id.clone())
                .or_insert_with(|| One::new(at));
        }
    }

    /// A copy to `target` was written: an outage ends.
    pub fn exported(&mut self, target: &str, at: Timestamp) -> Option<Notice> {
        let one = self.targets.get_mut(target)?;
        one.last_export = Some(at);
        if one.state == State::Ok {
            return None;
        }
        let notice = Notice::Up {
            target: target.to_string(),
            after_ms: at.0 - one.since.0,
            failures: one.failures,
        };
        one.state = State::Ok;
        one.since = at;
        one.failures = 0;
        one.next_summary = None;
        Some(notice)
    }

    /// An error row about a copy to `target`: remembered; a code about the
    /// target itself begins an outage (or turns failing into blocked).
    pub fn failed(&mut self, target: &str, f: &Failure<'_>, at: Timestamp) -> Option<Notice> {
        let one = self.targets.get_mut(target)?;
        let error = LastError {
            at: at.rfc3339().to_string(),
            path: f.path.to_string(),
            code: f.code.to_string(),
            message: f.message.to_string(),
            record: f.record.to_string(),
            target: target.to_string(),
        };
        one.last_error = Some(error.clone());
        let new = State::of_code(f.code)?;
        one.failures += 1;
        if one.state == new || (one.state == State::Blocked && new == State::Failing) {
            return None;
        }
        if one.state == State::Ok {
            one.since = at;
            one.next_summary = Some(Timestamp(at.0 + SUMMARY_EVERY_MS));
        }
        one.state = new;
        Some(Notice::Down {
            target: target.to_string(),
            state: new,
            error,
        })
    }

    /// Summaries of outages that are due at `now`.
    pub fn due(&mut self, now: Timestamp) -> Vec<Notice> {
        let mut out = Vec::new();
        for (id, one) in &mut self.targets {
            if one.next_summary.is_some_and(|t| t <= now) {
                one.next_summary = Some(Timestamp(now.0 + SUMMARY_EVERY_MS));
                out.push(Notice::Still {
                    target: id.clone(),
                    state: one.state,
                    for_ms: now.0 - one.since.0,
                    failures: one.failures,
                    error: one.last_error.clone(),
                });
            }
        }
        out
    }

    /// When the next summary is due.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.targets.values().filter_map(|o| o.next_summary).min()
    }

    /// The last copy written to any target.
    pub fn last_export(&self) -> Option<Timestamp> {
        self.targets.values().filter_map(|o| o.last_export).max()
    }

    /// Targets not ok: id, state, since, the last error.
    pub fn outages(&self) -> impl Iterator<Item = (&str, State, Timestamp, Option<&LastError>)> {
        self.targets
            .iter()
            .filter(|(_, o)| o.state != State::Ok)
            .map(|(k, o)| (k.as_str(), o.state, o.since, o.last_error.as_ref()))
    }

    /// Every target's status, with its pending records.
    pub fn view(&self, pending: &BTreeMap<String, u64>) -> BTreeMap<String, TargetStatus> {
        self.targets
            .iter()
            .map(|(k, o)| {
                let st = TargetStatus {
                    state: o.state.as_str().to_string(),
                    since: o.since.rfc3339().to_string(),
                    pending: pending.get(k).copied().unwrap_or(0),
                    failures: o.failures,
                    last_error: o.last_error.clone(),
                    last_export_at: o.last_export.map(|t| t.rfc3339().to_string()),
                };
                (k.clone(), st)
            })
            .collect()
    }
}

/// A duration for a log line: `45 s`, `12 min`, `3 h 5 min`.
pub fn human_ms(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s < 120 {
        format!("{s} s")
    } else if s < 3 * 3600 {
        format!("{} min", s / 60)
    } else {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down(code: &str) -> Failure<'_> {
        Failure {
            code,
            message: "t0 /mnt/a: Read-only file system",
            record: "r1",
            path: "/s/r1.xml",
        }
    }

    fn health() -> Health {
        let mut h = Health::default();
        h.set_targets(&["t0".into(), "t1".into()], Timestamp(1000));
        h
    }

    #[test]
    fn an_outage_is_noticed_once_summed_up_every_five_minutes_and_ended_once() {
        let mut h = health();
        let n = h.failed("t0", &down("target_unavailable"), Timestamp(2000));
        assert!(
            matches!(
                n,
                Some(Notice::Down {
                    state: State::Failing,
                    ..
                })
            ),
            "{n:?}"
        );
        // Every further record failing on it: no more notices.
        for i in 0..100 {
            assert_eq!(
                h.failed("t0", &down("target_unavailable"), Timestamp(2001 + i)),
                None
            );
        }
        assert_eq!(h.next_due(), Some(Timestamp(2000 + SUMMARY_EVERY_MS)));
        assert!(h.due(Timestamp(2000 + SUMMARY_EVERY_MS - 1)).is_empty());
        let s = h.due(Timestamp(2000 + SUMMARY_EVERY_MS));
        assert!(
            matches!(&s[..], [Notice::Still { failures: 101, for_ms, .. }] if *for_ms == SUMMARY_EVERY_MS),
            "{s:?}"
        );
        assert!(h.due(Timestamp(2000 + SUMMARY_EVERY_MS + 1)).is_empty());
        let v = h.view(&BTreeMap::from([("t0".to_string(), 7)]));
        assert_eq!(v["t0"].state, "failing");
        assert_eq!(v["t0"].pending, 7);
        assert_eq!(v["t0"].since, Timestamp(2000).rfc3339().to_string());
        assert_eq!(v["t1"].state, "ok");
        assert_eq!(h.outages().count(), 1);
        let up = h.exported("t0", Timestamp(9000));
        assert_eq!(
            up,
            Some(Notice::Up {
                target: "t0".into(),
                after_ms: 7000,
                failures: 101
            })
        );
        assert_eq!(h.exported("t0", Timestamp(9001)), None);
        assert_eq!(h.next_due(), None);
        assert_eq!(h.outages().count(), 0);
        // The last error stays as history.
        let v = h.view(&BTreeMap::new());
        assert_eq!(v["t0"].state, "ok");
        assert_eq!(
            v["t0"].last_error.as_ref().unwrap().code,
            "target_unavailable"
        );
        assert_eq!(h.last_export(), Some(Timestamp(9001)));
    }

    #[test]
    fn a_refusal_blocks_and_record_errors_leave_the_state_alone() {
        let mut h = health();
        assert_eq!(h.failed("t1", &down("conflict"), Timestamp(5)), None);
        assert_eq!(h.outages().count(), 0, "a conflict is the record's");
        assert!(
            h.failed("t1", &down("target_unavailable"), Timestamp(6))
                .is_some()
        );
        let n = h.failed("t1", &down("target_refused"), Timestamp(7));
        assert!(matches!(
            n,
            Some(Notice::Down {
                state: State::Blocked,
                ..
            })
        ));
        assert_eq!(
            h.failed("t1", &down("target_unavailable"), Timestamp(8)),
            None
        );
        let (_, state, since, _) = h.outages().next().unwrap();
        assert_eq!((state, since), (State::Blocked, Timestamp(6)));
        assert_eq!(
            h.failed("gone", &down("target_unavailable"), Timestamp(9)),
            None
        );
    }

    #[test]
    fn targets_follow_the_model() {
        let mut h = health();
        h.failed("t0", &down("target_unavailable"), Timestamp(2));
        h.set_targets(&["t0".into(), "t2".into()], Timestamp(3));
        let v = h.view(&BTreeMap::new());
        assert_eq!(v.keys().collect::<Vec<_>>(), ["t0", "t2"]);
        assert_eq!(v["t0"].state, "failing", "kept across a model swap");
        assert_eq!(human_ms(45_000), "45 s");
        assert_eq!(human_ms(600_000), "10 min");
        assert_eq!(human_ms(3 * 3_600_000 + 300_000), "3 h 5 min");
    }
}
