//! Block allocator over the store's segments: free runs kept in an ordered map, pure logic.
//!
//! Blocks are addressed globally (`segment * blocks_per_segment + block`). A run never crosses
//! a segment boundary because each segment is a separate mapping. The allocator is rebuilt at
//! mount from the extent maps (the journal records extents, never the allocator itself).

use std::collections::BTreeMap;

/// A global block number: `segment * blocks_per_segment + block within segment`.
pub type BlockNo = u64;

/// A run of free or allocated blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub start: BlockNo,
    pub len: u64,
}

/// Why the allocator could not be rebuilt from a set of used runs.
#[derive(Debug, PartialEq, Eq)]
pub enum RebuildError {
    /// Two runs claim the same block.
    Overlap(BlockNo),
    /// A run lies outside the existing segments.
    OutOfRange(BlockNo),
}

/// Free-space map of the segments that exist.
#[derive(Debug)]
pub struct Allocator {
    /// Free runs, start → length; adjacent runs inside one segment are always merged.
    free: BTreeMap<BlockNo, u64>,
    free_blocks: u64,
    blocks_per_segment: u64,
    segments: u64,
    /// Where the last allocation ended: next-fit keeps unrelated files apart and fresh
    /// sequential writers on contiguous runs.
    cursor: BlockNo,
    /// One bit per block: its host space is not known to be reserved (punched to give it
    /// back to the host, or free when the store was opened). Only free blocks are unbacked;
    /// the store reserves them again before it hands them out.
    unbacked: Vec<u64>,
    unbacked_count: u64,
    /// Of `unbacked_count`, the blocks in runs a reclaim pass has out of the free map.
    taken_unbacked: u64,
    /// Counts frees, so a reclaim pass can tell whether anything changed since the last.
    frees: u64,
}

impl Allocator {
    /// An allocator with `segments` segments, all free.
    pub fn new(blocks_per_segment: u64, segments: u64) -> Allocator {
        let mut a = Allocator {
            free: BTreeMap::new(),
            free_blocks: 0,
            blocks_per_segment,
            segments: 0,
            cursor: 0,
            unbacked: Vec::new(),
            unbacked_count: 0,
            taken_unbacked: 0,
            frees: 0,
        };
        for _ in 0..segments {
            a.add_segment();
        }
        a
    }

    /// Rebuilds the free map from the runs in use; fails if they overlap or overflow. Every
    /// free block counts as unbacked: an earlier mount may have punched it.
    pub fn from_used(blocks_per_segment: u64, segments: u64, mut used: Vec<Run>) -> Result<Allocator, RebuildError> {
        used.sort_unstable_by_key(|r| r.start);
        let end = segments * blocks_per_segment;
        let mut a = Allocator::new(blocks_per_segment, 0);
        a.segments = segments;
        a.unbacked = vec![0; (end as usize).div_ceil(64)];
        let mut next = 0;
        for r in used.iter().filter(|r| r.len > 0) {
            if r.start < next {
                return Err(RebuildError::Overlap(r.start));
            }
            if r.start + r.len > end {
                return Err(RebuildError::OutOfRange(r.start));
            }
            a.insert_free(next, r.start - next);
            next = r.start + r.len;
        }
        a.insert_free(next, end - next);
        let runs: Vec<Run> = a.free.iter().map(|(&start, &len)| Run { start, len }).collect();
        for r in runs {
            a.set_unbacked(r, true);
        }
        Ok(a)
    }

    /// Number of segments the allocator manages.
    pub fn segments(&self) -> u64 {
        self.segments
    }

