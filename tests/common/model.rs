//! The reference model of the crash tests: one client's subtree (files with hard links,
//! xattrs and contents, directories), random operations on it — writes, stores through a shared
//! mapping + msync, truncates, punched holes, renames, exchanges, hard links, unlinks, xattrs,
//! file and directory fsyncs, mkdir/rmdir —, running them on a mount, and checking what a
//! mount shows against the model after a crash (the one operation in flight may or may not
//! have happened; a write in flight may have happened in part).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::Rng;

pub const NAMES: &[&str] = &["f0", "f1", "f2", "f3", "f4", "e0/f5", "e0/f6"];
pub const DIRS: &[&str] = &["e1", "e2"];
pub const XATTR: &str = "user.torture";

/// One client's view: names → inode tags, inode tags → content and xattr.
#[derive(Clone, Default, Debug, PartialEq)]
pub struct Model {
    names: BTreeMap<String, u32>,
    data: BTreeMap<u32, (Vec<u8>, Option<Vec<u8>>)>,
    dirs: BTreeSet<String>,
    next: u32,
}

#[derive(Clone)]
pub enum Op {
    Write {
        name: String,
        off: usize,
        data: Vec<u8>,
    },
    MapStore {
        name: String,
        off: usize,
        data: Vec<u8>,
    },
    Truncate {
        name: String,
        len: usize,
    },
    Punch {
        name: String,
        off: usize,
        len: usize,
    },
    Rename {
        from: String,
        to: String,
    },
    /// `renameat2(RENAME_EXCHANGE)`: the two names swap their inodes.
    Exchange {
        a: String,
        b: String,
    },
    Link {
        from: String,
        to: String,
    },
    Unlink {
        name: String,
    },
    SetXattr {
        name: String,
        value: Vec<u8>,
    },
    RemoveXattr {
        name: String,
    },
    Fsync {
        name: String,
    },
    FsyncDir,
    Mkdir {
        name: String,
    },
    Rmdir {
        name: String,
    },
}

/// Data as its length and checksum: a failure message must stay readable.
impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Write { name, off, data } => write!(f, "Write({name}, {off}, {} bytes)", data.len()),
            Op::MapStore { name, off, data } => write!(f, "MapStore({name}, {off}, {} bytes)", data.len()),
            Op::Truncate { name, len } => write!(f, "Truncate({name}, {len})"),
            Op::Punch { name, off, len } => write!(f, "Punch({name}, {off}, {len})"),
            Op::Rename { from, to } => write!(f, "Rename({from}, {to})"),
            Op::Exchange { a, b } => write!(f, "Exchange({a}, {b})"),
            Op::Link { from, to } => write!(f, "Link({from}, {to})"),
            Op::Unlink { name } => write!(f, "Unlink({name})"),
            Op::SetXattr { name, value } => write!(f, "SetXattr({name}, {} bytes)", value.len()),
            Op::RemoveXattr { name } => write!(f, "RemoveXattr({name})"),
            Op::Fsync { name } => write!(f, "Fsync({name})"),
            Op::FsyncDir => write!(f, "FsyncDir"),
            Op::Mkdir { name } => write!(f, "Mkdir({name})"),
            Op::Rmdir { name } => write!(f, "Rmdir({name})"),
        }
    }
}

impl Op {
    /// The file whose bytes an interrupted instance of this op may leave half old, half new.
    fn partial(&self) -> Option<&str> {
        match self {
            Op::Write { name, .. } | Op::MapStore { name, .. } | Op::Punch { name, .. } => Some(name),
            _ => None,
        }
    }
}

impl Model {
    /// Every name that exists, files and links.
    pub fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    fn file(&mut self, name: &str) -> &mut (Vec<u8>, Option<Vec<u8>>) {
        let tag = self.names[name];
        self.data.get_mut(&tag).unwrap()
    }

