//! Test harness: runs the real `mmapfs` binary on a temporary store and mountpoint.
//! `Mounted` unmounts in `Drop`, so a failing test leaks neither a mount nor a daemon.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub mod disk;
pub mod model;

pub const BIN: &str = env!("CARGO_BIN_EXE_mmapfs");

/// A running daemon with its store and mountpoint.
pub struct Mounted {
    pub store: PathBuf,
    pub mnt: PathBuf,
    pub args: Vec<String>,
    /// Extra environment of the daemon (e.g. `MMAPFS_FAULTS`).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

pub use mmapfs::mounts::is_mounted;
pub use mmapfs::testing::wait_timeout;

/// Detaches a (possibly dead) mount; a mount already gone is no error here.
pub fn lazy_umount(mnt: &Path) {
    let _ = mmapfs::mounts::lazy_unmount(mnt);
}

impl Mounted {
    /// A fresh store in a new temporary directory, mounted with `args` (e.g. `-o`, `--capacity`).
    pub fn new(args: &[&str]) -> Mounted {
        let mut m = Mounted::new_stopped(args);
        m.start().expect("mount");
        m
    }

    /// A fresh store mounted with `args` and the daemon environment `env`.
    pub fn with_env(args: &[&str], env: &[(&str, &str)]) -> Mounted {
        let mut m = Mounted::new_stopped(args);
        m.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        m.start().expect("mount");
        m
    }

    /// Like [`Mounted::new`], but the daemon is not started yet.
    pub fn new_stopped(args: &[&str]) -> Mounted {
        let tmp = tempfile::tempdir().expect("tempdir");
        Mounted {
            store: tmp.path().join("store"),
            mnt: tmp.path().join("mnt"),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            child: None,
            log: tmp.path().join("daemon.log"),
            _tmp: Some(tmp),
        }
    }

    /// A daemon on the store directory `store` (which may not exist yet), mounted at `mnt`.
    pub fn at(store: PathBuf, mnt: PathBuf, args: &[&str]) -> Result<Mounted, String> {
        let log = mnt.with_extension("log");
        let args = args.iter().map(|s| s.to_string()).collect();
        let mut m = Mounted { store, mnt, args, env: Vec::new(), child: None, log, _tmp: None };
        m.start()?;
        Ok(m)
    }

    /// Starts the daemon again on the same store and mountpoint.
    pub fn start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "already running");
        let log = File::options().create(true).append(true).open(&self.log).unwrap();
        let mut child = Command::new(BIN)
            .arg("mount")
            .arg("--store")
            .arg(&self.store)
            .arg(&self.mnt)
            .args(&self.args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        match mmapfs::testing::wait_mounted(&self.mnt, &mut child, Duration::from_secs(20)) {
            Ok(c) => self.mnt = c,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{e}: {}", self.log()));
            }
        }
        self.child = Some(child);
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM and wait: the daemon must unmount and exit 0.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("daemon did not exit after SIGTERM");
        assert!(status.success(), "daemon exit status {status}: {}", self.log());
        assert!(!is_mounted(&self.mnt), "still mounted after SIGTERM");
    }

    /// `kill -9` the daemon and clear the dead mount.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
        lazy_umount(&self.mnt);
    }

    /// Hands the daemon process to the caller, who becomes responsible for ending it.
    pub fn take_child(&mut self) -> Child {
        self.child.take().expect("running")
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start().expect("remount");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- daemon log (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if is_mounted(&self.mnt) {
            lazy_umount(&self.mnt);
        }
    }
}

