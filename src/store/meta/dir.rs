//! Directories: entries under stable readdir cookies, with a name index.

use std::hash::BuildHasher;
use std::sync::LazyLock;

use hashbrown::HashTable;

use super::inode::{Ino, Kind};
use crate::store::codec::Malformed;

/// An entry name: up to 16 bytes inline (most names), longer ones on the heap.
pub type Name = smallvec::SmallVec<[u8; 16]>;

/// A directory entry. `ino == 0` marks a removed entry awaiting compaction.
#[derive(Debug, Clone)]
pub struct Entry {
    pub cookie: u64,
    pub name: Name,
    pub ino: Ino,
    pub kind: Kind,
}

/// A directory: entries in creation order under stable cookies (readdir offsets), plus a
/// name index. Cookies 1 and 2 are `.` and `..`; entries get 3, 4, … and are never renumbered,
/// so an offset stays valid while entries are added and removed.
///
/// Entries sit in a vector sorted by cookie (new cookies are always the largest); a removal
/// leaves a tombstone, and the vector is compacted once tombstones outnumber live entries.
/// The index maps a name's hash to a position, so each name is stored once. This keeps a
/// million-file store within a few hundred MiB of heap.
#[derive(Debug, Clone)]
pub struct Dir {
    pub parent: Ino,
    entries: Vec<Entry>,
    live: usize,
    index: HashTable<u32>,
    pub next_cookie: u64,
    /// Number of subdirectories (a directory's link count is 2 + this).
    pub subdirs: u32,
}

/// First cookie handed to a real entry.
pub const FIRST_COOKIE: u64 = 3;

static NAME_HASH: LazyLock<hashbrown::DefaultHashBuilder> = LazyLock::new(Default::default);

fn name_hash(name: &[u8]) -> u64 {
    NAME_HASH.hash_one(name)
}

impl Dir {
    pub fn new(parent: Ino) -> Dir {
        Dir { parent, entries: Vec::new(), live: 0, index: HashTable::new(), next_cookie: FIRST_COOKIE, subdirs: 0 }
    }

    fn position(&self, name: &[u8]) -> Option<usize> {
        let entries = &self.entries;
        self.index.find(name_hash(name), |&p| *entries[p as usize].name == *name).map(|&p| p as usize)
    }

    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.position(name).map(|p| &self.entries[p])
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn len(&self) -> usize {
        self.live
    }

    /// Live entries with a cookie greater than `after`, in cookie order.
    pub fn iter_after(&self, after: u64) -> impl Iterator<Item = &Entry> {
        let start = self.entries.partition_point(|e| e.cookie <= after);
        self.entries[start..].iter().filter(|e| e.ino != 0)
    }

    /// Makes room for `n` more entries (checkpoint load).
    pub fn reserve(&mut self, n: usize) {
        self.entries.reserve_exact(n);
        let entries = &self.entries;
        self.index.reserve(n, |&p| name_hash(&entries[p as usize].name));
    }

    pub(super) fn add(&mut self, name: &[u8], ino: Ino, kind: Kind) {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        self.add_at(Entry { cookie, name: Name::from_slice(name), ino, kind });
    }

    /// Appends an entry read from a checkpoint; `Err` if its cookie is not larger than every
    /// cookie present or it names no inode (the image is malformed).
    pub fn add_loaded(&mut self, e: Entry) -> Result<(), Malformed> {
        if self.entries.last().is_some_and(|l| l.cookie >= e.cookie) || e.ino == 0 {
            return Err(Malformed);
        }
        self.add_at(e);
        Ok(())
    }

    /// Appends an entry; its cookie must be larger than every cookie present.
    fn add_at(&mut self, e: Entry) {
        debug_assert!(self.entries.last().is_none_or(|l| l.cookie < e.cookie));
        if e.kind == Kind::Dir {
            self.subdirs += 1;
        }
        let h = name_hash(&e.name);
        let pos = self.entries.len() as u32;
        self.entries.push(e);
        self.live += 1;
        let entries = &self.entries;
        self.index.insert_unique(h, pos, |&p| name_hash(&entries[p as usize].name));
    }

    pub(super) fn remove(&mut self, name: &[u8]) -> Option<Entry> {
        let entries = &self.entries;
        let slot = self.index.find_entry(name_hash(name), |&p| *entries[p as usize].name == *name).ok()?;
        let (pos, _) = slot.remove();
        let tomb = Entry { cookie: self.entries[pos as usize].cookie, name: Name::new(), ino: 0, kind: Kind::File };
        let e = std::mem::replace(&mut self.entries[pos as usize], tomb);
        self.live -= 1;
        if e.kind == Kind::Dir {
            self.subdirs -= 1;
        }
        if self.entries.len() > 64 && self.entries.len() > 2 * self.live {
            self.compact();
        }
        Some(e)
    }

    /// Points an existing entry at another inode; returns the inode it pointed at.
    pub(super) fn replace(&mut self, name: &[u8], ino: Ino, kind: Kind) -> Option<Ino> {
        let p = self.position(name)?;
        let e = &mut self.entries[p];
        let old = e.ino;
        match (e.kind == Kind::Dir, kind == Kind::Dir) {
            (true, false) => self.subdirs -= 1,
            (false, true) => self.subdirs += 1,
            _ => {}
        }
        let e = &mut self.entries[p];
        e.ino = ino;
        e.kind = kind;
        Some(old)
    }

    /// Drops tombstones; positions change, cookies do not.
    fn compact(&mut self) {
        self.entries.retain(|e| e.ino != 0);
        self.entries.shrink_to_fit();
        self.index.clear();
        let entries = &self.entries;
        for (p, e) in entries.iter().enumerate() {
            self.index.insert_unique(name_hash(&e.name), p as u32, |&q| name_hash(&entries[q as usize].name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_cookies_survive_removals_and_compaction() {
        let mut d = Dir::new(1);
        for i in 0..1000u64 {
            d.add(format!("name-{i}-with-a-long-tail").as_bytes(), i + 10, Kind::File);
        }
        assert_eq!(d.get(b"name-7-with-a-long-tail").unwrap().ino, 17);
        let cookie_of_900 = d.get(b"name-900-with-a-long-tail").unwrap().cookie;
        for i in 0..800u64 {
            assert_eq!(d.remove(format!("name-{i}-with-a-long-tail").as_bytes()).unwrap().ino, i + 10);
        }
        // Compaction happened (tombstones outnumbered live entries); lookups and cookies hold.
        assert!(d.entries.len() < 1000);
        assert_eq!(d.len(), 200);
        assert!(d.get(b"name-5-with-a-long-tail").is_none());
        assert_eq!(d.get(b"name-900-with-a-long-tail").unwrap().cookie, cookie_of_900);
        let after: Vec<u64> = d.iter_after(cookie_of_900).map(|e| e.ino).collect();
        assert_eq!(after, (901..1000).map(|i| i + 10).collect::<Vec<_>>());
        d.add(b"x", 5, Kind::Dir);
        assert_eq!(d.subdirs, 1);
        assert!(d.iter_after(0).last().unwrap().cookie > cookie_of_900);
    }
}
