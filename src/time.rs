//! UTC timestamps: the recorder's `YYYY.MM.DD HH:mm:ss.SSS` form and RFC 3339.
//! Never does I/O; the clock is read only by [`Timestamp::now`].
//!
//! Pure arithmetic on the proleptic Gregorian calendar; no time zone database,
//! no I/O. A [`Timestamp`] is milliseconds since the Unix epoch, UTC.

use std::fmt;

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Timestamp(pub i64);

/// A timestamp text that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timestamp {text:?}: expected {expected}")]
pub struct TimeError {
    /// The text as given (cut to 64 characters).
    pub text: String,
    /// The expected form.
    pub expected: &'static str,
}

/// Broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    /// Year, e.g. 2026.
    pub year: i32,
    /// Month 1..=12.
    pub month: u32,
    /// Day 1..=31.
    pub day: u32,
    /// Hour 0..=23.
    pub hour: u32,
    /// Minute 0..=59.
    pub minute: u32,
    /// Second 0..=59.
    pub second: u32,
    /// Millisecond 0..=999.
    pub milli: u32,
}

const RECORDER_FORM: &str = "YYYY.MM.DD HH:mm:ss.SSS (UTC)";
const RFC3339_FORM: &str = "RFC 3339, e.g. 2026-11-21T10:00:00Z";

/// The number written in `b[r]`, only when every byte there is an ASCII digit.
fn digits(b: &[u8], r: std::ops::Range<usize>) -> Option<u32> {
    let part = b.get(r)?;
    if part.iter().all(u8::is_ascii_digit) {
        std::str::from_utf8(part).ok()?.parse().ok()
    } else {
        None
    }
}

/// The date and time at the fixed places both forms share
/// (`YYYY?MM?DD?HH?mm?ss`), with `milli`; separators are checked by the caller.
fn civil_at(b: &[u8], milli: u32) -> Option<Civil> {
    Some(Civil {
        year: digits(b, 0..4)? as i32,
        month: digits(b, 5..7)?,
        day: digits(b, 8..10)?,
        hour: digits(b, 11..13)?,
        minute: digits(b, 14..16)?,
        second: digits(b, 17..19)?,
        milli,
    })
}

impl TimeError {
    /// `text` cut to 64 characters.
    fn new(text: &str, expected: &'static str) -> TimeError {
        TimeError {
            text: text.chars().take(64).collect(),
            expected,
        }
    }
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_millis() as i64)
    }

    /// From a broken-down UTC time; `None` when a field is out of range.
    pub fn from_civil(c: Civil) -> Option<Timestamp> {
        if !(1..=12).contains(&c.month)
            || c.day == 0
            || c.day > days_in_month(c.year as i64, c.month)
            || c.hour > 23
            || c.minute > 59
            || c.second > 60
            || c.milli > 999
        {
            return None;
        }
        let days = days_from_civil(c.year as i64, c.month, c.day);
        let secs = days * 86_400 + (c.hour * 3600 + c.minute * 60 + c.second) as i64;
        Some(Timestamp(secs * 1000 + c.milli as i64))
    }

    /// Broken-down UTC time.
    pub fn civil(self) -> Civil {
        let ms = self.0.rem_euclid(1000) as u32;
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400) as u32;
        let (y, m, d) = civil_from_days(days);
        Civil {
            year: y as i32,
            month: m,
            day: d,
            hour: sod / 3600,
            minute: sod / 60 % 60,
            second: sod % 60,
            milli: ms,
        }
    }

    /// The UTC day this instant falls on, as days since the epoch.
    pub fn day_number(self) -> i64 {
        self.0.div_euclid(86_400_000)
    }

    /// Parses the recorder's `YYYY.MM.DD HH:mm:ss.SSS` (milliseconds optional).
    pub fn parse_recorder(s: &str) -> Result<Timestamp, TimeError> {
        let err = || TimeError::new(s, RECORDER_FORM);
        let b = s.trim().as_bytes();
        if b.len() != 19 && b.len() != 23 {
            return Err(err());
        }
        let num = |r: std::ops::Range<usize>| digits(b, r);
        if b[4] != b'.' || b[7] != b'.' || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
            return Err(err());
        }
        let milli = if b.len() == 23 {
            if b[19] != b'.' {
                return Err(err());
            }
            num(20..23).ok_or_else(err)?
        } else {
            0
        };
        let c = civil_at(b, milli).ok_or_else(err)?;
        Timestamp::from_civil(c).ok_or_else(err)
    }

    /// Parses RFC 3339 (`2026-11-21T10:00:00Z`, fractions and `+hh:mm` offsets allowed).
    pub fn parse_rfc3339(s: &str) -> Result<Timestamp, TimeError> {
        let err = || TimeError::new(s, RFC3339_FORM);
        let b = s.trim().as_bytes();
        if b.len() < 20 {
            return Err(err());
        }
        let num = |r: std::ops::Range<usize>| digits(b, r);
        if b[4] != b'-'
            || b[7] != b'-'
            || !matches!(b[10], b'T' | b't' | b' ')
            || b[13] != b':'
            || b[16] != b':'
        {
            return Err(err());
        }
        let mut i = 19;
        let mut milli = 0u32;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                if i - start < 3 {
                    milli = milli * 10 + (b[i] - b'0') as u32;
                }
                i += 1;
            }
            let n = i - start;
            if n == 0 {
                return Err(err());
            }
            for _ in n..3 {
                milli *= 10;
            }
        }
        let offset_min: i64 = match &b[i..] {
            [b'Z'] | [b'z'] => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let h = num(i + 1..i + 3).ok_or_else(err)? as i64;
                let m = num(i + 4..i + 6).ok_or_else(err)? as i64;
                let _ = (h1, h2, m1, m2);
                if h > 23 || m > 59 {
                    return Err(err());
                }
                if *sign == b'+' {
                    h * 60 + m
                } else {
                    -(h * 60 + m)
                }
            }
            _ => return Err(err()),
        };
        let c = civil_at(b, milli).ok_or_else(err)?;
        let t = Timestamp::from_civil(c).ok_or_else(err)?;
        Ok(Timestamp(t.0 - offset_min * 60_000))
    }

    /// `YYYY.MM.DD HH:mm:ss.SSS`, the recorder's and the audit log's form.
    pub fn recorder(self) -> RecorderFmt {
        RecorderFmt(self)
    }

    /// RFC 3339 UTC with milliseconds: `2026-11-21T14:03:07.120Z`.
    pub fn rfc3339(self) -> Rfc3339Fmt {
        Rfc3339Fmt(self)
    }

    /// `YYYY-MM-DD` of the UTC day.
    pub fn date(self) -> DateFmt {
        DateFmt(self)
    }
}

