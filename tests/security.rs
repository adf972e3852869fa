//! The store and the mount let no one in where they don't belong: every store file is private
//! to the daemon's user whatever the umask (and a looser existing store is tightened); the
//! daemon follows no symlink inside the store and uses no file another user owns or can
//! write (refused with a message naming the path and the fix, nothing modified); a normal
//! user's `allow_other` needs /etc/fuse.conf's consent; directory listings never show a name
//! twice while entries are renamed. Runs as root, with uid 1000 as the other user.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{Mounted, run};

/// Tries to mount `store`; must fail with `want` in the message and leave the store as it was.
fn refused(store: &Path, want: &[&str]) {
    let before = common::tree(store);
    let mnt = store.with_extension("mnt");
    let (ok, err) = run(&[OsStr::new("mount"), OsStr::new("--store"), store.as_os_str(), mnt.as_os_str()]);
    assert!(!ok, "the mount was not refused");
    for w in want {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
    assert!(before == common::tree(store), "a refused store was modified");
    assert!(!common::is_mounted(&mnt));
}

/// A store with a file in it, unmounted.
fn store_with_data() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mut m = Mounted::at(store.clone(), tmp.path().join("mnt"), &["--segment-size", "1M"]).unwrap();
    fs::write(m.path("secret"), b"for my eyes only").unwrap();
    fs::set_permissions(m.path("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    m.stop();
    (tmp, store)
}

#[test]
fn store_files_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mnt = tmp.path().join("mnt");
    // The daemon started with umask 000.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("umask 000; exec {} mount --store {} {}", common::BIN, store.display(), mnt.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mnt = mmapfs::testing::wait_mounted(&mnt, &mut child, std::time::Duration::from_secs(20)).unwrap();
    fs::write(mnt.join("f"), vec![1u8; 100_000]).unwrap();
    // The daemon writes stats.json within a second of the mount: wait for it to be there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !store.join("stats.json").exists() {
        assert!(std::time::Instant::now() < deadline, "no stats.json within 20 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(common::wait_timeout(&mut child, std::time::Duration::from_secs(20)).unwrap().success());
    let all = common::tree(&store);
    let has = |ext: &str| all.keys().any(|k| k.extension().is_some_and(|e| e == ext));
    assert!(has("json") && has("seg"), "{:?}", all.keys());
    let root = fs::metadata(&store).unwrap().mode() & 0o777;
    assert_eq!(root, 0o700, "the store directory");
    for (path, e) in &all {
        let want = if e.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(e.mode & 0o777, want, "{}: mode {:o}", path.display(), e.mode & 0o777);
    }
    // uid 1000 cannot read a segment (where a 0600 file's bytes live) or the journal.
    let out = Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups", "cat"])
        .arg(store.join("segments/000000.seg"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "another user read a segment");
}

#[test]
fn a_looser_existing_store_is_tightened_at_mount() {
    let (tmp, store) = store_with_data();
    for (path, e) in common::tree(&store) {
        let mode = if e.is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(store.join(path), fs::Permissions::from_mode(mode)).unwrap();
    }
    fs::set_permissions(&store, fs::Permissions::from_mode(0o755)).unwrap();
    let (code, report) = common::fsck(&store);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("can be read by other users"), "fsck notes it: {report}");
    let mut m = Mounted::at(store.clone(), tmp.path().join("mnt"), &[]).unwrap();
    assert!(m.log().contains("tightened"), "{}", m.log());
    assert_eq!(fs::read(m.path("secret")).unwrap(), b"for my eyes only");
    m.stop();
    assert_eq!(fs::metadata(&store).unwrap().mode() & 0o777, 0o700);
    for (path, e) in common::tree(&store) {
        assert_eq!(e.mode & 0o077, 0, "{}: mode {:o}", path.display(), e.mode & 0o777);
    }
}

#[test]
fn a_symlinked_lock_file_is_refused_and_its_target_untouched() {
    let (tmp, store) = store_with_data();
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"root's precious file").unwrap();
    fs::remove_file(store.join("lock")).unwrap();
    std::os::unix::fs::symlink(&victim, store.join("lock")).unwrap();
    refused(&store, &["lock", "symbolic link", "remove it"]);
    assert_eq!(fs::read(&victim).unwrap(), b"root's precious file");
}

#[test]
fn a_symlinked_segment_is_refused_and_never_mapped() {
    let (tmp, store) = store_with_data();
    let victim = tmp.path().join("victim.img");
    fs::write(&victim, vec![0x42u8; 1 << 20]).unwrap();
    let seg = store.join("segments/000000.seg");
    fs::remove_file(&seg).unwrap();
    std::os::unix::fs::symlink(&victim, &seg).unwrap();
    refused(&store, &["000000.seg", "symbolic link"]);
    assert!(fs::read(&victim).unwrap().iter().all(|&b| b == 0x42));
}

#[test]
fn a_foreign_owned_store_file_is_refused() {
    let (_tmp, store) = store_with_data();
    let journal = fs::read_dir(store.join("meta"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("journal-"))
        .unwrap();
    std::os::unix::fs::chown(&journal, Some(1000), Some(1000)).unwrap();
    refused(&store, &["journal-", "owned by uid 1000", "chown"]);
}

#[test]
fn a_store_others_can_write_is_refused() {
    let (_tmp, store) = store_with_data();
    fs::set_permissions(&store, fs::Permissions::from_mode(0o777)).unwrap();
    refused(&store, &["can be written by other users (mode 777)", "chmod go-w"]);
    fs::set_permissions(&store, fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(store.join("meta"), fs::Permissions::from_mode(0o770)).unwrap();
    refused(&store, &["meta: can be written by other users"]);
}

#[test]
fn allow_other_as_a_normal_user_needs_fuse_conf() {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups", "--", common::BIN, "mount", "--store"])
        .arg(tmp.path().join("store"))
        .arg(tmp.path().join("mnt"))
        .args(["-o", "allow_other"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let conf = fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    if conf.lines().any(|l| l.trim() == "user_allow_other") {
        // This machine consents: the refusal must not be about fuse.conf.
        assert!(!err.contains("/etc/fuse.conf"), "{err}");
    } else {
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("user_allow_other") && err.contains("/etc/fuse.conf"), "{err}");
    }
    assert!(!tmp.path().join("store").exists(), "nothing created");
}

#[test]
fn no_default_permissions_with_allow_other_warns() {
    let m = Mounted::new(&["-o", "allow_other,no_default_permissions"]);
    assert!(m.log().contains("no longer checks mode bits"), "{}", m.log());
}

/// Lists `dir` with getdents64 through a small buffer, so the listing is continued from an
/// offset many times (as `find`, `rm -r` and `ls` do on large directories).
fn list_in_pieces(dir: &Path) -> Vec<String> {
    let c = common::cstr(dir);
    // SAFETY: a valid C string; the descriptor is closed below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    assert!(fd >= 0, "open {}: {}", dir.display(), std::io::Error::last_os_error());
    let mut names = Vec::new();
    let mut buf = vec![0u8; 512];
    loop {
        // SAFETY: getdents64 into a buffer of the given length on our descriptor.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        assert!(n >= 0, "getdents64: {}", std::io::Error::last_os_error());
        if n == 0 {
            break;
        }
        let mut at = 0;
        while at < n as usize {
            // struct linux_dirent64: ino u64, off i64, reclen u16, type u8, name…
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            let name = &buf[at + 19..at + reclen];
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            names.push(String::from_utf8_lossy(&name[..end]).into_owned());
            at += reclen;
        }
    }
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    names
}

/// Runs a rename storm (plus creates and removes) against concurrent listings of `dir`;
/// returns (listings, listings with a name twice, listings missing an entry that stayed).
fn rename_storm(dir: &Path) -> (u32, u32, u32) {
    use std::sync::atomic::{AtomicBool, Ordering};
    for i in 0..300 {
        fs::write(dir.join(format!("stays-{i:03}")), b"").unwrap();
    }
    for i in 0..20 {
        fs::write(dir.join(format!("a{i}")), b"").unwrap();
    }
    let stop = AtomicBool::new(false);
    let (mut listings, mut twice, mut missing) = (0, 0, 0);
    std::thread::scope(|s| {
        for t in 0..2 {
            let stop = &stop;
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let i = (n * 2 + t) % 20;
                    let (a, b) = (dir.join(format!("a{i}")), dir.join(format!("b{i}")));
                    let _ = fs::rename(&a, &b);
                    let _ = fs::rename(&b, &a);
                    let c = dir.join(format!("new-{t}-{}", n % 7));
                    let _ = fs::write(&c, b"");
                    let _ = fs::remove_file(&c);
                    n += 1;
                }
            });
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            let names = list_in_pieces(dir);
            listings += 1;
            let mut seen = std::collections::HashSet::new();
            if !names.iter().all(|n| seen.insert(n.clone())) {
                twice += 1;
            }
            if (0..300).any(|i| !seen.contains(&format!("stays-{i:03}"))) {
                missing += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    (listings, twice, missing)
}

/// A directory stream returns no name twice and skips no entry that existed throughout while
/// entries are renamed, created and removed — side by side with tmpfs.
#[test]
fn listings_under_a_rename_storm_show_no_name_twice() {
    let m = Mounted::new(&[]);
    let d = m.path("storm");
    fs::create_dir(&d).unwrap();
    let (n, twice, missing) = rename_storm(&d);
    let tmp = tempfile::tempdir().unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(tmp.path()).status().unwrap();
    assert!(st.success());
    let (tn, ttwice, tmissing) = rename_storm(tmp.path());
    common::lazy_umount(tmp.path());
    eprintln!(
        "mmapfs: {n} listings, {twice} with a name twice, {missing} missing one; tmpfs: {tn}, {ttwice}, {tmissing}"
    );
    assert!(n > 20, "only {n} listings");
    assert_eq!((twice, missing), (0, 0), "mmapfs: {n} listings");
}
