//! Mapped I/O is coherent: two unrelated processes that map one mounted file `MAP_SHARED` see
//! each other's stores at once, without msync; write(2) is seen by an existing mapping and
//! mapped stores by read(2); mapped stores written back update mtime/ctime.
//!
//! The second process is this test binary run again with `MMAPFS_HELPER` set, so it shares
//! nothing with the first but the file.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Mounted;
use mmapfs::testing::Mapping;

const LEN: usize = 1 << 20;

/// A shared read-write mapping (the suite's one wrapper, `mmapfs::testing::Mapping`).
fn map(file: &std::fs::File, len: usize) -> Mapping {
    Mapping::new(file, len, true).expect("mmap")
}

/// Waits until the word at `off` holds `v`.
fn wait_for(m: &Mapping, off: usize, v: u64) -> bool {
    m.wait_for(off, v, Duration::from_secs(10))
}

/// The helper side: maps the file, answers each of the parent's stores with its own.
#[test]
fn helper_process() {
    let Ok(path) = std::env::var("MMAPFS_HELPER") else { return };
    let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let map = map(&f, LEN);
    for round in 1..=100u64 {
        // Wait for the parent's value in page 0, answer in page 100 (another page).
        assert!(wait_for(&map, 0, round), "helper: round {round} never arrived");
        map.store(100 * 4096 + 8, round * 1000);
    }
    // Also check what the parent wrote with pwrite is visible through this mapping.
    assert!(wait_for(&map, 4096 * 7, 0xfeed_beef), "helper: pwrite not visible in mapping");
}

fn spawn_helper(path: &std::path::Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_process", "--nocapture", "--test-threads=1"])
        .env("MMAPFS_HELPER", path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn two_processes_see_each_others_stores_without_msync() {
    coherence(&[]);
}

#[test]
fn coherent_with_one_thread() {
    coherence(&["--threads", "1"]);
}

#[test]
fn coherent_with_writeback_cache() {
    coherence(&["-o", "writeback_cache"]);
}

#[test]
fn coherent_with_direct_io_and_shared_mmap() {
    coherence(&["-o", "direct_io"]);
}

/// Two processes' mapped stores, pwrite into a mapping, mapped stores seen by read(2); then
/// the data survives fsync and a remount in this mode.
fn coherence(args: &[&str]) {
    let mut m = Mounted::new(args);
    let p = m.path("shared");
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
    f.set_len(LEN as u64).unwrap();
    let map = map(&f, LEN);
    let mut child = spawn_helper(&p);
    for round in 1..=100u64 {
        map.store(0, round);
        assert!(wait_for(&map, 100 * 4096 + 8, round * 1000), "round {round}: helper's store not seen");
    }
    // pwrite through a descriptor reaches the other process's mapping.
    f.write_all_at(&0xfeed_beefu64.to_ne_bytes(), 4096 * 7).unwrap();
    let status = common::wait_timeout(&mut child, Duration::from_secs(30)).expect("helper hung");
    assert!(status.success(), "helper failed");
    // Mapped stores are seen by read(2) through a fresh descriptor, before any msync.
    map.store(4096 * 3 + 16, 0x1122_3344_5566_7788);
    let g = std::fs::File::open(&p).unwrap();
    let mut b = [0u8; 8];
    g.read_exact_at(&mut b, 4096 * 3 + 16).unwrap();
    assert_eq!(u64::from_ne_bytes(b), 0x1122_3344_5566_7788);
    // Durable through msync + fsync, and back after a remount.
    map.msync().unwrap();
    f.sync_all().unwrap();
    drop(map);
    drop((f, g));
    m.restart();
    let data = fs::read(&p).unwrap();
    assert_eq!(data.len(), LEN);
    assert_eq!(u64::from_ne_bytes(data[4096 * 3 + 16..4096 * 3 + 24].try_into().unwrap()), 0x1122_3344_5566_7788);
    assert_eq!(u64::from_ne_bytes(data[4096 * 7..4096 * 7 + 8].try_into().unwrap()), 0xfeed_beef);
    assert_eq!(u64::from_ne_bytes(data[100 * 4096 + 8..100 * 4096 + 16].try_into().unwrap()), 100_000);
}

#[test]
fn mapped_stores_update_mtime_once_written_back() {
    let m = Mounted::new(&[]);
    let p = m.path("m");
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
    f.set_len(LEN as u64).unwrap();
    let map = map(&f, LEN);
    map.store(8, 1);
    map.msync().unwrap();
    let before = fs::metadata(&p).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    map.store(4096 * 9, 2);
    map.msync().unwrap();
    // Attributes may be cached for the TTL; poll briefly.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let after = fs::metadata(&p).unwrap();
        if (after.mtime(), after.mtime_nsec()) > (before.mtime(), before.mtime_nsec()) {
            assert!((after.ctime(), after.ctime_nsec()) > (before.ctime(), before.ctime_nsec()));
            break;
        }
        assert!(Instant::now() < deadline, "mtime did not advance after msync of a mapped store");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fs::metadata(&p).unwrap().len(), LEN as u64, "size unchanged by mapped stores");
}
