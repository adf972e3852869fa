//! Bad input gets a clear error and never damages a store: a full store answers ENOSPC and
//! keeps its contents; a second mount of a mounted store is refused naming the holder's pid;
//! a corrupt superblock, a corrupt journal record, a foreign directory or a store of another
//! format version are refused without a byte of them changed; bad CLI options are refused.

mod common;

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use common::{Mounted, run};

fn mount_fails(m: &mut Mounted) -> String {
    match m.start() {
        Ok(()) => panic!("mount should have been refused"),
        Err(log) => log,
    }
}

#[test]
fn full_store_answers_enospc_and_keeps_its_data() {
    let mut m = Mounted::new(&["--capacity", "8M", "--segment-size", "4M"]);
    fs::write(m.path("keep"), vec![0x5a; 3 << 20]).unwrap();
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(m.path("filler")).unwrap();
    let chunk = vec![0x77u8; 256 << 10];
    let mut written = 0;
    let e = loop {
        match f.write_all(&chunk) {
            Ok(()) => written += chunk.len(),
            Err(e) => break e,
        }
        assert!(written < 16 << 20, "capacity not enforced");
    };
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    assert!(written >= 4 << 20, "only {written} bytes fit");
    drop(f);
    // Overwrites of stored blocks still work on a full store; new blocks do not.
    OpenOptions::new().write(true).open(m.path("keep")).unwrap().write_all(b"head").unwrap();
    assert_eq!(fs::write(m.path("new"), vec![1u8; 1 << 20]).unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    m.restart();
    let keep = fs::read(m.path("keep")).unwrap();
    assert_eq!(&keep[..4], b"head");
    assert!(keep[4..].iter().all(|&b| b == 0x5a) && keep.len() == 3 << 20);
    let filler = fs::read(m.path("filler")).unwrap();
    assert_eq!(filler.len(), written);
    assert!(filler.iter().all(|&b| b == 0x77));
    // Space comes back once files go.
    fs::remove_file(m.path("filler")).unwrap();
    fs::write(m.path("new"), vec![1u8; 1 << 20]).unwrap();
}

#[test]
fn a_failed_journal_write_is_sticky_until_remount() {
    // The store on a tiny tmpfs: its journal soon cannot grow.
    let tmp = tempfile::tempdir().unwrap();
    let fsdir = tmp.path().join("small");
    fs::create_dir(&fsdir).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&fsdir)
        .status()
        .unwrap();
    assert!(st.success(), "mounting tmpfs (the tests run as root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            common::lazy_umount(&self.0);
        }
    }
    let _small = Unmount(fsdir.clone());
    let mut m =
        Mounted::at(fsdir.join("store"), tmp.path().join("mnt"), &["--segment-size", "64K", "--capacity", "64K"])
            .unwrap();
    fs::write(m.path("data"), b"synced").unwrap();
    fs::File::open(m.path("data")).unwrap().sync_all().unwrap();
    let mut created = 0;
    let first_error = loop {
        match fs::write(m.path(&format!("file-with-a-longish-name-{created:06}")), b"") {
            Ok(()) => created += 1,
            Err(e) => break e,
        }
        assert!(created < 100_000, "the journal never filled the tmpfs");
    };
    assert_eq!(first_error.raw_os_error(), Some(libc::ENOSPC), "{first_error}");
    // From now on every change and every fsync fails: the in-memory state may be ahead of
    // the journal, so nothing may claim success until the store is reopened.
    let eio = |r: std::io::Result<()>| r.err().and_then(|e| e.raw_os_error());
    assert_eq!(eio(fs::File::open(m.path("data")).and_then(|f| f.sync_all())), Some(libc::EIO));
    assert_eq!(eio(fs::remove_file(m.path("file-with-a-longish-name-000000"))), Some(libc::EIO));
    assert_eq!(eio(fs::create_dir(m.path("dir"))), Some(libc::EIO));
    assert_eq!(eio(fs::File::open(m.path("data")).and_then(|f| f.sync_all())), Some(libc::EIO), "still failing");
    assert!(m.log().contains("refuses every further change"));
    // Make room and remount: the torn tail is cut off, everything that returned is there.
    m.kill9();
    let st = std::process::Command::new("mount").args(["-o", "remount,size=4m"]).arg(&fsdir).status().unwrap();
    assert!(st.success());
    m.start().unwrap();
    assert_eq!(fs::read(m.path("data")).unwrap(), b"synced");
    let names = fs::read_dir(&m.mnt).unwrap().count();
    assert_eq!(names, created + 1, "every create that returned survived, none that failed");
    fs::write(m.path("after"), b"works again").unwrap();
}

