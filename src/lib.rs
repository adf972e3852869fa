//! mmapfs: a FUSE filesystem whose file data lives in memory-mapped segment files.

pub mod config;
pub mod fs;
pub mod inspect;
pub mod rng;
pub mod stats;
pub mod store;
pub mod testing;
