//! The store lock: one daemon per store (`flock` on `STORE/lock`), and what the lock file
//! says of its holder (pid, and whether it is closing or closed the store cleanly).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use super::error::OpenError;
use super::files;

/// How long a mount waits for a daemon that holds the store but serves no mount any more
/// (it is writing its final checkpoint after `umount`) or not yet.
const HOLDER_WAIT: Duration = Duration::from_secs(30);

/// What the lock file says about its (last) holder: `PID`, `PID closing` once its mount is
/// over, `PID clean` once it has closed the store with everything durable, `PID failed` once
/// its store failed (an I/O error: it refuses every change until it is remounted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockState {
    Serving,
    Closing,
    Clean,
    Failed,
}

impl LockState {
    fn word(self) -> &'static str {
        match self {
            LockState::Serving => "",
            LockState::Closing => " closing",
            LockState::Clean => " clean",
            LockState::Failed => " failed",
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
        (_, Some("failed")) => LockState::Failed,
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
        // A failed holder may still serve its mount (reads go on): refused like a serving one.
        let closing = matches!(state, LockState::Closing | LockState::Clean);
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
