//! The checkpoint: every inode in one checksummed file, so mount replays only the journal
//! written since. Written to `checkpoint.tmp`, synced, renamed over `checkpoint`, and the
//! directory synced: a crash leaves the old or the new checkpoint, never a mix.
//!
//! ```text
//! magic "MMAPFSCK" | uuid (16) | seq (u64) | next ino (u64) | inode count (u64)
//! inodes (meta::encode_inode) … | crc32 of everything before (u32)
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use super::codec::{Dec, Enc, Malformed};
use super::files;
use super::meta::{Attr, Content, Dir, Entry, Extent, Extents, FIRST_COOKIE, Inode, Kind, Name, get_ts, ts};

const MAGIC: &[u8; 8] = b"MMAPFSCK";

/// What a checkpoint holds.
pub struct Snapshot {
    /// Journal records up to this seq are included.
    pub seq: u64,
    pub next_ino: u64,
    pub inodes: Vec<Inode>,
}

/// Starts a checkpoint image; the caller appends the inodes with `meta::encode_inode`.
pub fn begin(uuid: &[u8; 16], seq: u64, next_ino: u64, count: u64) -> Enc {
    let mut e = Enc { buf: Vec::with_capacity(64 + count as usize * 96) };
    e.buf.extend_from_slice(MAGIC);
    e.buf.extend_from_slice(uuid);
    e.u64(seq);
    e.u64(next_ino);
    e.u64(count);
    e
}

/// Seals the image and installs it durably as `dir/checkpoint`.
pub fn install(dir: &Path, mut e: Enc) -> io::Result<()> {
    let crc = crc32fast::hash(&e.buf);
    e.u32(crc);
    let tmp = dir.join("checkpoint.tmp");
    let mut f = files::open(&tmp, OpenOptions::new().write(true).create(true).truncate(true))?;
    f.write_all(&e.buf)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("checkpoint"))?;
    File::open(dir)?.sync_all()
}

/// Reads `dir/checkpoint`; `Ok(None)` if there is none yet.
pub fn load(dir: &Path, uuid: &[u8; 16]) -> Result<Option<Snapshot>, String> {
    let path = dir.join("checkpoint");
    let data = match files::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let fail = |m: &str| format!("checkpoint {}: {m}", path.display());
    if data.len() < 52 || &data[..8] != MAGIC {
        return Err(fail("not a checkpoint of this format"));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(fail("checksum mismatch"));
    }
    if &body[8..24] != uuid {
        return Err(fail("belongs to another store (uuid mismatch)"));
    }
    let mut d = Dec { buf: &body[24..] };
    let trunc = |_| fail("truncated");
    let seq = d.u64().map_err(trunc)?;
    let next_ino = d.u64().map_err(trunc)?;
    let count = d.u64().map_err(trunc)?;
    let mut inodes = Vec::with_capacity(count.min(1 << 24) as usize);
    for _ in 0..count {
        inodes.push(decode_inode(&mut d).map_err(trunc)?);
    }
    if !d.is_empty() {
        return Err(fail("trailing bytes"));
    }
    Ok(Some(Snapshot { seq, next_ino, inodes }))
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
            e.u64(x.count() as u64);
            for ext in x.iter() {
                e.u64(ext.logical);
                e.u64(ext.phys);
                e.u64(ext.len);
            }
        }
        Content::Dir(d) => {
            e.u64(d.parent);
            // Format 1 counted cookies up from this field; it stays in the image, unused.
            e.u64(FIRST_COOKIE);
            e.u64(d.len() as u64);
            for (cookie, ent) in d.iter_after(0) {
                e.u64(cookie);
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
pub fn decode_inode(d: &mut Dec<'_>) -> Result<Inode, Malformed> {
    let ino = d.u64()?;
    let kind = Kind::from_u8(d.u8()?).ok_or(Malformed)?;
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
            let mut x = Extents::with_capacity(n.min(1 << 20) as usize);
            for _ in 0..n {
                x.push_loaded(Extent { logical: d.u64()?, phys: d.u64()?, len: d.u64()? })?;
            }
            Content::File(x)
        }
        Kind::Dir => {
            let parent = d.u64()?;
            let _format_1_next_cookie = d.u64()?;
            let n = d.u64()?;
            let mut entries = Vec::with_capacity(n.min(1 << 24) as usize);
            for _ in 0..n {
                let cookie = d.u64()?;
                let ino = d.u64()?;
                let kind = Kind::from_u8(d.u8()?).ok_or(Malformed)?;
                let name = Name::from_slice(d.bytes()?);
                entries.push((cookie, Entry { name, ino, kind }));
            }
            Content::Dir(Box::new(Dir::loaded(parent, entries)?))
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
    use crate::store::meta::{Op, Ts, created_inode};

    /// A directory keeps its entries' cookies and its subdirectory count through the
    /// checkpoint encoding; out-of-order cookies are malformed.
    #[test]
    fn a_directory_round_trips_with_its_cookies() {
        let mut d = Dir::new(1);
        let create = |ino, kind| Op::Create {
            ino,
            parent: 1,
            name: format!("name-{ino}").into_bytes(),
            kind,
            perm: 0o755,
            uid: 0,
            gid: 0,
            rdev: 0,
            time: Ts::default(),
            target: vec![],
        };
        let mut parent = Inode::new(created_inode(&create(1, Kind::Dir)).attr, Content::Dir(Box::new(d.clone())));
        for i in 10..310u64 {
            crate::store::meta::apply_create(&mut parent, &create(i, if i % 50 == 0 { Kind::Dir } else { Kind::File }))
                .unwrap();
        }
        d = parent.dir().unwrap().clone();
        let mut e = Enc::default();
        encode_inode(&mut e, &parent);
        let back = decode_inode(&mut Dec { buf: &e.buf }).unwrap();
        let bd = back.dir().unwrap();
        assert_eq!((bd.len(), bd.subdirs), (300, 6));
        let a: Vec<(u64, u64)> = d.iter_after(0).map(|(c, e)| (c, e.ino)).collect();
        let b: Vec<(u64, u64)> = bd.iter_after(0).map(|(c, e)| (c, e.ino)).collect();
        assert_eq!(a, b);
        assert_eq!(bd.cookie(b"name-200"), d.cookie(b"name-200"));
        let a = Entry { name: Name::from_slice(b"a"), ino: 2, kind: Kind::File };
        let b = Entry { name: Name::from_slice(b"b"), ino: 3, kind: Kind::File };
        assert_eq!(Dir::loaded(1, vec![(100, a), (99, b)]).err(), Some(Malformed));
    }
}
