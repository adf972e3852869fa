//! The store: segments, allocation, metadata and durability behind one narrow API.
//!
//! Locking (outermost first, never taken in the other order):
//! `gate` (read by every journaled change, write by a checkpoint) → `ns` (one namespace
//! change at a time) → inode locks → `alloc` → journal. Only namespace changes, which hold
//! `ns`, ever hold more than one inode lock, so they cannot deadlock with each other or with
//! the data path. Reads take one inode's read lock; overwrites of stored blocks take one
//! inode's write lock and nothing else: there is no global lock on the data path.

pub mod alloc;
mod checkpoint;
mod codec;
pub mod error;
pub mod journal;
pub mod meta;
mod segment;
pub mod superblock;
mod table;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use alloc::{Allocator, Run};
pub use error::{Error, Result};
use meta::{Attr, Content, Dir, Inode, Kind, Op, Piece, Ts};
pub use meta::{Ino, ROOT};
use segment::Segment;
use table::{Node, Table};
use superblock::Superblock;

/// Longest name in a directory.
pub const NAME_MAX: usize = 255;

/// How to create a store that does not exist yet.
#[derive(Clone, Copy, Debug)]
pub struct FormatOptions {
    /// Size of each segment file. Default 64 MiB.
    pub segment_size: u64,
    /// Most bytes of file data the store holds. Default 16 GiB.
    pub capacity: u64,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions { segment_size: 64 << 20, capacity: 16 << 30 }
    }
}

/// How to open a store.
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    /// Geometry of a store created because the directory was missing or empty.
    pub format: FormatOptions,
    /// Journal size that triggers a checkpoint; bounds the replay work at mount. Default 32 MiB.
    pub journal_limit: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { format: FormatOptions::default(), journal_limit: 32 << 20 }
    }
}

/// Attributes to change in `setattr`; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Ts>,
    pub mtime: Option<Ts>,
    pub ctime: Option<Ts>,
}

/// Figures for `statfs`.
#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    pub block_size: u32,
    pub blocks: u64,
    pub free_blocks: u64,
    pub files: u64,
    pub free_files: u64,
}

/// Counters a user can read while the store is mounted.
#[derive(Default, Debug)]
pub struct Counters {
    pub msync_calls: AtomicU64,
    pub msync_bytes: AtomicU64,
    pub msync_nanos: AtomicU64,
}

/// A mounted store.
pub struct Store {
    dir: PathBuf,
    sb: Superblock,
    bs: u64,
    segments: Vec<OnceLock<Segment>>,
    alloc: Mutex<Allocator>,
    journal: journal::Journal,
    table: Table,
    gate: RwLock<()>,
    ns: Mutex<()>,
    checkpointing: Mutex<()>,
    next_ino: AtomicU64,
    journal_limit: u64,
    /// Set when an msync failed: every later fsync reports EIO until the store is reopened.
    failed: AtomicBool,
    pub counters: Counters,
    _lock: File,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn rd<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn wr<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(Error::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(Error::Invalid);
    }
    Ok(())
}

fn corrupt(m: meta::Inconsistent) -> String {
    m.0
}

