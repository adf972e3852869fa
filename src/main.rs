//! `mmapfs`: command line, logging, signals, mount and unmount.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use mmapfs::config::{MountConfig, default_store, parse_size};
use mmapfs::fs::{FsConfig, MmapFs};
use mmapfs::stats::{self, Snapshot, Stats};
use mmapfs::store::{self, Backend, FormatOptions, OpenOptions, Store, SyncPolicy, Tuning};

#[derive(Parser)]
#[command(name = "mmapfs", version, about = "A FUSE filesystem whose file data lives in memory-mapped segment files")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount a store (created on first use) and serve it in the foreground until it is
    /// unmounted (umount MOUNTPOINT) or the process gets SIGINT/SIGTERM.
    Mount {
        /// The store directory [default: ~/.local/share/mmapfs/default]
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        /// Where to mount (created if missing)
        mountpoint: PathBuf,
        /// Mount options, comma separated: allow_other, default_permissions (on by default),
        /// no_default_permissions, ro, rw, nodev, nosuid, noexec, noatime, sync, dirsync,
        /// fsname=NAME, and mmapfs's own: writeback_cache, direct_io, max_write=SIZE
        #[arg(short = 'o', value_name = "OPTS")]
        options: Vec<String>,
        /// FUSE request threads [default: number of cores]
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        /// Largest FUSE WRITE request, 4K..16M; the same as -o max_write=SIZE (which wins if
        /// both are given)
        #[arg(long, value_name = "SIZE", default_value_t = Size(FsConfig::default().max_write as u64))]
        max_write: Size,
        /// Segment size for a store created by this mount
        #[arg(long, value_name = "SIZE", default_value_t = Size(FormatOptions::default().segment_size))]
        segment_size: Size,
        /// Capacity for a store created by this mount
        #[arg(long, value_name = "SIZE", default_value_t = Size(FormatOptions::default().capacity))]
        capacity: Size,
        /// Journal size that triggers a checkpoint (bounds mount time)
        #[arg(long, value_name = "SIZE", default_value_t = Size(OpenOptions::default().journal_limit))]
        journal_limit: Size,
        /// How the daemon reaches file data: its segment mappings, pread/pwrite on the
        /// segment files (fsync is then fdatasync), or direct: O_DIRECT I/O into the daemon's
        /// own buffer pool (CLOCK eviction, written through)
        #[arg(long, value_enum, default_value_t = Tuning::default().backend.into())]
        backend: BackendArg,
        /// Size of the direct backend's buffer pool [default: an eighth of the memory]
        #[arg(long, value_name = "SIZE")]
        pool_size: Option<Size>,
        /// madvise() on the segment mappings; with `random` the daemon reads ahead exactly
        /// the ranges requests touch (the default: keeps page-cache folios small, so a
        /// scattered write costs one page of writeback at fsync)
        #[arg(long, value_enum, default_value_t = AdviceArg::of(Tuning::default().advice))]
        madvise: AdviceArg,
        /// Pre-fault the segment mappings (MAP_POPULATE)
        #[arg(long)]
        populate: bool,
        /// Copy multi-page writes through the segment mappings too (page by page, each new
        /// page zeroed by the kernel first) instead of pwrite into the same page cache
        #[arg(long)]
        map_writes: bool,
        /// What fsync does: full (data + metadata), data (data only), none (UNSAFE: nothing)
        #[arg(long, value_enum, default_value_t = SyncPolicy::default().into())]
        sync: SyncArg,
    },
    /// Show the counters of a running daemon (or the last ones of a stopped one).
    Stats {
        /// A mountpoint or a store directory [default: the default store]
        path: Option<PathBuf>,
        /// Machine-readable output (the same as --format json)
        #[arg(long)]
        json: bool,
        /// How to print the figures
        #[arg(long, value_enum, default_value_t = StatsFormat::Table)]
        format: StatsFormat,
        /// Print rates per second every SECS seconds (like iostat) until interrupted or the
        /// daemon ends
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
        watch: Option<f64>,
    },
    /// Check a store that is not mounted, changing nothing (like e2fsck -n). Exit status 0:
    /// clean; 1: damage found; 2: the check could not run.
    Fsck {
        /// The store directory [default: the default store]
        store: Option<PathBuf>,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Show where the bytes are: each segment's fill, free-space fragmentation and how much
    /// of it the page cache holds (resident, dirty); for a file in a mounted mmapfs (or
    /// --inode N), its extents (segment, offset, length) and resident bytes. Reads a mounted
    /// store too, changing nothing.
    Inspect {
        /// A store directory, an mmapfs mountpoint, or a file in one [default: the default store]
        path: Option<PathBuf>,
        /// The inode to show (for a store that is not mounted)
        #[arg(long, value_name = "N")]
        inode: Option<u64>,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
        /// Also draw the store map (segments × blocks: free, used, resident, dirty) into FILE
        #[arg(long, value_name = "FILE")]
        png: Option<PathBuf>,
    },
    /// Print a shell completion script: `mmapfs completions bash > /etc/bash_completion.d/mmapfs`
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (mmapfs.1, mmapfs-mount.1, …), generated from this command line,
    /// into DIR; docs/man/ holds a copy
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Create an empty store in DIR (which must not exist or be empty).
    Format {
        dir: PathBuf,
        /// Size of each segment file
        #[arg(long, value_name = "SIZE", default_value_t = Size(FormatOptions::default().segment_size))]
        segment_size: Size,
        /// Most file data the store will hold
        #[arg(long, value_name = "SIZE", default_value_t = Size(FormatOptions::default().capacity))]
        capacity: Size,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    Mmap,
    Pread,
    Direct,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum AdviceArg {
    Normal,
    Random,
    Sequential,
    Willneed,
    Hugepage,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum StatsFormat {
    Table,
    Json,
    /// Prometheus' text exposition format
    Prometheus,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SyncArg {
    Full,
    Data,
    None,
}

/// A size on the command line: parsed like `64M`, shown the same way in `--help`.
#[derive(Clone, Copy, Debug)]
struct Size(u64);

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        parse_size(s).map(Size)
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = [(40, "T"), (30, "G"), (20, "M"), (10, "K")]
            .into_iter()
            .find(|&(b, _)| self.0 >= 1 << b && self.0.is_multiple_of(1 << b));
        match unit {
            Some((b, u)) => write!(f, "{}{u}", self.0 >> b),
            None => write!(f, "{}", self.0),
        }
    }
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Backend {
        match b {
            BackendArg::Mmap => Backend::Mmap,
            BackendArg::Pread => Backend::Pread,
            BackendArg::Direct => Backend::Direct,
        }
    }
}

impl From<Backend> for BackendArg {
    fn from(b: Backend) -> BackendArg {
        match b {
            Backend::Mmap => BackendArg::Mmap,
            Backend::Pread => BackendArg::Pread,
            Backend::Direct => BackendArg::Direct,
        }
    }
}

impl AdviceArg {
    const ALL: [(AdviceArg, memmap2::Advice); 5] = [
        (AdviceArg::Normal, memmap2::Advice::Normal),
        (AdviceArg::Random, memmap2::Advice::Random),
        (AdviceArg::Sequential, memmap2::Advice::Sequential),
        (AdviceArg::Willneed, memmap2::Advice::WillNeed),
        (AdviceArg::Hugepage, memmap2::Advice::HugePage),
    ];

    fn advice(self) -> memmap2::Advice {
        Self::ALL.iter().find(|(a, _)| *a == self).expect("every advice is listed").1
    }

    fn of(advice: memmap2::Advice) -> AdviceArg {
        Self::ALL.iter().find(|(_, m)| *m == advice).map_or(AdviceArg::Normal, |(a, _)| *a)
    }
}

impl From<SyncArg> for SyncPolicy {
    fn from(s: SyncArg) -> SyncPolicy {
        match s {
            SyncArg::Full => SyncPolicy::Full,
            SyncArg::Data => SyncPolicy::Data,
            SyncArg::None => SyncPolicy::None,
        }
    }
}

impl From<SyncPolicy> for SyncArg {
    fn from(s: SyncPolicy) -> SyncArg {
        match s {
            SyncPolicy::Full => SyncArg::Full,
            SyncPolicy::Data => SyncArg::Data,
            SyncPolicy::None => SyncArg::None,
        }
    }
}

fn main() -> ExitCode {
    // Everything the daemon creates on the host (store files, stats.json) is private to its
    // user, whatever umask it was started with; the store code sets 0600/0700 itself too.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match helper_form(&args) {
        Some(h) => {
            // mount(8)'s form: returns once the mount is live, then serves in the background.
            if !h.foreground {
                if let Some(code) = background(h.log.as_deref()) {
                    return code;
                }
            } else {
                init_logging(false);
            }
            Cli::parse_from(h.args)
        }
        None => {
            init_logging(false);
            Cli::parse()
        }
    };
    let r = match cli.cmd {
        Cmd::Format { dir, segment_size, capacity } => {
            store::format(&dir, FormatOptions { segment_size: segment_size.0, capacity: capacity.0 })
                .map_err(|e| e.to_string())
        }
        Cmd::Stats { path, json, format, watch } => {
            let path = path.unwrap_or_else(default_store);
            match watch {
                Some(secs) => watch_stats(&path, secs),
                None => show_stats(&path, if json { StatsFormat::Json } else { format }),
            }
        }
        Cmd::Fsck { store, json } => return fsck(&store.unwrap_or_else(default_store), json),
        Cmd::Inspect { path, inode, json, png } => {
            inspect(&path.unwrap_or_else(default_store), inode, json, png.as_deref())
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "mmapfs", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man { dir } => clap_mangen::generate_to(Cli::command(), &dir)
            .map_err(|e| format!("writing the manual pages into {}: {e}", dir.display())),
        Cmd::Mount {
            store,
            mountpoint,
            options,
            threads,
            max_write,
            segment_size,
            capacity,
            journal_limit,
            backend,
            madvise,
            populate,
            map_writes,
            pool_size,
            sync,
        } => {
            let mut cfg = MountConfig::new(store.unwrap_or_else(default_store), mountpoint);
            let tuning = Tuning {
                backend: backend.into(),
                advice: madvise.advice(),
                populate,
                map_writes,
                pool_size: pool_size.map_or(Tuning::default().pool_size, |s| s.0),
            };
            cfg.store_opts = OpenOptions {
                format: FormatOptions { segment_size: segment_size.0, capacity: capacity.0 },
                journal_limit: journal_limit.0,
                tuning,
                sync: sync.into(),
            };
            if let Some(t) = threads {
                cfg.threads = t;
            }
            std::iter::once(format!("max_write={max_write}"))
                .chain(options.iter().cloned())
                .try_for_each(|o| cfg.apply_options(&o))
                .and_then(|()| cfg.validate())
                .and_then(|()| mount(&cfg))
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mmapfs: error: {e}");
            tell_starter(&format!("mmapfs: error: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Logging to stderr (`RUST_LOG`, default info), or to syslog for a background daemon that
/// has no log file.
fn init_logging(to_syslog: bool) {
    let env = env_logger::Env::default().default_filter_or("info");
    if to_syslog {
        let level = std::env::var("RUST_LOG")
            .ok()
            .and_then(|l| l.parse::<log::LevelFilter>().ok())
            .unwrap_or(log::LevelFilter::Info);
        if syslog::init(syslog::Facility::LOG_DAEMON, level, Some("mmapfs")).is_ok() {
            return;
        }
    }
    env_logger::Builder::from_env(env).init();
}

/// `mmapfs SOURCE MOUNTPOINT [-o OPTS] [-f]`, as mount(8) runs it through mount.fuse3.
struct HelperForm {
    /// The equivalent `mmapfs mount --store SOURCE MOUNTPOINT -o …` command line.
    args: Vec<std::ffi::OsString>,
    foreground: bool,
    log: Option<PathBuf>,
}

/// Options mount(8) and fstab use that mean nothing to the filesystem.
fn mount8_only(o: &str) -> bool {
    matches!(o, "defaults" | "auto" | "noauto" | "user" | "users" | "nouser" | "owner" | "group" | "nofail" | "_netdev")
        || o.starts_with("x-")
        || o.starts_with("comment=")
}

/// Recognizes mount(8)'s helper form: the first argument is no subcommand or flag.
fn helper_form(args: &[std::ffi::OsString]) -> Option<HelperForm> {
    let first = args.get(1)?.to_str().unwrap_or("-");
    let subcommands = Cli::command().get_subcommands().map(|c| c.get_name().to_string()).collect::<Vec<_>>();
    if first.starts_with('-') || first == "help" || subcommands.iter().any(|s| s == first) {
        return None;
    }
    let mut h = HelperForm { args: vec!["mmapfs".into(), "mount".into()], foreground: false, log: None };
    let (mut positional, mut opts) = (Vec::new(), Vec::new());
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-f") => h.foreground = true,
            // mount.fuse3 passes these through: no mtab, sloppy, verbose.
            Some("-n" | "-s" | "-v") => {}
            Some("-o") => opts.extend(it.next().and_then(|o| o.to_str()).map(str::to_string)),
            Some(o) if o.starts_with("-o") => opts.push(o[2..].to_string()),
            _ => positional.push(a.clone()),
        }
    }
    let [source, mountpoint] = <[std::ffi::OsString; 2]>::try_from(positional).ok()?;
    let mut keep = Vec::new();
    for o in opts.iter().flat_map(|o| o.split(',')).filter(|o| !o.is_empty()) {
        if let Some(f) = o.strip_prefix("log=") {
            h.log = Some(PathBuf::from(f));
        } else if !mount8_only(o) {
            keep.push(o.to_string());
        }
    }
    h.args.extend(["--store".into(), source, mountpoint]);
    if !keep.is_empty() {
        h.args.extend(["-o".into(), keep.join(",").into()]);
    }
    Some(h)
}

/// The write end of the pipe a background daemon's starter waits on (see [`background`]).
static STARTER: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);

/// Tells the process that started this background daemon how the mount went ("ok", or the
/// error), once; a no-op in the foreground.
fn tell_starter(msg: &str) {
    if let Some(mut f) = STARTER.lock().unwrap_or_else(|p| p.into_inner()).take() {
        use std::io::Write;
        let _ = f.write_all(msg.as_bytes());
    }
}

/// Forks: the parent waits until the child says the mount is live (exit 0) or failed (its
/// error on stderr, exit 1) and returns that exit status; the child leaves the terminal's
/// session, logs to `log` or syslog, and returns `None` to go on and serve. Called before any
/// thread exists.
fn background(log: Option<&Path>) -> Option<ExitCode> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!("mmapfs: error: pipe: {}", std::io::Error::last_os_error());
        return Some(ExitCode::FAILURE);
    }
    // SAFETY: the descriptors were just made and are owned here alone.
    let (mut rd, wr) = unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) };
    // SAFETY: no thread exists yet, so the child may run anything.
    match unsafe { libc::fork() } {
        -1 => {
            eprintln!("mmapfs: error: fork: {}", std::io::Error::last_os_error());
            Some(ExitCode::FAILURE)
        }
        0 => {
            drop(rd);
            // SAFETY: setsid has no preconditions; it fails only for a group leader, which a
            // fresh child is not.
            unsafe { libc::setsid() };
            let out = match log {
                Some(p) => std::fs::OpenOptions::new().create(true).append(true).open(p),
                None => std::fs::OpenOptions::new().write(true).open("/dev/null"),
            };
            let null = std::fs::File::open("/dev/null");
            if let (Ok(out), Ok(null)) = (out, null) {
                use std::os::fd::AsRawFd;
                // SAFETY: dup2 onto the standard descriptors, from descriptors we own.
                unsafe {
                    libc::dup2(null.as_raw_fd(), 0);
                    libc::dup2(out.as_raw_fd(), 1);
                    libc::dup2(out.as_raw_fd(), 2);
                }
            }
            init_logging(log.is_none());
            *STARTER.lock().unwrap_or_else(|p| p.into_inner()) = Some(wr);
            None
        }
        _ => {
            drop(wr);
            let mut said = String::new();
            let _ = rd.read_to_string(&mut said);
            if said == "ok" {
                return Some(ExitCode::SUCCESS);
            }
            if said.is_empty() {
                said = "mmapfs: error: the daemon ended before the mount was live".into();
            }
            eprintln!("{said}");
            Some(ExitCode::FAILURE)
        }
    }
}

