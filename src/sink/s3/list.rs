//! Reading a bucket back, for `exportd archive verify`: one level of
//! ListObjectsV2 (delimiter `/`, every page) and a streamed GetObject.
//! Never writes, overwrites or deletes an object.

use std::io::{self, Read};

use super::S3Target;
use super::client::{Call, send_to_target};
use crate::sink::TargetError;

/// What one level of a bucket holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Level {
    /// Objects directly at this level: (name, size).
    pub files: Vec<(String, u64)>,
    /// Sub-levels (common prefixes), by name without the trailing `/`.
    pub dirs: Vec<String>,
}

/// The largest ListObjectsV2 answer read (1000 keys of up to 1 KiB each).
const MAX_PAGE: u64 = 16 << 20;

impl S3Target {
    /// The full key of `rel` (`/`-separated, relative to the prefix).
    fn rel_key(&self, rel: &str) -> String {
        format!("{}{}", self.prefix, rel.trim_start_matches('/'))
    }

    /// Lists the level `rel` (`""`: the prefix itself), every page.
    pub fn list_level(&self, rel: &str) -> Result<Level, TargetError> {
        let rel = rel.trim_matches('/');
        let prefix = if rel.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{rel}/", self.prefix)
        };
        let mut level = Level::default();
        let mut token: Option<String> = None;
        loop {
            let page = self.retry(|_| {
                let mut call = Call::new("ListObjectsV2", "GET", "")
                    .query("list-type", "2")
                    .query("prefix", prefix.clone())
                    .query("delimiter", "/");
                if let Some(t) = &token {
                    call = call.query("continuation-token", t.clone());
                }
                let resp = self.send(call).map_err(send_to_target)?;
                if !resp.status().is_success() {
                    return Err(self.status_error("ListObjectsV2", &prefix, resp));
                }
                resp.into_body()
                    .with_config()
                    .limit(MAX_PAGE)
                    .read_to_vec()
                    .map_err(|e| {
                        TargetError::Transient(format!(
                            "S3 ListObjectsV2 {}: reading the answer: {e}",
                            self.location(&prefix)
                        ))
                    })
            })?;
            let p = parse_page(&page).map_err(|e| {
                TargetError::Permanent(format!("S3 ListObjectsV2 {}: {e}", self.location(&prefix)))
            })?;
            for (key, size) in p.keys {
                if let Some(name) = key.strip_prefix(&prefix) {
                    if !name.is_empty() && !name.contains('/') {
                        level.files.push((name.to_string(), size));
                    }
                }
            }
            for cp in p.prefixes {
                if let Some(name) = cp.strip_prefix(&prefix).and_then(|n| n.strip_suffix('/')) {
                    if !name.is_empty() {
                        level.dirs.push(name.to_string());
                    }
                }
            }
            match p.next {
                Some(t) if p.truncated => token = Some(t),
                _ => break,
            }
        }
        Ok(level)
    }

    /// Streams the object `rel`; `None` when it does not exist.
    pub fn get_object(&self, rel: &str) -> Result<Option<Box<dyn Read + Send>>, TargetError> {
        let key = self.rel_key(rel);
        self.retry(|_| {
            let resp = self
                .send(Call::new("GetObject", "GET", &key))
                .map_err(send_to_target)?;
            if resp.status().as_u16() == 404 {
                return Ok(None);
            }
            if !resp.status().is_success() {
                return Err(self.status_error("GetObject", &key, resp));
            }
            let r = resp.into_body().into_with_config().limit(u64::MAX).reader();
            Ok(Some(Box::new(r) as Box<dyn Read + Send>))
        })
    }
}

/// One ListObjectsV2 page.
#[derive(Debug, Default, PartialEq, Eq)]
struct Page {
    keys: Vec<(String, u64)>,
    prefixes: Vec<String>,
    truncated: bool,
    next: Option<String>,
}

fn parse_page(body: &[u8]) -> io::Result<Page> {
    use quick_xml::events::Event;
    let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let text = std::str::from_utf8(body).map_err(|e| bad(e.to_string()))?;
    let mut r = crate::record::xml::reader(text);
    let mut path: Vec<String> = Vec::new();
    let mut out = String::new();
    let mut page = Page::default();
    let mut key: Option<String> = None;
    loop {
        let ev = r.read_event().map_err(|e| bad(e.to_string()))?;
        match &ev {
            Event::Start(e) => {
                path.push(crate::record::xml::local_name(e));
                out.clear();
            }
            Event::End(_) => {
                let at: Vec<&str> = path.iter().map(String::as_str).collect();
                match at.as_slice() {
                    [_, "Contents", "Key"] => key = Some(out.clone()),
                    [_, "Contents", "Size"] => {
                        let size = out.trim().parse().map_err(|_| bad("bad Size".into()))?;
                        if let Some(k) = key.take() {
                            page.keys.push((k, size));
                        }
                    }
                    [_, "CommonPrefixes", "Prefix"] => page.prefixes.push(out.clone()),
                    [_, "IsTruncated"] => page.truncated = out.trim() == "true",
                    [_, "NextContinuationToken"] => page.next = Some(out.clone()),
                    _ => {}
                }
                path.pop();
                out.clear();
            }
            Event::Eof => break,
            _ if !path.is_empty() => {
                crate::record::xml::push_text(&r, &ev, &mut out, 64 * 1024, "ListBucketResult")
                    .map_err(|e| bad(e.to_string()))?;
            }
            _ => {}
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_parses_keys_prefixes_and_token() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix>
<Contents><Key>p/a&amp;b.wav</Key><LastModified>x</LastModified><Size>12</Size></Contents>
<Contents><Key>p/c.xml</Key><Size>3</Size></Contents>
<CommonPrefixes><Prefix>p/2026/</Prefix></CommonPrefixes>
<IsTruncated>true</IsTruncated><NextContinuationToken>tok==</NextContinuationToken></ListBucketResult>"#;
        let p = parse_page(xml).unwrap();
        assert_eq!(
            p.keys,
            vec![("p/a&b.wav".to_string(), 12), ("p/c.xml".to_string(), 3)]
        );
        assert_eq!(p.prefixes, vec!["p/2026/".to_string()]);
        assert!(p.truncated);
        assert_eq!(p.next.as_deref(), Some("tok=="));
    }
}
