//! A recorder simulator: writes realistic records into a spool exactly as
//! spool.md says; never writes a record's metadata XML before its content
//! files are closed. Every modality and platform, half of the XMLs through a
//! temp name renamed into place; the same seed gives the same records. Used
//! by `exportd simulate`, the demo, tests and benchmarks.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::policy::model::User;
use crate::time::Timestamp;

/// A small deterministic PRNG (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `p` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    /// Fills a buffer.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// The simulated directory of users: `u-0001` ... with a phone number, a SIP
/// URI and a trader id each.
pub fn users(n: usize) -> Vec<User> {
    (1..=n)
        .map(|i| User {
            id: format!("u-{i:04}"),
            name: format!("Trader {i:04}"),
            email: format!("trader{i:04}@corp.example"),
            extensions: vec![
                format!("+1212555{:04}", i % 10_000),
                format!("sip:trader{i:04}@corp.example"),
                format!("TRD-{i:04}"),
            ],
            policies: vec!["p-all".into()],
        })
        .collect()
}

/// How to simulate.
pub struct SimOptions {
    /// Spool root to write into.
    pub spool: PathBuf,
    /// Number of records (count mode).
    pub count: u64,
    /// Records per second (rate mode; 0 = as fast as possible).
    pub rate: f64,
    /// Duration of rate mode.
    pub duration: Option<Duration>,
    /// Number of simulated users the records belong to.
    pub users: usize,
    /// PRNG seed.
    pub seed: u64,
    /// Scale of media sizes (1.0 = realistic small: voice about 0.2-1 MiB).
    pub size_scale: f64,
    /// Log of close times: `<unix ms> <xml path>` per record.
    pub log: Option<PathBuf>,
    /// Show a progress line on stderr.
    pub progress: bool,
    /// Encrypt content and metadata to this recipient (age).
    pub encrypt: Option<std::sync::Arc<EncryptFn>>,
    /// Write like a careful recorder: fsync every file before closing it and
    /// its folder (and new parent folders) before the metadata XML is
    /// written, then the folder again once the XML is in place (the
    /// power-cut lane: a record whose XML survived a cut has its content).
    pub fsync: bool,
}

/// Wraps a writer in an encrypting one; `finish` must be called by the returned writer's drop or explicitly.
pub type EncryptFn = dyn Fn(File) -> io::Result<Box<dyn FinishWrite>> + Send + Sync;

/// A writer that must be finished (age's final chunk).
pub trait FinishWrite: Write {
    /// Writes any trailer and syncs.
    fn finish(self: Box<Self>) -> io::Result<()>;
}

