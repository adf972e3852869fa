//! Store tests below FUSE: the API the adapter calls, on a real store in a temp directory.

use std::sync::atomic::Ordering;

use super::backend::{Backend, Tuning};
use super::format::read_superblock;
use super::meta::Kind;
use super::*;

fn opts(segment: u64, capacity: u64) -> OpenOptions {
    OpenOptions { format: FormatOptions { segment_size: segment, capacity }, ..OpenOptions::default() }
}

fn file(s: &Store, parent: Ino, name: &str) -> Ino {
    s.create(parent, name.as_bytes(), Kind::File, 0o644, 0, 0, 0, b"").unwrap().ino
}

fn read_all(s: &Store, ino: Ino) -> Vec<u8> {
    let size = s.getattr(ino).unwrap().size;
    s.read(ino, 0, size as u32, |b| b.to_vec()).unwrap()
}

#[test]
fn fsync_msyncs_exactly_the_files_dirty_ranges() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts(1 << 20, 8 << 20)).unwrap();
    let a = file(&s, ROOT, "a");
    let b = file(&s, ROOT, "b");
    s.write(a, 0, &vec![1u8; 3 * 4096]).unwrap();
    s.write(b, 0, &vec![2u8; 50 * 4096]).unwrap();
    let c = &s.counters;
    s.fsync(a).unwrap();
    assert_eq!(c.msync_bytes.load(Ordering::Relaxed), 3 * 4096, "only a's three blocks");
    // A second fsync with nothing dirty syncs nothing.
    s.fsync(a).unwrap();
    assert_eq!(c.msync_bytes.load(Ordering::Relaxed), 3 * 4096);
    // An overwrite of one block in the middle dirties just that block.
    s.write(a, 4096 + 10, b"xy").unwrap();
    s.fsync(a).unwrap();
    assert_eq!(c.msync_bytes.load(Ordering::Relaxed), 4 * 4096);
    s.fsync(b).unwrap();
    assert_eq!(c.msync_bytes.load(Ordering::Relaxed), 54 * 4096);
    // Scattered writes to new blocks: one msync per segment however many ranges (the others
    // are written with sync_file_range and made durable by that msync's commit and flush).
    assert!(s.batch_sync, "the test directory is expected on ext4 or XFS");
    let calls = c.msync_calls.load(Ordering::Relaxed);
    for i in (50..100).step_by(2) {
        s.write(b, i * 4096, b"scattered").unwrap();
    }
    s.fsync(b).unwrap();
    assert_eq!(c.msync_calls.load(Ordering::Relaxed), calls + 1);
    assert_eq!(c.msync_bytes.load(Ordering::Relaxed), 54 * 4096 + 25 * 4096);
    // Scattered overwrites of blocks synced before ("settled"): no metadata to commit, so no
    // msync at all; the journal's fdatasync is the device cache flush that makes them durable.
    let journal_syncs = s.journal.syncs.load(Ordering::Relaxed);
    for i in (0..100).step_by(2) {
        s.write(b, i * 4096, b"settled").unwrap();
    }
    s.fsync(b).unwrap();
    assert_eq!(c.msync_calls.load(Ordering::Relaxed), calls + 1);
    assert_eq!(c.msync_bytes.load(Ordering::Relaxed), 54 * 4096 + 25 * 4096 + 50 * 4096);
    assert_eq!(s.journal.syncs.load(Ordering::Relaxed), journal_syncs + 1);
    assert!(s.read(b, 98 * 4096, 7, |d| d == b"settled").unwrap());
}

/// Blocks written and committed before a remount are settled after it (FIEMAP): their
/// overwrite needs no msync, only the journal's flush. Blocks still unwritten are not.
#[test]
fn blocks_written_before_a_remount_stay_settled() {
    let d = tempfile::tempdir().unwrap();
    let o = opts(1 << 20, 8 << 20);
    let a = {
        let s = Store::open(d.path(), o).unwrap();
        let a = file(&s, ROOT, "a");
        s.write(a, 0, &vec![1u8; 8 * 4096]).unwrap();
        s.fsync(a).unwrap();
        s.close().unwrap();
        a
    };
    let s = Store::open(d.path(), o).unwrap();
    assert!(s.batch_sync, "the test directory is expected on ext4 or XFS");
    let c = &s.counters;
    let calls = c.msync_calls.load(Ordering::Relaxed);
    s.write(a, 4096 + 3, b"again").unwrap();
    s.fsync(a).unwrap();
    assert_eq!(c.msync_calls.load(Ordering::Relaxed), calls, "an overwrite of blocks written before the remount");
    // Growing into blocks the segment has only reserved (unwritten) still commits them.
    s.write(a, 8 * 4096, &vec![2u8; 4096]).unwrap();
    s.fsync(a).unwrap();
    assert_eq!(c.msync_calls.load(Ordering::Relaxed), calls + 1, "new blocks");
    assert!(s.read(a, 4096, 8, |b| b == b"\x01\x01\x01again").unwrap());
}

