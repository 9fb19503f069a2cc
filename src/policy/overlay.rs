//! A users delta kept beside the snapshot file instead of merged into it:
//! the users a chain of deltas upserts (with their normalised extensions and
//! policy indexes) and the ids it removes, held in memory and consulted
//! before the mapped base file. Pure: checks and lookups only, never I/O
//! beyond reading the base snapshot it is checked against.
//!
//! Matching through base + overlay is the same as matching through the
//! compiled resulting model: an extension found in the overlay wins; an
//! extension found in the base whose user the overlay removes or replaces
//! is not a match. The overlay is bounded by the deltas' sizes (see
//! [`MAX_OVERLAY_USERS`]).

use std::collections::{HashMap, HashSet};

use crate::policy::model::User;
use crate::policy::snapshot::{
    PolicyList, Snapshot, UserView, checked_extension, checked_policies, mail_key,
};

/// The most ids an overlay may touch (about 3 MiB held at most): a delta
/// that would take it past this is merged or compiled into the snapshot
/// file instead, which folds the overlay.
pub const MAX_OVERLAY_USERS: usize = 10_000;

/// A user the overlay puts in force.
#[derive(Debug, Clone)]
struct OverUser {
    id: String,
    name: String,
    email: String,
    policies: PolicyList,
    /// Normalised extensions.
    extensions: Vec<String>,
}

/// The overlay of a chain of deltas on one base snapshot.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    /// Slots of upserted users (`None`: replaced or removed by a later delta).
    users: Vec<Option<OverUser>>,
    /// Every id the overlay touches: `Some(slot)` upserted, `None` removed.
    by_id: HashMap<String, Option<u32>>,
    /// Normalised extension to slot.
    exts: HashMap<String, u32>,
    /// Normalised mail address to the slots of the users with it.
    mails: HashMap<String, Vec<u32>>,
    /// Base users whose id the overlay touches (hidden from matching).
    hidden: u64,
}

/// What a delta does to the users in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effect {
    /// Users that were not in force.
    pub added: u64,
    /// Users in force upserted again.
    pub changed: u64,
    /// Users in force that are gone.
    pub removed: u64,
}

impl Overlay {
    /// Ids the overlay touches (upserted or removed).
    pub fn touched(&self) -> usize {
        self.by_id.len()
    }

    /// Users the overlay puts in force.
    pub fn live_users(&self) -> u64 {
        self.users.iter().filter(|u| u.is_some()).count() as u64
    }

    /// Extensions the overlay puts in force.
    pub fn extension_count(&self) -> u64 {
        self.exts.len() as u64
    }

    /// Base users hidden by the overlay.
    pub fn hidden(&self) -> u64 {
        self.hidden
    }

    /// Whether the overlay removes or replaces the user with this id.
    pub fn hides(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// The user holding the normalised extension `n`, if the overlay has it.
    pub fn lookup(&self, n: &str) -> Option<UserView<'_>> {
        self.view(*self.exts.get(n)?)
    }

