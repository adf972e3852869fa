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
use super::error::LoadError;
use super::faults::{self, Point};
use super::files;
use super::meta::{Attr, Content, Dir, Entry, Extent, Extents, FIRST_COOKIE, Ino, Inode, Kind, Name, get_ts, ts};

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

/// The header fields of a verified checkpoint image and its inodes' bytes.
struct Image<'a> {
    seq: u64,
    next_ino: u64,
    count: u64,
    inodes: &'a [u8],
}

/// Damage of the checkpoint at `path`.
fn damaged(path: &Path, m: &str) -> LoadError {
    LoadError::Corrupt(format!("checkpoint {}: {m}", path.display()))
}

/// Checks an image's magic, checksum and uuid; `path` names the file in messages.
fn verify<'a>(data: &'a [u8], uuid: &[u8; 16], path: &Path) -> Result<Image<'a>, LoadError> {
    let fail = |m: &str| damaged(path, m);
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
    Ok(Image { seq, next_ino, count, inodes: d.buf })
}

/// Reads `dir/checkpoint`; `Ok(None)` if there is none yet.
pub fn load(dir: &Path, uuid: &[u8; 16]) -> Result<Option<Snapshot>, LoadError> {
    let path = dir.join("checkpoint");
    let data = match faults::check(Point::MetaRead).and_then(|()| files::read(&path)) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LoadError::io_at(&path, e)),
    };
    let fail = |m: &str| damaged(&path, m);
    let image = verify(&data, uuid, &path)?;
    let mut d = Dec { buf: image.inodes };
    let mut inodes = Vec::with_capacity(image.count.min(1 << 24) as usize);
    for _ in 0..image.count {
        inodes.push(decode_inode(&mut d).map_err(|_| fail("truncated"))?);
    }
    if !d.is_empty() {
        return Err(fail("trailing bytes"));
    }
    Ok(Some(Snapshot { seq: image.seq, next_ino: image.next_ino, inodes }))
}

/// The installed checkpoint, mapped and indexed by inode number without decoding the inodes:
/// what a background checkpoint merges the journal into (see `merge.rs`).
pub struct Base {
    map: memmap2::Mmap,
    pub seq: u64,
    pub next_ino: u64,
    /// (inode, start, end) of each inode's bytes in `map`, by inode number.
    index: Vec<(Ino, usize, usize)>,
}

impl Base {
    pub fn open(dir: &Path, uuid: &[u8; 16]) -> Result<Base, LoadError> {
        let path = dir.join("checkpoint");
        let fail = |m: &str| damaged(&path, m);
        let file = faults::check(Point::MetaRead)
            .and_then(|()| files::open(&path, OpenOptions::new().read(true)))
            .map_err(|e| LoadError::io_at(&path, e))?;
        // SAFETY: the checkpoint is never written in place (a new one is renamed over it, and
        // only by this daemon, which serialises checkpoints), and the store's files are
        // private to the daemon's user: the mapped bytes do not change while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LoadError::io_at(&path, e))?;
        // Every byte is read here (checksum, index): under the fault guard, so a page that
        // cannot be read is an I/O error of the checkpoint thread, not a SIGBUS.
        let (seq, next_ino, mut index) = fault_guarded(&map, || {
            let image = verify(&map, uuid, &path)?;
            let start = image.inodes.as_ptr() as usize - map.as_ptr() as usize;
            let end = map.len() - 4;
            let mut index = Vec::with_capacity(image.count.min(1 << 26) as usize);
            let mut d = Dec { buf: &map[start..end] };
            for _ in 0..image.count {
                let at = end - d.buf.len();
                let ino = skip_inode(&mut d).map_err(|_| fail("truncated"))?;
                index.push((ino, at, end - d.buf.len()));
            }
            if !d.is_empty() {
                return Err(fail("trailing bytes"));
            }
            Ok((image.seq, image.next_ino, index))
        })?;
        // Checkpoints written by merging are in inode order already.
        if !index.is_sorted_by_key(|e| e.0) {
            index.sort_unstable_by_key(|e| e.0);
        }
        if index.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(fail("an inode twice"));
        }
        Ok(Base { map, seq, next_ino, index })
    }

    /// The encoded bytes of inode `ino`, if the checkpoint holds it.
    pub fn inode_bytes(&self, ino: Ino) -> Option<&[u8]> {
        let i = self.index.binary_search_by_key(&ino, |e| e.0).ok()?;
        let (_, a, b) = self.index[i];
        Some(&self.map[a..b])
    }

    /// Decodes inode `ino` if the checkpoint holds it (under the fault guard).
    pub fn inode(&self, ino: Ino) -> Option<Result<Inode, LoadError>> {
        let b = self.inode_bytes(ino)?;
        Some(self.guarded(|| {
            decode_inode(&mut Dec { buf: b })
                .map_err(|_: Malformed| LoadError::Corrupt(format!("checkpoint: inode {ino} does not decode")))
        }))
    }

    /// Runs `f`, which reads the mapped checkpoint (and nothing else mapped), under the fault
    /// guard: a page that cannot be read is an I/O error.
    pub fn guarded<R>(&self, f: impl FnOnce() -> Result<R, LoadError>) -> Result<R, LoadError> {
        fault_guarded(&self.map, f)
    }

    /// Every inode's number and encoded bytes, by inode number.
    pub fn iter(&self) -> impl Iterator<Item = (Ino, &[u8])> {
        self.index.iter().map(|&(ino, a, b)| (ino, &self.map[a..b]))
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }
}