/// Creates a new, empty store in `dir` (which must not exist or be empty).
pub fn format(dir: &Path, opts: FormatOptions) -> Result<()> {
    let sb = Superblock {
        version: superblock::VERSION,
        block_size: superblock::page_size() as u32,
        uuid: superblock::random_uuid()?,
        segment_size: opts.segment_size,
        capacity: opts.capacity / opts.segment_size.max(1) * opts.segment_size.max(1),
    };
    sb.validate().map_err(|m| Error::Corrupt(format!("bad geometry: {m}")))?;
    std::fs::create_dir_all(dir)?;
    if std::fs::read_dir(dir)?.next().is_some() {
        return Err(Error::NotAStore(dir.into(), "the directory is not empty; refusing to format it".into()));
    }
    std::fs::create_dir(dir.join("segments"))?;
    std::fs::create_dir(dir.join("meta"))?;
    // The root directory, in an initial checkpoint.
    let now = Ts::now();
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let root = Inode::new(
        Attr { ino: ROOT, kind: Kind::Dir, perm: 0o755, uid, gid, nlink: 2, rdev: 0, size: 0, blocks: 0, atime: now, mtime: now, ctime: now },
        Content::Dir(Box::new(Dir::new(ROOT))),
    );
    let mut e = checkpoint::begin(&sb.uuid, 0, ROOT + 1, 1);
    meta::encode_inode(&mut e, &root);
    checkpoint::install(&dir.join("meta"), e)?;
    // The superblock last: a directory without one is not a store yet.
    let tmp = dir.join("superblock.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&sb.encode())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("superblock"))?;
    File::open(dir)?.sync_all()?;
    log::info!("formatted store {} (segment {} B, capacity {} B)", dir.display(), sb.segment_size, sb.capacity);
    Ok(())
}

/// Reads and checks the superblock of `dir`.
pub fn read_superblock(dir: &Path) -> Result<Superblock> {
    let data = match std::fs::read(dir.join("superblock")) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotAStore(dir.into(), "it has no superblock file".into()));
        }
        Err(e) => return Err(e.into()),
    };
    Superblock::decode(&data).map_err(|e| match e {
        superblock::SuperblockError::Foreign => Error::NotAStore(dir.into(), "the superblock has no mmapfs magic".into()),
        superblock::SuperblockError::Version(v) => Error::Version(v),
        superblock::SuperblockError::Corrupt(m) => Error::Corrupt(format!("superblock: {m}")),
    })
}

/// Takes the store's lock file, or reports who holds it.
fn take_lock(dir: &Path) -> Result<File> {
    let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join("lock"))?;
    // SAFETY: flock on an fd we own; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        return Err(Error::Locked { pid: s.trim().parse().ok() });
    }
    Ok(f)
}

/// Records our pid in the lock file, once the store has been accepted.
fn write_pid(mut f: &File) -> Result<()> {
    f.set_len(0)?;
    f.seek(std::io::SeekFrom::Start(0))?;
    writeln!(f, "{}", std::process::id())?;
    Ok(())
}

