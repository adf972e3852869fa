//! Directories: entries under stable readdir cookies, with a name index.

use std::collections::BTreeMap;

use super::attr::{Ino, Kind};
use crate::store::codec::Malformed;

/// An entry name: up to 16 bytes inline (most names), longer ones on the heap.
pub type Name = smallvec::SmallVec<[u8; 16]>;

/// A directory entry (its readdir offset, the *cookie*, is its key in the [`Dir`]).
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: Name,
    pub ino: Ino,
    pub kind: Kind,
}

/// A directory: entries ordered by their readdir offset (*cookie*).
///
/// Cookies 1 and 2 are `.` and `..`. An entry's cookie is a stable hash of its name (SipHash
/// with a fixed key, 62 bits), as ext4 orders a directory by name hash: a name always sits at
/// the same place, so a listing continued from an offset never returns a name twice even if
/// it was renamed away and back or removed and created again meanwhile, and never skips an
/// entry that stayed. Two names with one hash (rare) make the later one take the next free
/// cookie; `max_probe` bounds how far a lookup looks. Because the cookie is found from the
/// name, the map is also the name index: a million entries cost about as much heap as the
/// entries themselves.
#[derive(Debug, Clone)]
pub struct Dir {
    pub parent: Ino,
    entries: BTreeMap<u64, Entry>,
    /// Farthest any entry sits from its name's cookie (0 unless names collided).
    max_probe: u64,
    /// Number of subdirectories (a directory's link count is 2 + this).
    pub subdirs: u32,
}

/// First cookie an entry can have (1 and 2 are `.` and `..`).
pub const FIRST_COOKIE: u64 = 3;

/// How far from its hash a checkpointed entry may sit and keep its cookie (farther ones,
/// counted by format 1, are placed anew at load).
const PROBE_LIMIT: u64 = 64;

/// Where `name` sits in every directory: the same on every run and every machine (the
/// cookies are stored in the checkpoint), below 2^62 + 3 so offsets stay positive.
fn cookie_of(name: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0x6d6d_6170_6673, 0x6469_7265_6e74);
    h.write(name);
    FIRST_COOKIE + (h.finish() >> 2)
}

impl Dir {
    pub fn new(parent: Ino) -> Dir {
        Dir { parent, entries: BTreeMap::new(), max_probe: 0, subdirs: 0 }
    }

    /// The cookie of the entry named `name`.
    pub fn cookie(&self, name: &[u8]) -> Option<u64> {
        let c = cookie_of(name);
        (c..=c + self.max_probe).find(|k| self.entries.get(k).is_some_and(|e| *e.name == *name))
    }

    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.cookie(name).map(|c| &self.entries[&c])
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries with a cookie greater than `after`, in cookie order, with their cookies.
    pub fn iter_after(&self, after: u64) -> impl Iterator<Item = (u64, &Entry)> {
        self.entries.range(after.saturating_add(1)..).map(|(&c, e)| (c, e))
    }

    pub(super) fn add(&mut self, name: &[u8], ino: Ino, kind: Kind) {
        let c0 = cookie_of(name);
        let mut c = c0;
        while self.entries.contains_key(&c) {
            c += 1;
        }
        self.max_probe = self.max_probe.max(c - c0);
        self.insert(c, Entry { name: Name::from_slice(name), ino, kind });
    }

    /// A directory read from a checkpoint: entries at their stored cookies, which must
    /// increase (the image lists them so), each naming an inode. The map is built in one pass
    /// from the sorted list, with full nodes. An entry whose cookie is not near its name's
    /// hash (format 1 counted them) is placed anew.
    pub fn loaded(parent: Ino, list: Vec<(u64, Entry)>) -> Result<Dir, Malformed> {
        let ordered = list.windows(2).all(|w| w[0].0 < w[1].0);
        if !ordered || list.iter().any(|(c, e)| e.ino == 0 || *c < FIRST_COOKIE) {
            return Err(Malformed);
        }
        let mut d = Dir::new(parent);
        let (near, far): (Vec<_>, Vec<_>) = list.into_iter().partition(|(c, e)| {
            let c0 = cookie_of(&e.name);
            (c0..c0 + PROBE_LIMIT).contains(c)
        });
        d.max_probe = near.iter().map(|(c, e)| c - cookie_of(&e.name)).max().unwrap_or(0);
        d.subdirs = near.iter().filter(|(_, e)| e.kind == Kind::Dir).count() as u32;
        d.entries = near.into_iter().collect();
        for (_, e) in far {
            d.add(&e.name, e.ino, e.kind);
        }
        Ok(d)
    }