/// Runs `f` over the mapped checkpoint `map` under the fault guard (see [`Base::guarded`]).
fn fault_guarded<R>(map: &memmap2::Mmap, f: impl FnOnce() -> Result<R, LoadError>) -> Result<R, LoadError> {
    crate::store::guard::access(map.as_ptr(), map.len(), f)
        .map_err(|fault| LoadError::Io(fault.into_io("reading the checkpoint")))?
}

/// Writes a checkpoint image to `checkpoint.tmp` as it is produced (an image of millions of
/// inodes is never held in memory), then installs it like [`install`].
pub struct Writer {
    out: io::BufWriter<File>,
    crc: crc32fast::Hasher,
    scratch: Enc,
}

impl Writer {
    pub fn create(dir: &Path, uuid: &[u8; 16], seq: u64, next_ino: u64, count: u64) -> io::Result<Writer> {
        let f = files::open(&dir.join("checkpoint.tmp"), OpenOptions::new().write(true).create(true).truncate(true))?;
        let mut w = Writer {
            out: io::BufWriter::with_capacity(1 << 20, f),
            crc: crc32fast::Hasher::new(),
            scratch: Enc::default(),
        };
        w.raw(&begin(uuid, seq, next_ino, count).buf)?;
        Ok(w)
    }

    /// Bytes of inodes already encoded (copied from the base checkpoint).
    pub fn raw(&mut self, b: &[u8]) -> io::Result<()> {
        self.crc.update(b);
        self.out.write_all(b)
    }

    pub fn inode(&mut self, i: &Inode) -> io::Result<()> {
        let mut e = std::mem::take(&mut self.scratch);
        e.buf.clear();
        encode_inode(&mut e, i);
        let r = self.raw(&e.buf);
        self.scratch = e;
        r
    }

