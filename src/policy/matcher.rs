//! Matching a record to its user and policies (config.md). Pure: never does
//! I/O.
//!
//! `recorded_extension` (normalised) -> user -> the user's policies -> each
//! policy's filters (conversation type, source platform, 2N source). Direct
//! export never takes imported records nor the `bt_its` platform.

use crate::policy::model::Source2n;
use crate::policy::snapshot::{Snapshot, UserView};
use crate::record::Record;

/// Why a record as a whole is not exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// `imported=true`.
    Imported,
    /// The `bt_its` platform is not taken by direct export.
    BtIts,
    /// No configured user has the recorded extension.
    NoUser,
    /// The user has no policies.
    NoPolicies,
}

impl SkipReason {
    /// Short code for the audit row's `error_code`.
    pub fn code(&self) -> &'static str {
        match self {
            SkipReason::Imported => "imported",
            SkipReason::BtIts => "bt_its",
            SkipReason::NoUser => "no_user",
            SkipReason::NoPolicies => "no_policy",
        }
    }

    /// Text for a person.
    pub fn describe(&self, r: &Record) -> String {
        match self {
            SkipReason::Imported => "imported records are not taken by direct export".into(),
            SkipReason::BtIts => "the bt_its platform is not taken by direct export".into(),
            SkipReason::NoUser => format!(
                "no configured user has the recorded extension {:?}",
                r.recorded_extension
            ),
            SkipReason::NoPolicies => "the user has no export policies assigned".into(),
        }
    }
}

/// What one assigned policy says about a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Export to every target of the policy.
    Take,
    /// The policy is disabled.
    Disabled,
    /// Conversation type not in the filter.
    Modality,
    /// Source platform not in the filter.
    Platform,
    /// 2N source does not match.
    Source2n,
}

impl Verdict {
    /// Short code for a skip row.
    pub fn code(self) -> &'static str {
        match self {
            Verdict::Take => "",
            Verdict::Disabled => "policy_disabled",
            Verdict::Modality => "filter_conversation_type",
            Verdict::Platform => "filter_source_platform",
            Verdict::Source2n => "filter_source_2n",
        }
    }
}

/// The matching result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'s> {
    /// Not exported at all.
    Skip(SkipReason, Option<UserView<'s>>),
    /// The user, and a verdict per assigned policy (index into the snapshot's policies).
    Policies(UserView<'s>, Vec<(usize, Verdict)>),
}

/// Matches a record against a snapshot.
pub fn decide<'s>(r: &Record, snap: &'s Snapshot) -> Decision<'s> {
    if r.imported {
        return Decision::Skip(SkipReason::Imported, None);
    }
    if r.source_platform == "bt_its" {
        return Decision::Skip(SkipReason::BtIts, None);
    }
    let Some(user) = snap.lookup(&r.recorded_extension) else {
        return Decision::Skip(SkipReason::NoUser, None);
    };
    if user.policies.is_empty() {
        return Decision::Skip(SkipReason::NoPolicies, Some(user));
    }
    let mut v = Vec::with_capacity(user.policies.len());
    for &pi in &user.policies {
        let Some(cp) = snap.policies().get(pi as usize) else {
            continue;
        };
        v.push((pi as usize, verdict(r, &cp.policy)));
    }
    Decision::Policies(user, v)
}

/// One policy's verdict on a record.
pub fn verdict(r: &Record, p: &crate::policy::model::Policy) -> Verdict {
    if !p.enabled {
        return Verdict::Disabled;
    }
    let f = &p.filters;
    if !f.conversation_types.is_empty()
        && !f
            .conversation_types
            .iter()
            .any(|m| m == r.modality.as_str())
    {
        return Verdict::Modality;
    }
    if !f.source_platforms.is_empty()
        && !f
            .source_platforms
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&r.source_platform))
    {
        return Verdict::Platform;
    }
    match (f.source_2n, r.secondary) {
        (Source2n::Primary, true) | (Source2n::Secondary, false) => Verdict::Source2n,
        _ => Verdict::Take,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::*;
    use crate::record::tests_support::SAMPLE;

    fn snap(filters: Filters, enabled: bool) -> Snapshot {
        let m = Model {
            targets: vec![TargetSpec::fs("t", "/a")],
            policies: vec![Policy {
                id: "p".into(),
                name: "P".into(),
                enabled,
                targets: vec!["t".into()],
                filters,
                settings: Settings::default(),
            }],
            users: vec![User {
                id: "u".into(),
                name: "U".into(),
                email: String::new(),
                extensions: vec!["tel:+12125550100".into()],
                policies: vec!["p".into()],
            }],
            ..Model::default()
        };
        Snapshot::from_model(&m).unwrap()
    }

    fn rec() -> Record {
        crate::record::parse(SAMPLE.as_bytes()).unwrap()
    }

    #[test]
    fn filters() {
        let any = snap(Filters::default(), true);
        assert!(
            matches!(decide(&rec(), &any), Decision::Policies(_, v) if v == vec![(0, Verdict::Take)])
        );
        let mut r = rec();
        r.imported = true;
        assert_eq!(decide(&r, &any), Decision::Skip(SkipReason::Imported, None));
        let mut r = rec();
        r.source_platform = "bt_its".into();
        assert_eq!(decide(&r, &any), Decision::Skip(SkipReason::BtIts, None));
        let mut r = rec();
        r.recorded_extension = "+1 212 555 0199".into();
        assert_eq!(decide(&r, &any), Decision::Skip(SkipReason::NoUser, None));

        let f = Filters {
            conversation_types: vec!["video".into()],
            ..Filters::default()
        };
        assert!(
            matches!(decide(&rec(), &snap(f, true)), Decision::Policies(_, v) if v[0].1 == Verdict::Modality)
        );
        let f = Filters {
            source_platforms: vec!["teams".into()],
            ..Filters::default()
        };
        assert!(
            matches!(decide(&rec(), &snap(f, true)), Decision::Policies(_, v) if v[0].1 == Verdict::Platform)
        );
        let f = Filters {
            source_2n: Source2n::Secondary,
            ..Filters::default()
        };
        assert!(
            matches!(decide(&rec(), &snap(f.clone(), true)), Decision::Policies(_, v) if v[0].1 == Verdict::Source2n)
        );
        let mut r = rec();
        r.secondary = true;
        assert!(
            matches!(decide(&r, &snap(f, true)), Decision::Policies(_, v) if v[0].1 == Verdict::Take)
        );
        assert!(
            matches!(decide(&rec(), &snap(Filters::default(), false)), Decision::Policies(_, v) if v[0].1 == Verdict::Disabled)
        );
    }
}
