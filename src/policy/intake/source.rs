//! Where users come from, one at a time: the `[[users]]` tables of
//! exportd.toml (each table parsed on its own as the file is read) and the
//! `users` array of a bundle payload (serde's `visit_seq`, one element at a
//! time, from a reader). No list of users is ever built.

use std::fmt;
use std::io::{self, BufRead, Read};
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{IntakeError, ModelHead};
use crate::policy::config::{LocalConfig, has_multiline_string, table_header};
use crate::policy::model::{Admin, Policy, TargetSpec, User};

/// A sink for users as they are parsed.
pub trait Sink: FnMut(User) -> Result<(), IntakeError> {}
impl<F: FnMut(User) -> Result<(), IntakeError>> Sink for F {}

type Counting = fn(User) -> Result<(), IntakeError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OneUser {
    users: Vec<User>,
}

/// Hands every inline user of the config file at `path` to `sink`, in file
/// order, parsing one `[[users]]` table at a time. `head` is the file as
/// read by [`LocalConfig::load_head`] (its `users = [...]` list, if any, is
/// handed over too).
pub fn config_users(
    path: &Path,
    head: &LocalConfig,
    mut sink: impl Sink,
) -> Result<(), IntakeError> {
    let rerr = |source| IntakeError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(rerr)?;
    let mut rd = io::BufReader::with_capacity(64 << 10, f);
    let mut line = String::new();
    let mut block = String::new();
    let mut block_line = 0usize;
    let mut tables = 0u64;
    for n in 1.. {
        line.clear();
        if rd.read_line(&mut line).map_err(rerr)? == 0 {
            break;
        }
        if has_multiline_string(&line) {
            return whole_file_users(path, &mut sink);
        }
        if let Some(name) = table_header(&line) {
            users_table(path, &mut block, block_line, &mut sink)?;
            block_line = 0;
            if name == "[[users]]" {
                block_line = n;
                tables += 1;
            }
        }
        if block_line != 0 {
            block.push_str(&line);
        }
    }
    users_table(path, &mut block, block_line, &mut sink)?;
    if tables > 0 && !head.users.is_empty() {
        return Err(IntakeError::Parse {
            path: path.to_path_buf(),
            msg: "users are given both as `users = [...]` and as [[users]] tables".into(),
        });
    }
    for u in &head.users {
        sink(u.clone())?;
    }
    Ok(())
}

/// Parses one `[[users]]` table (starting at line `at`; 0 = none) and
/// hands its user over; empties `block`.
fn users_table(
    path: &Path,
    block: &mut String,
    at: usize,
    sink: &mut impl Sink,
) -> Result<(), IntakeError> {
    if at == 0 {
        return Ok(());
    }
    let one: OneUser = toml::from_str(block).map_err(|e| IntakeError::Parse {
        path: path.to_path_buf(),
        msg: format!("in the [[users]] table at line {at}: {e}"),
    })?;
    block.clear();
    for u in one.users {
        sink(u)?;
    }
    Ok(())
}

/// The fallback for files with multi-line strings: parsed whole.
fn whole_file_users(path: &Path, sink: &mut impl Sink) -> Result<(), IntakeError> {
    let mut cfg = LocalConfig::load(path).map_err(|e| IntakeError::Parse {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    for u in std::mem::take(&mut cfg.users) {
        sink(u)?;
    }
    Ok(())
}

/// The fields of a configuration payload.
const FIELDS: &[&str] = &[
    "version",
    "issued_at",
    "targets",
    "policies",
    "users",
    "admins",
];

/// A configuration payload without its users (counted only).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PayloadHead {
    /// `version` (checked above 0).
    pub version: u64,
    /// `issued_at`.
    pub issued_at: Option<String>,
    /// `targets`.
    pub targets: Vec<TargetSpec>,
    /// `policies`.
    pub policies: Vec<Policy>,
    /// `admins` (`None` when absent or null).
    pub admins: Option<Vec<Admin>>,
    /// How many users the payload lists.
    pub users: u64,
}

impl PayloadHead {
    /// The head as a [`ModelHead`] with this snapshot source.
    pub fn model_head(&self, source: Option<String>) -> ModelHead {
        ModelHead {
            version: self.version,
            targets: self.targets.clone(),
            policies: self.policies.clone(),
            admins: self.admins.clone(),
            source,
        }
    }
}

struct HeadVisitor;

impl<'de> Visitor<'de> for HeadVisitor {
    type Value = PayloadHead;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a configuration object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<PayloadHead, A::Error> {
        let mut h = PayloadHead::default();
        let mut version = None;
        let mut seen: Vec<String> = Vec::new();
        while let Some(k) = m.next_key::<String>()? {
            if seen.contains(&k) {
                return Err(de::Error::custom(format_args!("duplicate field `{k}`")));
            }
            match k.as_str() {
                "version" => version = Some(m.next_value::<u64>()?),
                "issued_at" => h.issued_at = m.next_value()?,
                "targets" => h.targets = m.next_value()?,
                "policies" => h.policies = m.next_value()?,
                "admins" => h.admins = m.next_value()?,
                "users" => h.users = m.next_value_seed(UsersSeed::<Counting>(None))?,
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            }
            seen.push(k);
        }
        match version {
            None => Err(de::Error::custom("missing `version`")),
            Some(0) => Err(de::Error::custom("`version` must be an integer above 0")),
            Some(v) => {
                h.version = v;
                Ok(h)
            }
        }
    }
}

/// Visits the `users` array: each user is handed to the sink (or only
/// counted when there is none).
struct UsersSeed<'s, F>(Option<&'s mut SinkSlot<F>>);

/// The sink and the first error it returned.
struct SinkSlot<F> {
    sink: F,
    err: Option<IntakeError>,
}

