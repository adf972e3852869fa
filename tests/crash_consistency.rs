//! Nothing that returned is lost across a clean unmount: a remount shows every write and
//! namespace change (compared with the crash tests' model, `common/model.rs`), with the same
//! modes, times and inode numbers, and the journal folded into a checkpoint. An inode unlinked
//! while open is freed by the mount after a crash. (Crashes at random moments: `crash_torture.rs`.)

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::Mounted;
use common::model::{Model, brief, observe, run_op, shape};

#[test]
fn clean_remount_keeps_everything() {
    let mut m = Mounted::new(&[]);
    let mut rng = common::seeded_rng();
    fs::create_dir(m.path("e0")).unwrap();
    let mut model = Model::default();
    for _ in 0..400 {
        let op = model.random_op(&mut rng);
        run_op(&m.mnt, &op).unwrap_or_else(|e| panic!("{op:?}: {e}"));
        model.apply(&op);
    }
    let names = model.names();
    let attrs_before: Vec<_> = names.iter().map(|k| fs::metadata(m.path(k)).unwrap()).collect();
    m.restart();
    let seen = observe(&m.mnt);
    assert!(seen == shape(&model), "{}", brief(&seen, &model));
    for (k, before) in names.iter().zip(attrs_before) {
        let after = fs::metadata(m.path(k)).unwrap();
        assert_eq!(
            (after.mode(), after.mtime(), after.mtime_nsec(), after.ino()),
            (before.mode(), before.mtime(), before.mtime_nsec(), before.ino()),
            "{k}"
        );
    }
    // The journal was folded into a checkpoint by the clean unmount: its file holds a header
    // (36 bytes, the first record would start at 64) and zeros written ahead of records.
    let records: usize = fs::read_dir(m.store.join("meta"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("journal-"))
        .map(|e| fs::read(e.path()).unwrap().iter().skip(64).filter(|&&b| b != 0).count())
        .sum();
    assert_eq!(records, 0, "the journal holds {records} bytes of records after a clean unmount");
}

#[test]
fn open_unlinked_file_is_freed_after_a_crash() {
    let mut m = Mounted::new(&["--capacity", "64M", "--segment-size", "16M"]);
    fs::write(m.path("orphan"), vec![1u8; 20 << 20]).unwrap();
    let f = fs::File::open(m.path("orphan")).unwrap();
    fs::remove_file(m.path("orphan")).unwrap();
    m.kill9();
    drop(f);
    m.start().unwrap();
    // All 64 MiB are free again: the orphan's blocks were reclaimed at mount.
    fs::write(m.path("big"), vec![2u8; 60 << 20]).unwrap();
    assert!(m.log().contains("orphan"), "mount should report freeing the orphan");
}