/// `mmapfs fsck`: prints the report; the exit status says clean (0), damaged (1), or that the
/// check could not run (2).
fn fsck(dir: &Path, json: bool) -> ExitCode {
    let r = match store::fsck::check(dir) {
        Ok(r) => r,
        Err(store::fsck::CannotRun(m)) => {
            eprintln!("mmapfs fsck: {}: cannot check: {m}", dir.display());
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        println!("{}: format {}", r.store, r.format_version);
        println!(
            "  {} inodes ({} files, {} directories, {} orphans due for freeing), {} journal records after the checkpoint",
            r.inodes, r.files, r.directories, r.orphans, r.journal_records
        );
        println!(
            "  {} segments: {} MiB in use, {} MiB free",
            r.segments,
            r.used_bytes >> 20,
            r.free_bytes_in_segments >> 20
        );
        for n in &r.notes {
            println!("  note: {n}");
        }
        for p in &r.problems {
            println!("  DAMAGE: {p}");
        }
        println!("{}", if r.clean() { "clean" } else { "the store is damaged" });
    }
    if r.clean() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// The signals that end a mount.
fn shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own; no other memory is touched.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Refuses mountpoints that would make the daemon touch its own filesystem.
/// True if /etc/fuse.conf has a `user_allow_other` line (what fusermount3 requires before it
/// passes allow_other on for a normal user).
fn fuse_conf_allows_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf")
        .is_ok_and(|c| c.lines().any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other"))
}

fn check_paths(cfg: &MountConfig) -> Result<(PathBuf, PathBuf), String> {
    let mnt = &cfg.mountpoint;
    match std::fs::metadata(mnt) {
        Ok(m) if !m.is_dir() => return Err(format!("mountpoint {} is not a directory", mnt.display())),
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(format!("{} is a dead FUSE mount; run `umount {}` first", mnt.display(), mnt.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(mnt).map_err(|e| format!("cannot create mountpoint {}: {e}", mnt.display()))?
        }
        Err(e) => return Err(format!("mountpoint {}: {e}", mnt.display())),
    }
    let mnt = mnt.canonicalize().map_err(|e| format!("mountpoint {}: {e}", mnt.display()))?;
    let store = absolute(&cfg.store)?;
    if store.starts_with(&mnt) {
        return Err(format!(
            "the store {} lies inside the mountpoint {}; the daemon would deadlock on itself",
            store.display(),
            mnt.display()
        ));
    }
    Ok((store, mnt))
}

/// The canonical form of a path that may not exist yet.
fn absolute(p: &Path) -> Result<PathBuf, String> {
    let abs = std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut out = existing.canonicalize().map_err(|e| format!("{}: {e}", existing.display()))?;
    out.extend(rest.iter().rev());
    Ok(out)
}

fn mount(cfg: &MountConfig) -> Result<(), String> {
    store::faults::arm_from_env()?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let in_path =
        |b: &str| std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(b).exists()));
    if !root && !in_path("fusermount3") && !in_path("fusermount") {
        return Err("mounting as a normal user needs fusermount3 (Debian: apt-get install fuse3)".into());
    }
    if !root && cfg.allow_other && !fuse_conf_allows_other() {
        return Err("-o allow_other as a normal user needs the line `user_allow_other` in /etc/fuse.conf \
             (as root: echo user_allow_other >> /etc/fuse.conf); it lets every local user into the mount"
            .into());
    }
    if cfg.allow_other && !cfg.kernel.contains(&fuser::MountOption::DefaultPermissions) {
        log::warn!(
            "-o allow_other with no_default_permissions: the kernel no longer checks mode bits, so every \
             local user can read and change every file on this mount"
        );
    }
    let (store_dir, mnt) = check_paths(cfg)?;
    let mut cfg = cfg.clone();
    // The source column of /proc/mounts names the store, so `mmapfs stats MOUNTPOINT` finds it.
    for o in &mut cfg.kernel {
        if let fuser::MountOption::FSName(n) = o
            && n == "mmapfs"
        {
            *n = format!("mmapfs:{}", store_dir.display());
        }
    }
    let cfg = &cfg;
    if cfg.store_opts.sync == SyncPolicy::None {
        log::warn!(
            "--sync none: fsync and msync do NOTHING; data and metadata are NOT durable (an experiment setting)"
        );
    }
    // Block the shutdown signals before any thread exists, so every thread inherits the mask
    // and only the waiter below receives them.
    let signals = shutdown_signals();
    // SAFETY: the set is initialised; the old mask is not needed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };

    let store = Arc::new(Store::open(&store_dir, cfg.store_opts).map_err(|e| format!("{}: {e}", store_dir.display()))?);
    let mut fc = fuser::Config::default();
    fc.mount_options = cfg.kernel.clone();
    fc.acl = if cfg.allow_other { fuser::SessionACL::All } else { fuser::SessionACL::Owner };
    fc.n_threads = Some(cfg.threads);
    fc.clone_fd = cfg.threads > 1;
    let notifier = Arc::new(std::sync::OnceLock::new());
    let counters = Arc::new(Stats::default());
    let fs = MmapFs::new(store.clone(), cfg.fs.clone(), notifier.clone(), counters.clone());
    let unmounter = fs.unmounter.clone();
    let mut session = match fuser::Session::new(fs, &mnt, &fc) {
        Ok(s) => s,
        Err(e) => {
            let _ = store.close();
            return Err(format!("cannot mount {}: {e}", mnt.display()));
        }
    };
    let _ = notifier.set(session.notifier());
    let _ = unmounter.set(std::sync::Mutex::new(session.unmount_callable()));
    // systemd (Type=notify) learns the mount is live; a no-op without NOTIFY_SOCKET.
    let status = format!("serving {} at {}", store_dir.display(), mnt.display());
    let ready = [sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)];
    if let Err(e) = sd_notify::notify(&ready) {
        log::warn!("telling the service manager the mount is ready: {e}");
    }
    tell_starter("ok");
    let stop_with = if root { "umount" } else { "fusermount3 -u" };
    log::info!(
        "mounted store {} at {} ({} threads); stop with `{stop_with} {}` or SIGTERM",
        store_dir.display(),
        mnt.display(),
        cfg.threads,
        mnt.display()
    );
    spawn_signal_waiter(signals, session.unmount_callable(), mnt.clone())?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = spawn_housekeeping(stop.clone(), store.clone(), counters.clone(), cfg.clone(), mnt.clone())?;
    let checkpointer = spawn_checkpointer(stop.clone(), store.clone())?;
    let served = session.run();
    store.mark_closing();
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Stopping]) {
        log::warn!("telling the service manager the mount is stopping: {e}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.thread().unpark();
    store.wake_checkpoint_thread();
    let _ = writer.join();
    let _ = checkpointer.join();
    write_snapshot(&snapshot(&counters, &store, cfg, &mnt), store.dir());
    let closed = store.close();
    log::info!("unmounted {}", mnt.display());
    match served {
        // The kernel aborts the connection as it tears the superblock down (after DESTROY);
        // a second request loop that was still reading then sees ECONNABORTED, which fuser
        // passes on. The mount ended normally.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            log::debug!("a request loop saw the connection aborted at the end of the mount")
        }
        other => other.map_err(|e| format!("FUSE session failed: {e}"))?,
    }
    closed.map_err(|e| format!("closing the store: {e}"))
}

