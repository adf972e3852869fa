//! One place owns I/O failure: when the store's own I/O fails — an msync, a journal write, a
//! journal sync, a segment creation, a checkpoint write, each injected through the daemon's
//! `MMAPFS_FAULTS` seam exactly where a failing device would make it fail — the client sees
//! the error, the store turns read-only-with-EIO for every later change (plain overwrites
//! included) and fsync until it is remounted, and the remount keeps everything that was
//! acknowledged before the failure (checked by `mmapfs fsck` and by reading it back).

mod common;

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;

use common::{Mounted, errno_of};

/// After the failure: every kind of change and fsync fails with EIO.
fn assert_sticky(m: &Mounted, existing: &str) {
    let f = OpenOptions::new().write(true).open(m.path(existing)).unwrap();
    assert_eq!(errno_of(f.write_at(b"overwrite", 0)), Some(libc::EIO), "a plain overwrite after the failure");
    assert_eq!(errno_of(f.sync_all()), Some(libc::EIO), "fsync after the failure");
    assert_eq!(errno_of(f.set_len(1)), Some(libc::EIO), "truncate after the failure");
    assert_eq!(errno_of(fs::write(m.path("new-after-failure"), b"x")), Some(libc::EIO), "create after the failure");
    assert_eq!(errno_of(fs::create_dir(m.path("dir-after-failure"))), Some(libc::EIO), "mkdir after the failure");
    assert_eq!(errno_of(f.sync_all()), Some(libc::EIO), "still failing");
    assert!(m.log().contains("refuses every further change"), "{}", m.log());
}

/// Remount without faults: fsck is clean and `want` (name, content) is all there.
fn remount_keeps(m: &mut Mounted, want: &[(&str, &[u8])]) {
    m.kill9();
    let (code, report) = common::fsck(&m.store);
    assert_eq!(code, 0, "fsck after the failure:\n{report}");
    m.env.clear();
    m.start().unwrap();
    for (name, data) in want {
        assert_eq!(&fs::read(m.path(name)).unwrap()[..], *data, "{name} after the remount");
    }
    assert_eq!(fs::read(m.path("new-after-failure")).map_err(|e| e.kind()).err(), Some(ErrorKind::NotFound));
    fs::write(m.path("works-again"), b"yes").unwrap();
    fs::File::open(m.path("works-again")).unwrap().sync_all().unwrap();
}

#[test]
fn a_failed_msync_is_reported_and_sticky() {
    // The first fsync's msync works, the second fails.
    let mut m = Mounted::with_env(&[], &[("MMAPFS_FAULTS", "msync=2")]);
    fs::write(m.path("synced"), b"made durable").unwrap();
    fs::File::open(m.path("synced")).unwrap().sync_all().unwrap();
    fs::write(m.path("written"), vec![7u8; 100_000]).unwrap();
    let f = OpenOptions::new().write(true).open(m.path("written")).unwrap();
    assert_eq!(errno_of(f.sync_all()), Some(libc::EIO), "the fsync whose msync failed");
    assert!(m.log().contains("injected fault: msync call 2"));
    assert_sticky(&m, "written");
    remount_keeps(&mut m, &[("synced", b"made durable"), ("written", &[7u8; 100_000])]);
}

#[test]
fn a_failed_journal_write_is_reported_and_sticky() {
    let mut m = Mounted::with_env(&[], &[("MMAPFS_FAULTS", "journal-write=12")]);
    fs::write(m.path("a"), b"first").unwrap();
    // Every create appends one record; one of them meets the failing append.
    let mut made = Vec::new();
    let err = loop {
        let name = format!("f{}", made.len());
        match fs::write(m.path(&name), b"") {
            Ok(()) => made.push(name),
            Err(e) => break e,
        }
        assert!(made.len() < 12, "the 12th append did not fail");
    };
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "the create whose record failed: {err}");
    assert_sticky(&m, "a");
    let mut want: Vec<(&str, &[u8])> = made.iter().map(|n| (n.as_str(), &b""[..])).collect();
    want.push(("a", b"first"));
    remount_keeps(&mut m, &want);
    assert!(!m.path(&format!("f{}", made.len())).exists(), "a create that failed is not there");
}

#[test]
fn a_failed_journal_sync_is_reported_and_sticky() {
    let mut m = Mounted::with_env(&[], &[("MMAPFS_FAULTS", "journal-sync=1")]);
    fs::write(m.path("a"), b"acknowledged").unwrap();
    assert_eq!(errno_of(fs::File::open(&m.mnt).unwrap().sync_all()), Some(libc::EIO), "fsync of the directory");
    assert_sticky(&m, "a");
    remount_keeps(&mut m, &[("a", b"acknowledged")]);
}

