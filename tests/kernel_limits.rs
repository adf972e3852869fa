//! The kernel's limits for a mount: what a daemon running as root sets (its bdi's dirty limit
//! and read-ahead, the I/O flusher mark, the size of FUSE requests), what `mmapfs stats`
//! shows, and that neither the relaxed dirty limit nor the
//! kernel's stalls a client, loses a store or calls the OOM killer under memory pressure: a
//! client in a 256 MiB memory cgroup storing into a mapping three times that size, and the
//! machine's dirty threshold reached while clients store and the daemon checkpoints.
//!
//! The pressure tests change machine-wide settings (vm.dirty_bytes, the hung-task timeout),
//! restored by Drop guards; every test here holds [`ALONE`], so they never run beside each
//! other, and `cargo test` runs test binaries one after another.

mod common;

use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Mounted, fresh_stats, wait_timeout};

static ALONE: Mutex<()> = Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// True if this process may use CAP_SYS_RESOURCE (needed for PR_SET_IO_FLUSHER); some VMs
/// drop it even for root.
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    u64::from_str_radix(eff, 16).unwrap() & (1 << 24) /* CAP_SYS_RESOURCE */ != 0
}

const COHERENCE: &str = env!("CARGO_BIN_EXE_mmapfs-coherence");
const MIB: u64 = 1 << 20;

/// The kernel_limits object of a fresh snapshot.
fn limits(m: &Mounted) -> serde_json::Value {
    let s = fresh_stats(&m.store);
    assert!(s["kernel_limits"].is_object(), "no kernel_limits in {s}");
    s["kernel_limits"].clone()
}

#[test]
fn root_sets_the_mounts_dirty_limit_and_read_ahead_and_stats_show_them() {
    if !common::is_root() {
        eprintln!("skipped: setting a mount's bdi limits needs root (tests/normal_user.rs covers a normal user)");
        return;
    }
    let _alone = alone();
    let flusher = has_cap_sys_resource();

    // The default: strict, half of the machine's dirty threshold.
    let m = Mounted::new(&[]);
    let k = limits(&m);
    assert_eq!(k["dirty_limit"], "50%");
    assert_eq!(k["strict_limit"], true);
    assert_eq!(k["max_ratio"], 50, "{k}");
    assert_eq!(k["io_flusher"], flusher, "{k}");
    let bdi = Path::new("/sys/class/bdi").join(k["bdi"].as_str().unwrap());
    let sysfs = |f: &str| std::fs::read_to_string(bdi.join(f)).unwrap().trim().parse::<u64>().unwrap();
    assert_eq!(sysfs("max_ratio"), 50, "the stats show what the kernel has");
    assert_eq!(sysfs("strict_limit"), 1);
    assert!(k["max_bytes"].as_u64().unwrap() > 100 * MIB, "{k}");
    assert_eq!(k["read_ahead_kb"], 1024, "{k}");
    assert_eq!(sysfs("read_ahead_kb"), 1024);
    if flusher {
        // Every thread of the daemon, request loops included, carries the mark.
        const PF_MEMALLOC_NOIO: u64 = 0x0008_0000;
        const PF_LOCAL_THROTTLE: u64 = 0x0010_0000;
        for t in std::fs::read_dir(format!("/proc/{}/task", m.pid())).unwrap() {
            let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap();
            let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
            let flags: u64 = after_comm.split(' ').nth(6).unwrap().parse().unwrap();
            assert_eq!(flags & (PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE), PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE, "{stat}");
        }
    } else {
        assert!(m.log().contains("no I/O flusher") || m.log().contains("I/O flusher: no"), "{}", m.log());
    }
    let table = common::sh(common::BIN, &["stats", m.mnt.to_str().unwrap()]);
    assert!(table.contains("kernel: bdi ") && table.contains("dirty limit ") && table.contains("-o dirty_limit=50%"));
    let prom = common::sh(common::BIN, &["stats", "--format", "prometheus", m.mnt.to_str().unwrap()]);
    assert!(prom.contains("mmapfs_dirty_limit_bytes{"), "{prom}");
    drop(m);

    // The kernel's own limit, kept on request.
    let m = Mounted::new(&["-o", "dirty_limit=kernel,read_ahead=kernel"]);
    let k = limits(&m);
    assert_eq!((k["dirty_limit"].as_str(), k["max_ratio"].as_u64()), (Some("kernel"), Some(1)), "{k}");
    assert_eq!(k["strict_limit"], true);
    assert_eq!(k["read_ahead_kb"], 128, "the kernel's read-ahead for a FUSE mount: {k}");
    drop(m);

    // A byte limit (the kernel keeps it as a share, so it reads back within rounding).
    let m = Mounted::new(&["-o", "dirty_limit=256M,read_ahead=4M"]);
    let k = limits(&m);
    let b = k["max_bytes"].as_u64().unwrap();
    assert!((240 * MIB..=272 * MIB).contains(&b), "max_bytes {b}");
    assert_eq!(k["read_ahead_kb"], 4096);
    drop(m);

    // More than half only for an I/O flusher, as a share or in bytes.
    let m = Mounted::new(&["-o", "dirty_limit=100%"]);
    let want = if flusher { 100 } else { 50 };
    assert_eq!(limits(&m)["max_ratio"], want);
    drop(m);
    if !flusher {
        let m = Mounted::new(&["-o", "dirty_limit=1T"]);
        let r = limits(&m)["max_ratio"].as_u64().unwrap();
        // Bytes become a share of a threshold that moves with free memory: 49 or 50.
        assert!((49..=50).contains(&r), "max_ratio {r}: {}", m.log());
    }
}

