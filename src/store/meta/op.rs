//! `Op`, the journaled metadata change: its encoding, and how it applies to inodes. The live
//! path appends an op to the journal and then applies it with these functions; mount replays
//! the journal through the very same functions, so the state after a crash is exactly the
//! state the journal describes.

use super::attr::{Attr, Ino, Kind, Ts};
use super::dir::{Dir, Entry};
use super::extents::{Extent, Extents};
use super::inode::{Content, Inode};
use crate::store::alloc::{BlockNo, Run};
use crate::store::codec::{Dec, Enc, Malformed};

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

    // One arm per op, each a list of fields: long, but the shape of a codec, and kept
    // next to `decode` so the two are read side by side.
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

    pub fn decode(d: &mut Dec<'_>) -> Result<Op, Malformed> {
        Ok(match d.u8()? {
            Self::CREATE => Op::Create {
                ino: d.u64()?,
                parent: d.u64()?,
                name: d.bytes()?.to_vec(),
                kind: Kind::from_u8(d.u8()?).ok_or(Malformed)?,
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
            _ => return Err(Malformed),
        })
    }
}

pub fn ts(e: &mut Enc, t: Ts) {
    e.i64(t.sec);
    e.u32(t.nsec);
}

pub fn get_ts(d: &mut Dec<'_>) -> Result<Ts, Malformed> {
    let sec = d.i64()?;
    let nsec = d.u32()?;
    if nsec >= 1_000_000_000 {
        return Err(Malformed);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