/// The one thread that receives SIGINT/SIGTERM: each unmounts (detaching if files are open).
fn spawn_signal_waiter(
    signals: libc::sigset_t,
    mut unmounter: fuser::SessionUnmounter,
    mnt: PathBuf,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `signals` is initialised and `sig` is a valid out-pointer.
            while unsafe { libc::sigwait(&signals, &mut sig) } == 0 {
                log::info!("signal {sig}: unmounting {}", mnt.display());
                if let Err(e) = unmounter.unmount() {
                    log::warn!("umount failed ({e}); detaching: the mount ends when its last file is closed");
                    lazy_unmount(&mnt);
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the signal thread: {e}"))
}

/// Takes the checkpoints the journal's budget asks for, off the request path, until `stop`
/// (wake it with `Store::wake_checkpoint_thread`).
fn spawn_checkpointer(
    stop: Arc<std::sync::atomic::AtomicBool>,
    store: Arc<Store>,
) -> Result<std::thread::JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || {
            // Background work yields to requests: on a machine with few cores, a checkpoint
            // at normal priority would delay the requests it was moved away from.
            // SAFETY: plain syscalls; on Linux, PRIO_PROCESS with a thread id sets that
            // thread's nice value only.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) } != 0 {
                log::debug!("cannot lower the checkpoint thread's priority: {}", std::io::Error::last_os_error());
            }
            loop {
                let due = store.wait_checkpoint_due(std::time::Duration::from_secs(1));
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                if due && let Err(e) = store.checkpoint_background() {
                    log::error!("checkpoint failed: {e}");
                }
            }
        })
        .map_err(|e| format!("cannot start the checkpoint thread: {e}"))
}