/// A plain file; `.1`: fsync it before it is closed.
struct Plain(File, bool);
impl Write for Plain {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
impl FinishWrite for Plain {
    fn finish(self: Box<Self>) -> io::Result<()> {
        if self.1 {
            self.0.sync_all()?;
        }
        Ok(())
    }
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            spool: PathBuf::from("/var/spool/recorder"),
            count: 100,
            rate: 0.0,
            duration: None,
            users: 20,
            seed: 1,
            size_scale: 1.0,
            log: None,
            progress: false,
            encrypt: None,
            fsync: false,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct SimSummary {
    /// Records written.
    pub records: u64,
    /// Content bytes written.
    pub bytes: u64,
    /// Records by modality.
    pub by_modality: std::collections::BTreeMap<String, u64>,
}

const PLATFORMS_VOICE: [&str; 9] = [
    "ipc_unigy",
    "bt_iptrade",
    "speakerbus",
    "cloud9",
    "avaya",
    "cisco",
    "sip",
    "genesys",
    "bt_its",
];

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn write_file(
    opts: &SimOptions,
    path: &Path,
    data: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
) -> io::Result<PathBuf> {
    let (path, f) = match &opts.encrypt {
        Some(_) => {
            let mut p = path.as_os_str().to_owned();
            p.push(".age");
            let p = PathBuf::from(p);
            let f = File::create(&p)?;
            (p, f)
        }
        None => (path.to_path_buf(), File::create(path)?),
    };
    let mut w: Box<dyn FinishWrite> = match &opts.encrypt {
        Some(enc) => enc(f)?,
        None => Box::new(Plain(f, opts.fsync)),
    };
    {
        let mut bw = io::BufWriter::with_capacity(64 << 10, &mut w);
        data(&mut bw)?;
        bw.flush()?;
    }
    w.finish()?;
    Ok(path)
}

fn random_bytes(rng: &mut Rng, w: &mut dyn Write, mut n: u64) -> io::Result<()> {
    let mut buf = [0u8; 8192];
    while n > 0 {
        let k = (n as usize).min(buf.len());
        rng.fill(&mut buf[..k]);
        w.write_all(&buf[..k])?;
        n -= k as u64;
    }
    Ok(())
}

fn wav(rng: &mut Rng, w: &mut dyn Write, samples: u64) -> io::Result<()> {
    let data_len = (samples * 2) as u32;
    w.write_all(b"RIFF")?;
    w.write_all(&(36 + data_len).to_le_bytes())?;
    w.write_all(b"WAVEfmt ")?;
    w.write_all(&16u32.to_le_bytes())?;
    w.write_all(&1u16.to_le_bytes())?; // PCM
    w.write_all(&1u16.to_le_bytes())?; // mono
    w.write_all(&8000u32.to_le_bytes())?;
    w.write_all(&16000u32.to_le_bytes())?;
    w.write_all(&2u16.to_le_bytes())?;
    w.write_all(&16u16.to_le_bytes())?;
    w.write_all(b"data")?;
    w.write_all(&data_len.to_le_bytes())?;
    random_bytes(rng, w, data_len as u64)
}

fn mp4(rng: &mut Rng, w: &mut dyn Write, len: u64) -> io::Result<()> {
    w.write_all(&24u32.to_be_bytes())?;
    w.write_all(b"ftypisom\0\0\x02\0isomiso2")?;
    let body = len.saturating_sub(32);
    w.write_all(&((body + 8) as u32).to_be_bytes())?;
    w.write_all(b"mdat")?;
    random_bytes(rng, w, body)
}

/// Writes one record; returns the XML path and content bytes.
///
/// Told as its steps: the day folder, the draws (id, user, modality...),
/// the content files, the metadata XML, then the XML put in place last.
/// Every draw from `rng` is made in the same order as always, so a seed
/// gives the same spool.
pub fn write_record(
    opts: &SimOptions,
    rng: &mut Rng,
    seq: u64,
    now: Timestamp,
) -> io::Result<(PathBuf, u64, &'static str)> {
    write_record_in(opts, rng, seq, now, SpoolLayout::DayFolder)
}

/// Where a simulated recorder puts a record's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolLayout {
    /// Every record's files in the day folder `<spool>/YYYY/MM/DD`.
    DayFolder,
    /// Each record in a new folder of its own, `<spool>/YYYY/MM/DD/<id>`
    /// (spool.md allows any depth), made just before its first file.
    FolderPerRecord,
}

/// [`write_record`] in the given layout (the draws are the same).
pub fn write_record_in(
    opts: &SimOptions,
    rng: &mut Rng,
    seq: u64,
    now: Timestamp,
    layout: SpoolLayout,
) -> io::Result<(PathBuf, u64, &'static str)> {
    let mut dir = day_dir(opts, now)?;
    let d = draw(opts, rng, seq, now);
    if layout == SpoolLayout::FolderPerRecord {
        dir.push(&d.id);
        fs::create_dir(&dir)?;
        if opts.fsync {
            File::open(dir.parent().unwrap_or(&opts.spool))?.sync_all()?;
        }
    }
    let content = write_content(opts, rng, &dir, &d)?;
    let xml = metadata_xml(rng, seq, now, &d, &content);
    if opts.fsync {
        // The content files' names are durable before the XML exists.
        File::open(&dir)?.sync_all()?;
    }
    let xml_path = place_xml(opts, rng, &dir, &d.id, &xml)?;
    if opts.fsync {
        File::open(&dir)?.sync_all()?;
    }
    Ok((xml_path, content.bytes, d.modality))
}

/// `<spool>/YYYY/MM/DD` of `now`, made if needed (and, with `fsync`, the new
/// folders' entries made durable up to the spool root).
fn day_dir(opts: &SimOptions, now: Timestamp) -> io::Result<PathBuf> {
    let c = now.civil();
    let dir = opts
        .spool
        .join(format!("{:04}/{:02}/{:02}", c.year, c.month, c.day));
    let new_dir = !dir.is_dir();
    fs::create_dir_all(&dir)?;
    if opts.fsync && new_dir {
        // The new folders' entries, up to the spool root.
        let mut d = dir.parent();
        while let Some(p) = d {
            File::open(p)?.sync_all()?;
            if p == opts.spool {
                break;
            }
            d = p.parent();
        }
    }
    Ok(dir)
}

/// What a record is, as drawn before any file is written.
struct Draw {
    /// The record id, also the base name of its files.
    id: String,
    /// The user it belongs to (1-based).
    user: u64,
    /// The recorded extension, as the recorder writes it.
    ext: String,
    modality: &'static str,
    platform: &'static str,
    dur_ms: u64,
    start: Timestamp,
    secondary: bool,
    imported: bool,
    cdr_only: bool,
}

/// The draws that decide a record, in their fixed order.
fn draw(opts: &SimOptions, rng: &mut Rng, seq: u64, now: Timestamp) -> Draw {
    let id = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        rng.next_u64() as u32,
        rng.below(0x10000),
        rng.below(0x1000),
        rng.below(0x1000),
        (rng.next_u64() & 0xffff_ffff_ffff) ^ seq
    );
    let nusers = opts.users.max(1) as u64;
    let user = rng.below(nusers) + 1;
    let ext = match rng.below(10) {
        0..=5 => format!("+1 212 555 {:04}", user % 10_000),
        6 | 7 => format!("sip:Trader{user:04}@Corp.Example"),
        8 => format!("TRD-{user:04}"),
        _ => format!("+1 646 555 {:04}", rng.below(10_000)), // nobody's line
    };
    let modality: &'static str = match rng.below(100) {
        0..=54 => "voice",
        55..=62 => "video",
        63..=68 => "screen",
        69..=72 => "share",
        73..=86 => "im",
        87..=93 => "file_share",
        _ => "sms",
    };
    let platform = match modality {
        "voice" => PLATFORMS_VOICE[rng.below(PLATFORMS_VOICE.len() as u64) as usize],
        "video" | "share" => ["teams", "sfb", "cisco"][rng.below(3) as usize],
        "screen" => "screen_capture",
        "im" | "file_share" => ["sfb", "symphony", "teams", "cisco"][rng.below(4) as usize],
        _ => "genesys",
    };
    let dur_ms = 5_000 + rng.below(115_000);
    let start = Timestamp(now.0 - dur_ms as i64);
    let secondary = rng.chance(10);
    let imported = rng.chance(3);
    let cdr_only = modality == "voice" && rng.chance(4);
    Draw {
        id,
        user,
        ext,
        modality,
        platform,
        dur_ms,
        start,
        secondary,
        imported,
        cdr_only,
    }
}

