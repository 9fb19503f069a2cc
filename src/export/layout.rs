//! What lands on a target (export-layout.md): the record folder from the
//! policy's path template, the output file names, and which content files a
//! policy selects. Pure.

use std::fmt;

use crate::record::{FileRef, FileRole, Record};
use crate::time::Timestamp;

/// The default path template.
pub const DEFAULT_TEMPLATE: &str = "{yyyy}/{mm}/{dd}/{user_id}/{id}";

/// A template field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `{yyyy}` UTC start year.
    Year,
    /// `{mm}` UTC start month.
    Month,
    /// `{dd}` UTC start day.
    Day,
    /// `{hh}` UTC start hour.
    Hour,
    /// `{id}` record id.
    Id,
    /// `{user_id}` the matched user.
    UserId,
    /// `{extension}` the recorded extension.
    Extension,
    /// `{modality}` the conversation type.
    Modality,
    /// `{platform}` the source platform.
    Platform,
    /// `{location}` the recorder host.
    Location,
    /// `{policy_id}` the policy.
    PolicyId,
}

impl Field {
    fn parse(s: &str) -> Option<Field> {
        Some(match s {
            "yyyy" => Field::Year,
            "mm" => Field::Month,
            "dd" => Field::Day,
            "hh" => Field::Hour,
            "id" => Field::Id,
            "user_id" => Field::UserId,
            "extension" => Field::Extension,
            "modality" => Field::Modality,
            "platform" => Field::Platform,
            "location" => Field::Location,
            "policy_id" => Field::PolicyId,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Field(Field),
}

/// A parsed path template: components separated by `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    components: Vec<Vec<Piece>>,
}

/// A template that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path_template {template:?}: {why}")]
pub struct TemplateError {
    /// The template.
    pub template: String,
    /// What is wrong.
    pub why: String,
}

impl Template {
    /// Parses and checks a template.
    pub fn parse(t: &str) -> Result<Template, TemplateError> {
        let err = |why: String| TemplateError {
            template: t.to_string(),
            why,
        };
        if t.is_empty() {
            return Err(err("is empty".into()));
        }
        if t.starts_with('/') {
            return Err(err("must be relative (no leading /)".into()));
        }
        let mut components = Vec::new();
        for comp in t.split('/') {
            if comp.is_empty() {
                return Err(err("has an empty component (`//` or trailing /)".into()));
            }
            if comp == "." || comp == ".." {
                return Err(err(format!("component {comp:?} is not allowed")));
            }
            let mut pieces = Vec::new();
            let mut rest = comp;
            while !rest.is_empty() {
                if let Some(open) = rest.find('{') {
                    if open > 0 {
                        pieces.push(Piece::Lit(rest[..open].to_string()));
                    }
                    let close = rest[open..]
                        .find('}')
                        .ok_or_else(|| err("has an unclosed `{`".into()))?;
                    let name = &rest[open + 1..open + close];
                    let f = Field::parse(name).ok_or_else(|| {
                        err(format!(
                            "unknown field {{{name}}} (known: yyyy mm dd hh id user_id extension modality platform location policy_id)"
                        ))
                    })?;
                    pieces.push(Piece::Field(f));
                    rest = &rest[open + close + 1..];
                } else {
                    if rest.contains('}') {
                        return Err(err("has a stray `}`".into()));
                    }
                    pieces.push(Piece::Lit(rest.to_string()));
                    rest = "";
                }
            }
            for p in &pieces {
                if let Piece::Lit(l) = p {
                    if l.contains('}') {
                        return Err(err("has a stray `}`".into()));
                    }
                    if l.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\') {
                        return Err(err("has a control character or backslash".into()));
                    }
                }
            }
            components.push(pieces);
        }
        Ok(Template { components })
    }

    /// Expands the template; every field value is sanitised to one safe
    /// path component, and every component is escaped by
    /// [`escape_folder_component`]. The result uses `/` separators, never
    /// starts with `/`, and has no empty, `.`/`..`, dot-leading or (first)
    /// reserved component.
    pub fn expand(&self, v: &Values<'_>) -> String {
        let mut out = String::new();
        let c = v.start.civil();
        for (i, comp) in self.components.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            let mut s = String::new();
            for p in comp {
                match p {
                    Piece::Lit(l) => s.push_str(l),
                    Piece::Field(f) => {
                        let val: String = match f {
                            Field::Year => format!("{:04}", c.year),
                            Field::Month => format!("{:02}", c.month),
                            Field::Day => format!("{:02}", c.day),
                            Field::Hour => format!("{:02}", c.hour),
                            Field::Id => v.id.to_string(),
                            Field::UserId => v.user_id.to_string(),
                            Field::Extension => v.extension.to_string(),
                            Field::Modality => v.modality.to_string(),
                            Field::Platform => v.platform.to_string(),
                            Field::Location => v.location.to_string(),
                            Field::PolicyId => v.policy_id.to_string(),
                        };
                        s.push_str(&sanitize_component(&val));
                    }
                }
            }
            out.push_str(&escape_folder_component(&s, i == 0));
        }
        out
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, comp) in self.components.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            for p in comp {
                match p {
                    Piece::Lit(l) => f.write_str(l)?,
                    Piece::Field(x) => write!(f, "{{{x:?}}}")?,
                }
            }
        }
        Ok(())
    }
}

