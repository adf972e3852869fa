//! mmapfs: a FUSE filesystem whose file data lives in memory-mapped segment files.
//!
//! `store` owns the data and its durability; `fs` translates FUSE requests into store calls;
//! `daemon` runs a mount; `cli` is the command line around them.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod fs;
pub mod mounts;
#[cfg(any(test, feature = "testing"))]
pub mod rng;
pub mod stats;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
