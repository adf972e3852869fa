//! The `mmap` backend: each segment file mapped `MAP_SHARED`, the daemon's only `unsafe` on
//! segment mappings. Reads and small writes copy through the mapping; writes of two pages or
//! more go into the same page cache with `pwrite`; fsync is `msync` of exactly the ranges
//! written.
//!
//! A segment is created at its full size (space reserved with `fallocate`) before it is
//! mapped, and never shrunk while mapped, so no access inside it can raise `SIGBUS` while
//! the host behaves.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use memmap2::{MmapOptions, MmapRaw};

use super::{Advice, SegmentFile, SegmentIo, Tuning};
use crate::store::guard::{self, Fault};

/// The page size: granularity of read-ahead.
const PAGE: usize = 4096;

pub(super) struct Engine {
    advice: Advice,
    populate: bool,
    map_writes: bool,
}

impl Engine {
    pub(super) fn new(t: &Tuning) -> Engine {
        Engine { advice: t.advice, populate: t.populate, map_writes: t.map_writes }
    }
}

impl super::Engine for Engine {
    fn open(&self, seg: SegmentFile<'_>) -> io::Result<Box<dyn SegmentIo>> {
        let mut o = MmapOptions::new();
        o.len(seg.len);
        if self.populate {
            o.populate();
        }
        let map = o.map_raw(&**seg.file)?;
        if let Err(e) = map.advise(madvise(self.advice)) {
            log::warn!("madvise({:?}) on a segment failed: {e}", self.advice);
        }
        Ok(Box::new(Mapped {
            file: seg.file.clone(),
            map,
            len: seg.len,
            prefetch: self.advice == Advice::Random,
            map_writes: self.map_writes,
            failed_pages: Mutex::new(BTreeSet::new()),
            any_failed: AtomicBool::new(false),
            stream_end: AtomicUsize::new(usize::MAX),
            prefetched_to: AtomicUsize::new(0),
        }))
    }
}

fn madvise(a: Advice) -> memmap2::Advice {
    match a {
        Advice::Normal => memmap2::Advice::Normal,
        Advice::Random => memmap2::Advice::Random,
        Advice::Sequential => memmap2::Advice::Sequential,
        Advice::Willneed => memmap2::Advice::WillNeed,
        Advice::Hugepage => memmap2::Advice::HugePage,
    }
}

/// One mapped segment.
struct Mapped {
    file: Arc<File>,
    map: MmapRaw,
    len: usize,
    /// Read ahead exactly the ranges the daemon touches (with `MADV_RANDOM`, which turns the
    /// kernel's fault read-around off).
    prefetch: bool,
    /// [`Tuning::map_writes`].
    map_writes: bool,
    /// Offsets of pages that faulted (`guard.rs`): a zero page sits there in the mapping now,
    /// so every later access of them is `EIO`, never those zeros.
    failed_pages: Mutex<BTreeSet<usize>>,
    /// Set once a page has failed: the fast path checks only this.
    any_failed: AtomicBool,
    /// Where the last multi-page read ended: a read that starts there continues a stream.
    stream_end: AtomicUsize,
    /// How far the stream's pages have been read ahead.
    prefetched_to: AtomicUsize,
}

/// How far ahead of a sequential stream of reads the daemon reads the segment: the next
/// requests' pages are on their way from the disk while this one is copied to the kernel.
/// Measured in docs/design.md ("Read-ahead and request size").
const READ_AHEAD: usize = 4 << 20;

/// The most one `POSIX_FADV_WILLNEED` is asked to read.
const WILL_NEED_PIECE: usize = 512 << 10;

impl Mapped {
    /// Why `MADV_RANDOM` plus this is the default: a store through a mapping dirties the whole
    /// page-cache folio behind it, and the fault path's read-around builds large folios on ext4
    /// (6.18 here), so each scattered 4 KiB write cost up to 1 MiB of writeback at fsync
    /// (measured: 809 KiB per page, 6× the sync time; docs/design.md). `MADV_RANDOM` faults
    /// in single pages; this `POSIX_FADV_WILLNEED` reads a request's whole range ahead in one
    /// batch of single-page folios (the kernel already did the read-ahead on the FUSE file, so
    /// the request is the right window), and the faults of the copy then find the pages.
    /// A range inside one page is left to its fault, which reads exactly that page anyway
    /// (this keeps the syscall off the path of random 4 KiB reads).
    fn prefetch(&self, off: usize, len: usize) {
        if self.prefetches(off, len) {
            self.will_need(off, len);
        }
    }

