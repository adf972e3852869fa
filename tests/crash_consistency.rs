//! Nothing that returned is lost: after a clean unmount, and after `kill -9` of the daemon at
//! a random moment, a remount shows every write that returned and every namespace change that
//! returned (compared with an in-memory model), and the store mounts without repair. The
//! journal limit is tiny, so checkpoints (and kills in the middle of one) happen all the time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Mounted, Rng};

#[derive(Clone, Default, PartialEq, Debug)]
struct Model {
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeSet<String>,
}

#[derive(Clone, Debug)]
enum Op {
    Write { path: String, off: usize, data: Vec<u8> },
    Truncate { path: String, len: usize },
    Unlink { path: String },
    Rename { from: String, to: String },
    Fsync { path: String },
    Mkdir { path: String },
    Rmdir { path: String },
    Punch { path: String, off: usize, len: usize },
    Exchange { a: String, b: String },
}

const FILES: &[&str] = &["f0", "f1", "f2", "f3", "f4", "f5", "d0/f0", "d0/f1", "d0/f2", "d1/f0", "d1/f1", "d1/f2"];
const EMPTY_DIRS: &[&str] = &["e0", "e1", "d0/e2"];

impl Model {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Write { path, off, data } => {
                let f = self.files.entry(path.clone()).or_default();
                if f.len() < off + data.len() {
                    f.resize(off + data.len(), 0);
                }
                f[*off..off + data.len()].copy_from_slice(data);
            }
            Op::Truncate { path, len } => self.files.get_mut(path).unwrap().resize(*len, 0),
            Op::Unlink { path } => {
                self.files.remove(path);
            }
            Op::Rename { from, to } => {
                let d = self.files.remove(from).unwrap();
                self.files.insert(to.clone(), d);
            }
            Op::Fsync { .. } => {}
            Op::Mkdir { path } => {
                self.dirs.insert(path.clone());
            }
            Op::Rmdir { path } => {
                self.dirs.remove(path);
            }
            Op::Punch { path, off, len } => {
                let f = self.files.get_mut(path).unwrap();
                let end = (off + len).min(f.len());
                if *off < end {
                    f[*off..end].fill(0);
                }
            }
            Op::Exchange { a, b } => {
                let (x, y) = (self.files.remove(a).unwrap(), self.files.remove(b).unwrap());
                self.files.insert(a.clone(), y);
                self.files.insert(b.clone(), x);
            }
        }
    }

    fn random_op(&self, rng: &mut Rng) -> Op {
        let pick = |rng: &mut Rng, v: &[&str]| v[rng.below(v.len() as u64) as usize].to_string();
        let existing: Vec<&String> = self.files.keys().collect();
        let any_existing = |rng: &mut Rng| existing[rng.below(existing.len() as u64) as usize].clone();
        match rng.below(100) {
            0..=54 => {
                let path = pick(rng, FILES);
                let off = rng.below(1 << 21) as usize;
                let max = if rng.below(4) == 0 { 300_000 } else { 5000 };
                let len = 1 + rng.below(max) as usize;
                let mut data = vec![0u8; len];
                rng.fill(&mut data);
                Op::Write { path, off, data }
            }
            55..=64 if !existing.is_empty() => {
                Op::Truncate { path: any_existing(rng), len: rng.below(1 << 21) as usize }
            }
            65..=72 if !existing.is_empty() => Op::Unlink { path: any_existing(rng) },
            73..=82 if !existing.is_empty() => Op::Rename { from: any_existing(rng), to: pick(rng, FILES) },
            83..=86 if !existing.is_empty() => Op::Fsync { path: any_existing(rng) },
            87..=89 if !existing.is_empty() => Op::Punch {
                path: any_existing(rng),
                off: rng.below(1 << 21) as usize,
                len: 1 + rng.below(300_000) as usize,
            },
            90..=92 if existing.len() >= 2 => {
                let a = any_existing(rng);
                let b = any_existing(rng);
                if a == b { Op::Fsync { path: a } } else { Op::Exchange { a, b } }
            }
            93..=96 => {
                let p = pick(rng, EMPTY_DIRS);
                if self.dirs.contains(&p) { Op::Rmdir { path: p } } else { Op::Mkdir { path: p } }
            }
            _ => Op::Fsync { path: pick(rng, FILES) },
        }
    }
}

