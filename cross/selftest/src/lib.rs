//! Helpers of the lane self-test.
use std::path::PathBuf;

/// A fresh scratch directory under TMPDIR, unique per test name and process.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lane-selftest-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[cfg(test)]
mod tests {
    #[test]
    fn threads_and_channels() {
        let (tx, rx) = std::sync::mpsc::channel();
        let hs: Vec<_> = (0..8u64)
            .map(|i| {
                let tx = tx.clone();
                std::thread::spawn(move || tx.send(i * i).unwrap())
            })
            .collect();
        drop(tx);
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(rx.iter().sum::<u64>(), 140);
    }

    #[test]
    fn scratch_dirs_are_distinct() {
        assert_ne!(super::scratch("a"), super::scratch("b"));
    }
}
