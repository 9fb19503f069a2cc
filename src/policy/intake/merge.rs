//! A users delta merged into the compiled snapshot as a stream: the old
//! snapshot file is read once in order (through small positioned buffers,
//! not the map), the users the delta removes or replaces are dropped, its
//! users appended, and the extension index merged with the delta's sorted
//! entries, where an extension assigned twice is found. No JSON is parsed
//! and nothing proportional to the directory is held: the result is what
//! compiling the resulting model gives, byte for byte.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{IntakeError, Problems, WorkDir};
use crate::policy::model::User;
use crate::policy::snapshot::{
    FIXED, Header, ID_ENTRY, MAGIC, UserRec, checked_extension, checked_policies, fnv1a, id_entry,
    mail_key,
};

/// What a merge found and wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    /// Users in the new snapshot.
    pub users: u64,
    /// Extensions in the new snapshot.
    pub extensions: u64,
    /// The ids of the delta (upserted or removed) that were in force.
    pub present: HashSet<String>,
    /// The targets of the model (unchanged by a delta).
    pub targets: Vec<crate::policy::model::TargetSpec>,
    /// The policies of the model (unchanged by a delta).
    pub policies: Vec<crate::policy::model::Policy>,
}

/// A buffered reader at a position of a file (several at once on one file).
struct At<'f> {
    f: &'f File,
    pos: u64,
    buf: Vec<u8>,
    lo: usize,
    hi: usize,
}

