//! One fixed-size segment file: its bounds, its host space (reserved at creation, punched and
//! reserved again), the settled bits that let fsync skip metadata commits, and its data path,
//! which is the backend's (`backend/`), chosen once when the store is opened.
//!
//! A segment is created at its full size (space reserved with `fallocate`, durably renamed
//! into place) and never shrunk while the store is open. Every access is checked against the
//! segment's bounds here, so a backend only ever sees ranges inside its file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::backend::{Engine, SegmentFile, SegmentIo};
use super::faults::{self, Point};
use super::files;

/// A segment file and its data path.
pub(crate) struct Segment {
    /// Opened read-write, without `O_DIRECT`: host space and writeback go through it.
    file: Arc<File>,
    io: Box<dyn SegmentIo>,
    len: usize,
    /// One bit per 4 KiB: written on disk, and that allocation committed (see
    /// `Store::fsync`). Starts clear; the mount marks what FIEMAP calls written once the host
    /// has committed it ([`Segment::settle_written`]), and fsync what it commits. A settled
    /// block stays written until [`Segment::punch`] gives it back, which clears it (and
    /// `Store::fsync` marks nothing settled across a punch, see `Store::punches`).
    settled: Box<[AtomicU64]>,
}

/// The page (and ext4/XFS block) size: granularity of the settled bits.
const PAGE: usize = 4096;

impl Segment {
    /// Creates segment `index` at `path` with `len` bytes reserved on disk, durably (written
    /// to `path.tmp`, synced, renamed, directory synced), then opens it with `engine`.
    pub(crate) fn create(path: &Path, len: usize, index: u32, engine: &dyn Engine) -> io::Result<Segment> {
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
        Self::with(file, path, len, index, engine)
    }

