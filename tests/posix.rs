//! POSIX behaviour checked against tmpfs: each scenario runs the same calls on a fresh mmapfs
//! mount and on a tmpfs mount and compares the transcripts (results and errnos), then checks
//! the facts that matter on mmapfs alone. Covers hard links, symlinks, special files, rename
//! flags, extended attributes, fallocate and SEEK_DATA/SEEK_HOLE, copy_file_range, set-group-ID
//! directories, limits, and permission rules exercised as an unprivileged user.

mod common;

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Mounted;

/// A tmpfs mounted for the duration of a test.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new() -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(dir.path()).status().unwrap();
        assert!(st.success(), "mounting tmpfs (the tests run as root)");
        Tmpfs { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        common::lazy_umount(self.dir.path());
    }
}

/// Runs `scenario` on tmpfs and on mmapfs (mounted with `args`) and asserts equal transcripts.
fn same_as_tmpfs(args: &[&str], scenario: impl Fn(&Path, &mut Vec<String>)) -> Mounted {
    let t = Tmpfs::new();
    let m = Mounted::new(args);
    open_up(&m.mnt);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    scenario(t.path(), &mut a);
    scenario(&m.mnt, &mut b);
    if std::env::var_os("MMAPFS_SHOW").is_some() {
        eprintln!("transcript: {b:#?}");
    }
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "step {i} differs (left tmpfs, right mmapfs)\ntmpfs:  {a:?}\nmmapfs: {b:?}");
    }
    assert_eq!(a.len(), b.len());
    m
}

/// Lets an unprivileged user reach the mount: every directory above it must be searchable.
fn open_up(mnt: &Path) {
    let mut p = mnt.to_path_buf();
    while p.pop() {
        if p == Path::new("/") || p == Path::new("/tmp") {
            break;
        }
        let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o755));
    }
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// "ok" or the errno name of the last libc call's failure.
fn rc(r: i64) -> String {
    if r >= 0 { "ok".into() } else { errname(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) }
}

fn errname(e: i32) -> String {
    let names = [
        (libc::ENOENT, "ENOENT"),
        (libc::EEXIST, "EEXIST"),
        (libc::EPERM, "EPERM"),
        (libc::EACCES, "EACCES"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::EISDIR, "EISDIR"),
        (libc::ENOTEMPTY, "ENOTEMPTY"),
        (libc::ENAMETOOLONG, "ENAMETOOLONG"),
        (libc::ENODATA, "ENODATA"),
        (libc::ERANGE, "ERANGE"),
        (libc::E2BIG, "E2BIG"),
        (libc::ENXIO, "ENXIO"),
        (libc::EBADF, "EBADF"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::EXDEV, "EXDEV"),
        (libc::EFBIG, "EFBIG"),
        (libc::EMLINK, "EMLINK"),
    ];
    names.iter().find(|(n, _)| *n == e).map_or(format!("errno {e}"), |(_, s)| s.to_string())
}

fn stat(p: &Path) -> Option<libc::stat> {
    // SAFETY: zeroed stat is a valid out-buffer; the path is a valid C string.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a plain libc call on valid C strings and buffers that outlive it.
    (unsafe { libc::lstat(c(p).as_ptr(), &mut st) } == 0).then_some(st)
}

fn touch(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap();
}

