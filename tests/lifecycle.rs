//! The daemon's life cycle as a user drives it: the mountpoint is created if missing; SIGINT,
//! SIGTERM and an external `umount` each end the mount with exit status 0 and a consistent
//! store; a SIGTERM while a file is open detaches the mount and exits once the file is closed.

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::{Mounted, is_mounted, wait_timeout};

/// The daemon, killed if a test fails before it exits on its own.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Daemon {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

fn child_of(m: &mut Mounted) -> Daemon {
    Daemon(m.take_child())
}

#[test]
fn sigint_unmounts_and_exits_zero() {
    let mut m = Mounted::new(&[]);
    fs::write(m.path("f"), b"kept").unwrap();
    let mut child = child_of(&mut m);
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_timeout(&mut child, Duration::from_secs(20)).expect("daemon did not exit on SIGINT");
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&m.mnt));
    m.start().unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"kept");
}

#[test]
fn external_umount_ends_the_daemon_cleanly() {
    let mut m = Mounted::new(&[]);
    fs::write(m.path("f"), b"kept").unwrap();
    let mut child = child_of(&mut m);
    let st = Command::new("umount").arg(&m.mnt).status().unwrap();
    assert!(st.success());
    let status = wait_timeout(&mut child, Duration::from_secs(20)).expect("daemon did not exit after umount");
    assert!(status.success(), "{status}");
    // A clean exit leaves a checkpoint and an empty journal: the next mount replays nothing.
    m.start().unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"kept");
    assert!(m.log().contains("0 journal records replayed"), "{}", m.log());
    assert!(!m.log().contains("not closed cleanly"), "a clean unmount needs no recovery flush: {}", m.log());
    assert!(!m.log().contains("WARN"), "a normal external umount logs no warning: {}", m.log());
}

#[test]
fn sigterm_with_an_open_file_detaches_then_exits_when_it_closes() {
    let mut m = Mounted::new(&[]);
    fs::write(m.path("f"), b"open").unwrap();
    let f = fs::File::open(m.path("f")).unwrap();
    let mut child = child_of(&mut m);
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // Detached: gone from the namespace, but the open file still works.
    for _ in 0..200 {
        if !is_mounted(&m.mnt) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!is_mounted(&m.mnt), "mount still visible after SIGTERM");
    let mut buf = [0u8; 4];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 0).unwrap();
    assert_eq!(&buf, b"open");
    assert!(child.try_wait().unwrap().is_none(), "daemon left while a file was open");
    drop(f);
    let status = wait_timeout(&mut child, Duration::from_secs(20)).expect("daemon did not exit after the last close");
    assert!(status.success(), "{status}");
}

/// `umount` followed at once by `mount` of the same store works, as test harnesses (xfstests)
/// do it: the new daemon waits for the old one to finish its final checkpoint instead of being
/// refused. 50 cycles back to back, each with data that the previous daemon was still syncing.
#[test]
fn umount_then_mount_at_once_50_times() {
    let mut m = Mounted::new(&["--segment-size", "16M"]);
    let mut old = Vec::new();
    let mut waited = 0;
    for cycle in 0..50u32 {
        fs::write(m.path(&format!("f{cycle}")), vec![cycle as u8; 4 << 20]).unwrap();
        let child = child_of(&mut m);
        let st = Command::new("umount").arg(&m.mnt).status().unwrap();
        assert!(st.success(), "cycle {cycle}: umount");
        m.start().unwrap_or_else(|e| panic!("cycle {cycle}: mount right after umount failed: {e}"));
        old.push(child);
        if m.log().matches("finishing its unmount").count() > waited {
            waited += 1;
        }
    }
    for mut c in old {
        let status = wait_timeout(&mut c, Duration::from_secs(20)).expect("an old daemon did not exit");
        assert!(status.success(), "{status}");
    }
    for cycle in 0..50u32 {
        assert_eq!(fs::read(m.path(&format!("f{cycle}"))).unwrap(), vec![cycle as u8; 4 << 20], "f{cycle}");
    }
    eprintln!("50 cycles; the new daemon waited for the old one in {waited} of them");
}

/// Under systemd (`Type=notify`), the daemon says READY=1 once the mount is live and
/// STOPPING=1 when it ends; tested with a notify socket of the test's own.
#[test]
fn systemd_hears_ready_and_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut m = Mounted::with_env(&[], &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("no READY=1 from the daemon");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1") && msg.contains("STATUS=serving"), "{msg:?}");
    assert!(is_mounted(&m.mnt), "READY=1 only once the mount is live");
    m.stop();
    let n = sock.recv(&mut buf).expect("no STOPPING=1 from the daemon");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "STOPPING=1");
}