#[test]
fn pread_backend_store() {
    let d = tempfile::tempdir().unwrap();
    let o = OpenOptions { tuning: Tuning { backend: Backend::Pread, ..Tuning::default() }, ..opts(1 << 20, 8 << 20) };
    let (a, data) = {
        let s = Store::open(d.path(), o).unwrap();
        let a = file(&s, ROOT, "a");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        s.write(a, 1000, &data).unwrap();
        s.fsync(a).unwrap();
        // Three segments touched, one fdatasync each.
        assert_eq!(s.counters.msync_calls.load(Ordering::Relaxed), 3);
        assert_eq!(s.usage().1, None, "no mapping, no residency figure");
        assert!(s.read(a, 1000, 3_000_000, |b| b == &data[..]).unwrap());
        (a, data)
    };
    // The same store through the mmap backend.
    let s = Store::open(d.path(), opts(1 << 20, 8 << 20)).unwrap();
    assert!(s.read(a, 1000, 3_000_000, |b| b == &data[..]).unwrap());
    assert!(s.read(a, 0, 1000, |b| b.iter().all(|&x| x == 0)).unwrap());
}

#[test]
fn state_survives_reopen_after_checkpoint_and_replay() {
    let d = tempfile::tempdir().unwrap();
    let o = OpenOptions { journal_limit: 4096, ..opts(1 << 20, 64 << 20) };
    let (a, sub) = {
        let s = Store::open(d.path(), o).unwrap();
        let sub = s.create(ROOT, b"sub", Kind::Dir, 0o755, 0, 0, 0, b"").unwrap().ino;
        let a = file(&s, sub, "a");
        for i in 0..200u64 {
            s.write(a, i * 5000, &i.to_le_bytes()).unwrap();
            file(&s, ROOT, &format!("f{i}"));
            // As the daemon's checkpoint thread does once the journal outgrows its budget.
            if i % 50 == 49 {
                s.checkpoint_background().unwrap();
            }
        }
        for i in 0..100 {
            s.unlink(ROOT, format!("f{i}").as_bytes(), false).unwrap();
        }
        s.rename(sub, b"a", ROOT, b"moved", false).unwrap();
        s.truncate(a, 600_000).unwrap();
        (a, sub)
        // Dropped without close(): like a crash, the journal tail must be replayed.
    };
    let s = Store::open(d.path(), o).unwrap();
    assert_eq!(s.lookup(ROOT, b"moved").unwrap().ino, a);
    assert!(matches!(s.lookup(sub, b"a"), Err(Error::NotFound)));
    let data = read_all(&s, a);
    assert_eq!(data.len(), 600_000);
    for i in 0..120u64 {
        let off = (i * 5000) as usize;
        assert_eq!(&data[off..off + 8], &i.to_le_bytes(), "record {i}");
    }
    let mut names = 0;
    s.readdir(ROOT, 0, |_, _, _, _| {
        names += 1;
        false
    })
    .unwrap();
    assert_eq!(names, 2 + 100 + 2, ". .. f100..f199 sub moved");
}

#[test]
fn enospc_is_clean_and_space_is_reused() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts(1 << 20, 2 << 20)).unwrap();
    let a = file(&s, ROOT, "a");
    s.write(a, 0, &vec![9u8; 2 << 20]).unwrap();
    let b = file(&s, ROOT, "b");
    assert!(matches!(s.write(b, 0, b"x"), Err(Error::NoSpace)));
    assert_eq!(s.getattr(b).unwrap().size, 0, "a failed write changes nothing");
    // A write that needs more than is left allocates nothing.
    s.truncate(a, (2 << 20) - 8192).unwrap();
    assert!(matches!(s.write(b, 0, &vec![1u8; 3 * 4096]), Err(Error::NoSpace)));
    assert_eq!(s.statfs().free_blocks, 2);
    s.write(b, 0, &vec![1u8; 2 * 4096]).unwrap();
    assert_eq!(s.statfs().free_blocks, 0);
    assert!(read_all(&s, a).iter().all(|&x| x == 9));
}

