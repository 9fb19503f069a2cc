//! systemd's notification protocol (`sd_notify`), written by hand: one
//! datagram to `$NOTIFY_SOCKET`. A no-op when not started by systemd.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends `msg` (e.g. `READY=1`) to systemd, if it is listening.
pub fn notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let addr = if let Some(name) = bytes.strip_prefix(b"@") {
        SocketAddr::from_abstract_name(name)
    } else {
        SocketAddr::from_pathname(std::path::Path::new(&path))
    };
    if let Ok(addr) = addr {
        let _ = sock.send_to_addr(msg.as_bytes(), &addr);
    }
}

/// Half the watchdog interval systemd asked for, if any.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(100)))
}

/// The `STATUS=` line: the backlog and counts, then what is degraded (a
/// failing target, a spool root that cannot be listed, central disabled),
/// so `systemctl status exportd` never hides a degraded agent.
pub fn status_line(st: &crate::agent::status::Status) -> String {
    let mut s = format!(
        "STATUS=backlog {} exported {} skipped {} failed {}",
        st.backlog, st.counts.exported, st.counts.skipped, st.counts.failed
    );
    if st.degraded.is_empty() {
        return s;
    }
    let parts: Vec<String> = st
        .degraded
        .iter()
        .map(|d| {
            let since = d.since.get(11..19).unwrap_or(&d.since);
            match d.component.as_str() {
                "central" => format!("central disabled since {since}"),
                "spool" => format!("spool root {} unavailable since {since}", d.subject),
                _ => {
                    let state = d.reason.split(' ').next().unwrap_or("failing");
                    format!("target {} {state} since {since}", d.subject)
                }
            }
        })
        .collect();
    let shown = parts.len().min(3);
    s.push_str("; DEGRADED: ");
    s.push_str(&parts[..shown].join(", "));
    if parts.len() > shown {
        s.push_str(&format!(" and {} more", parts.len() - shown));
    }
    s.push_str(" (see `exportd status`)");
    s
}

#[cfg(test)]
mod tests {
    use crate::agent::status::{Degraded, Status};

    #[test]
    fn the_status_line_says_what_is_degraded() {
        let mut st = Status {
            backlog: 3,
            ..Status::default()
        };
        assert_eq!(
            super::status_line(&st),
            "STATUS=backlog 3 exported 0 skipped 0 failed 0"
        );
        let d = |c: &str, s: &str, r: &str| Degraded {
            component: c.into(),
            subject: s.into(),
            since: "2026-12-07T11:30:05.123Z".into(),
            reason: r.into(),
        };
        st.degraded = vec![
            d("central", "", "x"),
            d("spool", "/var/spool/recorder", "missing"),
            d("target", "nas1", "failing (target_unavailable): ro"),
            d("target", "s3a", "blocked (target_refused): 403"),
        ];
        assert_eq!(
            super::status_line(&st),
            "STATUS=backlog 3 exported 0 skipped 0 failed 0; DEGRADED: central disabled since 11:30:05, spool root /var/spool/recorder unavailable since 11:30:05, target nas1 failing since 11:30:05 and 1 more (see `exportd status`)"
        );
    }
}
