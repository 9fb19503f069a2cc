//! The parties of a vCon: every address of the record, its participants,
//! its transcript and its user, sorted into `tel`/`sip`/`mailto` and merged
//! when they are the same person. Pure: no I/O.

use super::*;

/// An address sorted into the vCon party field it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Addr {
    /// `+` and digits (or digits only).
    Tel(String),
    /// A SIP URI as written.
    Sip(String),
    /// A bare `user@host`.
    Mailto(String),
    /// Not a tel, SIP or mail address.
    Other,
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn phone_digits(s: &str) -> Option<String> {
    let s = s.trim();
    let (plus, rest) = match s.strip_prefix('+') {
        Some(r) => (true, r),
        None => (false, s),
    };
    if !rest
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')'))
    {
        return None;
    }
    let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 3 {
        return None;
    }
    Some(if plus { format!("+{digits}") } else { digits })
}

fn classify(address: &str) -> Addr {
    let a = address.trim();
    if strip_prefix_ci(a, "sip:").is_some() || strip_prefix_ci(a, "sips:").is_some() {
        return Addr::Sip(a.to_string());
    }
    if let Some(rest) = strip_prefix_ci(a, "tel:") {
        // Parameters (`;phone-context=...`) are dropped from the normalised form.
        let num = rest.split(';').next().unwrap_or("");
        return phone_digits(num).map_or(Addr::Other, Addr::Tel);
    }
    if let Some(rest) = strip_prefix_ci(a, "mailto:") {
        return Addr::Mailto(rest.to_string());
    }
    if let Some(d) = phone_digits(a) {
        return Addr::Tel(d);
    }
    if a.contains('@') && !a.contains(':') && !a.chars().any(char::is_whitespace) {
        return Addr::Mailto(a.to_string());
    }
    Addr::Other
}

/// The key two addresses of the same party share.
fn addr_key(address: &str) -> Option<String> {
    let a = address.trim();
    if a.is_empty() {
        return None;
    }
    Some(match classify(a) {
        Addr::Tel(d) => format!("tel:{d}"),
        Addr::Sip(s) => {
            let rest = strip_prefix_ci(&s, "sips:")
                .or_else(|| strip_prefix_ci(&s, "sip:"))
                .unwrap_or(&s);
            // Drop URI parameters and headers: `user@host;transport=tcp`.
            let rest = rest.split([';', '?']).next().unwrap_or(rest);
            format!("uri:{}", rest.to_ascii_lowercase())
        }
        Addr::Mailto(m) => format!("uri:{}", m.to_ascii_lowercase()),
        Addr::Other => format!("raw:{}", a.to_lowercase()),
    })
}

#[derive(Default)]
pub(super) struct PartyB {
    tel: Option<String>,
    sip: Option<String>,
    mailto: Option<String>,
    name: Option<String>,
    keys: Vec<String>,
    ext: PartyExt,
}

#[derive(Default)]
pub(super) struct Parties(pub(super) Vec<PartyB>);

pub(super) fn non_empty(s: &str) -> Option<&str> {
    let t = s.trim();
    (!t.is_empty()).then_some(t)
}

impl Parties {
    fn by_key(&self, key: &str) -> Option<usize> {
        self.0.iter().position(|p| p.keys.iter().any(|k| k == key))
    }

    pub(super) fn by_id(&self, id: &str) -> Option<usize> {
        self.0
            .iter()
            .position(|p| p.ext.id.as_deref() == Some(id) || p.ext.user_id.as_deref() == Some(id))
    }

    pub(super) fn find(&self, address: &str, id: Option<&str>) -> Option<usize> {
        addr_key(address)
            .and_then(|k| self.by_key(&k))
            .or_else(|| id.and_then(|i| self.by_id(i)))
    }

    /// Adds (or merges into an existing party) and returns the index.
    fn add(
        &mut self,
        address: &str,
        name: Option<&str>,
        id: Option<&str>,
        internal: Option<bool>,
        role: &'static str,
    ) -> usize {
        let id = id.and_then(non_empty);
        let i = match self.find(address, id) {
            Some(i) => i,
            None => {
                self.0.push(PartyB::default());
                self.0.len() - 1
            }
        };
        self.merge(i, address, name, id, internal, role);
        i
    }