/// The values a template is expanded with.
#[derive(Debug, Clone)]
pub struct Values<'a> {
    /// UTC start time.
    pub start: Timestamp,
    /// Record id.
    pub id: &'a str,
    /// Matched user id.
    pub user_id: &'a str,
    /// Recorded extension as written by the recorder.
    pub extension: &'a str,
    /// Conversation type.
    pub modality: &'a str,
    /// Source platform.
    pub platform: &'a str,
    /// Recorder host.
    pub location: &'a str,
    /// Policy id.
    pub policy_id: &'a str,
}

impl<'a> Values<'a> {
    /// Values of a record matched to a user and policy.
    pub fn of(r: &'a Record, user_id: &'a str, policy_id: &'a str) -> Values<'a> {
        Values {
            start: r.start_time,
            id: &r.id,
            user_id,
            extension: &r.recorded_extension,
            modality: r.modality.as_str(),
            platform: &r.source_platform,
            location: &r.location,
            policy_id,
        }
    }
}

/// Makes `s` one safe path component: `/`, `\`, control bytes and NUL become
/// `_`; `.`/`..`/empty become `_`; longer than 200 bytes is cut at a char boundary.
pub fn sanitize_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if ch == '/' || ch == '\\' || ch.is_control() {
            out.push('_');
        } else {
            out.push(ch);
        }
    }
    if out.len() > 200 {
        let mut cut = 200;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    if out.is_empty() || out == "." || out == ".." {
        return "_".to_string();
    }
    out
}

/// Names exportd itself uses at a target root: no template expansion may
/// yield them as its first component.
pub const RESERVED_ROOT_NAMES: [&str; 5] = [
    ".exportd-tmp",
    ".exportd-target",
    "exportd-audit",
    "compliance-exports",
    "exportd-probe",
];

/// How a name compares on a case-insensitive, trailing-dot/space-stripping
/// file system (vfat, SMB to Windows): lowercased, trailing `.` and ` `
/// removed.
pub fn fold_name(s: &str) -> String {
    s.trim_end_matches(['.', ' ']).to_lowercase()
}

/// Whether `s` would land on a name exportd reserves at a target root
/// (compared as [`fold_name`] does, so `Compliance-Exports.` counts).
pub fn is_reserved_root_name(s: &str) -> bool {
    let f = fold_name(s);
    RESERVED_ROOT_NAMES.iter().any(|r| *r == f)
}

/// Makes `s` one safe folder component of a record folder (issue 21 point
/// 5): [`sanitize_component`], then a leading `.` becomes `_` (no hidden
/// folders, never `.exportd-tmp` or `.exportd-target`), and a first
/// component that is a reserved root name ([`RESERVED_ROOT_NAMES`], any
/// case, trailing dots/spaces ignored) gets a `_` prefix
/// (`compliance-exports` → `_compliance-exports`).
pub fn escape_folder_component(s: &str, first: bool) -> String {
    let mut out = sanitize_component(s);
    if out.starts_with('.') {
        out.replace_range(..1, "_");
    }
    if first && is_reserved_root_name(&out) {
        out.insert(0, '_');
    }
    out
}

