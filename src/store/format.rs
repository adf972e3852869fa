//! Creating a store (`mmapfs format`, or a mount of an empty directory) and reading and
//! writing its superblock.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::checkpoint;
use super::error::OpenError;
use super::files;
use super::meta::{Attr, Content, Dir, Inode, Kind, ROOT, Ts};
use super::superblock::{self, Superblock};

/// How to create a store that does not exist yet.
#[derive(Clone, Copy, Debug)]
pub struct FormatOptions {
    /// Size of each segment file. Default 64 MiB.
    pub segment_size: u64,
    /// Most bytes of file data the store holds. Default 16 GiB.
    pub capacity: u64,
}

impl FormatOptions {
    /// Checks the geometry as the superblock will: `mmapfs format` and a mount that creates a
    /// store refuse the same options with the same message.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.superblock([0; 16]).validate()
    }

    /// The superblock of a store formatted with these options (capacity rounded down to
    /// whole segments).
    fn superblock(&self, uuid: [u8; 16]) -> Superblock {
        Superblock {
            version: superblock::VERSION,
            block_size: superblock::page_size() as u32,
            uuid,
            segment_size: self.segment_size,
            capacity: self.capacity / self.segment_size.max(1) * self.segment_size.max(1),
        }
    }
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions { segment_size: 64 << 20, capacity: 16 << 30 }
    }
}

/// Creates a new, empty store in `dir`, which must not exist or be empty (but for the lock file
/// of the mount that formats it).
pub fn format(dir: &Path, opts: FormatOptions) -> Result<(), OpenError> {
    opts.validate().map_err(OpenError::Geometry)?;
    let sb = opts.superblock(superblock::random_uuid()?);
    files::create_dir(dir)?;
    // A lock file alone is that of the mount formatting it (`Store::open` holds the lock).
    for ent in std::fs::read_dir(dir)? {
        if ent?.file_name() != "lock" {
            return Err(OpenError::NotAStore(dir.into(), "the directory is not empty; refusing to format it".into()));
        }
    }
    files::create_dir(&dir.join("segments"))?;
    files::create_dir(&dir.join("meta"))?;
    // The root directory, in an initial checkpoint.
    let now = Ts::now();
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let root = Inode::new(
        Attr {
            ino: ROOT,
            kind: Kind::Dir,
            perm: 0o755,
            uid,
            gid,
            nlink: 2,
            rdev: 0,
            size: 0,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
        },
        Content::Dir(Box::new(Dir::new(ROOT))),
    );
    let mut e = checkpoint::begin(&sb.uuid, 0, ROOT + 1, 1);
    checkpoint::encode_inode(&mut e, &root);
    checkpoint::install(&dir.join("meta"), e)?;
    // The superblock last: a directory without one is not a store yet.
    write_superblock(dir, &sb)?;
    log::info!("formatted store {} (segment {} B, capacity {} B)", dir.display(), sb.segment_size, sb.capacity);
    Ok(())
}

/// Reads and checks the superblock of `dir`.
pub fn read_superblock(dir: &Path) -> Result<Superblock, OpenError> {
    let data = match files::read(&dir.join("superblock")) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(OpenError::NotAStore(dir.into(), "it has no superblock file".into()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(OpenError::Unsafe(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    Superblock::decode(&data).map_err(|e| match e {
        superblock::SuperblockError::Foreign => {
            OpenError::NotAStore(dir.into(), "the superblock has no mmapfs magic".into())
        }
        superblock::SuperblockError::Version(v) => OpenError::Version(v),
        superblock::SuperblockError::Corrupt(m) => OpenError::Corrupt(format!("superblock: {m}")),
    })
}

/// Writes the superblock atomically (temporary file, synced, renamed, directory synced).
pub(crate) fn write_superblock(dir: &Path, sb: &Superblock) -> Result<(), OpenError> {
    let tmp = dir.join("superblock.tmp");
    let mut f = files::open(&tmp, std::fs::OpenOptions::new().write(true).create(true).truncate(true))?;
    f.write_all(&sb.encode())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("superblock"))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}
