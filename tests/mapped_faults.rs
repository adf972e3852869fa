//! A page the daemon cannot read is an I/O error, not a dead mount. The fault here is a real
//! one: a segment file cut short from outside while the store is mounted, so the pages past
//! the cut cannot be read in (with the mmap backend the daemon's access raises `SIGBUS`).
//! For every backend: the client reading data past the cut gets `EIO` (or, with the direct
//! backend, whose pool still holds the pages, the right bytes), never zeros or stale bytes;
//! the store fails as on any I/O error (every later change and fsync `EIO`, also a write
//! through pwrite that would grow the file back); the daemon lives and keeps answering; a
//! client's mapped load of such a page gets `SIGBUS` in the client, as on ext4; the unmount
//! reports the failure (exit status, log, lock file); and with the file healed, the remount
//! has everything.

mod common;

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use common::{Mounted, errno_of};

fn a_segment_cut_short(backend: &str) {
    let pooled = matches!(backend, "direct" | "vm");
    let mut m = Mounted::new(&["--backend", backend, "--segment-size", "4M", "--pool-size", "4M"]);
    let a: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
    let b: Vec<u8> = (0..1u32 << 20).map(|i| (i % 241) as u8 + 1).collect();
    fs::write(m.path("a"), &a).unwrap();
    fs::write(m.path("b"), &b).unwrap();
    for n in ["a", "b"] {
        fs::File::open(m.path(n)).unwrap().sync_all().unwrap();
    }
    let (seg, off) = common::placed(&m, "b", 0);
    let seg_path = m.store.join(format!("segments/{seg:06}.seg"));
    let saved = fs::read(&seg_path).unwrap();
    // Cut the segment in the middle of b: its second half lies past the end of the file.
    let cut = off + (512 << 10);
    OpenOptions::new().write(true).open(&seg_path).unwrap().set_len(cut).unwrap();

    let f = fs::File::open(m.path("b")).unwrap();
    // The client's page cache of b must not answer for the daemon.
    // SAFETY: a plain syscall on an open descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut buf = vec![0u8; 64 << 10];
    let past = 768 << 10; // an offset of b past the cut
    match f.read_exact_at(&mut buf, past) {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{backend}: {e}"),
        // A buffer pool (direct, vm) may still hold the pages: then they are the right ones.
        Ok(()) => assert!(pooled && buf[..] == b[past as usize..past as usize + buf.len()], "{backend}"),
    }
    // Whatever the read met, the store fails by the next fsync at the latest: a cut segment
    // never lets a sync report success.
    let w = OpenOptions::new().write(true).open(m.path("a")).unwrap();
    let synced = w.write_all_at(&[9u8; 2 << 20][..8192], 0).and_then(|()| w.sync_all());
    assert_eq!(errno_of(synced), Some(libc::EIO), "{backend}: overwrite + fsync after the cut");
    // Sticky: every kind of change, including a large write (pwrite into the page cache).
    assert_eq!(errno_of(w.write_all_at(&vec![1u8; 1 << 20], 0)), Some(libc::EIO), "{backend}: large write");
    assert_eq!(errno_of(fs::write(m.path("new"), b"x")), Some(libc::EIO), "{backend}: create");
    assert_eq!(errno_of(w.sync_all()), Some(libc::EIO), "{backend}: fsync");
    // A range that failed keeps failing: never zeros.
    if !pooled {
        assert_eq!(errno_of(f.read_exact_at(&mut buf, past)), Some(libc::EIO), "{backend}: read again");
        // The client's own mapping of the file: SIGBUS in the client, as on ext4.
        let st = common::mapped_load(&m.path("b"), past as usize + 100);
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(libc::SIGBUS), "{backend}: {st:?}");
    }
    // The daemon lives: the mount answers, and data before the cut still reads.
    assert!(fs::metadata(m.path("a")).is_ok(), "{backend}: the mount died");
    let mut head = vec![0u8; 4096];
    f.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head[..], b[..4096], "{backend}: b's first page, before the cut");
    assert!(m.log().contains("refuses every further change"), "{}", m.log());
    if backend == "mmap" {
        // The daemon's own access met the fault (and lived): the guard turned it into EIO.
        assert!(m.log().contains("SIGBUS at"), "{}", m.log());
    }
    drop((f, w));

    // The unmount says the store failed: exit status, log, lock file.
    m.stop_failed();

    // Healed (the file put back as it was), the remount has everything acknowledged.
    fs::write(&seg_path, &saved).unwrap();
    m.start().unwrap();
    assert_eq!(fs::read(m.path("a")).unwrap(), a, "{backend}: a after the remount");
    assert_eq!(fs::read(m.path("b")).unwrap(), b, "{backend}: b after the remount");
    assert_eq!(fs::read(m.path("new")).map_err(|e| e.kind()).err(), Some(ErrorKind::NotFound));
    fs::write(m.path("works-again"), b"yes").unwrap();
    fs::File::open(m.path("works-again")).unwrap().sync_all().unwrap();
}

#[test]
fn a_segment_cut_short_is_eio_with_the_mmap_backend() {
    a_segment_cut_short("mmap");
}

#[test]
fn a_segment_cut_short_is_eio_with_the_pread_backend() {
    a_segment_cut_short("pread");
}

#[test]
fn a_segment_cut_short_is_eio_with_the_direct_backend() {
    a_segment_cut_short("direct");
}

#[test]
fn a_segment_cut_short_is_eio_with_the_vm_backend() {
    a_segment_cut_short("vm");
}