/// Display adapter for [`Timestamp::recorder`].
pub struct RecorderFmt(Timestamp);
/// Display adapter for [`Timestamp::rfc3339`].
pub struct Rfc3339Fmt(Timestamp);
/// Display adapter for [`Timestamp::date`].
pub struct DateFmt(Timestamp);

/// Writes `YYYY<d>MM<d>DD<t>HH:mm:ss.SSS<zone>`: the one layout both forms share.
fn write_stamp(
    f: &mut fmt::Formatter<'_>,
    c: Civil,
    date_sep: char,
    time_sep: char,
    zone: &str,
) -> fmt::Result {
    write!(
        f,
        "{:04}{date_sep}{:02}{date_sep}{:02}{time_sep}{:02}:{:02}:{:02}.{:03}{zone}",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.milli
    )
}

impl fmt::Display for RecorderFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_stamp(f, self.0.civil(), '.', ' ', "")
    }
}

impl fmt::Display for Rfc3339Fmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_stamp(f, self.0.civil(), '-', 'T', "Z")
    }
}

impl fmt::Display for DateFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0.civil();
        write!(f, "{:04}-{:02}-{:02}", c.year, c.month, c.day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_round_trip() {
        let t = Timestamp::parse_recorder("2026.11.21 14:03:07.120").unwrap();
        assert_eq!(t.recorder().to_string(), "2026.11.21 14:03:07.120");
        assert_eq!(t.rfc3339().to_string(), "2026-11-21T14:03:07.120Z");
        assert_eq!(t.date().to_string(), "2026-11-21");
        assert_eq!(t.0, 1_795_269_787_120);
    }

    #[test]
    fn recorder_rejects_bad_forms() {
        for s in [
            "2026-11-21 14:03:07.120",
            "2026.13.21 14:03:07.120",
            "2026.02.30 14:03:07.120",
            "2026.11.21 24:03:07.120",
            "2026.11.21 14:03:07,120",
            "",
            "2026.11.21",
            "２026.11.21 14:03:07.120",
        ] {
            assert!(Timestamp::parse_recorder(s).is_err(), "{s}");
        }
        assert!(Timestamp::parse_recorder("2024.02.29 00:00:00").is_ok());
    }

    #[test]
    fn rfc3339_forms() {
        let z = Timestamp::parse_rfc3339("2026-11-21T10:00:00Z").unwrap();
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-21T11:00:00+01:00").unwrap(),
            z
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-21T10:00:00.5Z")
                .unwrap()
                .0,
            z.0 + 500
        );
        assert!(Timestamp::parse_rfc3339("2026-11-21T10:00:00").is_err());
        assert!(Timestamp::parse_rfc3339("2026-11-21").is_err());
    }

    #[test]
    fn civil_round_trip_over_centuries() {
        let mut t = Timestamp::parse_rfc3339("1899-12-31T23:59:59Z").unwrap().0;
        while t < 4_102_444_800_000 {
            let c = Timestamp(t).civil();
            assert_eq!(Timestamp::from_civil(c).unwrap().0, t);
            t += 86_399_999 * 7 + 13;
        }
    }
}
