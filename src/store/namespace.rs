//! Namespace operations of the store: lookup, create, unlink, rename, readdir, attributes.

use std::sync::atomic::Ordering;

use super::meta::{self, Attr, Content, Kind, Op, Ts};
use super::{Error, Ino, NAME_MAX, ROOT, Result, SetAttr, Store, lock, rd, wr, wr_live};

/// A name a directory may hold: 1 to 255 bytes, no `/` or NUL, not `.` or `..`.
fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(Error::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(Error::Invalid);
    }
    Ok(())
}

/// Checks that `name` can be added to directory `p`: a live directory without that name.
fn free_name_in(p: &meta::Inode, name: &[u8]) -> Result<()> {
    let dir = p.dir().ok_or(Error::NotDir)?;
    if p.attr.nlink == 0 {
        return Err(Error::NotFound);
    }
    if dir.get(name).is_some() {
        return Err(Error::Exists);
    }
    Ok(())
}

/// Most links one inode may have (as ext4).
pub(super) const LINK_MAX: u32 = 65_000;
/// Longest extended attribute name (Linux XATTR_NAME_MAX).
const XATTR_NAME_MAX: usize = 255;
/// Largest extended attribute value (Linux XATTR_SIZE_MAX; the kernel refuses more with E2BIG).
const XATTR_SIZE_MAX: usize = 65_536;
/// The file capability attribute, dropped with set-user-ID.
const CAPS: &[u8] = b"security.capability";
/// Extended attribute namespaces mmapfs stores.
const XATTR_NAMESPACES: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];
/// Most bytes of names and values one inode may carry; more is ENOSPC.
const XATTR_TOTAL_MAX: usize = 1 << 20;

