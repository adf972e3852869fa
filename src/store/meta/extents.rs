//! Extent maps: which physical blocks hold a file's logical blocks.

use crate::store::alloc::{BlockNo, Run};
use crate::store::codec::Malformed;

/// A run of a file's logical blocks stored in a run of physical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub phys: BlockNo,
    pub len: u64,
}

/// One piece of a logical block range: stored, or a hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    Mapped { logical: u64, phys: BlockNo, len: u64 },
    Hole { logical: u64, len: u64 },
}

/// A file's extent map: sorted, non-overlapping; physically adjacent extents are merged.
#[derive(Debug, Default, Clone)]
pub struct Extents {
    list: Vec<Extent>,
    blocks: u64,
}

impl Extents {
    /// An empty map with room for `n` extents (checkpoint load).
    pub fn with_capacity(n: usize) -> Extents {
        Extents { list: Vec::with_capacity(n), blocks: 0 }
    }

    /// Appends an extent read from a checkpoint; `Err` if it does not follow the last one
    /// (the image is malformed).
    pub fn push_loaded(&mut self, x: Extent) -> Result<(), Malformed> {
        if self.list.last().is_some_and(|l| l.logical + l.len > x.logical) {
            return Err(Malformed);
        }
        self.blocks += x.len;
        self.list.push(x);
        Ok(())
    }

    /// Number of extents.
    pub fn count(&self) -> usize {
        self.list.len()
    }

    /// Blocks allocated.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn iter(&self) -> impl Iterator<Item = &Extent> {
        self.list.iter()
    }

    /// Index of the first extent ending after `block`.
    fn first_after(&self, block: u64) -> usize {
        self.list.partition_point(|e| e.logical + e.len <= block)
    }

    /// Splits `start..end` (logical blocks) into mapped pieces and holes, in order.
    pub fn pieces(&self, start: u64, end: u64, mut f: impl FnMut(Piece)) {
        let mut at = start;
        for e in &self.list[self.first_after(start)..] {
            if at >= end {
                break;
            }
            if e.logical >= end {
                break;
            }
            if e.logical > at {
                f(Piece::Hole { logical: at, len: e.logical - at });
                at = e.logical;
            }
            let stop = end.min(e.logical + e.len);
            f(Piece::Mapped { logical: at, phys: e.phys + (at - e.logical), len: stop - at });
            at = stop;
        }
        if at < end {
            f(Piece::Hole { logical: at, len: end - at });
        }
    }

    /// True if every block of `start..end` is stored.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        let mut ok = true;
        self.pieces(start, end, |p| ok &= matches!(p, Piece::Mapped { .. }));
        ok
    }

    /// The physical block of the last stored block before `logical`, plus one: where an
    /// allocation for `logical` should go to stay contiguous.
    pub fn hint(&self, logical: u64) -> Option<BlockNo> {
        let i = self.first_after(logical);
        if i > 0 {
            let e = &self.list[i - 1];
            if e.logical + e.len == logical {
                return Some(e.phys + e.len);
            }
        }
        None
    }

    /// Adds an extent over a hole, merging with neighbours that continue it physically.
    pub fn insert(&mut self, x: Extent) {
        if x.len == 0 {
            return;
        }
        let i = self.first_after(x.logical);
        debug_assert!(self.list.get(i).is_none_or(|e| e.logical >= x.logical + x.len));
        self.blocks += x.len;
        let merge_prev = i > 0 && {
            let p = &self.list[i - 1];
            p.logical + p.len == x.logical && p.phys + p.len == x.phys
        };
        let merge_next = self.list.get(i).is_some_and(|n| x.logical + x.len == n.logical && x.phys + x.len == n.phys);
        match (merge_prev, merge_next) {
            (true, true) => {
                let n = self.list.remove(i);
                self.list[i - 1].len += x.len + n.len;
            }
            (true, false) => self.list[i - 1].len += x.len,
            (false, true) => {
                let n = &mut self.list[i];
                n.logical = x.logical;
                n.phys = x.phys;
                n.len += x.len;
            }
            (false, false) => self.list.insert(i, x),
        }
    }

    /// Drops the blocks in `start..end`; returns the freed physical runs.
    pub fn remove_range(&mut self, start: u64, end: u64) -> Vec<Run> {
        let mut freed = Vec::new();
        let mut kept = Vec::new();
        let i = self.first_after(start);
        let mut j = i;
        while j < self.list.len() && self.list[j].logical < end {
            let e = self.list[j];
            let (lo, hi) = (start.max(e.logical), end.min(e.logical + e.len));
            freed.push(Run { start: e.phys + (lo - e.logical), len: hi - lo });
            if e.logical < lo {
                kept.push(Extent { len: lo - e.logical, ..e });
            }
            if hi < e.logical + e.len {
                kept.push(Extent { logical: hi, phys: e.phys + (hi - e.logical), len: e.logical + e.len - hi });
            }
            j += 1;
        }
        self.list.splice(i..j, kept);
        self.blocks -= freed.iter().map(|r| r.len).sum::<u64>();
        freed
    }

    /// The first data offset (`data == true`) or hole offset at or after `off`, in bytes, below
    /// `size`; `None` if there is none (for holes, EOF counts as one).
    pub fn seek(&self, off: u64, size: u64, data: bool, bs: u64) -> Option<u64> {
        if off >= size {
            return None;
        }
        let mut found = None;
        self.pieces(off / bs, size.div_ceil(bs), |p| {
            if found.is_some() {
                return;
            }
            match (p, data) {
                (Piece::Mapped { logical, .. }, true) | (Piece::Hole { logical, .. }, false) => {
                    found = Some((logical * bs).max(off));
                }
                _ => {}
            }
        });
        match (found, data) {
            (Some(o), _) if o < size => Some(o),
            (_, false) => Some(size),
            _ => None,
        }
    }

    /// Drops every block at or after logical block `from`; returns the freed physical runs.
    pub fn truncate(&mut self, from: u64) -> Vec<Run> {
        let i = self.first_after(from);
        let mut freed = Vec::new();
        let mut head = None;
        for e in self.list.drain(i..) {
            let keep = from.saturating_sub(e.logical);
            if keep > 0 {
                // The extent straddling `from` keeps its head.
                head = Some(Extent { len: keep, ..e });
            }
            freed.push(Run { start: e.phys + keep, len: e.len - keep });
        }
        if let Some(h) = head {
            self.list.push(h);
        }
        self.blocks -= freed.iter().map(|r| r.len).sum::<u64>();
        freed
    }
}

