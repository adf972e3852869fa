//! The mount's backing device (bdi) in the kernel: the daemon marks itself as an I/O flusher,
//! then relaxes the dirty-page limit the kernel gives every FUSE mount, and reports the
//! limits in effect. Why this is safe: docs/design.md, "Dirty pages of mapped files".

use std::path::{Path, PathBuf};

use crate::config::DirtyLimit;
use crate::stats::KernelLimits;

/// `prctl(2)`'s option (Linux 5.6); the libc crate does not name them for Linux yet.
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// Marks the daemon as an I/O flusher: it is throttled only against the devices it writes
/// to itself, never behind the global dirty limit its own mount's pages help fill, and its
/// allocations never recurse into I/O (PF_LOCAL_THROTTLE | PF_MEMALLOC_NOIO). Call it before
/// any thread is started: threads inherit the flags when they are created. Returns whether
/// the daemon is one; without CAP_SYS_RESOURCE (a normal user, or a root whose bounding set
/// lacks it, as in some VMs and containers) or before Linux 5.6 it is not.
pub fn become_io_flusher() -> bool {
    // SAFETY: a plain syscall on the calling task's flags; no memory is passed.
    if unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) } == 0 {
        return true;
    }
    log::debug!("not an I/O flusher: prctl(PR_SET_IO_FLUSHER): {}", std::io::Error::last_os_error());
    false
}

/// The mount's bdi directory, `/sys/class/bdi/MAJ:MIN`: the device of the newest mount of
/// `source` at `mnt` (a FUSE mount's device is its bdi's name).
pub fn dir_of(mnt: &Path, source: &str) -> Option<PathBuf> {
    let m = crate::mounts::table().into_iter().rev().find(|m| m.mountpoint == mnt && m.source == source)?;
    Some(Path::new("/sys/class/bdi").join(m.device))
}

/// The machine-wide cap on a FUSE request, in pages (Linux 6.13+; before, a fixed 256).
const MAX_PAGES_LIMIT: &str = "/proc/sys/fs/fuse/max_pages_limit";

/// Lets this mount's requests carry `max_write` bytes: the kernel caps every FUSE connection
/// at `fs.fuse.max_pages_limit` pages, read when the connection is made, so this runs before
/// the mount. The setting is machine-wide, so the daemon only ever raises it and leaves it
/// raised: a raised cap changes nothing for a mount that asks for less (each daemon still
/// chooses its own request size at INIT), and lowering it again could shrink the requests of a
/// daemon that mounts at the same moment.
pub fn allow_requests_of(max_write: u32) {
    let want = u64::from(max_write).div_ceil(4096);
    let Some(limit) = std::fs::read_to_string(MAX_PAGES_LIMIT).ok().and_then(|v| v.trim().parse::<u64>().ok()) else {
        if want > 256 {
            log::info!("FUSE requests stay at 1 MiB: this kernel has no {MAX_PAGES_LIMIT}");
        }
        return;
    };
    if want <= limit {
        return;
    }
    match std::fs::write(MAX_PAGES_LIMIT, want.to_string()) {
        Ok(()) => log::info!("raised {MAX_PAGES_LIMIT} from {limit} to {want} pages for max_write={max_write}"),
        Err(e) => log::info!(
            "FUSE requests stay at {} KiB (max_write={max_write} asks for more): cannot raise {MAX_PAGES_LIMIT}: {e}",
            limit * 4
        ),
    }
}

/// The largest share of the machine's dirty threshold the mount may hold when the daemon is
/// not an I/O flusher: the rest always belongs to devices whose writeback does not need the
/// daemon, so a daemon throttled behind the global limit is released as they write back.
pub const SHARE_WITHOUT_FLUSHER: u64 = 50;

