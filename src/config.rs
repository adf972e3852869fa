//! Mount configuration: a plain struct filled by the CLI and validated once.

use std::path::{Path, PathBuf};

use fuser::MountOption;

use crate::fs::FsConfig;
use crate::store::OpenOptions;

/// Everything `mmapfs mount` needs.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// The store directory. Default `~/.local/share/mmapfs/default`.
    pub store: PathBuf,
    /// Where to mount; created if missing and `create_mountpoint`.
    pub mountpoint: PathBuf,
    /// Create a missing mountpoint (and its parents). Default yes; mount(8)'s helper form
    /// says "does not exist" instead, as mount(8) does.
    pub create_mountpoint: bool,
    /// Request loops (fuser `n_threads`). Default: the number of cores.
    pub threads: usize,
    /// Options handed to the kernel. Default: `default_permissions`, `fsname`, `subtype`.
    pub kernel: Vec<MountOption>,
    /// Let other users in (`allow_other`). Default off.
    pub allow_other: bool,
    /// How the adapter talks to the kernel.
    pub fs: FsConfig,
    /// How to open the store (geometry if it is created, journal limit).
    pub store_opts: OpenOptions,
    /// How much dirty page cache the mount's files may hold (its bdi's limit); applied by a
    /// daemon running as root.
    pub dirty_limit: DirtyLimit,
    /// How far the kernel reads ahead in the mount's files (`-o read_ahead=SIZE`; `None`:
    /// the kernel's 128 KiB); applied by a daemon running as root once the mount answers.
    pub read_ahead: Option<u64>,
    /// Where to serve the counters over HTTP (`-o metrics=PORT|HOST:PORT`; a bare port is
    /// loopback only). `None`: not served.
    pub metrics: Option<String>,
}

/// The default of `-o read_ahead`, chosen by measurement (docs/design.md, "Read-ahead and
/// request size").
pub const READ_AHEAD_DEFAULT: u64 = 1 << 20;

/// The dirty page cache the mount's files may hold before the kernel throttles the writers
/// (the limits of the mount's backing device, `/sys/class/bdi/MAJ:MIN`). The kernel gives
/// every FUSE mount a strict 1 % of the machine's dirty threshold; the daemon may safely allow
/// more, up to half of it unless it is marked as an I/O flusher (docs/design.md, "Dirty pages
/// of mapped files"). Every setting keeps the limit strict, so the mount never holds more than
/// it says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyLimit {
    /// The kernel's own limit (`-o dirty_limit=kernel`).
    Kernel,
    /// This share of the machine's dirty threshold, in percent (`-o dirty_limit=50%`).
    Ratio(u8),
    /// At most this many bytes (`-o dirty_limit=2G`).
    Bytes(u64),
}

impl DirtyLimit {
    /// The default, chosen by measurement (docs/design.md): half of the machine's dirty
    /// threshold.
    pub const DEFAULT: DirtyLimit = DirtyLimit::Ratio(50);

    /// Parses `kernel`, `N%` (1..=100) or a size (at least 1M).
    pub fn parse(v: &str) -> Result<DirtyLimit, String> {
        if v == "kernel" {
            return Ok(DirtyLimit::Kernel);
        }
        if let Some(p) = v.strip_suffix('%') {
            return match p.parse::<u8>() {
                Ok(n @ 1..=100) => Ok(DirtyLimit::Ratio(n)),
                _ => Err(format!("dirty_limit={v}: a share must be 1% to 100%")),
            };
        }
        match parse_size(v) {
            Ok(n) if n >= 1 << 20 => Ok(DirtyLimit::Bytes(n)),
            Ok(_) => Err(format!("dirty_limit={v}: at least 1M")),
            Err(e) => Err(format!("dirty_limit={v}: kernel, a share such as 50%, or a size ({e})")),
        }
    }
}

impl std::fmt::Display for DirtyLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirtyLimit::Kernel => f.write_str("kernel"),
            DirtyLimit::Ratio(n) => write!(f, "{n}%"),
            DirtyLimit::Bytes(n) => write!(f, "{n}"),
        }
    }
}

/// Parses a size such as `64M`, `16G`, `4096` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::Config::new().with_binary().parse_size(s).map_err(|e| format!("bad size {s:?}: {e}"))
}

/// The kernel's parameterless mount flags, by the name `-o` and mount(8) give them.
const FLAGS: &[(&str, MountOption)] = &[
    ("ro", MountOption::RO),
    ("rw", MountOption::RW),
    ("dev", MountOption::Dev),
    ("nodev", MountOption::NoDev),
    ("suid", MountOption::Suid),
    ("nosuid", MountOption::NoSuid),
    ("exec", MountOption::Exec),
    ("noexec", MountOption::NoExec),
    ("atime", MountOption::Atime),
    ("noatime", MountOption::NoAtime),
    ("sync", MountOption::Sync),
    ("async", MountOption::Async),
    ("dirsync", MountOption::DirSync),
];