/// `mmapfs fsck STORE`: (exit status, stdout).
pub fn fsck(store: &Path) -> (i32, String) {
    let out = Command::new(BIN).arg("fsck").arg(store).env("RUST_LOG", "warn").output().expect("run mmapfs fsck");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the binary with `args` (no daemon), returning (success, stderr).
pub fn run(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(BIN).args(args).env("RUST_LOG", "warn").output().expect("run mmapfs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

pub use mmapfs::rng::Rng;

/// A generator seeded from MMAPFS_SEED or the clock; the seed is printed so a failure
/// reproduces with `MMAPFS_SEED=…`.
pub fn seeded_rng() -> Rng {
    let seed = std::env::var("MMAPFS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("seed {seed} (rerun with MMAPFS_SEED={seed})");
    Rng::new(seed)
}

/// errno of the last failed libc call.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// One entry of [`tree`]: mode (with the file type bits), owner, and a file's bytes (empty for
/// anything else).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub mode: u32,
    pub uid: u32,
    pub data: Vec<u8>,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// Everything under `dir` (symlinks not followed), by path relative to `dir`: what a test
/// compares to prove a refused store was left exactly as it was, or checks modes in.
pub fn tree(dir: &Path) -> std::collections::BTreeMap<PathBuf, Entry> {
    use std::os::unix::fs::MetadataExt;
    let mut m = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let data = if md.is_file() { std::fs::read(&p).unwrap() } else { Vec::new() };
            if md.is_dir() {
                stack.push(p.clone());
            }
            m.insert(p.strip_prefix(dir).unwrap().to_path_buf(), Entry { mode: md.mode(), uid: md.uid(), data });
        }
    }
    m
}

/// Bytes of host space under `path` (what `du` counts: allocated blocks, holes not).
pub fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(path).unwrap();
    let mut n = md.blocks() * 512;
    if md.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            n += du(&e.unwrap().path());
        }
    }
    n
}

/// The errno of a failed call, `None` if it succeeded.
pub fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// Runs a system command that must succeed; its trimmed stdout.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The segment number and offset in it where byte `at` of the mounted file `name` lives
/// (`mmapfs inspect`).
pub fn placed(m: &Mounted, name: &str, at: u64) -> (u64, u64) {
    let out = Command::new(BIN).arg("inspect").arg(m.path(name)).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for e in v["file"]["extents"].as_array().unwrap() {
        let (fo, len) = (e["file_offset"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        if fo <= at && at < fo + len {
            return (e["segment"].as_u64().unwrap(), e["segment_offset"].as_u64().unwrap() + at - fo);
        }
    }
    panic!("byte {at} of {name} is in no extent: {v}");
}

/// A child process maps `path`, drops its cached pages, and loads byte `at`: how it ended
/// (killed by SIGBUS when the page cannot be read).
pub fn mapped_load(path: &Path, at: usize) -> std::process::ExitStatus {
    use std::os::unix::io::AsRawFd;
    let f = File::open(path).unwrap();
    // SAFETY: fork; the child makes only system calls and one load, then _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: a read-only shared mapping of an open file, inside its size; the child exits
        // right after the load (or dies of SIGBUS on it).
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            let p = libc::mmap(std::ptr::null_mut(), at + 1, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0);
            if p == libc::MAP_FAILED {
                libc::_exit(2);
            }
            std::ptr::read_volatile((p as *const u8).add(at));
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    std::os::unix::process::ExitStatusExt::from_raw(status)
}

impl Mounted {
    /// SIGTERM a daemon whose store failed: it must unmount and say so, with a non-zero exit
    /// status and `failed` in the lock file.
    pub fn stop_failed(&mut self) {
        let mut child = self.take_child();
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("no exit after SIGTERM");
        assert!(!status.success(), "a failed store closed with status 0: {}", self.log());
        let lock = std::fs::read_to_string(self.store.join("lock")).unwrap();
        assert!(lock.trim_end().ends_with("failed"), "lock file {lock:?}");
        assert!(!is_mounted(&self.mnt), "still mounted after SIGTERM");
    }
}

/// True when the tests run as root (CI does): loop devices, mounts, cgroups, sysctls.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `mmapfs stats --json PATH` (a store or a mountpoint).
pub fn stats_json(path: &Path) -> serde_json::Value {
    let out = std::process::Command::new(BIN)
        .args([std::ffi::OsStr::new("stats"), std::ffi::OsStr::new("--json"), path.as_os_str()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The daemon's figures as of now: waits for a snapshot written after this call began (the
/// daemon writes one a second), so everything that returned before the call is counted.
pub fn fresh_stats(store: &Path) -> serde_json::Value {
    let uptime = |s: &serde_json::Value| s["uptime_s"].as_f64().unwrap();
    let read = || std::fs::read(store.join("stats.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
    // No snapshot yet: any that appears is fresh.
    let since = read().map_or(-1.0, |s| uptime(&s));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = read().filter(|s| uptime(s) > since) {
            // Through the command users run, now that a fresh snapshot is there.
            let shown = stats_json(store);
            assert!(uptime(&shown) >= uptime(&s));
            return shown;
        }
        assert!(std::time::Instant::now() < deadline, "no new stats.json in {} within 20 s", store.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}
