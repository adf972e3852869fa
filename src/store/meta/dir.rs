//! Directories: entries under stable readdir cookies, with a name index.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::LazyLock;

use hashbrown::HashTable;

use super::inode::{Ino, Kind};
use crate::store::codec::Malformed;

/// An entry name: up to 16 bytes inline (most names), longer ones on the heap.
pub type Name = smallvec::SmallVec<[u8; 16]>;

/// A directory entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The entry's readdir offset (see [`Dir`]).
    pub cookie: u64,
    pub name: Name,
    pub ino: Ino,
    pub kind: Kind,
}

/// A directory: entries ordered by their readdir offset (*cookie*), plus a name index.
///
/// Cookies 1 and 2 are `.` and `..`. An entry's cookie is a stable hash of its name (SipHash
/// with a fixed key, 62 bits), as ext4 orders a directory by name hash: a name always sits at
/// the same place, so a listing continued from an offset never returns a name twice even if
/// it was renamed away and back or removed and created again meanwhile, and never skips an
/// entry that stayed. Two names with one hash (rare) take the next free cookie. Cookies are
/// kept in the checkpoint, so entries of stores written before (counted 3, 4, …) keep theirs.
#[derive(Debug, Clone)]
pub struct Dir {
    pub parent: Ino,
    entries: BTreeMap<u64, Entry>,
    /// Name hash (the process's, not the cookie's) → cookie.
    index: HashTable<u64>,
    /// Kept for the checkpoint format (format 1 counted cookies up from here); unused.
    pub next_cookie: u64,
    /// Number of subdirectories (a directory's link count is 2 + this).
    pub subdirs: u32,
}

/// First cookie an entry can have (1 and 2 are `.` and `..`).
pub const FIRST_COOKIE: u64 = 3;

static NAME_HASH: LazyLock<hashbrown::DefaultHashBuilder> = LazyLock::new(Default::default);

fn name_hash(name: &[u8]) -> u64 {
    NAME_HASH.hash_one(name)
}

/// Where `name` sits in every directory: the same on every run and every machine (the
/// cookies are stored in the checkpoint), below 2^62 so offsets stay positive.
fn cookie_of(name: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0x6d6d_6170_6673, 0x6469_7265_6e74);
    h.write(name);
    FIRST_COOKIE + (h.finish() >> 2)
}

impl Dir {
    pub fn new(parent: Ino) -> Dir {
        Dir { parent, entries: BTreeMap::new(), index: HashTable::new(), next_cookie: FIRST_COOKIE, subdirs: 0 }
    }

    fn cookie_by_name(&self, name: &[u8]) -> Option<u64> {
        let entries = &self.entries;
        self.index.find(name_hash(name), |c| *entries[c].name == *name).copied()
    }

    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.cookie_by_name(name).map(|c| &self.entries[&c])
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries with a cookie greater than `after`, in cookie order.
    pub fn iter_after(&self, after: u64) -> impl Iterator<Item = &Entry> {
        self.entries.range(after.saturating_add(1)..).map(|(_, e)| e)
    }

    /// Makes room for `n` more entries (checkpoint load).
    pub fn reserve(&mut self, n: usize) {
        let entries = &self.entries;
        self.index.reserve(n, |c| name_hash(&entries[c].name));
    }

    pub(super) fn add(&mut self, name: &[u8], ino: Ino, kind: Kind) {
        let mut cookie = cookie_of(name);
        while self.entries.contains_key(&cookie) {
            cookie = if cookie == u64::MAX >> 2 { FIRST_COOKIE } else { cookie + 1 };
        }
        self.insert(Entry { cookie, name: Name::from_slice(name), ino, kind });
    }

    /// Adds an entry read from a checkpoint; `Err` if its cookie is not larger than every
    /// cookie present (the image lists them in order) or it names no inode.
    pub fn add_loaded(&mut self, e: Entry) -> Result<(), Malformed> {
        if self.entries.last_key_value().is_some_and(|(&c, _)| c >= e.cookie) || e.ino == 0 || e.cookie < FIRST_COOKIE {
            return Err(Malformed);
        }
        self.insert(e);
        Ok(())
    }

