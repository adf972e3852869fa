//! One fixed-size segment file mapped `MAP_SHARED`: the only home of the mapping `unsafe`.
//!
//! A segment is created at its full size (space reserved with `fallocate`) before it is
//! mapped, and never shrunk while mapped, so no access inside `0..len` can raise `SIGBUS`.
//! Everything outside this module sees bounds-checked copies and one borrowing accessor whose
//! soundness contract is spelled out on it. With the `pread` backend the file is not mapped
//! at all and the same copies go through `pread`/`pwrite` (the buffer-management comparison).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use super::faults::{self, Point};
use super::files;

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

impl Advice {
    fn madvise(self) -> memmap2::Advice {
        match self {
            Advice::Normal => memmap2::Advice::Normal,
            Advice::Random => memmap2::Advice::Random,
            Advice::Sequential => memmap2::Advice::Sequential,
            Advice::Willneed => memmap2::Advice::WillNeed,
            Advice::Hugepage => memmap2::Advice::HugePage,
        }
    }
}

/// How segments are mapped and reached. Default: mmap backend, `MADV_RANDOM` with the
/// daemon's own read-ahead (see [`Segment::prefetch`]), no populate.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    pub backend: Backend,
    /// `madvise` applied to every mapping.
    pub advice: Advice,
    /// Pre-fault every mapping (`MAP_POPULATE`).
    pub populate: bool,
    /// Copy writes of two pages or more through the mapping too (by default they are
    /// written with `pwrite` into the same page cache: see [`Segment::write_at`]).
    pub map_writes: bool,
    /// Bytes of the `direct` backend's buffer pool.
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

/// A segment file, mapped unless the backend is `pread`.
pub(crate) struct Segment {
    file: File,
    map: Option<MmapRaw>,
    len: usize,
    /// Read ahead exactly the ranges the daemon touches (with `MADV_RANDOM`, which turns the
    /// kernel's fault read-around off).
    prefetch: bool,
    /// [`Tuning::map_writes`].
    map_writes: bool,
    /// Set with the `direct` backend.
    direct: Option<Direct>,
    /// One bit per 4 KiB: written on disk, and that allocation committed, since this mount
    /// (see `Store::fsync`). Starts clear: nothing is assumed about a store just opened. A
    /// settled block stays written until [`Segment::punch`] gives it back, which clears it
    /// (and `Store::fsync` marks nothing settled across a punch, see `Store::punches`).
    settled: Box<[AtomicU64]>,
}

/// The page (and ext4/XFS block) size: granularity of the settled bits and of read-ahead.
const PAGE: usize = 4096;

/// The `direct` backend's default pool: an eighth of the machine's memory.
pub fn default_pool_size() -> u64 {
    // SAFETY: sysconf has no memory arguments.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    (pages.max(0) as u64 * 4096 / 8).max((super::pool::MIN_FRAMES * super::pool::FRAME) as u64)
}

/// The `direct` backend's pool and this segment's index in it (`None` for the other backends).
pub(crate) type PoolSlot<'a> = Option<(&'a std::sync::Arc<super::pool::Pool>, u32)>;

/// A segment of the `direct` backend: its pages live in the store's pool.
pub(crate) struct Direct {
    pub pool: std::sync::Arc<super::pool::Pool>,
    /// The segment's index (its pages' key in the pool).
    pub seg: u32,
    /// The segment file opened with `O_DIRECT`.
    pub file: File,
}

impl Segment {
    /// Creates the segment file at `path` with `len` bytes reserved on disk, durably
    /// (written to `path.tmp`, synced, renamed, directory synced), then maps it.
    pub(crate) fn create(path: &Path, len: usize, t: &Tuning, pool: PoolSlot<'_>) -> io::Result<Segment> {
        let tmp = path.with_extension("seg.tmp");
        let made = (|| -> io::Result<File> {
            faults::check(Point::SegmentCreate)?;
            let file = files::open(&tmp, OpenOptions::new().read(true).write(true).create(true).truncate(true))?;
            reserve_file(&file, len)?;
            file.sync_all()?;
            Ok(file)
        })();
        // A failed creation leaves nothing behind: no half-reserved file holding host space.
        let file = made.inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Self::map(file, path, len, t, pool)
    }