#[test]
fn hard_links() {
    same_as_tmpfs(&[], |root, t| {
        let (f, g, d) = (root.join("f"), root.join("g"), root.join("d"));
        touch(&f, b"data");
        let before = stat(&f).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(25));
        // SAFETY: valid C strings throughout this test.
        t.push(format!("link: {}", rc(unsafe { libc::link(c(&f).as_ptr(), c(&g).as_ptr()) } as i64)));
        let (sf, sg) = (stat(&f).unwrap(), stat(&g).unwrap());
        t.push(format!("nlink {} {} same ino {}", sf.st_nlink, sg.st_nlink, sf.st_ino == sg.st_ino));
        t.push(format!("ctime moved {}", (sf.st_ctime, sf.st_ctime_nsec) > (before.st_ctime, before.st_ctime_nsec)));
        // SAFETY: a plain libc call on valid C strings and buffers that outlive it.
        t.push(format!("link onto existing: {}", rc(unsafe { libc::link(c(&f).as_ptr(), c(&g).as_ptr()) } as i64)));
        fs::create_dir(&d).unwrap();
        t.push(format!(
            "link a directory: {}",
            // SAFETY: a plain libc call on valid C strings and buffers that outlive it.
            rc(unsafe { libc::link(c(&d).as_ptr(), c(&root.join("d2")).as_ptr()) } as i64)
        ));
        t.push(format!(
            "link missing: {}",
            // SAFETY: a plain libc call on valid C strings and buffers that outlive it.
            rc(unsafe { libc::link(c(&root.join("nope")).as_ptr(), c(&root.join("x")).as_ptr()) } as i64)
        ));
        fs::remove_file(&f).unwrap();
        t.push(format!("other name reads {:?} nlink {}", fs::read(&g).unwrap(), stat(&g).unwrap().st_nlink));
        // Rename of one link onto the other is a no-op that keeps both.
        // SAFETY: a plain libc call on valid C strings and buffers that outlive it.
        unsafe { libc::link(c(&g).as_ptr(), c(&f).as_ptr()) };
        fs::rename(&f, &g).unwrap();
        t.push(format!("after rename onto own link: f {} g {}", stat(&f).is_some(), stat(&g).is_some()));
    });
}

#[test]
fn symlinks_and_special_files() {
    same_as_tmpfs(&[], |root, t| {
        let target = "a/".repeat(2047) + "b"; // 4095 bytes: PATH_MAX minus the NUL
        let (s, l) = (root.join("s"), root.join("long"));
        // SAFETY: valid C strings throughout this test.
        t.push(format!("symlink: {}", rc(unsafe { libc::symlink(c(Path::new("f")).as_ptr(), c(&s).as_ptr()) } as i64)));
        t.push(format!("dangling stat: {:?}", fs::metadata(&s).err().and_then(|e| e.raw_os_error()).map(errname)));
        touch(&root.join("f"), b"12345");
        t.push(format!(
            "stat follows: {} lstat: {}",
            fs::metadata(&s).unwrap().len(),
            fs::symlink_metadata(&s).unwrap().len()
        ));
        t.push(format!("readlink {:?}", fs::read_link(&s).unwrap()));
        let long = CString::new(target.clone()).unwrap();
        // SAFETY: a plain libc call on valid C strings and buffers that outlive it.
        t.push(format!("long symlink: {}", rc(unsafe { libc::symlink(long.as_ptr(), c(&l).as_ptr()) } as i64)));
        t.push(format!("long readlink len {}", fs::read_link(&l).map(|p| p.as_os_str().len()).unwrap_or(0)));
        let too_long = CString::new(target + "xx").unwrap();
        t.push(format!(
            "too long: {}",
            // SAFETY: a plain libc call on valid C strings and buffers that outlive it.
            rc(unsafe { libc::symlink(too_long.as_ptr(), c(&root.join("l2")).as_ptr()) } as i64)
        ));
        t.push(format!(
            "symlink onto existing: {}",
            // SAFETY: a plain libc call on valid C strings and buffers that outlive it.
            rc(unsafe { libc::symlink(long.as_ptr(), c(&s).as_ptr()) } as i64)
        ));
        for (name, mode, dev) in [
            ("fifo", libc::S_IFIFO | 0o644, 0),
            ("sock", libc::S_IFSOCK | 0o600, 0),
            ("chr", libc::S_IFCHR | 0o600, libc::makedev(1, 3)),
            ("blk", libc::S_IFBLK | 0o600, libc::makedev(7, 0)),
        ] {
            let p = root.join(name);
            // SAFETY: a plain libc call on valid C strings and buffers that outlive it.
            let r = rc(unsafe { libc::mknod(c(&p).as_ptr(), mode, dev) } as i64);
            let st = stat(&p).unwrap();
            t.push(format!("mknod {name}: {r} mode {:o} rdev {:x}", st.st_mode, st.st_rdev));
        }
    });
}