    /// Whether `off..off+len` is read ahead at all: with `MADV_RANDOM`, and only when it
    /// spans two pages or more.
    fn prefetches(&self, off: usize, len: usize) -> bool {
        self.prefetch && off / PAGE != (off + len.max(1) - 1) / PAGE
    }

    /// [`Mapped::prefetch`] for a read, which also reads [`READ_AHEAD`] beyond a read that
    /// continues the previous multi-page read of this segment (the kernel sends multi-page
    /// READs for its own read-ahead of a stream). A read elsewhere reads only its own range, so
    /// random reads cost nothing more; two streams in one segment only lose the extra.
    fn prefetch_read(&self, off: usize, len: usize) {
        if !self.prefetches(off, len) {
            return;
        }
        let end = off + len;
        if self.stream_end.swap(end, Ordering::Relaxed) != off {
            self.prefetched_to.store(end, Ordering::Relaxed);
            return self.will_need(off, len);
        }
        let from = self.prefetched_to.load(Ordering::Relaxed).clamp(off, self.len);
        let to = (end + READ_AHEAD).min(self.len);
        if to > from {
            self.prefetched_to.store(to, Ordering::Relaxed);
            self.will_need(from, to - from);
        }
    }

    fn will_need(&self, off: usize, len: usize) {
        // In pieces: one call reads at most the larger of the host device's read-ahead and
        // its largest request (often 128 KiB and 512 KiB), the rest silently not at all.
        for at in (off..off + len).step_by(WILL_NEED_PIECE) {
            let n = WILL_NEED_PIECE.min(off + len - at);
            // SAFETY: a plain syscall on an fd we own; no memory is passed. A failure only
            // loses the read-ahead, so its result is ignored. WILLNEED starts the reads and
            // returns without waiting for them.
            unsafe { libc::posix_fadvise(self.file.as_raw_fd(), at as i64, n as i64, libc::POSIX_FADV_WILLNEED) };
        }
    }
}

impl Mapped {
    /// Runs `f`, which touches the mapped bytes `off..off+len` and nothing else mapped, under
    /// the fault guard; a page that failed now or before makes it `EIO`.
    fn guarded<R>(&self, off: usize, len: usize, what: &str, f: impl FnOnce() -> R) -> io::Result<R> {
        if self.any_failed.load(Ordering::Acquire) {
            let pages = self.failed_pages.lock().unwrap_or_else(|p| p.into_inner());
            let first = off / PAGE * PAGE;
            if let Some(&p) = pages.range(first..off + len.max(1)).next() {
                return Err(io::Error::other(format!("{what}: page at {p:#x} of the segment failed before")));
            }
        }
        // SAFETY: `off` is inside the mapping (checked by the segment).
        let start = unsafe { self.map.as_ptr().add(off) };
        guard::access(start, len, f).map_err(|fault: Fault| {
            let page = fault.page_offset(self.map.as_ptr());
            self.failed_pages.lock().unwrap_or_else(|p| p.into_inner()).insert(page);
            self.any_failed.store(true, Ordering::Release);
            fault.into_io(what)
        })
    }
}

impl SegmentIo for Mapped {
    fn read_at(&self, off: usize, buf: &mut [u8]) -> io::Result<()> {
        self.prefetch_read(off, buf.len());
        self.guarded(off, buf.len(), "reading a segment", || {
            // SAFETY: the segment checked that `off..off+len` lies inside the segment, which
            // is mapped whole; the source is the mapping and the destination a caller's
            // buffer, so they cannot overlap. A page that cannot be read is the guard's.
            unsafe { std::ptr::copy_nonoverlapping(self.map.as_ptr().add(off), buf.as_mut_ptr(), buf.len()) }
        })
    }

