//! A media error under the store is an I/O error, not a dead mount, with every backend. The
//! store lives on ext4 (`errors=continue`) on a loop device whose backing file is served by
//! `mmapfs-faultdev`, which fails reads of chosen device ranges: the data blocks of a segment,
//! found with FIEMAP (never ext4's metadata). The mount is stopped and the page cache dropped
//! before the fault is armed, so that the daemon's next access really goes to the device.
//!
//! Cases: a small overwrite of a page that cannot be read (the read-modify-write fails), a
//! read of such a page, a client's mapped load of it (SIGBUS in the client, as on ext4), and
//! a page the device cannot write back (the fsync reports it). Each:
//! the client's error, stickiness, the daemon alive, the unmount saying the store failed, and
//! the remount with everything once the device is healed. Needs root (loop devices, mount).

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::disk::FaultyDisk;
use common::{Mounted, errno_of};

/// The segment file and offset where byte `at` of the mounted file `name` lives.
fn placed(m: &Mounted, name: &str, at: u64) -> (PathBuf, u64) {
    let (seg, off) = common::placed(m, name, at);
    (m.store.join(format!("segments/{seg:06}.seg")), off)
}

fn media_errors(backend: &str) {
    let disk = FaultyDisk::new();
    let tmp = tempfile::tempdir().unwrap();
    let args = ["--backend", backend, "--segment-size", "4M", "--pool-size", "4M"];
    let mut m = Mounted::at(disk.ext4.join("store"), tmp.path().join("mnt"), &args).unwrap();
    let f_data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
    let g_data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 239) as u8 + 1).collect();
    fs::write(m.path("f"), &f_data).unwrap();
    fs::write(m.path("g"), &g_data).unwrap();
    for n in ["f", "g"] {
        fs::File::open(m.path(n)).unwrap().sync_all().unwrap();
    }
    let (f_seg, f_off) = placed(&m, "f", 256 << 10);
    let (g_seg, g_off) = placed(&m, "g", 512 << 10);
    // Nothing of the store in memory any more: the next access reads the device.
    m.stop();
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    disk.fail_at("read", &f_seg, f_off);
    disk.fail_at("read", &g_seg, g_off);
    m.start().unwrap();

    // A small overwrite inside a page that cannot be read: its read-modify-write fails.
    let g = OpenOptions::new().read(true).write(true).open(m.path("g")).unwrap();
    assert_eq!(errno_of(g.write_all_at(b"overwrite", (512 << 10) + 100)), Some(libc::EIO), "{backend}: overwrite");
    // A read of such a page, and again: EIO, never zeros.
    let f = fs::File::open(m.path("f")).unwrap();
    // SAFETY: a plain syscall on an open descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut buf = vec![0u8; 16 << 10];
    for _ in 0..2 {
        assert_eq!(errno_of(f.read_exact_at(&mut buf, 256 << 10)), Some(libc::EIO), "{backend}: read");
    }
    // The client's own mapping of the page: SIGBUS in the client, as on ext4.
    let st = common::mapped_load(&m.path("f"), (256 << 10) + 100);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(libc::SIGBUS), "{backend}: {st:?}");
    // Sticky, and the daemon lives: pages that can be read still are.
    assert_eq!(errno_of(fs::write(m.path("new"), b"x")), Some(libc::EIO), "{backend}: create after the fault");
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf[..], f_data[..buf.len()], "{backend}: f's first bytes");
    assert!(m.log().contains("refuses every further change"), "{}", m.log());
    if backend == "mmap" {
        // The daemon's own access of the mapping met the fault, and lived.
        assert!(m.log().contains("SIGBUS at"), "{}", m.log());
    }
    drop((f, g));
    // The unmount says the store failed.
    m.stop_failed();
    // Healed, the remount has everything acknowledged before the fault.
    disk.ctl("heal");
    m.start().unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), f_data, "{backend}: f after healing");
    assert_eq!(fs::read(m.path("g")).unwrap(), g_data, "{backend}: g after healing");
    assert!(!m.path("new").exists());

    // A write-back failure: the device refuses the writes of h's page. The overwrite goes
    // to the page cache (with direct, straight to the device), and its fsync reports the
    // failure: the store fails, the daemon lives.
    let h_data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 233) as u8 + 1).collect();
    fs::write(m.path("h"), &h_data).unwrap();
    fs::File::open(m.path("h")).unwrap().sync_all().unwrap();
    let (h_seg, h_off) = placed(&m, "h", 128 << 10);
    disk.fail_at("write", &h_seg, h_off);
    let h = OpenOptions::new().write(true).open(m.path("h")).unwrap();
    let new_page = vec![0xEEu8; 4096];
    let r = h.write_all_at(&new_page, 128 << 10).and_then(|()| h.sync_all());
    assert_eq!(errno_of(r), Some(libc::EIO), "{backend}: overwrite + fsync of a page the device cannot write");
    assert_eq!(errno_of(fs::write(m.path("new"), b"x")), Some(libc::EIO), "{backend}: create after the fault");
    assert!(fs::metadata(m.path("f")).is_ok(), "{backend}: the mount died");
    drop(h);
    m.stop_failed();
    disk.ctl("heal");
    m.start().unwrap();
    // The page never made durable is old or new, byte by byte; everything else is as it was.
    let back = fs::read(m.path("h")).unwrap();
    assert_eq!(back.len(), h_data.len());
    for (i, (&b, &old)) in back.iter().zip(&h_data).enumerate() {
        let new = if (128 << 10..(128 << 10) + 4096).contains(&i) { 0xEE } else { old };
        assert!(b == old || b == new, "{backend}: byte {i} of h is {b:#x}");
    }
    assert_eq!(fs::read(m.path("f")).unwrap(), f_data, "{backend}: f after the write fault");
    m.stop();
}

