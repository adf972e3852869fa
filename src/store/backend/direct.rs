//! The `direct` backend: segment files opened with `O_DIRECT`, their pages held in the
//! store's one buffer pool (`pool.rs`), every write written through before it is answered.
//! Nothing of the segments passes through the page cache, so there is no writeback to start
//! or wait for; fsync is `fdatasync` (the device cache flush and the block conversions).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use super::pool::{FRAME, Pool};
use super::{PoolFigures, SegmentFile, SegmentIo};
use crate::store::files;

pub(super) struct Engine {
    pool: Arc<Pool>,
}

impl Engine {
    pub(super) fn new(pool_size: u64, max_segments: u64) -> io::Result<Engine> {
        Ok(Engine { pool: Arc::new(Pool::new(pool_size, max_segments)?) })
    }
}

impl super::Engine for Engine {
    fn open(&self, seg: SegmentFile<'_>) -> io::Result<Box<dyn SegmentIo>> {
        let direct = files::open_with(seg.path, OpenOptions::new().read(true).write(true), libc::O_DIRECT)?;
        // SAFETY: fcntl(F_GETFL) on a descriptor we own; no memory is passed.
        let flags = unsafe { libc::fcntl(direct.as_raw_fd(), libc::F_GETFL) };
        if flags & libc::O_DIRECT == 0 {
            return Err(io::Error::other(format!("{}: opened without O_DIRECT", seg.path.display())));
        }
        Ok(Box::new(Direct { pool: self.pool.clone(), seg: seg.index, direct, file: seg.file.clone() }))
    }

    fn pool(&self) -> Option<PoolFigures> {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.pool.counters;
        Some(PoolFigures {
            bytes: self.pool.bytes(),
            hits: c.hits.load(Relaxed),
            misses: c.misses.load(Relaxed),
            evictions: c.evictions.load(Relaxed),
            writes: c.writes.load(Relaxed),
            eviction_batches: None,
        })
    }
}

/// A segment whose pages live in the pool.
struct Direct {
    pool: Arc<Pool>,
    /// The segment's index (its pages' key in the pool).
    seg: u32,
    /// The segment file opened with `O_DIRECT`.
    direct: File,
    /// The same file without `O_DIRECT`, for `fdatasync`.
    file: Arc<File>,
}

impl SegmentIo for Direct {
    fn read_at(&self, off: usize, buf: &mut [u8]) -> io::Result<()> {
        self.pool.read(&self.direct, self.seg, off, buf)
    }

    fn write_at(&self, off: usize, data: &[u8]) -> io::Result<()> {
        self.pool.write(&self.direct, self.seg, off, Some(data), data.len())
    }

    fn zero(&self, off: usize, len: usize) -> io::Result<()> {
        self.pool.write(&self.direct, self.seg, off, None, len)
    }

    fn sync_range(&self, _off: usize, _len: usize) -> io::Result<()> {
        self.file.sync_data()
    }

    fn syncs_whole_file(&self) -> bool {
        true
    }

    fn uses_page_cache(&self) -> bool {
        false
    }

    fn resident(&self) -> Option<u64> {
        Some(self.pool.resident(self.seg) * FRAME as u64)
    }

    fn forget(&self, off: usize, len: usize) {
        self.pool.forget(self.seg, off, len);
    }
}
