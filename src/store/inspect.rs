//! `mmapfs inspect`: where a store's bytes are — each segment's fill and free-space
//! fragmentation, a file's extents — and how much of them the page cache holds (resident,
//! dirty). The metadata is read from the store's files exactly as `fsck` reads them, which
//! also works while the store is mounted (every change is journaled before it is answered);
//! residency comes from the segment files' page cache, the memory the daemon's mappings show
//! (`mincore` on a read-only mapping of our own, `cachestat` for dirty pages, Linux 6.5+).

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::meta::Ino;
use super::open::load;
use super::rd;

/// What a block of a segment holds, as the map draws it (in increasing priority).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BlockState {
    Free,
    Used,
    /// Used, and in the page cache.
    Resident,
    /// Used, and modified in the page cache since it was last written back.
    Dirty,
}

pub struct SegmentView {
    pub index: u64,
    pub used_blocks: u64,
    pub free_blocks: u64,
    /// Free runs and the longest of them (blocks): how fragmented the free space is.
    pub free_runs: u64,
    pub largest_free_run: u64,
    /// Used blocks in the page cache, and of those the dirty ones (`None`: no `cachestat`).
    pub resident_blocks: u64,
    pub dirty_blocks: Option<u64>,
    /// One state per block.
    pub blocks: Vec<BlockState>,
}

pub struct ExtentView {
    /// Offset in the file, segment, offset in the segment, length: bytes.
    pub logical: u64,
    pub segment: u64,
    pub offset: u64,
    pub len: u64,
    pub resident: u64,
}

pub struct FileView {
    pub ino: Ino,
    pub size: u64,
    pub extents: Vec<ExtentView>,
}

pub struct Inspection {
    pub block_size: u64,
    pub segment_size: u64,
    pub inodes: u64,
    pub segments: Vec<SegmentView>,
    pub file: Option<FileView>,
}

/// Reads the layout of the store in `dir`, and of inode `ino` if given; the error says why not.
pub fn inspect(dir: &Path, ino: Option<Ino>) -> Result<Inspection, String> {
    // A mounted store's journal may rotate under the read: try again.
    let mut tries = 0;
    let l = loop {
        match load(dir) {
            Ok(l) => break l,
            Err(_) if tries < 3 => tries += 1,
            Err(e) => return Err(e.to_string()),
        }
    };
    let bs = l.sb.block_size as u64;
    let per = l.sb.blocks_per_segment();
    let mut segments: Vec<SegmentView> = (0..l.segments)
        .map(|index| SegmentView {
            index,
            used_blocks: per,
            free_blocks: 0,
            free_runs: 0,
            largest_free_run: 0,
            resident_blocks: 0,
            dirty_blocks: None,
            blocks: vec![BlockState::Used; per as usize],
        })
        .collect();
    for r in l.alloc.free_runs() {
        let s = &mut segments[(r.start / per) as usize];
        let at = (r.start % per) as usize;
        s.blocks[at..at + r.len as usize].fill(BlockState::Free);
        s.free_blocks += r.len;
        s.used_blocks -= r.len;
        s.free_runs += 1;
        s.largest_free_run = s.largest_free_run.max(r.len);
    }
    for s in &mut segments {
        let path = dir.join("segments").join(format!("{:06}.seg", s.index));
        page_cache(&path, bs, s).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let file = match ino {
        None => None,
        Some(ino) => {
            let node = l.table.get(ino).ok_or_else(|| format!("inode {ino} is not in the store"))?;
            let g = rd(&node);
            // An extent may run on into the next segment: shown as one piece per segment.
            let mut extents = Vec::new();
            for e in g.extents().into_iter().flat_map(|x| x.iter()) {
                let (mut logical, mut phys, mut left) = (e.logical, e.phys, e.len);
                while left > 0 {
                    let seg = &segments[(phys / per) as usize];
                    let at = (phys % per) as usize;
                    let n = left.min(per - at as u64);
                    let resident =
                        seg.blocks[at..at + n as usize].iter().filter(|b| **b >= BlockState::Resident).count() as u64;
                    extents.push(ExtentView {
                        logical: logical * bs,
                        segment: phys / per,
                        offset: at as u64 * bs,
                        len: n * bs,
                        resident: resident * bs,
                    });
                    (logical, phys, left) = (logical + n, phys + n, left - n);
                }
            }
            Some(FileView { ino, size: g.attr.size, extents })
        }
    };
    Ok(Inspection { block_size: bs, segment_size: l.sb.segment_size, inodes: l.table.len() as u64, segments, file })
}

/// Marks the used blocks of `s` that the page cache holds (and the dirty ones).
fn page_cache(path: &Path, bs: u64, s: &mut SegmentView) -> std::io::Result<()> {
    let f = File::open(path)?;
    let len = f.metadata()?.len() as usize;
    // SAFETY: a read-only shared mapping, only passed to mincore and never read: what others
    // write to the file cannot break anything here.
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(&f) }?;
    let page = super::superblock::page_size() as usize;
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: the mapping is live for `len` bytes; `vec` has one byte per page of it.
    if unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, len, vec.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let pages_per_block = (bs as usize / page).max(1);
    for (i, b) in s.blocks.iter_mut().enumerate() {
        let p = i * pages_per_block;
        if *b == BlockState::Used && vec[p..p + pages_per_block].iter().any(|v| v & 1 != 0) {
            *b = BlockState::Resident;
            s.resident_blocks += 1;
        }
    }
    let n = s.blocks.len();
    s.dirty_blocks = mark_dirty(&f, bs, &mut s.blocks, 0, n);
    Ok(())
}