    fn write_at(&self, off: usize, data: &[u8]) -> io::Result<()> {
        if !self.map_writes {
            // Into the same page-cache pages the mapping shows, without faulting them: a fault
            // on a new block makes the kernel zero the page before the copy overwrites it, and
            // a page written back since its last store is write-protected in the mapping, so
            // the next store through it faults again (`page_mkwrite`, a journal handle of the
            // host). Measured (docs/design.md, "Writes"): 1 MiB writes about 1.3x the rate,
            // 4 KiB random writes with an fsync after each 1.5x, with one every 32 writes 4.8x;
            // only small writes never synced are faster through the mapping (about 1.2x).
            return self.file.write_all_at(data, off as u64);
        }
        self.prefetch(off, data.len());
        self.guarded(off, data.len(), "writing a segment", || {
            // SAFETY: in bounds (checked by the segment); the destination is mapped writable
            // (map_raw maps read-write) and cannot overlap a caller's slice that is not itself
            // in this mapping (the store never writes from one mapping range into another).
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(off), data.len()) }
        })
    }

    fn zero(&self, off: usize, len: usize) -> io::Result<()> {
        self.guarded(off, len, "zeroing a segment", || {
            // SAFETY: in bounds (checked by the segment), and the mapping is writable.
            unsafe { std::ptr::write_bytes(self.map.as_mut_ptr().add(off), 0, len) }
        })
    }

    unsafe fn slice(&self, off: usize, len: usize) -> io::Result<Option<&[u8]>> {
        self.prefetch_read(off, len);
        // The kernel copies the lent bytes into the reply inside writev(2) on /dev/fuse, where
        // a page it cannot read is EFAULT: the client gets an error but the store would never
        // learn of it. So every page is touched here first, under the guard: a bad page fails
        // this read (and the store) instead, and the kernel's copy finds the pages resident.
        let base = self.map.as_ptr();
        self.guarded(off, len, "reading a segment", || {
            let mut at = off;
            while at < off + len {
                // SAFETY: in bounds (checked by the segment); a volatile load so it is made.
                unsafe { std::ptr::read_volatile(base.add(at)) };
                at = (at / PAGE + 1) * PAGE;
            }
        })?;
        // SAFETY: in bounds (checked by the segment); freedom from concurrent writes is the
        // caller's contract.
        Ok(Some(unsafe { std::slice::from_raw_parts(base.add(off), len) }))
    }

    fn sync_range(&self, off: usize, len: usize) -> io::Result<()> {
        self.map.flush_range(off, len)
    }

    fn syncs_whole_file(&self) -> bool {
        false
    }

    fn resident(&self) -> Option<u64> {
        let mut vec = vec![0u8; self.len.div_ceil(PAGE)];
        // SAFETY: the mapping is live for `len` bytes; `vec` has one byte per page of it.
        let rc = unsafe { libc::mincore(self.map.as_mut_ptr().cast(), self.len, vec.as_mut_ptr()) };
        (rc == 0).then(|| vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * PAGE as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `f` in `from..to` in the page cache, read in or on their way (cachestat: a
    /// page whose read-ahead was started counts at once, so nothing here waits for the disk).
    fn cached(f: &File, from: usize, to: usize) -> u64 {
        crate::store::inspect::cachestat(f, from as u64, (to - from) as u64).expect("cachestat (Linux 6.5)").nr_cache
    }

    #[test]
    fn a_stream_of_reads_is_read_ahead_and_a_jump_is_not() {
        const MIB: usize = 1 << 20;
        let len = 32 * MIB;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000000.seg");
        let file = Arc::new(File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap());
        file.write_all_at(&vec![1u8; len], 0).unwrap();
        file.sync_all().unwrap();
        // SAFETY: a plain syscall on our own file; the pages are clean, so they are dropped.
        assert_eq!(unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) }, 0);
        if cached(&file, 0, len) > 0 {
            eprintln!("skipped: this filesystem keeps the pages cached after POSIX_FADV_DONTNEED");
            return;
        }
        let t = Tuning::default();
        assert_eq!(t.advice, Advice::Random, "the default advice prefetches");
        let io = super::super::Engine::open(&Engine::new(&t), SegmentFile { file: &file, path: &path, index: 0, len })
            .unwrap();
        let mut buf = vec![0u8; MIB];
        let pages = |n: usize| (n / PAGE) as u64;
        // The first read of a stream reads its own range only.
        io.read_at(0, &mut buf).unwrap();
        assert_eq!((cached(&file, 0, MIB), cached(&file, MIB, len)), (pages(MIB), 0));
        // Its continuation reads READ_AHEAD beyond itself, and no further.
        io.read_at(MIB, &mut buf).unwrap();
        let ahead = 2 * MIB + READ_AHEAD;
        assert_eq!((cached(&file, 0, ahead), cached(&file, ahead, len)), (pages(ahead), 0), "read ahead");
        // A read elsewhere is no stream: only its own pages.
        io.read_at(20 * MIB, &mut buf).unwrap();
        assert_eq!(cached(&file, 20 * MIB, 21 * MIB), pages(MIB));
        assert_eq!(cached(&file, 21 * MIB, len), 0, "a jump reads nothing ahead");
        assert!(buf.iter().all(|&b| b == 1));
    }
}
