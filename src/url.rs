//! RFC 3986 percent-encoding, the one copy shared by SigV4, central's URLs
//! and vCon file references. Pure: no I/O.

use std::fmt::Write;

/// Percent-encodes every byte of `s` but the RFC 3986 unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`), and `/` too when `keep_slash`.
pub fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::percent_encode;

    #[test]
    fn unreserved_kept_everything_else_encoded() {
        assert_eq!(percent_encode("aZ9-._~", false), "aZ9-._~");
        assert_eq!(percent_encode("a/b c:?#%", false), "a%2Fb%20c%3A%3F%23%25");
        assert_eq!(percent_encode("a/b c", true), "a/b%20c");
        assert_eq!(percent_encode("é", false), "%C3%A9");
    }
}