    /// The user the overlay puts in force with this id: `None` when it
    /// removes it or does not touch it (see [`Overlay::hides`]).
    pub fn user_by_id(&self, id: &str) -> Option<UserView<'_>> {
        let slot = (*self.by_id.get(id)?)?;
        self.view(slot)
    }

    /// Calls `f` with each user of the overlay whose normalised mail
    /// address is `n`, until it returns `true`; returns whether it did.
    pub fn users_by_mail(&self, n: &str, f: &mut dyn FnMut(UserView<'_>) -> bool) -> bool {
        let Some(slots) = self.mails.get(n) else {
            return false;
        };
        slots.iter().filter_map(|s| self.view(*s)).any(f)
    }

    fn view(&self, slot: u32) -> Option<UserView<'_>> {
        let u = self.users.get(slot as usize)?.as_ref()?;
        Some(UserView {
            id: &u.id,
            name: &u.name,
            email: &u.email,
            policies: u.policies.clone(),
        })
    }

    fn drop_slot(&mut self, slot: u32) {
        if let Some(Some(u)) = self.users.get_mut(slot as usize).map(Option::take) {
            for x in &u.extensions {
                self.exts.remove(x);
            }
            if let Some(m) = mail_key(&u.email) {
                if let Some(v) = self.mails.get_mut(&m) {
                    v.retain(|s| *s != slot);
                    if v.is_empty() {
                        self.mails.remove(&m);
                    }
                }
            }
        }
    }

    /// Applies a delta (users `upsert`ed, ids `remove`d) on top of this
    /// overlay over `base` (the snapshot file alone, no overlay), checked
    /// against the resulting model: unknown policies, extensions assigned
    /// twice after normalisation (within the delta, or against a user of
    /// the overlay or of the base still in force), ids removed that are not
    /// in force. Returns the problems found otherwise.
    pub fn apply(
        &self,
        base: &Snapshot,
        upsert: &[User],
        remove: &[String],
    ) -> Result<(Overlay, Effect), Vec<String>> {
        let mut next = self.clone();
        let mut problems = Vec::new();
        let touched: HashSet<&str> = upsert
            .iter()
            .map(|u| u.id.as_str())
            .chain(remove.iter().map(String::as_str))
            .collect();
        let new_ids = touched.iter().filter(|id| !self.hides(id)).count();
        if self.by_id.len() + new_ids > MAX_OVERLAY_USERS {
            problems.push(format!(
                "the delta overlay would touch more than {MAX_OVERLAY_USERS} users; fold it into the snapshot first"
            ));
            return Err(problems);
        }
        // Which touched ids are in the base (one pass over the base's ids).
        let in_base = base.ids_among(&touched);
        let in_force = |id: &str| match self.by_id.get(id) {
            Some(slot) => slot.is_some(),
            None => in_base.contains(id),
        };
        let mut effect = Effect::default();
        for id in remove {
            if in_force(id) {
                effect.removed += 1;
            } else {
                problems.push(format!(
                    "remove names user id {id:?}, which is not in force"
                ));
            }
        }
        for u in upsert {
            if in_force(&u.id) {
                effect.changed += 1;
            } else {
                effect.added += 1;
            }
        }
        for id in touched.iter() {
            if let Some(Some(slot)) = next.by_id.get(*id).copied() {
                next.drop_slot(slot);
            }
            if !self.hides(id) && in_base.contains(*id) {
                next.hidden += 1;
            }
        }
        for id in remove {
            next.by_id.insert(id.clone(), None);
        }
        let policies: HashMap<&str, u16> = base
            .policies()
            .iter()
            .enumerate()
            .map(|(i, p)| (p.policy.id.as_str(), i as u16))
            .collect();
        for u in upsert {
            let slot = next.users.len() as u32;
            let ou = over_user(u, &policies, &mut problems);
            next.by_id.insert(u.id.clone(), Some(slot));
            if let Some(m) = mail_key(&u.email) {
                next.mails.entry(m).or_default().push(slot);
            }
            next.users.push(Some(ou));
        }
        for u in upsert {
            let slot = next.by_id[&u.id].unwrap_or_default();
            let exts = next.users[slot as usize]
                .as_ref()
                .map(|o| o.extensions.clone())
                .unwrap_or_default();
            for n in exts {
                next.claim(base, slot, &u.id, n, &mut problems);
            }
        }
        if problems.is_empty() {
            Ok((next, effect))
        } else {
            Err(problems)
        }
    }

    /// Gives the normalised extension `n` to `slot`, unless the overlay or
    /// the base (a user still in force) already has it.
    fn claim(
        &mut self,
        base: &Snapshot,
        slot: u32,
        id: &str,
        n: String,
        problems: &mut Vec<String>,
    ) {
        if let Some(&other) = self.exts.get(&n) {
            let holder = self.users[other as usize]
                .as_ref()
                .map_or("", |o| o.id.as_str());
            problems.push(if other == slot {
                format!("user {id:?} lists extension {n:?} twice")
            } else {
                format!("extension {n:?} (normalised) is assigned to both {holder:?} and {id:?}")
            });
            return;
        }
        if let Some(b) = base.lookup_normalised(&n) {
            if !self.hides(b.id) {
                problems.push(format!(
                    "extension {n:?} (normalised) is assigned to both {:?} and {id:?}",
                    b.id
                ));
                return;
            }
        }
        self.exts.insert(n, slot);
    }
}

