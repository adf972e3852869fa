//! Opening a store: formatting, the superblock, the store lock, loading the checkpoint and
//! the journal (read and verified before any file is modified), recovery after a crash, and
//! freeing the inodes a crash left orphaned.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use super::alloc::{Allocator, Run};
use super::backend;
use super::error::OpenError;
use super::files;
use super::meta::{self, Attr, Content, Dir, Inode, Kind, Op, Ts};
use super::segment::Segment;
use super::superblock::{self, Superblock};
use super::table::{Inodes, Node, Table};
use super::{Counters, FormatOptions, Ino, OpenOptions, ROOT, Result, Store, checkpoint, journal, rd, wr};

/// Creates a new, empty store in `dir` (which must not exist or be empty).
pub fn format(dir: &Path, opts: FormatOptions) -> Result<(), OpenError> {
    opts.validate().map_err(OpenError::Geometry)?;
    let sb = opts.superblock(superblock::random_uuid()?);
    files::create_dir(dir)?;
    if std::fs::read_dir(dir)?.next().is_some() {
        return Err(OpenError::NotAStore(dir.into(), "the directory is not empty; refusing to format it".into()));
    }
    files::create_dir(&dir.join("segments"))?;
    files::create_dir(&dir.join("meta"))?;
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
    checkpoint::encode_inode(&mut e, &root);
    checkpoint::install(&dir.join("meta"), e)?;
    // The superblock last: a directory without one is not a store yet.
    write_superblock(dir, &sb)?;
    log::info!("formatted store {} (segment {} B, capacity {} B)", dir.display(), sb.segment_size, sb.capacity);
    Ok(())
}

