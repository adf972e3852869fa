//! `mmapfs-faultdev BACKING MOUNTPOINT`: a test device. A FUSE filesystem holding one file,
//! `disk` (the bytes of BACKING, which keeps its size), to put a loop device and a real
//! filesystem on, and a control file, `ctl`, to which commands are written, one a line:
//!
//! - `fail-read OFFSET LEN` / `fail-write OFFSET LEN`: reads (writes) of `disk` that touch the
//!   range fail with `EIO`, as a disk's media error would, until `heal`;
//! - `heal`: no range fails any more;
//! - `cache on` / `cache off`: a volatile write cache: writes are held in memory (reads see
//!   them) until a flush (`fsync` of `disk`, which the loop driver sends for a flush request)
//!   writes them to BACKING; `cache off` flushes;
//! - `powercut`: the held writes are lost, as a disk's cache is on a power cut.
//! - `power off`: a power cut that lasts: the held writes are lost and every later write and
//!   flush does nothing (and succeeds), so the filesystem above can be unmounted without
//!   anything reaching the disk; `power on` ends it (the cache stays as it was set).
//!
//! Reading `ctl` tells `flushes N`: the flushes (fsyncs of `disk`) so far, to count the
//! device cache flushes an operation on the filesystem above costs.
//!
//! `disk` is opened with `FOPEN_DIRECT_IO`, so every I/O of the loop device reaches this
//! process. Serves in the foreground until unmounted or SIGTERM.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const ROOT: u64 = 1;
const DISK: u64 = 2;
const CTL: u64 = 3;
const TTL: Duration = Duration::from_secs(1);
const PAGE: u64 = 4096;

#[derive(Default)]
struct State {
    fail_read: Vec<(u64, u64)>,
    fail_write: Vec<(u64, u64)>,
    /// Held writes by page, when the volatile cache is on.
    cache: Option<BTreeMap<u64, Vec<u8>>>,
    /// Flushes (fsyncs of `disk`) so far.
    flushes: u64,
    /// `power off`: writes and flushes do nothing.
    off: bool,
}

struct FaultDev {
    backing: File,
    size: u64,
    state: Mutex<State>,
}

fn overlaps(ranges: &[(u64, u64)], off: u64, len: u64) -> bool {
    ranges.iter().any(|&(s, l)| off < s + l && s < off + len)
}

impl FaultDev {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, perm, size) = match ino {
            ROOT => (FileType::Directory, 0o755, 0),
            DISK => (FileType::RegularFile, 0o600, self.size),
            _ => (FileType::RegularFile, 0o600, PAGE),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size / 512,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: if ino == ROOT { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        }
    }

    /// Writes the held pages to the backing file and syncs it.
    fn flush(&self, st: &mut State) -> std::io::Result<()> {
        if let Some(cache) = &mut st.cache {
            for (page, data) in std::mem::take(cache) {
                self.backing.write_all_at(&data, page * PAGE)?;
            }
        }
        self.backing.sync_data()
    }

    fn command(&self, line: &str) -> Result<(), String> {
        let mut st = self.state();
        let w: Vec<&str> = line.split_whitespace().collect();
        let range = || -> Result<(u64, u64), String> {
            match (w.get(1).and_then(|s| s.parse().ok()), w.get(2).and_then(|s| s.parse().ok())) {
                (Some(o), Some(l)) => Ok((o, l)),
                _ => Err(format!("{line:?}: OFFSET LEN")),
            }
        };
        match w.first().copied() {
            None => {}
            Some("fail-read") => st.fail_read.push(range()?),
            Some("fail-write") => st.fail_write.push(range()?),
            Some("heal") => {
                st.fail_read.clear();
                st.fail_write.clear();
            }
            Some("cache") if w.get(1) == Some(&"on") => {
                st.cache.get_or_insert_with(BTreeMap::new);
            }
            Some("cache") if w.get(1) == Some(&"off") => {
                self.flush(&mut st).map_err(|e| e.to_string())?;
                st.cache = None;
            }
            Some("powercut") => {
                if let Some(c) = &mut st.cache {
                    c.clear();
                }
            }
            Some("power") if w.get(1) == Some(&"off") => {
                if let Some(c) = &mut st.cache {
                    c.clear();
                }
                st.off = true;
            }
            Some("power") if w.get(1) == Some(&"on") => st.off = false,
            Some(_) => return Err(format!("unknown command {line:?}")),
        }
        eprintln!("faultdev: {line}");
        Ok(())
    }

    fn read_disk(&self, off: u64, len: u64) -> Result<Vec<u8>, Errno> {
        let st = self.state();
        let len = len.min(self.size.saturating_sub(off));
        if overlaps(&st.fail_read, off, len) {
            eprintln!("faultdev: read {off}+{len}: EIO");
            return Err(Errno::EIO);
        }
        let mut buf = vec![0u8; len as usize];
        self.backing.read_exact_at(&mut buf, off).map_err(|_| Errno::EIO)?;
        if let Some(cache) = &st.cache {
            for (&page, data) in cache.range(off / PAGE..(off + len).div_ceil(PAGE)) {
                let (ps, pe) = (page * PAGE, page * PAGE + PAGE);
                let (s, e) = (ps.max(off), pe.min(off + len));
                buf[(s - off) as usize..(e - off) as usize]
                    .copy_from_slice(&data[(s - ps) as usize..(e - ps) as usize]);
            }
        }
        Ok(buf)
    }

    fn write_disk(&self, off: u64, data: &[u8]) -> Result<(), Errno> {
        let mut st = self.state();
        let len = data.len() as u64;
        if off + len > self.size {
            return Err(Errno::ENOSPC);
        }
        if overlaps(&st.fail_write, off, len) {
            eprintln!("faultdev: write {off}+{len}: EIO");
            return Err(Errno::EIO);
        }
        if st.off {
            return Ok(());
        }
        if st.cache.is_none() {
            return self.backing.write_all_at(data, off).map_err(|_| Errno::EIO);
        }
        // Held: read-modify-write whole pages into the cache.
        for page in off / PAGE..(off + len).div_ceil(PAGE) {
            let (ps, pe) = (page * PAGE, page * PAGE + PAGE);
            let mut cur = match st.cache.as_ref().and_then(|c| c.get(&page)) {
                Some(p) => p.clone(),
                None => {
                    let mut p = vec![0u8; PAGE as usize];
                    let _ = self.backing.read_at(&mut p, ps);
                    p
                }
            };
            let (s, e) = (ps.max(off), pe.min(off + len));
            cur[(s - ps) as usize..(e - ps) as usize].copy_from_slice(&data[(s - off) as usize..(e - off) as usize]);
            st.cache.as_mut().expect("cache on").insert(page, cur);
        }
        Ok(())
    }
}