#[test]
fn rename_flags_and_errors() {
    same_as_tmpfs(&[], |root, t| {
        let p = |n: &str| root.join(n);
        touch(&p("a"), b"A");
        touch(&p("b"), b"B");
        fs::create_dir_all(p("d/sub")).unwrap();
        fs::create_dir(p("e")).unwrap();
        touch(&p("d/sub/x"), b"");
        let r2 = |a: &str, b: &str, flags: u32| {
            // SAFETY: valid C strings.
            rc(unsafe { libc::renameat2(libc::AT_FDCWD, c(&p(a)).as_ptr(), libc::AT_FDCWD, c(&p(b)).as_ptr(), flags) }
                as i64)
        };
        t.push(format!(
            "exchange files: {} a={:?} b={:?}",
            r2("a", "b", libc::RENAME_EXCHANGE),
            fs::read(p("a")).unwrap(),
            fs::read(p("b")).unwrap()
        ));
        t.push(format!("exchange file and dir: {}", r2("a", "e", libc::RENAME_EXCHANGE)));
        t.push(format!("a is dir {} e is file {}", p("a").is_dir(), p("e").is_file()));
        t.push(format!(
            "e/.. is root: {}",
            fs::metadata(p("a/..")).unwrap().ino() == fs::metadata(root).unwrap().ino()
        ));
        t.push(format!("exchange with missing: {}", r2("b", "zz", libc::RENAME_EXCHANGE)));
        t.push(format!("noreplace existing: {}", r2("b", "e", libc::RENAME_NOREPLACE)));
        t.push(format!("noreplace new: {}", r2("b", "c", libc::RENAME_NOREPLACE)));
        t.push(format!("into own subtree: {}", r2("d", "d/sub/y", 0)));
        t.push(format!("exchange into own subtree: {}", r2("d", "d/sub", libc::RENAME_EXCHANGE)));
        t.push(format!("over non-empty dir: {}", r2("a", "d", 0)));
        t.push(format!("dir over file: {}", r2("a", "c", 0)));
        t.push(format!("file over dir: {}", r2("c", "a", 0)));
        t.push(format!("nlink root {} d {}", stat(root).unwrap().st_nlink, stat(&p("d")).unwrap().st_nlink));
    });
}

#[test]
fn extended_attributes() {
    same_as_tmpfs(&[], |root, t| {
        let f = root.join("f");
        touch(&f, b"");
        let cf = c(&f);
        let set = |name: &str, v: &[u8], flags: i32| {
            let n = CString::new(name).unwrap();
            // SAFETY: valid C strings and a valid value buffer.
            rc(unsafe { libc::setxattr(cf.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), flags) } as i64)
        };
        let get = |name: &str, cap: usize| {
            let n = CString::new(name).unwrap();
            let mut buf = vec![0u8; cap];
            // SAFETY: the buffer holds `cap` bytes.
            let r = unsafe { libc::getxattr(cf.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), cap) };
            if r < 0 { rc(-1) } else { format!("{} bytes {:?}", r, &buf[..(r as usize).min(cap)]) }
        };
        t.push(format!("set: {}", set("user.a", b"hello", 0)));
        t.push(format!("get: {}", get("user.a", 64)));
        t.push(format!("size query: {}", get("user.a", 0)));
        t.push(format!("short buffer: {}", get("user.a", 2)));
        t.push(format!("missing: {}", get("user.zz", 64)));
        t.push(format!("create existing: {}", set("user.a", b"x", libc::XATTR_CREATE)));
        t.push(format!("replace missing: {}", set("user.b", b"x", libc::XATTR_REPLACE)));
        t.push(format!("replace: {} → {}", set("user.a", b"world", libc::XATTR_REPLACE), get("user.a", 64)));
        t.push(format!("empty value: {} → {}", set("user.e", b"", 0), get("user.e", 8)));
        t.push(format!("trusted: {} security: {}", set("trusted.t", b"1", 0), set("security.s", b"2", 0)));
        t.push(format!("long name: {}", set(&format!("user.{}", "n".repeat(251)), b"1", 0)));
        t.push(format!("value too big: {}", set("user.big", &vec![1u8; 65_537], 0)));
        t.push(format!("bad namespace: {}", set("bogus.x", b"1", 0)));
        let mut list = vec![0u8; 256];
        // SAFETY: the buffer holds 256 bytes.
        let n = unsafe { libc::listxattr(cf.as_ptr(), list.as_mut_ptr().cast(), 256) };
        let mut names: Vec<&[u8]> = list[..n.max(0) as usize].split(|&b| b == 0).filter(|s| !s.is_empty()).collect();
        names.sort();
        t.push(format!("list: {:?}", names.iter().map(|s| String::from_utf8_lossy(s)).collect::<Vec<_>>()));
        // SAFETY: the buffer holds 1 byte.
        t.push(format!(
            "list short: {}",
            // SAFETY: a plain libc call on valid C strings and buffers that outlive it.
            rc(unsafe { libc::listxattr(cf.as_ptr(), list.as_mut_ptr().cast(), 1) } as i64)
        ));
        let n = CString::new("user.a").unwrap();
        // SAFETY: valid C strings.
        t.push(format!(
            "remove: {} again: {}",
            // SAFETY: a plain libc call on valid C strings and buffers that outlive it.
            rc(unsafe { libc::removexattr(cf.as_ptr(), n.as_ptr()) } as i64),
            // SAFETY: a plain libc call on valid C strings and buffers that outlive it.
            rc(unsafe { libc::removexattr(cf.as_ptr(), n.as_ptr()) } as i64)
        ));
    });
}

