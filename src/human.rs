//! Sizes for people (`1.2 MiB`, binary units): one formatter for the
//! demo, `top` and the probe lines; never used in a contract format.

const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/// `512 B`, `1.5 KiB`, `3.0 GiB` (whole bytes below 1 KiB, one decimal above).
pub fn bytes(n: u64) -> String {
    bytes_f(n as f64)
}

/// [`bytes`] for an amount that need not be whole (a rate per second).
pub fn bytes_f(b: f64) -> String {
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1_258_291), "1.2 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(bytes(5 << 50), "5.0 PiB");
        assert_eq!(bytes_f(512.4), "512 B");
    }
}
