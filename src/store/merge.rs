//! Background checkpoints. A checkpoint taken from memory would have to stop every change
//! while millions of inodes are encoded; instead, the journal is rotated (appenders wait only
//! for a file to be named) and the closed journal files are merged into the installed
//! checkpoint, both read from disk, by a thread of their own:
//!
//! 1. the installed checkpoint is mapped and indexed by inode number (nothing decoded);
//! 2. the closed files' records are replayed exactly as a mount replays them (`recovery.rs`),
//!    onto a table that decodes an inode from the checkpoint only when a record touches it;
//! 3. the new image is streamed out in inode order: untouched inodes as their bytes, touched
//!    ones re-encoded, freed ones left out, created ones merged in.
//!
//! The result is by construction the state a mount would rebuild from the same files, so the
//! live in-memory state is never locked, and memory grows with the inodes the records touch,
//! not with the store.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use super::checkpoint::{Base, Writer};
use super::error::LoadError;
use super::meta::{Ino, Inode};
use super::recovery;
use super::table::{Inodes, Node, Table};

/// What a merge did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// Journal records merged.
    pub records: u64,
    /// Inodes in the new checkpoint.
    pub inodes: u64,
    /// Of those, inodes the records touched (re-encoded) or created.
    pub rewritten: u64,
}

/// The inodes the replayed records touched, over the base checkpoint they came from.
struct Partial<'a> {
    base: &'a Base,
    table: Table,
    freed: Mutex<HashSet<Ino>>,
    /// Why an inode of the base could not be had: a page of it that could not be read (I/O),
    /// or bytes that would not decode (the base passed its checksum: a bug).
    bad: Mutex<Option<LoadError>>,
}

impl Inodes for Partial<'_> {
    fn get(&self, ino: Ino) -> Option<Node> {
        if let Some(n) = self.table.get(ino) {
            return Some(n);
        }
        if self.freed.lock().unwrap_or_else(|p| p.into_inner()).contains(&ino) {
            return None;
        }
        match self.base.inode(ino)? {
            Ok(inode) => Some(self.table.insert(inode)),
            Err(e) => {
                self.bad.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                None
            }
        }
    }
    fn insert(&self, inode: Inode) {
        self.table.insert(inode);
    }
    fn remove(&self, ino: Ino) {
        self.table.remove(ino);
        self.freed.lock().unwrap_or_else(|p| p.into_inner()).insert(ino);
    }
}

/// Merges the journal records in (installed checkpoint's seq, `upto`] into a new checkpoint at
/// `upto` and installs it. The records must be in closed journal files (see `Journal::rotate`).
/// Fails with I/O, or on files a mount would refuse too.
pub fn merge(meta_dir: &Path, uuid: &[u8; 16], block_size: u64, upto: u64) -> Result<Merged, LoadError> {
    let base = Base::open(meta_dir, uuid)?;
    if base.seq >= upto {
        return Ok(Merged { inodes: base.len() as u64, ..Merged::default() });
    }
    let partial =
        Partial { base: &base, table: Table::new(), freed: Mutex::new(HashSet::new()), bad: Mutex::new(None) };
    let mut next_ino = base.next_ino;
    let replayed = recovery::replay(&partial, meta_dir, uuid, base.seq, Some(upto), block_size, &mut next_ino)?;
    if let Some(e) = partial.bad.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    let freed = partial.freed.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut touched: Vec<Node> = partial.table.nodes();
    touched.sort_unstable_by_key(|n| n.ino);
    let in_base = |ino| base.inode_bytes(ino).is_some();
    let kept = base.iter().filter(|(ino, _)| !freed.contains(ino)).count() as u64;
    let created = touched.iter().filter(|n| !in_base(n.ino)).count() as u64;
    let count = kept + created;

    let mut w = Writer::create(meta_dir, uuid, upto, next_ino, count)?;
    let mut new = touched.iter().peekable();
    // The base's bytes are read (checksummed, copied) here: under the fault guard.
    base.guarded(|| {
        for (ino, bytes) in base.iter() {
            while let Some(n) = new.next_if(|n| n.ino < ino) {
                w.inode(&n.read().unwrap_or_else(|p| p.into_inner()))?;
            }
            if let Some(n) = new.next_if(|n| n.ino == ino) {
                w.inode(&n.read().unwrap_or_else(|p| p.into_inner()))?;
            } else if !freed.contains(&ino) {
                w.raw(bytes)?;
            }
        }
        Ok(())
    })?;
    for n in new {
        w.inode(&n.read().unwrap_or_else(|p| p.into_inner()))?;
    }
    super::faults::check(super::faults::Point::CheckpointWrite)?;
    w.install(meta_dir)?;
    Ok(Merged { records: replayed.records, inodes: count, rewritten: touched.len() as u64 })
}