impl<'f> At<'f> {
    fn new(f: &'f File, pos: u64) -> At<'f> {
        At {
            f,
            pos,
            buf: vec![0; 64 << 10],
            lo: 0,
            hi: 0,
        }
    }

    fn exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < out.len() {
            if self.lo == self.hi {
                let n = self.f.read_at(&mut self.buf, self.pos)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.pos += n as u64;
                self.lo = 0;
                self.hi = n;
            }
            let k = (self.hi - self.lo).min(out.len() - done);
            out[done..done + k].copy_from_slice(&self.buf[self.lo..self.lo + k]);
            self.lo += k;
            done += k;
        }
        Ok(())
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn vec(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        self.exact(&mut v)?;
        Ok(v)
    }

    /// A postcard string (varint length, bytes), raw.
    fn postcard_str(&mut self) -> io::Result<Vec<u8>> {
        let mut raw = Vec::with_capacity(24);
        let mut len = 0usize;
        for shift in (0..35).step_by(7) {
            let mut b = [0u8; 1];
            self.exact(&mut b)?;
            raw.push(b[0]);
            len |= usize::from(b[0] & 0x7f) << shift;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        raw.extend(self.vec(len)?);
        Ok(raw)
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("snapshot: {msg}"))
}

/// The old snapshot's layout.
struct Layout {
    header: Header,
    n_ext: u64,
    n_users: u64,
    ext_at: u64,
    users_at: u64,
    ids_at: u64,
    n_mail: u64,
    mails_at: u64,
    blob_at: u64,
    /// Bytes of user records (the extension strings follow them).
    users_len: u64,
}

fn layout(f: &File) -> io::Result<Layout> {
    let mut r = At::new(f, 0);
    let fixed = r.vec(FIXED)?;
    if &fixed[..8] != MAGIC {
        return Err(bad("bad magic"));
    }
    let word = |at: usize| {
        u64::from(u32::from_le_bytes([
            fixed[at],
            fixed[at + 1],
            fixed[at + 2],
            fixed[at + 3],
        ]))
    };
    let (hl, n_ext, n_users, n_mail) = (word(8), word(12), word(16), word(24));
    let header: Header =
        serde_json::from_slice(&r.vec(hl as usize)?).map_err(|e| bad(&e.to_string()))?;
    let ext_at = (FIXED as u64 + hl).div_ceil(4) * 4;
    let users_at = ext_at + n_ext * 16;
    let ids_at = users_at + n_users * 4;
    let mails_at = ids_at + n_users * ID_ENTRY as u64;
    let blob_at = mails_at + n_mail * ID_ENTRY as u64;
    let users_len = if n_ext > 0 {
        let mut e = At::new(f, ext_at + 12);
        u64::from(e.u32()?)
    } else {
        f.metadata()?.len() - blob_at
    };
    Ok(Layout {
        header,
        n_ext,
        n_users,
        ext_at,
        users_at,
        ids_at,
        n_mail,
        mails_at,
        blob_at,
        users_len,
    })
}

/// The delta's users, validated and encoded.
struct NewUsers {
    records: Vec<Vec<u8>>,
    entries: Vec<(u64, String, u32, String)>,
    /// The id index entries (hash, id, user), sorted.
    ids: Vec<(u64, String, u32)>,
    /// The mail index entries (hash, user), sorted.
    mails: Vec<(u64, u32)>,
}

fn new_users(
    upsert: &[User],
    policies: &HashMap<String, u16>,
    first: u32,
    problems: &mut Problems,
) -> NewUsers {
    let mut out = NewUsers {
        records: Vec::new(),
        entries: Vec::new(),
        ids: Vec::new(),
        mails: Vec::new(),
    };
    for (k, u) in upsert.iter().enumerate() {
        out.ids
            .push((fnv1a(u.id.as_bytes()), u.id.clone(), first + k as u32));
        if let Some(m) = mail_key(&u.email) {
            out.mails.push((fnv1a(m.as_bytes()), first + k as u32));
        }
        let pl = checked_policies(u, |p| policies.get(p).copied(), &mut |m| problems.push(m));
        let rec = UserRec {
            id: &u.id,
            name: &u.name,
            email: &u.email,
            policies: pl,
        };
        out.records
            .push(postcard::to_allocvec(&rec).unwrap_or_default());
        for x in &u.extensions {
            if let Some(n) = checked_extension(u, x, &mut |m| problems.push(m)) {
                out.entries
                    .push((fnv1a(n.as_bytes()), n, first + k as u32, u.id.clone()));
            }
        }
    }
    out.ids.sort();
    out.mails.sort();
    out.entries.sort();
    for w in out.entries.windows(2) {
        if w[0].0 == w[1].0 && w[0].1 == w[1].1 {
            problems.push(if w[0].2 == w[1].2 {
                format!("user {:?} lists extension {:?} twice", w[1].3, w[1].1)
            } else {
                format!(
                    "extension {:?} (normalised) is assigned to both {:?} and {:?}",
                    w[1].1, w[0].3, w[1].3
                )
            });
        }
    }
    out
}

/// The `source` recorded in the snapshot file at `path`, if it opens.
pub fn snapshot_source(path: &Path) -> Option<String> {
    let f = File::open(path).ok()?;
    layout(&f).ok()?.header.source
}

/// Strips the varint length of a raw postcard string.
fn str_of(raw: &[u8]) -> &[u8] {
    let skip = raw
        .iter()
        .position(|b| b & 0x80 == 0)
        .map_or(raw.len(), |p| p + 1);
    &raw[skip..]
}

/// The id of user `idx` of the old snapshot (for a message).
fn owner_id(f: &File, lay: &Layout, idx: u64) -> String {
    let read = || -> io::Result<String> {
        let mut r = At::new(f, lay.users_at + idx * 4);
        let off = u64::from(r.u32()?);
        let end = if idx + 1 < lay.n_users {
            u64::from(r.u32()?)
        } else {
            lay.users_len
        };
        let bytes = At::new(f, lay.blob_at + off).vec((end - off) as usize)?;
        let rec: UserRec<'_> = postcard::from_bytes(&bytes).map_err(|e| bad(&e.to_string()))?;
        Ok(rec.id.to_string())
    };
    read().unwrap_or_else(|_| format!("user #{idx}"))
}

/// Merges a delta (users `upsert`ed, ids `remove`d) into the snapshot file
/// `old`, writing the snapshot of the resulting model to `out` with this
/// `version` and `source`. Every problem a full compile would find in the
/// result is found (unknown policies, extensions assigned twice after
/// normalisation); unknown `remove` ids are the caller's (see
/// [`Merged::present`]).
pub fn merge_delta(
    old: &Path,
    version: u64,
    source: Option<String>,
    upsert: &[User],
    remove: &[String],
    work: &Path,
    out: &Path,
) -> Result<Merged, IntakeError> {
    let rerr = |source| IntakeError::Io {
        what: "reading",
        path: old.to_path_buf(),
        source,
    };
    let f = File::open(old).map_err(rerr)?;
    let lay = layout(&f).map_err(rerr)?;
    let touched: HashSet<&str> = upsert
        .iter()
        .map(|u| u.id.as_str())
        .chain(remove.iter().map(String::as_str))
        .collect();
    // Pass one: which users go (removed or replaced), and their bytes.
    let mut dead: Vec<(u64, u64)> = Vec::new();
    let mut present = HashSet::new();
    {
        let mut offs = At::new(&f, lay.users_at);
        let mut blob = At::new(&f, lay.blob_at);
        let mut off = if lay.n_users > 0 {
            u64::from(offs.u32().map_err(rerr)?)
        } else {
            0
        };
        for i in 0..lay.n_users {
            let end = if i + 1 < lay.n_users {
                u64::from(offs.u32().map_err(rerr)?)
            } else {
                lay.users_len
            };
            let bytes = blob.vec((end - off) as usize).map_err(rerr)?;
            let rec: UserRec<'_> =
                postcard::from_bytes(&bytes).map_err(|e| rerr(bad(&e.to_string())))?;
            if touched.contains(rec.id) {
                dead.push((i, end - off));
                present.insert(rec.id.to_string());
            }
            off = end;
        }
    }
    let mut problems = Problems::default();
    let policies: HashMap<String, u16> = lay
        .header
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id.clone(), i as u16))
        .collect();
    let alive = lay.n_users - dead.len() as u64;
    let new = new_users(upsert, &policies, alive as u32, &mut problems);
    let dead_bytes: u64 = dead.iter().map(|d| d.1).sum();
    let new_bytes: u64 = new.records.iter().map(|r| r.len() as u64).sum();
    let users_len = lay.users_len - dead_bytes + new_bytes;
    let header = serde_json::to_vec(&Header {
        version,
        targets: lay.header.targets.clone(),
        policies: lay.header.policies.clone(),
        source,
    })
    .map_err(|e| rerr(bad(&e.to_string())))?;
    let wd = WorkDir::create(work)?;
    let res = write_merged(
        &f,
        &lay,
        &dead,
        &new,
        users_len,
        &header,
        wd.path(),
        out,
        &mut problems,
    );
    if res.is_err() || !problems.is_empty() {
        let _ = std::fs::remove_file(out);
    }
    let n_ext = res?;
    if !problems.is_empty() {
        return Err(problems.into_error());
    }
    Ok(Merged {
        users: alive + new.records.len() as u64,
        extensions: n_ext,
        present,
        targets: lay.header.targets,
        policies: lay.header.policies,
    })
}

