//! What fsync promises reaches the device. The store lives on an ext4 filesystem on a loop
//! device; right after an fsync returns, the loop device's backing file — exactly what reached
//! the "device" — is copied, and that image is then mounted (ext4 replays its journal, as after
//! a power cut), checked with `mmapfs fsck` and served by mmapfs to read the file back.
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

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A fresh ext4 on a loop device (image in the build's temporary directory: a real disk, not
/// tmpfs) and mmapfs mounted with its store there.
fn mounted_on_a_loop_device() -> (tempfile::TempDir, LoopFs, Mounted) {
    assert!(root(), "needs root for loop devices (CI runs as root)");
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