    /// The free runs, by start block (adjacent runs of one segment merged).
    pub fn free_runs(&self) -> impl Iterator<Item = Run> + '_ {
        self.free.iter().map(|(&start, &len)| Run { start, len })
    }

    /// Free blocks in the existing segments.
    pub fn free_blocks(&self) -> u64 {
        self.free_blocks
    }

    /// Adds the next segment's blocks as free space (reserved on the host: a new segment is
    /// created whole); returns its index.
    pub fn add_segment(&mut self) -> u64 {
        let idx = self.segments;
        self.segments += 1;
        self.unbacked.resize(((self.segments * self.blocks_per_segment) as usize).div_ceil(64), 0);
        self.insert_free(idx * self.blocks_per_segment, self.blocks_per_segment);
        idx
    }

    /// Allocates up to `want` contiguous blocks, starting at `hint` if that block is free
    /// (so a growing file stays contiguous). Returns `None` when no block is free.
    pub fn alloc(&mut self, want: u64, hint: Option<BlockNo>) -> Option<Run> {
        debug_assert!(want > 0);
        if let Some(h) = hint
            && let Some((&s, &l)) = self.free.range(..=h).next_back()
            && h < s + l
        {
            return Some(self.take(s, l, h, want));
        }
        // Next-fit: the first run from the cursor that holds the whole request, else the first
        // run at all (a partial allocation; the caller asks again for the rest).
        let fit = self
            .free
            .range(self.cursor..)
            .chain(self.free.range(..self.cursor))
            .find(|&(_, &l)| l >= want)
            .or_else(|| self.free.iter().max_by_key(|&(_, &l)| l))
            .map(|(&s, &l)| (s, l));
        let (s, l) = fit?;
        Some(self.take(s, l, s, want))
    }

    /// Takes `min(want, …)` blocks at `at` out of the free run `s..s+l`.
    fn take(&mut self, s: BlockNo, l: u64, at: BlockNo, want: u64) -> Run {
        let len = want.min(s + l - at);
        self.free.remove(&s);
        if at > s {
            self.free.insert(s, at - s);
        }
        if at + len < s + l {
            self.free.insert(at + len, s + l - at - len);
        }
        self.free_blocks -= len;
        self.cursor = at + len;
        Run { start: at, len }
    }

    /// Returns a run to the free map.
    pub fn free(&mut self, run: Run) {
        if run.len > 0 {
            self.frees += 1;
            self.insert_free(run.start, run.len);
        }
    }

    /// Free blocks whose host space is reserved.
    pub fn backed_free_blocks(&self) -> u64 {
        self.free_blocks - self.unbacked_blocks()
    }

    /// Free blocks whose host space is not reserved (the store must reserve them before use);
    /// runs a reclaim pass has taken out are not free meanwhile.
    pub fn unbacked_blocks(&self) -> u64 {
        self.unbacked_count - self.taken_unbacked
    }

    /// Unbacked blocks in `run`.
    fn unbacked_count_in(&self, run: Run) -> u64 {
        (run.start..run.start + run.len).filter(|&b| self.bit(b)).count() as u64
    }

    /// How many runs were freed so far (a reclaim pass with the same figure has nothing new).
    pub fn frees(&self) -> u64 {
        self.frees
    }

    fn bit(&self, b: BlockNo) -> bool {
        self.unbacked[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    fn set_unbacked(&mut self, run: Run, on: bool) {
        for b in run.start..run.start + run.len {
            if self.bit(b) != on {
                self.unbacked[(b / 64) as usize] ^= 1 << (b % 64);
                if on {
                    self.unbacked_count += 1;
                } else {
                    self.unbacked_count -= 1;
                }
            }
        }
    }

    /// The pieces of `run` (just allocated) whose host space must be reserved before use.
    pub fn unbacked_in(&self, run: Run) -> Vec<Run> {
        let mut out: Vec<Run> = Vec::new();
        for b in run.start..run.start + run.len {
            if self.bit(b) {
                match out.last_mut() {
                    Some(r) if r.start + r.len == b => r.len += 1,
                    _ => out.push(Run { start: b, len: 1 }),
                }
            }
        }
        out
    }

    /// Records that `run`'s host space is reserved again.
    pub fn mark_backed(&mut self, run: Run) {
        self.set_unbacked(run, false);
    }

    /// Takes out of the free map every free run of at least `min_len` blocks that holds
    /// reserved blocks, for the store to give back to the host; nothing can allocate them until
    /// [`put_back`](Self::put_back).
    pub fn take_reclaimable(&mut self, min_len: u64) -> Vec<Run> {
        self.take_free(min_len, false)
    }

    /// Like [`take_reclaimable`](Self::take_reclaimable), but every free run of at least
    /// `min_len` blocks, also those counted as unbacked: at mount, a free block counts as
    /// unbacked (safe for allocation) though a crash may have left its host space held.
    pub fn take_all_free(&mut self, min_len: u64) -> Vec<Run> {
        self.take_free(min_len, true)
    }

    fn take_free(&mut self, min_len: u64, unbacked_too: bool) -> Vec<Run> {
        let runs: Vec<Run> = self
            .free
            .iter()
            .filter(|&(_, &l)| l >= min_len)
            .map(|(&start, &len)| Run { start, len })
            .filter(|r| unbacked_too || (r.start..r.start + r.len).any(|b| !self.bit(b)))
            .collect();
        for r in &runs {
            self.free.remove(&r.start);
            self.free_blocks -= r.len;
            self.taken_unbacked += self.unbacked_count_in(*r);
        }
        runs
    }

    /// Returns a run taken by [`take_reclaimable`](Self::take_reclaimable) or
    /// [`take_all_free`](Self::take_all_free), unbacked if its host space was given back.
    pub fn put_back(&mut self, run: Run, given_back: bool) {
        self.taken_unbacked -= self.unbacked_count_in(run);
        if given_back {
            self.set_unbacked(run, true);
        }
        self.insert_free(run.start, run.len);
    }

    /// Adds free space, split at segment boundaries.
    fn insert_free(&mut self, mut start: BlockNo, mut len: u64) {
        while len > 0 {
            let seg_end = (start / self.blocks_per_segment + 1) * self.blocks_per_segment;
            let piece = len.min(seg_end - start);
            self.insert_piece(start, piece);
            start += piece;
            len -= piece;
        }
    }

    /// Adds free space inside one segment, merging with its neighbours there.
    fn insert_piece(&mut self, mut start: BlockNo, mut len: u64) {
        debug_assert!(
            self.free.range(..start + len).next_back().is_none_or(|(&s, &l)| s + l <= start),
            "double free of block {start}"
        );
        self.free_blocks += len;
        let seg = start / self.blocks_per_segment;
        // Merge with the run before and after, but never across a segment boundary.
        if let Some((&s, &l)) = self.free.range(..start).next_back()
            && s + l == start
            && s / self.blocks_per_segment == seg
        {
            self.free.remove(&s);
            start = s;
            len += l;
        }
        let end = start + len;
        if let Some(&l) = self.free.get(&end)
            && end / self.blocks_per_segment == seg
        {
            self.free.remove(&end);
            len += l;
        }
        self.free.insert(start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: u64, len: u64) -> Run {
        Run { start, len }
    }

    #[test]
    fn contiguous_allocation_and_hint() {
        let mut a = Allocator::new(100, 1);
        assert_eq!(a.alloc(10, None), Some(run(0, 10)));
        // The hint extends the previous run.
        assert_eq!(a.alloc(5, Some(10)), Some(run(10, 5)));
        assert_eq!(a.free_blocks(), 85);
        // A hint on a used block falls back to next-fit.
        assert_eq!(a.alloc(5, Some(3)), Some(run(15, 5)));
    }

    #[test]
    fn freed_blocks_are_reused_and_merged() {
        let mut a = Allocator::new(100, 1);
        let r1 = a.alloc(40, None).unwrap();
        let r2 = a.alloc(40, None).unwrap();
        let _r3 = a.alloc(20, None).unwrap();
        assert_eq!(a.alloc(1, None), None);
        a.free(r1);
        a.free(r2);
        assert_eq!(a.free_blocks(), 80);
        // Merged into one 80-block run.
        assert_eq!(a.alloc(80, None), Some(run(0, 80)));
    }

    #[test]
    fn runs_never_cross_segments() {
        let mut a = Allocator::new(10, 2);
        assert_eq!(a.alloc(8, None), Some(run(0, 8)));
        // 2 left in segment 0, 10 in segment 1: a 12-block request gets one segment's run.
        let r = a.alloc(12, None).unwrap();
        assert!(r.len <= 10 && (r.start / 10) == ((r.start + r.len - 1) / 10));
        let b = Allocator::from_used(10, 3, vec![]).unwrap();
        assert_eq!(b.free.len(), 3, "runs of different segments must stay apart");
        assert_eq!(b.free_blocks(), 30);
    }

    #[test]
    fn partial_when_fragmented() {
        let mut a = Allocator::new(10, 1);
        let rs: Vec<Run> = (0..10).map(|_| a.alloc(1, None).unwrap()).collect();
        a.free(rs[2]);
        a.free(rs[5]);
        a.free(rs[6]);
        let r = a.alloc(3, None).unwrap();
        assert_eq!(r, run(5, 2), "largest run when none fits");
        assert_eq!(a.alloc(3, None), Some(run(2, 1)));
        assert_eq!(a.alloc(1, None), None);
    }

    #[test]
    fn add_segment_grows() {
        let mut a = Allocator::new(4, 0);
        assert_eq!(a.alloc(1, None), None);
        assert_eq!(a.add_segment(), 0);
        assert_eq!(a.alloc(4, None), Some(run(0, 4)));
        assert_eq!(a.add_segment(), 1);
        assert_eq!(a.alloc(4, None), Some(run(4, 4)));
        assert_eq!(a.segments(), 2);
    }

    #[test]
    fn reclaim_and_reserve_bookkeeping() {
        let mut a = Allocator::new(100, 2);
        assert_eq!((a.backed_free_blocks(), a.unbacked_blocks()), (200, 0), "new segments are reserved");
        let r = a.alloc(60, None).unwrap();
        let small = a.alloc(5, None).unwrap();
        a.free(r);
        a.free(small);
        // Runs of at least 50 blocks holding reserved blocks: 0..100 and 100..200.
        let taken = a.take_reclaimable(50);
        assert_eq!(taken, vec![run(0, 100), run(100, 100)]);
        assert_eq!(a.free_blocks(), 0, "taken runs cannot be allocated meanwhile");
        assert_eq!(a.alloc(1, None), None);
        a.put_back(taken[0], true);
        a.put_back(taken[1], false);
        assert_eq!((a.free_blocks(), a.unbacked_blocks(), a.backed_free_blocks()), (200, 100, 100));
        assert!(a.take_reclaimable(50) == vec![run(100, 100)], "punched runs are not taken again");
        a.put_back(run(100, 100), false);
        let got = a.alloc(10, Some(95)).unwrap();
        assert_eq!(got, run(95, 5));
        assert_eq!(a.unbacked_in(got), vec![run(95, 5)]);
        a.mark_backed(got);
        assert_eq!(a.unbacked_blocks(), 95);
        // After a remount every free block may have been punched.
        let mut b = Allocator::from_used(10, 1, vec![run(2, 3)]).unwrap();
        assert_eq!((b.free_blocks(), b.unbacked_blocks()), (7, 7));
        // The first pass after a mount takes every large free run, unbacked or not; while it
        // has them, they are neither free nor counted unbacked (no figure goes negative).
        let all = b.take_all_free(5);
        assert_eq!(all, vec![run(5, 5)]);
        assert_eq!((b.free_blocks(), b.unbacked_blocks(), b.backed_free_blocks()), (2, 2, 0));
        b.put_back(all[0], true);
        assert_eq!((b.free_blocks(), b.unbacked_blocks(), b.backed_free_blocks()), (7, 7, 0));
    }

    #[test]
    fn rebuild_from_used() {
        let a = Allocator::from_used(10, 2, vec![run(12, 3), run(0, 5)]).unwrap();
        assert_eq!(a.free_blocks(), 12);
        let mut a = a;
        assert_eq!(a.alloc(5, Some(5)), Some(run(5, 5)));
        assert_eq!(Allocator::from_used(10, 1, vec![run(0, 5), run(4, 2)]).unwrap_err(), RebuildError::Overlap(4));
        assert_eq!(Allocator::from_used(10, 1, vec![run(8, 5)]).unwrap_err(), RebuildError::OutOfRange(8));
    }
}
