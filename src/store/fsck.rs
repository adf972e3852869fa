//! `mmapfs fsck`: an offline check of a store that is not mounted, like `e2fsck -n`.
//!
//! It loads the store exactly as a mount would ([`super::open::load`]: superblock, segment
//! files, checkpoint and journal checksums, every record applied to the metadata, extents
//! inside the segments and no block owned twice) without changing a byte, then checks what
//! the mount does not need to: link counts against directory entries, that every inode is
//! reachable from the root or an orphan due for freeing, directory back-pointers and entry
//! kinds, and the free-space accounting.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use serde::Serialize;

use super::meta::{Content, Kind};
use super::open::{Loaded, load};
use super::{Ino, OpenError, ROOT, rd};

/// What `fsck` found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub store: String,
    pub format_version: u32,
    pub inodes: u64,
    pub files: u64,
    pub directories: u64,
    pub segments: u64,
    pub used_bytes: u64,
    pub free_bytes_in_segments: u64,
    /// Bytes in free runs of 1 MiB or more whose host space the segment files still hold
    /// (a mount gives them back).
    pub free_bytes_held: u64,
    pub journal_records: u64,
    /// Inodes without links a crash left behind; the next mount frees them.
    pub orphans: u64,
    /// Harmless findings the next mount mends (leftover temporary files, a torn journal tail).
    pub notes: Vec<String>,
    /// Damage: the store is not what mmapfs wrote.
    pub problems: Vec<String>,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Why `fsck` could not check the store at all (exit status 2).
#[derive(Debug)]
pub struct CannotRun(pub String);

/// Checks the store in `dir`. `Err` when the check could not run (not a store, another
/// format, mounted, unreadable); damage is reported in the [`Report`].
pub fn check(dir: &Path) -> Result<Report, CannotRun> {
    let mut r = Report { store: dir.display().to_string(), ..Report::default() };
    // Refuse a store in use: its files change under us. The lock is only tested, never
    // created or written.
    if let Ok(f) = File::open(dir.join("lock")) {
        // SAFETY: flock on an fd we own; no memory is passed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0 {
            let pid = std::fs::read_to_string(dir.join("lock")).unwrap_or_default();
            let pid = pid.split_whitespace().next().unwrap_or("?").to_string();
            return Err(CannotRun(format!("the store is in use by pid {pid}; unmount it first")));
        }
    }
    let l = match load(dir) {
        Ok(l) => l,
        Err(OpenError::Corrupt(m)) => {
            r.problems.push(m);
            return Ok(r);
        }
        Err(e) => return Err(CannotRun(e.to_string())),
    };
    r.format_version = l.sb.version;
    r.segments = l.segments;
    r.journal_records = l.replayed.records;
    for d in &l.debris {
        r.notes.push(format!("{} is left from an interrupted operation (removed at the next mount)", d.display()));
    }
    for p in &l.loose {
        r.notes.push(format!("{} can be read by other users (made private at the next mount)", p.display()));
    }
    if let Some(t) = &l.replayed.torn {
        r.notes.push(format!(
            "journal {} ends at byte {} in a write a crash cut short (never acknowledged; removed at the next mount)",
            t.path.display(),
            t.at
        ));
    }
    let links = check_directories(&l, &mut r);
    check_links(&l, &links, &mut r);
    check_reachable(&l, &links.count, &mut r);
    // Free space: blocks in use plus free blocks fill the segments exactly.
    let used: u64 = l.table.nodes().iter().filter_map(|n| rd(n).extents().map(|x| x.blocks())).sum();
    let total = l.segments * l.sb.blocks_per_segment();
    if used + l.alloc.free_blocks() != total {
        r.problems.push(format!(
            "free-space accounting: {used} blocks in use + {} free != {total} in the segments",
            l.alloc.free_blocks()
        ));
    }
    let bs = l.sb.block_size as u64;
    r.used_bytes = used * bs;
    r.free_bytes_in_segments = l.alloc.free_blocks() * bs;
    r.free_bytes_held = free_held(dir, &l);
    if r.free_bytes_held >= 1 << 20 {
        r.notes.push(format!(
            "{} MiB of free space is still held on the host (freed just before a crash; the next mount gives it back)",
            r.free_bytes_held >> 20
        ));
    }
    Ok(r)
}