/// A kernel option as `-o` spells it (for `mmapfs stats`).
pub fn option_name(o: &MountOption) -> String {
    match o {
        MountOption::FSName(n) => format!("fsname={n}"),
        MountOption::Subtype(n) => format!("subtype={n}"),
        MountOption::CUSTOM(v) => v.clone(),
        MountOption::AutoUnmount => "auto_unmount".into(),
        MountOption::DefaultPermissions => "default_permissions".into(),
        flag => FLAGS.iter().find(|(_, k)| k == flag).map_or_else(|| format!("{flag:?}"), |(n, _)| n.to_string()),
    }
}

/// True if the kernel flags `a` and `b` undo each other (`ro` and `rw`, …).
fn opposes(a: &MountOption, b: &MountOption) -> bool {
    use MountOption::*;
    let pair = |x: &MountOption, y: &MountOption| {
        matches!((x, y), (RO, RW) | (Dev, NoDev) | (Suid, NoSuid) | (Exec, NoExec) | (Atime, NoAtime) | (Sync, Async))
    };
    pair(a, b) || pair(b, a)
}

/// The default store directory.
pub fn default_store() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    base.join("mmapfs").join("default")
}

impl MountConfig {
    /// A configuration with defaults for everything but the paths.
    pub fn new(store: PathBuf, mountpoint: PathBuf) -> MountConfig {
        MountConfig {
            store,
            mountpoint,
            create_mountpoint: true,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            kernel: vec![
                MountOption::FSName("mmapfs".into()),
                MountOption::Subtype("mmapfs".into()),
                MountOption::DefaultPermissions,
            ],
            allow_other: false,
            fs: FsConfig::default(),
            store_opts: OpenOptions::default(),
            dirty_limit: DirtyLimit::DEFAULT,
            read_ahead: Some(READ_AHEAD_DEFAULT),
            metrics: None,
        }
    }