/// The content files written for a record.
#[derive(Default)]
struct Content {
    /// `(file name, role, message id)` for the XML's `<files>`.
    files: Vec<(String, &'static str, Option<String>)>,
    /// Content bytes (as counted in the summary).
    bytes: u64,
    /// The `<participant>` elements (chat records only).
    participants: String,
}

/// Writes the content files of the record's modality.
fn write_content(opts: &SimOptions, rng: &mut Rng, dir: &Path, d: &Draw) -> io::Result<Content> {
    let base = &d.id;
    let scale = opts.size_scale.max(0.0);
    let mut c = Content::default();
    match d.modality {
        "voice" if !d.cdr_only => {
            let samples = ((d.dur_ms * 8) as f64 * scale * 0.25) as u64;
            let p = write_file(opts, &dir.join(format!("{base}.wav")), &mut |w| {
                wav(rng, w, samples)
            })?;
            c.bytes += samples * 2 + 44;
            c.files.push((name_of(&p), "media", None));
            if rng.chance(30) {
                let p = write_file(opts, &dir.join(format!("{base}.vtr")), &mut |w| {
                    w.write_all(b"WEBVTT\n\n00:00.000 --> 00:02.000\nGood morning, rates desk.\n")
                })?;
                c.files.push((name_of(&p), "transcript", None));
            }
        }
        "video" | "screen" | "share" => {
            let len = ((200_000 + rng.below(1_800_000)) as f64 * scale) as u64;
            let p = write_file(opts, &dir.join(format!("{base}.mp4")), &mut |w| {
                mp4(rng, w, len)
            })?;
            c.bytes += len;
            c.files.push((name_of(&p), "media", None));
        }
        "im" => write_chat(opts, rng, dir, d, &mut c)?,
        "file_share" => {
            let len = 1000 + rng.below(50_000);
            let p = write_file(opts, &dir.join(format!("{base}-report.xlsx")), &mut |w| {
                random_bytes(rng, w, len)
            })?;
            c.bytes += len;
            c.files.push((name_of(&p), "media", None));
        }
        "sms" => {
            let p = write_file(opts, &dir.join(format!("{base}.txt")), &mut |w| {
                w.write_all(b"Call me back re: the 5y swap\n")
            })?;
            c.files.push((name_of(&p), "other", None));
        }
        _ => {}
    }
    Ok(c)
}

/// A chat record: its `.im` transcript and, sometimes, an attachment.
fn write_chat(
    opts: &SimOptions,
    rng: &mut Rng,
    dir: &Path,
    d: &Draw,
    c: &mut Content,
) -> io::Result<()> {
    let base = &d.id;
    let (participants, t, attach) = chat_transcript(rng, d);
    c.participants = participants;
    let p = write_file(opts, &dir.join(format!("{base}.im")), &mut |w| {
        w.write_all(t.as_bytes())
    })?;
    c.bytes += t.len() as u64;
    c.files.push((name_of(&p), "transcript", None));
    if attach {
        let p = write_file(
            opts,
            &dir.join(format!("{base}-term-sheet.pdf")),
            &mut |w| {
                w.write_all(b"%PDF-1.4\n% simulated term sheet\n")?;
                random_bytes(rng, w, 2000)
            },
        )?;
        c.files
            .push((name_of(&p), "attachment", Some("m-0".into())));
    }
    Ok(())
}

/// A chat transcript of a few messages (one deleted, one edited):
/// `(participant elements, transcript XML, whether m-0 has an attachment)`.
fn chat_transcript(rng: &mut Rng, d: &Draw) -> (String, String, bool) {
    let (user, start, base) = (d.user, d.start, &d.id);
    let conv = format!("c-{}", rng.below(50));
    let kind = ["direct", "group", "team"][rng.below(3) as usize];
    let other = format!("x-{}", rng.below(100));
    let participants = format!(
        "<participant id=\"u-{user:04}\" address=\"trader{user:04}@corp.example\" name=\"Trader {user:04}\" internal=\"true\"/>\n    <participant id=\"{other}\" address=\"{other}@partner.example\" name=\"Partner {other}\" internal=\"false\"/>"
    );
    let mut t = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<transcript conversation_id=\"{conv}\" kind=\"{kind}\" title=\"Desk chat {conv}\" owner=\"u-{user:04}\">\n  <participants>\n    {participants}\n  </participants>\n"
    );
    let n = 1 + rng.below(12);
    for m in 0..n {
        let ts = Timestamp(start.0 + (m as i64) * 7_000)
            .recorder()
            .to_string();
        let from = if m % 2 == 0 {
            format!("u-{user:04}")
        } else {
            other.clone()
        };
        if m == 2 {
            let del = Timestamp(start.0 + (m as i64) * 7_000 + 500)
                .recorder()
                .to_string();
            t.push_str(&format!("  <message id=\"m-{m}\" timestamp=\"{ts}\" from=\"{from}\" deleted=\"true\" deleted_at=\"{del}\" deleted_by=\"{from}\">oops, wrong chat</message>\n"));
        } else if m == 3 {
            let ed = Timestamp(start.0 + (m as i64) * 7_000 + 900)
                .recorder()
                .to_string();
            t.push_str(&format!("  <message id=\"m-{m}\" timestamp=\"{ts}\" from=\"{from}\">price is 101.25<edit timestamp=\"{ed}\" by=\"{from}\">price is 101.52</edit></message>\n"));
        } else {
            t.push_str(&format!("  <message id=\"m-{m}\" timestamp=\"{ts}\" from=\"{from}\">message {m} about the {} curve</message>\n", ["2y", "5y", "10y"][(m % 3) as usize]));
        }
    }
    let attach = rng.chance(40);
    if attach {
        t.push_str(&format!(
            "  <attachment message_id=\"m-0\" file=\"{base}-term-sheet.pdf\"/>\n"
        ));
    }
    t.push_str("</transcript>\n");
    (participants, t, attach)
}