/// Marks the dirty resident blocks in `blocks[from..to]` by halving ranges that `cachestat`
/// says hold dirty pages; returns how many, or `None` without `cachestat` (before Linux 6.5).
fn mark_dirty(f: &File, bs: u64, blocks: &mut [BlockState], from: usize, to: usize) -> Option<u64> {
    if from >= to {
        return Some(0);
    }
    let dirty = cachestat_dirty(f, from as u64 * bs, (to - from) as u64 * bs)?;
    if dirty == 0 {
        return Some(0);
    }
    if to - from == 1 {
        if blocks[from] == BlockState::Resident {
            blocks[from] = BlockState::Dirty;
            return Some(1);
        }
        return Some(0);
    }
    let mid = from + (to - from) / 2;
    Some(mark_dirty(f, bs, blocks, from, mid)? + mark_dirty(f, bs, blocks, mid, to)?)
}

/// Dirty pages of `f` in `off..off+len` (`cachestat(2)`), `None` if the kernel has no such call.
fn cachestat_dirty(f: &File, off: u64, len: u64) -> Option<u64> {
    cachestat(f, off, len).map(|st| st.nr_dirty + st.nr_writeback)
}

/// What `cachestat(2)` (Linux 6.5) says of `off..off+len` of a file, in pages.
#[repr(C)]
#[derive(Default)]
pub(crate) struct CacheStat {
    /// Pages in the page cache, whether or not their read has completed.
    pub nr_cache: u64,
    pub nr_dirty: u64,
    pub nr_writeback: u64,
    pub nr_evicted: u64,
    pub nr_recently_evicted: u64,
}

/// `cachestat(2)` of `off..off+len` of `f`; `None` if the kernel has no such call.
pub(crate) fn cachestat(f: &File, off: u64, len: u64) -> Option<CacheStat> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    /// The syscall number is the same on every architecture (the generic table).
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = Range { off, len };
    let mut st = CacheStat::default();
    // SAFETY: both pointers are to live, properly laid out structs of the kernel ABI; the fd
    // is ours. The kernel only writes `st`.
    let rc =
        unsafe { libc::syscall(SYS_CACHESTAT, f.as_raw_fd(), &range as *const Range, &mut st as *mut CacheStat, 0) };
    (rc == 0).then_some(st)
}
