//! What fsync promises reaches the device. The store lives on an ext4 filesystem on a loop
//! device; right after an fsync returns, the loop device's backing file — exactly what reached
//! the "device" — is copied, and that image is then mounted (ext4 replays its journal, as after
//! a power cut), checked with `mmapfs fsck` and served by mmapfs to read the file back. The
//! last test goes further: a device with a volatile write cache (`mmapfs-faultdev`) loses
//! every write no flush covered.
//! Needs root (loop devices, mount); CI runs as root.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Mounted, sh};

/// An ext4 filesystem on a loop device over `image`, mounted at `dir`; unmounted and detached
/// on drop.
struct LoopFs {
    dev: String,
    dir: PathBuf,
}

impl LoopFs {
    fn new(image: &Path, dir: &Path, format: bool) -> LoopFs {
        if format {
            let f = fs::File::create(image).unwrap();
            f.set_len(512 << 20).unwrap();
        }
        let dev = sh("losetup", &["--find", "--show", image.to_str().unwrap()]);
        let lf = LoopFs { dev, dir: dir.to_path_buf() };
        if format {
            sh("mkfs.ext4", &["-q", "-F", &lf.dev]);
        }
        fs::create_dir_all(dir).unwrap();
        sh("mount", &[&lf.dev, dir.to_str().unwrap()]);
        lf
    }

    /// What reached the device so far, as a new image file (the power cut).
    fn cut_power(&self, to: &Path) {
        let backing = sh("losetup", &["--noheadings", "--output", "BACK-FILE", &self.dev]);
        sh("cp", &["--sparse=always", &backing, to.to_str().unwrap()]);
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// A fresh ext4 on a loop device (image in the build's temporary directory: a real disk, not
/// tmpfs) and mmapfs mounted with its store there.
fn mounted_on_a_loop_device() -> (tempfile::TempDir, LoopFs, Mounted) {
    assert!(common::is_root(), "needs root for loop devices (CI runs as root)");
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let lf = LoopFs::new(&tmp.path().join("disk.img"), &tmp.path().join("disk"), true);
    let m = Mounted::at(lf.dir.join("store"), tmp.path().join("mnt"), &["--segment-size", "16M"]).unwrap();
    (tmp, lf, m)
}

/// Mounts the power-cut image, fscks the store on it and returns `name`'s bytes as mmapfs
/// serves them.
fn read_after_power_cut(tmp: &Path, image: &Path, name: &str) -> Vec<u8> {
    let lf = LoopFs::new(image, &tmp.join("after"), false);
    let store = lf.dir.join("store");
    let (code, report) = common::fsck(&store);
    assert_eq!(code, 0, "fsck of the power-cut image:\n{report}");
    let m = Mounted::at(store, tmp.join("mnt-after"), &[]).unwrap();
    let data = fs::read(m.path(name)).unwrap();
    drop(m);
    drop(lf);
    data
}

/// Data written before a `kill -9` and fsynced after the remount is on the device when that
/// fsync returns (the remount's recovery made it durable; the fsync alone had nothing to do).
#[test]
fn data_written_before_kill_9_is_durable_after_the_next_fsync() {
    let (tmp, lf, mut m) = mounted_on_a_loop_device();
    let mut data = vec![0u8; 20 << 20];
    common::Rng::new(20).fill(&mut data);
    fs::write(m.path("big"), &data).unwrap();
    // The bytes are in the page cache of the segment files, not on the device.
    m.kill9();
    m.start().unwrap();
    assert!(m.log().contains("not closed cleanly"), "{}", m.log());
    fs::File::open(m.path("big")).unwrap().sync_all().unwrap();
    let image = tmp.path().join("cut.img");
    lf.cut_power(&image);
    m.kill9();
    drop(lf);
    let got = read_after_power_cut(tmp.path(), &image, "big");
    assert!(got == data, "after the power cut, big differs from what was fsynced");
}

/// The zeroes of a fallocate reach the device with the fsync that makes the new blocks
/// durable: a new file never shows a deleted file's bytes after a power cut.
#[test]
fn fallocated_blocks_read_zero_after_a_power_cut() {
    let (tmp, lf, mut m) = mounted_on_a_loop_device();
    fs::write(m.path("secret"), vec![0xABu8; 8 << 20]).unwrap();
    fs::File::open(m.path("secret")).unwrap().sync_all().unwrap();
    fs::remove_file(m.path("secret")).unwrap();
    fs::File::open(&m.mnt).unwrap().sync_all().unwrap();
    // Make the secret's bytes reach the device for sure, so only zeroing can hide them.
    sh("sync", &[]);
    let f = fs::OpenOptions::new().create(true).truncate(true).write(true).open(m.path("fresh")).unwrap();
    use std::os::unix::io::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor.
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 8 << 20) }, 0);
    f.sync_all().unwrap();
    let image = tmp.path().join("cut.img");
    lf.cut_power(&image);
    drop(f);
    m.kill9();
    drop(lf);
    let got = read_after_power_cut(tmp.path(), &image, "fresh");
    assert_eq!(got.len(), 8 << 20);
    let leaked = got.iter().filter(|&&b| b != 0).count();
    assert_eq!(leaked, 0, "{leaked} bytes of the deleted file show through after the power cut");
}

