//! The store: segments, allocation, metadata and durability behind one narrow API.
//!
//! Locking (outermost first, never taken in the other order):
//! `gate` (read by every journaled change, write by the closing checkpoint) → `ns` (one namespace
//! change at a time) → inode locks → `alloc` → journal. Only namespace changes, which hold
//! `ns`, ever hold more than one inode lock, so they cannot deadlock with each other or with
//! the data path. Reads take one inode's read lock; overwrites of stored blocks take one
//! inode's write lock and nothing else: there is no global lock on the data path.

pub(crate) mod alloc;
mod backend;
mod checkpoint;
mod codec;
mod data;
mod error;
pub mod faults;
pub mod fiemap;
mod files;
mod format;
pub mod fsck;
mod guard;
pub mod inspect;
pub(crate) mod journal;
mod lock_file;
mod locks;
mod merge;
pub(crate) mod meta;
mod namespace;
mod open;
#[cfg(feature = "testing")]
pub mod paths;
mod recovery;
mod segment;
pub(crate) mod superblock;
mod sync;
mod table;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, RwLock, RwLockWriteGuard};
use std::time::Duration;

use alloc::{Allocator, Run};
pub use backend::{Advice, Backend, PoolFigures, Tuning};
pub use error::{Error, LoadError, OpenError, Result};
pub use format::{FormatOptions, format};
use locks::{lock, rd, wr};
pub use meta::{Ino, ROOT};
use meta::{Inode, Op, Ts};
use segment::Segment;
use superblock::Superblock;
use table::{Node, Table};

/// Longest name in a directory.
pub const NAME_MAX: usize = 255;

/// What fsync does (an experiment knob; `Full` is the only safe choice).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
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
    /// Checkpoints taken in the background, and the time they took.
    pub checkpoints: AtomicU64,
    pub checkpoint_nanos: AtomicU64,
}

/// A mounted store.
pub struct Store {
    dir: PathBuf,
    sb: Superblock,
    bs: u64,
    segments: Vec<OnceLock<Segment>>,
    /// The backend's store-wide part: opens segments, keeps the `direct` backend's pool.
    engine: Box<dyn backend::Engine>,
    alloc: Mutex<Allocator>,
    journal: journal::Journal,
    table: Table,
    gate: RwLock<()>,
    ns: Mutex<()>,
    checkpointing: Mutex<()>,
    /// Set (and signalled) when the journal has outgrown its budget; the checkpoint thread
    /// waits on it (see [`Store::wait_checkpoint_due`]).
    checkpoint_due: (Mutex<bool>, Condvar),
    next_ino: AtomicU64,
    journal_limit: u64,
    sync_policy: SyncPolicy,
    /// Whether one msync per segment may stand for all of a file's ranges in it: true on ext4
    /// and XFS, whose fsync commits all of the file's metadata and flushes the device cache.
    batch_sync: bool,
    /// Set when an msync failed: every later fsync reports EIO until the store is reopened.
    failed: AtomicBool,
    /// Twice the reclaim passes that punched segment space, plus one while a pass punches;
    /// fsync marks nothing settled across one.
    punches: AtomicU64,
    /// `Allocator::frees` at the last reclaim pass (nothing freed since: nothing to do).
    reclaimed_at: AtomicU64,
    /// Set at open: the first reclaim pass punches every large free run again, because blocks
    /// freed just before a crash (or a kill) may still hold host space, and the allocator
    /// cannot tell them from runs punched long ago (punching a hole again costs little).
    repunch: AtomicBool,
    /// Held for a whole reclaim pass: an allocation that found no space waits for it.
    reclaiming: Mutex<()>,
    pub counters: Counters,
    _lock: File,
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

impl Store {
    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// Segment `idx`.
    fn seg(&self, idx: u64) -> &Segment {
        // Extents only name blocks of segments that exist (checked at mount, made before use).
        self.segments[idx as usize].get().expect("extent in a segment that exists")
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

    /// Fails with `EIO` once the store has failed: the one check every change and fsync makes
    /// first (see [`Store::failed_io`]).
    fn usable(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::Io(std::io::Error::from_raw_os_error(libc::EIO)));
        }
        Ok(())
    }