/// One file to write into a record folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    /// Index into `record.files`.
    pub index: usize,
    /// Final name in the record folder.
    pub out_name: String,
    /// Decrypt while copying.
    pub decrypt: bool,
}

/// Why a record's files cannot be laid out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Two files would land under one name.
    #[error("files {0:?} and {1:?} would both be written as {2:?} in the record folder")]
    Collision(String, String, String),
}

/// The extension of a file name, ignoring a trailing `.age`, lowercase.
pub fn content_extension(name: &str) -> String {
    let n = name.strip_suffix(".age").unwrap_or(name);
    match n.rfind('.') {
        Some(i) if i + 1 < n.len() => n[i + 1..].to_ascii_lowercase(),
        _ => String::new(),
    }
}

/// Whether a file passes the `file_extensions` setting.
pub fn extension_selected(name: &str, allowed: Option<&[String]>) -> bool {
    match allowed {
        None => true,
        Some(list) => {
            let ext = content_extension(name);
            list.iter()
                .any(|x| x.trim().trim_start_matches('.').eq_ignore_ascii_case(&ext))
        }
    }
}

/// The metadata XML's name in the record folder.
pub fn metadata_name(record_id: &str, encrypted_kept: bool) -> String {
    let id = sanitize_component(record_id);
    if encrypted_kept {
        format!("{id}.xml.age")
    } else {
        format!("{id}.xml")
    }
}

/// Plans the content files of `r` for a policy: selection by extension and
/// role (`attachment` only with `im_attachments`), output names (without
/// `.age` when decrypting), and collision checks against each other and the
/// record's own generated names. A content file whose name equals a
/// generated name (the metadata XML, `.messages.json`, `.vcon.json`) as a
/// case-insensitive file system sees it ([`fold_name`]: `<ID>.XML`) is a
/// collision: the record is refused (error row), so such a file can never
/// take the metadata XML's place on vfat/SMB.
pub fn plan_files(
    r: &Record,
    decrypt: bool,
    im_attachments: bool,
    file_extensions: Option<&[String]>,
) -> Result<Vec<PlannedFile>, PlanError> {
    let mut out: Vec<PlannedFile> = Vec::new();
    let reserved = [
        metadata_name(&r.id, false),
        metadata_name(&r.id, true),
        format!("{}.messages.json", sanitize_component(&r.id)),
        format!("{}.vcon.json", sanitize_component(&r.id)),
    ];
    for (i, f) in r.files.iter().enumerate() {
        if f.role == FileRole::Attachment && !im_attachments {
            continue;
        }
        if !extension_selected(f.base_name(), file_extensions) {
            continue;
        }
        let dec = decrypt && f.is_encrypted();
        let name = output_name(f, decrypt);
        if let Some(prev) = out.iter().find(|p| p.out_name == name) {
            return Err(PlanError::Collision(
                r.files[prev.index].path.clone(),
                f.path.clone(),
                name,
            ));
        }
        let folded = fold_name(&name);
        if reserved.iter().any(|r| fold_name(r) == folded) {
            return Err(PlanError::Collision(
                f.path.clone(),
                "(generated)".into(),
                name,
            ));
        }
        out.push(PlannedFile {
            index: i,
            out_name: name,
            decrypt: dec,
        });
    }
    Ok(out)
}

/// A content file's name in the record folder.
pub fn output_name(f: &FileRef, decrypt: bool) -> String {
    let base = f.base_name();
    let base = if decrypt {
        base.strip_suffix(".age").unwrap_or(base)
    } else {
        base
    };
    sanitize_component(base)
}

