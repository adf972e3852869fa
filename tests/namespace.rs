//! Namespace semantics as programs rely on them: mkdir/rmdir, rename over files and empty
//! directories and across directories, unlink of an open file, readdir offsets that stay
//! valid while the directory changes, attributes and timestamps, statfs, name limits.

mod common;

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::time::Duration;

use common::{Mounted, cstr, errno};

fn err(r: std::io::Result<impl Sized>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).expect("expected an error")
}

#[test]
fn mkdir_rmdir_and_errors() {
    let m = Mounted::new(&[]);
    fs::create_dir(m.path("d")).unwrap();
    assert_eq!(err(fs::create_dir(m.path("d"))), libc::EEXIST);
    fs::write(m.path("d/f"), b"x").unwrap();
    assert_eq!(err(fs::remove_dir(m.path("d"))), libc::ENOTEMPTY);
    assert_eq!(err(fs::remove_dir(m.path("d/f"))), libc::ENOTDIR);
    assert_eq!(err(fs::remove_file(m.path("d"))), libc::EISDIR);
    assert_eq!(err(fs::read_dir(m.path("d/f"))), libc::ENOTDIR);
    assert_eq!(err(fs::write(m.path("nodir/f"), b"")), libc::ENOENT);
    fs::remove_file(m.path("d/f")).unwrap();
    fs::remove_dir(m.path("d")).unwrap();
    assert_eq!(err(fs::metadata(m.path("d"))), libc::ENOENT);
    // Link counts: a directory has 2 + its subdirectories.
    fs::create_dir_all(m.path("p/a")).unwrap();
    fs::create_dir(m.path("p/b")).unwrap();
    assert_eq!(fs::metadata(m.path("p")).unwrap().nlink(), 4);
}

#[test]
fn rename_semantics() {
    let m = Mounted::new(&[]);
    fs::write(m.path("a"), b"A").unwrap();
    fs::write(m.path("b"), b"B").unwrap();
    fs::rename(m.path("a"), m.path("b")).unwrap();
    assert_eq!(fs::read(m.path("b")).unwrap(), b"A");
    assert_eq!(err(fs::metadata(m.path("a"))), libc::ENOENT);
    // Across directories, and over an empty directory.
    fs::create_dir(m.path("d1")).unwrap();
    fs::create_dir(m.path("d2")).unwrap();
    fs::rename(m.path("b"), m.path("d1/b")).unwrap();
    assert_eq!(fs::read(m.path("d1/b")).unwrap(), b"A");
    fs::create_dir(m.path("d2/empty")).unwrap();
    fs::rename(m.path("d1"), m.path("d2/empty")).unwrap();
    assert_eq!(fs::read(m.path("d2/empty/b")).unwrap(), b"A");
    // ".." of a moved directory follows it.
    assert_eq!(fs::metadata(m.path("d2/empty/..")).unwrap().ino(), fs::metadata(m.path("d2")).unwrap().ino());
    // Errors.
    fs::create_dir(m.path("full")).unwrap();
    fs::write(m.path("full/x"), b"").unwrap();
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("file"), b"").unwrap();
    assert_eq!(err(fs::rename(m.path("dir"), m.path("full"))), libc::ENOTEMPTY);
    assert_eq!(err(fs::rename(m.path("dir"), m.path("file"))), libc::ENOTDIR);
    assert_eq!(err(fs::rename(m.path("file"), m.path("dir"))), libc::EISDIR);
    assert_eq!(err(fs::rename(m.path("d2"), m.path("d2/empty/inside"))), libc::EINVAL);
    assert_eq!(err(fs::rename(m.path("missing"), m.path("x"))), libc::ENOENT);
    // RENAME_NOREPLACE.
    let (a, b) = (cstr(&m.path("file")), cstr(&m.path("dir")));
    // SAFETY: valid C strings.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_NOREPLACE) };
    assert_eq!((r, errno()), (-1, libc::EEXIST));
}

#[test]
fn unlinked_open_file_stays_readable_then_space_returns() {
    let m = Mounted::new(&[]);
    let free0 = m.statfs_free();
    let data = vec![7u8; 8 << 20];
    fs::write(m.path("victim"), &data).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(m.path("victim")).unwrap();
    fs::remove_file(m.path("victim")).unwrap();
    assert_eq!(err(fs::metadata(m.path("victim"))), libc::ENOENT);
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 5 << 20).unwrap();
    assert!(buf.iter().all(|&b| b == 7));
    f.write_all_at(b"still writable", 0).unwrap();
    assert!(m.statfs_free() < free0, "space is held while open");
    drop(f);
    // Release is asynchronous to close(2); give it a moment.
    for _ in 0..100 {
        if m.statfs_free() == free0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(m.statfs_free(), free0, "space reclaimed after the last close");
}