#[test]
fn root_raises_the_request_cap_for_a_larger_max_write() {
    const LIMIT: &str = "/proc/sys/fs/fuse/max_pages_limit";
    if !common::is_root() || !Path::new(LIMIT).exists() {
        eprintln!("skipped: needs root and {LIMIT} (Linux 6.13)");
        return;
    }
    let _alone = alone();
    // Start from the kernel's default, and leave the machine as it was.
    let _restore = Restore::set(&[(LIMIT, Some("256".into()))]);
    let m = Mounted::new(&["-o", "max_write=4M"]);
    assert_eq!(std::fs::read_to_string(LIMIT).unwrap().trim(), "1024");
    assert!(m.log().contains("raised /proc/sys/fs/fuse/max_pages_limit from 256 to 1024"), "{}", m.log());
    // One 16 MiB write(2) is four WRITE requests of 4 MiB.
    let f = std::fs::File::create(m.path("big")).unwrap();
    f.write_all_at(&vec![5u8; 16 << 20], 0).unwrap();
    let s = fresh_stats(&m.store);
    let w = s["ops"].as_array().unwrap().iter().find(|o| o["op"] == "write").unwrap();
    assert_eq!((w["count"].as_u64(), w["bytes"].as_u64()), (Some(4), Some(16 << 20)), "{w}");
    drop(m);
    // A mount that asks for less leaves the cap alone.
    std::fs::write(LIMIT, "512").unwrap();
    let _m = Mounted::new(&["-o", "max_write=1M"]);
    assert_eq!(std::fs::read_to_string(LIMIT).unwrap().trim(), "512");
}

/// Machine-wide settings, restored when dropped (the last remembered first).
struct Restore(Vec<(PathBuf, String)>);

impl Restore {
    /// Remembers each file's value, then writes the new one where one is given.
    fn set(settings: &[(&str, Option<String>)]) -> Restore {
        let mut r = Restore(Vec::new());
        for (f, v) in settings {
            r.0.push((PathBuf::from(f), std::fs::read_to_string(f).unwrap().trim().to_string()));
            if let Some(v) = v {
                std::fs::write(f, v).unwrap();
            }
        }
        r
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        // A dirty limit is set either as a ratio or in bytes, the other reading 0 (and not
        // writable as 0): writing back the one that was set clears the other.
        for (f, v) in self.0.iter().rev().filter(|(_, v)| v != "0") {
            if let Err(e) = std::fs::write(f, v) {
                eprintln!("cannot restore {} to {v}: {e}", f.display());
            }
        }
    }
}

/// Lowers the machine's dirty threshold to `bytes` (background at half) and the hung-task
/// timeout to `hung` seconds, until dropped.
fn lowered_dirty_threshold(bytes: u64, hung: u64) -> Restore {
    Restore::set(&[
        ("/proc/sys/kernel/hung_task_timeout_secs", Some(hung.to_string())),
        ("/proc/sys/vm/dirty_ratio", None),
        ("/proc/sys/vm/dirty_background_ratio", None),
        ("/proc/sys/vm/dirty_bytes", Some(bytes.to_string())),
        ("/proc/sys/vm/dirty_background_bytes", Some((bytes / 2).to_string())),
    ])
}

/// The kernel log from now on: hung-task reports and OOM kills are what these tests forbid.
struct KernelLog(std::fs::File);