/// Once a second until `stop`: writes `STORE/stats.json` and gives freed space back to the
/// host. Unpark the thread to end it at once.
fn spawn_housekeeping(
    stop: Arc<std::sync::atomic::AtomicBool>,
    store: Arc<Store>,
    counters: Arc<Stats>,
    cfg: MountConfig,
    mnt: PathBuf,
) -> Result<std::thread::JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("stats+reclaim".into())
        .spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                write_snapshot(&snapshot(&counters, &store, &cfg, &mnt), store.dir());
                // Space freed by deletes goes back to the host within a second or so.
                if let Err(e) = store.reclaim() {
                    log::warn!("giving free space back to the host: {e}");
                }
                // Woken early at unmount, so the store closes without waiting for it.
                std::thread::park_timeout(std::time::Duration::from_secs(1));
            }
        })
        .map_err(|e| format!("cannot start the stats thread: {e}"))
}

/// The daemon's counters and knobs, as `mmapfs stats` shows them.
fn snapshot(counters: &Stats, store: &Store, cfg: &MountConfig, mnt: &Path) -> Snapshot {
    let (msync_calls, msync_bytes, msync_ns) = {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &store.counters;
        (c.msync_calls.load(Relaxed), c.msync_bytes.load(Relaxed), c.msync_nanos.load(Relaxed))
    };
    let (appends, syncs) = store.journal_counters();
    let (minor, major) = stats::page_faults();
    let (segments, resident, used, inodes) = store.usage();
    let o = &cfg.store_opts;
    let mode = if cfg.fs.writeback_cache {
        "writeback_cache"
    } else if cfg.fs.direct_io {
        "direct_io"
    } else {
        "default"
    };
    let kernel: Vec<String> = cfg.kernel.iter().map(mmapfs::config::option_name).collect();
    let options = vec![
        ("backend", format!("{:?}", o.tuning.backend).to_lowercase()),
        ("madvise", format!("{:?}", o.tuning.advice).to_lowercase()),
        ("populate", o.tuning.populate.to_string()),
        ("map_writes", o.tuning.map_writes.to_string()),
        ("pool_size", o.tuning.pool_size.to_string()),
        ("sync", format!("{:?}", o.sync).to_lowercase()),
        ("cache", mode.to_string()),
        ("threads", cfg.threads.to_string()),
        ("max_write", cfg.fs.max_write.to_string()),
        ("attr_timeout", format!("{:?}", cfg.fs.attr_ttl)),
        ("entry_timeout", format!("{:?}", cfg.fs.entry_ttl)),
        ("segment_size", store.superblock().segment_size.to_string()),
        ("capacity", store.superblock().capacity.to_string()),
        ("journal_limit", o.journal_limit.to_string()),
        ("kernel_options", kernel.join(",")),
    ];
    Snapshot {
        pid: std::process::id(),
        store: store.dir().display().to_string(),
        mountpoint: mnt.display().to_string(),
        options: options.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        uptime_s: counters.uptime().as_secs_f64(),
        ops: counters.ops(),
        msync_calls,
        msync_bytes,
        msync_ms: msync_ns as f64 / 1e6,
        journal_appends: appends,
        journal_syncs: syncs,
        minor_faults: minor,
        major_faults: major,
        segments_mapped: segments,
        resident_bytes: resident,
        used_bytes: used,
        capacity_bytes: store.superblock().capacity,
        inodes,
        pool: store.pool_counters().map(|([hits, misses, evictions, writes], bytes)| stats::PoolStats {
            bytes,
            hits,
            misses,
            evictions,
            writes,
        }),
    }
}