fn file_ops(root: &Path, t: &mut Vec<String>) {
    use std::os::unix::io::AsRawFd;
    let f = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(root.join("f")).unwrap();
    let fd = f.as_raw_fd();
    let blocks = |f: &fs::File| f.metadata().unwrap().blocks();
    let size = |f: &fs::File| f.metadata().unwrap().len();
    // SAFETY: plain syscalls on an fd we own, with valid buffers.
    unsafe {
        t.push(format!(
            "fallocate 0: {} size {} blocks {}",
            rc(libc::fallocate(fd, 0, 0, 1 << 20) as i64),
            size(&f),
            blocks(&f)
        ));
        t.push(format!(
            "keep size: {} size {} blocks {}",
            rc(libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20) as i64),
            size(&f),
            blocks(&f)
        ));
        let data = vec![0xabu8; 3 << 20];
        libc::pwrite(fd, data.as_ptr().cast(), data.len(), 0);
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        t.push(format!(
            "punch: {} size {} blocks {}",
            rc(libc::fallocate(fd, punch, 1000, 1 << 20) as i64),
            size(&f),
            blocks(&f)
        ));
        let mut buf = vec![0u8; 3 << 20];
        libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
        let zeros = buf.iter().filter(|&&b| b == 0).count();
        t.push(format!(
            "punched zeros {zeros} first {} last {}",
            buf.iter().position(|&b| b == 0).unwrap(),
            buf.iter().rposition(|&b| b == 0).unwrap()
        ));
        t.push(format!("punch without keep: {}", rc(libc::fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE, 0, 4096) as i64)));
        t.push(format!("collapse: {}", rc(libc::fallocate(fd, libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096) as i64)));
        t.push(format!("zero length: {}", rc(libc::fallocate(fd, 0, 0, 0) as i64)));
        // SEEK_DATA / SEEK_HOLE over: data 0..4096, hole (punched) 4096..1 MiB, data after.
        for (off, whence, name) in [
            (0, libc::SEEK_DATA, "data@0"),
            (0, libc::SEEK_HOLE, "hole@0"),
            (5000, libc::SEEK_DATA, "data@5000"),
            ((2 << 20) + 1, libc::SEEK_HOLE, "hole@2M+1"),
            (1 << 30, libc::SEEK_DATA, "data past EOF"),
            (-1, libc::SEEK_DATA, "data@-1"),
        ] {
            let r = libc::lseek(fd, off, whence);
            t.push(format!("{name}: {}", if r < 0 { rc(-1) } else { r.to_string() }));
        }
        // copy_file_range into a second file.
        let g = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(root.join("g")).unwrap();
        let (mut oi, mut oo): (i64, i64) = (100, 7);
        let n = libc::copy_file_range(fd, &mut oi, g.as_raw_fd(), &mut oo, 2 << 20, 0);
        let mut a = vec![0u8; 2 << 20];
        let mut b = vec![0u8; 2 << 20];
        libc::pread(fd, a.as_mut_ptr().cast(), a.len(), 100);
        libc::pread(g.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), 7);
        t.push(format!("copy_file_range {n} equal {} size {} offsets {oi} {oo}", a == b, size(&g)));
        // Limits.
        t.push(format!("pwrite at -1: {}", rc(libc::pwrite(fd, buf.as_ptr().cast(), 1, -1) as i64)));
        t.push(format!("truncate -1: {}", rc(libc::ftruncate(fd, -1) as i64)));
    }
}