/// The record's metadata XML (spool.md); draws the direction and the
/// counterparty last.
fn metadata_xml(rng: &mut Rng, seq: u64, now: Timestamp, d: &Draw, c: &Content) -> String {
    let mut files_xml = String::new();
    for (name, role, mid) in &c.files {
        match mid {
            Some(m) => files_xml.push_str(&format!(
                "    <file role=\"{role}\" message_id=\"{m}\">{}</file>\n",
                xml_escape(name)
            )),
            None => files_xml.push_str(&format!(
                "    <file role=\"{role}\">{}</file>\n",
                xml_escape(name)
            )),
        }
    }
    let Draw {
        id,
        user,
        modality,
        platform,
        secondary,
        imported,
        cdr_only,
        ..
    } = d;
    let participants = &c.participants;
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<recording>\n  <id>{id}</id>\n  <modality_id>{modality}</modality_id>\n  <source_platform>{platform}</source_platform>\n  <secondary>{secondary}</secondary>\n  <imported>{imported}</imported>\n  <cdr_only>{cdr_only}</cdr_only>\n  <native_id>N-{seq}</native_id>\n  <native_call_id>NC-{seq}</native_call_id>\n  <location>sim-rec01</location>\n  <start_time>{}</start_time>\n  <end_time>{}</end_time>\n  <direction>{}</direction>\n  <recorded_extension>{}</recorded_extension>\n  <source_caller_id>+44 20 7946 {:04}</source_caller_id>\n  <source_name>Counterparty {}</source_name>\n  <destination_caller_id>{}</destination_caller_id>\n  <destination_name>Trader {user:04}</destination_name>\n  <participants>\n    {participants}\n  </participants>\n  <files>\n{files_xml}  </files>\n  <vendor_field>kept as recorded</vendor_field>\n</recording>\n",
        d.start.recorder(),
        now.recorder(),
        ["pstn_in", "pstn_out", "internal", "external"][rng.below(4) as usize],
        xml_escape(&d.ext),
        rng.below(10_000),
        rng.below(100),
        xml_escape(&d.ext),
    )
}

