//! What a mount checks before it opens the store: the paths, and what a normal user may do.

use std::path::{Path, PathBuf};

use crate::config::MountConfig;

/// Refuses what cannot work before anything is opened: a normal user without fusermount3, or
/// with `allow_other` that /etc/fuse.conf does not allow; a mountpoint that is no directory or
/// a dead mount, or that holds the store. Returns the canonical store and mountpoint, and
/// whether the daemon runs as root.
pub fn preflight(cfg: &MountConfig) -> Result<(PathBuf, PathBuf, bool), String> {
    let root = nix::unistd::geteuid().is_root();
    let in_path =
        |b: &str| std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(b).exists()));
    if !root && !in_path("fusermount3") && !in_path("fusermount") {
        return Err("mounting as a normal user needs fusermount3 (Debian: apt-get install fuse3)".into());
    }
    if !root && cfg.allow_other && !fuse_conf_allows_other() {
        return Err("-o allow_other as a normal user needs the line `user_allow_other` in /etc/fuse.conf \
             (as root: echo user_allow_other >> /etc/fuse.conf); it lets every local user into the mount"
            .into());
    }
    if cfg.allow_other && !cfg.kernel.contains(&fuser::MountOption::DefaultPermissions) {
        log::warn!(
            "-o allow_other with no_default_permissions: the kernel no longer checks mode bits, so every \
             local user can read and change every file on this mount"
        );
    }
    let (store, mnt) = check_paths(cfg)?;
    Ok((store, mnt, root))
}

/// True if /etc/fuse.conf has a `user_allow_other` line (what fusermount3 requires before it
/// passes allow_other on for a normal user).
fn fuse_conf_allows_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf")
        .is_ok_and(|c| c.lines().any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other"))
}

/// The canonical store and mountpoint (created if missing); refuses mountpoints that would
/// make the daemon touch its own filesystem.
fn check_paths(cfg: &MountConfig) -> Result<(PathBuf, PathBuf), String> {
    let mnt = &cfg.mountpoint;
    match std::fs::metadata(mnt) {
        Ok(m) if !m.is_dir() => return Err(format!("mountpoint {} is not a directory", mnt.display())),
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(format!("{} is a dead FUSE mount; run `umount {}` first", mnt.display(), mnt.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !cfg.create_mountpoint => {
            return Err(format!("mount point {} does not exist", mnt.display()));
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
