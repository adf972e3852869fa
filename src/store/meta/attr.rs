//! What `stat` shows of an inode: its number, kind, times and attributes. The plain values
//! every other metadata file uses, so this file imports none of them.

use std::time::{SystemTime, UNIX_EPOCH};

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
