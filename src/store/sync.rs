//! fsync: a file's dirty runs turned into the fewest segment syncs that make them durable
//! (`msync` of exact ranges with the mmap backend, `fdatasync` of the segment file with the
//! others: `Segment::sync_range` is the backend's). The counters keep the name msync.

use std::sync::atomic::Ordering;

use super::alloc::Run;
use super::{Ino, Result, Store, SyncPolicy, wr};

/// A byte range inside one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ByteRange {
    pub off: usize,
    pub len: usize,
}

impl ByteRange {
    fn end(self) -> usize {
        self.off + self.len
    }
}

/// A file's dirty ranges inside one segment, in offset order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SegmentRanges {
    pub seg: u64,
    pub ranges: Vec<ByteRange>,
}

impl SegmentRanges {
    /// From the first byte of the first range to the end of the last one but `skip_last`.
    fn span(&self, skip_last: usize) -> ByteRange {
        let last = self.ranges[self.ranges.len() - 1 - skip_last];
        ByteRange { off: self.ranges[0].off, len: last.end() - self.ranges[0].off }
    }
}

/// Sorts and merges dirty block runs and splits them into per-segment byte ranges, in segment
/// order (`bs`: block size, `ss`: segment size in bytes).
pub(crate) fn by_segment(mut runs: Vec<Run>, bs: u64, ss: u64) -> Vec<SegmentRanges> {
    runs.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<Run> = Vec::with_capacity(runs.len());
    for r in runs {
        match merged.last_mut() {
            Some(m) if m.start + m.len >= r.start => m.len = m.len.max(r.start + r.len - m.start),
            _ => merged.push(r),
        }
    }
    let mut out: Vec<SegmentRanges> = Vec::new();
    for r in merged {
        let (mut at, end) = (r.start * bs, (r.start + r.len) * bs);
        while at < end {
            let n = (end - at).min(ss - at % ss);
            let range = ByteRange { off: (at % ss) as usize, len: n as usize };
            match out.last_mut() {
                Some(g) if g.seg == at / ss => g.ranges.push(range),
                _ => out.push(SegmentRanges { seg: at / ss, ranges: vec![range] }),
            }
            at += n;
        }
    }
    out
}

impl Store {
    /// fsync/fdatasync: a sync of exactly the file's dirty ranges (msync(MS_SYNC) with the
    /// mmap backend), then a durable journal. A failure is sticky (see [`Store::failed_io`]).
    pub fn fsync(&self, ino: Ino) -> Result<()> {
        self.usable()?;
        if self.sync_policy == SyncPolicy::None {
            return Ok(());
        }
        let node = self.node(ino)?;
        self.journal_times(ino, &node)?;
        // Read before the dirty runs are taken: a reclaim that punches any of them meanwhile
        // (they may have been freed) must keep them from being marked settled.
        let punches = self.punches.load(Ordering::Acquire);
        let groups = by_segment(wr(&node).take_dirty(), self.bs, self.sb.segment_size);
        let bytes: u64 = groups.iter().flat_map(|g| &g.ranges).map(|r| r.len as u64).sum();
        let started = std::time::Instant::now();
        let (calls, flushed, covered) = self.flush(&groups, punches)?;
        let c = &self.counters;
        c.msync_calls.fetch_add(calls, Ordering::Relaxed);
        c.msync_bytes.fetch_add(bytes, Ordering::Relaxed);
        c.msync_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match (flushed, covered) {
            _ if self.sync_policy != SyncPolicy::Full => Ok(()),
            // The journal's records were written out before a data sync that flushed.
            (true, Some(upto)) => {
                self.journal.covered(upto);
                Ok(())
            }
            (true, None) => self.sync_journal(),
            // Step 4 below: the journal's fdatasync is the one device cache flush still owed.
            (false, _) => self.journal.sync_forced().map_err(|e| self.failed_io("journal sync", e)),
        }
    }