/// Bytes in free runs of 1 MiB or more (those a mount gives back) whose host space the segment
/// files still hold (`FIEMAP`; 0 where it cannot tell).
fn free_held(dir: &Path, l: &Loaded) -> u64 {
    let (bs, bps) = (l.sb.block_size as u64, l.sb.blocks_per_segment());
    let mut held = 0;
    for seg in 0..l.segments {
        let free: Vec<(u64, u64)> = l
            .alloc
            .free_runs()
            .filter(|r| r.start / bps == seg && r.len * bs >= 1 << 20)
            .map(|r| ((r.start % bps) * bs, r.len * bs))
            .collect();
        let path = dir.join("segments").join(format!("{seg:06}.seg"));
        if let Ok(extents) = File::open(&path).and_then(|f| super::fiemap::allocated(&f)) {
            held += super::fiemap::overlap(&extents, &free);
        }
    }
    held
}

/// What the directory entries say: how many name each inode, and which directory names each
/// directory.
struct Links {
    count: HashMap<Ino, u32>,
    named_in: HashMap<Ino, Ino>,
}

/// Counts kinds, checks every entry (it names an inode of its kind, a directory is named
/// once) and each directory's subdirectory count.
fn check_directories(l: &Loaded, r: &mut Report) -> Links {
    let mut links = Links { count: HashMap::new(), named_in: HashMap::new() };
    let nodes = l.table.nodes();
    r.inodes = nodes.len() as u64;
    for node in &nodes {
        let g = rd(node);
        let d = match &g.content {
            Content::Dir(d) => d,
            Content::File(_) => {
                r.files += 1;
                continue;
            }
            _ => continue,
        };
        r.directories += 1;
        let mut subdirs = 0;
        for (_, e) in d.iter_after(0) {
            let Some(child) = l.table.get(e.ino) else {
                r.problems.push(format!(
                    "directory {}: entry {:?} names missing inode {}",
                    node.ino,
                    name(&e.name),
                    e.ino
                ));
                continue;
            };
            let kind = rd(&child).attr.kind;
            if kind != e.kind {
                r.problems.push(format!(
                    "directory {}: entry {:?} says {:?}, inode {} is {kind:?}",
                    node.ino,
                    name(&e.name),
                    e.kind,
                    e.ino
                ));
            }
            if kind == Kind::Dir {
                subdirs += 1;
                if let Some(other) = links.named_in.insert(e.ino, node.ino) {
                    r.problems.push(format!("directory {} has entries in {other} and {}", e.ino, node.ino));
                }
            }
            *links.count.entry(e.ino).or_default() += 1;
        }
        if d.subdirs != subdirs {
            r.problems.push(format!(
                "directory {}: counts {} subdirectories, its entries hold {subdirs}",
                node.ino, d.subdirs
            ));
        }
    }
    links
}

/// Link counts against the entries; inodes no entry names are orphans due for freeing (no
/// links) or damage; a directory's parent must be the directory that names it.
fn check_links(l: &Loaded, links: &Links, r: &mut Report) {
    for node in l.table.nodes() {
        let g = rd(&node);
        let ino = node.ino;
        let found = links.count.get(&ino).copied().unwrap_or(0);
        if ino == ROOT {
            if found != 0 {
                r.problems.push("the root directory has an entry naming it".into());
            }
            continue;
        }
        if found == 0 {
            if g.attr.nlink == 0 {
                r.orphans += 1;
            } else {
                r.problems.push(format!("inode {ino} has {} links but no directory names it", g.attr.nlink));
            }
            continue;
        }
        match &g.content {
            Content::Dir(d) => {
                if g.attr.nlink == 0 {
                    r.problems.push(format!("directory {ino} is named but has no links"));
                }
                if links.named_in.get(&ino) != Some(&d.parent) {
                    r.problems.push(format!("directory {ino}: parent {} does not name it", d.parent));
                }
            }
            _ if g.attr.nlink != found => {
                r.problems.push(format!("inode {ino} has {} links, {found} directory entries name it", g.attr.nlink));
            }
            _ => {}
        }
    }
}

/// Every named inode is reachable from the root: a cycle of directories that only name each
/// other passes the link counts but is cut off from the tree.
fn check_reachable(l: &Loaded, named: &HashMap<Ino, u32>, r: &mut Report) {
    let mut reach = vec![ROOT];
    let mut seen = HashSet::from([ROOT]);
    while let Some(ino) = reach.pop() {
        let Some(node) = l.table.get(ino) else { continue };
        if let Some(d) = rd(&node).dir() {
            for (_, e) in d.iter_after(0) {
                if seen.insert(e.ino) && e.kind == Kind::Dir {
                    reach.push(e.ino);
                }
            }
        }
    }
    let unreachable = named.keys().filter(|i| !seen.contains(i)).count();
    if unreachable > 0 {
        r.problems.push(format!("{unreachable} named inodes cannot be reached from the root"));
    }
}

fn name(n: &[u8]) -> String {
    String::from_utf8_lossy(n).into_owned()
}