#[test]
fn fallocate_seek_and_copy() {
    let m = same_as_tmpfs(&[], file_ops);
    // Punched blocks went back to the store.
    let md = fs::metadata(m.path("f")).unwrap();
    assert!(md.blocks() < 3 * 2048, "punched blocks are freed: {} sectors", md.blocks());
}

/// ZERO_RANGE, which tmpfs lacks, behaves as on ext4: the range reads zeros, the size grows
/// past it unless KEEP_SIZE, and the blocks are allocated.
#[test]
fn zero_range_as_on_ext4() {
    use std::os::unix::io::AsRawFd;
    let m = Mounted::new(&[]);
    let f = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.path("z")).unwrap();
    fs::write(m.path("z"), vec![0xabu8; 10_000]).unwrap();
    let fd = f.as_raw_fd();
    // SAFETY: plain syscalls on an fd we own.
    unsafe {
        assert_eq!(libc::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, 9_990, 20), 0);
        assert_eq!(libc::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE, 100, 50_000), 0);
    }
    let data = fs::read(m.path("z")).unwrap();
    assert_eq!(data.len(), 10_010);
    assert!(data[..100].iter().all(|&b| b == 0xab));
    assert!(data[100..].iter().all(|&b| b == 0));
    assert_eq!(f.metadata().unwrap().blocks(), 13 * 8, "zeroed range allocated up to 50,100 bytes");
}

#[test]
fn limits_and_open_flags() {
    same_as_tmpfs(&[], |root, t| {
        let f = root.join("f");
        touch(&f, b"x");
        let long = root.join("n".repeat(256));
        // SAFETY: valid C strings.
        unsafe {
            t.push(format!(
                "long name: {}",
                rc(libc::open(c(&long).as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644) as i64)
            ));
            t.push(format!(
                "O_DIRECTORY on a file: {}",
                rc(libc::open(c(&f).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) as i64)
            ));
            t.push(format!("write-open a directory: {}", rc(libc::open(c(root).as_ptr(), libc::O_WRONLY) as i64)));
            t.push(format!("mkdir over a file: {}", rc(libc::mkdir(c(&f).as_ptr(), 0o755) as i64)));
            t.push(format!("rmdir a file: {}", rc(libc::rmdir(c(&f).as_ptr()) as i64)));
            t.push(format!("unlink a dir: {}", rc(libc::unlink(c(root).as_ptr()) as i64)));
            t.push(format!("path through a file: {}", rc(libc::open(c(&f.join("x")).as_ptr(), libc::O_RDONLY) as i64)));
            t.push(format!(
                "excl on existing: {}",
                rc(libc::open(c(&f).as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o644) as i64)
            ));
        }
    });
}

#[test]
fn setgid_directories_pass_their_group() {
    same_as_tmpfs(&[], |root, t| {
        let d = root.join("sg");
        fs::create_dir(&d).unwrap();
        std::os::unix::fs::chown(&d, None, Some(4321)).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o2775)).unwrap();
        touch(&d.join("f"), b"");
        fs::create_dir(d.join("sub")).unwrap();
        let (f, sub) = (fs::metadata(d.join("f")).unwrap(), fs::metadata(d.join("sub")).unwrap());
        t.push(format!("file gid {} mode {:o}", f.gid(), f.mode() & 0o7777));
        t.push(format!("subdir gid {} mode {:o}", sub.gid(), sub.mode() & 0o7777));
    });
}