/// Writes `STORE/stats.json` atomically (write, rename).
fn write_snapshot(s: &Snapshot, dir: &Path) {
    let tmp = dir.join("stats.json.tmp");
    let r = serde_json::to_vec_pretty(s)
        .map_err(std::io::Error::other)
        .and_then(|b| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            // Private like the rest of the store, and never through a symlink someone planted.
            let _ = std::fs::remove_file(&tmp);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?
                .write_all(&b)
        })
        .and_then(|()| std::fs::rename(&tmp, dir.join("stats.json")));
    if let Err(e) = r {
        log::warn!("cannot write {}: {e}", dir.join("stats.json").display());
    }
}

/// `mmapfs inspect`: resolves PATH to a store (and a file's inode) and reports.
fn inspect(path: &Path, inode: Option<u64>, json: bool, png: Option<&Path>) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let (dir, ino) = if path.join("superblock").is_file() {
        (path.to_path_buf(), inode)
    } else if let Some(store) = store_of_mount(path) {
        (store, inode)
    } else {
        // A file in a mounted mmapfs: its mount is the nearest ancestor with an mmapfs source.
        let full = path.canonicalize().map_err(|e| format!("{}: {e}", path.display()))?;
        let store = full.ancestors().skip(1).find_map(store_of_mount).ok_or_else(|| {
            format!("{} is neither an mmapfs store, an mmapfs mountpoint, nor a file in one", path.display())
        })?;
        let ino = std::fs::metadata(&full).map_err(|e| format!("{}: {e}", path.display()))?.ino();
        (store, Some(ino))
    };
    let i = store::inspect::inspect(&dir, ino).map_err(|e| format!("inspecting {}: {e}", dir.display()))?;
    if let Some(out) = png {
        mmapfs::inspect::png(&i, out, &format!("{}", path.display()))?;
    }
    let out = if json {
        serde_json::to_string_pretty(&mmapfs::inspect::json(&i)).unwrap_or_default() + "\n"
    } else {
        mmapfs::inspect::text(&i, &path.display().to_string())
    };
    // A reader that stops early (`| head`) is not an error.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("writing the report: {e}")),
        _ => Ok(()),
    }
}