fn run_op(root: &Path, op: &Op, model: &Model) -> std::io::Result<()> {
    match op {
        Op::Write { path, off, data } => {
            let f = OpenOptions::new().write(true).create(true).truncate(false).open(root.join(path))?;
            f.write_all_at(data, *off as u64)
        }
        Op::Truncate { path, len } => OpenOptions::new().write(true).open(root.join(path))?.set_len(*len as u64),
        Op::Unlink { path } => fs::remove_file(root.join(path)),
        Op::Rename { from, to } => fs::rename(root.join(from), root.join(to)),
        Op::Fsync { path } => {
            if model.files.contains_key(path) {
                OpenOptions::new().write(true).open(root.join(path))?.sync_all()
            } else {
                // fsyncdir of the parent (root when there is no slash).
                let parent = Path::new(path).parent().map(|p| root.join(p)).unwrap_or(root.to_path_buf());
                fs::File::open(parent)?.sync_all()
            }
        }
        Op::Punch { path, off, len } => {
            use std::os::unix::io::AsRawFd;
            let f = OpenOptions::new().write(true).open(root.join(path))?;
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            // SAFETY: a plain syscall on an open descriptor.
            match unsafe { libc::fallocate(f.as_raw_fd(), mode, *off as i64, *len as i64) } {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        }
        Op::Exchange { a, b } => {
            let (ca, cb) = (common::cstr(&root.join(a)), common::cstr(&root.join(b)));
            // SAFETY: valid C strings.
            match unsafe {
                libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE)
            } {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        }
        Op::Mkdir { path } => fs::create_dir(root.join(path)),
        Op::Rmdir { path } => fs::remove_dir(root.join(path)),
    }
}

/// What is on the mount, in model form.
fn observe(root: &Path) -> Model {
    let mut m = Model::default();
    for dir in ["", "d0", "d1"] {
        for e in fs::read_dir(root.join(dir)).unwrap() {
            let e = e.unwrap();
            let name = if dir.is_empty() {
                e.file_name().into_string().unwrap()
            } else {
                format!("{dir}/{}", e.file_name().into_string().unwrap())
            };
            if e.file_type().unwrap().is_dir() {
                if name != "d0" && name != "d1" {
                    m.dirs.insert(name);
                }
            } else {
                m.files.insert(name, fs::read(e.path()).unwrap());
            }
        }
    }
    m
}

/// The state after a crash must be the model, or — for the one operation in flight when the
/// daemon died — the model with that operation applied, possibly only in part for a write.
fn check(seen: &Model, before: &Model, inflight: Option<&Op>, round: usize) {
    if seen == before {
        return;
    }
    let Some(op) = inflight else {
        panic!("round {round}: state differs from the model with no operation in flight:\n{}", diff(seen, before));
    };
    let mut after = before.clone();
    after.apply(op);
    if *seen == after {
        return;
    }
    if let Op::Write { path, .. } | Op::Punch { path, .. } = op {
        // A write cut short by the kill (the kernel may have sent part of it as separate
        // requests): every byte is old or new, the size between the old and the new one.
        let mut others_seen = seen.clone();
        let mut others_before = before.clone();
        let got = others_seen.files.remove(path);
        let old = others_before.files.remove(path);
        let new = after.files.get(path).cloned();
        assert!(others_seen == others_before, "round {round}: a write in flight changed other files");
        let got = got.unwrap_or_default();
        let old = old.unwrap_or_default();
        let new = new.unwrap_or_default();
        let (lo, hi) = (old.len().min(new.len()), old.len().max(new.len()));
        assert!((lo..=hi).contains(&got.len()), "round {round}: size {} outside {lo}..={hi}", got.len());
        for (i, b) in got.iter().enumerate() {
            let o = old.get(i).copied().unwrap_or(0);
            let n = new.get(i).copied().unwrap_or(0);
            assert!(*b == o || *b == n, "round {round}: byte {i} of {path} is neither old nor new");
        }
        return;
    }
    panic!("round {round}: state is neither before nor after {op:?}:\n{}", diff(seen, before));
}

fn diff(seen: &Model, want: &Model) -> String {
    let mut s = String::new();
    for (k, v) in &want.files {
        match seen.files.get(k) {
            None => s += &format!("missing file {k}\n"),
            Some(g) if g != v => s += &format!("{k}: {} bytes, want {}\n", g.len(), v.len()),
            _ => {}
        }
    }
    for k in seen.files.keys().filter(|k| !want.files.contains_key(*k)) {
        s += &format!("unexpected file {k}\n");
    }
    if seen.dirs != want.dirs {
        s += &format!("dirs {:?}, want {:?}\n", seen.dirs, want.dirs);
    }
    s
}

#[test]
fn survives_kill_9_at_random_moments() {
    let mut m = Mounted::new(&["--journal-limit", "64K", "--segment-size", "4M"]);
    let mut rng = common::seeded_rng();
    fs::create_dir(m.path("d0")).unwrap();
    fs::create_dir(m.path("d1")).unwrap();
    let mut model = Model::default();
    let rounds = 30;
    for round in 0..rounds {
        let killed = Arc::new(AtomicBool::new(false));
        let pid = m.pid();
        let delay = Duration::from_millis(5 + rng.below(250));
        let k = killed.clone();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            k.store(true, Ordering::SeqCst);
            // SAFETY: kill(2) of the daemon we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        });
        let mut done = 0;
        let inflight = loop {
            let op = model.random_op(&mut rng);
            match run_op(&m.mnt, &op, &model) {
                Ok(()) => {
                    model.apply(&op);
                    done += 1;
                }
                Err(e) => {
                    assert!(killed.load(Ordering::SeqCst), "round {round}: {op:?} failed while the daemon lived: {e}");
                    break Some(op);
                }
            }
        };
        killer.join().unwrap();
        m.kill9();
        m.start().unwrap_or_else(|e| panic!("round {round}: remount after kill -9 failed: {e}"));
        let seen = observe(&m.mnt);
        check(&seen, &model, inflight.as_ref(), round);
        model = seen; // adopt the outcome of the op in flight
        eprintln!("round {round}: {done} operations, then kill -9; all there");
    }
    // A final clean restart keeps everything as well.
    m.restart();
    assert!(observe(&m.mnt) == model);
}

#[test]
fn clean_remount_keeps_everything() {
    let mut m = Mounted::new(&[]);
    let mut rng = common::seeded_rng();
    fs::create_dir(m.path("d0")).unwrap();
    fs::create_dir(m.path("d1")).unwrap();
    let mut model = Model::default();
    for _ in 0..400 {
        let op = model.random_op(&mut rng);
        run_op(&m.mnt, &op, &model).unwrap();
        model.apply(&op);
    }
    let attrs_before: Vec<_> = model.files.keys().map(|k| fs::metadata(m.path(k)).unwrap()).collect();
    m.restart();
    assert!(observe(&m.mnt) == model, "{}", diff(&observe(&m.mnt), &model));
    use std::os::unix::fs::MetadataExt;
    for (k, before) in model.files.keys().zip(attrs_before) {
        let after = fs::metadata(m.path(k)).unwrap();
        assert_eq!(
            (after.mode(), after.mtime(), after.mtime_nsec(), after.ino()),
            (before.mode(), before.mtime(), before.mtime_nsec(), before.ino()),
            "{k}"
        );
    }
    // The journal was folded into a checkpoint by the clean unmount.
    let journal: u64 = fs::read_dir(m.store.join("meta"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("journal-"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(journal < 4096, "journal holds {journal} bytes after a clean unmount");
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
