//! The FUSE adapter: decodes each request, calls the store once, replies. No storage logic
//! lives here; errno mapping happens in exactly one place (`errno`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::stats::{Op, Stats};
use crate::store::meta::{Attr, Kind, Ts};
use crate::store::{Error, NAME_MAX, SetAttr, Store};

/// How the adapter talks to the kernel.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// How long the kernel may cache attributes (`attr_timeout`). mmapfs is the only writer of
    /// its store and the kernel invalidates what its own requests change, so long timeouts are
    /// safe. Default 60 s.
    pub attr_ttl: Duration,
    /// How long the kernel may cache names (`entry_timeout`). Default 60 s.
    pub entry_ttl: Duration,
    /// Let the kernel cache writes (FUSE_WRITEBACK_CACHE). Default off.
    pub writeback_cache: bool,
    /// Bypass the page cache for read/write (FOPEN_DIRECT_IO), shared mmap still allowed. Default off.
    pub direct_io: bool,
    /// Largest write request. Default 1 MiB.
    pub max_write: u32,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            attr_ttl: Duration::from_secs(60),
            entry_ttl: Duration::from_secs(60),
            writeback_cache: false,
            direct_io: false,
            max_write: 1 << 20,
        }
    }
}

/// The `fuser::Filesystem` of a mounted store.
pub struct MmapFs {
    store: Arc<Store>,
    cfg: FsConfig,
    next_fh: AtomicU64,
    /// Set once the session exists; used to tell the kernel about attribute changes it did
    /// not make itself.
    notifier: Arc<OnceLock<Notifier>>,
    stats: Arc<Stats>,
    /// Set once the session exists; see `destroy`.
    pub unmounter: Arc<OnceLock<std::sync::Mutex<fuser::SessionUnmounter>>>,
}

impl MmapFs {
    pub fn new(store: Arc<Store>, cfg: FsConfig, notifier: Arc<OnceLock<Notifier>>, stats: Arc<Stats>) -> MmapFs {
        MmapFs { store, cfg, next_fh: AtomicU64::new(1), notifier, stats, unmounter: Default::default() }
    }

    /// Drops set-ID bits before a write by a caller without CAP_FSETID, and makes the kernel
    /// forget the attributes it cached (the mode changed behind its back). Attribute-only
    /// invalidation takes no inode lock, so it is safe inside this request.
    fn kill_privs_for_write(&self, ino: INodeNo) -> Result<(), Error> {
        let before = self.store.getattr(ino.0)?.perm;
        // The common case, nothing to drop, costs two read locks and no journal lock.
        let set_id = (libc::S_ISUID | libc::S_ISGID) as u16;
        if before & set_id == 0 && self.store.getxattr(ino.0, b"security.capability", |_| ()).is_err() {
            return Ok(());
        }
        let after = self.store.setattr(ino.0, SetAttr { kill_privs: true, ..SetAttr::default() })?.perm;
        if let (true, Some(n)) = (before != after, self.notifier.get())
            && let Err(e) = n.inval_inode(ino, -1, 0)
        {
            log::warn!("attribute invalidation of inode {} failed: {e}", ino.0);
        }
        Ok(())
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        let bs = self.store.superblock().block_size;
        FileAttr {
            ino: INodeNo(a.ino),
            size: a.size,
            blocks: a.blocks * (bs as u64 / 512),
            atime: a.atime.into(),
            mtime: a.mtime.into(),
            ctime: a.ctime.into(),
            crtime: a.ctime.into(),
            kind: file_type(a.kind),
            perm: a.perm,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev,
            blksize: bs,
            flags: 0,
        }
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Attr, Error>) {
        match r {
            Ok(a) => reply.entry_with_ttls(&self.cfg.attr_ttl, &self.cfg.entry_ttl, &self.attr(&a), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open_flags(&self) -> FopenFlags {
        // KEEP_CACHE: an open must not drop the pages other processes have mapped.
        // NOFLUSH: close(2) need not wait for a FLUSH round trip that does nothing here.
        let mut f = FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH;
        if self.cfg.direct_io {
            f |= FopenFlags::FOPEN_DIRECT_IO;
        }
        f
    }

    /// Runs a store call. A panic (a bug) becomes EIO for this request instead of taking down
    /// the request loop (the panic hook logs its message), and marks the store failed as an
    /// I/O error does: its state may be half changed, so nothing may claim success until a
    /// remount rebuilds it from the journal.
    fn call<T>(&self, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| Err(self.store.request_panicked()))
    }

    fn fh(&self) -> FileHandle {
        FileHandle(self.next_fh.fetch_add(1, Ordering::Relaxed))
    }
}

/// The one place store errors become errnos.
fn errno(e: &Error) -> Errno {
    if let Error::Io(io) = e {
        log::warn!("request failed: {io}");
    }
    Errno::from_i32(e.errno())
}

/// Answers a getxattr/listxattr: the size when asked for it (`size == 0`), ERANGE when the
/// caller's buffer is too small, else the bytes.
fn xattr_reply(reply: ReplyXattr, size: u32, v: &[u8]) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if v.len() > size as usize {
        reply.error(errno(&Error::Range));
    } else {
        reply.data(v);
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), Error>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn kind_of_mode(mode: u32) -> Option<Kind> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFIFO => Kind::Fifo,
        libc::S_IFSOCK => Kind::Socket,
        libc::S_IFCHR => Kind::CharDev,
        libc::S_IFBLK => Kind::BlockDev,
        _ => return None,
    })
}