/// What `file_extensions` left out, for the `export` row's description,
/// when it leaves out all of a record's listed media (or every listed file
/// the policy would take, for a record without media): which listed files
/// were not exported and why. `None` when the filter left out nothing or
/// some media (or other content) is exported. Files left out because of
/// `im_attachments` are not counted.
pub fn extension_left_out(
    r: &Record,
    im_attachments: bool,
    file_extensions: Option<&[String]>,
) -> Option<String> {
    let list = file_extensions?;
    let eligible: Vec<&FileRef> = r
        .files
        .iter()
        .filter(|f| f.role != FileRole::Attachment || im_attachments)
        .collect();
    let out = |f: &&FileRef| !extension_selected(f.base_name(), Some(list));
    let left: Vec<&FileRef> = eligible.iter().copied().filter(out).collect();
    if left.is_empty() {
        return None;
    }
    let mut media = eligible.iter().filter(|f| f.role == FileRole::Media);
    let what = if media.clone().next().is_some() && media.all(out) {
        "the record's media is not in this folder"
    } else if left.len() == eligible.len() {
        "none of the record's listed files is in this folder"
    } else {
        return None;
    };
    let names: Vec<String> = left
        .iter()
        .map(|f| format!("{} ({})", f.path, f.role.as_str()))
        .collect();
    let exts: Vec<&str> = list.iter().map(|x| x.trim()).collect();
    Some(format!(
        "not exported: {}, left out by file_extensions [{}] ({what})",
        names.join(", "),
        exts.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals() -> Values<'static> {
        Values {
            start: Timestamp::parse_recorder("2026.11.21 04:03:07.120").unwrap(),
            id: "rec/../1",
            user_id: "..",
            extension: "+1 212",
            modality: "voice",
            platform: "ipc_unigy",
            location: "ny\u{0}rec",
            policy_id: "p-voice",
        }
    }

    #[test]
    fn default_template() {
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        assert_eq!(t.expand(&vals()), "2026/11/21/_/rec_.._1");
    }

    #[test]
    fn all_fields_sanitised() {
        let t = Template::parse("{location}/{hh}h-{policy_id}/{extension}/x{modality}{platform}")
            .unwrap();
        assert_eq!(
            t.expand(&vals()),
            "ny_rec/04h-p-voice/+1 212/xvoiceipc_unigy"
        );
    }

    #[test]
    fn reserved_and_hidden_components_are_escaped() {
        let t = Template::parse("{id}/{location}/x").unwrap();
        let mut v = vals();
        for (id, loc, want) in [
            (".exportd-tmp", ".x", "_exportd-tmp/_x/x"),
            (
                ".exportd-target",
                "compliance-exports",
                "_exportd-target/compliance-exports/x",
            ),
            ("compliance-exports", "a", "_compliance-exports/a/x"),
            ("Exportd-Probe", "a", "_Exportd-Probe/a/x"),
            ("Exportd-Audit", "a", "_Exportd-Audit/a/x"),
            ("compliance-exports. .", "a", "_compliance-exports. ./a/x"),
            (".", "..", "_/_/x"),
            ("..x", "a", "_.x/a/x"),
        ] {
            v.id = id;
            v.location = loc;
            assert_eq!(t.expand(&v), want, "{id}");
        }
        let lit = Template::parse(".hidden/exportd-audit").unwrap();
        assert_eq!(lit.expand(&v), "_hidden/exportd-audit");
        let lit = Template::parse("exportd-audit/{id}").unwrap();
        assert_eq!(lit.expand(&v), "_exportd-audit/_.x");
    }

    #[test]
    fn a_content_file_named_like_the_metadata_in_another_case_is_refused() {
        let mut r = crate::record::parse(crate::record::tests_support::SAMPLE.as_bytes()).unwrap();
        let upper = format!("{}.XML", r.id.to_uppercase());
        r.files[0].path = format!("d/{upper}");
        assert!(matches!(
            plan_files(&r, false, false, None),
            Err(PlanError::Collision(..))
        ));
        r.files[0].path = format!("d/{}.Vcon.json.", r.id);
        assert!(plan_files(&r, false, false, None).is_err());
    }

    /// What fuzz/fuzz_targets/path_template.rs checks, on pseudo-random
    /// templates and values built from the troublesome pieces.
    #[test]
    fn expansion_never_yields_unsafe_or_reserved_components() {
        let pieces = [
            "{id}",
            "{location}",
            "{user_id}",
            ".",
            "..",
            "x",
            "_",
            " ",
            "{hh}",
        ];
        let vals_pool = [
            "",
            ".",
            "..",
            ".exportd-tmp",
            ".EXPORTD-TARGET",
            "exportd-audit",
            "Compliance-Exports",
            "compliance-exports. ",
            "a/b",
            "\\",
            "\u{0}",
            "\n.",
            ". ",
            "\u{7f}x",
            "..exportd-tmp",
            "é",
        ];
        let mut x = 0x2545_f491_u32;
        let mut rnd = |n: usize| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as usize % n
        };
        for _ in 0..20_000 {
            let ncomp = 1 + rnd(3);
            let mut t = String::new();
            for c in 0..ncomp {
                if c > 0 {
                    t.push('/');
                }
                for _ in 0..1 + rnd(3) {
                    t.push_str(pieces[rnd(pieces.len())]);
                }
            }
            let Ok(tp) = Template::parse(&t) else {
                continue;
            };
            let mut v = vals();
            v.id = vals_pool[rnd(vals_pool.len())];
            v.location = vals_pool[rnd(vals_pool.len())];
            v.user_id = vals_pool[rnd(vals_pool.len())];
            let out = tp.expand(&v);
            for (i, c) in out.split('/').enumerate() {
                assert!(!c.is_empty() && c != "." && c != "..", "{t} -> {out:?}");
                assert!(!c.starts_with('.'), "{t} -> {out:?}");
                assert!(
                    !c.chars().any(|ch| ch.is_control() || ch == '\\'),
                    "{out:?}"
                );
                assert!(i > 0 || !is_reserved_root_name(c), "{t} -> {out:?}");
            }
        }
    }

    #[test]
    fn bad_templates() {
        for t in [
            "",
            "/abs/{id}",
            "a//b",
            "{id}/..",
            "{nope}",
            "{id",
            "a}b",
            "a/./b",
        ] {
            assert!(Template::parse(t).is_err(), "{t}");
        }
    }

    #[test]
    fn extension_selection() {
        let l = vec!["wav".to_string(), ".VTR".to_string()];
        assert!(extension_selected("call.wav", Some(&l)));
        assert!(extension_selected("call.wav.age", Some(&l)));
        assert!(extension_selected("x.vtr", Some(&l)));
        assert!(!extension_selected("x.mp4", Some(&l)));
        assert!(!extension_selected("age", Some(&l)));
        assert!(extension_selected("x.mp4", None));
    }

    #[test]
    fn left_out_media_is_named() {
        let r = crate::record::parse(crate::record::tests_support::SAMPLE.as_bytes()).unwrap();
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(extension_left_out(&r, false, None), None);
        assert_eq!(
            extension_left_out(&r, false, Some(&l(&["wav", "vtr"]))),
            None
        );
        // Media kept, transcript left out: nothing to say.
        assert_eq!(extension_left_out(&r, false, Some(&l(&["wav"]))), None);
        let d = extension_left_out(&r, false, Some(&l(&["vtr"]))).unwrap();
        assert_eq!(
            d,
            "not exported: call.wav (media), left out by file_extensions [vtr] (the record's media is not in this folder)"
        );
        let d = extension_left_out(&r, false, Some(&l(&["mp4"]))).unwrap();
        assert!(
            d.contains("call.wav (media), sub/call.vtr.age (transcript)"),
            "{d}"
        );
        // A record without media whose every file is left out.
        let mut chat = r.clone();
        chat.files.remove(0);
        let d = extension_left_out(&chat, false, Some(&l(&["wav"]))).unwrap();
        assert!(
            d.ends_with("(none of the record's listed files is in this folder)"),
            "{d}"
        );
        assert_eq!(extension_left_out(&chat, false, Some(&l(&["vtr"]))), None);
    }

    #[test]
    fn planning_names_and_collisions() {
        let mut r = crate::record::parse(crate::record::tests_support::SAMPLE.as_bytes()).unwrap();
        let p = plan_files(&r, true, false, None).unwrap();
        assert_eq!(p[1].out_name, "call.vtr");
        assert!(p[1].decrypt && !p[0].decrypt);
        let p = plan_files(&r, false, false, None).unwrap();
        assert_eq!(p[1].out_name, "call.vtr.age");
        r.files[1].path = "other/call.wav".into();
        assert!(matches!(
            plan_files(&r, false, false, None),
            Err(PlanError::Collision(..))
        ));
    }
}