    fn merge(
        &mut self,
        i: usize,
        address: &str,
        name: Option<&str>,
        id: Option<&str>,
        internal: Option<bool>,
        role: &'static str,
    ) {
        let p = &mut self.0[i];
        if let Some(a) = non_empty(address) {
            match classify(a) {
                Addr::Tel(d) => {
                    p.tel.get_or_insert(d);
                }
                Addr::Sip(s) => {
                    p.sip.get_or_insert(s);
                }
                Addr::Mailto(m) => {
                    p.mailto.get_or_insert(m);
                }
                Addr::Other => {}
            }
            // (No let chains: the MSRV is 1.85.)
            if let Some(k) = addr_key(a).filter(|k| !p.keys.contains(k)) {
                p.keys.push(k);
            }
            if !p.ext.addresses.iter().any(|x| x == a) {
                p.ext.addresses.push(a.to_string());
            }
        }
        if let Some(n) = name.and_then(non_empty) {
            p.name.get_or_insert_with(|| n.to_string());
        }
        if let Some(id) = id {
            p.ext.id.get_or_insert_with(|| id.to_string());
        }
        if let Some(v) = internal {
            p.ext.internal.get_or_insert(v);
        }
        if !p.ext.roles.contains(&role) {
            p.ext.roles.push(role);
        }
    }

    /// Merges party `j` into party `i` and removes `j`; returns `i`'s new
    /// index.
    fn absorb(&mut self, i: usize, j: usize) -> usize {
        let q = self.0.remove(j);
        let i = if j < i { i - 1 } else { i };
        let p = &mut self.0[i];
        p.tel = p.tel.take().or(q.tel);
        p.sip = p.sip.take().or(q.sip);
        p.mailto = p.mailto.take().or(q.mailto);
        p.name = p.name.take().or(q.name);
        for k in q.keys {
            if !p.keys.contains(&k) {
                p.keys.push(k);
            }
        }
        for a in q.ext.addresses {
            if !p.ext.addresses.contains(&a) {
                p.ext.addresses.push(a);
            }
        }
        p.ext.id = p.ext.id.take().or(q.ext.id);
        p.ext.internal = p.ext.internal.or(q.ext.internal);
        p.ext.user_id = p.ext.user_id.take().or(q.ext.user_id);
        for r in q.ext.roles {
            if !p.ext.roles.contains(&r) {
                p.ext.roles.push(r);
            }
        }
        i
    }

    pub(super) fn into_json(self) -> Vec<PartyJ> {
        self.0
            .into_iter()
            .map(|p| PartyJ {
                tel: p.tel,
                sip: p.sip,
                mailto: p.mailto,
                name: p.name,
                exportd: p.ext,
            })
            .collect()
    }
}

/// Builds the parties; returns them with the recorded party's index.
pub(super) fn build_parties(
    rec: &Record,
    user: &VconUser<'_>,
    t: Option<&Transcript>,
) -> (Parties, usize) {
    let mut ps = Parties::default();
    // The source first and always, so that index 0 exists.
    ps.0.push(PartyB::default());
    ps.merge(
        0,
        &rec.source_caller_id,
        rec.source_name.as_deref(),
        None,
        None,
        "source",
    );
    let dest = rec.destination_caller_id.as_deref().unwrap_or("");
    let dest_name = rec.destination_name.as_deref();
    if non_empty(dest).is_some() || dest_name.and_then(non_empty).is_some() {
        ps.add(dest, dest_name, None, None, "destination");
    }
    let tparts = t.map(|t| t.participants.as_slice()).unwrap_or(&[]);
    for p in rec.participants.iter().chain(tparts) {
        ps.add(
            &p.address,
            Some(&p.name),
            Some(&p.id),
            Some(p.internal),
            "participant",
        );
    }
    if let Some(t) = t {
        for m in &t.messages {
            if let Some(id) = non_empty(&m.from).filter(|id| ps.by_id(id).is_none()) {
                ps.add("", None, Some(id), None, "sender");
            }
        }
    }
    let found = addr_key(&rec.recorded_extension)
        .and_then(|k| ps.by_key(&k))
        .or_else(|| addr_key(user.email).and_then(|k| ps.by_key(&k)))
        .or_else(|| non_empty(user.id).and_then(|id| ps.by_id(id)));
    let recorded = match found {
        Some(i) => {
            ps.merge(i, &rec.recorded_extension, None, None, None, "recorded");
            i
        }
        None => ps.add(&rec.recorded_extension, None, None, None, "recorded"),
    };
    // The user's mail address or id may name a party already listed apart
    // (a chat participant, when the recorded line is a phone number): it is
    // the same person, so the two become one (no index is handed out yet).
    let mut recorded = recorded;
    let same = addr_key(user.email)
        .and_then(|k| ps.by_key(&k))
        .or_else(|| non_empty(user.id).and_then(|id| ps.by_id(id)));
    if let Some(j) = same.filter(|&j| j != recorded) {
        // The later one goes into the earlier one: the source stays index 0.
        recorded = ps.absorb(recorded.min(j), recorded.max(j));
    }
    if let Some(e) = non_empty(user.email) {
        ps.merge(recorded, e, None, None, None, "recorded");
    }
    let p = &mut ps.0[recorded];
    if let Some(n) = non_empty(user.name) {
        p.name.get_or_insert_with(|| n.to_string());
    }
    if let Some(id) = non_empty(user.id) {
        p.ext.user_id.get_or_insert_with(|| id.to_string());
    }
    (ps, recorded)
}
