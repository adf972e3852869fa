//! The store's own files, opened safely: private to the daemon's user (directories 0700, files
//! 0600, whatever the umask), never through a symlink, and only if they are what mmapfs made —
//! a regular file or a real directory owned by the daemon's user. A daemon running as root
//! must not truncate, map or write a file another user pointed a symlink at.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every file mmapfs creates in a store.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Mode of every directory mmapfs creates in a store.
pub(crate) const DIR_MODE: u32 = 0o700;

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Why a path in the store is not safe to use, with the fix, as one message.
fn unsafe_path(path: &Path, why: &str, fix: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("{}: {why}; {fix}", path.display()))
}

/// Checks what `md` (from `lstat` or `fstat`) says about `path`: a real directory or regular
/// file as `dir` asks, owned by the daemon's user, writable by no one else.
pub(crate) fn check_meta(path: &Path, md: &std::fs::Metadata, dir: bool) -> io::Result<()> {
    let ft = md.file_type();
    if ft.is_symlink() {
        return Err(unsafe_path(
            path,
            "is a symbolic link, and mmapfs follows no links inside a store",
            "remove it if you did not make it",
        ));
    }
    if dir && !ft.is_dir() {
        return Err(unsafe_path(path, "is not a directory", "move it away"));
    }
    if !dir && !ft.is_file() {
        return Err(unsafe_path(path, "is not a regular file", "move it away"));
    }
    if md.uid() != euid() {
        return Err(unsafe_path(
            path,
            &format!("is owned by uid {}, not by this daemon's uid {}", md.uid(), euid()),
            "chown it to the store's owner, or mount as that user",
        ));
    }
    if md.mode() & 0o022 != 0 {
        return Err(unsafe_path(
            path,
            &format!("can be written by other users (mode {:o})", md.mode() & 0o7777),
            &format!("run chmod go-w {} if its contents are yours", path.display()),
        ));
    }
    Ok(())
}

/// Opens a store file without following a symlink, then checks what was opened (so a swap
/// between a check and the open cannot fool it). `create` makes a new file with mode 0600.
pub(crate) fn open(path: &Path, opts: &mut OpenOptions) -> io::Result<File> {
    open_with(path, opts, 0)
}

/// [`open`] with more `open(2)` flags (e.g. `O_DIRECT`). `OpenOptions::custom_flags` replaces
/// the flags set before it, so they are all given here, in one call.
pub(crate) fn open_with(path: &Path, opts: &mut OpenOptions, flags: libc::c_int) -> io::Result<File> {
    let f = opts.mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | flags).open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            unsafe_path(path, "is a symbolic link, and mmapfs follows no links inside a store", "remove it")
        } else {
            e
        }
    })?;
    check_meta(path, &f.metadata()?, false)?;
    Ok(f)
}

/// Reads a whole store file (see [`open`]).
pub(crate) fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = open(path, OpenOptions::new().read(true))?;
    let mut v = Vec::new();
    io::Read::read_to_end(&mut f, &mut v)?;
    Ok(v)
}

/// Creates a new store file (mode 0600); fails if `path` exists.
pub(crate) fn create_new(path: &Path, opts: &mut OpenOptions) -> io::Result<File> {
    let f = open(path, opts.create_new(true))?;
    // Whatever the umask took away from 0600, the daemon needs read and write.
    f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Creates a store directory (mode 0700), and its parents as needed (those with the umask's
/// mode: they are the user's, not the store's).
pub(crate) fn create_dir(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        r => r?,
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(DIR_MODE))
}

/// Checks the store directory itself (not a link, the daemon's, not writable by others): what
/// must hold before the lock file is opened or made in it.
pub(crate) fn check_root(dir: &Path) -> io::Result<()> {
    check_meta(dir, &std::fs::symlink_metadata(dir)?, true)
}

/// Checks every entry mmapfs uses in the store `dir` before anything is opened or changed:
/// the directory itself, `segments/` and `meta/`, and the files in them (and the superblock
/// and lock). Returns the paths whose modes are looser than mmapfs makes them (readable by
/// others: tightened by the mount).
pub(crate) fn check_store(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut loose = Vec::new();
    let mut visit = |path: PathBuf, is_dir: bool| -> io::Result<()> {
        let md = std::fs::symlink_metadata(&path)?;
        check_meta(&path, &md, is_dir)?;
        let want = if is_dir { DIR_MODE } else { FILE_MODE };
        if md.mode() & 0o777 & !want != 0 {
            loose.push(path);
        }
        Ok(())
    };
    visit(dir.to_path_buf(), true)?;
    for name in ["superblock", "lock"] {
        let p = dir.join(name);
        if std::fs::symlink_metadata(&p).is_ok() {
            visit(p, false)?;
        }
    }
    for sub in ["segments", "meta"] {
        let d = dir.join(sub);
        if std::fs::symlink_metadata(&d).is_err() {
            continue;
        }
        visit(d.clone(), true)?;
        for ent in std::fs::read_dir(&d)? {
            visit(ent?.path(), false)?;
        }
    }
    Ok(loose)
}

/// Sets `paths` (from [`check_store`]) to 0700/0600.
pub(crate) fn tighten(paths: &[PathBuf]) -> io::Result<()> {
    for p in paths {
        let md = std::fs::symlink_metadata(p)?;
        let mode = if md.is_dir() { DIR_MODE } else { FILE_MODE };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
        log::info!(
            "{}: mode {:o} tightened to {mode:o} (store files are private to the daemon's user)",
            p.display(),
            md.mode() & 0o7777
        );
    }
    Ok(())
}
