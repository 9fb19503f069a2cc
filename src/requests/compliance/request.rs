//! The export request: parsing and validation. Pure: never touches a file.
//!
//! The export request (config.md, payloadType
//! `application/vnd.exportd.export-request+json`).

use serde::{Deserialize, Serialize};

use crate::record::Modality;
use crate::time::Timestamp;

/// The zip layout of a compliance export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// RingCentral Glip compliance-export layout (default).
    #[default]
    Glip,
    /// Slack workspace-export layout (for slack-export-viewer and similar).
    Slack,
}

/// An on-demand compliance export request, as submitted (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// Request id; also the zip's and the status file's base name
    /// (`[A-Za-z0-9._-]{1,128}`, not starting with `.`).
    pub request_id: String,
    /// Start of the range (RFC 3339, inclusive); absent = all history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_from: Option<String>,
    /// End of the range (RFC 3339, exclusive); absent = up to now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to: Option<String>,
    /// Target id the zip goes to (resolved to a folder by the caller).
    pub target: String,
    /// Configured user ids whose conversations are exported; absent = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
    /// Modalities (`im`, `file_share`, ...); absent = `im` and `file_share`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modalities: Option<Vec<String>>,
    /// Add the attachments under `Files/` (default false).
    #[serde(default)]
    pub attachments: bool,
    /// Zip layout (default `glip`).
    #[serde(default)]
    pub format: Format,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not JSON of the request's shape (unknown fields are refused).
    #[error("export request is not valid JSON of the expected shape: {0}")]
    Json(String),
    /// The request id is not a safe file name.
    #[error("request_id {0:?} must be 1-128 characters of [A-Za-z0-9._-] and not start with '.'")]
    BadId(String),
    /// A time is not RFC 3339.
    #[error("{field}: {why}")]
    BadTime {
        /// `time_from` or `time_to`.
        field: &'static str,
        /// The parser's message.
        why: String,
    },
    /// `time_from` is not before `time_to`.
    #[error("time_from must be before time_to")]
    EmptyRange,
    /// A modality is unknown.
    #[error("unknown modality {0:?} (voice, video, screen, share, im, file_share, sms)")]
    UnknownModality(String),
    /// The target is empty.
    #[error("target must name a configured target")]
    NoTarget,
}

/// A request after validation: times parsed, modalities resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// Inclusive start.
    pub from: Option<Timestamp>,
    /// Exclusive end.
    pub to: Option<Timestamp>,
    /// Modalities taken.
    pub modalities: Vec<Modality>,
}

impl Validated {
    /// Whether `t` is inside `[from, to)`.
    pub fn contains(&self, t: Timestamp) -> bool {
        self.from.is_none_or(|f| t >= f) && self.to.is_none_or(|e| t < e)
    }

    /// Whether `[start, end]` overlaps `[from, to)`.
    pub fn overlaps(&self, start: Timestamp, end: Timestamp) -> bool {
        let end = end.max(start);
        self.from.is_none_or(|f| end >= f) && self.to.is_none_or(|e| start < e)
    }
}

/// Whether `id` is a safe request id: `[A-Za-z0-9._-]{1,128}`, no leading `.`.
pub fn id_is_safe(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl ExportRequest {
    /// Parses a request from JSON (unknown fields refused).
    pub fn from_json(bytes: &[u8]) -> Result<ExportRequest, RequestError> {
        serde_json::from_slice(bytes).map_err(|e| RequestError::Json(e.to_string()))
    }

    /// Checks the request completely.
    pub fn validate(&self) -> Result<Validated, RequestError> {
        if !id_is_safe(&self.request_id) {
            return Err(RequestError::BadId(
                self.request_id.chars().take(160).collect(),
            ));
        }
        if self.target.trim().is_empty() {
            return Err(RequestError::NoTarget);
        }
        let t =
            |field: &'static str, v: &Option<String>| -> Result<Option<Timestamp>, RequestError> {
                v.as_deref()
                    .map(|s| {
                        Timestamp::parse_rfc3339(s).map_err(|e| RequestError::BadTime {
                            field,
                            why: e.to_string(),
                        })
                    })
                    .transpose()
            };
        let from = t("time_from", &self.time_from)?;
        let to = t("time_to", &self.time_to)?;
        if let (Some(f), Some(e)) = (from, to) {
            if f >= e {
                return Err(RequestError::EmptyRange);
            }
        }
        let modalities = match &self.modalities {
            None => vec![Modality::Im, Modality::FileShare],
            Some(list) => {
                let mut out = Vec::new();
                for m in list {
                    let p = Modality::parse(m.trim()).ok_or_else(|| {
                        RequestError::UnknownModality(m.chars().take(64).collect())
                    })?;
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
                out
            }
        };
        Ok(Validated {
            from,
            to,
            modalities,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let r = ExportRequest::from_json(
            br#"{"request_id": "r-2026-11-21-1", "time_from": "2026-11-01T00:00:00Z",
"time_to": "2026-11-21T00:00:00Z", "target": "nas1", "users": ["u-1001"],
"modalities": ["im", "file_share"], "attachments": true, "format": "glip"}"#,
        )
        .unwrap();
        let v = r.validate().unwrap();
        assert_eq!(v.modalities.len(), 2);
        assert!(v.contains(Timestamp::parse_rfc3339("2026-11-01T00:00:00Z").unwrap()));
        assert!(!v.contains(Timestamp::parse_rfc3339("2026-11-21T00:00:00Z").unwrap()));
        let min = ExportRequest::from_json(br#"{"request_id":"a","target":"t"}"#).unwrap();
        assert_eq!(min.format, Format::Glip);
        assert!(!min.attachments);
        assert!(min.validate().is_ok());
        assert!(ExportRequest::from_json(br#"{"request_id":"a","target":"t","extra":1}"#).is_err());
        assert!(
            ExportRequest::from_json(br#"{"request_id":"a","target":"t","format":"teams"}"#)
                .is_err()
        );
        for bad in ["../x", "", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            let r = ExportRequest {
                request_id: bad.into(),
                ..min.clone()
            };
            assert!(matches!(r.validate(), Err(RequestError::BadId(_))), "{bad}");
        }
        let r = ExportRequest {
            time_from: Some("2026-11-21T00:00:00Z".into()),
            time_to: Some("2026-11-21T00:00:00Z".into()),
            ..min.clone()
        };
        assert_eq!(r.validate(), Err(RequestError::EmptyRange));
        let r = ExportRequest {
            modalities: Some(vec!["fax".into()]),
            ..min.clone()
        };
        assert!(matches!(
            r.validate(),
            Err(RequestError::UnknownModality(_))
        ));
        let r = ExportRequest {
            time_to: Some("tomorrow".into()),
            ..min
        };
        assert!(matches!(r.validate(), Err(RequestError::BadTime { .. })));
    }
}