    /// Makes `groups` durable; returns the msyncs made, whether one of them flushed the device
    /// cache, and the journal seq that flush covered too (see below).
    ///
    /// A journal commit and device cache flush per msync would dominate many scattered ranges
    /// (each is a device cache flush at least). On ext4 and XFS (`batch_sync`):
    /// 1. start writeback of every range of every segment (all the I/O in flight at once), and
    ///    of the journal's records;
    /// 2. segments whose ranges are all "settled" (their blocks were written and that was
    ///    committed before: an overwrite there needs no metadata) only wait for it;
    /// 3. every other segment waits for all but its last range and msyncs that one (MS_SYNC):
    ///    its journal commit covers the segment's metadata (unwritten-extent conversions), and
    ///    its cache flush every write that completed before — including those of step 2; the
    ///    ranges are settled from then on (unless a reclaim punched space meanwhile);
    /// 4. if step 3 had nothing to do, one device cache flush is still owed: a forced journal
    ///    fdatasync (which `--sync full` pays anyway) or, under `--sync data`, an msync of the
    ///    last range.
    ///
    /// Before step 3's first msync under `--sync full`, the journal's records are written to the
    /// device without a flush (`Journal::write_out`): that msync's flush covers them too, so
    /// the journal needs no fdatasync of its own — unless its file grew since its last sync.
    ///
    /// Elsewhere every range gets its own msync. Backends that sync whole files (pread,
    /// direct) make step 3 one fdatasync per segment; the direct backend writes through, so
    /// its writeback steps have nothing to start or wait for.
    fn flush(&self, groups: &[SegmentRanges], punches: u64) -> Result<(u64, bool, Option<u64>)> {
        let io = |r: std::io::Result<()>| r.map_err(|e| self.failed_io("msync", e));
        // Decided once: a group another fsync settles meanwhile must still be waited for here.
        let settled: Vec<bool> = groups
            .iter()
            .map(|g| self.batch_sync && g.ranges.iter().all(|r| self.seg(g.seg).settled(r.off, r.len)))
            .collect();
        let (mut calls, mut flushed) = (0u64, groups.is_empty());
        let mut covered = None;
        // A settled group gets no sync of its own below: its segment is checked here.
        for g in groups.iter().zip(&settled).filter(|(_, s)| **s).map(|(g, _)| g) {
            io(self.seg(g.seg).intact())?;
        }
        if self.batch_sync {
            for g in groups {
                for r in &g.ranges {
                    io(self.seg(g.seg).start_writeback(r.off, r.len))?;
                }
            }
            if self.sync_policy == SyncPolicy::Full && !groups.is_empty() {
                // The journal's write overlaps the data's (its fdatasync follows the waits).
                self.journal.start_writeback().map_err(|e| self.failed_io("journal sync", e))?;
            }
            for g in groups.iter().zip(&settled).filter(|(_, s)| **s).map(|(g, _)| g) {
                let span = g.span(0);
                io(self.seg(g.seg).wait_written(span.off, span.len))?;
            }
        }
        for g in groups.iter().zip(&settled).filter(|(_, s)| !**s).map(|(g, _)| g) {
            let seg = self.seg(g.seg);
            let (before, last) = g.ranges.split_at(g.ranges.len() - 1);
            if !before.is_empty() && !seg.syncs_whole_file() {
                if self.batch_sync {
                    let span = g.span(1);
                    io(seg.wait_written(span.off, span.len))?;
                } else {
                    for r in before {
                        calls += 1;
                        io(seg.sync_range(r.off, r.len))?;
                    }
                }
            }
            if self.batch_sync && self.sync_policy == SyncPolicy::Full && !flushed {
                covered = self.journal.write_out().map_err(|e| self.failed_io("journal sync", e))?;
            }
            calls += 1;
            io(seg.sync_range(last[0].off, last[0].len))?;
            flushed = true;
            if self.batch_sync && punches.is_multiple_of(2) && self.punches.load(Ordering::Acquire) == punches {
                for r in &g.ranges {
                    seg.mark_settled(r.off, r.len);
                }
            }
        }
        if !flushed && self.sync_policy == SyncPolicy::Data {
            let g = groups.last().expect("groups are not empty");
            let r = g.ranges[g.ranges.len() - 1];
            calls += 1;
            io(self.seg(g.seg).sync_range(r.off, r.len))?;
            flushed = true;
        }
        Ok((calls, flushed, covered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: u64, len: u64) -> Run {
        Run { start, len }
    }

    #[test]
    fn runs_are_merged_and_split_per_segment() {
        // 4 blocks of 10 bytes per segment (segment size 40).
        let g = by_segment(vec![run(6, 1), run(2, 3), run(1, 2), run(9, 0), run(12, 1)], 10, 40);
        assert_eq!(
            g,
            vec![
                SegmentRanges { seg: 0, ranges: vec![ByteRange { off: 10, len: 30 }] },
                SegmentRanges { seg: 1, ranges: vec![ByteRange { off: 0, len: 10 }, ByteRange { off: 20, len: 10 }] },
                SegmentRanges { seg: 3, ranges: vec![ByteRange { off: 0, len: 10 }] },
            ]
        );
        assert_eq!(g[1].span(0), ByteRange { off: 0, len: 30 });
        assert_eq!(g[1].span(1), ByteRange { off: 0, len: 10 });
        assert!(by_segment(vec![], 10, 40).is_empty());
    }
}