/// Runs `script` with sh as uid/gid 1000 (no supplementary groups) in `dir`, returning
/// stdout + exit status lines.
fn as_user(dir: &Path, script: &str) -> String {
    let out = Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups", "sh", "-c", script])
        .current_dir(dir)
        .output()
        .expect("setpriv");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn permissions_as_an_unprivileged_user() {
    same_as_tmpfs(&["-o", "allow_other"], |root, t| {
        fs::set_permissions(root, fs::Permissions::from_mode(0o777)).unwrap();
        // Root-owned read-only file and a private directory.
        touch(&root.join("ro"), b"secret");
        fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::create_dir(root.join("private")).unwrap();
        fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
        // A sticky, world-writable directory with a file of root's in it.
        fs::create_dir(root.join("sticky")).unwrap();
        fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
        touch(&root.join("sticky/roots"), b"");
        fs::set_permissions(root.join("sticky/roots"), fs::Permissions::from_mode(0o666)).unwrap();
        // A set-user-ID file the user may write.
        touch(&root.join("suid"), b"#!/bin/sh\n");
        fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4777)).unwrap();
        touch(&root.join("sgid"), b"abc");
        fs::set_permissions(root.join("sgid"), fs::Permissions::from_mode(0o6777)).unwrap();
        touch(&root.join("mine"), b"abc");
        std::os::unix::fs::chown(root.join("mine"), Some(1000), Some(1000)).unwrap();
        // One writable set-ID file per content-changing operation.
        for name in ["fa-grow", "fa-keep", "fa-punch", "cfr-dest", "pwritev2", "otrunc", "mapped"] {
            touch(&root.join(name), &[7u8; 8192]);
            fs::set_permissions(root.join(name), fs::Permissions::from_mode(0o6777)).unwrap();
        }
        let out = as_user(
            root,
            r#"
            r() { "$@" 2>/dev/null; echo "$? $*"; }
            r cat ro
            r ls private
            r touch private/x
            r rm -f sticky/roots
            r mv sticky/roots sticky/mine
            r touch sticky/mine
            r rm sticky/mine
            r chmod 600 ro
            r chown 1000 ro
            umask 027; r touch mask; stat -c '%a %u %g' mask
            r chgrp 1000 mask
            r chgrp 0 mask
            r touch -d @12345 ro
            r touch ro
            r touch -d @12345 mask; stat -c '%X %Y' mask
            printf x >> suid; echo "write $?"; stat -c '%a' suid
            r truncate -s 1 sgid; stat -c '%a' sgid
            r chmod 4755 mine; r truncate -s 0 mine; stat -c '%a' mine
            r mkdir d; r chmod 2755 d; stat -c '%a' d
            r fallocate -l 16384 fa-grow; stat -c '%a' fa-grow
            r fallocate -n -o 8192 -l 8192 fa-keep; stat -c '%a' fa-keep
            r fallocate -p -o 0 -l 4096 fa-punch; stat -c '%a' fa-punch
            r python3 -c "import os; a = os.open('mine', os.O_RDONLY); b = os.open('cfr-dest', os.O_WRONLY); print(os.copy_file_range(a, b, 3))"; stat -c '%a' cfr-dest
            r python3 -c "import os; b = os.open('pwritev2', os.O_WRONLY); print(os.pwritev(b, [b'xy'], 0, os.RWF_DSYNC))"; stat -c '%a' pwritev2
            r python3 -c "import os; os.close(os.open('otrunc', os.O_WRONLY | os.O_TRUNC))"; stat -c '%a' otrunc
            r python3 -c "import mmap, os; f = os.open('mapped', os.O_RDWR); m = mmap.mmap(f, 4096); m[0:2] = b'zz'; m.flush()"; stat -c '%a' mapped
            "#,
        );
        assert!(out.lines().count() >= 34, "the user script did not run: {out:?}");
        t.extend(out.lines().map(str::to_string));
        t.push(format!("suid as root after: {:o}", fs::metadata(root.join("suid")).unwrap().mode() & 0o7777));
    });
}