#[allow(clippy::too_many_arguments)]
fn write_merged(
    f: &File,
    lay: &Layout,
    dead: &[(u64, u64)],
    new: &NewUsers,
    users_len: u64,
    header: &[u8],
    work: &Path,
    out: &Path,
    problems: &mut Problems,
) -> Result<u64, IntakeError> {
    let oerr = |source| IntakeError::Io {
        what: "writing",
        path: out.to_path_buf(),
        source,
    };
    let is_dead = |i: u64| dead.binary_search_by_key(&i, |d| d.0).is_ok();
    let n_users = lay.n_users - dead.len() as u64 + new.records.len() as u64;
    let mut w = BufWriter::with_capacity(64 << 10, File::create(out).map_err(oerr)?);
    let mut fixed = Vec::with_capacity(FIXED);
    fixed.extend_from_slice(MAGIC);
    fixed.extend_from_slice(&(header.len() as u32).to_le_bytes());
    fixed.extend_from_slice(&0u32.to_le_bytes());
    fixed.extend_from_slice(&(n_users as u32).to_le_bytes());
    fixed.extend_from_slice(&[0u8; 8]);
    w.write_all(&fixed).map_err(oerr)?;
    let mut w = super::compile::CrcWriter::new(w);
    w.write_all(header).map_err(oerr)?;
    let pad = (FIXED + header.len()).div_ceil(4) * 4 - (FIXED + header.len());
    w.write_all(&[0u8; 4][..pad]).map_err(oerr)?;
    // The extension index: old entries of the users kept (renumbered),
    // merged with the delta's sorted entries.
    let strs_path = work.join("ext.strs");
    let mut strs = BufWriter::with_capacity(64 << 10, File::create(&strs_path).map_err(oerr)?);
    let mut strs_len = 0u64;
    let mut n_ext = 0u64;
    let mut emit = |w: &mut dyn Write, hash: u64, user: u64, raw: &[u8]| -> io::Result<()> {
        let off = u32::try_from(users_len + strs_len)
            .map_err(|_| io::Error::other("model too large for a snapshot"))?;
        w.write_all(&hash.to_le_bytes())?;
        w.write_all(&(user as u32).to_le_bytes())?;
        w.write_all(&off.to_le_bytes())?;
        strs.write_all(raw)?;
        strs_len += raw.len() as u64;
        n_ext += 1;
        Ok(())
    };
    let mut idx = At::new(f, lay.ext_at);
    let mut old_strs = At::new(f, lay.blob_at + lay.users_len);
    let rerr = |e: io::Error| IntakeError::Io {
        what: "reading",
        path: out.to_path_buf(),
        source: e,
    };
    let mut ni = 0;
    let new_raw = |k: usize| postcard::to_allocvec(new.entries[k].1.as_str()).unwrap_or_default();
    for _ in 0..lay.n_ext {
        let e = idx.vec(16).map_err(rerr)?;
        let hash = u64::from_le_bytes(e[..8].try_into().unwrap_or_default());
        let user = u64::from(u32::from_le_bytes(e[8..12].try_into().unwrap_or_default()));
        let raw = old_strs.postcard_str().map_err(rerr)?;
        if is_dead(user) {
            continue;
        }
        let key = str_of(&raw);
        while ni < new.entries.len()
            && (new.entries[ni].0, new.entries[ni].1.as_bytes()) < (hash, key)
        {
            emit(
                &mut w,
                new.entries[ni].0,
                u64::from(new.entries[ni].2),
                &new_raw(ni),
            )
            .map_err(oerr)?;
            ni += 1;
        }
        if ni < new.entries.len()
            && new.entries[ni].0 == hash
            && new.entries[ni].1.as_bytes() == key
        {
            problems.push(format!(
                "extension {:?} (normalised) is assigned to both {:?} and {:?}",
                new.entries[ni].1,
                owner_id(f, lay, user),
                new.entries[ni].3
            ));
        }
        let renum = user - dead.partition_point(|d| d.0 < user) as u64;
        emit(&mut w, hash, renum, &raw).map_err(oerr)?;
    }
    while ni < new.entries.len() {
        emit(
            &mut w,
            new.entries[ni].0,
            u64::from(new.entries[ni].2),
            &new_raw(ni),
        )
        .map_err(oerr)?;
        ni += 1;
    }
    strs.flush().map_err(oerr)?;
    drop(strs);
    let n_mail = copy_users(f, lay, dead, new, &mut w).map_err(oerr)?;
    io::copy(&mut File::open(&strs_path).map_err(oerr)?, &mut w).map_err(oerr)?;
    let (w, crc) = w.into_parts();
    let file = w.into_inner().map_err(|e| oerr(e.into_error()))?;
    file.write_all_at(&(n_ext as u32).to_le_bytes(), 12)
        .map_err(oerr)?;
    file.write_all_at(&(n_mail as u32).to_le_bytes(), 24)
        .map_err(oerr)?;
    file.write_all_at(&crc.to_le_bytes(), 20).map_err(oerr)?;
    file.sync_all().map_err(oerr)?;
    Ok(n_ext)
}

