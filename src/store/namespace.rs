//! Namespace operations of the store: lookup, create, unlink, rename, readdir, attributes.

use std::sync::atomic::Ordering;

use super::meta::{self, Attr, Content, Kind, Op, Ts};
use super::{Error, Ino, NAME_MAX, ROOT, Result, SetAttr, Store, corrupt, lock, rd, wr};

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
        let dir = p.dir().ok_or(Error::NotDir)?;
        if p.attr.nlink == 0 {
            return Err(Error::NotFound);
        }
        if dir.get(name).is_some() {
            return Err(Error::Exists);
        }
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
        meta::apply_create(&mut p, &op).map_err(|e| Error::Corrupt(corrupt(e)))?;
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
            meta::apply_unlink_dir(&mut p, name, time).map_err(|e| Error::Corrupt(corrupt(e)))?;
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
            if src.kind == Kind::Dir {
                // A directory cannot move into its own subtree.
                let mut at = newparent;
                loop {
                    if at == src.ino {
                        return Err(Error::Invalid);
                    }
                    if at == ROOT {
                        break;
                    }
                    at = rd(&*self.node(at)?).dir().map(|d| d.parent).ok_or(Error::NotDir)?;
                }
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
            meta::apply_rename(&mut pg, npg.as_deref_mut(), &mut mg, rg.as_deref_mut(), &ops[0])
                .map_err(|e| Error::Corrupt(corrupt(e)))?;
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
        for e in dir.iter_after(offset.max(2)) {
            if f(e.ino, e.cookie, e.kind, &e.name) {
                break;
            }
        }
        Ok(())
    }

    pub fn setattr(&self, ino: Ino, s: SetAttr) -> Result<Attr> {
        if let Some(size) = s.size {
            self.truncate(ino, size)?;
        }
        if s.mode.is_none()
            && s.uid.is_none()
            && s.gid.is_none()
            && s.atime.is_none()
            && s.mtime.is_none()
            && s.ctime.is_none()
        {
            return self.getattr(ino);
        }
        let _g = rd(&self.gate);
        let node = self.node(ino)?;
        let mut n = wr(&node);
        if n.freed {
            return Err(Error::NotFound);
        }
        let a = n.attr;
        let op = Op::SetAttr {
            ino,
            perm: s.mode.map_or(a.perm, |m| (m & 0o7777) as u16),
            uid: s.uid.unwrap_or(a.uid),
            gid: s.gid.unwrap_or(a.gid),
            atime: s.atime.unwrap_or(a.atime),
            mtime: s.mtime.unwrap_or(a.mtime),
            ctime: s.ctime.unwrap_or_else(Ts::now),
        };
        self.append(std::slice::from_ref(&op))?;
        meta::apply_setattr(&mut n, &op);
        n.times_dirty = false;
        let attr = n.stat();
        drop(n);
        drop(_g);
        self.maybe_checkpoint();
        Ok(attr)
    }
}
