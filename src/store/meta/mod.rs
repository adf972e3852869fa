//! Metadata: inodes, extent maps, directories, and the journaled `Op` that changes them, one
//! concept per file. The inode codec lives with the checkpoint that stores it.

mod attr;
mod dir;
mod extents;
mod inode;
mod op;

pub use attr::*;
pub use dir::*;
pub use extents::*;
pub use inode::*;
pub use op::*;
