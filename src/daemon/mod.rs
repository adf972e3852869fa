//! The daemon: one mount's life from the checks before the store is opened to the clean close
//! after the last request, with its threads (signals, checkpoints, housekeeping).

mod background;
mod bdi;
mod checks;
pub mod metrics;
mod snapshot;
mod threads;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub use background::{background, init_logging, tell_starter};

use crate::config::MountConfig;
use crate::fs::MmapFs;
use crate::stats::Stats;
use crate::store::{self, Store, SyncPolicy};

/// Mounts the store `cfg` names and serves it until it is unmounted or a shutdown signal
/// arrives; then closes the store. Returns once the store is closed.
pub fn mount(cfg: &MountConfig) -> Result<(), String> {
    store::faults::arm_from_env()?;
    let (store_dir, mnt, root) = checks::preflight(cfg)?;
    // Before any thread exists: threads inherit the flags when they are created.
    let io_flusher = bdi::become_io_flusher();
    let mut cfg = cfg.clone();
    // The source column of /proc/mounts names the store, so `mmapfs stats MOUNTPOINT` finds it.
    for o in &mut cfg.kernel {
        if let fuser::MountOption::FSName(n) = o
            && n == "mmapfs"
        {
            *n = format!("mmapfs:{}", store_dir.display());
        }
    }
    let source = cfg.kernel.iter().find_map(|o| match o {
        fuser::MountOption::FSName(n) => Some(n.clone()),
        _ => None,
    });
    if cfg.store_opts.sync == SyncPolicy::None {
        log::warn!(
            "--sync none: fsync and msync do NOTHING; data and metadata are NOT durable (an experiment setting)"
        );
    }
    // Block the shutdown signals before any thread exists, so every thread inherits the mask
    // and only the signal thread receives them.
    let signals = threads::shutdown_signals();
    signals.thread_block().map_err(|e| format!("blocking the shutdown signals: {e}"))?;

    bdi::allow_requests_of(cfg.fs.max_write);
    let store = Arc::new(Store::open(&store_dir, cfg.store_opts).map_err(|e| format!("{}: {e}", store_dir.display()))?);
    let counters = Arc::new(Stats::default());
    // Bound before the mount: an address in use fails the mount, not just its metrics.
    let listeners = cfg.metrics.as_deref().map(metrics::bind).transpose()?;
    let mut session = start_session(&cfg, &store, &mnt, &counters)?;
    let kernel = source.and_then(|s| bdi::dir_of(&mnt, &s)).map(|dir| {
        bdi::relax(&dir, cfg.dirty_limit, io_flusher);
        Kernel { bdi: dir, io_flusher }
    });
    if kernel.is_none() {
        log::warn!("cannot find {} in the mount table: the kernel's limits for it stay as they are", mnt.display());
    }
    threads::spawn_signal_waiter(signals, session.unmount_callable(), mnt.clone())?;
    let mount = Mounted { cfg, mnt, kernel };
    spawn_ready(mount.clone(), store_dir, root)?;
    serve(session, &mount, store, counters, listeners)
}

/// Once the mount answers requests (the kernel has the daemon's INIT reply), sets what only
/// then can be set, then says the mount is live.
fn spawn_ready(m: Mounted, store_dir: PathBuf, root: bool) -> Result<(), String> {
    std::thread::Builder::new()
        .name("ready".into())
        .spawn(move || {
            // A request of our own: the kernel holds it until INIT is answered. It fails only
            // if the mount is gone already.
            if let Err(e) = nix::sys::statvfs::statvfs(&m.mnt) {
                log::warn!("the mount at {} did not answer: {e}", m.mnt.display());
                return;
            }
            if let Some(k) = &m.kernel {
                bdi::set_read_ahead(&k.bdi, m.cfg.read_ahead);
            }
            announce(&store_dir, &m.mnt, m.cfg.threads, root);
        })
        .map(drop)
        .map_err(|e| format!("cannot start the thread that announces the mount: {e}"))
}

/// A live mount as the daemon's threads see it.
#[derive(Clone)]
pub struct Mounted {
    pub cfg: MountConfig,
    pub mnt: PathBuf,
    /// The mount's backing device in the kernel, if it was found.
    pub kernel: Option<Kernel>,
}