impl Store {
    /// Attributes of `parent/name`; counts one kernel lookup.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        if name.len() > NAME_MAX {
            return Err(Error::NameTooLong);
        }
        let ino = {
            let p = self.node(parent)?;
            let g = rd(&p);
            let dir = g.dir().ok_or(Error::NotDir)?;
            dir.get(name).ok_or(Error::NotFound)?.ino
        };
        let node = self.node(ino)?;
        let mut g = wr(&node);
        g.lookups += 1;
        Ok(g.stat())
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        let Ok(node) = self.node(ino) else { return };
        let gone = {
            let mut g = wr(&node);
            g.lookups = g.lookups.saturating_sub(n);
            g.freed && g.lookups == 0 && g.opens == 0
        };
        if gone {
            self.remove_node(ino);
        }
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        let node = self.node(ino)?;
        let g = rd(&node);
        Ok(g.stat())
    }

    /// Creates `parent/name`; counts one kernel lookup of the new inode.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        kind: Kind,
        perm: u16,
        uid: u32,
        gid: u32,
        rdev: u32,
        target: &[u8],
    ) -> Result<Attr> {
        check_name(name)?;
        let _g = rd(&self.gate);
        let _ns = lock(&self.ns);
        let pnode = self.node(parent)?;
        let mut p = wr(&pnode);
        free_name_in(&p, name)?;
        // A set-group-ID directory passes its group on, and the bit itself to directories.
        // (The kernel already stripped S_ISGID from files of callers outside that group.)
        let (gid, perm) = if p.attr.perm & libc::S_ISGID as u16 != 0 {
            (p.attr.gid, if kind == Kind::Dir { perm | libc::S_ISGID as u16 } else { perm })
        } else {
            (gid, perm)
        };
        let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
        let op = Op::Create {
            ino,
            parent,
            name: name.to_vec(),
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            rdev,
            time: Ts::now(),
            target: target.to_vec(),
        };
        self.append(std::slice::from_ref(&op))?;
        meta::apply_create(&mut p, &op)?;
        let mut child = meta::created_inode(&op);
        child.lookups = 1;
        let attr = child.stat();
        self.table.insert(child);
        drop(p);
        drop(_ns);
        drop(_g);
        self.maybe_checkpoint();
        Ok(attr)
    }

    /// Removes `parent/name`: a file or symlink (`rmdir == false`) or an empty directory.
    pub fn unlink(&self, parent: Ino, name: &[u8], rmdir: bool) -> Result<()> {
        if name.len() > NAME_MAX {
            return Err(Error::NameTooLong);
        }
        {
            let _g = rd(&self.gate);
            let _ns = lock(&self.ns);
            let pnode = self.node(parent)?;
            let mut p = wr(&pnode);
            let ent = p.dir().ok_or(Error::NotDir)?.get(name).ok_or(Error::NotFound)?.clone();
            let cnode = self.node(ent.ino)?;
            let mut c = wr(&cnode);
            match (rmdir, c.attr.kind == Kind::Dir) {
                (true, false) => return Err(Error::NotDir),
                (false, true) => return Err(Error::IsDir),
                (true, true) if !c.dir().is_some_and(|d| d.is_empty()) => return Err(Error::NotEmpty),
                _ => {}
            }
            let time = Ts::now();
            let mut ops = vec![Op::Unlink { parent, name: name.to_vec(), time }];
            let last_link = c.attr.kind == Kind::Dir || c.attr.nlink <= 1;
            if last_link && c.opens == 0 {
                ops.push(Op::Free { ino: ent.ino });
            }
            self.append(&ops)?;
            meta::apply_unlink_dir(&mut p, name, time)?;
            meta::apply_unlink_child(&mut c, time);
            if ops.len() == 2 {
                let freed = meta::apply_free(&mut c);
                let gone = c.lookups == 0;
                drop(c);
                self.release_blocks(freed);
                if gone {
                    self.remove_node(ent.ino);
                }
            }
        }
        self.maybe_checkpoint();
        Ok(())
    }

    /// Renames `parent/name` to `newparent/newname`, replacing a compatible target.
    pub fn rename(&self, parent: Ino, name: &[u8], newparent: Ino, newname: &[u8], noreplace: bool) -> Result<()> {
        check_name(newname)?;
        if name.len() > NAME_MAX {
            return Err(Error::NameTooLong);
        }
        {
            let _g = rd(&self.gate);
            let _ns = lock(&self.ns);
            let src = rd(&*self.node(parent)?).dir().ok_or(Error::NotDir)?.get(name).ok_or(Error::NotFound)?.clone();
            let dst = {
                let np = self.node(newparent)?;
                let g = rd(&np);
                if g.attr.nlink == 0 {
                    return Err(Error::NotFound);
                }
                g.dir().ok_or(Error::NotDir)?.get(newname).cloned()
            };
            if let Some(d) = &dst {
                if noreplace {
                    return Err(Error::Exists);
                }
                if d.ino == src.ino {
                    return Ok(());
                }
                match (src.kind == Kind::Dir, d.kind == Kind::Dir) {
                    (true, false) => return Err(Error::NotDir),
                    (false, true) => return Err(Error::IsDir),
                    (true, true) if !rd(&*self.node(d.ino)?).dir().is_some_and(|x| x.is_empty()) => {
                        return Err(Error::NotEmpty);
                    }
                    _ => {}
                }
            }
            // A directory cannot move into its own subtree.
            if src.kind == Kind::Dir && self.is_within(newparent, src.ino)? {
                return Err(Error::Invalid);
            }
            let time = Ts::now();
            let mut ops = vec![Op::Rename { parent, name: name.to_vec(), newparent, newname: newname.to_vec(), time }];
            let replaced = match &dst {
                Some(d) => Some(self.node(d.ino)?),
                None => None,
            };
            let mut rg = replaced.as_ref().map(|n| wr(n));
            if let (Some(d), Some(r)) = (&dst, &rg)
                && (r.attr.kind == Kind::Dir || r.attr.nlink <= 1)
                && r.opens == 0
            {
                ops.push(Op::Free { ino: d.ino });
            }
            self.append(&ops)?;
            let (pn, npn, mn) = (self.node(parent)?, self.node(newparent)?, self.node(src.ino)?);
            let mut pg = wr(&pn);
            let mut npg = if newparent != parent { Some(wr(&npn)) } else { None };
            let mut mg = wr(&mn);
            meta::apply_rename(&mut pg, npg.as_deref_mut(), &mut mg, rg.as_deref_mut(), &ops[0])?;
            if ops.len() == 2 {
                let r = rg.as_mut().expect("replaced inode is locked");
                let freed = meta::apply_free(r);
                let gone = r.lookups == 0;
                self.release_blocks(freed);
                if gone {
                    drop(rg);
                    self.remove_node(dst.as_ref().expect("replaced").ino);
                }
            }
        }
        self.maybe_checkpoint();
        Ok(())
    }

    /// Adds the name `newparent/newname` for `ino` (hard link); counts one kernel lookup.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> Result<Attr> {
        check_name(newname)?;
        {
            let _g = rd(&self.gate);
            let _ns = lock(&self.ns);
            let pnode = self.node(newparent)?;
            let cnode = self.node(ino)?;
            let mut p = wr(&pnode);
            free_name_in(&p, newname)?;
            let mut c = wr(&cnode);
            if c.attr.kind == Kind::Dir {
                return Err(Error::NotPermitted);
            }
            if c.freed || c.attr.nlink == 0 {
                return Err(Error::NotFound);
            }
            if c.attr.nlink >= LINK_MAX {
                return Err(Error::TooManyLinks);
            }
            let op = Op::Link { ino, parent: newparent, name: newname.to_vec(), time: Ts::now() };
            self.append(std::slice::from_ref(&op))?;
            meta::apply_link(&mut p, &mut c, &op)?;
            c.lookups += 1;
            let attr = c.stat();
            drop((c, p));
            drop((_ns, _g));
            self.maybe_checkpoint();
            Ok(attr)
        }
    }

    /// Swaps `parent/name` and `newparent/newname`, both of which must exist (RENAME_EXCHANGE).
    pub fn exchange(&self, parent: Ino, name: &[u8], newparent: Ino, newname: &[u8]) -> Result<()> {
        if name.len() > NAME_MAX || newname.len() > NAME_MAX {
            return Err(Error::NameTooLong);
        }
        {
            let _g = rd(&self.gate);
            let _ns = lock(&self.ns);
            let entry = |dir: Ino, n: &[u8]| -> Result<meta::Entry> {
                rd(&*self.node(dir)?).dir().ok_or(Error::NotDir)?.get(n).cloned().ok_or(Error::NotFound)
            };
            let (a, b) = (entry(parent, name)?, entry(newparent, newname)?);
            if a.ino == b.ino {
                return Ok(());
            }
            // Neither directory may end up inside itself.
            if a.kind == Kind::Dir && self.is_within(newparent, a.ino)?
                || b.kind == Kind::Dir && self.is_within(parent, b.ino)?
            {
                return Err(Error::Invalid);
            }
            let op =
                Op::Exchange { parent, name: name.to_vec(), newparent, newname: newname.to_vec(), time: Ts::now() };
            self.append(std::slice::from_ref(&op))?;
            let (pn, npn, an, bn) = (self.node(parent)?, self.node(newparent)?, self.node(a.ino)?, self.node(b.ino)?);
            let mut pg = wr(&pn);
            let mut npg = if newparent != parent { Some(wr(&npn)) } else { None };
            meta::apply_exchange(&mut pg, npg.as_deref_mut(), &mut wr(&an), &mut wr(&bn), &op)?;
        }
        self.maybe_checkpoint();
        Ok(())
    }

    /// True if directory `dir` is `ancestor` or lies below it.
    fn is_within(&self, dir: Ino, ancestor: Ino) -> Result<bool> {
        let mut at = dir;
        loop {
            if at == ancestor {
                return Ok(true);
            }
            if at == ROOT {
                return Ok(false);
            }
            at = rd(&*self.node(at)?).dir().map(|d| d.parent).ok_or(Error::NotDir)?;
        }
    }

    /// Sets an extended attribute. `create`: fail if it exists; `replace`: fail if it does not.
    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], create: bool, replace: bool) -> Result<()> {
        if name.is_empty() || name.len() > XATTR_NAME_MAX {
            return Err(Error::Range);
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(Error::ValueTooBig);
        }
        // The namespaces Linux filesystems store; ACLs (system.*) are not supported.
        if !XATTR_NAMESPACES.iter().any(|p| name.starts_with(p)) {
            return Err(Error::Unsupported);
        }
        let _g = rd(&self.gate);
        let node = self.node(ino)?;
        let mut n = wr_live(&node)?;
        let old = n.xattr(name).map(<[u8]>::len);
        match (old, create, replace) {
            (Some(_), true, _) => return Err(Error::Exists),
            (None, _, true) => return Err(Error::NoData),
            _ => {}
        }
        let total: usize = n.xattrs().iter().map(|(k, v)| k.len() + v.len()).sum();
        if total - old.map_or(0, |o| o + name.len()) + name.len() + value.len() > XATTR_TOTAL_MAX {
            return Err(Error::NoSpace);
        }
        let op = Op::SetXattr { ino, name: name.to_vec(), value: value.to_vec(), time: Ts::now() };
        self.append(std::slice::from_ref(&op))?;
        meta::apply_xattr(&mut n, &op)?;
        drop(n);
        drop(_g);
        self.maybe_checkpoint();
        Ok(())
    }

    /// Hands the value of an extended attribute to `f`.
    pub fn getxattr<R>(&self, ino: Ino, name: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        if name.len() > XATTR_NAME_MAX {
            return Err(Error::Range);
        }
        let node = self.node(ino)?;
        let n = rd(&node);
        n.xattr(name).map(f).ok_or(Error::NoData)
    }

    /// The names of all extended attributes, each followed by a NUL.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        let n = rd(&node);
        let mut out = Vec::new();
        for (k, _) in n.xattrs() {
            out.extend_from_slice(k);
            out.push(0);
        }
        Ok(out)
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        if name.len() > XATTR_NAME_MAX {
            return Err(Error::Range);
        }
        let _g = rd(&self.gate);
        let node = self.node(ino)?;
        let mut n = wr(&node);
        if n.xattr(name).is_none() || n.freed {
            return Err(Error::NoData);
        }
        let op = Op::RemoveXattr { ino, name: name.to_vec(), time: Ts::now() };
        self.append(std::slice::from_ref(&op))?;
        meta::apply_xattr(&mut n, &op)?;
        Ok(())
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        let g = rd(&node);
        match &g.content {
            Content::Symlink(t) => Ok(t.to_vec()),
            _ => Err(Error::Invalid),
        }
    }

    /// Lists a directory from `offset` (0 at the start; then the offset of the last entry
    /// seen). `f(ino, offset of this entry, kind, name)` returns true when its buffer is full.
    pub fn readdir(&self, ino: Ino, offset: u64, mut f: impl FnMut(Ino, u64, Kind, &[u8]) -> bool) -> Result<()> {
        let node = self.node(ino)?;
        let g = rd(&node);
        let dir = g.dir().ok_or(Error::NotDir)?;
        if offset < 1 && f(ino, 1, Kind::Dir, b".") {
            return Ok(());
        }
        if offset < 2 && f(dir.parent, 2, Kind::Dir, b"..") {
            return Ok(());
        }
        for (cookie, e) in dir.iter_after(offset.max(2)) {
            if f(e.ino, cookie, e.kind, &e.name) {
                break;
            }
        }
        Ok(())
    }

    pub fn setattr(&self, ino: Ino, s: SetAttr) -> Result<Attr> {
        if let Some(size) = s.size {
            self.truncate(ino, size)?;
        }
        let _g = rd(&self.gate);
        let node = self.node(ino)?;
        let mut n = wr_live(&node)?;
        let a = n.attr;
        let mut perm = s.mode.map_or(a.perm, |m| (m & 0o7777) as u16);
        let mut ops = Vec::new();
        if s.kill_privs && s.mode.is_none() && a.kind == Kind::File {
            // As the kernel does for write, truncate and chown: set-user-ID always goes,
            // set-group-ID only with group execute (else it marks mandatory locking), and so
            // does a file capability.
            perm &= !(libc::S_ISUID as u16);
            if perm & libc::S_IXGRP as u16 != 0 {
                perm &= !(libc::S_ISGID as u16);
            }
            if n.xattr(CAPS).is_some() {
                ops.push(Op::RemoveXattr { ino, name: CAPS.to_vec(), time: Ts::now() });
            }
        }
        let unchanged = perm == a.perm
            && s.uid.is_none()
            && s.gid.is_none()
            && s.atime.is_none()
            && s.mtime.is_none()
            && s.ctime.is_none()
            && ops.is_empty();
        if unchanged {
            return Ok(n.stat());
        }
        let op = Op::SetAttr {
            ino,
            perm,
            uid: s.uid.unwrap_or(a.uid),
            gid: s.gid.unwrap_or(a.gid),
            atime: s.atime.unwrap_or(a.atime),
            mtime: s.mtime.unwrap_or(a.mtime),
            ctime: s.ctime.unwrap_or_else(Ts::now),
        };
        ops.push(op);
        self.append(&ops)?;
        for op in &ops[..ops.len() - 1] {
            meta::apply_xattr(&mut n, op)?;
        }
        let op = &ops[ops.len() - 1];
        meta::apply_setattr(&mut n, op);
        n.times_dirty = false;
        let attr = n.stat();
        drop(n);
        drop(_g);
        self.maybe_checkpoint();
        Ok(attr)
    }
}
