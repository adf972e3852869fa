//! The `pread` backend: segment data reached with `pread`/`pwrite` on the segment files, no
//! mapping (the system-call side of the mmap-versus-read comparison). fsync is `fdatasync`
//! of the whole file: Linux has no range-limited equivalent.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{SegmentFile, SegmentIo};

pub(super) struct Engine;

impl super::Engine for Engine {
    fn open(&self, seg: SegmentFile<'_>) -> io::Result<Box<dyn SegmentIo>> {
        Ok(Box::new(Pread { file: seg.file.clone() }))
    }
}

struct Pread {
    file: Arc<File>,
}

impl SegmentIo for Pread {
    fn read_at(&self, off: usize, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, off as u64)
    }

    fn write_at(&self, off: usize, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, off as u64)
    }

    fn zero(&self, off: usize, len: usize) -> io::Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut at = off;
        while at < off + len {
            let n = (off + len - at).min(ZEROS.len());
            self.file.write_all_at(&ZEROS[..n], at as u64)?;
            at += n;
        }
        Ok(())
    }

    fn sync_range(&self, _off: usize, _len: usize) -> io::Result<()> {
        self.file.sync_data()
    }

    fn syncs_whole_file(&self) -> bool {
        true
    }

    fn resident(&self) -> Option<u64> {
        None
    }
}