/// Sets the mount's dirty limit as `limit` says, kept strict. A daemon that is not an I/O
/// flusher gets at most [`SHARE_WITHOUT_FLUSHER`] percent. If the kernel refuses (a normal
/// user cannot write those files), the mount keeps the kernel's limit and the log says so once.
pub fn relax(bdi: &Path, limit: DirtyLimit, io_flusher: bool) {
    if limit == DirtyLimit::Kernel {
        log::info!("-o dirty_limit=kernel: the mount keeps the kernel's dirty limit{}", mib_of(bdi));
        return;
    }
    // Without the mark, at most half of the threshold: as a share, or in bytes from what
    // the kernel's share is now (max_bytes is max_ratio percent of the threshold).
    let capped = match limit {
        DirtyLimit::Ratio(n) if !io_flusher && u64::from(n) > SHARE_WITHOUT_FLUSHER => {
            Some(DirtyLimit::Ratio(SHARE_WITHOUT_FLUSHER as u8))
        }
        DirtyLimit::Bytes(n) if !io_flusher => match (read(bdi, "max_bytes"), read(bdi, "max_ratio")) {
            (Some(b), Some(r)) if r > 0 && n > b / r * SHARE_WITHOUT_FLUSHER => {
                Some(DirtyLimit::Bytes(b / r * SHARE_WITHOUT_FLUSHER))
            }
            _ => None,
        },
        _ => None,
    };
    if let Some(c) = capped {
        log::info!(
            "-o dirty_limit={limit} is more than {SHARE_WITHOUT_FLUSHER}% of the machine's dirty threshold and the \
             daemon is no I/O flusher (it lacks CAP_SYS_RESOURCE): the mount gets {c}"
        );
    }
    // Strict first, so the mount never holds more than the new limit says, even for a moment.
    let r = write(bdi, "strict_limit", 1).and_then(|()| match capped.unwrap_or(limit) {
        DirtyLimit::Ratio(n) => write(bdi, "max_ratio", u64::from(n)),
        DirtyLimit::Bytes(n) => write(bdi, "max_bytes", n),
        DirtyLimit::Kernel => Ok(()),
    });
    if let Err(e) = r {
        let why = if e.kind() == std::io::ErrorKind::PermissionDenied { " (only root may)" } else { "" };
        log::info!(
            "the mount keeps the kernel's dirty limit{}: cannot change {}{why}: {e}; stores through shared \
             mappings are throttled early",
            mib_of(bdi),
            bdi.display()
        );
        return;
    }
    log::info!(
        "dirty limit of the mount (bdi {}): {} MiB, strict (-o dirty_limit={limit}); I/O flusher: {}",
        bdi.display(),
        read(bdi, "max_bytes").unwrap_or(0) >> 20,
        if io_flusher { "yes" } else { "no" }
    );
}

/// Sets how far the kernel reads ahead in the mount's files (`None`: keeps the kernel's).
/// Call it once the mount has answered a request: the kernel sets the bdi's read-ahead from
/// the daemon's INIT reply, and fuser can only lower it there.
pub fn set_read_ahead(bdi: &Path, bytes: Option<u64>) {
    let Some(b) = bytes else { return };
    match write(bdi, "read_ahead_kb", b >> 10) {
        Ok(()) => log::info!("read-ahead of the mount: {} KiB", b >> 10),
        Err(e) => log::info!(
            "the mount keeps the kernel's read-ahead of {} KiB: cannot change {}: {e}",
            read(bdi, "read_ahead_kb").unwrap_or(0),
            bdi.display()
        ),
    }
}

fn mib_of(bdi: &Path) -> String {
    read(bdi, "max_bytes").map_or_else(String::new, |b| format!(" ({} MiB)", b >> 20))
}

/// The limits in effect, read from the bdi now (for `mmapfs stats`).
pub fn limits(bdi: &Path, configured: DirtyLimit, io_flusher: bool) -> KernelLimits {
    KernelLimits {
        bdi: bdi.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        io_flusher,
        dirty_limit: configured.to_string(),
        strict_limit: read(bdi, "strict_limit") == Some(1),
        max_ratio: read(bdi, "max_ratio"),
        max_bytes: read(bdi, "max_bytes"),
        read_ahead_kb: read(bdi, "read_ahead_kb"),
    }
}

fn read(bdi: &Path, file: &str) -> Option<u64> {
    std::fs::read_to_string(bdi.join(file)).ok()?.trim().parse().ok()
}

fn write(bdi: &Path, file: &str, v: u64) -> std::io::Result<()> {
    std::fs::write(bdi.join(file), v.to_string()).map_err(|e| std::io::Error::new(e.kind(), format!("{file}: {e}")))
}
