//! Inodes: numbers, times, kinds, attributes, and what an inode holds in memory.

use std::time::{SystemTime, UNIX_EPOCH};

use super::dir::Dir;
use super::extents::Extents;
use crate::store::alloc::Run;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_conversion() {
        let t = Ts { sec: 1_700_000_000, nsec: 123 };
        assert_eq!(Ts::from(SystemTime::from(t)), t);
        let t = Ts { sec: -2, nsec: 5 };
        assert_eq!(Ts::from(SystemTime::from(t)), t);
    }
}
