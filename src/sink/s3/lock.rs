//! Object Lock (WORM): the retention headers sent with every write and the
//! check that a stored object carries the configured retention. Never
//! shortens, removes or changes a retention.

use super::S3Target;
use super::client::Call;
use super::object::Head;
use crate::sink::TargetError;
use crate::time::Timestamp;

impl S3Target {
    /// Checks the retention of an object against the configured Object Lock.
    pub(super) fn check_lock(&self, key: &str, head: &Head) -> Result<(), TargetError> {
        if let Some(lock) = &self.lock {
            let mode_ok = head
                .lock_mode
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case(lock.mode.header_value()));
            if !mode_ok || head.retain_until.is_none() {
                return Err(TargetError::Permanent(format!(
                    "S3 {}: object has no {} retention (mode {:?}, retain-until {:?}); \
                     the bucket must have Object Lock enabled",
                    self.location(key),
                    lock.mode.header_value(),
                    head.lock_mode,
                    head.retain_until
                )));
            }
        }
        Ok(())
    }

    pub(super) fn lock_headers<'c>(&self, mut call: Call<'c>) -> Call<'c> {
        if let Some(lock) = &self.lock {
            call = call
                .header("x-amz-object-lock-mode", lock.mode.header_value())
                .header(
                    "x-amz-object-lock-retain-until-date",
                    retain_until(Timestamp::now(), lock.retain_days),
                );
        }
        call
    }
}

/// `now + days` as RFC 3339 UTC without fraction (`2033-11-21T10:00:00Z`),
/// the form every S3 implementation parses.
pub(super) fn retain_until(now: Timestamp, days: u32) -> String {
    let t = Timestamp(now.0.div_euclid(1000) * 1000 + i64::from(days) * 86_400_000);
    let c = t.civil();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}