    /// Applies one `-o` argument: comma-separated kernel and mmapfs options.
    pub fn apply_options(&mut self, opts: &str) -> Result<(), String> {
        for o in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let kernel = match o {
                "allow_other" => {
                    self.allow_other = true;
                    continue;
                }
                "default_permissions" => MountOption::DefaultPermissions,
                "no_default_permissions" => {
                    self.kernel.retain(|k| *k != MountOption::DefaultPermissions);
                    continue;
                }
                "writeback_cache" => {
                    self.fs.writeback_cache = true;
                    continue;
                }
                "direct_io" => {
                    self.fs.direct_io = true;
                    continue;
                }
                // Access-time flags mount(8) and fstab pass on. The kernel mounts FUSE with
                // relatime unless told otherwise, and fuser can set only atime/noatime.
                "relatime" | "nostrictatime" | "lazytime" | "nolazytime" | "diratime" | "nodiratime" => {
                    log::debug!("-o {o}: kept (the mount is relatime; lazytime and diratime change nothing for FUSE)");
                    continue;
                }
                "norelatime" | "strictatime" => {
                    log::warn!("-o {o}: not available through FUSE here; the mount keeps relatime");
                    continue;
                }
                flag if FLAGS.iter().any(|(n, _)| *n == flag) => {
                    FLAGS.iter().find(|(n, _)| *n == flag).map(|(_, k)| k.clone()).expect("found above")
                }
                _ => {
                    if let Some(v) = o.strip_prefix("fsname=") {
                        self.kernel.retain(|k| !matches!(k, MountOption::FSName(_)));
                        MountOption::FSName(v.into())
                    } else if let Some((key, v)) =
                        o.split_once('=').filter(|(k, _)| *k == "attr_timeout" || *k == "entry_timeout")
                    {
                        let secs: f64 = v.parse().map_err(|_| format!("{key}={v}: not a number of seconds"))?;
                        if !(0.0..=86400.0 * 365.0).contains(&secs) {
                            return Err(format!("{key}={v}: out of range"));
                        }
                        let d = std::time::Duration::from_secs_f64(secs);
                        if key == "attr_timeout" {
                            self.fs.attr_ttl = d
                        } else {
                            self.fs.entry_ttl = d
                        }
                        continue;
                    } else if let Some(v) = o.strip_prefix("metrics=") {
                        crate::daemon::metrics::addresses(v)?;
                        self.metrics = Some(v.to_string());
                        continue;
                    } else if let Some(v) = o.strip_prefix("dirty_limit=") {
                        self.dirty_limit = DirtyLimit::parse(v)?;
                        continue;
                    } else if let Some(v) = o.strip_prefix("read_ahead=") {
                        self.read_ahead = match v {
                            "kernel" => None,
                            _ => match parse_size(v)? {
                                n if n.is_multiple_of(4096) && n <= 64 << 20 => Some(n),
                                _ => return Err(format!("read_ahead={v}: whole pages, at most 64M")),
                            },
                        };
                        continue;
                    } else if let Some(v) = o.strip_prefix("max_write=") {
                        let n = parse_size(v)?;
                        if !(4096..=16 << 20).contains(&n) {
                            return Err(format!("max_write={v}: must be between 4K and 16M"));
                        }
                        self.fs.max_write = n as u32;
                        continue;
                    } else {
                        return Err(format!("unknown mount option {o:?}"));
                    }
                }
            };
            // A later flag overrides its opposite (e.g. `ro` after `rw`).
            self.kernel.retain(|k| k != &kernel && !opposes(k, &kernel));
            self.kernel.push(kernel);
        }
        Ok(())
    }

    /// Checks the configuration as a whole.
    pub fn validate(&self) -> Result<(), String> {
        if self.threads == 0 || self.threads > 256 {
            return Err(format!("--threads {}: must be between 1 and 256", self.threads));
        }
        if self.fs.writeback_cache && self.fs.direct_io {
            return Err("writeback_cache and direct_io exclude each other".into());
        }
        if self.store_opts.journal_limit < 4096 {
            return Err("--journal-limit must be at least 4K".into());
        }
        self.store_opts.format.validate().map_err(|m| format!("invalid store geometry: {m}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let mut c = MountConfig::new("s".into(), "m".into());
        c.apply_options("allow_other,ro,noatime, writeback_cache,max_write=128K").unwrap();
        assert!(c.allow_other && c.fs.writeback_cache);
        assert_eq!(c.fs.max_write, 128 << 10);
        assert!(c.kernel.contains(&MountOption::RO) && c.kernel.contains(&MountOption::NoAtime));
        assert!(c.kernel.contains(&MountOption::DefaultPermissions));
        c.apply_options("rw,no_default_permissions").unwrap();
        assert!(!c.kernel.contains(&MountOption::RO) && c.kernel.contains(&MountOption::RW));
        assert!(!c.kernel.contains(&MountOption::DefaultPermissions));
        assert!(c.apply_options("bogus").unwrap_err().contains("bogus"));
        assert!(c.apply_options("max_write=1").is_err());
        c.apply_options("attr_timeout=0.5,entry_timeout=3600").unwrap();
        assert_eq!(c.fs.attr_ttl, std::time::Duration::from_millis(500));
        assert!(c.apply_options("attr_timeout=-1").is_err());
        c.apply_options("direct_io").unwrap();
        assert!(c.validate().is_err(), "writeback_cache with direct_io");
        // mount(8)'s access-time flags are accepted (fstab lines carry them) and change
        // nothing fuser can set: the mount is relatime.
        let kernel = c.kernel.clone();
        c.apply_options("relatime,strictatime,norelatime,nostrictatime,lazytime,nolazytime,diratime,nodiratime")
            .unwrap();
        assert_eq!(c.kernel, kernel);
    }

    #[test]
    fn kernel_options_are_named_as_o_spells_them() {
        for (name, flag) in FLAGS {
            assert_eq!(option_name(flag), *name);
            let mut c = MountConfig::new("s".into(), "m".into());
            c.apply_options(name).unwrap();
            assert!(c.kernel.contains(flag), "{name}");
        }
        assert_eq!(option_name(&MountOption::FSName("mmapfs:/s".into())), "fsname=mmapfs:/s");
        assert_eq!(option_name(&MountOption::DefaultPermissions), "default_permissions");
    }

    #[test]
    fn dirty_limits() {
        let mut c = MountConfig::new("s".into(), "m".into());
        assert_eq!(c.dirty_limit, DirtyLimit::DEFAULT);
        for (v, want) in [
            ("kernel", DirtyLimit::Kernel),
            ("100%", DirtyLimit::Ratio(100)),
            ("5%", DirtyLimit::Ratio(5)),
            ("2G", DirtyLimit::Bytes(2 << 30)),
        ] {
            c.apply_options(&format!("dirty_limit={v}")).unwrap();
            assert_eq!(c.dirty_limit, want, "{v}");
            assert_eq!(DirtyLimit::parse(&want.to_string()).unwrap(), want);
        }
        c.apply_options("read_ahead=4M").unwrap();
        assert_eq!(c.read_ahead, Some(4 << 20));
        c.apply_options("read_ahead=kernel").unwrap();
        assert_eq!(c.read_ahead, None);
        assert!(c.apply_options("read_ahead=1000").is_err() && c.apply_options("read_ahead=1G").is_err());
        for bad in ["0%", "101%", "x%", "4K", "lots", ""] {
            assert!(c.apply_options(&format!("dirty_limit={bad}")).unwrap_err().contains("dirty_limit"), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("16G").unwrap(), 16 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
    }
}