#[test]
fn a_failed_segment_creation_is_reported_sticky_and_leaves_nothing() {
    let mut m = Mounted::with_env(&["--segment-size", "1M"], &[("MMAPFS_FAULTS", "segment-create=2")]);
    fs::write(m.path("a"), vec![1u8; 1 << 20]).unwrap(); // fills segment 0
    fs::write(m.path("b"), b"").unwrap();
    let f = OpenOptions::new().write(true).open(m.path("b")).unwrap();
    assert_eq!(errno_of(f.write_at(b"needs segment 1", 0)), Some(libc::EIO));
    let segs: Vec<String> = fs::read_dir(m.store.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(segs, vec!["000000.seg"], "no new segment and no .seg.tmp left behind");
    assert_sticky(&m, "a");
    remount_keeps(&mut m, &[("a", &[1u8; 1 << 20]), ("b", b"")]);
}

#[test]
fn a_failed_checkpoint_write_is_sticky() {
    // A tiny journal limit makes the requests themselves trigger checkpoints.
    let mut m = Mounted::with_env(&["--journal-limit", "16K"], &[("MMAPFS_FAULTS", "checkpoint-write=1")]);
    let mut made = Vec::new();
    let err = loop {
        let name = format!("file-{:04}", made.len());
        match fs::write(m.path(&name), name.as_bytes()) {
            Ok(()) => made.push(name),
            Err(e) => break e,
        }
        assert!(made.len() < 10_000, "no checkpoint was attempted");
    };
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(m.log().contains("injected fault: checkpoint-write"), "{}", m.log());
    assert_sticky(&m, &made[0]);
    let want: Vec<(&str, &[u8])> = made.iter().map(|n| (n.as_str(), n.as_bytes())).collect();
    remount_keeps(&mut m, &want);
}

#[test]
fn a_malformed_fault_spec_is_refused() {
    let mut m = Mounted::new_stopped(&[]);
    m.env = vec![("MMAPFS_FAULTS".into(), "fsync=1".into())];
    let e = m.start().unwrap_err();
    assert!(e.contains("unknown fault point `fsync`"), "{e}");
}

/// A request that panics (a bug) is answered with EIO and leaves the store failed like an I/O
/// error: its state may be half changed. The daemon keeps serving reads.
#[test]
fn a_panicking_request_marks_the_store_failed() {
    let mut m = Mounted::with_env(&[], &[("MMAPFS_FAULTS", "write-panic=2")]);
    fs::write(m.path("a"), b"before").unwrap();
    let f = OpenOptions::new().write(true).open(m.path("a")).unwrap();
    assert_eq!(errno_of(f.write_at(b"boom", 0)), Some(libc::EIO), "the request that panicked");
    assert!(m.log().contains("injected panic"), "{}", m.log());
    assert_eq!(fs::read(m.path("a")).unwrap(), b"before", "reads still work");
    assert_sticky(&m, "a");
    remount_keeps(&mut m, &[("a", b"before")]);
}

/// An I/O error while a store is opened is reported as an I/O error naming the file, never
/// as damage: the read of the checkpoint fails (the first metadata read), then that of the
/// journal file after it (the second). Nothing is changed: fsck finds the store clean, and
/// the next mount without the fault has everything.
#[test]
fn an_io_error_while_opening_is_not_reported_as_damage() {
    let mut m = Mounted::new(&[]);
    fs::write(m.path("kept"), b"acknowledged").unwrap();
    m.kill9();
    for (n, file) in [(1, "checkpoint"), (2, "journal-")] {
        m.env = vec![("MMAPFS_FAULTS".into(), format!("meta-read={n}"))];
        let e = m.start().unwrap_err();
        let said = e.lines().rfind(|l| l.contains("mmapfs: error:")).unwrap_or_else(|| panic!("no error line: {e}"));
        assert!(said.contains("I/O error") && said.contains(file) && said.contains("os error 5"), "{said}");
        assert!(!said.contains("damaged"), "an I/O error reported as damage: {said}");
    }
    let (code, report) = common::fsck(&m.store);
    assert_eq!(code, 0, "{report}");
    m.env.clear();
    m.start().unwrap();
    assert_eq!(fs::read(m.path("kept")).unwrap(), b"acknowledged");
}
