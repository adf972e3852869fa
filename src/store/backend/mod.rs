//! How the store reaches segment data: one [`SegmentIo`] trait, one file per backend, chosen
//! once when the store is opened ([`engine`]).
//!
//! - `mmap.rs`: `MAP_SHARED` mappings of the segment files (the default);
//! - `pread.rs`: `pread`/`pwrite` on the segment files, no mapping;
//! - `direct.rs` with `pool.rs`: `O_DIRECT` I/O into the daemon's own buffer pool;
//! - `vm.rs`: a vmcache buffer pool, one virtual region addressed by page number.
//!
//! Adding a backend takes a file implementing [`Engine`] and [`SegmentIo`], a [`Backend`]
//! variant and its arm in [`engine`]. Bounds, host space and the settled bits are the
//! segment's (`segment.rs`), the same for every backend: a backend is called only with ranges
//! inside its segment.

mod direct;
mod mmap;
pub(crate) mod pool;
mod pread;
mod vm;

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// How segment data is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Backend {
    /// Through `MAP_SHARED` mappings (default).
    #[default]
    Mmap,
    /// Through `pread`/`pwrite` on the segment files; fsync is `fdatasync`.
    Pread,
    /// `O_DIRECT` I/O into the daemon's own buffer pool, written through.
    Direct,
    /// vmcache: `O_DIRECT` I/O into one virtual region addressed by page number, evicted with
    /// madvise in batches, written through.
    Vm,
}

/// The `madvise` advice for segment mappings (`mmap` backend).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Advice {
    Normal,
    Random,
    Sequential,
    Willneed,
    Hugepage,
}

/// How segments are reached. Default: mmap backend, `MADV_RANDOM` with the daemon's own
/// read-ahead, no populate, writes with `pwrite`, a pool of an eighth of memory.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    pub backend: Backend,
    /// `madvise` applied to every mapping.
    pub advice: Advice,
    /// Pre-fault every mapping (`MAP_POPULATE`).
    pub populate: bool,
    /// Copy writes through the mapping (by default they are written with `pwrite` into the
    /// same page cache: see `mmap.rs`).
    pub map_writes: bool,
    /// Bytes of the `direct` and `vm` backends' buffer pool.
    pub pool_size: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            backend: Backend::Mmap,
            advice: Advice::Random,
            populate: false,
            map_writes: false,
            pool_size: default_pool_size(),
        }
    }
}

/// The `direct` backend's default pool: an eighth of the machine's memory.
pub fn default_pool_size() -> u64 {
    // SAFETY: sysconf has no memory arguments.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    (pages.max(0) as u64 * 4096 / 8).max((pool::MIN_FRAMES * pool::FRAME) as u64)
}

/// A buffer pool's counters and size, for `mmapfs stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolFigures {
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    /// Pages written to the segment files.
    pub writes: u64,
    /// Eviction batches (`vm`: one pass of the hand and its `madvise` calls each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_batches: Option<u64>,
}

/// A segment file as a backend is given it when the segment is opened.
pub(crate) struct SegmentFile<'a> {
    /// Opened read-write without `O_DIRECT`; shared with the segment, which reserves and
    /// punches host space and starts writeback through it.
    pub file: &'a Arc<File>,
    pub path: &'a Path,
    /// The segment's number (`000007.seg` is 7).
    pub index: u32,
    pub len: usize,
}

/// A backend's store-wide part, made once when the store is opened: it opens each segment.
pub(crate) trait Engine: Send + Sync {
    /// The segment I/O of one segment file.
    fn open(&self, seg: SegmentFile<'_>) -> io::Result<Box<dyn SegmentIo>>;
    /// The buffer pool's figures, for backends that keep one.
    fn pool(&self) -> Option<PoolFigures> {
        None
    }
}

/// The engine of the backend `t` names, for a store of at most `max_segments` segments of
/// `segment_size` bytes.
pub(crate) fn engine(t: &Tuning, max_segments: u64, segment_size: u64) -> io::Result<Box<dyn Engine>> {
    Ok(match t.backend {
        Backend::Mmap => Box::new(mmap::Engine::new(t)),
        Backend::Pread => Box::new(pread::Engine),
        Backend::Direct => Box::new(direct::Engine::new(t.pool_size, max_segments)?),
        Backend::Vm => Box::new(vm::Engine::new(t.pool_size, max_segments, segment_size)?),
    })
}

/// One segment's data path. Every range is inside the segment (the segment checks).
pub(crate) trait SegmentIo: Send + Sync {
    /// Copies `buf.len()` bytes at `off` into `buf`.
    fn read_at(&self, off: usize, buf: &mut [u8]) -> io::Result<()>;
    /// Copies `data` into the segment at `off`. With `direct` it is on disk when this
    /// returns; otherwise in the page cache of the segment file.
    fn write_at(&self, off: usize, data: &[u8]) -> io::Result<()>;
    /// Fills `len` bytes at `off` with zeros, as [`write_at`](Self::write_at) would.
    fn zero(&self, off: usize, len: usize) -> io::Result<()>;
    /// Borrows `len` bytes at `off`, so a read can be answered without a copy; `None` when
    /// the backend has nothing to lend (no mapping). An error when a page of it cannot be
    /// read: the bytes lent are always readable when this returns.
    ///
    /// # Safety
    /// The caller guarantees nobody writes these bytes while the slice lives (see
    /// `Segment::slice`).
    unsafe fn slice(&self, _off: usize, _len: usize) -> io::Result<Option<&[u8]>> {
        Ok(None)
    }
    /// Makes `off..off+len` durable: exactly those pages where the backend can
    /// (`msync`), else the whole file's data (`fdatasync`).
    fn sync_range(&self, off: usize, len: usize) -> io::Result<()>;
    /// True when syncing any range syncs the whole file.
    fn syncs_whole_file(&self) -> bool;
    /// True when written data passes through the segment file's page cache, so writeback can
    /// be started and waited for (`sync_file_range`); false when it is written through.
    fn uses_page_cache(&self) -> bool {
        true
    }
    /// Bytes of this segment held in memory (page cache or pool); `None` if unknown.
    fn resident(&self) -> Option<u64>;
    /// The host space of `off..off+len` was given back: cached copies of it are stale.
    fn forget(&self, _off: usize, _len: usize) {}
}