/// Reads an index of `n` `[u64 hash][u32 user]` entries at `at` of the old
/// snapshot and calls `f(hash, old user, renumbered user)` for each entry of
/// a user that is kept, in file order.
fn kept_entries(
    f: &File,
    at: u64,
    n: u64,
    dead: &[(u64, u64)],
    mut each: impl FnMut(u64, u64, u64) -> io::Result<()>,
) -> io::Result<()> {
    let mut idx = At::new(f, at);
    let mut e = [0u8; ID_ENTRY];
    for _ in 0..n {
        idx.exact(&mut e)?;
        let hash = u64::from_le_bytes(e[..8].try_into().unwrap_or_default());
        let user = u64::from(u32::from_le_bytes(e[8..].try_into().unwrap_or_default()));
        if dead.binary_search_by_key(&user, |d| d.0).is_ok() {
            continue;
        }
        each(
            hash,
            user,
            user - dead.partition_point(|d| d.0 < user) as u64,
        )?;
    }
    Ok(())
}

/// The id index: the entries of the old users kept (renumbered), merged
/// with the delta's, in the order a compile writes them (hash, then id).
fn write_ids(
    f: &File,
    lay: &Layout,
    dead: &[(u64, u64)],
    new: &NewUsers,
    w: &mut impl Write,
) -> io::Result<()> {
    let put = |w: &mut dyn Write, hash: u64, user: u64| w.write_all(&id_entry(hash, user as u32));
    let mut ni = 0;
    kept_entries(f, lay.ids_at, lay.n_users, dead, |hash, user, renum| {
        // Equal hashes (a collision) are ordered by id: read the old one.
        let first =
            |n: &(u64, String, u32)| n.0 < hash || (n.0 == hash && n.1 < owner_id(f, lay, user));
        while ni < new.ids.len() && first(&new.ids[ni]) {
            put(w, new.ids[ni].0, u64::from(new.ids[ni].2))?;
            ni += 1;
        }
        put(w, hash, renum)
    })?;
    for n in &new.ids[ni..] {
        put(w, n.0, u64::from(n.2))?;
    }
    Ok(())
}