impl Filesystem for FaultDev {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = match (parent.0, name.to_str()) {
            (ROOT, Some("disk")) => DISK,
            (ROOT, Some("ctl")) => CTL,
            _ => return reply.error(Errno::ENOENT),
        };
        reply.entry(&TTL, &self.attr(ino), Generation(0));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.attr(&TTL, &self.attr(ino.0));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // `echo … > ctl` truncates it first; the disk keeps its size.
        reply.attr(&TTL, &self.attr(ino.0));
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
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
        match ino.0 {
            DISK => match self.read_disk(offset, size as u64) {
                Ok(b) => reply.data(&b),
                Err(e) => reply.error(e),
            },
            CTL if offset == 0 => reply.data(format!("flushes {}\n", self.state().flushes).as_bytes()),
            _ => reply.data(&[]),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = match ino.0 {
            DISK => self.write_disk(offset, data),
            CTL => String::from_utf8_lossy(data).lines().try_for_each(|l| self.command(l)).map_err(|e| {
                eprintln!("faultdev: {e}");
                Errno::EINVAL
            }),
            _ => Err(Errno::EACCES),
        };
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut st = self.state();
        st.flushes += 1;
        if st.off {
            return reply.ok();
        }
        match self.flush(&mut st) {
            Ok(()) => reply.ok(),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, backing, mnt] = &args[..] else {
        eprintln!("usage: mmapfs-faultdev BACKING MOUNTPOINT");
        return ExitCode::from(2);
    };
    let run = || -> std::io::Result<()> {
        let file = File::options().read(true).write(true).open(backing)?;
        let size = file.metadata()?.len();
        let dev = FaultDev { backing: file, size, state: Mutex::new(State::default()) };
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![fuser::MountOption::FSName("faultdev".into())];
        cfg.n_threads = Some(2);
        // SIGTERM/SIGINT unmount (blocked before any thread exists, received by one); the
        // session then returns.
        let mut signals = nix::sys::signal::SigSet::empty();
        signals.add(nix::sys::signal::Signal::SIGTERM);
        signals.add(nix::sys::signal::Signal::SIGINT);
        signals.thread_block().map_err(std::io::Error::from)?;
        let mut session = fuser::Session::new(dev, mnt, &cfg)?;
        let mut unmounter = session.unmount_callable();
        std::thread::spawn(move || {
            if signals.wait().is_ok() {
                let _ = unmounter.unmount();
            }
        });
        session.run()
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mmapfs-faultdev: {e}");
            ExitCode::FAILURE
        }
    }
}