#[test]
fn second_mount_is_refused_with_the_holders_pid() {
    let m = Mounted::new(&[]);
    let other = m.store.parent().unwrap().join("mnt2");
    let (ok, err) = run(&[OsStr::new("mount"), OsStr::new("--store"), m.store.as_os_str(), other.as_os_str()]);
    assert!(!ok);
    assert!(err.contains("already mounted") && err.contains(&m.pid().to_string()), "{err}");
}

#[test]
fn corrupt_superblock_is_refused_untouched() {
    let mut m = Mounted::new(&[]);
    fs::write(m.path("f"), b"data").unwrap();
    m.stop();
    let sb = m.store.join("superblock");
    let mut bytes = fs::read(&sb).unwrap();
    bytes[33] ^= 0x10; // inside the segment size
    fs::write(&sb, &bytes).unwrap();
    let before = common::tree(&m.store);
    let log = mount_fails(&mut m);
    assert!(log.contains("damaged") && log.contains("superblock"), "{log}");
    assert!(common::tree(&m.store) == before, "a refused store was modified");
}

#[test]
fn corrupt_journal_record_is_refused_untouched() {
    let mut m = Mounted::new(&[]);
    for i in 0..20 {
        fs::write(m.path(&format!("f{i}")), b"data").unwrap();
    }
    m.kill9(); // no clean checkpoint: the records stay in the journal
    let journal = fs::read_dir(m.store.join("meta"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("journal-"))
        .unwrap();
    let mut bytes = fs::read(&journal).unwrap();
    // Records are written over zeros the file holds ahead of them: aim at the middle of them.
    let end = bytes.iter().rposition(|&b| b != 0).unwrap();
    assert!(end > 500, "journal should hold the records");
    let mid = end / 2;
    bytes[mid] ^= 0x01;
    fs::write(&journal, &bytes).unwrap();
    let before = common::tree(&m.store);
    let log = mount_fails(&mut m);
    assert!(log.contains("damaged") && log.contains("journal") && log.contains("checksum"), "{log}");
    assert!(common::tree(&m.store) == before, "a refused store was modified");
}

#[test]
fn corrupt_checkpoint_and_truncated_segment_are_refused_untouched() {
    let mut m = Mounted::new(&["--segment-size", "1M", "--capacity", "8M"]);
    fs::write(m.path("f"), vec![3u8; 100_000]).unwrap();
    m.stop();
    let ck = m.store.join("meta/checkpoint");
    let good = fs::read(&ck).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x80;
    fs::write(&ck, &bad).unwrap();
    let before = common::tree(&m.store);
    let log = mount_fails(&mut m);
    assert!(log.contains("damaged") && log.contains("checkpoint") && log.contains("checksum"), "{log}");
    assert!(common::tree(&m.store) == before);
    // Restore it, then cut a segment short: mapping it would SIGBUS, so it is refused.
    fs::write(&ck, &good).unwrap();
    let seg = m.store.join("segments/000000.seg");
    OpenOptions::new().write(true).open(&seg).unwrap().set_len(4096).unwrap();
    let log = mount_fails(&mut m);
    assert!(log.contains("damaged") && log.contains("000000.seg"), "{log}");
    // fsck names the damage and shows no figures of a store it could not load.
    let (code, report) = common::fsck(&m.store);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("DAMAGE") && report.contains("000000.seg"), "{report}");
    assert!(!report.contains("format 0") && !report.contains("0 inodes"), "{report}");
}

#[test]
fn foreign_directories_and_other_versions_are_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let foreign = tmp.path().join("foreign");
    fs::create_dir(&foreign).unwrap();
    fs::write(foreign.join("notes.txt"), b"my precious data").unwrap();
    let before = common::tree(&foreign);
    let mnt = tmp.path().join("mnt");
    let (ok, err) = run(&[OsStr::new("mount"), OsStr::new("--store"), foreign.as_os_str(), mnt.as_os_str()]);
    assert!(!ok && err.contains("not an mmapfs store"), "{err}");
    assert!(common::tree(&foreign) == before);
    let (ok, err) = run(&[OsStr::new("format"), foreign.as_os_str()]);
    assert!(!ok && err.contains("not empty"), "{err}");
    assert!(common::tree(&foreign) == before);

    // A store written by a future format version.
    let store = tmp.path().join("v4");
    let (ok, err) = run(&[
        OsStr::new("format"),
        store.as_os_str(),
        OsStr::new("--segment-size"),
        OsStr::new("1M"),
        OsStr::new("--capacity"),
        OsStr::new("4M"),
    ]);
    assert!(ok, "{err}");
    let sb = store.join("superblock");
    let mut bytes = fs::read(&sb).unwrap();
    bytes[8] = 4;
    fs::write(&sb, &bytes).unwrap();
    let before = common::tree(&store);
    let (ok, err) = run(&[OsStr::new("mount"), OsStr::new("--store"), store.as_os_str(), mnt.as_os_str()]);
    assert!(!ok && err.contains("format version 4"), "{err}");
    assert!(common::tree(&store) == before);
    assert!(!common::is_mounted(&mnt));
}