#[test]
fn reads_of_holes_and_partial_blocks() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts(1 << 20, 8 << 20)).unwrap();
    let a = file(&s, ROOT, "a");
    s.write(a, 10_000, b"abc").unwrap();
    let data = read_all(&s, a);
    assert_eq!(data.len(), 10_003);
    assert!(data[..10_000].iter().all(|&b| b == 0));
    assert_eq!(s.getattr(a).unwrap().blocks, 1);
    // A read that spans a hole and a block, starting inside the hole.
    let got = s.read(a, 4000, 7000, |b| b.to_vec()).unwrap();
    assert_eq!(got.len(), 6003);
    assert_eq!(&got[6000..], b"abc");
}

#[test]
fn reused_blocks_never_show_old_bytes() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts(1 << 20, 1 << 20)).unwrap();
    let a = file(&s, ROOT, "a");
    s.write(a, 0, &vec![0xff; 1 << 20]).unwrap();
    s.truncate(a, 0).unwrap();
    // Every block now free held 0xff; new partial writes must not expose any of it.
    let b = file(&s, ROOT, "b");
    s.write(b, 100, b"z").unwrap();
    assert_eq!(read_all(&s, b)[..100], [0u8; 100]);
    s.truncate(b, 4096).unwrap();
    assert!(read_all(&s, b)[101..].iter().all(|&x| x == 0));
    let c = file(&s, ROOT, "c");
    // Into a hole inside the file: the rest of the new block is file content, so it must be zero.
    s.truncate(c, 3 * 4096).unwrap();
    s.write(c, 5000, &[7u8; 10]).unwrap();
    let data = read_all(&s, c);
    assert!(data[..5000].iter().chain(&data[5010..]).all(|&x| x == 0));
}

#[test]
fn open_unlinked_file_lives_until_release() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts(1 << 20, 8 << 20)).unwrap();
    let a = file(&s, ROOT, "a");
    s.write(a, 0, &vec![3u8; 1 << 20]).unwrap();
    let free = s.statfs().free_blocks;
    s.open_file(a).unwrap();
    s.unlink(ROOT, b"a", false).unwrap();
    assert_eq!(read_all(&s, a).len(), 1 << 20);
    assert_eq!(s.statfs().free_blocks, free);
    s.release(a).unwrap();
    assert_eq!(s.statfs().free_blocks, free + 256);
}

#[test]
fn concurrent_writers_on_different_files() {
    let d = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(Store::open(d.path(), opts(1 << 20, 64 << 20)).unwrap());
    let inos: Vec<Ino> = (0..4).map(|i| file(&s, ROOT, &format!("t{i}"))).collect();
    std::thread::scope(|sc| {
        for (t, &ino) in inos.iter().enumerate() {
            let s = &s;
            sc.spawn(move || {
                for i in 0..500u64 {
                    s.write(ino, i * 4096, &[t as u8 + 1; 4096]).unwrap();
                }
            });
        }
    });
    for (t, &ino) in inos.iter().enumerate() {
        let data = read_all(&s, ino);
        assert_eq!(data.len(), 500 * 4096);
        assert!(data.iter().all(|&b| b == t as u8 + 1));
    }
}

#[test]
fn hard_link_limit_is_emlink() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts(1 << 20, 8 << 20)).unwrap();
    let a = file(&s, ROOT, "a");
    for i in 1..namespace::LINK_MAX {
        s.link(a, ROOT, format!("l{i}").as_bytes()).unwrap();
    }
    assert_eq!(s.getattr(a).unwrap().nlink, namespace::LINK_MAX);
    assert!(matches!(s.link(a, ROOT, b"one-too-many"), Err(Error::TooManyLinks)));
    let dir = s.create(ROOT, b"d", Kind::Dir, 0o755, 0, 0, 0, b"").unwrap().ino;
    assert!(matches!(s.link(dir, ROOT, b"dirlink"), Err(Error::NotPermitted)));
}

