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
