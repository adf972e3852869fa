//! Which byte ranges of a file hold host space, and where on the device (`FS_IOC_FIEMAP`):
//! what fsck needs to say how much free space a store still holds on the host (`SEEK_DATA`
//! cannot tell: on ext4 it calls fallocated-but-unwritten extents holes, though they use
//! space), and what the media-error tests need to fail a segment's data blocks.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

/// `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
/// `fe_flags`: the file's last extent.
const FIEMAP_EXTENT_LAST: u32 = 0x1;
/// `fe_flags` that say the extent's blocks are not plainly written in place: location not
/// known yet (UNKNOWN 0x2, DELALLOC 0x4), encoded or inline (0x8, 0x100, 0x200), unwritten
/// (0x800, preallocated: the first write converts it, a metadata change) or shared with another
/// file (0x2000: a write copies it).
const NOT_WRITTEN: u32 = 0x2 | 0x4 | 0x8 | 0x100 | 0x200 | 0x800 | 0x2000;
/// Extents asked for per call.
const BATCH: usize = 128;

/// `struct fiemap` with room for [`BATCH`] extents (linux/fiemap.h).
#[repr(C)]
struct Request {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [Extent; BATCH],
}

/// `struct fiemap_extent`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Extent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

/// The ranges `(offset, length)` of `file` that hold host space, in order (written and
/// unwritten extents alike).
pub fn allocated(file: &File) -> io::Result<Vec<(u64, u64)>> {
    Ok(extents(file)?.into_iter().map(|e| (e.logical, e.length)).collect())
}

/// Where the file's bytes lie on the device: `(file offset, device offset, length)`.
pub fn extents(file: &File) -> io::Result<Vec<Placed>> {
    let mut out = Vec::new();
    let mut at = 0u64;
    loop {
        let empty = Extent { logical: 0, physical: 0, length: 0, reserved64: [0; 2], flags: 0, reserved: [0; 3] };
        let mut req = Request {
            start: at,
            length: u64::MAX - at,
            flags: 0,
            mapped_extents: 0,
            extent_count: BATCH as u32,
            reserved: 0,
            extents: [empty; BATCH],
        };
        // SAFETY: `req` is a `struct fiemap` followed by room for `extent_count` extents, as
        // the ioctl requires; the kernel writes only inside it.
        if unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut req as *mut Request) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let got = &req.extents[..(req.mapped_extents as usize).min(BATCH)];
        for e in got {
            out.push(Placed { logical: e.logical, physical: e.physical, length: e.length, flags: e.flags });
        }
        match got.last() {
            Some(e) if e.flags & FIEMAP_EXTENT_LAST == 0 && e.length > 0 => at = e.logical + e.length,
            _ => return Ok(out),
        }
    }
}

/// One extent of a file: its offset in the file and on the device, and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    /// `fe_flags` (linux/fiemap.h).
    pub flags: u32,
}

impl Placed {
    /// True if the extent's blocks are written and overwritten in place: a write there
    /// changes no metadata of the host filesystem.
    pub fn written(&self) -> bool {
        self.flags & NOT_WRITTEN == 0
    }
}

/// Bytes of `ranges` (sorted `(offset, length)`) that lie inside `within` (sorted, disjoint).
pub(crate) fn overlap(ranges: &[(u64, u64)], within: &[(u64, u64)]) -> u64 {
    let mut total = 0;
    let mut j = 0;
    for &(off, len) in ranges {
        while j < within.len() && within[j].0 + within[j].1 <= off {
            j += 1;
        }
        let mut k = j;
        while k < within.len() && within[k].0 < off + len {
            let (a, b) = (off.max(within[k].0), (off + len).min(within[k].0 + within[k].1));
            total += b.saturating_sub(a);
            k += 1;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_punched_and_space_reserved_are_told_apart() {
        let d = tempfile::tempdir().unwrap();
        let f = File::options().read(true).write(true).create(true).truncate(true).open(d.path().join("f")).unwrap();
        // SAFETY: plain syscalls on an fd we own.
        unsafe {
            assert_eq!(libc::fallocate(f.as_raw_fd(), 0, 0, 8 << 20), 0);
            let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            assert_eq!(libc::fallocate(f.as_raw_fd(), punch, 1 << 20, 2 << 20), 0);
        }
        let held = allocated(&f).unwrap();
        let bytes: u64 = held.iter().map(|e| e.1).sum();
        assert_eq!(bytes, 6 << 20, "{held:?}");
        assert_eq!(overlap(&held, &[(0, 4 << 20)]), 2 << 20);
        assert_eq!(overlap(&held, &[(1 << 20, 2 << 20)]), 0, "the punched hole holds nothing");
        assert_eq!(overlap(&held, &[(0, 1 << 20), (3 << 20, 1 << 20), (7 << 20, 4 << 20)]), 3 << 20);
    }
}