/// With meta/ on another filesystem than segments/, the journal's fdatasync cannot stand in
/// for the segments' device flush: fsync falls back to one msync per dirty range.
#[test]
fn meta_on_another_filesystem_msyncs_every_range() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    drop(Store::open(d.path(), opts(1 << 20, 8 << 20)).unwrap());
    let (meta, old) = (d.path().join("meta"), d.path().join("meta.old"));
    std::fs::rename(&meta, &old).unwrap();
    std::fs::create_dir(&meta).unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0700", "tmpfs"])
        .arg(&meta)
        .status()
        .unwrap();
    assert!(ok.success());
    let _guard = Unmount(meta.clone());
    for e in std::fs::read_dir(&old).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), meta.join(e.file_name())).unwrap();
    }
    let s = Store::open(d.path(), opts(1 << 20, 8 << 20)).unwrap();
    assert!(!s.batch_sync);
    let b = file(&s, ROOT, "b");
    s.write(b, 0, &vec![2u8; 20 * 4096]).unwrap();
    s.fsync(b).unwrap();
    let calls = s.counters.msync_calls.load(Ordering::Relaxed);
    for i in (0..20).step_by(2) {
        s.write(b, i * 4096, b"apart").unwrap();
    }
    s.fsync(b).unwrap();
    assert_eq!(s.counters.msync_calls.load(Ordering::Relaxed), calls + 10, "one msync per range");
    drop(s);
}

/// Zeroes written by fallocate, ZERO_RANGE and regrowth belong to the file's dirty ranges:
/// the fsync that makes the new block mapping durable must carry them to the disk too.
#[test]
fn zeroing_is_part_of_what_fsync_flushes() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts(1 << 20, 8 << 20)).unwrap();
    let c = &s.counters;
    let a = file(&s, ROOT, "a");
    s.fallocate(a, 0, 8 * 4096, 0).unwrap();
    s.fsync(a).unwrap();
    assert_eq!(c.msync_bytes.load(Ordering::Relaxed), 8 * 4096, "fallocate's zeroed blocks");
    let b = file(&s, ROOT, "b");
    s.write(b, 0, &[5u8; 3 * 4096]).unwrap();
    s.fsync(b).unwrap();
    let before = c.msync_bytes.load(Ordering::Relaxed);
    s.fallocate(b, 0, 2 * 4096, libc::FALLOC_FL_ZERO_RANGE).unwrap();
    s.fsync(b).unwrap();
    assert_eq!(c.msync_bytes.load(Ordering::Relaxed) - before, 2 * 4096, "ZERO_RANGE");
    // Shrink into a block, regrow: the exposed tail is zeroed, and that zeroing is flushed.
    s.truncate(b, 2 * 4096 + 100).unwrap();
    s.fsync(b).unwrap();
    let before = c.msync_bytes.load(Ordering::Relaxed);
    s.truncate(b, 3 * 4096).unwrap();
    s.fsync(b).unwrap();
    assert_eq!(c.msync_bytes.load(Ordering::Relaxed) - before, 4096, "regrowth");
    assert!(read_all(&s, b)[2 * 4096 + 100..].iter().all(|&x| x == 0));
}

/// A request the capacity cannot hold creates no segment file (nothing for the host to keep).
#[test]
fn huge_fallocate_leaves_the_host_untouched() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts(1 << 20, 64 << 20)).unwrap();
    let a = file(&s, ROOT, "a");
    assert!(matches!(s.fallocate(a, 0, 1 << 52, libc::FALLOC_FL_KEEP_SIZE), Err(Error::NoSpace)));
    assert!(matches!(s.fallocate(a, 0, (1 << 52) - 1, 0), Err(Error::NoSpace)));
    let segs: Vec<_> = std::fs::read_dir(d.path().join("segments")).unwrap().collect();
    assert!(segs.is_empty(), "{segs:?}");
    assert_eq!(s.getattr(a).unwrap().size, 0);
    s.write(a, 0, b"still works").unwrap();
}