fn over_user(u: &User, policies: &HashMap<&str, u16>, problems: &mut Vec<String>) -> OverUser {
    let pl = checked_policies(u, |p| policies.get(p).copied(), &mut |m| problems.push(m));
    let mut extensions = Vec::with_capacity(u.extensions.len());
    for x in &u.extensions {
        if let Some(n) = checked_extension(u, x, &mut |m| problems.push(m)) {
            extensions.push(n);
        }
    }
    OverUser {
        id: u.id.clone(),
        name: u.name.clone(),
        email: u.email.clone(),
        policies: pl,
        extensions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{Model, TargetSpec, tests_support::policy_p};

    fn user(id: &str, exts: &[&str]) -> User {
        User {
            id: id.into(),
            name: format!("Name of {id}"),
            email: format!("{id}@corp.example"),
            extensions: exts.iter().map(|e| e.to_string()).collect(),
            policies: vec!["p".into()],
        }
    }

    fn model(users: Vec<User>) -> Model {
        let mut q = policy_p();
        q.id = "q".into();
        Model {
            version: 3,
            targets: vec![TargetSpec::fs("nas1", "/mnt/a")],
            policies: vec![policy_p(), q],
            users,
            ..Model::default()
        }
    }

    fn base() -> Snapshot {
        Snapshot::from_model(&model(vec![
            user("a", &["+12125550001", "sip:a@x"]),
            user("b", &["+12125550002"]),
            user("c", &["TRD-3"]),
        ]))
        .unwrap()
    }

    fn id_of<'s>(s: &'s Snapshot, ext: &str) -> Option<&'s str> {
        s.lookup(ext).map(|u| u.id)
    }

    #[test]
    fn an_upsert_replaces_a_users_extensions() {
        let b = base();
        let (s, e) = b
            .with_delta(4, None, &[user("a", &["+1 212 555 0009"])], &[])
            .unwrap();
        assert_eq!(
            e,
            Effect {
                added: 0,
                changed: 1,
                removed: 0
            }
        );
        assert_eq!(id_of(&s, "+12125550009"), Some("a"));
        assert_eq!(id_of(&s, "+12125550001"), None);
        assert_eq!(id_of(&s, "sip:A@X"), None);
        assert_eq!(id_of(&s, "TRD-3"), Some("c"));
        assert_eq!((s.version(), s.user_count()), (4, 3));
        // The snapshot it came from is unchanged (a record in flight).
        assert_eq!(id_of(&b, "+12125550001"), Some("a"));
        assert_eq!(b.version(), 3);
    }

    #[test]
    fn a_remove_hides_a_base_user_and_its_extension_can_move() {
        let (s, e) = base()
            .with_delta(4, None, &[user("n", &["tel:+12125550002"])], &["b".into()])
            .unwrap();
        assert_eq!(
            e,
            Effect {
                added: 1,
                changed: 0,
                removed: 1
            }
        );
        assert_eq!(id_of(&s, "+12125550002"), Some("n"));
        assert_eq!(s.user_count(), 3);
        let (s2, _) = s.with_delta(5, None, &[], &["n".into()]).unwrap();
        assert_eq!(id_of(&s2, "+12125550002"), None);
        assert_eq!(s2.user_count(), 2);
        let e = s2.with_delta(6, None, &[], &["b".into()]).unwrap_err();
        assert!(e[0].contains("\"b\", which is not in force"), "{e:?}");
    }

    #[test]
    fn a_duplicate_against_the_base_or_an_unknown_policy_is_rejected() {
        let b = base();
        let e = b
            .with_delta(4, None, &[user("n", &["trd-3", "TRD-3"])], &[])
            .unwrap_err();
        assert_eq!(
            e,
            vec![
                "extension \"TRD-3\" (normalised) is assigned to both \"c\" and \"n\"".to_string()
            ]
        );
        let mut u = user("n", &["1", "1"]);
        u.policies = vec!["zz".into()];
        let e = b.with_delta(4, None, &[u], &[]).unwrap_err();
        assert!(
            e.iter().any(|p| p.contains("unknown policy \"zz\"")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|p| p.contains("lists extension \"1\" twice")),
            "{e:?}"
        );
        let e = b
            .with_delta(4, None, &[user("m", &["7"]), user("n", &["7"])], &[])
            .unwrap_err();
        assert!(e[0].contains("assigned to both \"m\" and \"n\""), "{e:?}");
    }

    /// A small deterministic generator (no dependency).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    fn random_user(r: &mut Rng, id: String) -> User {
        let exts: Vec<String> = (0..1 + r.next(3))
            .map(|_| format!("+1212555{:04}", r.next(90)))
            .collect();
        let mut u = user(&id, &[]);
        u.extensions = exts;
        u.policies = match r.next(10) {
            0 => vec![],
            1 => vec!["q".into(), "p".into()],
            2 => vec!["zz".into()],
            _ => vec!["p".into()],
        };
        u
    }

    #[test]
    fn matching_through_the_overlay_is_matching_the_compiled_result() {
        let (mut accepted, mut rejected) = (0, 0);
        for seed in 1..150u64 {
            let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut users: Vec<User> = (0..30)
                .map(|i| {
                    let mut u = user(&format!("u{i}"), &[]);
                    u.extensions = vec![format!("+1212555{:04}", i * 3), format!("TRD-{i}")];
                    u
                })
                .collect();
            let mut snap = Snapshot::from_model(&model(users.clone())).unwrap();
            for step in 0..4u64 {
                let mut upsert: Vec<User> = Vec::new();
                let mut remove: Vec<String> = Vec::new();
                for _ in 0..r.next(4) {
                    let id = format!("u{}", r.next(45));
                    if !upsert.iter().any(|u| u.id == id) && !remove.contains(&id) {
                        if r.next(3) == 0 {
                            remove.push(id);
                        } else {
                            upsert.push(random_user(&mut r, id));
                        }
                    }
                }
                let mut want: Vec<User> = users
                    .iter()
                    .filter(|u| !upsert.iter().any(|x| x.id == u.id) && !remove.contains(&u.id))
                    .cloned()
                    .collect();
                want.extend(upsert.iter().cloned());
                let removes_known = remove.iter().all(|id| users.iter().any(|u| &u.id == id));
                let mut wm = model(want.clone());
                wm.version = 10 + step;
                let compiled = Snapshot::from_model(&wm).ok().filter(|_| removes_known);
                let got = snap.with_delta(10 + step, None, &upsert, &remove);
                match (got, compiled) {
                    (Ok((s, _)), Some(c)) => {
                        accepted += 1;
                        assert_eq!(s.user_count(), c.user_count(), "seed {seed}");
                        for k in 0..100 {
                            for ext in [format!("+1212555{k:04}"), format!("TRD-{k}")] {
                                assert_eq!(s.lookup(&ext), c.lookup(&ext), "seed {seed} {ext}");
                            }
                        }
                        snap = s;
                        users = want;
                    }
                    (Err(_), None) => rejected += 1,
                    (got, c) => panic!(
                        "seed {seed} step {step}: overlay {:?}, compile ok {}",
                        got.err(),
                        c.is_some()
                    ),
                }
            }
        }
        assert!(accepted > 50 && rejected > 50, "{accepted} {rejected}");
    }
}