#[test]
fn bad_cli_input_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("s");
    let mnt = tmp.path().join("m");
    let cases: &[(&[&str], &str)] = &[
        (&["-o", "frobnicate"], "unknown mount option"),
        (&["--threads", "0"], "--threads"),
        (&["--capacity", "lots"], "bad size"),
        (&["--segment-size", "1000"], "invalid store geometry: segment size 1000 must be a positive multiple of 4096"),
        (&["--capacity", "1M"], "invalid store geometry: capacity"),
        (&["-o", "writeback_cache,direct_io"], "exclude each other"),
    ];
    for (extra, want) in cases {
        let mut args = vec![OsStr::new("mount"), OsStr::new("--store"), store.as_os_str(), mnt.as_os_str()];
        args.extend(extra.iter().map(OsStr::new));
        let (ok, err) = run(&args);
        assert!(!ok && err.contains(want), "{extra:?}: {err}");
        assert!(!store.exists(), "{extra:?} created the store");
    }
    // `mmapfs format` refuses the same geometry with the same message, creating nothing.
    for (extra, want) in [
        (["--segment-size", "1000"], "invalid store geometry: segment size 1000"),
        (["--capacity", "1M"], "invalid store geometry: capacity"),
    ] {
        let mut args = vec![OsStr::new("format"), store.as_os_str()];
        args.extend(extra.iter().map(OsStr::new));
        let (ok, err) = run(&args);
        assert!(!ok && err.contains(want) && !err.contains("damaged"), "{extra:?}: {err}");
        assert!(!store.exists(), "{extra:?} created the store");
    }
    // A store inside the mountpoint would deadlock the daemon on itself.
    let inside = mnt.join("store");
    let (ok, err) = run(&[OsStr::new("mount"), OsStr::new("--store"), inside.as_os_str(), mnt.as_os_str()]);
    assert!(!ok && err.contains("inside the mountpoint"), "{err}");
    // A mountpoint that is a file.
    let file = tmp.path().join("file");
    fs::File::create(&file).unwrap().write_all(b"x").unwrap();
    let (ok, err) = run(&[OsStr::new("mount"), OsStr::new("--store"), store.as_os_str(), file.as_os_str()]);
    assert!(!ok && err.contains("not a directory"), "{err}");
}

/// A store held by a daemon that serves a mount is refused at once, not after a wait.
#[test]
fn a_live_holder_is_refused_without_waiting() {
    let m = Mounted::new(&[]);
    let other = m.store.parent().unwrap().join("mnt3");
    let started = std::time::Instant::now();
    let (ok, err) = run(&[OsStr::new("mount"), OsStr::new("--store"), m.store.as_os_str(), other.as_os_str()]);
    assert!(!ok && err.contains(&m.pid().to_string()), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "the refusal waited {:?}", started.elapsed());
}