    /// The one place that owns an I/O failure of the store's own files (a journal write or
    /// sync, an msync, a checkpoint write, a segment creation): the store turns read-only with
    /// `EIO` for every later change and fsync until it is reopened, because what is in memory
    /// may now be ahead of what is on disk, and a lost write must never be followed by an
    /// fsync that reports success. Returns the error for the request that met it.
    fn failed_io(&self, what: &str, e: std::io::Error) -> Error {
        if !self.failed.swap(true, Ordering::AcqRel) {
            log::error!("{what} failed: {e}; the store refuses every further change until it is remounted");
            // The lock file says so too, for whoever looks at a store whose daemon is gone.
            if let Err(e) = lock_file::write_pid(&self._lock, lock_file::LockState::Failed) {
                log::warn!("cannot mark the store as failed in its lock file: {e}");
            }
        }
        Error::Io(e)
    }

    /// A request panicked inside the store: handled like an I/O failure (see
    /// [`Store::failed_io`]). Returns the error for that request.
    pub fn request_panicked(&self) -> Error {
        self.failed_io("a request (it panicked)", std::io::Error::from_raw_os_error(libc::EIO))
    }

    /// Appends one journal record (the failure is sticky, see [`Store::failed_io`]).
    fn append(&self, ops: &[Op]) -> Result<()> {
        self.usable()?;
        self.journal.append(ops).map_err(|e| self.failed_io("journal append", e))?;
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
        let op =
            Op::SetAttr { ino, perm: a.perm, uid: a.uid, gid: a.gid, atime: a.atime, mtime: a.mtime, ctime: a.ctime };
        self.append(&[op])?;
        n.times_dirty = false;
        Ok(())
    }

    /// Makes the journal durable (fsyncdir, and the tail of every fsync).
    pub fn sync_journal(&self) -> Result<()> {
        self.usable()?;
        self.journal.sync().map_err(|e| self.failed_io("journal sync", e))
    }

    /// Asks the checkpoint thread for a checkpoint if the journal has grown past its budget.
    /// Requests never take a checkpoint themselves: they would stall on it.
    fn maybe_checkpoint(&self) {
        if self.journal.bytes() > self.journal_limit {
            let (due, cv) = &self.checkpoint_due;
            *lock(due) = true;
            cv.notify_one();
        }
    }

    /// For the checkpoint thread: waits up to `timeout` for the journal to outgrow its budget
    /// (or for [`Store::wake_checkpoint_thread`]); true if a checkpoint is due.
    pub fn wait_checkpoint_due(&self, timeout: Duration) -> bool {
        let (due, cv) = &self.checkpoint_due;
        let mut g = lock(due);
        if !*g {
            g = cv.wait_timeout(g, timeout).unwrap_or_else(|p| p.into_inner()).0;
        }
        std::mem::take(&mut *g) && self.journal.bytes() > self.journal_limit
    }

    /// Wakes the checkpoint thread (at unmount, so it sees its stop flag at once).
    pub fn wake_checkpoint_thread(&self) {
        let (due, cv) = &self.checkpoint_due;
        *lock(due) = true;
        cv.notify_all();
    }

