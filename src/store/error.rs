//! The store's errors: [`Error`] for requests (each one errno), [`OpenError`] for the
//! refusals of opening or formatting a store (each a message for the user), and
//! [`LoadError`] for reading the metadata files (checkpoint, journal) at mount and in a
//! background checkpoint.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything a store operation can fail with.
#[derive(Debug)]
pub enum Error {
    /// No such entry or inode (ENOENT).
    NotFound,
    /// The name exists (EEXIST).
    Exists,
    /// Directory not empty (ENOTEMPTY).
    NotEmpty,
    /// A path component or target is not a directory (ENOTDIR).
    NotDir,
    /// The target is a directory (EISDIR).
    IsDir,
    /// A name longer than 255 bytes (ENAMETOOLONG).
    NameTooLong,
    /// The capacity is used up (ENOSPC).
    NoSpace,
    /// An argument makes no sense (EINVAL).
    Invalid,
    /// Beyond the largest file size (EFBIG).
    TooBig,
    /// Not supported by this operation or kind (EOPNOTSUPP).
    Unsupported,
    /// Not permitted, e.g. a hard link to a directory (EPERM).
    NotPermitted,
    /// Too many hard links (EMLINK).
    TooManyLinks,
    /// No such extended attribute (ENODATA).
    NoData,
    /// An extended attribute name too long, or a buffer too small (ERANGE).
    Range,
    /// An extended attribute value too large (E2BIG).
    ValueTooBig,
    /// No data or hole at or after the offset (ENXIO).
    NoSuchOffset,
    /// An I/O error of the store's own files; also sticky after a failed msync (EIO).
    Io(io::Error),
    /// The state in memory contradicts an op just journaled: a bug (EIO).
    Inconsistent(String),
}

/// Why a store could not be opened or formatted. Nothing in the directory was changed.
#[derive(Debug)]
pub enum OpenError {
    /// The directory is not an mmapfs store.
    NotAStore(PathBuf, String),
    /// A store of a format version this build does not read.
    Version(u32),
    /// The store's files are damaged.
    Corrupt(String),
    /// Format options that make no store (segment size, capacity).
    Geometry(String),
    /// Another daemon has the store mounted.
    Locked { pid: Option<u32> },
    /// A path in the store is a symlink, foreign-owned or writable by others (the message
    /// names it and the fix).
    Unsafe(String),
    /// Reading or writing the store's files failed.
    Io(io::Error),
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        OpenError::Io(e)
    }
}

/// Why the metadata files (checkpoint, journal) could not be loaded, replayed or merged.
#[derive(Debug)]
pub enum LoadError {
    /// Reading (or, in a merge, writing) them failed; the message names the file.
    Io(io::Error),
    /// They are damaged, or their records contradict each other; the message says where.
    Corrupt(String),
}

impl LoadError {
    /// An I/O error of the file at `path`, saying which file.
    pub(crate) fn io_at(path: &std::path::Path, e: io::Error) -> LoadError {
        LoadError::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }
}

impl From<io::Error> for LoadError {
    fn from(e: io::Error) -> Self {
        LoadError::Io(e)
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io(e) => write!(f, "I/O error: {e}"),
            LoadError::Corrupt(m) => write!(f, "the metadata files are damaged: {m}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// A failed load refuses the mount: damage as damage, an I/O error as an I/O error.
impl From<LoadError> for OpenError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Io(e) => OpenError::Io(e),
            LoadError::Corrupt(m) => OpenError::Corrupt(m),
        }
    }
}

/// A request-level failure while opening (freeing orphans): an I/O error of the store.
impl From<Error> for OpenError {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => OpenError::Io(e),
            Error::Inconsistent(m) => OpenError::Corrupt(m),
            other => OpenError::Io(io::Error::from_raw_os_error(other.errno())),
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::NotAStore(p, why) => write!(f, "{} is not an mmapfs store: {why}", p.display()),
            OpenError::Version(v) => write!(
                f,
                "the store has format version {v}; this mmapfs reads versions {} to {}",
                super::superblock::OLDEST,
                super::superblock::VERSION
            ),
            OpenError::Corrupt(m) => write!(f, "the store is damaged: {m}"),
            OpenError::Geometry(m) => write!(f, "invalid store geometry: {m}"),
            OpenError::Locked { pid: Some(pid) } => write!(f, "the store is already mounted by pid {pid}"),
            OpenError::Locked { pid: None } => write!(f, "the store is already mounted by another process"),
            OpenError::Unsafe(m) => write!(f, "refusing an unsafe store: {m}"),
            OpenError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// An op that cannot apply on the live path: the state in memory contradicts the journal.
impl From<super::meta::Inconsistent> for Error {
    fn from(e: super::meta::Inconsistent) -> Self {
        Error::Inconsistent(e.0)
    }
}

impl Error {
    /// The errno a request that fails this way answers with.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound => libc::ENOENT,
            Error::Exists => libc::EEXIST,
            Error::NotEmpty => libc::ENOTEMPTY,
            Error::NotDir => libc::ENOTDIR,
            Error::IsDir => libc::EISDIR,
            Error::NameTooLong => libc::ENAMETOOLONG,
            Error::NoSpace => libc::ENOSPC,
            Error::Invalid => libc::EINVAL,
            Error::TooBig => libc::EFBIG,
            Error::Unsupported => libc::EOPNOTSUPP,
            Error::NotPermitted => libc::EPERM,
            Error::TooManyLinks => libc::EMLINK,
            Error::NoData => libc::ENODATA,
            Error::Range => libc::ERANGE,
            Error::ValueTooBig => libc::E2BIG,
            Error::NoSuchOffset => libc::ENXIO,
            Error::Io(e) if e.raw_os_error() == Some(libc::ENOSPC) => libc::ENOSPC,
            _ => libc::EIO,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Inconsistent(m) => write!(f, "the store's state contradicts its journal: {m}"),
            other => write!(f, "{}", io::Error::from_raw_os_error(other.errno())),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
