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
mod data;
pub mod error;
pub mod journal;
pub mod meta;
mod namespace;
mod segment;
pub mod superblock;
mod table;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use alloc::{Allocator, Run};
pub use error::{Error, Result};
use meta::{Attr, Content, Dir, Inode, Kind, Op, Ts};
pub use meta::{Ino, ROOT};
use segment::Segment;
pub use segment::{Backend, Tuning};
use superblock::Superblock;
use table::{Node, Table};

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

/// What fsync does (an experiment knob; `Full` is the only safe choice).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// The file's dirty ranges and the journal are made durable (default).
    #[default]
    Full,
    /// Only the file's data: metadata (sizes, new blocks, names) may be lost on power failure.
    Data,
    /// Nothing: fsync returns at once. UNSAFE, for measuring what syncing costs.
    None,
}

/// How to open a store.
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    /// Geometry of a store created because the directory was missing or empty.
    pub format: FormatOptions,
    /// Journal size that triggers a checkpoint; bounds the replay work at mount. Default 32 MiB.
    pub journal_limit: u64,
    /// Backend, madvise and populate of the segments. Default: mmap, none, no.
    pub tuning: Tuning,
    /// What fsync does. Default: full.
    pub sync: SyncPolicy,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            format: FormatOptions::default(),
            journal_limit: 32 << 20,
            tuning: Tuning::default(),
            sync: SyncPolicy::default(),
        }
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
    /// Drop set-user-ID, set-group-ID (with group execute) and file capabilities, as Linux
    /// does on write, truncate and chown by a caller without CAP_FSETID (FUSE leaves this to
    /// the filesystem under FUSE_HANDLE_KILLPRIV_V2). Ignored when `mode` is given.
    pub kill_privs: bool,
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
    tuning: Tuning,
    sync_policy: SyncPolicy,
    /// Whether one msync per segment may stand for all of a file's ranges in it: true on ext4
    /// and XFS, whose fsync commits all of the file's metadata and flushes the device cache.
    batch_sync: bool,
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

/// Write-locks an inode that has not been freed (an unlinked, closed inode the kernel still
/// remembers accepts no changes).
fn wr_live(node: &Node) -> Result<RwLockWriteGuard<'_, Inode>> {
    let g = wr(node);
    if g.freed {
        return Err(Error::NotFound);
    }
    Ok(g)
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
        Attr {
            ino: ROOT,
            kind: Kind::Dir,
            perm: 0o755,
            uid,
            gid,
            nlink: 2,
            rdev: 0,
            size: 0,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
        },
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
        superblock::SuperblockError::Foreign => {
            Error::NotAStore(dir.into(), "the superblock has no mmapfs magic".into())
        }
        superblock::SuperblockError::Version(v) => Error::Version(v),
        superblock::SuperblockError::Corrupt(m) => Error::Corrupt(format!("superblock: {m}")),
    })
}

/// Takes the store's lock file, or reports who holds it.
fn take_lock(dir: &Path) -> Result<File> {
    let mut f =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join("lock"))?;
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
            let seg = Segment::open(&path, sb.segment_size as usize, &opts.tuning)
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
            tuning: opts.tuning,
            sync_policy: opts.sync,
            batch_sync: batch_sync_safe(dir),
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
        if self.journal.bytes() > self.journal_limit
            && let Err(e) = self.checkpoint()
        {
            log::error!("checkpoint failed: {e}");
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

    /// What the store reports for `mmapfs stats`: (segments mapped, resident bytes of the
    /// segments, used bytes, inodes).
    pub fn usage(&self) -> (u64, Option<u64>, u64, u64) {
        let segs: Vec<&Segment> = self.segments.iter().filter_map(|s| s.get()).collect();
        let resident = segs.iter().map(|s| s.resident()).sum::<Option<u64>>();
        let free = lock(&self.alloc).free_blocks();
        let used = segs.len() as u64 * self.sb.blocks_per_segment() - free;
        (segs.len() as u64, resident, used * self.bs, self.table.len() as u64)
    }

    /// Journal counters: (records appended, syncs).
    pub fn journal_counters(&self) -> (u64, u64) {
        (self.journal.appends.load(Ordering::Relaxed), self.journal.syncs.load(Ordering::Relaxed))
    }
}

/// True if the filesystem holding `dir` makes every completed write of a file durable when any
/// range of it is fsynced (ext4, XFS; tmpfs has nothing to make durable).
fn batch_sync_safe(dir: &Path) -> bool {
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const TMPFS: i64 = 0x0102_1994;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: zeroed statfs is a valid out-buffer; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    let safe = matches!(st.f_type as i64, EXT4 | XFS | TMPFS);
    if !safe {
        log::info!("store on filesystem type {:#x}: fsync msyncs every range on its own", st.f_type);
        return false;
    }
    // The journal's fdatasync stands in for the segments' device flush: one filesystem only.
    use std::os::unix::fs::MetadataExt;
    let dev = |d: &str| std::fs::metadata(dir.join(d)).map(|m| m.dev()).ok();
    if dev("meta").is_none() || dev("meta") != dev("segments") {
        log::info!("meta/ and segments/ on different filesystems: fsync msyncs every range on its own");
        return false;
    }
    true
}

/// Applies one journaled op at mount.
fn replay_op(table: &Table, op: &Op, bs: u64, next_ino: &mut u64) -> std::result::Result<(), String> {
    let get = |ino: Ino| -> std::result::Result<Node, String> {
        table.get(ino).ok_or_else(|| format!("inode {ino} does not exist"))
    };
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
        Op::Link { ino, parent, .. } => {
            let (pn, cn) = (get(*parent)?, get(*ino)?);
            meta::apply_link(&mut wr(&pn), &mut wr(&cn), op).map_err(bad)?;
        }
        Op::Exchange { parent, name, newparent, newname, .. } => {
            let a = rd(&*get(*parent)?)
                .dir()
                .and_then(|d| d.get(name))
                .map(|e| e.ino)
                .ok_or("exchange of a missing name")?;
            let b = rd(&*get(*newparent)?)
                .dir()
                .and_then(|d| d.get(newname))
                .map(|e| e.ino)
                .ok_or("exchange of a missing name")?;
            if a == b {
                return Err("exchange of an inode with itself".into());
            }
            let (pn, npn, an, bn) = (get(*parent)?, get(*newparent)?, get(a)?, get(b)?);
            let mut pg = wr(&pn);
            let mut npg = if newparent != parent { Some(wr(&npn)) } else { None };
            meta::apply_exchange(&mut pg, npg.as_deref_mut(), &mut wr(&an), &mut wr(&bn), op).map_err(bad)?;
        }
        Op::SetXattr { ino, .. } | Op::RemoveXattr { ino, .. } => {
            meta::apply_xattr(&mut wr(&*get(*ino)?), op).map_err(bad)?
        }
        Op::Punch { ino, .. } => {
            meta::apply_punch(&mut wr(&*get(*ino)?), op).map_err(bad)?;
        }
    }
    Ok(())
}
