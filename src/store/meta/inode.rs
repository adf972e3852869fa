//! Inodes: what an inode holds in memory besides its attributes (`attr.rs`).

use super::attr::Attr;
use super::dir::Dir;
use super::extents::Extents;
use crate::store::alloc::Run;

/// What an inode holds besides its attributes.
#[derive(Debug, Clone)]
pub enum Content {
    File(Extents),
    Dir(Box<Dir>),
    Symlink(Box<[u8]>),
    /// FIFOs, sockets and device nodes: attributes only.
    Special,
}

/// An extended attribute: name, value.
pub type Xattr = (Box<[u8]>, Box<[u8]>);

/// The rarely used parts of an inode.
#[derive(Debug, Default)]
pub struct Extra {
    /// Physical runs written since the last fsync of this file.
    pub dirty: Vec<Run>,
    /// Extended attributes, in the order they were set.
    pub xattrs: Vec<Xattr>,
}

/// An inode as the store keeps it in memory.
#[derive(Debug)]
pub struct Inode {
    pub attr: Attr,
    pub content: Content,
    /// Open file handles (not persistent: after a crash there are none).
    pub opens: u32,
    /// The kernel's lookup count (not persistent).
    pub lookups: u64,
    /// Dirty runs and extended attributes, boxed: most inodes have neither.
    pub extra: Option<Box<Extra>>,
    /// mtime/ctime changed by data writes and not yet in the journal.
    pub times_dirty: bool,
    /// Freed (unlinked and closed); the number stays reserved until the kernel forgets it.
    pub freed: bool,
}

impl Inode {
    pub fn new(attr: Attr, content: Content) -> Inode {
        Inode { attr, content, opens: 0, lookups: 0, extra: None, times_dirty: false, freed: false }
    }

    pub fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    /// Takes the dirty runs, leaving none.
    pub fn take_dirty(&mut self) -> Vec<Run> {
        self.extra.as_mut().map(|e| std::mem::take(&mut e.dirty)).unwrap_or_default()
    }

    pub fn xattrs(&self) -> &[Xattr] {
        self.extra.as_ref().map_or(&[], |e| &e.xattrs)
    }

    pub fn xattr(&self, name: &[u8]) -> Option<&[u8]> {
        self.xattrs().iter().find(|(n, _)| **n == *name).map(|(_, v)| &**v)
    }

    pub fn dir(&self) -> Option<&Dir> {
        match &self.content {
            Content::Dir(d) => Some(d),
            _ => None,
        }
    }

    pub fn dir_mut(&mut self) -> Option<&mut Dir> {
        match &mut self.content {
            Content::Dir(d) => Some(d),
            _ => None,
        }
    }

    pub fn extents(&self) -> Option<&Extents> {
        match &self.content {
            Content::File(x) => Some(x),
            _ => None,
        }
    }

    /// Attributes with the derived fields (link count of directories, block count) filled in.
    pub fn stat(&self) -> Attr {
        let mut a = self.attr;
        match &self.content {
            Content::Dir(d) if a.nlink > 0 => a.nlink = 2 + d.subdirs,
            Content::File(x) => a.blocks = x.blocks(),
            _ => {}
        }
        a
    }
}