impl Store {
    /// Opens the store in `dir`, creating it with `fmt` if `dir` is missing or empty.
    pub fn open(dir: &Path, opts: OpenOptions) -> Result<Store> {
        let fresh = match std::fs::read_dir(dir) {
            Ok(mut it) => it.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(e.into()),
        };
        if fresh {
            format(dir, opts.format)?;
        }
        let sb = read_superblock(dir)?;
        let lock_file = take_lock(dir)?;
        let started = std::time::Instant::now();
        let seg_dir = dir.join("segments");
        let meta_dir = dir.join("meta");
        for d in [&seg_dir, &meta_dir] {
            if !d.is_dir() {
                return Err(Error::Corrupt(format!("{} is missing", d.display())));
            }
        }
        let _ = std::fs::remove_file(meta_dir.join("checkpoint.tmp"));
        // Segments: 000000.seg, 000001.seg, … without gaps.
        let max = sb.max_segments() as usize;
        let segments: Vec<OnceLock<Segment>> = (0..max).map(|_| OnceLock::new()).collect();
        let mut count = 0;
        for ent in std::fs::read_dir(&seg_dir)? {
            let name = ent?.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".seg.tmp") {
                std::fs::remove_file(seg_dir.join(&*name))?;
            } else if name.ends_with(".seg") {
                count += 1;
            }
        }
        if count > max {
            return Err(Error::Corrupt(format!("{count} segments, capacity allows {max}")));
        }
        for (i, slot) in segments.iter().enumerate().take(count) {
            let path = seg_dir.join(format!("{i:06}.seg"));
            let seg = Segment::open(&path, sb.segment_size as usize)
                .map_err(|e| Error::Corrupt(format!("segment {}: {e}", path.display())))?;
            let _ = slot.set(seg);
        }
        // Metadata: checkpoint, then the journal after it.
        let snap = checkpoint::load(&meta_dir, &sb.uuid)
            .map_err(Error::Corrupt)?
            .ok_or_else(|| Error::Corrupt("meta/checkpoint is missing".into()))?;
        let table = Table::new();
        let n_inodes = snap.inodes.len();
        for inode in snap.inodes {
            table.insert(inode);
        }
        let bs = sb.block_size as u64;
        let mut next_ino = snap.next_ino;
        let mut records = 0u64;
        let last = journal::replay(&meta_dir, &sb.uuid, snap.seq, |_, ops| {
            records += 1;
            for op in &ops {
                replay_op(&table, op, bs, &mut next_ino)?;
            }
            Ok(())
        })
        .map_err(|e| match e {
            journal::ReplayError::Io(e) => Error::Io(e),
            journal::ReplayError::Corrupt(m) => Error::Corrupt(m),
        })?;
        if table.get(ROOT).is_none() {
            return Err(Error::Corrupt("the root directory is missing".into()));
        }
        // Free space is whatever no extent uses.
        let mut used = Vec::new();
        for node in table.nodes() {
            if let Some(x) = rd(&node).extents() {
                used.extend(x.iter().map(|e| Run { start: e.phys, len: e.len }));
            }
        }
        let alloc = Allocator::from_used(sb.blocks_per_segment(), count as u64, used)
            .map_err(|e| Error::Corrupt(format!("extent map: {e:?}")))?;
        let journal = journal::Journal::open(&meta_dir, sb.uuid, last)?;
        let store = Store {
            dir: dir.to_path_buf(),
            sb,
            bs,
            segments,
            alloc: Mutex::new(alloc),
            journal,
            table,
            gate: RwLock::new(()),
            ns: Mutex::new(()),
            checkpointing: Mutex::new(()),
            next_ino: AtomicU64::new(next_ino),
            journal_limit: opts.journal_limit,
            failed: AtomicBool::new(false),
            counters: Counters::default(),
            _lock: lock_file,
        };
        write_pid(&store._lock)?;
        store.free_orphans()?;
        log::info!(
            "opened store {}: {n_inodes} inodes in the checkpoint, {records} journal records replayed, {} segments, in {:?}",
            dir.display(),
            count,
            started.elapsed()
        );
        Ok(store)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// Frees inodes left without links by a crash while they were open.
    fn free_orphans(&self) -> Result<()> {
        let mut orphans = Vec::new();
        for node in self.table.nodes() {
            if node.ino != ROOT && rd(&node).attr.nlink == 0 {
                orphans.push(node.ino);
            }
        }
        if orphans.is_empty() {
            return Ok(());
        }
        log::info!("freeing {} orphaned inodes", orphans.len());
        let _g = rd(&self.gate);
        let ops: Vec<Op> = orphans.iter().map(|&ino| Op::Free { ino }).collect();
        self.journal.append(&ops)?;
        for ino in orphans {
            let node = self.node(ino)?;
            let freed = meta::apply_free(&mut wr(&node));
            self.release_blocks(freed);
            self.remove_node(ino);
        }
        Ok(())
    }

    fn node(&self, ino: Ino) -> Result<Node> {
        self.table.get(ino).ok_or(Error::NotFound)
    }

    fn remove_node(&self, ino: Ino) {
        self.table.remove(ino);
    }

    fn release_blocks(&self, runs: Vec<Run>) {
        if runs.is_empty() {
            return;
        }
        let mut a = lock(&self.alloc);
        for r in runs {
            a.free(r);
        }
    }