#[test]
fn media_errors_with_the_mmap_backend() {
    media_errors("mmap");
}

#[test]
fn media_errors_with_the_pread_backend() {
    media_errors("pread");
}

#[test]
fn media_errors_with_the_direct_backend() {
    media_errors("direct");
}

#[test]
fn media_errors_with_the_vm_backend() {
    media_errors("vm");
}

/// The test device models a disk's volatile write cache: with `cache on`, writes are held
/// (reads see them) until a flush (`fsync`), and `powercut` loses what was not flushed.
#[test]
fn the_test_device_models_a_volatile_write_cache() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let backing = tmp.path().join("backing");
    fs::File::create(&backing).unwrap().set_len(1 << 20).unwrap();
    let mnt = tmp.path().join("dev");
    fs::create_dir(&mnt).unwrap();
    let mut dev = Command::new(env!("CARGO_BIN_EXE_mmapfs-faultdev"))
        .arg(&backing)
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mnt = mmapfs::testing::wait_mounted(&mnt, &mut dev, Duration::from_secs(20)).unwrap();
    let _unmount = scopeguard(&mnt, &mut dev);
    let ctl = |c: &str| fs::write(mnt.join("ctl"), format!("{c}\n")).unwrap();
    let disk = OpenOptions::new().read(true).write(true).open(mnt.join("disk")).unwrap();
    let read = |at: u64| {
        let mut b = [0u8; 5];
        disk.read_exact_at(&mut b, at).unwrap();
        b
    };
    let flushes = || {
        fs::read_to_string(mnt.join("ctl")).unwrap().trim().strip_prefix("flushes ").unwrap().parse::<u64>().unwrap()
    };
    ctl("cache on");
    disk.write_all_at(b"flush", 4096).unwrap();
    let before = flushes();
    disk.sync_all().unwrap();
    assert_eq!(flushes(), before + 1, "an fsync of the disk is one flush, and ctl counts it");
    disk.write_all_at(b"held!", 8190).unwrap(); // across a page boundary
    assert_eq!(&read(8190), b"held!", "reads see held writes");
    assert_eq!(fs::read(&backing).unwrap()[8190..8195], [0; 5], "held, not written");
    ctl("powercut");
    assert_eq!(read(8190), [0; 5], "lost in the power cut");
    assert_eq!(&read(4096), b"flush", "flushed before it: kept");
    // Failing ranges: reads and writes that touch them, until healed.
    ctl("fail-read 0 4096");
    ctl("fail-write 65536 10");
    assert_eq!(errno_of(disk.read_exact_at(&mut [0u8; 1], 4095)), Some(libc::EIO));
    assert_eq!(errno_of(disk.write_all_at(b"x", 65540)), Some(libc::EIO));
    assert!(disk.read_exact_at(&mut [0u8; 1], 4096).is_ok());
    ctl("heal");
    assert!(disk.read_exact_at(&mut [0u8; 1], 4095).is_ok());
    // Power off: the held writes are lost and later writes and flushes reach nothing.
    disk.write_all_at(b"held!", 12288).unwrap();
    ctl("power off");
    disk.write_all_at(b"later", 16384).unwrap();
    disk.sync_all().unwrap();
    ctl("power on");
    assert_eq!((read(12288), read(16384)), ([0; 5], [0; 5]), "nothing while the power was off");
    ctl("cache off");
    assert_eq!(fs::read(&backing).unwrap()[4096..4101], *b"flush");
}

/// Ends the device's process and its mount when the test ends, passed or failed.
fn scopeguard<'a>(mnt: &'a Path, dev: &'a mut Child) -> impl Drop + 'a {
    struct G<'a>(&'a Path, &'a mut Child);
    impl Drop for G<'_> {
        fn drop(&mut self) {
            common::lazy_umount(self.0);
            let _ = self.1.kill();
            let _ = self.1.wait();
        }
    }
    G(mnt, dev)
}