    fn insert(&mut self, cookie: u64, e: Entry) {
        if e.kind == Kind::Dir {
            self.subdirs += 1;
        }
        self.entries.insert(cookie, e);
    }

    pub(super) fn remove(&mut self, name: &[u8]) -> Option<Entry> {
        let c = self.cookie(name)?;
        let e = self.entries.remove(&c).expect("found above");
        if e.kind == Kind::Dir {
            self.subdirs -= 1;
        }
        Some(e)
    }

    /// Points an existing entry at another inode; returns the inode it pointed at.
    pub(super) fn replace(&mut self, name: &[u8], ino: Ino, kind: Kind) -> Option<Ino> {
        let c = self.cookie(name)?;
        let e = self.entries.get_mut(&c).expect("found above");
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
        let c900 = d.cookie(b"name-900-with-a-long-tail").unwrap();
        for i in 0..800u64 {
            assert_eq!(d.remove(format!("name-{i}-with-a-long-tail").as_bytes()).unwrap().ino, i + 10);
        }
        assert_eq!(d.len(), 200);
        assert!(d.get(b"name-5-with-a-long-tail").is_none());
        assert_eq!(d.cookie(b"name-900-with-a-long-tail"), Some(c900));
        // Removed and added again (a rename away and back): the same place, so a listing past
        // it does not see it a second time.
        let e = d.remove(b"name-900-with-a-long-tail").unwrap();
        d.add(b"name-900-with-a-long-tail", e.ino, e.kind);
        assert_eq!(d.cookie(b"name-900-with-a-long-tail"), Some(c900));
        assert!(d.iter_after(c900).all(|(_, e)| &*e.name != b"name-900-with-a-long-tail"));
        // Cookies are ordered, unique and above `..`.
        let cookies: Vec<u64> = d.iter_after(0).map(|(c, _)| c).collect();
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
        // Another name sitting where "a" hashes to (a collision, as if).
        d.insert(c, Entry { name: Name::from_slice(b"other"), ino: 9, kind: Kind::File });
        d.add(b"a", 10, Kind::File);
        assert_eq!(d.cookie(b"a"), Some(c + 1));
        assert_eq!(d.get(b"a").unwrap().ino, 10);
        // The collided name stays found after the first one goes.
        d.entries.remove(&c);
        assert_eq!(d.get(b"a").unwrap().ino, 10);
        assert_eq!(d.remove(b"a").unwrap().ino, 10);
        assert!(d.is_empty());
    }

    #[test]
    fn format_1_cookies_are_placed_anew_at_load() {
        let old = Entry { name: Name::from_slice(b"old"), ino: 9, kind: Kind::File };
        let dir = Entry { name: Name::from_slice(b"dir"), ino: 10, kind: Kind::Dir };
        let c = cookie_of(b"kept");
        let kept = Entry { name: Name::from_slice(b"kept"), ino: 11, kind: Kind::File };
        let d = Dir::loaded(1, vec![(3, old.clone()), (4, dir), (c, kept)]).unwrap();
        assert_eq!(d.cookie(b"old"), Some(cookie_of(b"old")));
        assert_eq!(d.cookie(b"kept"), Some(c));
        assert_eq!((d.get(b"dir").unwrap().ino, d.subdirs, d.len()), (10, 1, 3));
        assert!(Dir::loaded(1, vec![(4, old.clone()), (4, old.clone())]).is_err(), "cookies not increasing");
        assert!(Dir::loaded(1, vec![(2, old)]).is_err(), "a cookie of `..`");
    }
}