    fn unlink(&mut self, name: &str) {
        if let Some(tag) = self.names.remove(name)
            && !self.names.values().any(|&t| t == tag)
        {
            self.data.remove(&tag);
        }
    }

    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Write { name, off, data } | Op::MapStore { name, off, data } => {
                if !self.names.contains_key(name) {
                    self.next += 1;
                    self.names.insert(name.clone(), self.next);
                    self.data.insert(self.next, (Vec::new(), None));
                }
                let f = &mut self.file(name).0;
                if f.len() < off + data.len() {
                    f.resize(off + data.len(), 0);
                }
                f[*off..off + data.len()].copy_from_slice(data);
            }
            Op::Truncate { name, len } => self.file(name).0.resize(*len, 0),
            Op::Punch { name, off, len } => {
                let f = &mut self.file(name).0;
                let end = (off + len).min(f.len());
                if *off < end {
                    f[*off..end].fill(0);
                }
            }
            Op::Rename { from, to } => {
                let tag = self.names[from];
                if self.names.get(to) != Some(&tag) {
                    self.unlink(to);
                    self.names.remove(from);
                    self.names.insert(to.clone(), tag);
                }
            }
            Op::Exchange { a, b } => {
                let (ta, tb) = (self.names[a], self.names[b]);
                self.names.insert(a.clone(), tb);
                self.names.insert(b.clone(), ta);
            }
            Op::Link { from, to } => {
                let tag = self.names[from];
                self.names.insert(to.clone(), tag);
            }
            Op::Unlink { name } => self.unlink(name),
            Op::SetXattr { name, value } => self.file(name).1 = Some(value.clone()),
            Op::RemoveXattr { name } => self.file(name).1 = None,
            Op::Fsync { .. } | Op::FsyncDir => {}
            Op::Mkdir { name } => {
                self.dirs.insert(name.clone());
            }
            Op::Rmdir { name } => {
                self.dirs.remove(name);
            }
        }
    }

    pub fn random_op(&self, rng: &mut Rng) -> Op {
        let pick = |rng: &mut Rng, v: &[&str]| v[rng.below(v.len() as u64) as usize].to_string();
        let existing: Vec<&String> = self.names.keys().collect();
        let any = |rng: &mut Rng| existing[rng.below(existing.len() as u64) as usize].clone();
        let bytes = |rng: &mut Rng, max: u64| {
            let mut d = vec![0u8; 1 + rng.below(max) as usize];
            rng.fill(&mut d);
            d
        };
        let has = !existing.is_empty();
        match rng.below(100) {
            0..=29 => Op::Write { name: pick(rng, NAMES), off: rng.below(1 << 20) as usize, data: bytes(rng, 100_000) },
            30..=39 if has => {
                let name = any(rng);
                let size = self.data[&self.names[&name]].0.len();
                if size == 0 {
                    return Op::Fsync { name };
                }
                let off = rng.below(size as u64) as usize;
                let data = bytes(rng, (size - off).min(40_000) as u64);
                Op::MapStore { name, off, data }
            }
            40..=45 if has => Op::Truncate { name: any(rng), len: rng.below(1 << 20) as usize },
            46..=50 if has => {
                Op::Punch { name: any(rng), off: rng.below(1 << 20) as usize, len: 1 + rng.below(200_000) as usize }
            }
            51..=55 if has => Op::Rename { from: any(rng), to: pick(rng, NAMES) },
            56..=58 if existing.len() >= 2 => {
                let (a, b) = (any(rng), any(rng));
                if a == b { Op::Fsync { name: a } } else { Op::Exchange { a, b } }
            }
            59..=63 if has => {
                let to = pick(rng, NAMES);
                if self.names.contains_key(&to) { Op::Unlink { name: to } } else { Op::Link { from: any(rng), to } }
            }
            64..=70 if has => Op::Unlink { name: any(rng) },
            71..=76 if has => Op::SetXattr { name: any(rng), value: bytes(rng, 200) },
            77..=79 if has => Op::RemoveXattr { name: any(rng) },
            80..=88 if has => Op::Fsync { name: any(rng) },
            89..=93 => Op::FsyncDir,
            _ => {
                let d = pick(rng, DIRS);
                if self.dirs.contains(&d) { Op::Rmdir { name: d } } else { Op::Mkdir { name: d } }
            }
        }
    }
}