/// A store with one byte of its checkpoint changed, or the checkpoint cut short, is refused
/// with nothing modified; the same for the superblock. Every byte, several values each.
#[test]
fn damaged_checkpoint_or_superblock_is_refused_untouched() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = Store::open(d.path(), opts(1 << 20, 8 << 20)).unwrap();
        let a = file(&s, ROOT, "a");
        s.write(a, 0, b"hello").unwrap();
        let dir = s.create(ROOT, b"dir", Kind::Dir, 0o755, 0, 0, 0, b"").unwrap().ino;
        s.create(dir, b"link", Kind::Symlink, 0o777, 0, 0, 0, b"../a").unwrap();
        s.setxattr(a, b"user.k", b"v", false, false).unwrap();
        s.close().unwrap();
    }
    let snapshot = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v = Vec::new();
        for sub in ["", "meta"] {
            for e in std::fs::read_dir(dir.join(sub)).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_file() {
                    v.push((format!("{sub}/{}", e.file_name().to_string_lossy()), std::fs::read(e.path()).unwrap()));
                }
            }
        }
        v.sort();
        v
    };
    let mut rng = crate::rng::Rng::new(0xC0FFEE);
    for name in ["meta/checkpoint", "superblock"] {
        let path = d.path().join(name);
        let orig = std::fs::read(&path).unwrap();
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for i in 0..orig.len() {
            let mut m = orig.clone();
            m[i] ^= (rng.below(255) + 1) as u8;
            cases.push(m);
        }
        for cut in 0..orig.len() {
            cases.push(orig[..cut].to_vec());
        }
        for m in cases {
            std::fs::write(&path, &m).unwrap();
            let before = snapshot(d.path());
            let r = Store::open(d.path(), opts(1 << 20, 8 << 20));
            assert!(r.is_err(), "{name} damaged ({} bytes) was accepted", m.len());
            assert!(before == snapshot(d.path()), "{name}: a refused store was modified");
        }
        std::fs::write(&path, &orig).unwrap();
    }
    let s = Store::open(d.path(), opts(1 << 20, 8 << 20)).unwrap();
    let a = s.lookup(ROOT, b"a").unwrap().ino;
    assert_eq!(read_all(&s, a), b"hello");
}

/// fsck of a healthy store with links, directories, an orphan and a torn journal tail.
#[test]
fn fsck_reports_a_healthy_store_clean_and_finds_damage() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = Store::open(d.path(), opts(1 << 20, 8 << 20)).unwrap();
        let a = file(&s, ROOT, "a");
        s.write(a, 0, &[1u8; 10_000]).unwrap();
        let dir = s.create(ROOT, b"d", Kind::Dir, 0o755, 0, 0, 0, b"").unwrap().ino;
        s.link(a, dir, b"a2").unwrap();
        let o = file(&s, dir, "open-unlinked");
        s.open_file(o).unwrap();
        s.unlink(dir, b"open-unlinked", false).unwrap();
        // Dropped without close: like a crash, the orphan and the journal records remain.
    }
    let r = fsck::check(d.path()).unwrap();
    assert!(r.clean(), "{r:?}");
    assert_eq!((r.files, r.directories, r.orphans), (2, 2, 1), "{r:?}");
    assert_eq!(r.used_bytes, 3 * 4096);
    // A torn tail is a note, not damage.
    let j = journal::list(&d.path().join("meta")).unwrap().pop().unwrap().1;
    let mut f = std::fs::OpenOptions::new().append(true).open(&j).unwrap();
    std::io::Write::write_all(&mut f, &[1, 2, 3]).unwrap();
    let r = fsck::check(d.path()).unwrap();
    assert!(r.clean() && r.notes.iter().any(|n| n.contains("cut short")), "{r:?}");
    // A mounted store cannot be checked.
    let s = Store::open(d.path(), opts(1 << 20, 8 << 20)).unwrap();
    assert!(fsck::check(d.path()).unwrap_err().0.contains("in use"));
    drop(s);
    // Damage: a flipped byte in the checkpoint.
    let cp = d.path().join("meta/checkpoint");
    let mut b = std::fs::read(&cp).unwrap();
    b[40] ^= 1;
    std::fs::write(&cp, &b).unwrap();
    let r = fsck::check(d.path()).unwrap();
    assert!(!r.clean() && r.problems[0].contains("checksum"), "{r:?}");
}