    /// Appends one journal record. A failed append is sticky: the in-memory state may now be
    /// ahead of the journal, so the store refuses every later change until it is reopened.
    fn append(&self, ops: &[Op]) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::Io(std::io::Error::from_raw_os_error(libc::EIO)));
        }
        if let Err(e) = self.journal.append(ops) {
            log::error!("journal append failed: {e}; the store refuses further changes");
            self.failed.store(true, Ordering::Release);
            return Err(Error::Io(e));
        }
        Ok(())
    }

    /// Takes a checkpoint if the journal has grown past its budget.
    fn maybe_checkpoint(&self) {
        if self.journal.bytes() > self.journal_limit {
            if let Err(e) = self.checkpoint() {
                log::error!("checkpoint failed: {e}");
            }
        }
    }

    /// Writes every inode to a new checkpoint and drops the journal files it covers.
    pub fn checkpoint(&self) -> Result<()> {
        let Ok(_only_one) = self.checkpointing.try_lock() else { return Ok(()) };
        let started = std::time::Instant::now();
        let (image, seq, n) = {
            let _stop = wr(&self.gate);
            let seq = self.journal.rotate()?;
            let nodes = self.table.nodes();
            let live: Vec<_> = nodes.iter().map(|n| rd(n)).filter(|g| !g.freed).collect();
            let mut e = checkpoint::begin(&self.sb.uuid, seq, self.next_ino.load(Ordering::Relaxed), live.len() as u64);
            for g in &live {
                meta::encode_inode(&mut e, g);
            }
            (e, seq, live.len())
        };
        checkpoint::install(&self.dir.join("meta"), image)?;
        self.journal.remove_upto(seq)?;
        log::info!("checkpoint of {n} inodes at seq {seq} in {:?}", started.elapsed());
        Ok(())
    }

    /// Clean shutdown: all mapped data to disk, a final checkpoint.
    pub fn close(&self) -> Result<()> {
        for seg in self.segments.iter().filter_map(|s| s.get()) {
            seg.sync_range(0, self.sb.segment_size as usize)?;
        }
        // Record times changed by data writes since their last journal record.
        self.checkpoint()?;
        self.journal.sync()?;
        Ok(())
    }

    // ----- namespace -----

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
    pub fn create(&self, parent: Ino, name: &[u8], kind: Kind, perm: u16, uid: u32, gid: u32, rdev: u32, target: &[u8]) -> Result<Attr> {
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
                    (true, true) => {
                        if !rd(&*self.node(d.ino)?).dir().is_some_and(|x| x.is_empty()) {
                            return Err(Error::NotEmpty);
                        }
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
            if let (Some(d), Some(r)) = (&dst, &rg) {
                if (r.attr.kind == Kind::Dir || r.attr.nlink <= 1) && r.opens == 0 {
                    ops.push(Op::Free { ino: d.ino });
                }
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

    pub fn statfs(&self) -> StatFs {
        let a = lock(&self.alloc);
        let unmade = self.sb.max_segments() - a.segments();
        let files = self.table.len() as u64;
        StatFs {
            block_size: self.bs as u32,
            blocks: self.sb.max_segments() * self.sb.blocks_per_segment(),
            free_blocks: a.free_blocks() + unmade * self.sb.blocks_per_segment(),
            files: files + (1 << 32),
            free_files: 1 << 32,
        }
    }

    // ----- attributes -----

    pub fn setattr(&self, ino: Ino, s: SetAttr) -> Result<Attr> {
        if let Some(size) = s.size {
            self.truncate(ino, size)?;
        }
        if s.mode.is_none() && s.uid.is_none() && s.gid.is_none() && s.atime.is_none() && s.mtime.is_none() && s.ctime.is_none() {
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

    // ----- file data -----

    fn seg(&self, idx: u64) -> &Segment {
        // Extents only name blocks of segments that exist (checked at mount, made before use).
        self.segments[idx as usize].get().expect("extent in a segment that exists")
    }

    /// Calls `f(segment, byte offset, len)` for the pieces of a physical byte range, split at
    /// segment boundaries.
    fn phys_ranges(&self, phys_byte: u64, len: u64, mut f: impl FnMut(&Segment, usize, usize)) {
        let (ss, mut at, mut left) = (self.sb.segment_size, phys_byte, len);
        while left > 0 {
            let off = at % ss;
            let n = left.min(ss - off);
            f(self.seg(at / ss), off as usize, n as usize);
            at += n;
            left -= n;
        }
    }

    pub fn open_file(&self, ino: Ino) -> Result<Attr> {
        let node = self.node(ino)?;
        let mut g = wr(&node);
        if g.freed {
            return Err(Error::NotFound);
        }
        g.opens += 1;
        Ok(g.stat())
    }

    /// Closes one handle of `ino`: journals times changed by writes, and frees the inode if
    /// this was the last handle of an unlinked file.
    pub fn release(&self, ino: Ino) -> Result<()> {
        let node = self.node(ino)?;
        let last_of_unlinked = {
            let mut g = wr(&node);
            g.opens = g.opens.saturating_sub(1);
            g.opens == 0 && g.attr.nlink == 0 && !g.freed
        };
        if last_of_unlinked {
            let _g = rd(&self.gate);
            let _ns = lock(&self.ns);
            let mut g = wr(&node);
            if g.opens == 0 && g.attr.nlink == 0 && !g.freed {
                self.append(&[Op::Free { ino }])?;
                let freed = meta::apply_free(&mut g);
                let gone = g.lookups == 0;
                drop(g);
                self.release_blocks(freed);
                if gone {
                    self.remove_node(ino);
                }
            }
        } else {
            self.journal_times(ino, &node)?;
        }
        Ok(())
    }

    /// Journals mtime/ctime that data writes changed since they were last journaled.
    fn journal_times(&self, ino: Ino, node: &Node) -> Result<()> {
        if !rd(node).times_dirty {
            return Ok(());
        }
        let _g = rd(&self.gate);
        let mut n = wr(node);
        if !n.times_dirty || n.freed {
            return Ok(());
        }
        let a = n.attr;
        let op = Op::SetAttr { ino, perm: a.perm, uid: a.uid, gid: a.gid, atime: a.atime, mtime: a.mtime, ctime: a.ctime };
        self.append(&[op])?;
        n.times_dirty = false;
        Ok(())
    }

    /// Reads up to `size` bytes at `off` and hands them to `f`: the mapped bytes themselves
    /// when the range lies in one extent, else a gathered copy (holes as zeros).
    pub fn read<R>(&self, ino: Ino, off: u64, size: u32, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        let node = self.node(ino)?;
        let g = rd(&node);
        let x = match &g.content {
            Content::File(x) => x,
            Content::Dir(_) => return Err(Error::IsDir),
            _ => return Err(Error::Invalid),
        };
        let end = g.attr.size.min(off.saturating_add(size as u64));
        if off >= end {
            return Ok(f(&[]));
        }
        let bs = self.bs;
        let (first, last) = (off / bs, (end - 1) / bs + 1);
        let mut single = None;
        let mut pieces = 0;
        x.pieces(first, last, |p| {
            pieces += 1;
            if let (1, Piece::Mapped { logical, phys, .. }) = (pieces, p) {
                single = Some(phys * bs + (off - logical * bs));
            }
        });
        if pieces == 1 {
            if let Some(pb) = single {
                let (ss, len) = (self.sb.segment_size, end - off);
                if pb % ss + len <= ss {
                    // SAFETY: we hold this inode's read lock until `f` returns; its blocks are
                    // written only under its write lock, and no other process maps segments.
                    let s = unsafe { self.seg(pb / ss).slice((pb % ss) as usize, len as usize) };
                    return Ok(f(s));
                }
            }
        }
        thread_local!(static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) });
        GATHER.with(|buf| {
            let mut buf = buf.borrow_mut();
            let len = (end - off) as usize;
            buf.clear();
            buf.resize(len, 0);
            x.pieces(first, last, |p| {
                if let Piece::Mapped { logical, phys, len: n } = p {
                    // Clip the piece to off..end, in bytes.
                    let lo = (logical * bs).max(off);
                    let hi = ((logical + n) * bs).min(end);
                    let mut dst = (lo - off) as usize;
                    self.phys_ranges(phys * bs + (lo - logical * bs), hi - lo, |seg, so, l| {
                        seg.read_at(so, &mut buf[dst..dst + l]);
                        dst += l;
                    });
                }
            });
            Ok(f(&buf))
        })
    }

    /// Writes `data` at `off`; returns the bytes written (all of them, or an error).
    pub fn write(&self, ino: Ino, off: u64, data: &[u8]) -> Result<usize> {
        let end = off.checked_add(data.len() as u64).ok_or(Error::TooBig)?;
        if end > MAX_FILE_SIZE {
            return Err(Error::TooBig);
        }
        if data.is_empty() {
            return Ok(0);
        }
        let node = self.node(ino)?;
        let bs = self.bs;
        let (first, last) = (off / bs, (end - 1) / bs + 1);
        // Fast path: every block is stored and the size does not change: nothing to journal.
        {
            let mut g = wr(&node);
            let fits = match &g.content {
                Content::File(x) => end <= g.attr.size && x.covers(first, last),
                Content::Dir(_) => return Err(Error::IsDir),
                _ => return Err(Error::Invalid),
            };
            if fits {
                self.copy_in(&mut g, off, data);
                return Ok(data.len());
            }
        }
        let _gate = rd(&self.gate);
        let mut g = wr(&node);
        if g.freed {
            return Err(Error::NotFound);
        }
        let old_size = g.attr.size;
        let Content::File(x) = &g.content else { return Err(Error::Invalid) };
        // Allocate every hole in the range, all or nothing.
        let mut holes = Vec::new();
        x.pieces(first, last, |p| {
            if let Piece::Hole { logical, len } = p {
                holes.push((logical, len));
            }
        });
        let mut maps = Vec::new();
        {
            let mut a = lock(&self.alloc);
            for &(logical, len) in &holes {
                let mut done = 0;
                while done < len {
                    let hint = maps
                        .last()
                        .and_then(|m: &Op| match m {
                            Op::Map { logical: l, phys, len, .. } if l + len == logical + done => Some(phys + len),
                            _ => None,
                        })
                        .or_else(|| x.hint(logical + done));
                    let run = match a.alloc(len - done, hint) {
                        Some(r) => r,
                        None => match self.grow(&mut a) {
                            Ok(()) => continue,
                            Err(e) => {
                                for m in &maps {
                                    if let Op::Map { phys, len, .. } = m {
                                        a.free(Run { start: *phys, len: *len });
                                    }
                                }
                                return Err(e);
                            }
                        },
                    };
                    maps.push(Op::Map { ino, logical: logical + done, phys: run.start, len: run.len });
                    done += run.len;
                }
            }
        }
        // Freshly allocated blocks may hold old data: zero what this write does not cover.
        for m in &maps {
            let Op::Map { logical, phys, len, .. } = *m else { continue };
            let (lo, hi) = (logical * bs, (logical + len) * bs);
            if lo < off {
                self.phys_ranges(phys * bs, off - lo, |s, o, l| s.zero(o, l));
            }
            if hi > end {
                self.phys_ranges(phys * bs + (end - lo), hi - end, |s, o, l| s.zero(o, l));
            }
        }
        let now = Ts::now();
        let mut ops = maps;
        if end > old_size {
            ops.push(Op::SetSize { ino, size: end, mtime: now, ctime: now });
        }
        for op in &ops {
            match op {
                Op::Map { .. } => meta::apply_map(&mut g, op).map_err(|e| Error::Corrupt(corrupt(e)))?,
                _ => {
                    // Bytes between the old end of file and this write were never visible:
                    // they may be stale, so zero them before they become part of the file.
                    self.zero_tail(&g, old_size, off);
                    meta::apply_setsize(&mut g, op, bs).map_err(|e| Error::Corrupt(corrupt(e)))?;
                }
            }
        }
        // Data first, record second: a crash in between leaves the blocks unreferenced rather
        // than a file that shows another file's old bytes.
        self.copy_in(&mut g, off, data);
        self.append(&ops)?;
        drop(g);
        drop(_gate);
        self.maybe_checkpoint();
        Ok(data.len())
    }

    /// Zeroes the stored bytes from `from` (an old end of file) to `to` within the block
    /// holding `from`: bytes past EOF are not kept zero, they are zeroed when exposed.
    fn zero_tail(&self, g: &Inode, from: u64, to: u64) {
        let bs = self.bs;
        if from % bs == 0 || to <= from {
            return;
        }
        let Some(x) = g.extents() else { return };
        let stop = to.min((from / bs + 1) * bs);
        x.pieces(from / bs, from / bs + 1, |p| {
            if let Piece::Mapped { phys, .. } = p {
                self.phys_ranges(phys * bs + from % bs, stop - from, |s, o, l| s.zero(o, l));
            }
        });
    }

    /// Copies `data` into the stored blocks at `off` (all stored) and marks them dirty.
    fn copy_in(&self, g: &mut Inode, off: u64, data: &[u8]) {
        let bs = self.bs;
        let end = off + data.len() as u64;
        let Content::File(x) = &g.content else { return };
        let mut dirty = g.dirty.take().unwrap_or_default();
        x.pieces(off / bs, (end - 1) / bs + 1, |p| {
            if let Piece::Mapped { logical, phys, len } = p {
                let lo = (logical * bs).max(off);
                let hi = ((logical + len) * bs).min(end);
                let mut src = (lo - off) as usize;
                self.phys_ranges(phys * bs + (lo - logical * bs), hi - lo, |seg, so, l| {
                    seg.write_at(so, &data[src..src + l]);
                    src += l;
                });
                note_dirty(&mut dirty, Run { start: phys, len });
            }
        });
        g.dirty = Some(dirty);
        let now = Ts::now();
        g.attr.mtime = now;
        g.attr.ctime = now;
        g.times_dirty = true;
    }

    /// Adds a segment (up to the capacity).
    fn grow(&self, a: &mut Allocator) -> Result<()> {
        let idx = a.segments();
        if idx >= self.sb.max_segments() {
            return Err(Error::NoSpace);
        }
        let path = self.dir.join("segments").join(format!("{idx:06}.seg"));
        let seg = Segment::create(&path, self.sb.segment_size as usize).map_err(|e| {
            log::error!("cannot create segment {}: {e}", path.display());
            if e.raw_os_error() == Some(libc::ENOSPC) { Error::NoSpace } else { Error::Io(e) }
        })?;
        let _ = self.segments[idx as usize].set(seg);
        a.add_segment();
        log::info!("segment {idx} added");
        Ok(())
    }

    /// Sets a file's size: frees blocks past a smaller size; a larger size reads as zeros.
    pub fn truncate(&self, ino: Ino, size: u64) -> Result<()> {
        if size > MAX_FILE_SIZE {
            return Err(Error::TooBig);
        }
        let _gate = rd(&self.gate);
        let node = self.node(ino)?;
        let mut g = wr(&node);
        if g.freed {
            return Err(Error::NotFound);
        }
        match &g.content {
            Content::File(_) => {}
            Content::Dir(_) => return Err(Error::IsDir),
            _ => return Err(Error::Invalid),
        }
        let now = Ts::now();
        let op = Op::SetSize { ino, size, mtime: now, ctime: now };
        if size > g.attr.size {
            self.zero_tail(&g, g.attr.size, size);
        }
        self.append(std::slice::from_ref(&op))?;
        let freed = meta::apply_setsize(&mut g, &op, self.bs).map_err(|e| Error::Corrupt(corrupt(e)))?;
        g.times_dirty = false;
        drop(g);
        self.release_blocks(freed);
        drop(_gate);
        self.maybe_checkpoint();
        Ok(())
    }

    /// fsync/fdatasync: msync(MS_SYNC) of exactly the file's dirty ranges, then a durable
    /// journal. A failed msync is sticky: every later fsync fails too.
    pub fn fsync(&self, ino: Ino) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::Io(std::io::Error::from_raw_os_error(libc::EIO)));
        }
        let node = self.node(ino)?;
        self.journal_times(ino, &node)?;
        let mut runs = wr(&node).dirty.take().map(|b| *b).unwrap_or_default();
        runs.sort_unstable_by_key(|r| r.start);
        let mut merged: Vec<Run> = Vec::with_capacity(runs.len());
        for r in runs {
            match merged.last_mut() {
                Some(m) if m.start + m.len >= r.start => m.len = m.len.max(r.start + r.len - m.start),
                _ => merged.push(r),
            }
        }
        let started = std::time::Instant::now();
        let mut res = Ok(());
        let bs = self.bs;
        for r in &merged {
            self.phys_ranges(r.start * bs, r.len * bs, |seg, o, l| {
                if res.is_ok() {
                    res = seg.sync_range(o, l);
                }
            });
        }
        let c = &self.counters;
        c.msync_calls.fetch_add(merged.len() as u64, Ordering::Relaxed);
        c.msync_bytes.fetch_add(merged.iter().map(|r| r.len * bs).sum(), Ordering::Relaxed);
        c.msync_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if let Err(e) = res {
            log::error!("msync failed for inode {ino}: {e}; the store refuses further fsyncs");
            self.failed.store(true, Ordering::Release);
            return Err(Error::Io(e));
        }
        self.sync_journal()
    }

    /// Makes the journal durable (fsyncdir, and the tail of every fsync).
    pub fn sync_journal(&self) -> Result<()> {
        if let Err(e) = self.journal.sync() {
            self.failed.store(true, Ordering::Release);
            return Err(Error::Io(e));
        }
        Ok(())
    }

    /// Journal counters: (records appended, syncs).
    pub fn journal_counters(&self) -> (u64, u64) {
        (self.journal.appends.load(Ordering::Relaxed), self.journal.syncs.load(Ordering::Relaxed))
    }
}