    pub fn install(mut self, dir: &Path) -> io::Result<()> {
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        let f = self.out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(dir.join("checkpoint.tmp"), dir.join("checkpoint"))?;
        File::open(dir)?.sync_all()
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

/// Steps over an inode written by [`encode_inode`] without decoding it; returns its number.
/// Mirrors [`decode_inode`] field by field (a test holds them together).
fn skip_inode(d: &mut Dec<'_>) -> Result<Ino, Malformed> {
    let ino = d.u64()?;
    let kind = Kind::from_u8(d.u8()?).ok_or(Malformed)?;
    d.skip(2 + 4 * 4 + 8)?; // perm, uid, gid, nlink, rdev, size
    for _ in 0..3 {
        get_ts(d)?;
    }
    match kind {
        Kind::File => {
            let n = d.u64()?;
            d.skip(usize::try_from(n).ok().and_then(|n| n.checked_mul(24)).ok_or(Malformed)?)?;
        }
        Kind::Dir => {
            d.skip(16)?; // parent, format 1's next cookie
            for _ in 0..d.u64()? {
                d.skip(8 + 8 + 1)?;
                d.bytes()?;
            }
        }
        Kind::Symlink => {
            d.bytes()?;
        }
        _ => {}
    }
    for _ in 0..d.u32()? {
        d.bytes()?;
        d.bytes()?;
    }
    Ok(ino)
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

    /// `skip_inode` steps over exactly the bytes `decode_inode` reads, for every kind.
    #[test]
    fn skip_agrees_with_decode() {
        let op = |ino, kind: Kind, target: &[u8]| Op::Create {
            ino,
            parent: 1,
            name: format!("n{ino}").into_bytes(),
            kind,
            perm: 0o644,
            uid: 1,
            gid: 2,
            rdev: 7,
            time: Ts::default(),
            target: target.to_vec(),
        };
        let mut dir = created_inode(&op(1, Kind::Dir, b""));
        for i in 10..20 {
            crate::store::meta::apply_create(&mut dir, &op(i, Kind::File, b"")).unwrap();
        }
        let mut file = created_inode(&op(2, Kind::File, b""));
        if let Content::File(x) = &mut file.content {
            x.push_loaded(Extent { logical: 0, phys: 5, len: 3 }).unwrap();
            x.push_loaded(Extent { logical: 9, phys: 20, len: 1 }).unwrap();
        }
        file.extra_mut().xattrs.push((b"user.a".to_vec().into(), b"value".to_vec().into()));
        let inodes =
            [dir, file, created_inode(&op(3, Kind::Symlink, b"/a/target")), created_inode(&op(4, Kind::Fifo, b""))];
        let mut e = Enc::default();
        for i in &inodes {
            encode_inode(&mut e, i);
        }
        let (mut a, mut b) = (Dec { buf: &e.buf }, Dec { buf: &e.buf });
        for i in &inodes {
            assert_eq!(skip_inode(&mut a).unwrap(), i.attr.ino);
            decode_inode(&mut b).unwrap();
            assert_eq!(a.buf.len(), b.buf.len(), "inode {}", i.attr.ino);
        }
        assert!(a.is_empty());
        assert_eq!(skip_inode(&mut Dec { buf: &e.buf[..e.buf.len() - 1] }).map(drop), Ok(()), "first inode whole");
    }

    /// The installed checkpoint is read through a mapping: a page that cannot be read (here,
    /// the file cut short under the mapping) is an I/O error of the checkpoint, not a SIGBUS.
    #[test]
    fn a_page_of_the_base_that_cannot_be_read_is_an_io_error() {
        let d = tempfile::tempdir().unwrap();
        let uuid = [7u8; 16];
        let op = |ino| Op::Create {
            ino,
            parent: 1,
            name: format!("file-{ino}").into_bytes(),
            kind: Kind::File,
            perm: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            time: Ts::default(),
            target: vec![],
        };
        let inodes: Vec<Inode> = (2..3000u64).map(|i| created_inode(&op(i))).collect();
        let mut e = begin(&uuid, 1, 3000, inodes.len() as u64);
        for i in &inodes {
            encode_inode(&mut e, i);
        }
        install(d.path(), e).unwrap();
        let base = Base::open(d.path(), &uuid).unwrap();
        assert!(base.inode(2).unwrap().is_ok());
        // Cut the file to one page: the last inodes' bytes lie past its end now.
        std::fs::OpenOptions::new().write(true).open(d.path().join("checkpoint")).unwrap().set_len(4096).unwrap();
        match base.inode(2999) {
            Some(Err(LoadError::Io(e))) => assert!(e.to_string().contains("SIGBUS"), "{e}"),
            other => panic!("{:?}", other.map(|r| r.map(|_| ()))),
        }
        assert!(base.inode(2).unwrap().is_ok(), "the first page still reads");
        let copied = base.guarded(|| {
            let mut crc = crc32fast::Hasher::new();
            for (_, b) in base.iter() {
                crc.update(b);
            }
            Ok(crc.finalize())
        });
        assert!(matches!(copied, Err(LoadError::Io(_))));
    }
}