/// Reads and checks the superblock of `dir`.
pub fn read_superblock(dir: &Path) -> Result<Superblock, OpenError> {
    let data = match files::read(&dir.join("superblock")) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(OpenError::NotAStore(dir.into(), "it has no superblock file".into()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(OpenError::Unsafe(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    Superblock::decode(&data).map_err(|e| match e {
        superblock::SuperblockError::Foreign => {
            OpenError::NotAStore(dir.into(), "the superblock has no mmapfs magic".into())
        }
        superblock::SuperblockError::Version(v) => OpenError::Version(v),
        superblock::SuperblockError::Corrupt(m) => OpenError::Corrupt(format!("superblock: {m}")),
    })
}

/// Writes the superblock atomically (temporary file, synced, renamed, directory synced).
fn write_superblock(dir: &Path, sb: &Superblock) -> Result<(), OpenError> {
    let tmp = dir.join("superblock.tmp");
    let mut f = files::open(&tmp, std::fs::OpenOptions::new().write(true).create(true).truncate(true))?;
    f.write_all(&sb.encode())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("superblock"))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// How long a mount waits for a daemon that holds the store but serves no mount any more
/// (it is writing its final checkpoint after `umount`) or not yet.
const HOLDER_WAIT: Duration = Duration::from_secs(30);

/// What the lock file says about its (last) holder: `PID`, `PID closing` once its mount is
/// over, `PID clean` once it has closed the store with everything durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockState {
    Serving,
    Closing,
    Clean,
}

impl LockState {
    fn word(self) -> &'static str {
        match self {
            LockState::Serving => "",
            LockState::Closing => " closing",
            LockState::Clean => " clean",
        }
    }
}

fn holder(f: &mut File) -> (Option<u32>, LockState) {
    let mut s = String::new();
    let _ = f.seek(std::io::SeekFrom::Start(0));
    let _ = f.read_to_string(&mut s);
    let mut words = s.split_whitespace();
    let pid = words.next().and_then(|p| p.parse().ok());
    let state = match (pid, words.next()) {
        // A new lock file: no daemon has served this store since it was formatted.
        (None, _) | (_, Some("clean")) => LockState::Clean,
        (_, Some("closing")) => LockState::Closing,
        _ => LockState::Serving,
    };
    (pid, state)
}

/// Takes the store's lock file. A holder that serves a mount is refused at once with its pid;
/// one that serves none (finishing after `umount`, or still starting) is waited for, up to
/// [`HOLDER_WAIT`], so that `umount` followed at once by `mount` works.
pub(crate) fn take_lock(dir: &Path) -> Result<(File, LockState), OpenError> {
    let mut f = files::open(
        &dir.join("lock"),
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false),
    )?;
    let started = Instant::now();
    let mut told = false;
    loop {
        // SAFETY: flock on an fd we own; no memory is passed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            if told {
                log::info!("the previous holder let go of the store after {:?}", started.elapsed());
            }
            let (_, last) = holder(&mut f);
            return Ok((f, last));
        }
        let (pid, state) = holder(&mut f);
        let closing = state != LockState::Serving;
        if (!closing && crate::mounts::serves_store(dir)) || started.elapsed() > HOLDER_WAIT {
            return Err(OpenError::Locked { pid });
        }
        if !told {
            let what = if closing { "is finishing its unmount" } else { "serves no mount (yet)" };
            let pid = pid.map_or_else(|| "another process".to_string(), |p| format!("pid {p}"));
            log::info!("the store is held by {pid}, which {what}; waiting up to {HOLDER_WAIT:?}");
            told = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Records our pid and state in the lock file.
pub(crate) fn write_pid(mut f: &File, state: LockState) -> std::io::Result<()> {
    f.set_len(0)?;
    f.seek(std::io::SeekFrom::Start(0))?;
    writeln!(f, "{}{}", std::process::id(), state.word())?;
    Ok(())
}

/// A store's metadata as read from its files, verified and not yet acted on.
pub(crate) struct Loaded {
    pub sb: Superblock,
    pub table: Table,
    pub next_ino: u64,
    pub replayed: journal::Replayed,
    /// Inodes in the checkpoint.
    pub checkpointed: usize,
    /// Segment files `000000.seg`… that exist (all of the superblock's size).
    pub segments: u64,
    pub alloc: Allocator,
    /// Leftovers of an interrupted operation, removed when the store is opened for writing.
    pub debris: Vec<PathBuf>,
    /// Store files and directories others may read, tightened when it is opened for writing.
    pub loose: Vec<PathBuf>,
}

/// [`files::check_store`], as a refusal to open.
fn check_store(dir: &Path) -> Result<Vec<PathBuf>, OpenError> {
    files::check_store(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => OpenError::Unsafe(e.to_string()),
        _ => OpenError::Io(e),
    })
}

fn corrupt_at(path: &Path, m: impl std::fmt::Display) -> OpenError {
    OpenError::Corrupt(format!("{}: {m}", path.display()))
}

/// Reads and verifies everything a mount needs (superblock, segment files, checkpoint,
/// journal, extent maps) without changing any file: a damaged store is refused as it is.
pub(crate) fn load(dir: &Path) -> Result<Loaded, OpenError> {
    let loose = check_store(dir)?;
    load_checked(dir, loose)
}

/// [`load`] of a store [`check_store`] accepted, returning the `loose` paths it found.
fn load_checked(dir: &Path, loose: Vec<PathBuf>) -> Result<Loaded, OpenError> {
    let sb = read_superblock(dir)?;
    let seg_dir = dir.join("segments");
    let meta_dir = dir.join("meta");
    for d in [&seg_dir, &meta_dir] {
        if !d.is_dir() {
            return Err(OpenError::Corrupt(format!("{} is missing", d.display())));
        }
    }
    let mut debris = Vec::new();
    for name in ["checkpoint.tmp", "journal.new"] {
        if meta_dir.join(name).exists() {
            debris.push(meta_dir.join(name));
        }
    }
    // Segments: 000000.seg, 000001.seg, … without gaps, each of the superblock's size.
    let mut names = Vec::new();
    for ent in std::fs::read_dir(&seg_dir)? {
        let name = ent?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".seg.tmp") {
            debris.push(seg_dir.join(&name));
        } else if name.ends_with(".seg") {
            names.push(name);
        }
    }
    let count = names.len() as u64;
    if count > sb.max_segments() {
        return Err(OpenError::Corrupt(format!("{count} segments, capacity allows {}", sb.max_segments())));
    }
    for i in 0..count {
        let path = seg_dir.join(format!("{i:06}.seg"));
        let len = std::fs::metadata(&path).map_err(|e| corrupt_at(&path, e))?.len();
        if len != sb.segment_size {
            return Err(corrupt_at(&path, format!("{len} bytes, the superblock says {}", sb.segment_size)));
        }
    }
    // Metadata: checkpoint, then the journal after it.
    let snap = checkpoint::load(&meta_dir, &sb.uuid)
        .map_err(OpenError::Corrupt)?
        .ok_or_else(|| OpenError::Corrupt("meta/checkpoint is missing".into()))?;
    let table = Table::new();
    let checkpointed = snap.inodes.len();
    for inode in snap.inodes {
        if table.get(inode.attr.ino).is_some() {
            return Err(OpenError::Corrupt(format!("checkpoint: inode {} twice", inode.attr.ino)));
        }
        table.insert(inode);
    }
    let bs = sb.block_size as u64;
    let mut next_ino = snap.next_ino;
    let replayed = journal::replay(&meta_dir, &sb.uuid, snap.seq, |_, ops| {
        for op in &ops {
            replay_op(&table, op, bs, &mut next_ino)?;
        }
        Ok(())
    })?;
    if table.get(ROOT).is_none() {
        return Err(OpenError::Corrupt("the root directory is missing".into()));
    }
    // Free space is whatever no extent uses; this also proves no block is owned twice.
    let mut used = Vec::new();
    for node in table.nodes() {
        if node.ino >= next_ino {
            return Err(OpenError::Corrupt(format!(
                "inode {} is at or past the next inode number {next_ino}",
                node.ino
            )));
        }
        if let Some(x) = rd(&node).extents() {
            used.extend(x.iter().map(|e| Run { start: e.phys, len: e.len }));
        }
    }
    let alloc = Allocator::from_used(sb.blocks_per_segment(), count, used)
        .map_err(|e| OpenError::Corrupt(format!("extent map: {e:?}")))?;
    Ok(Loaded { sb, table, next_ino, replayed, checkpointed, segments: count, alloc, debris, loose })
}

