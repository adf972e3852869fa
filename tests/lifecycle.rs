//! The daemon's life cycle as a user drives it: the mountpoint is created if missing; SIGINT,
//! SIGTERM and an external `umount` each end the mount with exit status 0 and a consistent
//! store; a SIGTERM while a file is open detaches the mount and exits once the file is closed.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// `umount` then `mount` at once, 500 times in a row, while a second mount's writer keeps
/// the CPUs busy: the new daemon reads nothing of the store before it holds the lock (the old
/// one may still be writing its final checkpoint, renaming and removing files), waits for the
/// old daemon when it must, and everything written is there at the end.
#[test]
fn umount_then_mount_at_once_500_times_under_load() {
    const CYCLES: u32 = 500;
    let mut m = Mounted::new(&["--segment-size", "16M", "--journal-limit", "256K"]);
    let busy = Mounted::new(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, stop) = (busy.path("spin"), stop.clone());
        std::thread::spawn(move || {
            let f = fs::File::create(&path).unwrap();
            let block = vec![0x5a_u8; 1 << 20];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                f.write_all_at(&block, (n % 64) << 20).unwrap();
                n += 1;
                if n.is_multiple_of(16) {
                    f.sync_all().unwrap();
                }
            }
            n
        })
    };
    let mut waited = 0;
    for cycle in 0..CYCLES {
        fs::write(m.path(&format!("f{cycle}")), vec![cycle as u8; 64 << 10]).unwrap();
        let mut old = child_of(&mut m);
        let st = Command::new("umount").arg(&m.mnt).status().unwrap();
        assert!(st.success(), "cycle {cycle}: umount");
        m.start().unwrap_or_else(|e| panic!("cycle {cycle}: mount right after umount failed: {e}"));
        let status = wait_timeout(&mut old.0, Duration::from_secs(20)).expect("an old daemon did not exit");
        assert!(status.success(), "cycle {cycle}: the old daemon: {status}");
        if m.log().matches("finishing its unmount").count() > waited {
            waited += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let blocks = writer.join().unwrap();
    for cycle in 0..CYCLES {
        assert_eq!(fs::read(m.path(&format!("f{cycle}"))).unwrap(), vec![cycle as u8; 64 << 10], "f{cycle}");
    }
    eprintln!("{CYCLES} cycles beside {blocks} MiB written on another mount; the new daemon waited in {waited}");
}

/// Two first mounts of one new store at once, ten times: one formats and serves it, the other
/// is refused with the winner's pid (never "no superblock" or a missing file), and the store
/// the winner made is whole.
#[test]
fn two_first_mounts_of_a_new_store_race_cleanly() {
    for round in 0..10 {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let spawn = |mnt: &str| {
            let log = fs::File::create(tmp.path().join(format!("{mnt}.log"))).unwrap();
            Daemon(
                Command::new(common::BIN)
                    .arg("mount")
                    .arg("--store")
                    .arg(&store)
                    .arg(tmp.path().join(mnt))
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            )
        };
        let mut a = spawn("a");
        let mut b = spawn("b");
        let (ma, mb) = (tmp.path().join("a"), tmp.path().join("b"));
        let _unmount = Unmount(vec![ma.clone(), mb.clone()]);
        // Exactly one exits, refused; the other serves.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let (winner, loser, mnt, loser_log) = loop {
            if let Ok(Some(st)) = b.0.try_wait() {
                assert!(!st.success(), "round {round}: b exited 0");
                break (a, b, ma, "b.log");
            }
            if let Ok(Some(st)) = a.0.try_wait() {
                assert!(!st.success(), "round {round}: a exited 0");
                break (b, a, mb, "a.log");
            }
            assert!(std::time::Instant::now() < deadline, "round {round}: neither mount was refused");
            std::thread::sleep(Duration::from_millis(10));
        };
        drop(loser);
        let said = fs::read_to_string(tmp.path().join(loser_log)).unwrap();
        assert!(said.contains(&format!("already mounted by pid {}", winner.id())), "round {round}: {said}");
        let mut winner = winner;
        let mnt = mmapfs::testing::wait_mounted(&mnt, &mut winner.0, Duration::from_secs(20)).unwrap();
        fs::write(mnt.join("f"), b"served").unwrap();
        assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
        assert!(wait_timeout(&mut winner.0, Duration::from_secs(20)).unwrap().success());
        let (code, report) = common::fsck(&store);
        assert_eq!(code, 0, "round {round}: {report}");
    }
}

/// Lazily unmounts what is still mounted at the end of a test, failing or not.
struct Unmount(Vec<std::path::PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for p in &self.0 {
            if let Ok(c) = p.canonicalize()
                && is_mounted(&c)
            {
                common::lazy_umount(&c);
            }
        }
    }
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