/// The mount's backing device: its sysfs directory, and whether the daemon is an I/O flusher.
#[derive(Clone)]
pub struct Kernel {
    pub bdi: PathBuf,
    pub io_flusher: bool,
}

/// Mounts: the FUSE session over the store, with the adapter's notifier and unmounter set.
fn start_session(
    cfg: &MountConfig,
    store: &Arc<Store>,
    mnt: &Path,
    counters: &Arc<Stats>,
) -> Result<fuser::Session<MmapFs>, String> {
    let mut fc = fuser::Config::default();
    fc.mount_options = cfg.kernel.clone();
    fc.acl = if cfg.allow_other { fuser::SessionACL::All } else { fuser::SessionACL::Owner };
    fc.n_threads = Some(cfg.threads);
    fc.clone_fd = cfg.threads > 1;
    let notifier = Arc::new(OnceLock::new());
    let fs = MmapFs::new(store.clone(), cfg.fs.clone(), notifier.clone(), counters.clone());
    let unmounter = fs.unmounter.clone();
    let mut session = match fuser::Session::new(fs, mnt, &fc) {
        Ok(s) => s,
        Err(e) => {
            let _ = store.close();
            return Err(format!("cannot mount {}: {e}", mnt.display()));
        }
    };
    let _ = notifier.set(session.notifier());
    let _ = unmounter.set(Mutex::new(session.unmount_callable()));
    Ok(session)
}

/// Tells systemd (Type=notify; a no-op without NOTIFY_SOCKET), the starter of a background
/// daemon and the log that the mount is live (it answers requests).
fn announce(store_dir: &Path, mnt: &Path, threads: usize, root: bool) {
    let status = format!("serving {} at {}", store_dir.display(), mnt.display());
    let ready = [sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)];
    if let Err(e) = sd_notify::notify(&ready) {
        log::warn!("telling the service manager the mount is ready: {e}");
    }
    tell_starter("ok");
    let stop_with = if root { "umount" } else { "fusermount3 -u" };
    log::info!(
        "mounted store {} at {} ({threads} threads); stop with `{stop_with} {}` or SIGTERM",
        store_dir.display(),
        mnt.display(),
        mnt.display()
    );
}

/// Runs the request loops until the mount ends, then stops the daemon's threads, writes the
/// last figures and closes the store.
fn serve(
    session: fuser::Session<MmapFs>,
    m: &Mounted,
    store: Arc<Store>,
    counters: Arc<Stats>,
    listeners: Option<metrics::Listeners>,
) -> Result<(), String> {
    let mnt = &m.mnt;
    let stop = Arc::new(AtomicBool::new(false));
    let housekeeping = threads::spawn_housekeeping(stop.clone(), store.clone(), counters.clone(), m.clone())?;
    let scrapers = match listeners {
        Some(l) => metrics::spawn(l, stop.clone(), store.clone(), counters.clone(), m.clone())?,
        None => Vec::new(),
    };
    let checkpointer = threads::spawn_checkpointer(stop.clone(), store.clone())?;
    let served = session.run();
    store.mark_closing();
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Stopping]) {
        log::warn!("telling the service manager the mount is stopping: {e}");
    }
    stop.store(true, Ordering::Relaxed);
    housekeeping.thread().unpark();
    store.wake_checkpoint_thread();
    let _ = housekeeping.join();
    let _ = checkpointer.join();
    for t in scrapers {
        let _ = t.join();
    }
    snapshot::write(&snapshot::take(&counters, &store, m), store.dir());
    let closed = store.close();
    log::info!("unmounted {}", mnt.display());
    match served {
        // The kernel aborts the connection as it tears the superblock down (after DESTROY);
        // a second request loop that was still reading then sees ECONNABORTED, which fuser
        // passes on. The mount ended normally.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            log::debug!("a request loop saw the connection aborted at the end of the mount")
        }
        other => other.map_err(|e| format!("FUSE session failed: {e}"))?,
    }
    closed.map_err(|e| format!("closing the store: {e}"))
}
