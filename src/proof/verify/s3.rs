//! An S3 target as an [`Archive`] for `archive verify`: ListObjectsV2 one
//! level at a time and streamed GETs, through the agent's own SigV4 client.
//! Never writes, overwrites or deletes an object.

use std::io::{self, Read};

use super::archive::{Archive, Listing, key_cmp};
use crate::sink::Target;
use crate::sink::s3::S3Target;

/// A bucket (and prefix) read back.
pub struct S3Archive {
    t: S3Target,
}

impl S3Archive {
    /// Reads through `t`.
    pub fn new(t: S3Target) -> S3Archive {
        S3Archive { t }
    }
}

fn io(e: crate::sink::TargetError) -> io::Error {
    io::Error::other(e.to_string())
}

impl Archive for S3Archive {
    fn list(&self, rel: &str) -> io::Result<Listing> {
        let l = self.t.list_level(rel).map_err(io)?;
        let mut files = l.files;
        files.sort();
        let mut dirs = l.dirs;
        dirs.sort_by(|a, b| key_cmp(a, b));
        Ok(Listing { files, dirs })
    }

    fn open(&self, rel: &str) -> io::Result<Box<dyn Read + '_>> {
        match self.t.get_object(rel).map_err(io)? {
            Some(r) => Ok(r),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{rel}: no such object"),
            )),
        }
    }

    fn read_small(&self, rel: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(r) = self.t.get_object(rel).map_err(io)? else {
            return Ok(None);
        };
        super::archive::read_bounded(r, rel, max).map(Some)
    }

    fn describe(&self) -> String {
        self.t.describe("")
    }

    fn check(&self) -> io::Result<()> {
        self.t.list_level("").map(|_| ()).map_err(io)
    }
}