/// Deleting data gives its space back to the host filesystem: after 1 GiB is written and
/// deleted, the store's disk usage returns to within a few MiB of an empty store's.
#[test]
fn deleted_data_gives_host_space_back() {
    let m = Mounted::new(&[]);
    let du = || common::du(&m.store);
    let empty = du();
    let chunk = vec![0x5Au8; 1 << 20];
    {
        let mut f = fs::File::create(m.path("big")).unwrap();
        for _ in 0..1024 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    assert!(du() >= 1 << 30, "1 GiB written uses {} bytes", du());
    fs::remove_file(m.path("big")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while du() > empty + (4 << 20) {
        assert!(std::time::Instant::now() < deadline, "store still uses {} bytes, empty {empty}", du());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The space is reserved again on reuse, and the data reads back.
    fs::write(m.path("again"), &chunk).unwrap();
    assert_eq!(fs::read(m.path("again")).unwrap(), chunk);
}

/// A huge fallocate answers ENOSPC and leaves the host untouched: no segment file, no debris.
#[test]
fn huge_fallocate_leaves_no_segment_behind() {
    use std::os::unix::io::AsRawFd;
    let m = Mounted::new(&["--capacity", "1G"]);
    let f = fs::File::create(m.path("f")).unwrap();
    // SAFETY: a plain syscall on an open descriptor.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 52) };
    assert_eq!((rc, common::errno()), (-1, libc::ENOSPC));
    let segs: Vec<_> = fs::read_dir(m.store.join("segments")).unwrap().collect();
    assert!(segs.is_empty(), "{segs:?}");
}

/// `mmapfs fsck`: 0 on a clean store, 1 on damage (with the damage named, `--json` too), 2 when
/// it cannot run (mounted, not a store).
#[test]
fn fsck_exit_status_says_clean_damaged_or_could_not_run() {
    let mut m = Mounted::new(&[]);
    fs::write(m.path("f"), b"data").unwrap();
    let (code, _) = common::fsck(&m.store);
    assert_eq!(code, 2, "a mounted store cannot be checked");
    m.stop();
    let (code, report) = common::fsck(&m.store);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("clean"), "{report}");
    let out = std::process::Command::new(common::BIN).args(["fsck", "--json"]).arg(&m.store).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["files"], 1);
    assert_eq!(json["problems"].as_array().unwrap().len(), 0);
    let cp = m.store.join("meta/checkpoint");
    let mut b = fs::read(&cp).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x10;
    fs::write(&cp, &b).unwrap();
    let (code, report) = common::fsck(&m.store);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("DAMAGE") && report.contains("checkpoint"), "{report}");
    let (code, _) = common::fsck(m.store.parent().unwrap());
    assert_eq!(code, 2, "not a store");
}

/// statfs never promises more free space than the host filesystem under the store can give:
/// a 16 GiB store on a 48 MiB tmpfs shows at most what that tmpfs has free.
#[test]
fn statfs_shows_no_more_free_space_than_the_host_has() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host");
    fs::create_dir(&host).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs"])
        .arg(&host)
        .status();
    assert!(st.unwrap().success(), "mounting tmpfs (the tests run as root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            common::lazy_umount(&self.0);
        }
    }
    let _host = Unmount(host.clone());
    let m = Mounted::at(host.join("store"), tmp.path().join("mnt"), &["--segment-size", "4M"]).unwrap();
    let free = |p: &Path| {
        let c = common::cstr(p);
        // SAFETY: a zeroed statvfs is a valid out-buffer; `c` is a valid C string.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
        (s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize)
    };
    let (mount_free, mount_size) = free(&m.mnt);
    let (host_free, _) = free(&host);
    assert_eq!(mount_size, 16 << 30, "the capacity");
    assert!(mount_free <= host_free, "the mount shows {mount_free} free, the host has {host_free}");
    fs::write(m.path("f"), vec![1u8; 12 << 20]).unwrap();
    let (mount_free, _) = free(&m.mnt);
    let (host_free, _) = free(&host);
    // Reserved but unused segment space counts too: at most one segment's worth more.
    assert!(mount_free <= host_free + (4 << 20), "after a write: {mount_free} free, the host has {host_free}");
}

/// Space freed just before the daemon ends returns to the host all the same: a clean unmount
/// gives it back before it exits; after `kill -9`, fsck says how much the free space still
/// holds and the next mount gives it back in the background. Both end within 4 MiB of a
/// freshly formatted store mounted once.
#[test]
fn space_freed_just_before_an_unmount_or_a_kill_returns() {
    for kill in [false, true] {
        let mut m = Mounted::new(&[]);
        let empty = common::du(&m.store);
        let data = vec![0x33u8; 256 << 20];
        fs::write(m.path("big"), &data).unwrap();
        fs::File::open(m.path("big")).unwrap().sync_all().unwrap();
        fs::remove_file(m.path("big")).unwrap();
        if !kill {
            m.stop();
            let du = common::du(&m.store);
            assert!(du <= empty + (4 << 20), "after a clean unmount the store uses {du} bytes, empty {empty}");
            m.start().unwrap();
            continue;
        }
        m.kill9();
        let held = common::du(&m.store);
        let (code, report) = common::fsck(&m.store);
        assert_eq!(code, 0, "{report}");
        // Unless a background pass gave it back before the kill, fsck sees it held.
        if held > empty + (8 << 20) {
            let mib = (held - empty) >> 20;
            assert!(report.contains("still held on the host"), "{mib} MiB held: {report}");
        }
        m.start().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let du = common::du(&m.store);
            if du <= empty + (4 << 20) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "after kill -9 and a remount the store uses {du} bytes, empty {empty}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