impl Extents {
    pub(super) fn pieces_are_holes(&self, start: u64, end: u64) -> bool {
        let mut ok = true;
        self.pieces(start, end, |p| ok &= matches!(p, Piece::Hole { .. }));
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(logical: u64, phys: u64, len: u64) -> Extent {
        Extent { logical, phys, len }
    }

    #[test]
    fn extents_merge_and_pieces() {
        let mut x = Extents::default();
        x.insert(ext(0, 100, 2));
        x.insert(ext(2, 102, 2)); // continues physically: merged
        x.insert(ext(10, 50, 1));
        assert_eq!(x.list, vec![ext(0, 100, 4), ext(10, 50, 1)]);
        assert_eq!(x.blocks(), 5);
        let mut ps = vec![];
        x.pieces(1, 12, |p| ps.push(p));
        assert_eq!(
            ps,
            vec![
                Piece::Mapped { logical: 1, phys: 101, len: 3 },
                Piece::Hole { logical: 4, len: 6 },
                Piece::Mapped { logical: 10, phys: 50, len: 1 },
                Piece::Hole { logical: 11, len: 1 },
            ]
        );
        assert!(x.covers(0, 4));
        assert!(!x.covers(0, 5));
        assert_eq!(x.hint(4), Some(104));
        assert_eq!(x.hint(5), None);
    }

    #[test]
    fn extents_truncate_inside_an_extent() {
        let mut x = Extents::default();
        x.insert(ext(0, 100, 4));
        x.insert(ext(6, 200, 4));
        let freed = x.truncate(2);
        assert_eq!(freed, vec![Run { start: 102, len: 2 }, Run { start: 200, len: 4 }]);
        assert_eq!(x.list, vec![ext(0, 100, 2)]);
        assert_eq!(x.blocks(), 2);
        assert!(x.truncate(2).is_empty());
        assert_eq!(x.truncate(0), vec![Run { start: 100, len: 2 }]);
        assert_eq!(x.blocks(), 0);
    }
}
