//! Metadata: inodes, extent maps, directories, and the operations (`Op`) that change them.
//!
//! Every metadata change is an `Op`: the live path appends it to the journal and then applies
//! it with the functions here; mount replays the journal through the very same functions, so
//! the state after a crash is exactly the state the journal describes.

use std::hash::BuildHasher;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use hashbrown::HashTable;

use super::alloc::{BlockNo, Run};
use super::codec::{Dec, Enc, Truncated};

/// An inode number. Never reused: numbers come from a counter kept in the journal.
pub type Ino = u64;
/// The root directory.
pub const ROOT: Ino = 1;

/// A timestamp with nanosecond precision. Packed to 12 bytes: three per inode, a million
/// inodes in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed(4))]
pub struct Ts {
    pub sec: i64,
    pub nsec: u32,
}

impl Ts {
    pub fn now() -> Ts {
        SystemTime::now().into()
    }
}

impl From<SystemTime> for Ts {
    fn from(t: SystemTime) -> Ts {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Ts { sec: d.as_secs() as i64, nsec: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Ts { sec: -(d.as_secs() as i64), nsec: 0 }
                } else {
                    Ts { sec: -(d.as_secs() as i64) - 1, nsec: 1_000_000_000 - d.subsec_nanos() }
                }
            }
        }
    }
}

impl From<Ts> for SystemTime {
    fn from(t: Ts) -> SystemTime {
        let nanos = std::time::Duration::new(0, t.nsec);
        if t.sec >= 0 {
            UNIX_EPOCH + std::time::Duration::from_secs(t.sec as u64) + nanos
        } else {
            UNIX_EPOCH - std::time::Duration::from_secs(t.sec.unsigned_abs()) + nanos
        }
    }
}

