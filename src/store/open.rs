//! Opening a store: the store lock, loading the checkpoint and
//! the journal (read and verified before any file is modified), recovery after a crash, and
//! freeing the inodes a crash left orphaned.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::Instant;

use super::alloc::{Allocator, Run};
use super::backend;
use super::error::OpenError;
use super::files;
use super::format::{format, read_superblock, write_superblock};
use super::lock_file::{LockState, take_lock, write_pid};
use super::meta::{self, Op};
use super::recovery;
use super::segment::Segment;
use super::superblock::{self, Superblock};
use super::table::Table;
use super::{Counters, OpenOptions, ROOT, Result, Store, journal, rd, wr};

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
    files::check_store(dir).map_err(unsafe_or_io)
}

/// [`files::check_root`], as a refusal to open.
fn check_root(dir: &Path) -> Result<(), OpenError> {
    files::check_root(dir).map_err(unsafe_or_io)
}

fn unsafe_or_io(e: std::io::Error) -> OpenError {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => OpenError::Unsafe(e.to_string()),
        _ => OpenError::Io(e),
    }
}

/// True if `dir` holds no store yet: it is missing, empty, or holds only the lock file of a
/// mount that is formatting it (see [`format`]).
fn unformatted(dir: &Path) -> Result<bool, OpenError> {
    match std::fs::read_dir(dir) {
        Ok(it) => {
            for ent in it {
                if ent?.file_name() != "lock" {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e.into()),
    }
}

fn corrupt_at(path: &Path, m: impl std::fmt::Display) -> OpenError {
    OpenError::Corrupt(format!("{}: {m}", path.display()))
}

/// A store file that is missing or of the wrong size is damage; any other failure to reach
/// it is an I/O error, and says so.
fn damage_or_io(path: &Path, e: std::io::Error) -> OpenError {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData => corrupt_at(path, e),
        _ => OpenError::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
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
        let len = std::fs::metadata(&path).map_err(|e| damage_or_io(&path, e))?.len();
        if len != sb.segment_size {
            return Err(corrupt_at(&path, format!("{len} bytes, the superblock says {}", sb.segment_size)));
        }
    }
    let recovery::Metadata { table, next_ino, replayed, checkpointed } =
        recovery::load(&meta_dir, &sb.uuid, sb.block_size as u64)?;
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
    /// rewritten as format 3 (before any journal file of format 3 exists), and — because a daemon killed before may have left acknowledged
    /// data and records in the page cache only — every segment and the journal made durable
    /// before the first request, so that a later fsync's promise covers them too.
    pub fn open(dir: &Path, opts: OpenOptions) -> Result<Store, OpenError> {
        // Nothing of the store is walked or read before its lock is held but what decides
        // whether there is a store to lock: a daemon finishing its unmount still renames and
        // removes files, and two first mounts of a new store race to format it.
        if unformatted(dir)? {
            files::create_dir(dir)?;
        } else if std::fs::symlink_metadata(dir.join("lock")).is_err() {
            // No lock file: no mount is formatting it, so a directory without a superblock is
            // no store, refused before a lock file is made in it.
            read_superblock(dir)?;
        }
        // Before the lock file is opened (or made): the directory must be safe to create it in
        // (the lock file itself is opened without following a link).
        check_root(dir)?;
        let (lock_file, last_state) = take_lock(dir)?;
        if unformatted(dir)? {
            format(dir, opts.format)?;
        }
        read_superblock(dir)?;
        let loose = check_store(dir)?;
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
        let engine = backend::engine(&opts.tuning, sb.max_segments(), sb.segment_size)?;
        for (i, slot) in segments.iter().enumerate().take(count as usize) {
            let path = seg_dir.join(format!("{i:06}.seg"));
            let seg = Segment::open(&path, sb.segment_size as usize, i as u32, &*engine)
                .map_err(|e| damage_or_io(&path, e))?;
            let _ = slot.set(seg);
        }
        let meta_dir = dir.join("meta");
        let journal = journal::Journal::open(&meta_dir, sb.uuid, replayed.last, replayed.torn.as_ref())?;
        // Unless the last holder closed the store with everything durable, acknowledged data
        // and records may sit in the page cache only; no fsync would ever name them again.
        if last_state != LockState::Clean {
            log::info!("the store was not closed cleanly: making what the page cache holds of it durable");
            for d in [&seg_dir, &meta_dir] {
                match syncfs(d) {
                    // The last daemon's store failed on an I/O error, which its requests were
                    // answered with; the host filesystem reports that error once more, to the
                    // first syncfs after it. A second syncfs says whether anything fails now.
                    Err(e) if last_state == LockState::Failed => {
                        log::warn!("syncfs reports the last daemon's I/O failure again ({e}); syncing once more");
                        syncfs(d)?;
                    }
                    r => r?,
                }
            }
        }
        // What the host has committed as written needs no metadata commit at the next fsync
        // (one device flush: the journal's); everything of the store is committed by now.
        let batch_sync = batch_sync_safe(dir);
        if batch_sync {
            let settled: u64 = segments.iter().filter_map(|s| s.get()).map(Segment::settle_written).sum();
            log::debug!("{} MiB of the segments written on the host: settled", settled >> 20);
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
            batch_sync,
            failed: AtomicBool::new(false),
            punches: AtomicU64::new(0),
            reclaimed_at: AtomicU64::new(u64::MAX),
            repunch: AtomicBool::new(true),
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