#[test]
fn chown_and_chmod_clear_privileges() {
    same_as_tmpfs(&[], |root, t| {
        let f = root.join("f");
        touch(&f, b"");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o6755)).unwrap();
        std::os::unix::fs::chown(&f, Some(1000), Some(1000)).unwrap();
        t.push(format!("after chown: {:o}", fs::metadata(&f).unwrap().mode() & 0o7777));
        let before = fs::metadata(&f).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(25));
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        let after = fs::metadata(&f).unwrap();
        t.push(format!(
            "chmod moves ctime {} keeps mtime {}",
            (after.ctime(), after.ctime_nsec()) > (before.ctime(), before.ctime_nsec()),
            after.mtime_nsec() == before.mtime_nsec()
        ));
    });
}

#[test]
fn everything_survives_a_remount() {
    let mut m = Mounted::new(&[]);
    let root: PathBuf = m.mnt.clone();
    touch(&root.join("f"), b"data");
    fs::hard_link(root.join("f"), root.join("g")).unwrap();
    std::os::unix::fs::symlink("f", root.join("s")).unwrap();
    let f = c(&root.join("f"));
    let (n, v) = (CString::new("user.k").unwrap(), b"value");
    // SAFETY: valid C strings and buffers.
    assert_eq!(unsafe { libc::setxattr(f.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) }, 0);
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mknod(c(&root.join("p")).as_ptr(), libc::S_IFIFO | 0o600, 0) }, 0);
    let file = fs::OpenOptions::new().write(true).open(root.join("f")).unwrap();
    use std::os::unix::io::AsRawFd;
    // SAFETY: a plain syscall on an open fd.
    assert_eq!(unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20) }, 0);
    drop(file);
    m.kill9();
    m.start().unwrap();
    let root = m.mnt.clone();
    assert_eq!(fs::metadata(root.join("g")).unwrap().nlink(), 2);
    assert_eq!(fs::read_link(root.join("s")).unwrap(), Path::new("f"));
    let mut buf = [0u8; 16];
    // SAFETY: the buffer holds 16 bytes.
    let r = unsafe { libc::getxattr(c(&root.join("g")).as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), 16) };
    assert_eq!(&buf[..r as usize], v);
    assert_eq!(fs::read(root.join("f")).unwrap(), b"data");
    assert_eq!(fs::metadata(root.join("f")).unwrap().blocks(), 2048, "KEEP_SIZE blocks kept");
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(root.join("p")).unwrap().file_type().is_fifo());
    m.restart();
    assert_eq!(fs::read(m.path("g")).unwrap(), b"data");
}