/// The kind of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    Socket = 5,
    CharDev = 6,
    BlockDev = 7,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::Socket,
            6 => Kind::CharDev,
            7 => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// Attributes of an inode (what `stat` shows, minus what is derived).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    /// Permission bits including set-user-ID, set-group-ID and sticky (12 bits).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub rdev: u32,
    pub size: u64,
    /// Blocks (of the store's block size) allocated to the file.
    pub blocks: u64,
    pub atime: Ts,
    pub mtime: Ts,
    pub ctime: Ts,
}

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

    fn add(&mut self, name: &[u8], ino: Ino, kind: Kind) {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        self.add_at(Entry { cookie, name: Name::from_slice(name), ino, kind });
    }

    /// Appends an entry; its cookie must be larger than every cookie present.
    pub fn add_at(&mut self, e: Entry) {
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

    fn remove(&mut self, name: &[u8]) -> Option<Entry> {
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
    fn replace(&mut self, name: &[u8], ino: Ino, kind: Kind) -> Option<Ino> {
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

/// What an inode holds besides its attributes.
#[derive(Debug, Clone)]
pub enum Content {
    File(Extents),
    Dir(Box<Dir>),
    Symlink(Box<[u8]>),
    /// FIFOs, sockets and device nodes: attributes only.
    Special,
}

/// An extended attribute: name, value.
pub type Xattr = (Box<[u8]>, Box<[u8]>);

/// The rarely used parts of an inode.
#[derive(Debug, Default)]
pub struct Extra {
    /// Physical runs written since the last fsync of this file.
    pub dirty: Vec<Run>,
    /// Extended attributes, in the order they were set.
    pub xattrs: Vec<Xattr>,
}

/// An inode as the store keeps it in memory.
#[derive(Debug)]
pub struct Inode {
    pub attr: Attr,
    pub content: Content,
    /// Open file handles (not persistent: after a crash there are none).
    pub opens: u32,
    /// The kernel's lookup count (not persistent).
    pub lookups: u64,
    /// Dirty runs and extended attributes, boxed: most inodes have neither.
    pub extra: Option<Box<Extra>>,
    /// mtime/ctime changed by data writes and not yet in the journal.
    pub times_dirty: bool,
    /// Freed (unlinked and closed); the number stays reserved until the kernel forgets it.
    pub freed: bool,
}

impl Inode {
    pub fn new(attr: Attr, content: Content) -> Inode {
        Inode { attr, content, opens: 0, lookups: 0, extra: None, times_dirty: false, freed: false }
    }

    pub fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    /// Takes the dirty runs, leaving none.
    pub fn take_dirty(&mut self) -> Vec<Run> {
        self.extra.as_mut().map(|e| std::mem::take(&mut e.dirty)).unwrap_or_default()
    }

    pub fn xattrs(&self) -> &[Xattr] {
        self.extra.as_ref().map_or(&[], |e| &e.xattrs)
    }

    pub fn xattr(&self, name: &[u8]) -> Option<&[u8]> {
        self.xattrs().iter().find(|(n, _)| **n == *name).map(|(_, v)| &**v)
    }

    pub fn dir(&self) -> Option<&Dir> {
        match &self.content {
            Content::Dir(d) => Some(d),
            _ => None,
        }
    }

    pub fn dir_mut(&mut self) -> Option<&mut Dir> {
        match &mut self.content {
            Content::Dir(d) => Some(d),
            _ => None,
        }
    }

    pub fn extents(&self) -> Option<&Extents> {
        match &self.content {
            Content::File(x) => Some(x),
            _ => None,
        }
    }

    /// Attributes with the derived fields (link count of directories, block count) filled in.
    pub fn stat(&self) -> Attr {
        let mut a = self.attr;
        match &self.content {
            Content::Dir(d) if a.nlink > 0 => a.nlink = 2 + d.subdirs,
            Content::File(x) => a.blocks = x.blocks(),
            _ => {}
        }
        a
    }
}

/// One metadata change, as journaled. A journal record holds the ops of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A new inode linked as `parent/name`.
    Create {
        ino: Ino,
        parent: Ino,
        name: Vec<u8>,
        kind: Kind,
        perm: u16,
        uid: u32,
        gid: u32,
        rdev: u32,
        time: Ts,
        target: Vec<u8>,
    },
    /// Removes `parent/name`; the inode loses a link (a directory loses all).
    Unlink { parent: Ino, name: Vec<u8>, time: Ts },
    /// Moves `parent/name` to `newparent/newname`, replacing (unlinking) what was there.
    Rename { parent: Ino, name: Vec<u8>, newparent: Ino, newname: Vec<u8>, time: Ts },
    /// Releases an inode that has no links and no open handles; its blocks become free.
    Free { ino: Ino },
    /// Sets the attributes `setattr` may change (whole values, so replay is idempotent).
    SetAttr { ino: Ino, perm: u16, uid: u32, gid: u32, atime: Ts, mtime: Ts, ctime: Ts },
    /// Sets a file's size; blocks wholly past it are freed.
    SetSize { ino: Ino, size: u64, mtime: Ts, ctime: Ts },
    /// Maps logical blocks of a file to freshly allocated physical blocks.
    Map { ino: Ino, logical: u64, phys: BlockNo, len: u64 },
    /// A new name `parent/name` for an existing inode (hard link).
    Link { ino: Ino, parent: Ino, name: Vec<u8>, time: Ts },
    /// Swaps the inodes behind `parent/name` and `newparent/newname` (RENAME_EXCHANGE).
    Exchange { parent: Ino, name: Vec<u8>, newparent: Ino, newname: Vec<u8>, time: Ts },
    /// Sets an extended attribute (creating or replacing it).
    SetXattr { ino: Ino, name: Vec<u8>, value: Vec<u8>, time: Ts },
    /// Removes an extended attribute.
    RemoveXattr { ino: Ino, name: Vec<u8>, time: Ts },
    /// Frees the stored blocks in `logical..logical+len` (punch hole); they read as zeros.
    Punch { ino: Ino, logical: u64, len: u64, time: Ts },
}

/// Why an op could not be applied: the journal contradicts the state it applies to.
#[derive(Debug)]
pub struct Inconsistent(pub String);

impl Op {
    const CREATE: u8 = 1;
    const UNLINK: u8 = 2;
    const RENAME: u8 = 3;
    const FREE: u8 = 4;
    const SETATTR: u8 = 5;
    const SETSIZE: u8 = 6;
    const MAP: u8 = 7;
    const LINK: u8 = 8;
    const EXCHANGE: u8 = 9;
    const SETXATTR: u8 = 10;
    const REMOVEXATTR: u8 = 11;
    const PUNCH: u8 = 12;

    pub fn encode(&self, e: &mut Enc) {
        match self {
            Op::Create { ino, parent, name, kind, perm, uid, gid, rdev, time, target } => {
                e.u8(Self::CREATE);
                e.u64(*ino);
                e.u64(*parent);
                e.bytes(name);
                e.u8(*kind as u8);
                e.u16(*perm);
                e.u32(*uid);
                e.u32(*gid);
                e.u32(*rdev);
                ts(e, *time);
                e.bytes(target);
            }
            Op::Unlink { parent, name, time } => {
                e.u8(Self::UNLINK);
                e.u64(*parent);
                e.bytes(name);
                ts(e, *time);
            }
            Op::Rename { parent, name, newparent, newname, time } => {
                e.u8(Self::RENAME);
                e.u64(*parent);
                e.bytes(name);
                e.u64(*newparent);
                e.bytes(newname);
                ts(e, *time);
            }
            Op::Free { ino } => {
                e.u8(Self::FREE);
                e.u64(*ino);
            }
            Op::SetAttr { ino, perm, uid, gid, atime, mtime, ctime } => {
                e.u8(Self::SETATTR);
                e.u64(*ino);
                e.u16(*perm);
                e.u32(*uid);
                e.u32(*gid);
                ts(e, *atime);
                ts(e, *mtime);
                ts(e, *ctime);
            }
            Op::SetSize { ino, size, mtime, ctime } => {
                e.u8(Self::SETSIZE);
                e.u64(*ino);
                e.u64(*size);
                ts(e, *mtime);
                ts(e, *ctime);
            }
            Op::Map { ino, logical, phys, len } => {
                e.u8(Self::MAP);
                e.u64(*ino);
                e.u64(*logical);
                e.u64(*phys);
                e.u64(*len);
            }
            Op::Link { ino, parent, name, time } => {
                e.u8(Self::LINK);
                e.u64(*ino);
                e.u64(*parent);
                e.bytes(name);
                ts(e, *time);
            }
            Op::Exchange { parent, name, newparent, newname, time } => {
                e.u8(Self::EXCHANGE);
                e.u64(*parent);
                e.bytes(name);
                e.u64(*newparent);
                e.bytes(newname);
                ts(e, *time);
            }
            Op::SetXattr { ino, name, value, time } => {
                e.u8(Self::SETXATTR);
                e.u64(*ino);
                e.bytes(name);
                e.bytes(value);
                ts(e, *time);
            }
            Op::RemoveXattr { ino, name, time } => {
                e.u8(Self::REMOVEXATTR);
                e.u64(*ino);
                e.bytes(name);
                ts(e, *time);
            }
            Op::Punch { ino, logical, len, time } => {
                e.u8(Self::PUNCH);
                e.u64(*ino);
                e.u64(*logical);
                e.u64(*len);
                ts(e, *time);
            }
        }
    }

    pub fn decode(d: &mut Dec<'_>) -> Result<Op, Truncated> {
        Ok(match d.u8()? {
            Self::CREATE => Op::Create {
                ino: d.u64()?,
                parent: d.u64()?,
                name: d.bytes()?.to_vec(),
                kind: Kind::from_u8(d.u8()?).ok_or(Truncated)?,
                perm: d.u16()?,
                uid: d.u32()?,
                gid: d.u32()?,
                rdev: d.u32()?,
                time: get_ts(d)?,
                target: d.bytes()?.to_vec(),
            },
            Self::UNLINK => Op::Unlink { parent: d.u64()?, name: d.bytes()?.to_vec(), time: get_ts(d)? },
            Self::RENAME => Op::Rename {
                parent: d.u64()?,
                name: d.bytes()?.to_vec(),
                newparent: d.u64()?,
                newname: d.bytes()?.to_vec(),
                time: get_ts(d)?,
            },
            Self::FREE => Op::Free { ino: d.u64()? },
            Self::SETATTR => Op::SetAttr {
                ino: d.u64()?,
                perm: d.u16()?,
                uid: d.u32()?,
                gid: d.u32()?,
                atime: get_ts(d)?,
                mtime: get_ts(d)?,
                ctime: get_ts(d)?,
            },
            Self::SETSIZE => Op::SetSize { ino: d.u64()?, size: d.u64()?, mtime: get_ts(d)?, ctime: get_ts(d)? },
            Self::MAP => Op::Map { ino: d.u64()?, logical: d.u64()?, phys: d.u64()?, len: d.u64()? },
            Self::LINK => Op::Link { ino: d.u64()?, parent: d.u64()?, name: d.bytes()?.to_vec(), time: get_ts(d)? },
            Self::EXCHANGE => Op::Exchange {
                parent: d.u64()?,
                name: d.bytes()?.to_vec(),
                newparent: d.u64()?,
                newname: d.bytes()?.to_vec(),
                time: get_ts(d)?,
            },
            Self::SETXATTR => {
                Op::SetXattr { ino: d.u64()?, name: d.bytes()?.to_vec(), value: d.bytes()?.to_vec(), time: get_ts(d)? }
            }
            Self::REMOVEXATTR => Op::RemoveXattr { ino: d.u64()?, name: d.bytes()?.to_vec(), time: get_ts(d)? },
            Self::PUNCH => Op::Punch { ino: d.u64()?, logical: d.u64()?, len: d.u64()?, time: get_ts(d)? },
            _ => return Err(Truncated),
        })
    }
}

pub fn ts(e: &mut Enc, t: Ts) {
    e.i64(t.sec);
    e.u32(t.nsec);
}

pub fn get_ts(d: &mut Dec<'_>) -> Result<Ts, Truncated> {
    let sec = d.i64()?;
    let nsec = d.u32()?;
    if nsec >= 1_000_000_000 {
        return Err(Truncated);
    }
    Ok(Ts { sec, nsec })
}

fn bad(msg: impl Into<String>) -> Inconsistent {
    Inconsistent(msg.into())
}

/// Builds the inode an `Op::Create` makes.
pub fn created_inode(op: &Op) -> Inode {
    let Op::Create { ino, parent, kind, perm, uid, gid, rdev, time, target, .. } = op else {
        unreachable!("created_inode takes Op::Create")
    };
    let content = match kind {
        Kind::File => Content::File(Extents::default()),
        Kind::Dir => Content::Dir(Box::new(Dir::new(*parent))),
        Kind::Symlink => Content::Symlink(target.clone().into_boxed_slice()),
        _ => Content::Special,
    };
    let size = if *kind == Kind::Symlink { target.len() as u64 } else { 0 };
    Inode::new(
        Attr {
            ino: *ino,
            kind: *kind,
            perm: *perm,
            uid: *uid,
            gid: *gid,
            nlink: 1,
            rdev: *rdev,
            size,
            blocks: 0,
            atime: *time,
            mtime: *time,
            ctime: *time,
        },
        content,
    )
}

/// Applies `Op::Create` to the parent (the new inode comes from [`created_inode`]).
pub fn apply_create(parent: &mut Inode, op: &Op) -> Result<(), Inconsistent> {
    let Op::Create { ino, name, kind, time, .. } = op else { unreachable!() };
    let dir = parent.dir_mut().ok_or_else(|| bad("create in a non-directory"))?;
    if dir.get(name).is_some() {
        return Err(bad(format!("create of existing name {:?}", String::from_utf8_lossy(name))));
    }
    dir.add(name, *ino, *kind);
    parent.attr.mtime = *time;
    parent.attr.ctime = *time;
    Ok(())
}

/// Applies the directory side of `Op::Unlink`; returns the inode number that lost a link.
pub fn apply_unlink_dir(parent: &mut Inode, name: &[u8], time: Ts) -> Result<Entry, Inconsistent> {
    let dir = parent.dir_mut().ok_or_else(|| bad("unlink in a non-directory"))?;
    let e = dir.remove(name).ok_or_else(|| bad("unlink of a missing name"))?;
    parent.attr.mtime = time;
    parent.attr.ctime = time;
    Ok(e)
}

/// Applies the inode side of an unlink: one link fewer (a directory has none left).
pub fn apply_unlink_child(child: &mut Inode, time: Ts) {
    if child.attr.kind == Kind::Dir {
        child.attr.nlink = 0;
    } else {
        child.attr.nlink = child.attr.nlink.saturating_sub(1);
    }
    child.attr.ctime = time;
}

/// Applies `Op::Rename` to the locked inodes: `newparent` is `None` when it is `parent`,
/// `replaced` is the inode the target name pointed at, if any.
pub fn apply_rename(
    parent: &mut Inode,
    newparent: Option<&mut Inode>,
    moved: &mut Inode,
    replaced: Option<&mut Inode>,
    op: &Op,
) -> Result<(), Inconsistent> {
    let Op::Rename { name, newparent: np_ino, newname, time, .. } = op else { unreachable!() };
    let e = apply_unlink_dir(parent, name, *time)?;
    if e.ino != moved.attr.ino {
        return Err(bad("rename source is not the inode it names"));
    }
    let np = match newparent {
        Some(p) => p,
        None => parent,
    };
    if let Some(r) = replaced {
        let old = apply_unlink_dir(np, newname, *time)?;
        if old.ino != r.attr.ino {
            return Err(bad("rename target is not the inode it names"));
        }
        apply_unlink_child(r, *time);
    }
    let dir = np.dir_mut().ok_or_else(|| bad("rename into a non-directory"))?;
    if dir.get(newname).is_some() {
        return Err(bad("rename onto a name that exists"));
    }
    dir.add(newname, e.ino, e.kind);
    np.attr.mtime = *time;
    np.attr.ctime = *time;
    if let Content::Dir(d) = &mut moved.content {
        d.parent = *np_ino;
    }
    moved.attr.ctime = *time;
    Ok(())
}

/// Applies `Op::Free`: drops the content; returns the blocks to free.
pub fn apply_free(inode: &mut Inode) -> Vec<Run> {
    inode.freed = true;
    inode.extra = None;
    match std::mem::replace(&mut inode.content, Content::Special) {
        Content::File(mut x) => x.truncate(0),
        _ => Vec::new(),
    }
}

/// Applies `Op::SetAttr`.
pub fn apply_setattr(inode: &mut Inode, op: &Op) {
    let Op::SetAttr { perm, uid, gid, atime, mtime, ctime, .. } = op else { unreachable!() };
    let a = &mut inode.attr;
    a.perm = *perm;
    a.uid = *uid;
    a.gid = *gid;
    a.atime = *atime;
    a.mtime = *mtime;
    a.ctime = *ctime;
}

/// Applies `Op::SetSize`; returns the blocks freed by a shrink.
pub fn apply_setsize(inode: &mut Inode, op: &Op, block_size: u64) -> Result<Vec<Run>, Inconsistent> {
    let Op::SetSize { size, mtime, ctime, .. } = op else { unreachable!() };
    let Content::File(x) = &mut inode.content else {
        return Err(bad("size change of a non-file"));
    };
    // Only a shrink frees blocks: blocks preallocated past EOF (fallocate KEEP_SIZE) survive
    // growth, as on ext4.
    let freed = if *size < inode.attr.size { x.truncate(size.div_ceil(block_size)) } else { Vec::new() };
    inode.attr.size = *size;
    inode.attr.mtime = *mtime;
    inode.attr.ctime = *ctime;
    Ok(freed)
}

/// Applies `Op::Link` to the new parent and the linked inode.
pub fn apply_link(parent: &mut Inode, child: &mut Inode, op: &Op) -> Result<(), Inconsistent> {
    let Op::Link { ino, name, time, .. } = op else { unreachable!() };
    let kind = child.attr.kind;
    let dir = parent.dir_mut().ok_or_else(|| bad("link in a non-directory"))?;
    if dir.get(name).is_some() || kind == Kind::Dir || child.attr.ino != *ino {
        return Err(bad("link onto an existing name, of a directory, or of another inode"));
    }
    dir.add(name, *ino, kind);
    parent.attr.mtime = *time;
    parent.attr.ctime = *time;
    child.attr.nlink += 1;
    child.attr.ctime = *time;
    Ok(())
}

/// Applies `Op::Exchange`: `a` is behind `parent/name`, `b` behind `newparent/newname`
/// (`newparent` is `None` when it is `parent`).
pub fn apply_exchange(
    parent: &mut Inode,
    newparent: Option<&mut Inode>,
    a: &mut Inode,
    b: &mut Inode,
    op: &Op,
) -> Result<(), Inconsistent> {
    let Op::Exchange { parent: p_ino, name, newparent: np_ino, newname, time } = op else { unreachable!() };
    let (ka, kb) = (a.attr.kind, b.attr.kind);
    let ea = parent
        .dir_mut()
        .and_then(|d| d.replace(name, b.attr.ino, kb))
        .ok_or_else(|| bad("exchange of a missing name"))?;
    let np = match newparent {
        Some(p) => p,
        None => parent,
    };
    let eb = np
        .dir_mut()
        .and_then(|d| d.replace(newname, a.attr.ino, ka))
        .ok_or_else(|| bad("exchange of a missing name"))?;
    if ea != a.attr.ino || eb != b.attr.ino {
        return Err(bad("exchange names do not match the inodes"));
    }
    np.attr.mtime = *time;
    np.attr.ctime = *time;
    if let Content::Dir(d) = &mut a.content {
        d.parent = *np_ino;
    }
    if let Content::Dir(d) = &mut b.content {
        d.parent = *p_ino;
    }
    a.attr.ctime = *time;
    b.attr.ctime = *time;
    Ok(())
}

/// Applies `Op::SetXattr` / `Op::RemoveXattr`.
pub fn apply_xattr(inode: &mut Inode, op: &Op) -> Result<(), Inconsistent> {
    match op {
        Op::SetXattr { name, value, time, .. } => {
            let x = &mut inode.extra_mut().xattrs;
            match x.iter_mut().find(|(n, _)| **n == **name) {
                Some(slot) => slot.1 = value.clone().into_boxed_slice(),
                None => x.push((name.clone().into_boxed_slice(), value.clone().into_boxed_slice())),
            }
            inode.attr.ctime = *time;
        }
        Op::RemoveXattr { name, time, .. } => {
            let x = &mut inode.extra_mut().xattrs;
            let i = x.iter().position(|(n, _)| **n == **name).ok_or_else(|| bad("removal of a missing xattr"))?;
            x.remove(i);
            inode.attr.ctime = *time;
        }
        _ => unreachable!(),
    }
    Ok(())
}

/// Applies `Op::Punch`; returns the freed blocks.
pub fn apply_punch(inode: &mut Inode, op: &Op) -> Result<Vec<Run>, Inconsistent> {
    let Op::Punch { logical, len, time, .. } = op else { unreachable!() };
    let Content::File(x) = &mut inode.content else {
        return Err(bad("punch of a non-file"));
    };
    let freed = x.remove_range(*logical, logical.saturating_add(*len));
    inode.attr.mtime = *time;
    inode.attr.ctime = *time;
    Ok(freed)
}

/// Applies `Op::Map`.
pub fn apply_map(inode: &mut Inode, op: &Op) -> Result<(), Inconsistent> {
    let Op::Map { logical, phys, len, .. } = op else { unreachable!() };
    let Content::File(x) = &mut inode.content else {
        return Err(bad("extent for a non-file"));
    };
    if !x.pieces_are_holes(*logical, logical + len) {
        return Err(bad("extent over stored blocks"));
    }
    x.insert(Extent { logical: *logical, phys: *phys, len: *len });
    Ok(())
}

impl Extents {
    fn pieces_are_holes(&self, start: u64, end: u64) -> bool {
        let mut ok = true;
        self.pieces(start, end, |p| ok &= matches!(p, Piece::Hole { .. }));
        ok
    }
}

/// Encodes a whole inode (for the checkpoint).
pub fn encode_inode(e: &mut Enc, i: &Inode) {
    let a = &i.attr;
    e.u64(a.ino);
    e.u8(a.kind as u8);
    e.u16(a.perm);
    e.u32(a.uid);
    e.u32(a.gid);
    e.u32(a.nlink);
    e.u32(a.rdev);
    e.u64(a.size);
    ts(e, a.atime);
    ts(e, a.mtime);
    ts(e, a.ctime);
    match &i.content {
        Content::File(x) => {
            e.u64(x.list.len() as u64);
            for ext in &x.list {
                e.u64(ext.logical);
                e.u64(ext.phys);
                e.u64(ext.len);
            }
        }
        Content::Dir(d) => {
            e.u64(d.parent);
            e.u64(d.next_cookie);
            e.u64(d.len() as u64);
            for ent in d.iter_after(0) {
                e.u64(ent.cookie);
                e.u64(ent.ino);
                e.u8(ent.kind as u8);
                e.bytes(&ent.name);
            }
        }
        Content::Symlink(t) => e.bytes(t),
        Content::Special => {}
    }
    e.u32(i.xattrs().len() as u32);
    for (n, v) in i.xattrs() {
        e.bytes(n);
        e.bytes(v);
    }
}

/// Decodes an inode written by [`encode_inode`].
pub fn decode_inode(d: &mut Dec<'_>) -> Result<Inode, Truncated> {
    let ino = d.u64()?;
    let kind = Kind::from_u8(d.u8()?).ok_or(Truncated)?;
    let mut attr = Attr {
        ino,
        kind,
        perm: d.u16()?,
        uid: d.u32()?,
        gid: d.u32()?,
        nlink: d.u32()?,
        rdev: d.u32()?,
        size: d.u64()?,
        blocks: 0,
        atime: get_ts(d)?,
        mtime: get_ts(d)?,
        ctime: get_ts(d)?,
    };
    let content = match kind {
        Kind::File => {
            let n = d.u64()?;
            let mut x = Extents::default();
            x.list.reserve(n.min(1 << 20) as usize);
            for _ in 0..n {
                let ext = Extent { logical: d.u64()?, phys: d.u64()?, len: d.u64()? };
                if x.list.last().is_some_and(|l| l.logical + l.len > ext.logical) {
                    return Err(Truncated);
                }
                x.blocks += ext.len;
                x.list.push(ext);
            }
            Content::File(x)
        }
        Kind::Dir => {
            let mut dir = Dir::new(d.u64()?);
            dir.next_cookie = d.u64()?;
            let n = d.u64()?;
            dir.reserve(n.min(1 << 24) as usize);
            for _ in 0..n {
                let cookie = d.u64()?;
                let ino = d.u64()?;
                let kind = Kind::from_u8(d.u8()?).ok_or(Truncated)?;
                let name = Name::from_slice(d.bytes()?);
                if dir.entries.last().is_some_and(|l| l.cookie >= cookie) || ino == 0 {
                    return Err(Truncated);
                }
                dir.add_at(Entry { cookie, name, ino, kind });
            }
            Content::Dir(Box::new(dir))
        }
        Kind::Symlink => Content::Symlink(d.bytes()?.into()),
        _ => Content::Special,
    };
    attr.blocks = 0;
    let mut inode = Inode::new(attr, content);
    let n = d.u32()?;
    for _ in 0..n {
        let name = d.bytes()?.into();
        let value = d.bytes()?.into();
        inode.extra_mut().xattrs.push((name, value));
    }
    Ok(inode)
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

    #[test]
    fn op_codec_round_trip() {
        let t = Ts { sec: -5, nsec: 999_999_999 };
        let ops = vec![
            Op::Create {
                ino: 7,
                parent: 1,
                name: b"a\xffb".to_vec(),
                kind: Kind::Symlink,
                perm: 0o4755,
                uid: 1000,
                gid: 100,
                rdev: 3,
                time: t,
                target: b"/x/y".to_vec(),
            },
            Op::Unlink { parent: 1, name: b"n".to_vec(), time: t },
            Op::Rename { parent: 1, name: b"a".to_vec(), newparent: 2, newname: b"b".to_vec(), time: t },
            Op::Free { ino: 9 },
            Op::SetAttr { ino: 3, perm: 0o644, uid: 1, gid: 2, atime: t, mtime: t, ctime: Ts::default() },
            Op::SetSize { ino: 3, size: 1 << 40, mtime: t, ctime: t },
            Op::Map { ino: 3, logical: 5, phys: 6, len: 7 },
        ];
        let mut e = Enc::default();
        for op in &ops {
            op.encode(&mut e);
        }
        let mut d = Dec { buf: &e.buf };
        let back: Vec<Op> = (0..ops.len()).map(|_| Op::decode(&mut d).unwrap()).collect();
        assert_eq!(back, ops);
        assert!(d.is_empty());
        // Every strict prefix fails to decode instead of producing garbage.
        for cut in 0..e.buf.len() {
            let mut d = Dec { buf: &e.buf[..cut] };
            let all = (0..ops.len()).map(|_| Op::decode(&mut d)).collect::<Result<Vec<_>, _>>();
            assert!(all.is_err(), "prefix {cut} decoded");
        }
    }

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
        // Round trip through the checkpoint encoding.
        let mut e = Enc::default();
        encode_inode(
            &mut e,
            &Inode::new(
                created_inode(&Op::Create {
                    ino: 3,
                    parent: 1,
                    name: vec![],
                    kind: Kind::Dir,
                    perm: 0o755,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    time: Ts::default(),
                    target: vec![],
                })
                .attr,
                Content::Dir(Box::new(d.clone())),
            ),
        );
        let back = decode_inode(&mut Dec { buf: &e.buf }).unwrap();
        let bd = back.dir().unwrap();
        assert_eq!(bd.len(), 201);
        assert_eq!(bd.get(b"name-900-with-a-long-tail").unwrap().cookie, cookie_of_900);
        assert_eq!(bd.next_cookie, d.next_cookie);
    }

    #[test]
    fn ts_conversion() {
        let t = Ts { sec: 1_700_000_000, nsec: 123 };
        assert_eq!(Ts::from(SystemTime::from(t)), t);
        let t = Ts { sec: -2, nsec: 5 };
        assert_eq!(Ts::from(SystemTime::from(t)), t);
    }
}
