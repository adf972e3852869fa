//! `mmapfs`: command line, logging, signals, mount and unmount.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use mmapfs::config::{MountConfig, default_store, parse_size};
use mmapfs::fs::MmapFs;
use mmapfs::store::{self, FormatOptions, OpenOptions, Store};

#[derive(Parser)]
#[command(name = "mmapfs", version, about = "A FUSE filesystem whose file data lives in memory-mapped segment files")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount a store (created on first use) and serve it in the foreground until it is
    /// unmounted (umount MOUNTPOINT) or the process gets SIGINT/SIGTERM.
    Mount {
        /// The store directory [default: ~/.local/share/mmapfs/default]
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        /// Where to mount (created if missing)
        mountpoint: PathBuf,
        /// Mount options, comma separated: allow_other, default_permissions (on by default),
        /// no_default_permissions, ro, rw, nodev, nosuid, noexec, noatime, sync, dirsync,
        /// fsname=NAME, and mmapfs's own: writeback_cache, direct_io, max_write=SIZE
        #[arg(short = 'o', value_name = "OPTS")]
        options: Vec<String>,
        /// FUSE request threads [default: number of cores]
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        /// Segment size for a store created by this mount
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64M")]
        segment_size: u64,
        /// Capacity for a store created by this mount
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16G")]
        capacity: u64,
        /// Journal size that triggers a checkpoint (bounds mount time)
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "32M")]
        journal_limit: u64,
    },
    /// Create an empty store in DIR (which must not exist or be empty).
    Format {
        dir: PathBuf,
        /// Size of each segment file
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64M")]
        segment_size: u64,
        /// Most file data the store will hold
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16G")]
        capacity: u64,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Format { dir, segment_size, capacity } => {
            store::format(&dir, FormatOptions { segment_size, capacity }).map_err(|e| e.to_string())
        }
        Cmd::Mount { store, mountpoint, options, threads, segment_size, capacity, journal_limit } => {
            let mut cfg = MountConfig::new(store.unwrap_or_else(default_store), mountpoint);
            cfg.store_opts = OpenOptions { format: FormatOptions { segment_size, capacity }, journal_limit };
            if let Some(t) = threads {
                cfg.threads = t;
            }
            options
                .iter()
                .try_for_each(|o| cfg.apply_options(o))
                .and_then(|()| cfg.validate())
                .and_then(|()| mount(&cfg))
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mmapfs: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The signals that end a mount.
fn shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own; no other memory is touched.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Refuses mountpoints that would make the daemon touch its own filesystem.
fn check_paths(cfg: &MountConfig) -> Result<(PathBuf, PathBuf), String> {
    let mnt = &cfg.mountpoint;
    match std::fs::metadata(mnt) {
        Ok(m) if !m.is_dir() => return Err(format!("mountpoint {} is not a directory", mnt.display())),
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(format!("{} is a dead FUSE mount; run `umount {}` first", mnt.display(), mnt.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(mnt).map_err(|e| format!("cannot create mountpoint {}: {e}", mnt.display()))?
        }
        Err(e) => return Err(format!("mountpoint {}: {e}", mnt.display())),
    }
    let mnt = mnt.canonicalize().map_err(|e| format!("mountpoint {}: {e}", mnt.display()))?;
    let store = absolute(&cfg.store)?;
    if store.starts_with(&mnt) {
        return Err(format!(
            "the store {} lies inside the mountpoint {}; the daemon would deadlock on itself",
            store.display(),
            mnt.display()
        ));
    }
    Ok((store, mnt))
}

/// The canonical form of a path that may not exist yet.
fn absolute(p: &Path) -> Result<PathBuf, String> {
    let abs = std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut out = existing.canonicalize().map_err(|e| format!("{}: {e}", existing.display()))?;
    out.extend(rest.iter().rev());
    Ok(out)
}

fn mount(cfg: &MountConfig) -> Result<(), String> {
    let (store_dir, mnt) = check_paths(cfg)?;
    // Block the shutdown signals before any thread exists, so every thread inherits the mask
    // and only the waiter below receives them.
    let signals = shutdown_signals();
    // SAFETY: the set is initialised; the old mask is not needed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };

    let store = Arc::new(Store::open(&store_dir, cfg.store_opts).map_err(|e| format!("{}: {e}", store_dir.display()))?);
    let mut fc = fuser::Config::default();
    fc.mount_options = cfg.kernel.clone();
    fc.acl = if cfg.allow_other { fuser::SessionACL::All } else { fuser::SessionACL::Owner };
    fc.n_threads = Some(cfg.threads);
    fc.clone_fd = cfg.threads > 1;
    let notifier = Arc::new(std::sync::OnceLock::new());
    let fs = MmapFs::new(store.clone(), cfg.fs.clone(), notifier.clone());
    let mut session = match fuser::Session::new(fs, &mnt, &fc) {
        Ok(s) => s,
        Err(e) => {
            let _ = store.close();
            return Err(format!("cannot mount {}: {e}", mnt.display()));
        }
    };
    let _ = notifier.set(session.notifier());
    log::info!(
        "mounted store {} at {} ({} threads); stop with `umount {}` or SIGTERM",
        store_dir.display(),
        mnt.display(),
        cfg.threads,
        mnt.display()
    );
    let mut unmounter = session.unmount_callable();
    let mnt_for_signal = mnt.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `signals` is initialised and `sig` is a valid out-pointer.
            while unsafe { libc::sigwait(&signals, &mut sig) } == 0 {
                log::info!("signal {sig}: unmounting {}", mnt_for_signal.display());
                if let Err(e) = unmounter.unmount() {
                    log::warn!("umount failed ({e}); detaching: the mount ends when its last file is closed");
                    lazy_unmount(&mnt_for_signal);
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    let served = session.run();
    let closed = store.close();
    log::info!("unmounted {}", mnt.display());
    served.map_err(|e| format!("FUSE session failed: {e}"))?;
    closed.map_err(|e| format!("closing the store: {e}"))
}

fn lazy_unmount(mnt: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(mnt.as_os_str().as_bytes()) else { return };
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        log::error!("lazy umount of {} failed: {}", mnt.display(), std::io::Error::last_os_error());
    }
}
