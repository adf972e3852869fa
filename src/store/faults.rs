//! Fault injection: the seam through which tests make the store's own I/O fail.
//!
//! Every place where the store writes or syncs its files (journal append and sync, msync of a
//! segment range, segment creation, checkpoint write) or reads its metadata files asks
//! [`check`] first. Nothing is armed
//! unless the daemon was started with `MMAPFS_FAULTS`, e.g. `MMAPFS_FAULTS=msync=3,journal-write=10`:
//! the 3rd msync and the 10th journal append fail once with `EIO`, exactly as a failing device
//! would make them fail (`write-panic=N` makes the N-th write request panic instead, as a bug
//! would). Unarmed, a check is one relaxed atomic load.
//!
//! A tiny module of our own rather than the `fail` crate: that crate's points are compiled in
//! only with a cargo feature (the tests drive the release-like binary `cargo test` builds) and
//! look up a global registry behind a lock on every evaluation, which the data path must not pay.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A place where the store's I/O can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Point {
    /// `write(2)` of a journal record.
    JournalWrite,
    /// `fdatasync` of the journal.
    JournalSync,
    /// `msync(MS_SYNC)` (or `fdatasync` with the pread backend) of a segment range.
    Msync,
    /// Creating and reserving a new segment file.
    SegmentCreate,
    /// Writing a checkpoint.
    CheckpointWrite,
    /// Reading a metadata file (the checkpoint or a journal file) at mount or in a merge.
    MetaRead,
    /// A data write request panics (a bug in the store, as the adapter meets it).
    WritePanic,
}

const POINTS: [(Point, &str); 7] = [
    (Point::JournalWrite, "journal-write"),
    (Point::JournalSync, "journal-sync"),
    (Point::Msync, "msync"),
    (Point::SegmentCreate, "segment-create"),
    (Point::CheckpointWrite, "checkpoint-write"),
    (Point::MetaRead, "meta-read"),
    (Point::WritePanic, "write-panic"),
];

struct Armed {
    /// Per point: the call number that fails (0: never), and calls so far.
    fail_at: [u64; POINTS.len()],
    calls: [AtomicU64; POINTS.len()],
}

static ARMED: AtomicBool = AtomicBool::new(false);
static FAULTS: OnceLock<Armed> = OnceLock::new();

/// Parses `spec` (`point=N,…`); an unknown point or count is an error naming it.
fn parse(spec: &str) -> Result<Armed, String> {
    let mut fail_at = [0u64; POINTS.len()];
    for item in spec.split(',').filter(|s| !s.is_empty()) {
        let (name, n) = item.split_once('=').ok_or_else(|| format!("`{item}` is not point=N"))?;
        let i = POINTS.iter().position(|(_, p)| *p == name).ok_or_else(|| {
            let known: Vec<&str> = POINTS.iter().map(|(_, p)| *p).collect();
            format!("unknown fault point `{name}` (known: {})", known.join(", "))
        })?;
        fail_at[i] = n.parse().map_err(|_| format!("`{n}` is not a call number"))?;
    }
    Ok(Armed { fail_at, calls: Default::default() })
}

/// Arms the faults named in the environment variable `MMAPFS_FAULTS`, if set. Called once at
/// daemon start; a malformed value is an error (a test that meant to inject a fault must not
/// pass silently without it).
pub fn arm_from_env() -> Result<(), String> {
    let Ok(spec) = std::env::var("MMAPFS_FAULTS") else { return Ok(()) };
    let armed = parse(&spec).map_err(|e| format!("MMAPFS_FAULTS: {e}"))?;
    log::warn!("MMAPFS_FAULTS={spec}: injecting I/O failures (a testing setting)");
    let _ = FAULTS.set(armed);
    ARMED.store(true, Ordering::Release);
    Ok(())
}

/// Fails with `EIO` if a fault is armed for this call of `point`.
pub(crate) fn check(point: Point) -> io::Result<()> {
    if !ARMED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let Some(a) = FAULTS.get() else { return Ok(()) };
    let i = POINTS.iter().position(|(p, _)| *p == point).expect("every point is listed");
    let n = a.calls[i].fetch_add(1, Ordering::Relaxed) + 1;
    if a.fail_at[i] == n {
        log::warn!("injected fault: {} call {n} fails with EIO", POINTS[i].1);
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parsing() {
        let a = parse("msync=3,journal-write=10").unwrap();
        assert_eq!(a.fail_at, [10, 0, 3, 0, 0, 0, 0]);
        let err = |s: &str| parse(s).err().expect("an error");
        assert!(err("msync").contains("point=N"));
        assert!(err("fsync=1").contains("unknown fault point `fsync`"));
        assert!(err("msync=x").contains("call number"));
        assert_eq!(parse("").unwrap().fail_at, [0; 7]);
    }
}
