//! One fixed-size segment file mapped `MAP_SHARED`: the only home of the mapping `unsafe`.
//!
//! A segment is created at its full size (space reserved with `fallocate`) before it is
//! mapped, and never shrunk while mapped, so no access inside `0..len` can raise `SIGBUS`.
//! Everything outside this module sees bounds-checked copies and one borrowing accessor whose
//! soundness contract is spelled out on it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use memmap2::{MmapOptions, MmapRaw};

/// A mapped segment file.
pub(crate) struct Segment {
    file: File,
    map: MmapRaw,
    len: usize,
}

impl Segment {
    /// Creates the segment file at `path` with `len` bytes reserved on disk, durably
    /// (written to `path.tmp`, synced, renamed, directory synced), then maps it.
    pub(crate) fn create(path: &Path, len: usize) -> io::Result<Segment> {
        let tmp = path.with_extension("seg.tmp");
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
        reserve(&file, len)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Self::map(file, len)
    }

    /// Opens an existing segment file, which must be exactly `len` bytes long.
    pub(crate) fn open(path: &Path, len: usize) -> io::Result<Segment> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let actual = file.metadata()?.len();
        if actual != len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("segment {} is {actual} bytes, the superblock says {len}", path.display()),
            ));
        }
        Self::map(file, len)
    }

    fn map(file: File, len: usize) -> io::Result<Segment> {
        let map = MmapOptions::new().len(len).map_raw(&file)?;
        Ok(Segment { file, map, len })
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
    pub(crate) fn read_at(&self, off: usize, buf: &mut [u8]) {
        self.check(off, buf.len());
        // SAFETY: `check` proved `off..off+len` lies inside the live mapping; the source is
        // the mapping and the destination a caller's buffer, so they cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.as_ptr().add(off), buf.as_mut_ptr(), buf.len());
        }
    }

    /// Copies `data` into the mapping at `off`.
    pub(crate) fn write_at(&self, off: usize, data: &[u8]) {
        self.check(off, data.len());
        // SAFETY: in bounds by `check`; the destination is mapped writable (map_raw maps
        // read-write) and cannot overlap a caller's slice that is not itself in this mapping
        // (the store never writes from one mapping range into another through this call).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(off), data.len());
        }
    }

    /// Fills `len` bytes at `off` with zeros.
    pub(crate) fn zero(&self, off: usize, len: usize) {
        self.check(off, len);
        // SAFETY: in bounds by `check`, and the mapping is writable.
        unsafe { std::ptr::write_bytes(self.map.as_mut_ptr().add(off), 0, len) }
    }

    /// Borrows `len` mapped bytes at `off`, so a read can be answered without a copy.
    ///
    /// # Safety
    /// The caller must guarantee that nobody writes these bytes while the slice lives: the
    /// store hands out such slices only while it holds the owning inode's read lock, every
    /// writer of an inode's blocks holds its write lock, and no other process maps the segment
    /// files (the store lock keeps other daemons out).
    pub(crate) unsafe fn slice(&self, off: usize, len: usize) -> &[u8] {
        self.check(off, len);
        // SAFETY: in bounds by `check`; freedom from concurrent writes is the caller's contract.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(off), len) }
    }

    /// `msync(MS_SYNC)` of the pages covering `off..off+len`: returns once they are on disk.
    pub(crate) fn sync_range(&self, off: usize, len: usize) -> io::Result<()> {
        self.check(off, len);
        self.map.flush_range(off, len)
    }

    /// Gives the blocks' disk space back (punch hole); they read as zeros afterwards.
    #[allow(dead_code)]
    pub(crate) fn punch(&self, off: usize, len: usize) -> io::Result<()> {
        self.check(off, len);
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: plain syscall on an fd we own; no memory is passed.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off as i64, len as i64) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Reserves `len` bytes for `file`, so that a store into a mapping can never find the disk full.
fn reserve(file: &File, len: usize) -> io::Result<()> {
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
        let seg = Segment::create(&path, 1 << 20).unwrap();
        seg.write_at(4095, b"hello");
        let mut buf = [0u8; 7];
        seg.read_at(4094, &mut buf);
        assert_eq!(&buf, b"\0hello\0");
        seg.sync_range(4095, 5).unwrap();
        seg.zero(4096, 2);
        drop(seg);
        let seg = Segment::open(&path, 1 << 20).unwrap();
        // SAFETY: single-threaded test, nobody writes the mapping.
        assert_eq!(unsafe { seg.slice(4095, 5) }, b"h\0\0lo");
        assert!(Segment::open(&path, 1 << 21).is_err());
    }
}