fn os(r: libc::c_int) -> std::io::Result<()> {
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

pub fn run_op(root: &Path, op: &Op) -> std::io::Result<()> {
    let p = |n: &str| root.join(n);
    match op {
        Op::Write { name, off, data } => {
            OpenOptions::new().write(true).create(true).truncate(false).open(p(name))?.write_all_at(data, *off as u64)
        }
        Op::MapStore { name, off, data } => {
            let f = OpenOptions::new().read(true).write(true).open(p(name))?;
            let page = 4096;
            let start = off / page * page;
            let len = off + data.len() - start;
            // The store runs in a child process: if the daemon dies meanwhile, a fault on the
            // mapping is a SIGBUS, which must end the child, not the test. The child makes
            // only system calls and a memcpy (no allocation: safe after fork in a threaded
            // process) and exits with the errno of a failed call.
            // SAFETY: fork; the child runs only async-signal-safe code and _exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: a fresh shared mapping of an open file, inside it (the model says it
                // is at least off + len long); the child exits right after.
                unsafe {
                    let m = libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        f.as_raw_fd(),
                        start as i64,
                    );
                    if m == libc::MAP_FAILED {
                        libc::_exit(*libc::__errno_location());
                    }
                    std::ptr::copy_nonoverlapping(data.as_ptr(), (m as *mut u8).add(off - start), data.len());
                    let r = libc::msync(m, len, libc::MS_SYNC);
                    libc::_exit(if r == 0 { 0 } else { *libc::__errno_location() });
                }
            }
            if pid < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
                (true, 0) => Ok(()),
                (true, e) => Err(std::io::Error::from_raw_os_error(e)),
                _ => Err(std::io::Error::other(format!("the storing child died with status {status:#x}"))),
            }
        }
        Op::Truncate { name, len } => OpenOptions::new().write(true).open(p(name))?.set_len(*len as u64),
        Op::Punch { name, off, len } => {
            let f = OpenOptions::new().write(true).open(p(name))?;
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            // SAFETY: a plain syscall on an open descriptor.
            os(unsafe { libc::fallocate(f.as_raw_fd(), mode, *off as i64, *len as i64) })
        }
        Op::Rename { from, to } => fs::rename(p(from), p(to)),
        Op::Exchange { a, b } => {
            let (ca, cb) = (super::cstr(&p(a)), super::cstr(&p(b)));
            // SAFETY: valid C strings.
            os(unsafe {
                libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE)
            })
        }
        Op::Link { from, to } => fs::hard_link(p(from), p(to)),
        Op::Unlink { name } => fs::remove_file(p(name)),
        Op::SetXattr { name, value } => {
            let (c, k) = (super::cstr(&p(name)), std::ffi::CString::new(XATTR).unwrap());
            // SAFETY: valid C strings and a buffer of the given length.
            os(unsafe { libc::setxattr(c.as_ptr(), k.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
        }
        Op::RemoveXattr { name } => {
            let (c, k) = (super::cstr(&p(name)), std::ffi::CString::new(XATTR).unwrap());
            // SAFETY: valid C strings.
            match os(unsafe { libc::removexattr(c.as_ptr(), k.as_ptr()) }) {
                Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
                r => r,
            }
        }
        Op::Fsync { name } => OpenOptions::new().write(true).open(p(name))?.sync_all(),
        Op::FsyncDir => fs::File::open(root)?.sync_all(),
        Op::Mkdir { name } => fs::create_dir(p(name)),
        Op::Rmdir { name } => fs::remove_dir(p(name)),
    }
}

fn getx(path: &Path) -> Option<Vec<u8>> {
    let (c, k) = (super::cstr(path), std::ffi::CString::new(XATTR).unwrap());
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe { libc::getxattr(c.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

/// Link groups (names sharing an inode) with their content and xattr: the form in which a
/// model and the mount are compared.
pub type Shape = BTreeMap<BTreeSet<String>, (Vec<u8>, Option<Vec<u8>>)>;

pub fn shape(m: &Model) -> (Shape, BTreeSet<String>) {
    let mut groups: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for (n, t) in &m.names {
        groups.entry(*t).or_default().insert(n.clone());
    }
    (groups.into_iter().map(|(t, names)| (names, m.data[&t].clone())).collect(), m.dirs.clone())
}

pub fn observe(root: &Path) -> (Shape, BTreeSet<String>) {
    let mut by_ino: BTreeMap<u64, (BTreeSet<String>, PathBuf)> = BTreeMap::new();
    let mut dirs = BTreeSet::new();
    for sub in ["", "e0"] {
        for e in fs::read_dir(root.join(sub)).unwrap() {
            let e = e.unwrap();
            let name = Path::new(sub).join(e.file_name()).to_string_lossy().into_owned();
            let md = e.metadata().unwrap();
            if md.is_dir() {
                if name != "e0" {
                    dirs.insert(name);
                }
            } else {
                by_ino.entry(md.ino()).or_insert_with(|| (BTreeSet::new(), e.path())).0.insert(name);
            }
        }
    }
    let shape = by_ino.into_values().map(|(names, p)| (names, (fs::read(&p).unwrap(), getx(&p)))).collect();
    (shape, dirs)
}

/// The mount must show the model, or the model with the op in flight applied (for a write,
/// possibly in part: every byte old or new).
pub fn check(client: usize, seen: &(Shape, BTreeSet<String>), before: &Model, inflight: Option<&Op>) -> Model {
    if *seen == shape(before) {
        return before.clone();
    }
    let Some(op) = inflight else {
        panic!("client {client}: the mount differs from the model with nothing in flight:\n{}", brief(seen, before));
    };
    let mut after = before.clone();
    after.apply(op);
    if *seen == shape(&after) {
        return after;
    }
    if let Some(name) = op.partial()
        && let Some(&tag) = after.names.get(name)
    {
        let (want_old, want_new) = (shape(before), shape(&after));
        let group: BTreeSet<String> = after.names.iter().filter(|(_, t)| **t == tag).map(|(n, _)| n.clone()).collect();
        let got = seen.0.get(&group).unwrap_or_else(|| panic!("client {client}: {name} missing after {op:?}"));
        let old = want_old.0.get(&group).map(|v| v.0.clone()).unwrap_or_default();
        let new = &want_new.0[&group].0;
        let strip =
            |s: &Shape| s.iter().filter(|(k, _)| **k != group).map(|(k, v)| (k.clone(), v.clone())).collect::<Shape>();
        assert!(
            strip(&seen.0) == strip(&want_new.0) && seen.1 == want_new.1,
            "client {client}: {op:?} in flight changed other files"
        );
        let (lo, hi) = (old.len().min(new.len()), old.len().max(new.len()));
        assert!((lo..=hi).contains(&got.0.len()), "client {client}: size {} outside {lo}..={hi}", got.0.len());
        for (i, b) in got.0.iter().enumerate() {
            let (o, n) = (old.get(i).copied().unwrap_or(0), new.get(i).copied().unwrap_or(0));
            assert!(*b == o || *b == n, "client {client}: byte {i} of {name} is neither old nor new after {op:?}");
        }
        // Adopt what is there.
        let mut m = after;
        m.data.get_mut(&tag).unwrap().0 = got.0.clone();
        return m;
    }
    panic!("client {client}: the mount is neither before nor after {op:?}:\n{}", brief(seen, before));
}

/// What differs between the mount and a model, by name, sizes only.
pub fn brief(seen: &(Shape, BTreeSet<String>), want: &Model) -> String {
    let sum = |s: &Shape| -> Vec<String> {
        s.iter().map(|(k, v)| format!("{k:?}: {} bytes, xattr {:?}", v.0.len(), v.1.as_ref().map(Vec::len))).collect()
    };
    let w = shape(want);
    format!("mount: {:?} dirs {:?}\nmodel: {:?} dirs {:?}", sum(&seen.0), seen.1, sum(&w.0), w.1)
}