/// Deleted data goes back to the host (punched segment space), is reserved again before it
/// is reused, and reads and writes there work as before.
#[test]
fn freed_space_goes_back_to_the_host_and_is_reserved_before_reuse() {
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), opts(4 << 20, 16 << 20)).unwrap();
    let disk = || -> u64 {
        std::fs::read_dir(d.path().join("segments"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
            .sum()
    };
    let a = file(&s, ROOT, "a");
    s.write(a, 0, &vec![7u8; 12 << 20]).unwrap();
    s.fsync(a).unwrap();
    assert!(disk() >= 12 << 20);
    s.unlink(ROOT, b"a", false).unwrap();
    let given = s.reclaim().unwrap();
    assert_eq!(given, 12 << 20, "the three segments the file filled");
    assert!(disk() < 1 << 20, "segments still hold {} bytes", disk());
    assert_eq!(s.reclaim().unwrap(), 0, "nothing freed since");
    // Reuse: the space is reserved again, and the new file reads what it wrote, not zeros
    // or the old bytes.
    let b = file(&s, ROOT, "b");
    s.write(b, 0, &vec![9u8; 6 << 20]).unwrap();
    assert!(disk() >= 6 << 20, "reserved again: {}", disk());
    s.fsync(b).unwrap();
    assert!(read_all(&s, b).iter().all(|&x| x == 9));
    let c = file(&s, ROOT, "c");
    s.fallocate(c, 0, 1 << 20, 0).unwrap();
    assert!(read_all(&s, c).iter().all(|&x| x == 0));
    drop(s);
    // After a remount every free block is treated as unreserved, and reserved on use.
    let s = Store::open(d.path(), opts(4 << 20, 16 << 20)).unwrap();
    let e = file(&s, ROOT, "e");
    s.write(e, 0, &vec![3u8; 8 << 20]).unwrap();
    assert!(read_all(&s, e).iter().all(|&x| x == 3));
    assert!(read_all(&s, s.lookup(ROOT, b"b").unwrap().ino).iter().all(|&x| x == 9));
}

/// A format-1 or format-2 store (old superblock version, old journal framing) mounts with
/// everything in it, and is upgraded: its superblock says 3 and new records go to a format-3
/// journal file.
#[test]
fn format_1_and_2_stores_are_read_and_upgraded() {
    for version in [1u8, 2] {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path(), opts(1 << 20, 8 << 20)).unwrap();
            let a = file(&s, ROOT, "a");
            s.write(a, 0, b"from an old format").unwrap();
            // Dropped without close: the records stay in the journal.
        }
        let mut sb = read_superblock(d.path()).unwrap();
        sb.version = version as u32;
        std::fs::write(d.path().join("superblock"), sb.encode()).unwrap();
        let files = journal::list(&d.path().join("meta")).unwrap();
        assert_eq!(files.len(), 1);
        journal::rewrite_as_old(&files[0].1, version);
        let s = Store::open(d.path(), opts(1 << 20, 8 << 20)).unwrap();
        assert_eq!(read_superblock(d.path()).unwrap().version, superblock::VERSION);
        let a = s.lookup(ROOT, b"a").unwrap().ino;
        assert_eq!(read_all(&s, a), b"from an old format", "format {version}");
        file(&s, ROOT, "b");
        drop(s);
        let files = journal::list(&d.path().join("meta")).unwrap();
        assert_eq!(files.len(), 2, "a format-3 file after the old one");
        assert_eq!(&std::fs::read(&files[1].1).unwrap()[..8], b"MMAPFSJ3");
        let s = Store::open(d.path(), opts(1 << 20, 8 << 20)).unwrap();
        assert!(s.lookup(ROOT, b"b").is_ok());
        s.close().unwrap();
        drop(s);
        assert!(fsck::check(d.path()).unwrap().clean());
    }
}

/// Every live inode of `table` (freed ones wait only for the kernel to forget them) encoded
/// as a checkpoint holds it, by inode number, with the three
/// times zeroed: data writes change times in memory that are journaled only at release or
/// fsync, so only the rest must agree between the live store and its files.
fn image(table: &table::Table) -> Vec<(Ino, Vec<u8>)> {
    // ino u64, kind u8, perm u16, uid, gid, nlink, rdev u32, size u64: the times follow.
    const TIMES: std::ops::Range<usize> = 35..71;
    let mut v: Vec<(Ino, Vec<u8>)> = table
        .nodes()
        .iter()
        .filter(|n| !rd(n).freed)
        .map(|n| {
            let mut e = codec::Enc::default();
            checkpoint::encode_inode(&mut e, &rd(n));
            e.buf[TIMES].fill(0);
            (n.ino, e.buf)
        })
        .collect();
    v.sort();
    v
}