fn time(t: Option<TimeOrNow>) -> Option<Ts> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(s) => s.into(),
        TimeOrNow::Now => Ts::now(),
    })
}

impl Filesystem for MmapFs {
    /// The kernel ends the session (an unmount). After an external `umount` the mount is gone
    /// already: unmounting it here (EINVAL, ignored) takes it out of the session, so that
    /// fuser does not try again, and warn, when the session is dropped.
    fn destroy(&mut self) {
        if let Some(u) = self.unmounter.get() {
            let r = u.lock().unwrap_or_else(|p| p.into_inner()).unmount();
            if let Err(e) = r.map_err(|e| (e.raw_os_error(), e))
                && e.0 != Some(libc::EINVAL)
            {
                log::warn!("unmounting at the end of the session: {}", e.1);
            }
        }
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(self.cfg.max_write);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let caps = config.capabilities();
        // EXPLICIT_INVAL_DATA: a size change truncates the cache past EOF but never drops the
        // pages before it; we are the only writer, so nothing else could make them stale.
        // HANDLE_KILLPRIV_V2: we drop set-ID bits on write/truncate/chown ourselves. In return the
        // kernel marks the superblock SB_NOSEC and stops asking for security.capability with a
        // GETXATTR round trip before every write.
        let mut want =
            InitFlags::FUSE_PARALLEL_DIROPS | InitFlags::FUSE_EXPLICIT_INVAL_DATA | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        if self.cfg.writeback_cache {
            want |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        if self.cfg.direct_io {
            want |= InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP;
        }
        if let Err(missing) = config.add_capabilities(want & caps) {
            log::warn!("kernel lacks FUSE capabilities {missing:?}");
        }
        for (flag, what) in [
            (InitFlags::FUSE_WRITEBACK_CACHE, "writeback_cache"),
            (InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP, "direct_io with shared mmap"),
        ] {
            if want.contains(flag) && !caps.contains(flag) {
                return Err(std::io::Error::other(format!("the kernel does not support {what}")));
            }
        }
        log::info!("FUSE session ready (kernel ABI {:?})", config.kernel_abi());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _t = self.stats.time(Op::Lookup, 0);
        match self.call(|| self.store.lookup(parent.0, name.as_bytes())) {
            // A miss answered as node 0 with the entry timeout: the kernel keeps a negative
            // dentry, so the stat-then-create of a new name costs one LOOKUP, not two. Safe
            // for the same reason the positive timeouts are: every create comes through this
            // mount, and the kernel turns the negative dentry positive itself.
            Err(Error::NotFound) if !self.cfg.entry_ttl.is_zero() => {
                let none = FileAttr {
                    ino: INodeNo(0),
                    size: 0,
                    blocks: 0,
                    atime: UNIX_EPOCH,
                    mtime: UNIX_EPOCH,
                    ctime: UNIX_EPOCH,
                    crtime: UNIX_EPOCH,
                    kind: FileType::RegularFile,
                    perm: 0,
                    nlink: 0,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    blksize: 0,
                    flags: 0,
                };
                reply.entry_with_ttls(&self.cfg.attr_ttl, &self.cfg.entry_ttl, &none, Generation(0));
            }
            r => self.entry(reply, r),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.store.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _t = self.stats.time(Op::Getattr, 0);
        match self.call(|| self.store.getattr(ino.0)) {
            Ok(a) => reply.attr(&self.cfg.attr_ttl, &self.attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _t = self.stats.time(Op::Setattr, 0);
        // chown always drops the set-ID bits of a file; truncate does unless the caller is root
        // (CAP_FSETID). The kernel leaves both to us under HANDLE_KILLPRIV_V2.
        let kill_privs = uid.is_some() || gid.is_some() || (size.is_some() && req.uid() != 0);
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time(atime),
            mtime: time(mtime),
            ctime: ctime.map(Ts::from),
            kill_privs,
        };
        match self.call(|| self.store.setattr(ino.0, s)) {
            Ok(a) => reply.attr(&self.cfg.attr_ttl, &self.attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _t = self.stats.time(Op::Readlink, 0);
        match self.call(|| self.store.readlink(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _t = self.stats.time(Op::Mknod, 0);
        let Some(kind) = kind_of_mode(mode).filter(|k| !matches!(k, Kind::Dir | Kind::Symlink)) else {
            return reply.error(errno(&Error::Invalid));
        };
        let r = self
            .call(|| self.store.create(parent.0, name.as_bytes(), kind, mode as u16, req.uid(), req.gid(), rdev, b""));
        self.entry(reply, r);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let _t = self.stats.time(Op::Mkdir, 0);
        let r = self.call(|| {
            self.store.create(parent.0, name.as_bytes(), Kind::Dir, mode as u16, req.uid(), req.gid(), 0, b"")
        });
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.stats.time(Op::Unlink, 0);
        empty(reply, self.call(|| self.store.unlink(parent.0, name.as_bytes(), false)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.stats.time(Op::Rmdir, 0);
        empty(reply, self.call(|| self.store.unlink(parent.0, name.as_bytes(), true)));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let _t = self.stats.time(Op::Symlink, 0);
        let t = target.as_os_str().as_bytes();
        if t.len() >= libc::PATH_MAX as usize {
            return reply.error(errno(&Error::NameTooLong));
        }
        let r = self.call(|| {
            self.store.create(parent.0, link_name.as_bytes(), Kind::Symlink, 0o777, req.uid(), req.gid(), 0, t)
        });
        self.entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _t = self.stats.time(Op::Rename, 0);
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(errno(&Error::Invalid));
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return empty(
                reply,
                self.call(|| self.store.exchange(parent.0, name.as_bytes(), newparent.0, newname.as_bytes())),
            );
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        empty(
            reply,
            self.call(|| self.store.rename(parent.0, name.as_bytes(), newparent.0, newname.as_bytes(), noreplace)),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _t = self.stats.time(Op::Open, 0);
        match self.call(|| self.store.open_file(ino.0)) {
            Ok(_) => reply.opened(self.fh(), self.open_flags()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _t = self.stats.time(Op::Create, 0);
        let r = self.call(|| {
            let a =
                self.store.create(parent.0, name.as_bytes(), Kind::File, mode as u16, req.uid(), req.gid(), 0, b"")?;
            self.store.open_file(a.ino)
        });
        match r {
            Ok(a) => reply.created(
                &self.cfg.attr_ttl.min(self.cfg.entry_ttl),
                &self.attr(&a),
                Generation(0),
                self.fh(),
                self.open_flags(),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _t = self.stats.time(Op::Read, u64::from(size));
        let mut reply = Some(reply);
        let r = self.call(|| {
            self.store.read(ino.0, offset, size, |bytes| {
                if let Some(r) = reply.take() {
                    r.data(bytes);
                }
            })
        });
        if let (Err(e), Some(r)) = (r, reply.take()) {
            r.error(errno(&e));
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _t = self.stats.time(Op::Write, data.len() as u64);
        let r = self.call(|| {
            if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
                self.kill_privs_for_write(ino)?;
            }
            self.store.write(ino.0, offset, data)
        });
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let _t = self.stats.time(Op::Flush, 0);
        // close(2) promises no durability; fsync does.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _t = self.stats.time(Op::Release, 0);
        empty(reply, self.call(|| self.store.release(ino.0)));
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _t = self.stats.time(Op::Fsync, 0);
        empty(reply, self.call(|| self.store.fsync(ino.0)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.call(|| self.store.getattr(ino.0)) {
            Ok(a) if a.kind == Kind::Dir => reply.opened(self.fh(), FopenFlags::empty()),
            Ok(_) => reply.error(errno(&Error::NotDir)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _t = self.stats.time(Op::Readdir, 0);
        let r = self.call(|| {
            self.store.readdir(ino.0, offset, |ino, off, kind, name| {
                reply.add(INodeNo(ino), off, file_type(kind), OsStr::from_bytes(name))
            })
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _t = self.stats.time(Op::Fsyncdir, 0);
        empty(reply, self.call(|| self.store.sync_journal()));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _t = self.stats.time(Op::Statfs, 0);
        let s = self.store.statfs();
        reply.statfs(
            s.blocks,
            s.free_blocks,
            s.free_blocks,
            s.files,
            s.free_files,
            s.block_size,
            NAME_MAX as u32,
            s.block_size,
        );
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _t = self.stats.time(Op::Link, 0);
        self.entry(reply, self.call(|| self.store.link(ino.0, newparent.0, newname.as_bytes())));
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _t = self.stats.time(Op::Xattr, value.len() as u64);
        let (create, replace) = (flags & libc::XATTR_CREATE != 0, flags & libc::XATTR_REPLACE != 0);
        empty(reply, self.call(|| self.store.setxattr(ino.0, name.as_bytes(), value, create, replace)));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _t = self.stats.time(Op::Xattr, 0);
        let mut reply = Some(reply);
        let r = self.call(|| {
            self.store.getxattr(ino.0, name.as_bytes(), |v| {
                if let Some(r) = reply.take() {
                    xattr_reply(r, size, v);
                }
            })
        });
        if let (Err(e), Some(r)) = (r, reply.take()) {
            r.error(errno(&e));
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _t = self.stats.time(Op::Xattr, 0);
        match self.call(|| self.store.listxattr(ino.0)) {
            Ok(list) => xattr_reply(reply, size, &list),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.stats.time(Op::Xattr, 0);
        empty(reply, self.call(|| self.store.removexattr(ino.0, name.as_bytes())));
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _t = self.stats.time(Op::Fallocate, length);
        // A content change by a caller without CAP_FSETID (approximated, as for truncate, by
        // uid 0) drops set-ID bits, in every mode, as Linux's file_modified() does.
        empty(
            reply,
            self.call(|| {
                self.store.fallocate(ino.0, offset, length, mode)?;
                if req.uid() != 0 {
                    self.kill_privs_for_write(ino)?;
                }
                Ok(())
            }),
        );
    }

    fn lseek(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let _t = self.stats.time(Op::Lseek, 0);
        // The kernel sends only SEEK_DATA and SEEK_HOLE; it handles the others itself.
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return reply.error(errno(&Error::Invalid)),
        };
        let Ok(off) = u64::try_from(offset) else { return reply.error(errno(&Error::NoSuchOffset)) };
        match self.call(|| self.store.seek(ino.0, off, data)) {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _t = self.stats.time(Op::CopyFileRange, len);
        // A reply counts at most u32::MAX bytes; the caller loops for the rest.
        let len = len.min(1 << 30);
        let copy = || {
            let n = self.store.copy_range(ino_in.0, offset_in, ino_out.0, offset_out, len)?;
            // The destination's content changed: as a write by this caller would.
            if n > 0 && req.uid() != 0 {
                self.kill_privs_for_write(ino_out)?;
            }
            Ok(n)
        };
        match self.call(copy) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // With default_permissions the kernel checks; this only confirms the inode exists.
        empty(reply, self.call(|| self.store.getattr(ino.0)).map(|_| ()));
    }
}
