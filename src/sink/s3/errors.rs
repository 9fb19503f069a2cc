//! S3 failure classification: transport errors, HTTP statuses and the
//! server's `<Code>` become transient or permanent [`TargetError`]s. Pure
//! decisions over what was received; never sends a request.

use std::io;

use super::S3Target;
use super::client::Resp;
use crate::sink::TargetError;

impl S3Target {
    pub(super) fn transport_error(&self, op: &str, key: &str, e: ureq::Error) -> TargetError {
        let what = format!(
            "S3 {op} {} at {}://{}",
            self.location(key),
            self.scheme,
            self.host
        );
        match e {
            ureq::Error::Timeout(t) => TargetError::Transient(format!("{what}: timed out ({t})")),
            ureq::Error::Io(e) if is_tls_config_error(&e) => {
                TargetError::Permanent(format!("{what}: TLS: {e}"))
            }
            ureq::Error::Io(e) => TargetError::Transient(format!("{what}: {e}")),
            ureq::Error::ConnectionFailed => {
                TargetError::Transient(format!("{what}: connection failed"))
            }
            ureq::Error::HostNotFound => {
                TargetError::Transient(format!("{what}: host not found (DNS)"))
            }
            ureq::Error::Protocol(e) => {
                TargetError::Transient(format!("{what}: HTTP protocol error: {e}"))
            }
            // Certificate and other TLS failures, bad URLs: a person must act.
            other => TargetError::Permanent(format!("{what}: {other}")),
        }
    }

    /// Turns a non-success response into a typed error, with the server's
    /// `<Code>` and `<Message>`.
    pub(super) fn status_error(&self, op: &str, key: &str, resp: Resp) -> TargetError {
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .with_config()
            .limit(64 * 1024)
            .read_to_vec()
            .unwrap_or_default();
        let (code, message) = error_code_message(&body);
        self.classify(op, key, status, code.as_deref(), message.as_deref())
    }

    pub(super) fn classify(
        &self,
        op: &str,
        key: &str,
        status: u16,
        code: Option<&str>,
        message: Option<&str>,
    ) -> TargetError {
        let mut text = format!("S3 {op} {}: HTTP {status}", self.location(key));
        if let Some(c) = code {
            text.push(' ');
            text.push_str(c);
        }
        if let Some(m) = message {
            text.push_str(": ");
            text.push_str(m);
        }
        let transient_code = matches!(
            code,
            Some(
                "SlowDown"
                    | "RequestTimeout"
                    | "InternalError"
                    | "ServiceUnavailable"
                    | "OperationAborted"
                    | "ConditionalRequestConflict"
            )
        );
        if status >= 500 || status == 429 || status == 408 || transient_code {
            TargetError::Transient(text)
        } else {
            TargetError::Permanent(text)
        }
    }
}

/// A TLS failure that retrying cannot fix: the server's certificate is not
/// trusted or does not name the host, or no common protocol version/cipher.
fn is_tls_config_error(e: &io::Error) -> bool {
    use rustls::Error as R;
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<R>())
        .is_some_and(|r| {
            matches!(
                r,
                R::InvalidCertificate(_)
                    | R::NoCertificatesPresented
                    | R::PeerIncompatible(_)
                    | R::UnsupportedNameType
            )
        })
}

/// `<Code>` and `<Message>` of an S3 XML error body (first of each, bounded).
pub(super) fn error_code_message(body: &[u8]) -> (Option<String>, Option<String>) {
    (xml_text(body, "Code"), xml_text(body, "Message"))
}

/// The text of the first element named `name` (local name), if any.
pub(super) fn xml_text(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let mut r = crate::record::xml::reader(text);
    let mut inside = false;
    let mut out = String::new();
    loop {
        let ev = r.read_event().ok()?;
        match &ev {
            quick_xml::events::Event::Start(e) => {
                inside = crate::record::xml::local_name(e) == name;
            }
            quick_xml::events::Event::End(_) if inside => {
                return Some(out.chars().filter(|c| !c.is_control()).take(512).collect());
            }
            quick_xml::events::Event::Eof => return None,
            _ if inside => {
                crate::record::xml::push_text(&r, &ev, &mut out, 4096, name).ok()?;
            }
            _ => {}
        }
    }
}