/// A background checkpoint taken while requests go on is exactly what a mount rebuilds: the
/// store's files (merged checkpoint + the journal after it) load to the live state, through
/// every kind of op, with checkpoints racing the workload from another thread.
#[test]
fn background_checkpoints_racing_requests_rebuild_the_live_state() {
    let d = tempfile::tempdir().unwrap();
    let o = OpenOptions { journal_limit: 8192, ..opts(1 << 20, 64 << 20) };
    let s = std::sync::Arc::new(Store::open(d.path(), o).unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bg = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut merged = 0;
            while !stop.load(Ordering::Relaxed) {
                merged += s.checkpoint_background().unwrap();
            }
            merged
        })
    };
    let mut rng = crate::rng::Rng::new(42);
    let sub = s.create(ROOT, b"sub", Kind::Dir, 0o755, 0, 0, 0, b"").unwrap().ino;
    let mut files: Vec<(Ino, String)> = Vec::new();
    for i in 0..3000u64 {
        if i % 300 == 299 {
            // At least ten checkpoints interleave with the workload.
            let seen = s.counters.checkpoints.load(Ordering::Relaxed);
            while s.counters.checkpoints.load(Ordering::Relaxed) == seen {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        let name = format!("f{i}");
        match rng.below(10) {
            0..=2 => files.push((file(&s, if i % 2 == 0 { ROOT } else { sub }, &name), name)),
            3 if !files.is_empty() => {
                let (ino, _) = files[rng.below(files.len() as u64) as usize];
                s.write(ino, rng.below(200_000), &i.to_le_bytes()).unwrap();
            }
            4 if !files.is_empty() => {
                let (ino, _) = files[rng.below(files.len() as u64) as usize];
                s.truncate(ino, rng.below(100_000)).unwrap();
            }
            5 if files.len() > 1 => {
                let (ino, name) = files.swap_remove(rng.below(files.len() as u64) as usize);
                let parent = if s.lookup(ROOT, name.as_bytes()).is_ok() { ROOT } else { sub };
                if rng.below(2) == 0 {
                    s.unlink(parent, name.as_bytes(), false).unwrap();
                } else {
                    s.rename(parent, name.as_bytes(), sub, format!("r{i}").as_bytes(), false).unwrap();
                    files.push((ino, format!("r{i}")));
                }
            }
            6 if !files.is_empty() => {
                let (ino, _) = files[rng.below(files.len() as u64) as usize];
                s.link(ino, ROOT, format!("l{i}").as_bytes()).unwrap();
            }
            7 if !files.is_empty() => {
                let (ino, _) = files[rng.below(files.len() as u64) as usize];
                s.setxattr(ino, b"user.k", &i.to_le_bytes(), false, false).unwrap();
            }
            8 if !files.is_empty() => {
                let (ino, _) = files[rng.below(files.len() as u64) as usize];
                let _ = s.fallocate(ino, 0, 8192, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE);
            }
            _ => {
                s.create(sub, format!("d{i}").as_bytes(), Kind::Dir, 0o700, 0, 0, 0, b"").unwrap();
                s.create(ROOT, format!("s{i}").as_bytes(), Kind::Symlink, 0o777, 0, 0, 0, b"target").unwrap();
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let merged = bg.join().unwrap();
    assert!(merged > 1000, "the checkpoints merged {merged} records");
    assert!(s.counters.checkpoints.load(Ordering::Relaxed) > 2);
    let loaded = open::load(d.path()).unwrap();
    assert!(loaded.replayed.records < 3000, "the journal was cut: {} records to replay", loaded.replayed.records);
    let (a, b) = (image(&loaded.table), image(&s.table));
    let differ: Vec<_> = a.iter().zip(&b).filter(|(x, y)| x != y).map(|(x, y)| (x.0, y.0)).take(5).collect();
    assert!(differ.is_empty() && a.len() == b.len(), "{} vs {} inodes; differing: {differ:?}", a.len(), b.len());
    assert_eq!(loaded.next_ino, s.next_ino.load(Ordering::Relaxed));
}