    /// Opens an existing segment file, which must be exactly `len` bytes long.
    pub(crate) fn open(path: &Path, len: usize, t: &Tuning, pool: PoolSlot<'_>) -> io::Result<Segment> {
        let file = files::open(path, OpenOptions::new().read(true).write(true))?;
        let actual = file.metadata()?.len();
        if actual != len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("segment {} is {actual} bytes, the superblock says {len}", path.display()),
            ));
        }
        Self::map(file, path, len, t, pool)
    }

    fn map(file: File, path: &Path, len: usize, t: &Tuning, pool: PoolSlot<'_>) -> io::Result<Segment> {
        if t.backend != Backend::Mmap {
            let direct = match (t.backend, pool) {
                (Backend::Direct, Some((pool, seg))) => Some(Direct {
                    pool: pool.clone(),
                    seg,
                    file: files::open(path, OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT))?,
                }),
                (Backend::Direct, None) => return Err(io::Error::other("the direct backend needs a pool")),
                _ => None,
            };
            return Ok(Segment {
                file,
                map: None,
                len,
                prefetch: false,
                map_writes: false,
                direct,
                settled: settled_bits(len),
            });
        }
        let mut o = MmapOptions::new();
        o.len(len);
        if t.populate {
            o.populate();
        }
        let map = o.map_raw(&file)?;
        if let Err(e) = map.advise(t.advice.madvise()) {
            log::warn!("madvise({:?}) on a segment failed: {e}", t.advice);
        }
        let prefetch = t.advice == Advice::Random;
        Ok(Segment {
            file,
            map: Some(map),
            len,
            prefetch,
            map_writes: t.map_writes,
            direct: None,
            settled: settled_bits(len),
        })
    }

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
        if self.prefetch && off / PAGE != (off + len.max(1) - 1) / PAGE {
            // SAFETY: a plain syscall on an fd we own; no memory is passed. A failure only
            // loses the read-ahead, so its result is ignored.
            unsafe { libc::posix_fadvise(self.file.as_raw_fd(), off as i64, len as i64, libc::POSIX_FADV_WILLNEED) };
        }
    }

    /// Bytes of this segment in the page cache (`mincore`); `None` without a mapping.
    pub(crate) fn resident(&self) -> Option<u64> {
        if let Some(d) = &self.direct {
            return Some(d.pool.resident(d.seg) * super::pool::FRAME as u64);
        }
        let map = self.map.as_ref()?;
        let page = super::superblock::page_size() as usize;
        let mut vec = vec![0u8; self.len.div_ceil(page)];
        // SAFETY: the mapping is live for `len` bytes; `vec` has one byte per page of it.
        let rc = unsafe { libc::mincore(map.as_mut_ptr().cast(), self.len, vec.as_mut_ptr()) };
        (rc == 0).then(|| vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * page as u64)
    }

    fn check(&self, off: usize, len: usize) {
        // Callers compute offsets from extents that the allocator keeps inside the segment;
        // a violation is a bug in the store, and continuing would corrupt other files.
        assert!(
            off.checked_add(len).is_some_and(|end| end <= self.len),
            "segment access {off}+{len} outside {}",
            self.len
        );
    }

    /// Copies `buf.len()` bytes at `off` out of the mapping.
    pub(crate) fn read_at(&self, off: usize, buf: &mut [u8]) -> io::Result<()> {
        self.check(off, buf.len());
        if let Some(d) = &self.direct {
            return d.pool.read(&d.file, d.seg, off, buf);
        }
        let Some(map) = &self.map else { return self.file.read_exact_at(buf, off as u64) };
        self.prefetch(off, buf.len());
        // SAFETY: `check` proved `off..off+len` lies inside the live mapping; the source is
        // the mapping and the destination a caller's buffer, so they cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(map.as_ptr().add(off), buf.as_mut_ptr(), buf.len());
        }
        Ok(())
    }

    /// Copies `data` into the mapping at `off`.
    pub(crate) fn write_at(&self, off: usize, data: &[u8]) -> io::Result<()> {
        self.check(off, data.len());
        if let Some(d) = &self.direct {
            return d.pool.write(&d.file, d.seg, off, Some(data), data.len());
        }
        let Some(map) = &self.map else { return self.file.write_all_at(data, off as u64) };
        if !self.map_writes && data.len() >= 2 * PAGE {
            // Into the same page-cache pages the mapping shows, without faulting them in one
            // by one: a fault on a new block makes the kernel zero the page before the copy
            // overwrites it, and dirtying through the mapping costs msync write-protect
            // work. Measured on 1 MiB writes: about 1.3x the write rate, fsync 0.29 s instead
            // of 0.40 s per GiB (docs/benchmarks.md). Small writes stay on the mapping.
            return self.file.write_all_at(data, off as u64);
        }
        self.prefetch(off, data.len());
        // SAFETY: in bounds by `check`; the destination is mapped writable (map_raw maps
        // read-write) and cannot overlap a caller's slice that is not itself in this mapping
        // (the store never writes from one mapping range into another through this call).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), map.as_mut_ptr().add(off), data.len());
        }
        Ok(())
    }

    /// Fills `len` bytes at `off` with zeros.
    pub(crate) fn zero(&self, off: usize, len: usize) -> io::Result<()> {
        self.check(off, len);
        if let Some(d) = &self.direct {
            return d.pool.write(&d.file, d.seg, off, None, len);
        }
        let Some(map) = &self.map else {
            const ZEROS: [u8; 4096] = [0; 4096];
            let mut at = off;
            while at < off + len {
                let n = (off + len - at).min(ZEROS.len());
                self.file.write_all_at(&ZEROS[..n], at as u64)?;
                at += n;
            }
            return Ok(());
        };
        // SAFETY: in bounds by `check`, and the mapping is writable.
        unsafe { std::ptr::write_bytes(map.as_mut_ptr().add(off), 0, len) }
        Ok(())
    }

    /// Borrows `len` mapped bytes at `off`, so a read can be answered without a copy.
    ///
    /// # Safety
    /// The caller must guarantee that nobody writes these bytes while the slice lives: the
    /// store hands out such slices only while it holds the owning inode's read lock, every
    /// writer of an inode's blocks holds its write lock, and no other process maps the segment
    /// files (the store lock keeps other daemons out).
    /// `None` with the pread backend, which has no mapping to lend.
    pub(crate) unsafe fn slice(&self, off: usize, len: usize) -> Option<&[u8]> {
        self.check(off, len);
        let map = self.map.as_ref()?;
        self.prefetch(off, len);
        // SAFETY: in bounds by `check`; freedom from concurrent writes is the caller's contract.
        Some(unsafe { std::slice::from_raw_parts(map.as_ptr().add(off), len) })
    }

    /// Makes `off..off+len` durable: `msync(MS_SYNC)` of exactly those pages with a mapping,
    /// `fdatasync` of the file with the pread backend (no range-limited equivalent exists).
    pub(crate) fn sync_range(&self, off: usize, len: usize) -> io::Result<()> {
        self.check(off, len);
        faults::check(Point::Msync)?;
        match &self.map {
            Some(map) => map.flush_range(off, len),
            None => self.file.sync_data(),
        }
    }

    /// Starts writeback of `off..off+len` (`sync_file_range(WRITE)`): no waiting, no journal
    /// commit, no device cache flush. Durable only after `wait_written` and a `sync_range` of
    /// this same file (see `Store::fsync`).
    pub(crate) fn start_writeback(&self, off: usize, len: usize) -> io::Result<()> {
        self.sync_file_range(off, len, libc::SYNC_FILE_RANGE_WRITE)
    }

    /// Waits for the writeback already started in `off..off+len`, starting none itself.
    pub(crate) fn wait_written(&self, off: usize, len: usize) -> io::Result<()> {
        self.sync_file_range(off, len, libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WAIT_AFTER)
    }

    fn sync_file_range(&self, off: usize, len: usize, flags: libc::c_uint) -> io::Result<()> {
        self.check(off, len);
        if self.direct.is_some() {
            return Ok(()); // written through: nothing in the page cache to write back
        }
        // SAFETY: a plain syscall on an fd we own; no memory is passed.
        let rc = unsafe { libc::sync_file_range(self.file.as_raw_fd(), off as i64, len as i64, flags) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// True when every byte of `off..off+len` lies in units marked settled: making new data
    /// there durable needs its writeback and a device cache flush, no metadata commit.
    pub(crate) fn settled(&self, off: usize, len: usize) -> bool {
        self.check(off, len);
        units(off, len).all(|u| self.settled[u / 64].load(Ordering::Acquire) & (1 << (u % 64)) != 0)
    }

    /// Records that `off..off+len` was written and committed by a `sync_range` of this file.
    pub(crate) fn mark_settled(&self, off: usize, len: usize) {
        self.check(off, len);
        for u in units(off, len) {
            self.settled[u / 64].fetch_or(1 << (u % 64), Ordering::Release);
        }
    }

    /// Gives the host space of `off..off+len` (free blocks) back to the host filesystem
    /// (`FALLOC_FL_PUNCH_HOLE`); the range reads zero until it is reserved and written again.
    /// Its pages leave the mapping, so nothing may use the range until [`reserve`](Self::reserve).
    pub(crate) fn punch(&self, off: usize, len: usize) -> io::Result<()> {
        self.check(off, len);
        // Punched blocks are no longer written on disk: not settled any more (see `settled`).
        for u in units(off, len) {
            self.settled[u / 64].fetch_and(!(1 << (u % 64)), Ordering::Release);
        }
        if let Some(d) = &self.direct {
            d.pool.forget(d.seg, off, len);
        }
        self.fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off, len)
    }

    /// Reserves host space for `off..off+len` again (`fallocate` mode 0), so a store through
    /// the mapping cannot fault on a block the host has no room for (a SIGBUS in the daemon).
    pub(crate) fn reserve(&self, off: usize, len: usize) -> io::Result<()> {
        self.check(off, len);
        self.fallocate(0, off, len)
    }

    fn fallocate(&self, mode: libc::c_int, off: usize, len: usize) -> io::Result<()> {
        // SAFETY: a plain syscall on an fd we own; no memory is passed.
        if unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off as i64, len as i64) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// True when syncing any range syncs the whole file (pread backend).
    pub(crate) fn syncs_whole_file(&self) -> bool {
        self.map.is_none()
    }
}