    /// A checkpoint that no request waits for: the journal is rotated, and its closed files
    /// merged into the installed checkpoint from disk (see `merge.rs`) while requests go on.
    /// Returns the number of records merged. A failure is sticky like any I/O failure.
    pub fn checkpoint_background(&self) -> Result<u64> {
        let _only_one = lock(&self.checkpointing);
        self.usable()?;
        let started = std::time::Instant::now();
        let sticky = |e: LoadError| match e {
            LoadError::Io(e) => self.failed_io("background checkpoint", e),
            LoadError::Corrupt(m) => self.failed_io(
                "background checkpoint",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the store's metadata files do not replay: {m}"),
                ),
            ),
        };
        let seq = self.journal.rotate().map_err(|e| self.failed_io("journal rotation", e))?;
        let done = merge::merge(&self.dir.join("meta"), &self.sb.uuid, self.bs, seq).map_err(sticky)?;
        self.journal.remove_upto(seq).map_err(|e| self.failed_io("removing merged journal files", e))?;
        let took = started.elapsed();
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.counters.checkpoint_nanos.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        log::info!(
            "checkpoint at seq {seq}: {} records merged, {} of {} inodes rewritten, in {took:?}",
            done.records,
            done.rewritten,
            done.inodes
        );
        Ok(done.records)
    }

    /// Writes every inode from memory to a new checkpoint and drops the journal files it
    /// covers, with every change stopped: for the close, when nothing else runs (it also
    /// records times that data writes changed since their last journal record). A failure
    /// is sticky (the journal may already be rotated).
    pub fn checkpoint(&self) -> Result<()> {
        self.checkpoint_inner().map_err(|e| match e {
            Error::Io(e) => self.failed_io("checkpoint", e),
            other => other,
        })
    }

    fn checkpoint_inner(&self) -> Result<()> {
        let _only_one = lock(&self.checkpointing);
        let started = std::time::Instant::now();
        let (image, seq, n) = {
            let _stop = wr(&self.gate);
            let seq = self.journal.rotate()?;
            let nodes = self.table.nodes();
            let live: Vec<_> = nodes.iter().map(|n| rd(n)).filter(|g| !g.freed).collect();
            let mut e = checkpoint::begin(&self.sb.uuid, seq, self.next_ino.load(Ordering::Relaxed), live.len() as u64);
            for g in &live {
                checkpoint::encode_inode(&mut e, g);
            }
            (e, seq, live.len())
        };
        faults::check(faults::Point::CheckpointWrite)?;
        checkpoint::install(&self.dir.join("meta"), image)?;
        self.journal.remove_upto(seq)?;
        log::info!("checkpoint of {n} inodes at seq {seq} in {:?}", started.elapsed());
        Ok(())
    }

    /// Notes in the lock file that the mount is over and the store is closing, so that a
    /// mount of the same store waits for it instead of being refused.
    pub fn mark_closing(&self) {
        let state = if self.failed.load(Ordering::Acquire) {
            lock_file::LockState::Failed
        } else {
            lock_file::LockState::Closing
        };
        if let Err(e) = lock_file::write_pid(&self._lock, state) {
            log::warn!("cannot mark the store as closing in its lock file: {e}");
        }
    }

    /// Clean shutdown: every segment synced to disk, a final checkpoint.
    /// Ends with `clean` in the lock file, which lets the next mount skip the recovery flush.
    pub fn close(&self) -> Result<()> {
        self.mark_closing();
        self.usable()?;
        // Space freed since the last background pass goes back to the host now, not never.
        self.reclaim()?;
        for seg in self.segments.iter().filter_map(|s| s.get()) {
            seg.sync_range(0, self.sb.segment_size as usize).map_err(|e| self.failed_io("msync at close", e))?;
        }
        // Record times changed by data writes since their last journal record.
        self.checkpoint()?;
        self.sync_journal()?;
        Ok(lock_file::write_pid(&self._lock, lock_file::LockState::Clean)?)
    }

    /// Gives the host space of large free runs back to the host filesystem (punched holes in
    /// the segment files), so deleting files shrinks the store on disk. Called in the
    /// background; returns the bytes given back.
    ///
    /// The runs are taken out of the allocator first (nothing can allocate them meanwhile), and
    /// the journal is made durable before any is punched: their blocks were freed by records
    /// appended before, and if a power cut lost such a record, its file would come back with
    /// its data punched away.
    pub fn reclaim(&self) -> Result<u64> {
        /// Runs shorter than this stay reserved: punching small holes fragments the segment
        /// files for little gain.
        const MIN_RUN_BYTES: u64 = 1 << 20;
        let _pass = lock(&self.reclaiming);
        let runs = {
            let mut a = lock(&self.alloc);
            let frees = a.frees();
            let all = self.repunch.swap(false, Ordering::AcqRel);
            if self.failed.load(Ordering::Acquire) || (self.reclaimed_at.swap(frees, Ordering::AcqRel) == frees && !all)
            {
                return Ok(0);
            }
            let min = MIN_RUN_BYTES.div_ceil(self.bs);
            if all { a.take_all_free(min) } else { a.take_reclaimable(min) }
        };
        if runs.is_empty() {
            return Ok(0);
        }
        let synced = self.sync_journal();
        let (bs, bps) = (self.bs, self.sb.blocks_per_segment());
        let mut given = 0;
        // Odd while punching: an fsync that sees an odd count, or a different one when it is
        // done, marks nothing settled (see `Store::fsync`).
        self.punches.fetch_add(1, Ordering::AcqRel);
        for r in runs {
            let punched = synced.is_ok() && {
                let off = ((r.start % bps) * bs) as usize;
                match self.segments[(r.start / bps) as usize].get().map(|s| s.punch(off, (r.len * bs) as usize)) {
                    Some(Ok(())) => true,
                    Some(Err(e)) => {
                        log::warn!("cannot give segment space back to the host: {e}");
                        false
                    }
                    None => false,
                }
            };
            given += if punched { r.len * bs } else { 0 };
            lock(&self.alloc).put_back(r, punched);
        }
        self.punches.fetch_add(1, Ordering::AcqRel);
        synced?;
        if given > 0 {
            log::debug!("gave {} KiB of free segment space back to the host", given >> 10);
        }
        Ok(given)
    }

    /// True while a reclaim pass has free runs out of the allocator.
    pub(crate) fn reclaim_running(&self) -> bool {
        self.reclaiming.try_lock().is_err()
    }

    /// Blocks the host filesystem holding the segments can still give.
    fn host_free_blocks(&self) -> u64 {
        let Ok(c) = std::ffi::CString::new(self.dir.join("segments").into_os_string().into_encoded_bytes()) else {
            return 0;
        };
        // SAFETY: a zeroed statvfs is a valid out-buffer; `c` is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return 0;
        }
        st.f_bavail as u64 * st.f_frsize as u64 / self.bs
    }

    /// Figures for `statfs`. Free space never exceeds what the host can give: blocks whose
    /// space is reserved count whole, the rest (given back, or in segments not yet created)
    /// only as far as the host filesystem has room.
    pub fn statfs(&self) -> StatFs {
        let a = lock(&self.alloc);
        let unmade = self.sb.max_segments() - a.segments();
        let (backed, unbacked) = (a.backed_free_blocks(), a.unbacked_blocks());
        drop(a);
        let files = self.table.len() as u64;
        let needs_host = unbacked + unmade * self.sb.blocks_per_segment();
        StatFs {
            block_size: self.bs as u32,
            blocks: self.sb.max_segments() * self.sb.blocks_per_segment(),
            free_blocks: backed + needs_host.min(self.host_free_blocks()),
            files: files + (1 << 32),
            free_files: 1 << 32,
        }
    }

    /// What the store reports for `mmapfs stats`: (segments open, resident bytes of the
    /// segments, used bytes, inodes).
    pub fn usage(&self) -> (u64, Option<u64>, u64, u64) {
        let segs: Vec<&Segment> = self.segments.iter().filter_map(|s| s.get()).collect();
        let resident = segs.iter().map(|s| s.resident()).sum::<Option<u64>>();
        let free = lock(&self.alloc).free_blocks();
        let used = segs.len() as u64 * self.sb.blocks_per_segment() - free;
        (segs.len() as u64, resident, used * self.bs, self.table.len() as u64)
    }

    /// The buffer pool's figures, for a backend that keeps one (`direct`).
    pub fn pool_figures(&self) -> Option<PoolFigures> {
        self.engine.pool()
    }

    /// Journal counters: (records appended, syncs).
    pub fn journal_counters(&self) -> (u64, u64) {
        (self.journal.appends.load(Ordering::Relaxed), self.journal.syncs.load(Ordering::Relaxed))
    }
}
