//! mount(8) and fstab: `mount -t fuse.mmapfs STORE MOUNTPOINT -o OPTS` and an fstab line work
//! through the standard mount.fuse3 helper, which runs `mmapfs STORE MOUNTPOINT -o OPTS`:
//! mmapfs returns once the mount is live (0) or has failed (non-zero, the error on stderr),
//! then serves in the background (`-f` keeps it in the foreground); mount(8)'s own options
//! are accepted. mount.fuse3 finds `mmapfs` on a fixed PATH, so the test links the binary
//! into /usr/local/bin for its duration (as `install` would put it) unless it is there.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// /usr/local/bin/mmapfs pointing at the binary under test, removed afterwards if we made it.
/// The tests that need it run one at a time (they share the link).
struct Installed(Option<PathBuf>, #[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Installed {
    fn link() -> Installed {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let at = Path::new("/usr/local/bin/mmapfs");
        match fs::read_link(at) {
            Ok(t) if t == Path::new(common::BIN) => Installed(None, turn),
            Ok(_) | Err(_) if at.exists() => panic!("{} exists and is not this build's binary", at.display()),
            _ => {
                std::os::unix::fs::symlink(common::BIN, at).unwrap();
                Installed(Some(at.to_path_buf()), turn)
            }
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// Unmounts (lazily) on drop, so a failing test leaks no mount.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if common::is_mounted(&self.0) {
            common::lazy_umount(&self.0);
        }
    }
}

/// A temporary directory with a mountpoint `mnt` in it (unmounted on drop) and the path
/// `store` (not made), while holding the installed binary.
struct Setup {
    tmp: tempfile::TempDir,
    store: PathBuf,
    mnt: PathBuf,
    _guard: Unmount,
    _bin: Installed,
}

fn setup() -> Setup {
    let bin = Installed::link();
    let tmp = tempfile::tempdir().unwrap();
    let (store, mnt) = (tmp.path().join("store"), tmp.path().join("mnt"));
    fs::create_dir(&mnt).unwrap();
    Setup { _guard: Unmount(mnt.clone()), tmp, store, mnt, _bin: bin }
}

fn mount(args: &[&str]) -> (bool, String) {
    let out = Command::new("mount").args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// After `umount`, the background daemon finishes and lets go of the store: fsck can run.
fn wait_released(store: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, report) = common::fsck(store);
        if code == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the daemon never let go of the store: {report}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mount_t_fuse_mmapfs_serves_in_the_background() {
    let Setup { tmp, store, mnt, .. } = &setup();
    let log = tmp.path().join("daemon.log");
    let opts = format!("allow_other,noatime,defaults,nofail,_netdev,x-test=1,log={}", log.display());
    let (ok, err) = mount(&["-t", "fuse.mmapfs", store.to_str().unwrap(), mnt.to_str().unwrap(), "-o", &opts]);
    assert!(ok, "{err}");
    // mount returned: the filesystem is live at once.
    assert!(common::is_mounted(mnt), "mount returned before the mount was live");
    fs::write(mnt.join("f"), b"through mount(8)").unwrap();
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"through mount(8)");
    assert!(Command::new("umount").arg(mnt).status().unwrap().success());
    wait_released(store);
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("mounted store") && text.contains("unmounted"), "the log file: {text}");
}

#[test]
fn an_fstab_line_mounts() {
    let Setup { tmp, store, mnt, .. } = &setup();
    let fstab = tmp.path().join("fstab");
    let line = format!(
        "{} {} fuse.mmapfs defaults,allow_other,noauto,x-systemd.automount,relatime,lazytime,log={} 0 0\n",
        store.display(),
        mnt.display(),
        tmp.path().join("log").display()
    );
    fs::write(&fstab, line).unwrap();
    let (ok, err) = mount(&["-T", fstab.to_str().unwrap(), mnt.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(common::is_mounted(mnt));
    fs::write(mnt.join("f"), b"from fstab").unwrap();
    assert!(Command::new("umount").arg(mnt).status().unwrap().success());
    wait_released(store);
}

#[test]
fn a_failed_mount_says_why_and_exits_non_zero() {
    let Setup { tmp, mnt, .. } = &setup();
    let not_a_store = tmp.path().join("data");
    fs::create_dir(&not_a_store).unwrap();
    fs::write(not_a_store.join("mine.txt"), b"x").unwrap();
    let (ok, err) = mount(&["-t", "fuse.mmapfs", not_a_store.to_str().unwrap(), mnt.to_str().unwrap()]);
    assert!(!ok && err.contains("not an mmapfs store"), "{err}");
    assert!(!common::is_mounted(mnt));
}

#[test]
fn the_helper_form_stays_in_the_foreground_with_f() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, mnt) = (tmp.path().join("store"), tmp.path().join("mnt"));
    fs::create_dir(&mnt).unwrap();
    let _guard = Unmount(mnt.clone());
    let mut child = Command::new(common::BIN).arg(&store).arg(&mnt).args(["-o", "rw,auto", "-f"]).spawn().unwrap();
    let mnt = mmapfs::testing::wait_mounted(&mnt, &mut child, Duration::from_secs(20)).unwrap();
    fs::write(mnt.join("f"), b"foreground").unwrap();
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = common::wait_timeout(&mut child, Duration::from_secs(20)).expect("no exit after SIGTERM");
    assert!(status.success() && !common::is_mounted(&mnt));
}

/// The helper form refuses, before it goes to the background and with the reason on stderr,
/// what mount(8) would: a mountpoint that does not exist (it is not created), and a log file
/// that cannot be opened (the caller would otherwise wait on a daemon holding its stdout).
#[test]
fn the_helper_form_refuses_a_missing_mountpoint_and_an_unusable_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, mnt) = (tmp.path().join("store"), tmp.path().join("mnt"));
    let _guard = Unmount(mnt.clone());
    let run = |mnt: &Path, opts: &str| {
        let mut child = Command::new(common::BIN)
            .arg(&store)
            .arg(mnt)
            .args(["-o", opts])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let status = common::wait_timeout(&mut child, Duration::from_secs(20)).expect("the helper form hung");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        (status.success(), err)
    };
    let (ok, err) = run(&mnt, "rw");
    assert!(!ok && err.contains("does not exist"), "{err}");
    assert!(!mnt.exists(), "the helper form created the mountpoint");
    fs::create_dir(&mnt).unwrap();
    for log in ["/proc/no-such-dir/log", tmp.path().to_str().unwrap()] {
        let (ok, err) = run(&mnt, &format!("rw,log={log}"));
        assert!(!ok && err.contains(&format!("log={log}")), "{log}: {err}");
        assert!(!common::is_mounted(&mnt.canonicalize().unwrap()), "{log}: mounted anyway");
    }
}
