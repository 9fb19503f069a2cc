//! AWS Signature Version 4 for S3 requests: header-based signing. Pure
//! (sans-I/O): never sends a request, never prints the secret.
//!
//! Written here (about a hundred lines over `hmac` and `sha2`) rather than
//! pulled in from a signing crate: the crates on offer pin older `sha2`/`hmac`
//! majors (a second copy of the hash code in the appliance binary) or bring a
//! URL parser we do not need. The algorithm is the documented one:
//! canonical request → string to sign → HMAC chain over the dated key.

use std::fmt::Write as _;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::time::Timestamp;

type HmacSha256 = Hmac<Sha256>;

/// The secret access key; never printed.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(s: String) -> Secret {
        Secret(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Credentials and scope of one target.
#[derive(Debug, Clone)]
pub(crate) struct Signer {
    pub(crate) access_key_id: String,
    pub(crate) secret: Secret,
    pub(crate) region: String,
}

/// `x-amz-date` form: `20261121T140307Z`.
pub(crate) fn amz_date(t: Timestamp) -> String {
    let c = t.civil();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// Percent-encodes per SigV4 (RFC 3986 unreserved kept; `/` kept when `keep_slash`).
pub(crate) fn uri_encode(s: &str, keep_slash: bool) -> String {
    crate::url::percent_encode(s, keep_slash)
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(data);
    m.finalize().into_bytes().into()
}

/// Lowercase hex SHA-256.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl Signer {
    /// Computes the `Authorization` header value.
    ///
    /// `path` is the already-encoded absolute path, `query` the decoded
    /// `(name, value)` pairs, `headers` the lowercase names and values to sign
    /// (must include `host`, `x-amz-date` and `x-amz-content-sha256`).
    pub(crate) fn authorization(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(String, String)],
        payload_hash: &str,
        now: Timestamp,
    ) -> String {
        let date_time = amz_date(now);
        let date = &date_time[..8];

        let mut q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
            .collect();
        q.sort();
        let canonical_query = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");

        let mut h: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_ascii_lowercase(),
                    v.split_whitespace().collect::<Vec<_>>().join(" "),
                )
            })
            .collect();
        h.sort();
        let mut canonical_headers = String::new();
        for (k, v) in &h {
            let _ = writeln!(canonical_headers, "{k}:{v}");
        }
        let signed_headers = h
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");

        let canonical_request = format!(
            "{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}"
        );
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
            sha256_hex(canonical_request.as_bytes())
        );
        let k_date = hmac(format!("AWS4{}", self.secret.0).as_bytes(), date.as_bytes());
        let k_region = hmac(&k_date, self.region.as_bytes());
        let k_service = hmac(&k_region, b"s3");
        let k_signing = hmac(&k_service, b"aws4_request");
        let signature = hex::encode(hmac(&k_signing, string_to_sign.as_bytes()));
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Civil;

    /// The "GET Object" example of the AWS SigV4 documentation for S3
    /// ("Signature Calculations for the Authorization Header").
    #[test]
    fn matches_aws_documented_example() {
        let s = Signer {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret: Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
            region: "us-east-1".into(),
        };
        let now = Timestamp::from_civil(Civil {
            year: 2013,
            month: 5,
            day: 24,
            hour: 0,
            minute: 0,
            second: 0,
            milli: 0,
        })
        .unwrap();
        let empty = sha256_hex(b"");
        let headers = vec![
            (
                "host".to_string(),
                "examplebucket.s3.amazonaws.com".to_string(),
            ),
            ("range".to_string(), "bytes=0-9".to_string()),
            ("x-amz-content-sha256".to_string(), empty.clone()),
            ("x-amz-date".to_string(), "20130524T000000Z".to_string()),
        ];
        let auth = s.authorization("GET", "/test.txt", &[], &headers, &empty, now);
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert!(!format!("{s:?}").contains("wJalr"));
    }

    #[test]
    fn encoding() {
        assert_eq!(uri_encode("a b/c+d~", true), "a%20b/c%2Bd~");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
    }
}
