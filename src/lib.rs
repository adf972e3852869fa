//! mmapfs: a FUSE filesystem whose file data lives in memory-mapped segment files.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod fs;
pub mod rng;
pub mod stats;
pub mod store;