impl<'de, F: Sink> DeserializeSeed<'de> for UsersSeed<'_, F> {
    type Value = u64;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F: Sink> Visitor<'de> for UsersSeed<'_, F> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of users")
    }

    fn visit_seq<S: SeqAccess<'de>>(mut self, mut seq: S) -> Result<u64, S::Error> {
        let mut n = 0u64;
        match self.0.as_mut() {
            None => {
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
            }
            Some(slot) => {
                while let Some(u) = seq.next_element::<User>()? {
                    n += 1;
                    if let Err(e) = (slot.sink)(u) {
                        slot.err = Some(e);
                        return Err(de::Error::custom("stopped"));
                    }
                }
            }
        }
        Ok(n)
    }
}

/// Visits the payload object, handing only the users over.
struct UsersOnly<'s, F>(&'s mut SinkSlot<F>);

impl<'de, F: Sink> Visitor<'de> for UsersOnly<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a configuration object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
        while let Some(k) = m.next_key::<String>()? {
            if k == "users" {
                m.next_value_seed(UsersSeed(Some(&mut *self.0)))?;
            } else {
                m.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// Reads the head of a configuration payload (pass one: users counted, not
/// kept). The message says what is wrong, with the place.
pub fn payload_head(r: impl Read) -> Result<PayloadHead, String> {
    let mut de = serde_json::Deserializer::from_reader(io::BufReader::with_capacity(64 << 10, r));
    let h = de::Deserializer::deserialize_map(&mut de, HeadVisitor).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(h)
}

/// Hands every user of a configuration payload to `sink`, in order (pass
/// two; the payload was checked by [`payload_head`]).
pub fn payload_users(r: impl Read, sink: impl Sink) -> Result<(), IntakeError> {
    let mut slot = SinkSlot { sink, err: None };
    let mut de = serde_json::Deserializer::from_reader(io::BufReader::with_capacity(64 << 10, r));
    let res = de::Deserializer::deserialize_map(&mut de, UsersOnly(&mut slot));
    if let Some(e) = slot.err {
        return Err(e);
    }
    res.map_err(|e| IntakeError::Parse {
        path: "payload".into(),
        msg: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYLOAD: &str = r#"{"users": [{"id":"u1","extensions":["1"]},{"id":"u2"}],
        "version": 3, "targets": [{"id":"t","kind":"fs","path":"/t"}],
        "policies": [{"id":"p","targets":["t"]}]}"#;

    #[test]
    fn head_counts_users_wherever_they_are() {
        let h = payload_head(PAYLOAD.as_bytes()).unwrap();
        assert_eq!((h.version, h.users, h.policies.len()), (3, 2, 1));
        let mut ids = Vec::new();
        let sink = |u: User| -> Result<(), IntakeError> {
            ids.push(u.id);
            Ok(())
        };
        payload_users(PAYLOAD.as_bytes(), sink).unwrap();
        assert_eq!(ids, vec!["u1", "u2"]);
    }

    #[test]
    fn head_rejects_what_the_model_rejects() {
        for (bad, want) in [
            (r#"{"users": []}"#, "missing `version`"),
            (r#"{"version": 0}"#, "above 0"),
            (r#"{"version": 1, "colour": 2}"#, "unknown field"),
            (r#"{"version": 1, "version": 2}"#, "duplicate"),
            (r#"{"version": 1} x"#, "trailing"),
        ] {
            let e = payload_head(bad.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn sink_errors_stop_the_parse() {
        let sink = |_u: User| -> Result<(), IntakeError> {
            Err(IntakeError::Invalid {
                problems: vec!["nope".into()],
                more: 0,
            })
        };
        let e = payload_users(PAYLOAD.as_bytes(), sink).unwrap_err();
        assert_eq!(e.problems(), &["nope".to_string()]);
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    fn users_of(text: &str) -> Result<Vec<String>, IntakeError> {
        let p = std::env::temp_dir().join(format!(
            "exportd-source-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&p, text).unwrap();
        let (head, _) = LocalConfig::load_head(&p).unwrap();
        let mut ids = Vec::new();
        let r = config_users(&p, &head, |u: User| {
            ids.push(u.id);
            Ok(())
        });
        let _ = std::fs::remove_file(&p);
        r.map(|()| ids)
    }

    const HEAD: &str = "agent_id = \"a\"\nspool = [\"/s\"]\n\n[[targets]]\nid = \"t\"\nkind = \"fs\"\npath = \"/t\"\n\n[[policies]]\nid = \"p\"\ntargets = [\"t\"]\n\n";

    #[test]
    fn tables_anywhere_in_file_order() {
        let text = format!(
            "{HEAD}[[users]]\nid = \"u1\"\nextensions = [\n  \"1\",\n]\n\n[central]\nurl = \"https://c\"\nca = \"/c\"\nclient_cert = \"/c\"\nclient_key = \"/k\"\n\n[[users]]\nid = \"u2\"\n"
        );
        assert_eq!(users_of(&text).unwrap(), vec!["u1", "u2"]);
        let inline = format!("users = [{{ id = \"i1\" }}]\n{HEAD}");
        assert_eq!(users_of(&inline).unwrap(), vec!["i1"]);
    }

    #[test]
    fn a_bad_table_is_named_by_its_line() {
        let text = format!("{HEAD}[[users]]\nid = \"u1\"\ncolour = 1\n");
        let e = users_of(&text).unwrap_err().to_string();
        assert!(e.contains("[[users]] table at line 13"), "{e}");
    }

    #[test]
    fn multi_line_strings_fall_back_to_the_whole_file() {
        let text = format!("{HEAD}[[users]]\nid = \"u1\"\nname = '''Ann\n[[users]]'''\n");
        assert_eq!(users_of(&text).unwrap(), vec!["u1"]);
    }
}
