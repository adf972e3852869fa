//! The inode table: inode number → node, sharded so threads on different files rarely share a
//! lock. A node carries its number outside its lock, so the table stores one pointer per inode.

use std::ops::Deref;
use std::sync::{Arc, RwLock};

use hashbrown::HashTable;

use super::meta::{Ino, Inode};

/// Enough shards that threads on different files rarely meet.
const SHARDS: usize = 64;

/// An inode behind its lock.
#[derive(Debug)]
pub struct Cell {
    pub ino: Ino,
    lock: RwLock<Inode>,
}

impl Deref for Cell {
    type Target = RwLock<Inode>;
    fn deref(&self) -> &RwLock<Inode> {
        &self.lock
    }
}

pub type Node = Arc<Cell>;

/// Spreads sequential inode numbers over the hash table's buckets.
fn hash(ino: Ino) -> u64 {
    ino.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

pub struct Table {
    shards: Vec<RwLock<HashTable<Node>>>,
}

impl Table {
    pub fn new() -> Table {
        Table { shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect() }
    }

    fn shard(&self, ino: Ino) -> &RwLock<HashTable<Node>> {
        &self.shards[(ino % SHARDS as u64) as usize]
    }

    pub fn get(&self, ino: Ino) -> Option<Node> {
        let s = self.shard(ino).read().unwrap_or_else(|p| p.into_inner());
        s.find(hash(ino), |n| n.ino == ino).cloned()
    }

    /// Adds an inode (whose number must not be in the table) and returns its node.
    pub fn insert(&self, inode: Inode) -> Node {
        let ino = inode.attr.ino;
        let node = Arc::new(Cell { ino, lock: RwLock::new(inode) });
        let mut s = self.shard(ino).write().unwrap_or_else(|p| p.into_inner());
        s.insert_unique(hash(ino), node.clone(), |n| hash(n.ino));
        node
    }

    pub fn remove(&self, ino: Ino) {
        let mut s = self.shard(ino).write().unwrap_or_else(|p| p.into_inner());
        if let Ok(e) = s.find_entry(hash(ino), |n| n.ino == ino) {
            e.remove();
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }

    /// A snapshot of all nodes (each shard read-locked in turn).
    pub fn nodes(&self) -> Vec<Node> {
        let mut v = Vec::with_capacity(self.len());
        for s in &self.shards {
            v.extend(s.read().unwrap_or_else(|p| p.into_inner()).iter().cloned());
        }
        v
    }
}

/// What replaying a journal op needs of an inode table: the live [`Table`] at mount, or the
/// partial one a background checkpoint loads from the installed checkpoint on demand.
pub(crate) trait Inodes {
    fn get(&self, ino: Ino) -> Option<Node>;
    fn insert(&self, inode: Inode);
    fn remove(&self, ino: Ino);
}

impl Inodes for Table {
    fn get(&self, ino: Ino) -> Option<Node> {
        Table::get(self, ino)
    }
    fn insert(&self, inode: Inode) {
        Table::insert(self, inode);
    }
    fn remove(&self, ino: Ino) {
        Table::remove(self, ino)
    }
}