/// The store behind a mountpoint, from the source column of the mount table.
fn store_of_mount(mnt: &Path) -> Option<PathBuf> {
    let want = mnt.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in info.lines() {
        let mut halves = line.splitn(2, " - ");
        let (left, right) = (halves.next()?, halves.next()?);
        if unescape(left.split(' ').nth(4)?) != want.to_string_lossy() {
            continue;
        }
        let source = unescape(right.split(' ').nth(1)?);
        return source.strip_prefix("mmapfs:").map(PathBuf::from);
    }
    None
}

/// Undoes the octal escapes (`\040` for a space…) of /proc/self/mountinfo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The store behind `path` (a store directory or an mmapfs mountpoint).
fn stats_store(path: &Path) -> Result<PathBuf, String> {
    if path.join("superblock").exists() {
        return Ok(path.to_path_buf());
    }
    store_of_mount(path)
        .ok_or_else(|| format!("{} is neither an mmapfs store nor an mmapfs mountpoint", path.display()))
}

/// The last snapshot the daemon of `store` wrote, and its raw bytes.
fn read_snapshot(store: &Path) -> Result<(Snapshot, Vec<u8>), String> {
    let file = store.join("stats.json");
    let data =
        std::fs::read(&file).map_err(|e| format!("{}: {e} (has the store ever been mounted?)", file.display()))?;
    let snap = serde_json::from_slice(&data).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((snap, data))
}

