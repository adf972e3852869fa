//! `mmapfs mount`'s arguments, and the [`MountConfig`] they make.

use std::path::PathBuf;

use clap::Args;

use super::Size;
use crate::config::{MountConfig, default_store};
use crate::fs::FsConfig;
use crate::store::{Advice, Backend, FormatOptions, OpenOptions, SyncPolicy, Tuning};

#[derive(Args)]
pub struct MountArgs {
    /// The store directory [default: ~/.local/share/mmapfs/default]
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Where to mount (created if missing)
    mountpoint: PathBuf,
    /// Mount options, comma separated: allow_other, default_permissions (on by default),
    /// no_default_permissions, ro, rw, nodev, nosuid, noexec, noatime, sync, dirsync,
    /// fsname=NAME, and mmapfs's own: writeback_cache, direct_io, max_write=SIZE,
    /// dirty_limit=kernel|N%|SIZE (dirty page cache the mount may hold; as root the default
    /// is 50% of the machine's dirty threshold, strict; a normal user keeps the kernel's 1%),
    /// read_ahead=kernel|SIZE (the kernel's read-ahead in the mount's files; as root 1M by
    /// default, a normal user keeps the kernel's 128K), metrics=PORT|HOST:PORT (the stats
    /// counters over HTTP at /metrics; a bare port listens on loopback only)
    #[arg(short = 'o', value_name = "OPTS")]
    options: Vec<String>,
    /// FUSE request threads [default: number of cores]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Largest FUSE WRITE request, 4K..16M; the same as -o max_write=SIZE (which wins if
    /// both are given). Above 1M, root raises the machine-wide fs.fuse.max_pages_limit to
    /// match (never lowers it)
    #[arg(long, value_name = "SIZE", default_value_t = Size(FsConfig::default().max_write as u64))]
    max_write: Size,
    /// Segment size for a store created by this mount
    #[arg(long, value_name = "SIZE", default_value_t = Size(FormatOptions::default().segment_size))]
    segment_size: Size,
    /// Capacity for a store created by this mount
    #[arg(long, value_name = "SIZE", default_value_t = Size(FormatOptions::default().capacity))]
    capacity: Size,
    /// Journal size that triggers a checkpoint (bounds mount time)
    #[arg(long, value_name = "SIZE", default_value_t = Size(OpenOptions::default().journal_limit))]
    journal_limit: Size,
    /// How the daemon reaches file data: its segment mappings, pread/pwrite on the
    /// segment files (fsync is then fdatasync), or direct: O_DIRECT I/O into the daemon's
    /// own buffer pool (CLOCK eviction, written through)
    #[arg(long, value_enum, default_value_t = Tuning::default().backend)]
    backend: Backend,
    /// Size of the direct and vm backends' buffer pool [default: an eighth of the memory]
    #[arg(long, value_name = "SIZE")]
    pool_size: Option<Size>,
    /// madvise() on the segment mappings; with `random` the daemon reads ahead exactly
    /// the ranges requests touch (the default: keeps page-cache folios small, so a
    /// scattered write costs one page of writeback at fsync)
    #[arg(long, value_enum, default_value_t = Tuning::default().advice)]
    madvise: Advice,
    /// Pre-fault the segment mappings (MAP_POPULATE)
    #[arg(long)]
    populate: bool,
    /// Copy writes through the segment mappings (page by page, each new page zeroed by the
    /// kernel first, each page fsync wrote back faulted again) instead of pwrite into the same
    /// page cache
    #[arg(long)]
    map_writes: bool,
    /// What fsync does: full (data + metadata), data (data only), none (UNSAFE: nothing)
    #[arg(long, value_enum, default_value_t = SyncPolicy::default())]
    sync: SyncPolicy,
    /// Refuse a missing mountpoint instead of creating it (mount(8)'s helper form)
    #[arg(long, hide = true)]
    existing_mountpoint: bool,
}

impl MountArgs {
    /// The mount's configuration, validated.
    pub fn config(self) -> Result<MountConfig, String> {
        let mut cfg = MountConfig::new(self.store.unwrap_or_else(default_store), self.mountpoint);
        let tuning = Tuning {
            backend: self.backend,
            advice: self.madvise,
            populate: self.populate,
            map_writes: self.map_writes,
            pool_size: self.pool_size.map_or(Tuning::default().pool_size, |s| s.0),
        };
        cfg.store_opts = OpenOptions {
            format: FormatOptions { segment_size: self.segment_size.0, capacity: self.capacity.0 },
            journal_limit: self.journal_limit.0,
            tuning,
            sync: self.sync,
        };
        cfg.create_mountpoint = !self.existing_mountpoint;
        if let Some(t) = self.threads {
            cfg.threads = t;
        }
        std::iter::once(format!("max_write={}", self.max_write))
            .chain(self.options)
            .try_for_each(|o| cfg.apply_options(&o))
            .and_then(|()| cfg.validate())?;
        Ok(cfg)
    }
}