impl Store {
    /// Opens the store in `dir`, creating it with `opts.format` if `dir` is missing or empty.
    ///
    /// Everything is read and verified first ([`load`]); only then are files changed: debris of
    /// interrupted operations removed, a torn journal tail cut off, a format-1 superblock
    /// rewritten as format 2, and — because a daemon killed before may have left acknowledged
    /// data and records in the page cache only — every segment and the journal made durable
    /// before the first request, so that a later fsync's promise covers them too.
    pub fn open(dir: &Path, opts: OpenOptions) -> Result<Store, OpenError> {
        let fresh = match std::fs::read_dir(dir) {
            Ok(mut it) => it.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(e.into()),
        };
        if fresh {
            format(dir, opts.format)?;
        }
        read_superblock(dir)?;
        // Before the lock file is opened (or made): a symlink there must not be followed.
        let loose = check_store(dir)?;
        let (lock_file, last_state) = take_lock(dir)?;
        let started = Instant::now();
        let Loaded { mut sb, table, next_ino, replayed, checkpointed, segments: count, alloc, debris, loose } =
            load_checked(dir, loose)?;
        files::tighten(&loose)?;
        for path in &debris {
            log::info!("removing {}, left by an interrupted operation", path.display());
            std::fs::remove_file(path)?;
        }
        if sb.version < superblock::VERSION {
            log::info!("upgrading the store from format {} to {}", sb.version, superblock::VERSION);
            sb.version = superblock::VERSION;
            write_superblock(dir, &sb)?;
        }
        let seg_dir = dir.join("segments");
        let segments: Vec<OnceLock<Segment>> = (0..sb.max_segments()).map(|_| OnceLock::new()).collect();
        let engine = backend::engine(&opts.tuning, sb.max_segments())?;
        for (i, slot) in segments.iter().enumerate().take(count as usize) {
            let path = seg_dir.join(format!("{i:06}.seg"));
            let seg =
                Segment::open(&path, sb.segment_size as usize, i as u32, &*engine).map_err(|e| corrupt_at(&path, e))?;
            let _ = slot.set(seg);
        }
        let meta_dir = dir.join("meta");
        let journal = journal::Journal::open(&meta_dir, sb.uuid, replayed.last, replayed.torn.as_ref())?;
        // Unless the last holder closed the store with everything durable, acknowledged data
        // and records may sit in the page cache only; no fsync would ever name them again.
        if last_state != LockState::Clean {
            log::info!("the store was not closed cleanly: making what the page cache holds of it durable");
            for d in [&seg_dir, &meta_dir] {
                syncfs(d)?;
            }
        }
        let store = Store {
            dir: dir.to_path_buf(),
            sb,
            bs: sb.block_size as u64,
            segments,
            engine,
            alloc: Mutex::new(alloc),
            journal,
            table,
            gate: RwLock::new(()),
            ns: Mutex::new(()),
            checkpointing: Mutex::new(()),
            checkpoint_due: (Mutex::new(false), std::sync::Condvar::new()),
            next_ino: AtomicU64::new(next_ino),
            journal_limit: opts.journal_limit,
            sync_policy: opts.sync,
            batch_sync: batch_sync_safe(dir),
            failed: AtomicBool::new(false),
            punches: AtomicU64::new(0),
            reclaimed_at: AtomicU64::new(u64::MAX),
            reclaiming: Mutex::new(()),
            counters: Counters::default(),
            _lock: lock_file,
        };
        write_pid(&store._lock, LockState::Serving)?;
        store.free_orphans()?;
        log::info!(
            "opened store {}: {checkpointed} inodes in the checkpoint, {} journal records replayed, {count} segments, in {:?}",
            dir.display(),
            replayed.records,
            started.elapsed()
        );
        Ok(store)
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
        self.append(&ops)?;
        for ino in orphans {
            let node = self.node(ino)?;
            let freed = meta::apply_free(&mut wr(&node));
            self.release_blocks(freed);
            self.remove_node(ino);
        }
        Ok(())
    }
}

/// Makes everything written to the filesystem holding `dir` durable (`syncfs`): after an
/// unclean shutdown the segments and journal may hold acknowledged bytes in the page cache
/// only, and nothing else would ever flush them.
fn syncfs(dir: &Path) -> Result<(), OpenError> {
    let f = File::open(dir)?;
    // SAFETY: a plain syscall on an fd we own; no memory is passed.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
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

/// Applies one journaled op (at mount, and in a background checkpoint).
pub(super) fn replay_op(table: &impl Inodes, op: &Op, bs: u64, next_ino: &mut u64) -> std::result::Result<(), String> {
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