/// Largest file size: block numbers must fit comfortably in 64 bits.
pub const MAX_FILE_SIZE: u64 = 1 << 52;

/// Records a written physical run for the next fsync, merging with the previous one.
fn note_dirty(dirty: &mut Vec<Run>, r: Run) {
    if let Some(l) = dirty.last_mut() {
        if r.start >= l.start && r.start <= l.start + l.len {
            l.len = l.len.max(r.start + r.len - l.start);
            return;
        }
    }
    dirty.push(r);
}

/// Applies one journaled op at mount.
fn replay_op(table: &Table, op: &Op, bs: u64, next_ino: &mut u64) -> std::result::Result<(), String> {
    let get = |ino: Ino| -> std::result::Result<Node, String> { table.get(ino).ok_or_else(|| format!("inode {ino} does not exist")) };
    let bad = |e: meta::Inconsistent| e.0;
    match op {
        Op::Create { ino, parent, .. } => {
            if get(*ino).is_ok() {
                return Err(format!("inode {ino} created twice"));
            }
            meta::apply_create(&mut wr(&*get(*parent)?), op).map_err(bad)?;
            table.insert(meta::created_inode(op));
            *next_ino = (*next_ino).max(ino + 1);
        }
        Op::Unlink { parent, name, time } => {
            let e = meta::apply_unlink_dir(&mut wr(&*get(*parent)?), name, *time).map_err(bad)?;
            meta::apply_unlink_child(&mut wr(&*get(e.ino)?), *time);
        }
        Op::Rename { parent, name, newparent, newname, .. } => {
            let src = rd(&*get(*parent)?).dir().and_then(|d| d.get(name)).cloned().ok_or("rename of a missing name")?;
            let dst = rd(&*get(*newparent)?).dir().and_then(|d| d.get(newname)).map(|e| e.ino);
            let (pn, npn, mn) = (get(*parent)?, get(*newparent)?, get(src.ino)?);
            let rn = dst.map(get).transpose()?;
            let mut pg = wr(&pn);
            let mut npg = if newparent != parent { Some(wr(&npn)) } else { None };
            let mut mg = wr(&mn);
            let mut rg = rn.as_ref().map(|n| wr(n));
            meta::apply_rename(&mut pg, npg.as_deref_mut(), &mut mg, rg.as_deref_mut(), op).map_err(bad)?;
        }
        Op::Free { ino } => {
            let n = get(*ino)?;
            meta::apply_free(&mut wr(&n));
            table.remove(*ino);
        }
        Op::SetAttr { ino, .. } => meta::apply_setattr(&mut wr(&*get(*ino)?), op),
        Op::SetSize { ino, .. } => {
            meta::apply_setsize(&mut wr(&*get(*ino)?), op, bs).map_err(bad)?;
        }
        Op::Map { ino, .. } => meta::apply_map(&mut wr(&*get(*ino)?), op).map_err(bad)?,
    }
    Ok(())
}