/// `mmapfs stats --watch`: a line of rates every `secs` seconds, the header every 20 lines.
fn watch_stats(path: &Path, secs: f64) -> Result<(), String> {
    if !(0.1..=3600.0).contains(&secs) {
        return Err(format!("--watch {secs}: between 0.1 and 3600 seconds"));
    }
    let store = stats_store(path)?;
    let (mut prev, _) = read_snapshot(&store)?;
    for line in 0.. {
        std::thread::sleep(std::time::Duration::from_secs_f64(secs));
        let (now, _) = read_snapshot(&store)?;
        if now.pid != prev.pid || !daemon_alive(&store) {
            println!("the daemon (pid {}) has ended", prev.pid);
            return Ok(());
        }
        if line % 20 == 0 {
            println!("{}", Snapshot::RATES_HEADER);
        }
        // The daemon writes its figures once a second: a shorter interval may see none new.
        if now.uptime_s > prev.uptime_s {
            println!("{}", now.rates(&prev));
            prev = now;
        }
    }
    Ok(())
}

/// True while a daemon holds the store's lock (a pid alone may have been reused).
fn daemon_alive(store: &Path) -> bool {
    std::fs::File::open(store.join("lock")).is_ok_and(|f| {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 }
    })
}

fn show_stats(path: &Path, format: StatsFormat) -> Result<(), String> {
    let store = stats_store(path)?;
    let file = store.join("stats.json");
    let (snap, data) = read_snapshot(&store)?;
    let alive = daemon_alive(&store);
    let age = std::fs::metadata(&file).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
    if format == StatsFormat::Json {
        println!("{}", String::from_utf8_lossy(&data));
    } else if format == StatsFormat::Prometheus {
        print!("{}", snap.prometheus());
    } else if !alive {
        let ago = age.map_or_else(String::new, |a| format!(", written {:.0} s ago", a.as_secs_f64()));
        println!("the daemon (pid {}) is not running: its last figures{ago}", snap.pid);
        print!("{}", snap.table());
    } else {
        print!("{}", snap.table());
    }
    Ok(())
}

fn lazy_unmount(mnt: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(mnt.as_os_str().as_bytes()) else { return };
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        log::error!("lazy umount of {} failed: {}", mnt.display(), std::io::Error::last_os_error());
    }
}
