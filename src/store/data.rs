//! File data of the store: read, write, fallocate, truncate, copy_file_range, open and release
//! (fsync is `sync.rs`), through the segments whatever their backend.

use std::cell::RefCell;

use super::alloc::{Allocator, Run};
use super::faults;
use super::meta::{self, Attr, Content, Extents, Inode, Kind, Op, Piece, Ts};
use super::segment::Segment;
use super::{Error, Ino, Result, Store, lock, rd, wr, wr_live};

impl Store {
    /// Calls `f(segment, byte offset, len)` for the pieces of a physical byte range, split at
    /// segment boundaries. A failed segment I/O (possible with the pread backend) is sticky:
    /// the store refuses further changes, as after a failed journal write.
    fn phys_ranges(
        &self,
        phys_byte: u64,
        len: u64,
        mut f: impl FnMut(&Segment, usize, usize) -> std::io::Result<()>,
    ) -> Result<()> {
        let (ss, mut at, mut left) = (self.sb.segment_size, phys_byte, len);
        while left > 0 {
            let off = at % ss;
            let n = left.min(ss - off);
            if let Err(e) = f(self.seg(at / ss), off as usize, n as usize) {
                return Err(self.failed_io("segment I/O", e));
            }
            at += n;
            left -= n;
        }
        Ok(())
    }

    pub fn open_file(&self, ino: Ino) -> Result<Attr> {
        let node = self.node(ino)?;
        let mut g = wr_live(&node)?;
        g.opens += 1;
        Ok(g.stat())
    }

    /// Closes one handle of `ino`: journals times changed by writes, and frees the inode if
    /// this was the last handle of an unlinked file.
    pub fn release(&self, ino: Ino) -> Result<()> {
        let node = self.node(ino)?;
        let last_of_unlinked = {
            let mut g = wr(&node);
            g.opens = g.opens.saturating_sub(1);
            g.opens == 0 && g.attr.nlink == 0 && !g.freed
        };
        if last_of_unlinked {
            let _g = rd(&self.gate);
            let _ns = lock(&self.ns);
            let mut g = wr(&node);
            if g.opens == 0 && g.attr.nlink == 0 && !g.freed {
                self.append(&[Op::Free { ino }])?;
                let freed = meta::apply_free(&mut g);
                let gone = g.lookups == 0;
                drop(g);
                self.release_blocks(freed);
                if gone {
                    self.remove_node(ino);
                }
            }
        } else {
            self.journal_times(ino, &node)?;
        }
        Ok(())
    }