/// Page `p` of version `v` of a file: bytes that tell both apart.
fn page_of(v: u8, p: usize) -> Vec<u8> {
    vec![v.wrapping_mul(31).wrapping_add(p as u8) | 1; 4096]
}

fn pages_of(v: u8, range: std::ops::Range<usize>) -> Vec<u8> {
    range.flat_map(|p| page_of(v, p)).collect()
}

/// A device that loses what was not flushed. Unlike a copy of the loop device's backing
/// file, which holds every write that reached the loop driver, `mmapfs-faultdev` with its
/// volatile cache keeps only what a flush made durable, so this proves that each fsync's
/// data was on the device before the flush that acknowledged it: an overwrite of blocks
/// written before (which needs no metadata of the host), a new file, and stores through a
/// mapping with msync — and counts the device flushes each takes. Writes never synced may be
/// lost, but never in parts of a page.
#[test]
fn what_fsync_acknowledged_survives_a_device_that_loses_unflushed_writes() {
    if !common::is_root() {
        eprintln!("skipped: needs root for loop devices");
        return;
    }
    let mut disk = common::disk::FaultyDisk::new();
    let tmp = tempfile::tempdir().unwrap();
    let (store, mnt) = (disk.ext4.join("store"), tmp.path().join("mnt"));
    let mut m = Mounted::at(store.clone(), mnt.clone(), &["--segment-size", "4M"]).unwrap();
    let open = |m: &Mounted, name: &str| {
        fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(m.path(name)).unwrap()
    };
    use std::os::unix::fs::FileExt;
    // 256 pages, written and fsynced before the cache turns volatile: their blocks exist, and
    // after a remount the daemon knows it (FIEMAP), so their overwrite needs no host metadata.
    let a = open(&m, "a");
    a.write_all_at(&pages_of(1, 0..256), 0).unwrap();
    a.sync_all().unwrap();
    drop(a);
    m.restart();
    let a = open(&m, "a");
    disk.ctl("cache on");
    let mut flushes = Vec::new();
    let mut counted = |what: &'static str, f: &dyn Fn()| {
        let before = disk.flushes();
        f();
        flushes.push((what, disk.flushes() - before));
    };
    counted("overwrite + fsync", &|| {
        a.write_all_at(&pages_of(2, 0..64), 0).unwrap();
        a.sync_all().unwrap();
    });
    counted("new file + fsync", &|| {
        let c = open(&m, "c");
        c.write_all_at(&pages_of(3, 0..128), 0).unwrap();
        c.sync_all().unwrap();
    });
    counted("mapped stores + msync", &|| {
        let map = mmapfs::testing::Mapping::new(&a, 256 * 4096, true).unwrap();
        map.copy_in(128 * 4096, &pages_of(4, 128..192));
        map.msync().unwrap();
    });
    // Never synced: may be lost.
    a.write_all_at(&pages_of(5, 192..256), 192 * 4096).unwrap();
    eprintln!("device flushes: {flushes:?}");
    // One flush per fsync: the journal's records are written in place (its fdatasync commits
    // no metadata), and the data written back before it is covered by the same flush. A new
    // file's blocks were never written on the host: their first sync is the host's metadata
    // commit (two flushes on this device, which has no FUA), whose flush covers the journal.
    let count = |what: &str| flushes.iter().find(|f| f.0 == what).unwrap().1;
    assert_eq!(count("overwrite + fsync"), 1, "{flushes:?}");
    assert_eq!(count("mapped stores + msync"), 1, "{flushes:?}");
    assert!(count("new file + fsync") <= 2, "{flushes:?}");
    disk.ctl("power off");
    m.kill9();
    drop(a);
    disk.replug();
    let mut m = Mounted::at(store.clone(), mnt, &[]).unwrap();
    let got = fs::read(m.path("a")).unwrap();
    assert_eq!(got.len(), 256 * 4096);
    let page = |p: usize| &got[p * 4096..(p + 1) * 4096];
    for p in 0..192 {
        let v = match p {
            0..64 => 2,
            64..128 => 1,
            _ => 4,
        };
        assert!(page(p) == page_of(v, p), "a: page {p} is not version {v}, which was fsynced");
    }
    for p in 192..256 {
        assert!(page(p) == page_of(1, p) || page(p) == page_of(5, p), "a: page {p} is neither the old nor the new");
    }
    assert!(fs::read(m.path("c")).unwrap() == pages_of(3, 0..128), "c differs from what was fsynced");
    m.stop();
    let (code, out) = common::fsck(&store);
    assert_eq!(code, 0, "{out}");
}

