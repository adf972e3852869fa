//! What the host says about mounts: its mount table (`/proc/self/mountinfo`, read and
//! unescaped in one place), lazy unmount, and the probe that tells whether a daemon holds a
//! store's lock. Used by the command line, the store's lock and the tests alike.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of the mount table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted (unescaped).
    pub mountpoint: PathBuf,
    /// The filesystem type, e.g. `fuse.mmapfs` or `ext4`.
    pub fstype: String,
    /// The source column (unescaped): `mmapfs:STORE` for an mmapfs mount.
    pub source: String,
    /// The filesystem's device, `MAJ:MIN`; for a FUSE mount also the name of its
    /// backing-device (bdi) directory in `/sys/class/bdi`.
    pub device: String,
}

/// The mount table of this process's namespace; empty if it cannot be read.
pub fn table() -> Vec<Mount> {
    std::fs::read("/proc/self/mountinfo").map(|t| parse(&t)).unwrap_or_default()
}

/// Parses `/proc/self/mountinfo`: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL…] - TYPE
/// SOURCE SUPEROPTS` (proc(5)); lines that do not have this shape are skipped.
fn parse(text: &[u8]) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let mut fields = line.split(|&b| b == b' ');
        let (Some(device), Some(mountpoint)) = (fields.nth(2), fields.nth(1)) else { continue };
        let mut rest = fields.skip_while(|f| *f != b"-").skip(1);
        let (Some(fstype), Some(source)) = (rest.next(), rest.next()) else { continue };
        out.push(Mount {
            mountpoint: PathBuf::from(OsString::from_vec(unescape(mountpoint))),
            fstype: String::from_utf8_lossy(&unescape(fstype)).into_owned(),
            source: String::from_utf8_lossy(&unescape(source)).into_owned(),
            device: String::from_utf8_lossy(device).into_owned(),
        });
    }
    out
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash) in a field of the mount table.
fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// True if `path` (compared as given: pass a canonical path) is a mountpoint here.
pub fn is_mounted(path: &Path) -> bool {
    table().iter().any(|m| m.mountpoint == path)
}

/// The store behind the mmapfs mount at `mnt` (from its `mmapfs:STORE` source), if any.
pub fn store_of(mnt: &Path) -> Option<PathBuf> {
    let want = mnt.canonicalize().ok()?;
    let m = table().into_iter().rev().find(|m| m.mountpoint == want)?;
    m.source.strip_prefix("mmapfs:").map(PathBuf::from)
}

/// True if a mount in this namespace serves the store `dir` (its source is `mmapfs:DIR`).
/// Errs on the side of "yes" when the table cannot be read.
pub fn serves_store(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let want = format!("mmapfs:{}", dir.display());
    match std::fs::read("/proc/self/mountinfo") {
        Ok(t) => parse(&t).iter().any(|m| m.source == want),
        Err(_) => true,
    }
}

/// Detaches the mount at `mnt` (`umount2(MNT_DETACH)`): it ends when its last file is closed.
/// A normal user, whom the kernel refuses, goes through `fusermount3 -uz`.
pub fn lazy_unmount(mnt: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(mnt, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let st = std::process::Command::new("fusermount3").arg("-uz").arg(mnt).status()?;
            if st.success() { Ok(()) } else { Err(std::io::Error::other(format!("fusermount3 -uz: {st}"))) }
        }
        Err(e) => Err(e.into()),
    }
}

/// True while a daemon holds the lock of the store `dir` (a pid alone may have been reused):
/// a shared lock on `dir/lock` is refused while the daemon's exclusive one is held.
pub fn lock_held(dir: &Path) -> bool {
    std::fs::File::open(dir.join("lock"))
        .is_ok_and(|f| nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockSharedNonblock).is_err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_split_and_unescaped() {
        let text = b"36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse.mmapfs mmapfs:/var/lib/my\\040store rw\n\
            37 35 98:1 / /x\\134y\\011z rw - ext4 /dev/loop0 rw,errors=continue\n\
            garbage\n";
        let t = parse(text);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].mountpoint, Path::new("/mnt/a b"));
        assert_eq!(t[0].fstype, "fuse.mmapfs");
        assert_eq!(t[0].source, "mmapfs:/var/lib/my store");
        assert_eq!(t[0].device, "98:0");
        assert_eq!(t[1].mountpoint, Path::new("/x\\y\tz"));
        assert_eq!(t[1].source, "/dev/loop0");
        assert_eq!(t[1].device, "98:1");
        // A backslash not followed by three octal digits is kept, also at the very end.
        assert_eq!(unescape(b"a\\9b\\04"), b"a\\9b\\04");
        assert_eq!(unescape(b"\\101"), b"A");
    }

    #[test]
    fn the_root_is_mounted_and_a_plain_directory_is_not() {
        assert!(is_mounted(Path::new("/")));
        let d = tempfile::tempdir().unwrap();
        assert!(!is_mounted(&d.path().canonicalize().unwrap()));
        assert_eq!(store_of(d.path()), None);
        assert!(!lock_held(d.path()), "no lock file: nobody holds it");
    }
}
