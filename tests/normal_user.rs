//! A normal user mounts through fusermount3 and unmounts with `fusermount3 -u`, and the default
//! store under `$XDG_DATA_HOME` is created with the user's ownership and private modes. Run as
//! root with uid 1000 as the user; /dev/fuse is opened to all for the test's duration (Debian's
//! default mode, 0666) and restored after, even if the test fails.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Sets /dev/fuse's mode for the test's duration.
struct DevFuseMode(u32);

impl DevFuseMode {
    fn open_to_all() -> DevFuseMode {
        let old = fs::metadata("/dev/fuse").expect("/dev/fuse").mode() & 0o7777;
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
        DevFuseMode(old)
    }
}

impl Drop for DevFuseMode {
    fn drop(&mut self) {
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.0));
    }
}

/// The user's daemon and its mount, ended when the test ends, passed or failed.
struct Daemon(std::process::Child, std::path::PathBuf);

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
        if common::is_mounted(&self.1) {
            common::lazy_umount(&self.1);
        }
    }
}

/// `cmd…` as uid/gid 1000 with HOME and XDG_DATA_HOME in `home`.
fn as_user(home: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=1000", "--regid=1000", "--clear-groups", "env"])
        .arg(format!("HOME={}", home.display()))
        .arg(format!("XDG_DATA_HOME={}", home.join("data").display()));
    c
}

#[test]
fn a_normal_user_mounts_and_unmounts_with_fusermount3() {
    let _fuse = DevFuseMode::open_to_all();
    let home = tempfile::tempdir().unwrap();
    let mnt = home.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    std::os::unix::fs::chown(home.path(), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(&mnt, Some(1000), Some(1000)).unwrap();
    let log = fs::File::create(home.path().join("daemon.log")).unwrap();
    let child = as_user(home.path())
        .arg(common::BIN)
        .arg("mount")
        .arg(&mnt)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut daemon = Daemon(child, mnt.clone());
    let mounted = mmapfs::testing::wait_mounted(&mnt, &mut daemon.0, Duration::from_secs(20));
    let daemon_log = || fs::read_to_string(home.path().join("daemon.log")).unwrap_or_default();
    let mnt = mounted.unwrap_or_else(|e| panic!("{e}: {}", daemon_log()));
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info.lines().find(|l| l.split(' ').nth(4) == Some(&*mnt.to_string_lossy())).unwrap();
    assert!(line.contains("user_id=1000"), "mounted for the user: {line}");
    // The mount shows in the table before the daemon has said it is ready: wait for that line.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !daemon_log().contains("stop with `fusermount3 -u") {
        assert!(std::time::Instant::now() < deadline, "never ready: {}", daemon_log());
        std::thread::sleep(Duration::from_millis(10));
    }
    // A normal user cannot change the mount's bdi: the kernel's dirty limit stays, said once.
    assert_eq!(daemon_log().matches("the mount keeps the kernel's dirty limit").count(), 1, "{}", daemon_log());
    let bdi = line.split(' ').nth(2).unwrap();
    let max_ratio = fs::read_to_string(format!("/sys/class/bdi/{bdi}/max_ratio")).unwrap();
    assert_eq!(max_ratio.trim(), "1", "the kernel's limit for a FUSE mount");
    assert!(daemon_log().contains("the mount keeps the kernel's read-ahead of 128 KiB"), "{}", daemon_log());
    let out = as_user(home.path())
        .args(["sh", "-c", "echo hello > \"$1/f\" && cat \"$1/f\" && stat -c '%u' \"$1/f\"", "sh"])
        .arg(&mnt)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n1000\n", "{}", String::from_utf8_lossy(&out.stderr));
    // The default store, the user's and private.
    let store = home.path().join("data/mmapfs/default");
    let md = fs::metadata(&store).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o777), (1000, 0o700));
    assert_eq!(fs::metadata(store.join("superblock")).unwrap().uid(), 1000);
    let st = as_user(home.path()).args(["fusermount3", "-u"]).arg(&mnt).stdout(Stdio::null()).status().unwrap();
    assert!(st.success(), "fusermount3 -u");
    let status = common::wait_timeout(&mut daemon.0, Duration::from_secs(20)).expect("the daemon did not exit");
    assert!(status.success(), "{status}: {}", daemon_log());
    assert!(!common::is_mounted(&mnt));
    assert!(!daemon_log().contains("WARN"), "{}", daemon_log());
}