    fn insert(&mut self, e: Entry) {
        if e.kind == Kind::Dir {
            self.subdirs += 1;
        }
        let (h, c) = (name_hash(&e.name), e.cookie);
        self.entries.insert(c, e);
        let entries = &self.entries;
        self.index.insert_unique(h, c, |c| name_hash(&entries[c].name));
    }

    pub(super) fn remove(&mut self, name: &[u8]) -> Option<Entry> {
        let entries = &self.entries;
        let slot = self.index.find_entry(name_hash(name), |c| *entries[c].name == *name).ok()?;
        let (c, _) = slot.remove();
        let e = self.entries.remove(&c).expect("indexed entries exist");
        if e.kind == Kind::Dir {
            self.subdirs -= 1;
        }
        Some(e)
    }

    /// Points an existing entry at another inode; returns the inode it pointed at.
    pub(super) fn replace(&mut self, name: &[u8], ino: Ino, kind: Kind) -> Option<Ino> {
        let c = self.cookie_by_name(name)?;
        let e = self.entries.get_mut(&c).expect("indexed entries exist");
        let old = e.ino;
        match (e.kind == Kind::Dir, kind == Kind::Dir) {
            (true, false) => self.subdirs -= 1,
            (false, true) => self.subdirs += 1,
            _ => {}
        }
        e.ino = ino;
        e.kind = kind;
        Some(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_keeps_its_place_through_removal_and_renames() {
        let mut d = Dir::new(1);
        for i in 0..1000u64 {
            d.add(format!("name-{i}-with-a-long-tail").as_bytes(), i + 10, Kind::File);
        }
        assert_eq!(d.get(b"name-7-with-a-long-tail").unwrap().ino, 17);
        let c900 = d.get(b"name-900-with-a-long-tail").unwrap().cookie;
        for i in 0..800u64 {
            assert_eq!(d.remove(format!("name-{i}-with-a-long-tail").as_bytes()).unwrap().ino, i + 10);
        }
        assert_eq!(d.len(), 200);
        assert!(d.get(b"name-5-with-a-long-tail").is_none());
        assert_eq!(d.get(b"name-900-with-a-long-tail").unwrap().cookie, c900);
        // Removed and added again (a rename away and back): the same place, so a listing past
        // it does not see it a second time.
        let e = d.remove(b"name-900-with-a-long-tail").unwrap();
        d.add(b"name-900-with-a-long-tail", e.ino, e.kind);
        assert_eq!(d.get(b"name-900-with-a-long-tail").unwrap().cookie, c900);
        assert!(d.iter_after(c900).all(|e| &*e.name != b"name-900-with-a-long-tail"));
        // Cookies are ordered, unique and above `..`.
        let cookies: Vec<u64> = d.iter_after(0).map(|e| e.cookie).collect();
        assert!(cookies.windows(2).all(|w| w[0] < w[1]) && cookies[0] >= FIRST_COOKIE);
        assert_eq!(cookie_of(b"stable"), cookie_of(b"stable"));
        d.add(b"x", 5, Kind::Dir);
        assert_eq!(d.subdirs, 1);
        assert_eq!(d.replace(b"x", 6, Kind::File), Some(5));
        assert_eq!(d.subdirs, 0);
    }

    #[test]
    fn a_taken_cookie_moves_the_newcomer_to_the_next_free_one() {
        let mut d = Dir::new(1);
        let c = cookie_of(b"a");
        // An old-format entry (counted cookies) sitting where "a" hashes to.
        d.add_loaded(Entry { cookie: c, name: Name::from_slice(b"old"), ino: 9, kind: Kind::File }).unwrap();
        d.add(b"a", 10, Kind::File);
        assert_eq!(d.get(b"a").unwrap().cookie, c + 1);
        assert_eq!(d.get(b"old").unwrap().cookie, c);
    }
}