    /// Opens segment `index`, whose file must be exactly `len` bytes long.
    pub(crate) fn open(path: &Path, len: usize, index: u32, engine: &dyn Engine) -> io::Result<Segment> {
        let file = files::open(path, OpenOptions::new().read(true).write(true))?;
        let actual = file.metadata()?.len();
        if actual != len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("segment {} is {actual} bytes, the superblock says {len}", path.display()),
            ));
        }
        Self::with(file, path, len, index, engine)
    }

    fn with(file: File, path: &Path, len: usize, index: u32, engine: &dyn Engine) -> io::Result<Segment> {
        let file = Arc::new(file);
        let io = engine.open(SegmentFile { file: &file, path, index, len })?;
        Ok(Segment { file, io, len, settled: settled_bits(len) })
    }

    /// Bytes of this segment held in memory (page cache or pool); `None` if the backend
    /// cannot tell.
    pub(crate) fn resident(&self) -> Option<u64> {
        self.io.resident()
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

    /// Copies `buf.len()` bytes at `off` out of the segment.
    pub(crate) fn read_at(&self, off: usize, buf: &mut [u8]) -> io::Result<()> {
        self.check(off, buf.len());
        self.io.read_at(off, buf)
    }

    /// Copies `data` into the segment at `off`.
    pub(crate) fn write_at(&self, off: usize, data: &[u8]) -> io::Result<()> {
        self.check(off, data.len());
        self.io.write_at(off, data)
    }

    /// Fills `len` bytes at `off` with zeros.
    pub(crate) fn zero(&self, off: usize, len: usize) -> io::Result<()> {
        self.check(off, len);
        self.io.zero(off, len)
    }

    /// Borrows `len` bytes at `off`, so a read can be answered without a copy; `None` when
    /// the backend has no mapping to lend.
    ///
    /// # Safety
    /// The caller must guarantee that nobody writes these bytes while the slice lives: the
    /// store hands out such slices only while it holds the owning inode's read lock, every
    /// writer of an inode's blocks holds its write lock, and no other process maps the segment
    /// files (the store lock keeps other daemons out).
    pub(crate) unsafe fn slice(&self, off: usize, len: usize) -> io::Result<Option<&[u8]>> {
        self.check(off, len);
        // SAFETY: in bounds by `check`; freedom from concurrent writes is our caller's contract.
        unsafe { self.io.slice(off, len) }
    }

    /// Makes `off..off+len` durable: `msync(MS_SYNC)` of exactly those pages with a mapping,
    /// `fdatasync` of the file otherwise (no range-limited equivalent exists).
    pub(crate) fn sync_range(&self, off: usize, len: usize) -> io::Result<()> {
        self.check(off, len);
        faults::check(Point::Msync)?;
        self.io.sync_range(off, len)?;
        self.intact()
    }

    /// Fails if the segment file is no longer of its size: one cut short from outside has
    /// lost data that was acknowledged (and a pwrite past the cut would even grow it back),
    /// so no sync may report success on it.
    pub(crate) fn intact(&self) -> io::Result<()> {
        let size = self.file.metadata()?.len();
        if size != self.len as u64 {
            return Err(io::Error::other(format!(
                "the segment file is {size} bytes, not {}: it was changed from outside",
                self.len
            )));
        }
        Ok(())
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
        if !self.io.uses_page_cache() {
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

    /// Marks settled every block the host says is written in place (FIEMAP), for a mount
    /// whose host filesystem has committed everything of this file (a clean close synced it,
    /// or the mount's syncfs did). Returns the bytes marked; a host without FIEMAP marks none.
    pub(crate) fn settle_written(&self) -> u64 {
        let Ok(extents) = super::fiemap::extents(&self.file) else { return 0 };
        let mut marked = 0;
        for e in extents.iter().filter(|e| e.written()) {
            let start = (e.logical as usize).div_ceil(PAGE) * PAGE;
            let end = ((e.logical + e.length) as usize).min(self.len) / PAGE * PAGE;
            if end > start {
                self.mark_settled(start, end - start);
                marked += (end - start) as u64;
            }
        }
        marked
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
    /// Its cached pages are dropped, so nothing may use the range until [`reserve`](Self::reserve).
    pub(crate) fn punch(&self, off: usize, len: usize) -> io::Result<()> {
        self.check(off, len);
        // Punched blocks are no longer written on disk: not settled any more (see `settled`).
        for u in units(off, len) {
            self.settled[u / 64].fetch_and(!(1 << (u % 64)), Ordering::Release);
        }
        self.io.forget(off, len);
        self.fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off, len)
    }

    /// Reserves host space for `off..off+len` again (`fallocate` mode 0), so a store through
    /// a mapping cannot fault on a block the host has no room for (a SIGBUS in the daemon).
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

    /// True when syncing any range syncs the whole file (`fdatasync` backends).
    pub(crate) fn syncs_whole_file(&self) -> bool {
        self.io.syncs_whole_file()
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
    use crate::store::backend::{Backend, Tuning, engine};

    #[test]
    fn create_write_read_sync_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000000.seg");
        for backend in [Backend::Mmap, Backend::Pread, Backend::Direct, Backend::Vm] {
            let t = Tuning { backend, pool_size: 0, ..Tuning::default() };
            let _ = std::fs::remove_file(&path);
            let seg = Segment::create(&path, 1 << 20, 0, &*engine(&t, 1, 1 << 20).unwrap()).unwrap();
            seg.write_at(4095, b"hello").unwrap();
            let mut buf = [0u8; 7];
            seg.read_at(4094, &mut buf).unwrap();
            assert_eq!(&buf, b"\0hello\0");
            seg.sync_range(4095, 5).unwrap();
            seg.zero(4096, 2).unwrap();
            drop(seg);
            // A new engine (and pool): what is read back comes from the file.
            let p = &*engine(&t, 1, 1 << 20).unwrap();
            let seg = Segment::open(&path, 1 << 20, 0, p).unwrap();
            seg.read_at(4095, &mut buf[..5]).unwrap();
            assert_eq!(&buf[..5], b"h\0\0lo");
            // SAFETY: single-threaded test, nobody writes the mapping.
            assert_eq!(unsafe { seg.slice(4095, 5) }.unwrap().is_some(), backend == Backend::Mmap);
            assert_eq!(seg.resident().is_some(), backend != Backend::Pread);
            assert!(!seg.settled(0, 1), "nothing is settled in a segment just opened");
            seg.mark_settled(4096, 8192);
            assert!(seg.settled(4096, 8192) && seg.settled(5000, 10) && seg.settled(12287, 1));
            assert!(!seg.settled(4095, 2) && !seg.settled(8192, 4097) && !seg.settled(0, 4096));
            assert!(Segment::open(&path, 1 << 21, 0, p).is_err());
        }
    }
}