#[test]
fn readdir_lists_dot_entries_and_survives_changes() {
    let m = Mounted::new(&[]);
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    for i in 0..300 {
        fs::write(d.join(format!("f{i:03}")), b"").unwrap();
    }
    let names: HashSet<String> =
        fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 300);
    // Raw readdir shows . and .. too, and telldir/seekdir offsets hold while entries change.
    let c = cstr(&d);
    // SAFETY: valid path; the DIR* is used only in this block and closed at the end.
    unsafe {
        let dir = libc::opendir(c.as_ptr());
        assert!(!dir.is_null());
        let mut seen = Vec::new();
        let mut mark = None;
        loop {
            let ent = libc::readdir(dir);
            if ent.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()).to_string_lossy().into_owned();
            seen.push(name.clone());
            if seen.len() == 150 {
                mark = Some((libc::telldir(dir), name));
                // Change the directory under the open stream: remove entries already read,
                // add new ones. Entries not removed must still be listed exactly once.
                for i in 0..50 {
                    fs::remove_file(d.join(format!("f{i:03}"))).unwrap();
                }
                for i in 0..20 {
                    fs::write(d.join(format!("new{i}")), b"").unwrap();
                }
            }
        }
        assert!(seen.contains(&".".to_string()) && seen.contains(&"..".to_string()));
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "an entry was listed twice");
        for i in 50..300 {
            assert!(seen.contains(&format!("f{i:03}")), "f{i:03} was skipped");
        }
        // seekdir back to the mark continues right after the marked entry.
        let (pos, name) = mark.unwrap();
        libc::seekdir(dir, pos);
        let ent = libc::readdir(dir);
        assert!(!ent.is_null());
        let next = std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()).to_string_lossy().into_owned();
        let idx = seen.iter().position(|s| *s == name).unwrap();
        assert_eq!(next, seen[idx + 1]);
        libc::closedir(dir);
    }
}

#[test]
fn attributes_and_times() {
    let m = Mounted::new(&[]);
    let p = m.path("f");
    fs::write(&p, b"1234").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4751)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o4751);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
        let md = fs::metadata(&p).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
    }
    // utimensat with explicit times, UTIME_OMIT and UTIME_NOW.
    let c = cstr(&p);
    let ts = [
        libc::timespec { tv_sec: 1_000_000, tv_nsec: 123_456_789 },
        libc::timespec { tv_sec: 2_000_000, tv_nsec: 987 },
    ];
    // SAFETY: valid path and two timespecs.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) }, 0);
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.atime(), md.atime_nsec(), md.mtime(), md.mtime_nsec()), (1_000_000, 123_456_789, 2_000_000, 987));
    let ts = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
    ];
    // SAFETY: as above.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) }, 0);
    let md = fs::metadata(&p).unwrap();
    assert_eq!(md.atime(), 1_000_000, "UTIME_OMIT keeps atime");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((md.mtime() - now).abs() <= 2, "UTIME_NOW sets mtime");
    // A write moves mtime and ctime forward.
    let before = fs::metadata(&p).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    OpenOptions::new().write(true).open(&p).unwrap().write_all(b"z").unwrap();
    let after = fs::metadata(&p).unwrap();
    assert!((after.mtime(), after.mtime_nsec()) > (before.mtime(), before.mtime_nsec()));
    assert!((after.ctime(), after.ctime_nsec()) > (before.ctime(), before.ctime_nsec()));
    // Creating an entry updates the directory's mtime.
    let d0 = fs::metadata(&m.mnt).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    fs::write(m.path("g"), b"").unwrap();
    let d1 = fs::metadata(&m.mnt).unwrap();
    assert!((d1.mtime(), d1.mtime_nsec()) > (d0.mtime(), d0.mtime_nsec()));
}

#[test]
fn statfs_reports_capacity_and_use() {
    let m = Mounted::new(&["--capacity", "256M", "--segment-size", "16M"]);
    let c = cstr(&m.mnt);
    // SAFETY: zeroed statvfs is a valid out-buffer.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a plain libc call on valid C strings and buffers that outlive it.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    assert_eq!(s.f_blocks * s.f_frsize, 256 << 20);
    assert_eq!(s.f_bfree, s.f_blocks);
    assert_eq!(s.f_namemax, 255);
    fs::write(m.path("x"), vec![1u8; 1 << 20]).unwrap();
    assert_eq!(m.statfs_free(), (255 << 20));
}

#[test]
fn name_and_offset_limits() {
    let m = Mounted::new(&[]);
    let long = "x".repeat(256);
    assert_eq!(err(fs::write(m.path(&long), b"")), libc::ENAMETOOLONG);
    fs::write(m.path(&"y".repeat(255)), b"ok").unwrap();
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.path("big")).unwrap();
    // Past the largest file size.
    let e = f.write_at(b"x", (1 << 62) + 5).unwrap_err();
    assert!(matches!(e.raw_os_error(), Some(libc::EFBIG) | Some(libc::EINVAL)), "{e}");
    assert_eq!(err(f.set_len(1 << 62)), libc::EFBIG);
}

trait StatFree {
    fn statfs_free(&self) -> u64;
}

impl StatFree for Mounted {
    fn statfs_free(&self) -> u64 {
        let c = cstr(&self.mnt);
        // SAFETY: zeroed statvfs is a valid out-buffer.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a plain libc call on valid C strings and buffers that outlive it.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
        s.f_bfree * s.f_frsize
    }
}
