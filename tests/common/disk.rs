//! ext4 on a loop device over `mmapfs-faultdev`'s disk: media errors, a volatile write
//! cache, power cuts, and a count of device flushes (see src/bin/mmapfs-faultdev.rs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::sh;

/// Media errors are reported, not fatal; no timed journal commit (every 5 s by default) adds
/// device flushes to those a test counts: only an fsync commits.
const EXT4_OPTIONS: &str = "errors=continue,commit=600";

/// ext4 on a loop device over `mmapfs-faultdev`'s disk; all of it taken down on drop.
pub struct FaultyDisk {
    _tmp: tempfile::TempDir,
    dev: Child,
    dev_mnt: PathBuf,
    loopdev: Option<String>,
    /// Where the ext4 is mounted.
    pub ext4: PathBuf,
}

impl FaultyDisk {
    pub fn new() -> FaultyDisk {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root for loop devices (CI runs as root)");
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let backing = tmp.path().join("backing");
        fs::File::create(&backing).unwrap().set_len(256 << 20).unwrap();
        let (dev_mnt, ext4) = (tmp.path().join("dev"), tmp.path().join("ext4"));
        fs::create_dir_all(&dev_mnt).unwrap();
        fs::create_dir_all(&ext4).unwrap();
        let log = fs::File::create(tmp.path().join("faultdev.log")).unwrap();
        let mut dev = Command::new(env!("CARGO_BIN_EXE_mmapfs-faultdev"))
            .arg(&backing)
            .arg(&dev_mnt)
            .stderr(log)
            .spawn()
            .unwrap();
        let dev_mnt = mmapfs::testing::wait_mounted(&dev_mnt, &mut dev, Duration::from_secs(20)).unwrap();
        let mut d = FaultyDisk { _tmp: tmp, dev, dev_mnt, loopdev: None, ext4 };
        let loopdev = sh("losetup", &["--find", "--show", d.dev_mnt.join("disk").to_str().unwrap()]);
        d.loopdev = Some(loopdev.clone());
        sh("mkfs.ext4", &["-q", "-F", "-b", "4096", &loopdev]);
        sh("mount", &["-o", EXT4_OPTIONS, &loopdev, d.ext4.to_str().unwrap()]);
        d
    }

    pub fn ctl(&self, cmd: &str) {
        fs::write(self.dev_mnt.join("ctl"), format!("{cmd}\n")).unwrap();
    }

    /// Fails reads (or writes) of the device page holding byte `at` of `file` (on the ext4).
    pub fn fail_at(&self, what: &str, file: &Path, at: u64) {
        let f = fs::File::open(file).unwrap();
        let e = mmapfs::store::fiemap::extents(&f)
            .unwrap()
            .into_iter()
            .find(|e| e.logical <= at && at < e.logical + e.length)
            .unwrap_or_else(|| panic!("{at} is in no extent of {}", file.display()));
        let phys = (e.physical + (at - e.logical)) / 4096 * 4096;
        self.ctl(&format!("fail-{what} {phys} 4096"));
    }

    /// Device cache flushes so far (the device's count).
    pub fn flushes(&self) -> u64 {
        let t = fs::read_to_string(self.dev_mnt.join("ctl")).unwrap();
        t.trim().strip_prefix("flushes ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("ctl says {t:?}"))
    }

    /// After `power off`: unmounts the ext4 (nothing it writes reaches the disk), detaches the
    /// loop device, powers the disk on and mounts the ext4 anew from what the disk holds, as
    /// after a power cut and a reboot.
    pub fn replug(&mut self) {
        sh("umount", &[self.ext4.to_str().unwrap()]);
        sh("losetup", &["-d", self.loopdev.take().unwrap().as_str()]);
        self.ctl("power on");
        let loopdev = sh("losetup", &["--find", "--show", self.dev_mnt.join("disk").to_str().unwrap()]);
        self.loopdev = Some(loopdev.clone());
        sh("mount", &["-o", EXT4_OPTIONS, &loopdev, self.ext4.to_str().unwrap()]);
    }
}

impl Drop for FaultyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.ext4).status();
        if let Some(l) = &self.loopdev {
            let _ = Command::new("losetup").args(["-d", l]).status();
        }
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.dev.id() as i32, libc::SIGTERM) };
        if super::wait_timeout(&mut self.dev, Duration::from_secs(20)).is_none() {
            let _ = self.dev.kill();
            let _ = self.dev.wait();
        }
        super::lazy_umount(&self.dev_mnt);
    }
}