#[test]
fn timestamps_change_when_linux_changes_them() {
    fn times(p: &Path) -> (i64, i64, i64, i64) {
        let s = stat(p).unwrap();
        (s.st_mtime, s.st_mtime_nsec, s.st_ctime, s.st_ctime_nsec)
    }
    same_as_tmpfs(&[], |root, t| {
        let (d, f) = (root.join("d"), root.join("d/f"));
        fs::create_dir(&d).unwrap();
        touch(&f, b"12345");
        // The file's times through a descriptor: renames and unlinks do not lose it.
        let fd = fs::File::open(&f).unwrap();
        let ftimes = || {
            let m = fd.metadata().unwrap();
            (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
        };
        let mut step = |name: &str, op: &dyn Fn()| {
            let (f0, d0) = (ftimes(), times(&d));
            // Longer than a jiffy (10 ms at HZ=100): tmpfs may stamp with the coarse clock, and
            // a shorter pause let its reference transcript miss an update (CI, rmdir step).
            std::thread::sleep(std::time::Duration::from_millis(25));
            op();
            let (f1, d1) = (ftimes(), times(&d));
            t.push(format!(
                "{name}: file mtime {} ctime {} dir mtime {} ctime {}",
                (f1.0, f1.1) != (f0.0, f0.1),
                (f1.2, f1.3) != (f0.2, f0.3),
                (d1.0, d1.1) != (d0.0, d0.1),
                (d1.2, d1.3) != (d0.2, d0.3)
            ));
        };
        step("write", &|| fs::OpenOptions::new().write(true).open(&f).unwrap().write_all_at(b"x", 1).unwrap());
        step("truncate same size", &|| fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(5).unwrap());
        step("truncate", &|| fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(3).unwrap());
        step("chmod", &|| fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap());
        step("chown", &|| std::os::unix::fs::chown(&f, Some(7), None).unwrap());
        step("link", &|| fs::hard_link(&f, d.join("g")).unwrap());
        step("unlink other link", &|| fs::remove_file(d.join("g")).unwrap());
        step("rename within dir", &|| fs::rename(&f, d.join("h")).unwrap());
        step("rename back", &|| fs::rename(d.join("h"), &f).unwrap());
        step("setxattr", &|| {
            let n = CString::new("user.t").unwrap();
            // SAFETY: valid C strings and buffer.
            unsafe { libc::setxattr(c(&f).as_ptr(), n.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
        });
        step("read", &|| drop(fs::read(&f).unwrap()));
        step("mkdir in dir", &|| fs::create_dir(d.join("sub")).unwrap());
        step("rmdir in dir", &|| fs::remove_dir(d.join("sub")).unwrap());
        step("create in dir", &|| touch(&d.join("new"), b""));
        step("O_TRUNC open", &|| drop(fs::OpenOptions::new().write(true).truncate(true).open(&f).unwrap()));
    });
}

#[test]
fn locks_are_enforced_between_processes_on_the_host() {
    let m = Mounted::new(&[]);
    let p = m.path("lockfile");
    touch(&p, b"");
    use std::os::unix::io::AsRawFd;
    let f = fs::File::open(&p).unwrap();
    // SAFETY: plain syscalls on an open descriptor.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    // Another process cannot take it; flock(1) exits 1 with -n when the lock is held.
    let st = Command::new("flock").arg("-n").arg(&p).arg("true").status().unwrap();
    assert_eq!(st.code(), Some(1), "flock must conflict across processes");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) }, 0);
    let st = Command::new("flock").arg("-n").arg(&p).arg("true").status().unwrap();
    assert!(st.success());
    // POSIX record locks: a held write lock makes another process's F_SETLK fail.
    let g = fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let lk =
        libc::flock { l_type: libc::F_WRLCK as i16, l_whence: libc::SEEK_SET as i16, l_start: 0, l_len: 10, l_pid: 0 };
    // SAFETY: a valid flock struct.
    assert_eq!(unsafe { libc::fcntl(g.as_raw_fd(), libc::F_SETLK, &lk) }, 0);
    let out = Command::new("python3")
        .args(["-c", "import fcntl,sys\nf=open(sys.argv[1],'r+')\ntry:\n fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB, 10)\n print('got')\nexcept OSError:\n print('busy')", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "busy");
}

#[test]
fn device_nodes_open_only_with_dev() {
    for (args, expect_open) in [(&[][..], false), (&["-o", "dev"][..], true)] {
        let m = Mounted::new(args);
        let p = c(&m.path("null"));
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) }, 0);
        let r = fs::OpenOptions::new().write(true).open(m.path("null"));
        match (expect_open, r) {
            (true, Ok(mut f)) => f.write_all(b"into the void").unwrap(),
            (false, Err(e)) => assert_eq!(e.raw_os_error(), Some(libc::EACCES)),
            (want, got) => panic!("{args:?}: expected open={want}, got {got:?}"),
        }
    }
}

/// ZERO_RANGE (which tmpfs lacks) by a user without CAP_FSETID drops the set-ID bits, as on
/// ext4; so do the other content changes, covered against tmpfs above.
#[test]
fn zero_range_by_a_non_owner_drops_set_id_bits() {
    let m = Mounted::new(&["-o", "allow_other"]);
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o777)).unwrap();
    touch(&m.path("z"), &[1u8; 8192]);
    fs::set_permissions(m.path("z"), fs::Permissions::from_mode(0o6777)).unwrap();
    let out = as_user(&m.mnt, "fallocate -z -o 0 -l 4096 z; echo $?; stat -c '%a' z");
    assert_eq!(out, "0\n777\n");
    assert!(fs::read(m.path("z")).unwrap()[..4096].iter().all(|&b| b == 0));
}
