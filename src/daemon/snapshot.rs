//! The figures `mmapfs stats` shows: a snapshot of the daemon's counters and knobs, written
//! atomically to `STORE/stats.json`.

use std::path::Path;

use super::{Mounted, bdi};
use crate::stats::{self, Snapshot, Stats};
use crate::store::Store;

/// The daemon's counters and knobs, as `mmapfs stats` shows them.
pub fn take(counters: &Stats, store: &Store, mount: &Mounted) -> Snapshot {
    let (cfg, mnt) = (&mount.cfg, &mount.mnt);
    let (msync_calls, msync_bytes, msync_ns) = {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &store.counters;
        (c.msync_calls.load(Relaxed), c.msync_bytes.load(Relaxed), c.msync_nanos.load(Relaxed))
    };
    let (appends, syncs) = store.journal_counters();
    let (minor, major) = stats::page_faults();
    let (segments, resident, used, inodes) = store.usage();
    let o = &cfg.store_opts;
    let mode = if cfg.fs.writeback_cache {
        "writeback_cache"
    } else if cfg.fs.direct_io {
        "direct_io"
    } else {
        "default"
    };
    let kernel: Vec<String> = cfg.kernel.iter().map(crate::config::option_name).collect();
    let options = vec![
        ("backend", name(o.tuning.backend)),
        ("madvise", name(o.tuning.advice)),
        ("populate", o.tuning.populate.to_string()),
        ("map_writes", o.tuning.map_writes.to_string()),
        ("pool_size", o.tuning.pool_size.to_string()),
        ("sync", name(o.sync)),
        ("cache", mode.to_string()),
        ("threads", cfg.threads.to_string()),
        ("max_write", cfg.fs.max_write.to_string()),
        ("attr_timeout", format!("{:?}", cfg.fs.attr_ttl)),
        ("entry_timeout", format!("{:?}", cfg.fs.entry_ttl)),
        ("segment_size", store.superblock().segment_size.to_string()),
        ("capacity", store.superblock().capacity.to_string()),
        ("journal_limit", o.journal_limit.to_string()),
        ("kernel_options", kernel.join(",")),
        ("dirty_limit", cfg.dirty_limit.to_string()),
        ("read_ahead", cfg.read_ahead.map_or_else(|| "kernel".to_string(), |b| b.to_string())),
    ];
    Snapshot {
        pid: std::process::id(),
        store: store.dir().display().to_string(),
        mountpoint: mnt.display().to_string(),
        options: options.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        uptime_s: counters.uptime().as_secs_f64(),
        ops: counters.ops(),
        msync_calls,
        msync_bytes,
        msync_ms: msync_ns as f64 / 1e6,
        journal_appends: appends,
        journal_syncs: syncs,
        minor_faults: minor,
        major_faults: major,
        segments_mapped: segments,
        resident_bytes: resident,
        used_bytes: used,
        capacity_bytes: store.superblock().capacity,
        inodes,
        pool: store.pool_figures(),
        kernel_limits: mount.kernel.as_ref().map(|k| bdi::limits(&k.bdi, cfg.dirty_limit, k.io_flusher)),
    }
}

/// Writes `STORE/stats.json` atomically (write, rename).
pub fn write(s: &Snapshot, dir: &Path) {
    let tmp = dir.join("stats.json.tmp");
    let r = serde_json::to_vec_pretty(s)
        .map_err(std::io::Error::other)
        .and_then(|b| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            // Private like the rest of the store, and never through a symlink someone planted.
            let _ = std::fs::remove_file(&tmp);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?
                .write_all(&b)
        })
        .and_then(|()| std::fs::rename(&tmp, dir.join("stats.json")));
    if let Err(e) = r {
        log::warn!("cannot write {}: {e}", dir.join("stats.json").display());
    }
}

/// A knob's value as the command line spells it.
fn name(v: impl clap::ValueEnum) -> String {
    v.to_possible_value().map_or_else(String::new, |p| p.get_name().to_string())
}