fn settled_bits(len: usize) -> Box<[AtomicU64]> {
    (0..len.div_ceil(PAGE * 64)).map(|_| AtomicU64::new(0)).collect()
}

/// The settle units `off..off+len` touches.
fn units(off: usize, len: usize) -> std::ops::Range<usize> {
    if len == 0 {
        return 0..0;
    }
    off / PAGE..(off + len).div_ceil(PAGE)
}

/// Reserves `len` bytes for `file`, so that a store into a mapping can never find the disk full.
fn reserve_file(file: &File, len: usize) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we own; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as i64) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
        // Filesystems without fallocate: size the file; stores may then SIGBUS on a full disk.
        log::warn!("fallocate unsupported here; segment space is not reserved");
        return file.set_len(len as u64);
    }
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_write_read_sync_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000000.seg");
        let pool = std::sync::Arc::new(super::super::pool::Pool::new(0, 1).unwrap());
        for backend in [Backend::Mmap, Backend::Pread, Backend::Direct] {
            let t = Tuning { backend, ..Tuning::default() };
            let p = (backend == Backend::Direct).then_some((&pool, 0));
            let _ = std::fs::remove_file(&path);
            let seg = Segment::create(&path, 1 << 20, &t, p).unwrap();
            seg.write_at(4095, b"hello").unwrap();
            let mut buf = [0u8; 7];
            seg.read_at(4094, &mut buf).unwrap();
            assert_eq!(&buf, b"\0hello\0");
            seg.sync_range(4095, 5).unwrap();
            seg.zero(4096, 2).unwrap();
            drop(seg);
            pool.forget(0, 0, 1 << 20);
            let seg = Segment::open(&path, 1 << 20, &t, p).unwrap();
            seg.read_at(4095, &mut buf[..5]).unwrap();
            assert_eq!(&buf[..5], b"h\0\0lo");
            // SAFETY: single-threaded test, nobody writes the mapping.
            assert_eq!(unsafe { seg.slice(4095, 5) }.is_some(), backend == Backend::Mmap);
            assert_eq!(seg.resident().is_some(), backend != Backend::Pread);
            assert!(!seg.settled(0, 1), "nothing is settled in a segment just opened");
            seg.mark_settled(4096, 8192);
            assert!(seg.settled(4096, 8192) && seg.settled(5000, 10) && seg.settled(12287, 1));
            assert!(!seg.settled(4095, 2) && !seg.settled(8192, 4097) && !seg.settled(0, 4096));
            assert!(Segment::open(&path, 1 << 21, &t, p).is_err());
        }
    }
}
