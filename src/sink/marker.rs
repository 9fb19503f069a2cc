//! The folder target marker's content: made, printed and parsed. Pure:
//! never touches a file (the folder target reads and writes it).
//!
//! The marker `<root>/.exportd-target` (issue 13 point 6): a
//! folder target proves it is the archive before anything is written to it,
//! so an unmounted volume (a bare mount point on the root disk) or the wrong
//! volume is never written.
//!
//! The marker holds the target id, the agent that created it and a random
//! target instance id. `exportd target init` writes it; otherwise the agent
//! adopts a plain folder on its first use of the target (writes the marker
//! and keeps a copy in `<state_dir>/targets/<target id>.marker`). From then
//! on the root must hold a marker with the same target id and instance id:
//! a missing marker or another target's marker makes the target unavailable
//! (a transient target error: the backlog waits for the volume).

use std::fmt;

/// The marker's file name in the target root.
pub const MARKER_NAME: &str = ".exportd-target";

/// The largest marker read (it is a few lines).
pub const MARKER_MAX: usize = 4096;

const MAGIC: &str = "exportd-target v1";

/// A marker's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// The target id it was made for.
    pub target_id: String,
    /// The agent that created it.
    pub created_by: String,
    /// A random id of this archive instance (32 hex digits).
    pub instance: String,
}

/// Why a marker's bytes are not a marker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an exportd target marker: {0}")]
pub struct MarkerError(pub String);

impl Marker {
    /// A new marker with a fresh random instance id.
    pub fn new(target_id: &str, created_by: &str) -> Result<Marker, MarkerError> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b)
            .map_err(|e| MarkerError(format!("no random numbers for the instance id: {e}")))?;
        Ok(Marker {
            target_id: target_id.to_string(),
            created_by: created_by.to_string(),
            instance: hex::encode(b),
        })
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        format!(
            "{MAGIC}\ntarget_id={}\ncreated_by={}\ninstance={}\n",
            one_line(&self.target_id),
            one_line(&self.created_by),
            one_line(&self.instance)
        )
        .into_bytes()
    }

    /// Parses a marker file. Pure.
    pub fn parse(b: &[u8]) -> Result<Marker, MarkerError> {
        let s = std::str::from_utf8(b).map_err(|_| MarkerError("not UTF-8".into()))?;
        let mut lines = s.lines();
        if lines.next() != Some(MAGIC) {
            return Err(MarkerError(format!("the first line is not {MAGIC:?}")));
        }
        let (mut t, mut c, mut i) = (None, None, None);
        for l in lines {
            let Some((k, v)) = l.split_once('=') else {
                continue;
            };
            match k {
                "target_id" => t = Some(v.to_string()),
                "created_by" => c = Some(v.to_string()),
                "instance" => i = Some(v.to_string()),
                _ => {}
            }
        }
        let need = |v: Option<String>, k: &str| {
            v.filter(|v| !v.is_empty())
                .ok_or_else(|| MarkerError(format!("no {k}")))
        };
        Ok(Marker {
            target_id: need(t, "target_id")?,
            created_by: c.unwrap_or_default(),
            instance: need(i, "instance")?,
        })
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect()
}

impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "target {} (instance {}, created by {})",
            self.target_id, self.instance, self.created_by
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let m = Marker::new("nas1", "ny-rec01").unwrap();
        assert_eq!(m.instance.len(), 32);
        assert_eq!(Marker::parse(&m.to_bytes()).unwrap(), m);
        assert_ne!(Marker::new("nas1", "a").unwrap().instance, m.instance);
        for bad in [
            &b""[..],
            b"hello",
            b"exportd-target v1\ntarget_id=x\n",
            b"\xff",
        ] {
            assert!(Marker::parse(bad).is_err());
        }
    }
}
