//! The daemon's own threads beside the request loops: the one that receives the shutdown
//! signals, the checkpoint thread, and the housekeeping thread (stats.json, space reclaim).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

use super::{Mounted, snapshot};
use crate::stats::Stats;
use crate::store::Store;

/// The signals that end a mount.
pub fn shutdown_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

/// The one thread that receives SIGINT/SIGTERM/SIGHUP (blocked in every other thread): each
/// unmounts, detaching if files are open.
pub fn spawn_signal_waiter(
    signals: SigSet,
    mut unmounter: fuser::SessionUnmounter,
    mnt: PathBuf,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(sig) = signals.wait() {
                log::info!("signal {}: unmounting {}", sig as i32, mnt.display());
                if let Err(e) = unmounter.unmount() {
                    log::warn!("umount failed ({e}); detaching: the mount ends when its last file is closed");
                    if let Err(e) = crate::mounts::lazy_unmount(&mnt) {
                        log::error!("lazy umount of {} failed: {e}", mnt.display());
                    }
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the signal thread: {e}"))
}

/// Takes the checkpoints the journal's budget asks for, off the request path, until `stop`
/// (wake it with `Store::wake_checkpoint_thread`).
pub fn spawn_checkpointer(stop: Arc<AtomicBool>, store: Arc<Store>) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || {
            // Background work yields to requests: on a machine with few cores, a checkpoint
            // at normal priority would delay the requests it was moved away from.
            // SAFETY: a plain syscall (nix has no wrapper); on Linux, PRIO_PROCESS with a
            // thread id sets that thread's nice value only.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) } != 0 {
                log::debug!("cannot lower the checkpoint thread's priority: {}", std::io::Error::last_os_error());
            }
            loop {
                let due = store.wait_checkpoint_due(Duration::from_secs(1));
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if due && let Err(e) = store.checkpoint_background() {
                    log::error!("checkpoint failed: {e}");
                }
            }
        })
        .map_err(|e| format!("cannot start the checkpoint thread: {e}"))
}

/// Once a second until `stop`: writes `STORE/stats.json` and gives freed space back to the
/// host. Unpark the thread to end it at once.
pub fn spawn_housekeeping(
    stop: Arc<AtomicBool>,
    store: Arc<Store>,
    counters: Arc<Stats>,
    mount: Mounted,
) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("stats+reclaim".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                snapshot::write(&snapshot::take(&counters, &store, &mount), store.dir());
                // Space freed by deletes goes back to the host within a second or so.
                if let Err(e) = store.reclaim() {
                    log::warn!("giving free space back to the host: {e}");
                }
                // Woken early at unmount, so the store closes without waiting for it.
                std::thread::park_timeout(Duration::from_secs(1));
            }
        })
        .map_err(|e| format!("cannot start the stats thread: {e}"))
}