impl KernelLog {
    fn from_now() -> KernelLog {
        let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg").unwrap();
        // SAFETY: lseek on a descriptor we own; /dev/kmsg's SEEK_END skips what is logged.
        assert!(unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&f), 0, libc::SEEK_END) } >= 0);
        KernelLog(f)
    }

    /// Lines logged since, that report a hung task or an OOM kill.
    fn alarms(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.0.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if ["blocked for more than", "hung_task", "Out of memory", "oom-kill", "invoked oom-killer"]
                        .iter()
                        .any(|a| line.contains(a))
                    {
                        out.push(line);
                    }
                }
                // EPIPE: records were overwritten while we read; go on with the next.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// Samples a process's RssAnon every 20 ms until dropped; `max()` is the largest seen.
struct RssAnon {
    max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssAnon {
    fn watch(pid: u32) -> RssAnon {
        let (max, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (m, s) = (max.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kb) = status.lines().find_map(|l| l.strip_prefix("RssAnon:")) {
                    let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    m.fetch_max(kb << 10, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssAnon { max, stop, thread: Some(thread) }
    }

    fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }
}

impl Drop for RssAnon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.take().map(|t| t.join());
    }
}

/// A memory cgroup (v1) of `limit` bytes, removed when dropped (its processes killed first).
struct MemCgroup(PathBuf);

impl MemCgroup {
    fn new(limit: u64) -> Option<MemCgroup> {
        let base = Path::new("/sys/fs/cgroup/memory");
        if !base.join("memory.limit_in_bytes").exists() {
            return None;
        }
        let dir = base.join(format!("mmapfs-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).unwrap();
        Some(MemCgroup(dir))
    }

    /// Runs the coherence tool's helper inside the cgroup (it joins before it execs).
    fn helper(&self, args: &[&str]) -> Child {
        Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.0.join("cgroup.procs"))
            .arg(COHERENCE)
            .arg("helper")
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// OOM kills in the cgroup (memory.oom_control's oom_kill, Linux 4.13+).
    fn oom_kills(&self) -> u64 {
        let c = std::fs::read_to_string(self.0.join("memory.oom_control")).unwrap();
        c.lines().find_map(|l| l.strip_prefix("oom_kill ")).map_or(0, |v| v.trim().parse().unwrap())
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: plain kill(2) of a helper this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for _ in 0..500 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Waits for every client; each must succeed within `bound` of `start`.
fn finish_all(clients: Vec<(&str, Child)>, start: Instant, bound: Duration) {
    for (name, mut c) in clients {
        let left = bound.saturating_sub(start.elapsed());
        let Some(st) = wait_timeout(&mut c, left) else {
            let _ = c.kill();
            let _ = c.wait();
            panic!("{name} did not finish within {bound:?}");
        };
        assert!(st.success(), "{name}: {st}");
        eprintln!("{name} finished after {:.1} s", start.elapsed().as_secs_f64());
    }
}

/// Checks, with read(2), what `helper map-stores` left (stamp `(page << 16) | passes` at each
/// page's first and last word).
fn verify_map_stores(path: &Path, bytes: u64, passes: u64) {
    let f = std::fs::File::open(path).unwrap();
    assert_eq!(f.metadata().unwrap().len(), bytes);
    let mut buf = vec![0u8; 1 << 20];
    for chunk in 0..bytes >> 20 {
        f.read_exact_at(&mut buf, chunk << 20).unwrap();
        for (i, page) in buf.chunks(4096).enumerate() {
            let p = (chunk << 8) + i as u64;
            let want = (p << 16) | passes;
            let word = |o: usize| u64::from_ne_bytes(page[o..o + 8].try_into().unwrap());
            assert_eq!((word(0), word(4088)), (want, want), "{}: page {p}", path.display());
        }
    }
}

/// Checks what `helper stream-writes` left (chunk i holds the word i + 1).
fn verify_stream(path: &Path, bytes: u64) {
    let f = std::fs::File::open(path).unwrap();
    assert_eq!(f.metadata().unwrap().len(), bytes);
    let mut buf = vec![0u8; 1 << 20];
    for chunk in 0..bytes >> 20 {
        f.read_exact_at(&mut buf, chunk << 20).unwrap();
        let want = (chunk + 1).to_ne_bytes();
        assert!(buf.chunks(8).all(|w| w == want), "{}: chunk {chunk}", path.display());
    }
}

/// The daemon's anonymous memory may grow with its request buffers and metadata, never with
/// the data clients store: far below the data these tests move.
const RSS_ANON_BOUND: u64 = 128 * MIB;

/// A client in a 256 MiB memory cgroup stores into every page of a 768 MiB shared mapping
/// twice, while a second one streams 512 MiB of write(2)s into another file.
fn memory_cgroup_client(dirty_limit: &str) {
    if !common::is_root() {
        eprintln!("skipped: memory cgroups need root");
        return;
    }
    let _alone = alone();
    let Some(cg) = MemCgroup::new(256 * MIB) else {
        eprintln!("skipped: no cgroup v1 memory controller at /sys/fs/cgroup/memory");
        return;
    };
    let _hung = Restore::set(&[("/proc/sys/kernel/hung_task_timeout_secs", Some("20".into()))]);
    let mut m = Mounted::new(&["-o", &format!("dirty_limit={dirty_limit}")]);
    let mut kmsg = KernelLog::from_now();
    let rss = RssAnon::watch(m.pid());
    let (map, stream) = (m.path("map"), m.path("stream"));
    let start = Instant::now();
    let clients = vec![
        ("mapped stores", cg.helper(&["map-stores", map.to_str().unwrap(), &(768 * MIB).to_string(), "2"])),
        ("write(2) stream", cg.helper(&["stream-writes", stream.to_str().unwrap(), &(512 * MIB).to_string()])),
    ];
    finish_all(clients, start, Duration::from_secs(120));
    assert_eq!(cg.oom_kills(), 0, "the OOM killer ran in the client's cgroup");
    let rss = rss.max();
    assert!(rss < RSS_ANON_BOUND, "the daemon's RssAnon reached {} MiB", rss >> 20);
    m.restart();
    verify_map_stores(&map, 768 * MIB, 2);
    verify_stream(&stream, 512 * MIB);
    assert_eq!(kmsg.alarms(), Vec::<String>::new());
}

#[test]
fn memory_cgroup_client_with_the_relaxed_limit() {
    memory_cgroup_client("50%");
}

#[test]
fn memory_cgroup_client_with_the_kernels_limit() {
    memory_cgroup_client("kernel");
}

/// The machine's dirty threshold lowered to 64 MiB: three clients store into every page of
/// their own 128 MiB mapping twice, while a fourth creates and removes files so the daemon
/// journals and checkpoints (a 64 KiB journal limit).
fn dirty_threshold_reached(dirty_limit: &str) {
    if !common::is_root() {
        eprintln!("skipped: lowering vm.dirty_bytes needs root");
        return;
    }
    let _alone = alone();
    let _lowered = lowered_dirty_threshold(64 * MIB, 20);
    let mut m = Mounted::new(&["-o", &format!("dirty_limit={dirty_limit}"), "--journal-limit", "64K"]);
    let mut kmsg = KernelLog::from_now();
    let rss = RssAnon::watch(m.pid());
    let maps: Vec<PathBuf> = (0..3).map(|i| m.path(&format!("map{i}"))).collect();
    let start = Instant::now();
    let size = (128 * MIB).to_string();
    let mut clients: Vec<(&str, Child)> = maps
        .iter()
        .map(|p| {
            let c = Command::new(COHERENCE)
                .args(["helper", "map-stores", p.to_str().unwrap(), &size, "2"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            ("mapped stores", c)
        })
        .collect();
    let churn = m.path("churn");
    std::fs::create_dir(&churn).unwrap();
    let script = format!(
        "for i in $(seq 1500); do : > {0}/f$i; done; rm -f {0}/f*; for i in $(seq 1500); do mkdir {0}/d$i; done; rmdir {0}/d*",
        churn.display()
    );
    clients.push(("namespace churn", Command::new("sh").arg("-c").arg(script).spawn().unwrap()));
    finish_all(clients, start, Duration::from_secs(120));
    let rss = rss.max();
    assert!(rss < RSS_ANON_BOUND, "the daemon's RssAnon reached {} MiB", rss >> 20);
    assert!(m.log().matches("] checkpoint ").count() >= 2, "the daemon did not checkpoint: {}", m.log());
    m.restart();
    for p in &maps {
        verify_map_stores(p, 128 * MIB, 2);
    }
    assert_eq!(std::fs::read_dir(&churn).unwrap().count(), 0);
    assert_eq!(kmsg.alarms(), Vec::<String>::new());
}

#[test]
fn dirty_threshold_reached_with_the_relaxed_limit() {
    dirty_threshold_reached("50%");
}

#[test]
fn dirty_threshold_reached_with_the_kernels_limit() {
    dirty_threshold_reached("kernel");
}