    /// Reads up to `size` bytes at `off` and hands them to `f`: the segment's bytes themselves
    /// when the range lies in one extent and the backend lends them (mmap), else a gathered
    /// copy (holes as zeros).
    pub fn read<R>(&self, ino: Ino, off: u64, size: u32, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        let node = self.node(ino)?;
        let g = rd(&node);
        let x = match &g.content {
            Content::File(x) => x,
            Content::Dir(_) => return Err(Error::IsDir),
            _ => return Err(Error::Invalid),
        };
        let end = g.attr.size.min(off.saturating_add(size as u64));
        if off >= end {
            return Ok(f(&[]));
        }
        let bs = self.bs;
        let (first, last) = (off / bs, (end - 1) / bs + 1);
        let mut single = None;
        let mut pieces = 0;
        x.pieces(first, last, |p| {
            pieces += 1;
            if let (1, Piece::Mapped { logical, phys, .. }) = (pieces, p) {
                single = Some(phys * bs + (off - logical * bs));
            }
        });
        if pieces == 1
            && let Some(pb) = single
        {
            let (ss, len) = (self.sb.segment_size, end - off);
            if pb % ss + len <= ss {
                // SAFETY: we hold this inode's read lock until `f` returns; its blocks are
                // written only under its write lock, and no other process maps segments.
                match unsafe { self.seg(pb / ss).slice((pb % ss) as usize, len as usize) } {
                    Ok(Some(s)) => return Ok(f(s)),
                    Ok(None) => {}
                    Err(e) => return Err(self.failed_io("segment I/O", e)),
                }
            }
        }
        thread_local!(static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) });
        GATHER.with(|buf| {
            let mut buf = buf.borrow_mut();
            let len = (end - off) as usize;
            buf.clear();
            buf.resize(len, 0);
            let mut res = Ok(());
            x.pieces(first, last, |p| {
                if let (Piece::Mapped { logical, phys, len: n }, true) = (p, res.is_ok()) {
                    // Clip the piece to off..end, in bytes.
                    let lo = (logical * bs).max(off);
                    let hi = ((logical + n) * bs).min(end);
                    let mut dst = (lo - off) as usize;
                    res = self.phys_ranges(phys * bs + (lo - logical * bs), hi - lo, |seg, so, l| {
                        seg.read_at(so, &mut buf[dst..dst + l])?;
                        dst += l;
                        Ok(())
                    });
                }
            });
            res?;
            Ok(f(&buf))
        })
    }

    /// Writes `data` at `off`; returns the bytes written (all of them, or an error).
    pub fn write(&self, ino: Ino, off: u64, data: &[u8]) -> Result<usize> {
        let end = off.checked_add(data.len() as u64).ok_or(Error::TooBig)?;
        if end > MAX_FILE_SIZE {
            return Err(Error::TooBig);
        }
        if data.is_empty() {
            return Ok(0);
        }
        // Plain overwrites too: after a failed msync their bytes might never reach the disk.
        self.usable()?;
        if faults::check(faults::Point::WritePanic).is_err() {
            panic!("injected panic in a write request");
        }
        let node = self.node(ino)?;
        let bs = self.bs;
        let (first, last) = (off / bs, (end - 1) / bs + 1);
        // Fast path: every block is stored and the size does not change: nothing to journal.
        {
            let mut g = wr(&node);
            let fits = match &g.content {
                Content::File(x) => end <= g.attr.size && x.covers(first, last),
                Content::Dir(_) => return Err(Error::IsDir),
                _ => return Err(Error::Invalid),
            };
            if fits {
                self.copy_in(&mut g, off, data)?;
                return Ok(data.len());
            }
        }
        let _gate = rd(&self.gate);
        let mut g = wr_live(&node)?;
        let old_size = g.attr.size;
        let Content::File(x) = &g.content else { return Err(Error::Invalid) };
        let maps = self.allocate(ino, x, first, last)?;
        // Freshly allocated blocks may hold old data: zero what this write does not cover.
        self.zero_new(&mut g, &maps, off, end)?;
        let now = Ts::now();
        let mut ops = maps;
        if end > old_size {
            ops.push(Op::SetSize { ino, size: end, mtime: now, ctime: now });
        }
        for op in &ops {
            match op {
                Op::Map { .. } => meta::apply_map(&mut g, op)?,
                _ => {
                    // Bytes between the old end of file and this write were never visible:
                    // they may be stale, so zero them before they become part of the file.
                    self.zero_tail(&mut g, old_size, off)?;
                    meta::apply_setsize(&mut g, op, bs)?;
                }
            }
        }
        // Data first, record second: a crash in between leaves the blocks unreferenced rather
        // than a file that shows another file's old bytes.
        self.copy_in(&mut g, off, data)?;
        self.append(&ops)?;
        drop(g);
        drop(_gate);
        self.maybe_checkpoint();
        Ok(data.len())
    }

    /// Allocates every hole in logical blocks `first..last`, all or nothing; returns the `Map`
    /// ops (not yet applied or journaled).
    fn allocate(&self, ino: Ino, x: &Extents, first: u64, last: u64) -> Result<Vec<Op>> {
        match self.allocate_once(ino, x, first, last) {
            // A reclaim pass holds free runs out of the allocator for a moment (while it
            // punches them): wait for it and look again before answering ENOSPC.
            Err(Error::NoSpace) if self.reclaim_running() => {
                drop(lock(&self.reclaiming));
                self.allocate_once(ino, x, first, last)
            }
            r => r,
        }
    }

    fn allocate_once(&self, ino: Ino, x: &Extents, first: u64, last: u64) -> Result<Vec<Op>> {
        let mut holes = Vec::new();
        x.pieces(first, last, |p| {
            if let Piece::Hole { logical, len } = p {
                holes.push((logical, len));
            }
        });
        let mut maps: Vec<Op> = Vec::with_capacity(holes.len());
        let mut a = lock(&self.alloc);
        // All or nothing, checked before any segment is created: a request the capacity cannot
        // hold (a 2^52-byte fallocate) must not leave segment files behind on the host.
        let need: u64 = holes.iter().map(|h| h.1).sum();
        let unmade = self.sb.max_segments() - a.segments();
        if need > a.free_blocks() + unmade * self.sb.blocks_per_segment() {
            return Err(Error::NoSpace);
        }
        for (logical, len) in holes {
            let mut done = 0;
            while done < len {
                // Continue the previous new run, or the extent before the hole.
                let hint = match maps.last() {
                    Some(Op::Map { logical: l, phys, len, .. }) if l + len == logical + done => Some(phys + len),
                    _ => x.hint(logical + done),
                };
                let got = match a.alloc(len - done, hint) {
                    // Blocks given back to the host are reserved again before use.
                    Some(r) => self.reserve(&mut a, r).map(|()| r).inspect_err(|_| a.free(r)),
                    None => self.grow(&mut a).map(|()| Run { start: 0, len: 0 }),
                };
                let run = match got {
                    Ok(r) if r.len == 0 => continue,
                    Ok(r) => r,
                    Err(e) => {
                        for m in &maps {
                            if let Op::Map { phys, len, .. } = m {
                                a.free(Run { start: *phys, len: *len });
                            }
                        }
                        return Err(e);
                    }
                };
                maps.push(Op::Map { ino, logical: logical + done, phys: run.start, len: run.len });
                done += run.len;
            }
        }
        Ok(maps)
    }

    /// Zeroes the newly allocated blocks of `maps` except the bytes `keep_from..keep_to`, and
    /// marks them dirty: the zeroes must reach the disk with the fsync that makes the new
    /// block mapping durable, or after a power cut the file would show a freed file's bytes.
    fn zero_new(&self, g: &mut Inode, maps: &[Op], keep_from: u64, keep_to: u64) -> Result<()> {
        let bs = self.bs;
        for m in maps {
            let Op::Map { logical, phys, len, .. } = *m else { continue };
            note_dirty(dirty_of(g), Run { start: phys, len });
            let (lo, hi) = (logical * bs, (logical + len) * bs);
            let (k0, k1) = (keep_from.clamp(lo, hi), keep_to.clamp(lo, hi));
            if k0 > lo {
                self.phys_ranges(phys * bs, k0 - lo, |s, o, l| s.zero(o, l))?;
            }
            if hi > k1 {
                self.phys_ranges(phys * bs + (k1 - lo), hi - k1, |s, o, l| s.zero(o, l))?;
            }
        }
        Ok(())
    }

    /// Calls `f(segment, segment offset, len, offset from `from`)` for every stored byte range
    /// of `from..to` (holes are skipped) and marks those blocks dirty for the next fsync.
    fn each_stored(
        &self,
        g: &mut Inode,
        from: u64,
        to: u64,
        mut f: impl FnMut(&Segment, usize, usize, usize) -> std::io::Result<()>,
    ) -> Result<()> {
        let bs = self.bs;
        if to <= from {
            return Ok(());
        }
        let Content::File(x) = &g.content else { return Ok(()) };
        let dirty = &mut g.extra.get_or_insert_with(Default::default).dirty;
        let mut res = Ok(());
        x.pieces(from / bs, (to - 1) / bs + 1, |p| {
            if let (Piece::Mapped { logical, phys, len }, true) = (p, res.is_ok()) {
                let lo = (logical * bs).max(from);
                let hi = ((logical + len) * bs).min(to);
                let mut at = (lo - from) as usize;
                res = self.phys_ranges(phys * bs + (lo - logical * bs), hi - lo, |seg, so, l| {
                    f(seg, so, l, at)?;
                    at += l;
                    Ok(())
                });
                note_dirty(dirty, Run { start: phys, len });
            }
        });
        res
    }

    /// Zeroes the stored bytes of `from..to` and marks them dirty.
    fn zero_stored(&self, g: &mut Inode, from: u64, to: u64) -> Result<()> {
        self.each_stored(g, from, to, |seg, so, l, _| seg.zero(so, l))
    }

    /// fallocate(2): mode 0 and `KEEP_SIZE` allocate (holes read zeros), `PUNCH_HOLE` frees
    /// whole blocks and zeroes partial ones, `ZERO_RANGE` zeroes and allocates. Other modes are
    /// not supported.
    pub fn fallocate(&self, ino: Ino, off: u64, len: u64, mode: i32) -> Result<()> {
        const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
        const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
        if mode & !(KEEP | PUNCH | ZERO) != 0 || (mode & PUNCH != 0 && mode & ZERO != 0) {
            return Err(Error::Unsupported);
        }
        if len == 0 {
            return Err(Error::Invalid);
        }
        self.usable()?;
        let end = off.checked_add(len).ok_or(Error::TooBig)?;
        if end > MAX_FILE_SIZE {
            return Err(Error::TooBig);
        }
        let bs = self.bs;
        let _gate = rd(&self.gate);
        let node = self.node(ino)?;
        let mut g = wr_live(&node)?;
        let Content::File(x) = &g.content else {
            return Err(if g.attr.kind == Kind::Dir { Error::IsDir } else { Error::Invalid });
        };
        let now = Ts::now();
        if mode & PUNCH != 0 {
            // Whole blocks go; the partial blocks at either edge are zeroed in place.
            let (first, last) = (off.div_ceil(bs), end / bs);
            if first < last {
                self.zero_stored(&mut g, off, first * bs)?;
                self.zero_stored(&mut g, last * bs, end)?;
            } else {
                self.zero_stored(&mut g, off, end)?;
            }
            let op = Op::Punch { ino, logical: first, len: last.saturating_sub(first), time: now };
            self.append(std::slice::from_ref(&op))?;
            let freed = meta::apply_punch(&mut g, &op)?;
            drop(g);
            self.release_blocks(freed);
            return Ok(());
        }
        let old_size = g.attr.size;
        let maps = self.allocate(ino, x, off / bs, end.div_ceil(bs))?;
        self.zero_new(&mut g, &maps, 0, 0)?;
        if mode & ZERO != 0 {
            self.zero_stored(&mut g, off, end)?;
        }
        let mut ops = maps;
        if mode & KEEP == 0 && end > old_size {
            self.zero_tail(&mut g, old_size, end)?;
            ops.push(Op::SetSize { ino, size: end, mtime: now, ctime: now });
        } else if mode & ZERO != 0 {
            ops.push(Op::SetSize { ino, size: old_size, mtime: now, ctime: now });
        }
        for op in &ops {
            match op {
                Op::Map { .. } => meta::apply_map(&mut g, op),
                _ => meta::apply_setsize(&mut g, op, bs).map(drop),
            }?;
        }
        if !ops.is_empty() {
            self.append(&ops)?;
        }
        Ok(())
    }

    /// lseek(2) with SEEK_DATA (`data`) or SEEK_HOLE: the next data or hole offset at or
    /// after `off`; the end of file counts as a hole.
    pub fn seek(&self, ino: Ino, off: u64, data: bool) -> Result<u64> {
        let node = self.node(ino)?;
        let g = rd(&node);
        let Content::File(x) = &g.content else { return Err(Error::Invalid) };
        x.seek(off, g.attr.size, data, self.bs).ok_or(Error::NoSuchOffset)
    }

    /// copy_file_range(2) inside the daemon: the data moves from one segment range to another
    /// through a per-thread buffer, never through the client. Returns the bytes copied.
    pub fn copy_range(&self, src: Ino, off_in: u64, dst: Ino, off_out: u64, len: u64) -> Result<usize> {
        const CHUNK: u64 = 1 << 20;
        thread_local!(static COPY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) });
        let mut done = 0u64;
        while done < len {
            let want = (len - done).min(CHUNK) as u32;
            // Copy out first and release the source lock: src and dst may be the same inode.
            let got = COPY.with(|c| {
                self.read(src, off_in + done, want, |b| {
                    let mut c = c.borrow_mut();
                    c.clear();
                    c.extend_from_slice(b);
                    b.len()
                })
            })?;
            if got == 0 {
                break;
            }
            COPY.with(|c| self.write(dst, off_out + done, &c.borrow()))?;
            done += got as u64;
        }
        Ok(done as usize)
    }

    /// Zeroes the stored bytes from `from` (an old end of file) to `to` within the block
    /// holding `from`: bytes past EOF are not kept zero, they are zeroed when exposed.
    fn zero_tail(&self, g: &mut Inode, from: u64, to: u64) -> Result<()> {
        let bs = self.bs;
        if from.is_multiple_of(bs) || to <= from {
            return Ok(());
        }
        let Some(x) = g.extents() else { return Ok(()) };
        let stop = to.min((from / bs + 1) * bs);
        let mut block = None;
        x.pieces(from / bs, from / bs + 1, |p| {
            if let Piece::Mapped { phys, .. } = p {
                block = Some(phys);
            }
        });
        let Some(phys) = block else { return Ok(()) };
        // Dirty, like every zeroing: the exposed bytes must read zero after a power cut too.
        note_dirty(dirty_of(g), Run { start: phys, len: 1 });
        self.phys_ranges(phys * bs + from % bs, stop - from, |s, o, l| s.zero(o, l))
    }

    /// Copies `data` into the stored blocks at `off` (all stored) and marks them dirty.
    fn copy_in(&self, g: &mut Inode, off: u64, data: &[u8]) -> Result<()> {
        let res =
            self.each_stored(g, off, off + data.len() as u64, |seg, so, l, at| seg.write_at(so, &data[at..at + l]));
        let now = Ts::now();
        g.attr.mtime = now;
        g.attr.ctime = now;
        g.times_dirty = true;
        res
    }

    /// Reserves the host space of the blocks of `run` that were given back to the host.
    /// A full host filesystem is ENOSPC for the request (nothing changed); another error is
    /// an I/O failure of the store.
    fn reserve(&self, a: &mut Allocator, run: Run) -> Result<()> {
        let (bs, bps) = (self.bs, self.sb.blocks_per_segment());
        for piece in a.unbacked_in(run) {
            // Runs never cross a segment boundary.
            let off = ((piece.start % bps) * bs) as usize;
            match self.seg(piece.start / bps).reserve(off, (piece.len * bs) as usize) {
                Ok(()) => a.mark_backed(piece),
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Err(Error::NoSpace),
                Err(e) => return Err(self.failed_io("reserving segment space", e)),
            }
        }
        Ok(())
    }

    /// Adds a segment (up to the capacity).
    fn grow(&self, a: &mut Allocator) -> Result<()> {
        let idx = a.segments();
        if idx >= self.sb.max_segments() {
            return Err(Error::NoSpace);
        }
        let path = self.dir.join("segments").join(format!("{idx:06}.seg"));
        let seg = Segment::create(&path, self.sb.segment_size as usize, idx as u32, &*self.engine).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                // The host filesystem is full: nothing changed, the request gets ENOSPC.
                log::warn!("cannot create segment {}: {e}", path.display());
                Error::NoSpace
            } else {
                self.failed_io(&format!("creating segment {}", path.display()), e)
            }
        })?;
        let _ = self.segments[idx as usize].set(seg);
        a.add_segment();
        log::info!("segment {idx} added");
        Ok(())
    }

    /// Sets a file's size: frees blocks past a smaller size; a larger size reads as zeros.
    pub fn truncate(&self, ino: Ino, size: u64) -> Result<()> {
        if size > MAX_FILE_SIZE {
            return Err(Error::TooBig);
        }
        self.usable()?;
        let _gate = rd(&self.gate);
        let node = self.node(ino)?;
        let mut g = wr_live(&node)?;
        match &g.content {
            Content::File(_) => {}
            Content::Dir(_) => return Err(Error::IsDir),
            _ => return Err(Error::Invalid),
        }
        let now = Ts::now();
        let op = Op::SetSize { ino, size, mtime: now, ctime: now };
        if size > g.attr.size {
            let old = g.attr.size;
            self.zero_tail(&mut g, old, size)?;
        }
        self.append(std::slice::from_ref(&op))?;
        let freed = meta::apply_setsize(&mut g, &op, self.bs)?;
        g.times_dirty = false;
        drop(g);
        self.release_blocks(freed);
        drop(_gate);
        self.maybe_checkpoint();
        Ok(())
    }
}

/// Largest file size: block numbers must fit comfortably in 64 bits.
pub const MAX_FILE_SIZE: u64 = 1 << 52;

/// The runs of `g` written since its last fsync.
fn dirty_of(g: &mut Inode) -> &mut Vec<Run> {
    &mut g.extra.get_or_insert_with(Default::default).dirty
}

/// Records a written physical run for the next fsync, merging with the previous one.
fn note_dirty(dirty: &mut Vec<Run>, r: Run) {
    if let Some(l) = dirty.last_mut()
        && r.start >= l.start
        && r.start <= l.start + l.len
    {
        l.len = l.len.max(r.start + r.len - l.start);
        return;
    }
    dirty.push(r);
}