/// The buffer-pool backends (direct, vm) write through with `O_DIRECT` and make an fsync
/// durable with the segment's fdatasync: what fsync acknowledged survives a device that loses
/// every write no flush covered — an overwrite, a new file, and a new file's growth — and the
/// store reads back with the default backend.
#[test]
fn the_pool_backends_keep_what_fsync_acknowledged_through_a_power_cut() {
    if !common::is_root() {
        eprintln!("skipped: needs root for loop devices");
        return;
    }
    for backend in ["direct", "vm"] {
        let mut disk = common::disk::FaultyDisk::new();
        let tmp = tempfile::tempdir().unwrap();
        let (store, mnt) = (disk.ext4.join("store"), tmp.path().join("mnt"));
        let args = ["--backend", backend, "--pool-size", "4M", "--segment-size", "4M"];
        let m = Mounted::at(store.clone(), mnt.clone(), &args).unwrap();
        use std::os::unix::fs::FileExt;
        let open = |name: &str| {
            fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(m.path(name)).unwrap()
        };
        let a = open("a");
        a.write_all_at(&pages_of(1, 0..256), 0).unwrap();
        a.sync_all().unwrap();
        disk.ctl("cache on");
        a.write_all_at(&pages_of(2, 0..64), 0).unwrap();
        a.sync_all().unwrap();
        let c = open("c");
        c.write_all_at(&pages_of(3, 0..300), 0).unwrap();
        c.sync_all().unwrap();
        // Never synced: may be lost, whole pages at a time.
        a.write_all_at(&pages_of(5, 192..256), 192 * 4096).unwrap();
        disk.ctl("power off");
        let mut m = m;
        m.kill9();
        drop((a, c));
        disk.replug();
        let mut m = Mounted::at(store.clone(), mnt, &[]).unwrap();
        let got = fs::read(m.path("a")).unwrap();
        assert_eq!(got.len(), 256 * 4096, "{backend}");
        for p in 0..192 {
            let v = if p < 64 { 2 } else { 1 };
            assert!(got[p * 4096..(p + 1) * 4096] == page_of(v, p)[..], "{backend}: a, page {p} is not version {v}");
        }
        for p in 192..256 {
            let page = &got[p * 4096..(p + 1) * 4096];
            assert!(page == page_of(1, p) || page == page_of(5, p), "{backend}: a, page {p} is neither");
        }
        assert!(fs::read(m.path("c")).unwrap() == pages_of(3, 0..300), "{backend}: c differs from what was fsynced");
        m.stop();
        let (code, out) = common::fsck(&store);
        assert_eq!(code, 0, "{backend}: {out}");
    }
}