/// Puts the metadata XML in place, half the time through a temp name
/// renamed into place; returns its path.
fn place_xml(
    opts: &SimOptions,
    rng: &mut Rng,
    dir: &Path,
    base: &str,
    xml: &str,
) -> io::Result<PathBuf> {
    let final_path = dir.join(format!("{base}.xml"));
    if rng.chance(50) {
        let tmp = dir.join(format!(".{base}.xml.tmp"));
        let p = write_file(opts, &tmp, &mut |w| w.write_all(xml.as_bytes()))?;
        let mut fin = final_path.as_os_str().to_owned();
        if p.extension().is_some_and(|e| e == "age") {
            fin.push(".age");
        }
        let fin = PathBuf::from(fin);
        fs::rename(&p, &fin)?;
        Ok(fin)
    } else {
        write_file(opts, &final_path, &mut |w| w.write_all(xml.as_bytes()))
    }
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Runs the simulator (every record in its day folder).
pub fn simulate(opts: &SimOptions) -> io::Result<SimSummary> {
    simulate_in(opts, SpoolLayout::DayFolder)
}

/// Runs the simulator with the records laid out as `layout` says.
pub fn simulate_in(opts: &SimOptions, layout: SpoolLayout) -> io::Result<SimSummary> {
    fs::create_dir_all(&opts.spool)?;
    let mut rng = Rng::new(opts.seed);
    let mut log = match &opts.log {
        Some(p) => Some(io::BufWriter::new(File::create(p)?)),
        None => None,
    };
    let mut sum = SimSummary::default();
    let t0 = Instant::now();
    let total = match (opts.rate > 0.0, opts.duration) {
        (true, Some(d)) => (opts.rate * d.as_secs_f64()).round() as u64,
        _ => opts.count,
    };
    let mut seq = 0u64;
    while seq < total {
        if opts.rate > 0.0 {
            let due = t0 + Duration::from_secs_f64(seq as f64 / opts.rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let (path, bytes, modality) =
            write_record_in(opts, &mut rng, seq, Timestamp::now(), layout)?;
        if let Some(l) = log.as_mut() {
            writeln!(l, "{} {}", Timestamp::now().0, path.display())?;
        }
        sum.records += 1;
        sum.bytes += bytes;
        *sum.by_modality.entry(modality.to_string()).or_default() += 1;
        seq += 1;
        if opts.progress && (seq % 50 == 0 || seq == total) {
            eprint!(
                "\rsimulated {seq}/{total} records, {:.1} MiB",
                sum.bytes as f64 / 1048576.0
            );
        }
    }
    if opts.progress {
        eprintln!();
    }
    if let Some(mut l) = log {
        l.flush()?;
    }
    Ok(sum)
}

/// A complete `exportd.toml` for a simulated spool: one folder target, one
/// policy taking everything, the simulated users.
pub fn config_toml(
    agent_id: &str,
    spool: &Path,
    state: &Path,
    keys: &Path,
    target: &Path,
    users_n: usize,
    decrypt: bool,
) -> String {
    let mut s = format!(
        "agent_id = \"{agent_id}\"\nspool = [\"{}\"]\nstate_dir = \"{}\"\nkeys_dir = \"{}\"\nincomplete_grace_s = 30\n\n[[targets]]\nid = \"archive\"\nkind = \"fs\"\npath = \"{}\"\n\n[[policies]]\nid = \"p-all\"\nname = \"Everything to the archive\"\ntargets = [\"archive\"]\nsettings = {{ decrypt = {decrypt}, im_attachments = true }}\n\n",
        spool.display(),
        state.display(),
        keys.display(),
        target.display()
    );
    for u in users(users_n) {
        s.push_str(&format!(
            "[[users]]\nid = \"{}\"\nname = \"{}\"\nemail = \"{}\"\nextensions = [{}]\npolicies = [\"p-all\"]\n\n",
            u.id,
            u.name,
            u.email,
            u.extensions.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ")
        ));
    }
    s
}