/// The mail index: the entries of the old users kept (renumbered, so still
/// in order), merged with the delta's (numbered after every old user, so
/// after the old ones of an equal hash). Returns the entries written.
fn write_mails(
    f: &File,
    lay: &Layout,
    dead: &[(u64, u64)],
    new: &NewUsers,
    w: &mut impl Write,
) -> io::Result<u64> {
    let (mut ni, mut n) = (0, 0u64);
    kept_entries(f, lay.mails_at, lay.n_mail, dead, |hash, _, renum| {
        while ni < new.mails.len() && new.mails[ni].0 < hash {
            w.write_all(&id_entry(new.mails[ni].0, new.mails[ni].1))?;
            (ni, n) = (ni + 1, n + 1);
        }
        n += 1;
        w.write_all(&id_entry(hash, renum as u32))
    })?;
    for m in &new.mails[ni..] {
        w.write_all(&id_entry(m.0, m.1))?;
        n += 1;
    }
    Ok(n)
}

/// The user offsets, the id index, the mail index, then the user records:
/// the old ones kept, renumbered, then the delta's. Returns the entries of
/// the mail index.
fn copy_users(
    f: &File,
    lay: &Layout,
    dead: &[(u64, u64)],
    new: &NewUsers,
    w: &mut impl Write,
) -> io::Result<u64> {
    let mut n_mail = 0;
    for pass in 0..2 {
        if pass == 1 {
            write_ids(f, lay, dead, new, w)?;
            n_mail = write_mails(f, lay, dead, new, w)?;
        }
        let mut offs = At::new(f, lay.users_at);
        let mut blob = At::new(f, lay.blob_at);
        let mut off = if lay.n_users > 0 {
            u64::from(offs.u32()?)
        } else {
            0
        };
        let (mut gone, mut d) = (0u64, 0usize);
        for i in 0..lay.n_users {
            let end = if i + 1 < lay.n_users {
                u64::from(offs.u32()?)
            } else {
                lay.users_len
            };
            if d < dead.len() && dead[d].0 == i {
                gone += dead[d].1;
                d += 1;
                if pass == 1 {
                    blob.vec((end - off) as usize)?;
                }
            } else if pass == 0 {
                w.write_all(&((off - gone) as u32).to_le_bytes())?;
            } else {
                w.write_all(&blob.vec((end - off) as usize)?)?;
            }
            off = end;
        }
        let mut cur = lay.users_len - gone;
        for r in &new.records {
            if pass == 0 {
                w.write_all(&(cur as u32).to_le_bytes())?;
            } else {
                w.write_all(r)?;
            }
            cur += r.len() as u64;
        }
    }
    Ok(n_mail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::intake::{Compiler, ModelHead};
    use crate::policy::model::{Model, TargetSpec};
    use crate::policy::snapshot::Snapshot;

    fn user(i: usize, exts: &[&str]) -> User {
        User {
            id: format!("u-{i}"),
            name: format!("User {i}"),
            // Some without, most shared by several users (equal hashes in
            // the mail index, old and new users among them).
            email: if i % 5 == 0 {
                String::new()
            } else {
                format!("Desk{}@Corp.Example", i % 7)
            },
            extensions: exts.iter().map(|e| e.to_string()).collect(),
            policies: vec!["p".into()],
        }
    }

    fn model(users: Vec<User>) -> Model {
        Model {
            version: 3,
            targets: vec![TargetSpec::fs("nas1", "/mnt/a")],
            policies: vec![crate::policy::model::tests_support::policy_p()],
            users,
            ..Model::default()
        }
    }

    fn compile(m: &Model, dir: &Path, out: &Path, source: &str) {
        let head = ModelHead {
            version: m.version,
            targets: m.targets.clone(),
            policies: m.policies.clone(),
            admins: None,
            source: Some(source.into()),
        };
        let mut c = Compiler::new(dir, &head).unwrap();
        for u in &m.users {
            c.add_user(u).unwrap();
        }
        c.finish(out).unwrap();
    }

    #[test]
    fn a_merged_delta_is_the_compiled_result_byte_for_byte() {
        let d = std::env::temp_dir().join(format!("exportd-merge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let base: Vec<User> = (0..300)
            .map(|i| user(i, &[&format!("+1212{i:07}"), &format!("sip:u{i}@x")]))
            .collect();
        let old = d.join("old.bin");
        compile(&model(base.clone()), &d, &old, "a");
        // Replace u-5 (keeping one of its extensions, taking u-7's old
        // one after u-7 is removed), remove u-7 and u-299, add two users.
        let upsert = vec![
            user(5, &["+12120000005", "sip:u7@x"]),
            user(1000, &["TRD-1"]),
            user(1001, &["+1 212 000 0007"]),
        ];
        let remove = vec!["u-7".to_string(), "u-299".to_string()];
        let out = d.join("new.bin");
        let m = merge_delta(&old, 4, Some("b".into()), &upsert, &remove, &d, &out).unwrap();
        assert_eq!(m.present.len(), 3);
        let mut want: Vec<User> = base
            .into_iter()
            .filter(|u| !["u-5", "u-7", "u-299"].contains(&u.id.as_str()))
            .collect();
        want.extend(upsert.clone());
        let mut wm = model(want);
        wm.version = 4;
        let expect = d.join("want.bin");
        compile(&wm, &d, &expect, "b");
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&expect).unwrap()
        );
        assert_eq!((m.users, m.extensions), (300 - 3 + 3, 2 * 297 + 4));
        let s = Snapshot::open(&out).unwrap();
        assert_eq!(s.lookup("sip:U7@X").unwrap().id, "u-5");
        assert!(s.lookup("+12120000299").is_none());

        // An extension still held by a user in force is refused, naming both.
        let e = merge_delta(
            &out,
            5,
            None,
            &[user(2000, &["tel:+12120000042"])],
            &[],
            &d,
            &d.join("x"),
        )
        .unwrap_err();
        let p = e.problems().join("\n");
        assert!(
            p.contains("assigned to both \"u-42\" and \"u-2000\""),
            "{p}"
        );
        assert!(!d.join("x").exists());
        let e = merge_delta(
            &out,
            5,
            None,
            &[user(2001, &["9"]), user(2002, &["9"])],
            &[],
            &d,
            &d.join("x"),
        )
        .unwrap_err();
        assert!(e.problems()[0].contains("assigned to both"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
