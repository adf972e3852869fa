//! The store's access paths measured without FUSE (issue 19's experiment): threads of one
//! process read and write random pages of segment files through a backend (mmap, pread, direct,
//! vm) directly, so that what is measured is the access path — faults, eviction, page-table
//! work — and not a FUSE round trip. Built with the `testing` feature for the `mmapfs-paths`
//! program; not part of the filesystem.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::backend::{self, Backend, Tuning};
use super::segment::Segment;
use crate::rng::Rng;

const PAGE: usize = 4096;
const SEGMENT: usize = 64 << 20;

/// One run's settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub backend: Backend,
    /// Bytes of data the threads access (whole segments of 64 MiB).
    pub size: u64,
    pub threads: usize,
    pub seconds: f64,
    /// Percent of the accesses that are writes of a page.
    pub write_percent: u32,
    /// The pool of the direct and vm backends.
    pub pool_size: u64,
    pub seed: u64,
}

/// What a run measured.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub backend: String,
    pub size: u64,
    pub threads: usize,
    pub seconds: f64,
    pub write_percent: u32,
    pub pool_size: Option<u64>,
    pub ops: u64,
    pub iops: f64,
    /// Operations completed in each second of the run.
    pub iops_per_second: Vec<u64>,
    /// Latency percentiles (upper bounds of power-of-two buckets), microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub minor_faults_per_op: f64,
    pub major_faults_per_op: f64,
    /// TLB shootdown interrupts received per second, all CPUs (`/proc/interrupts`; a KVM
    /// guest with paravirtual TLB flushes undercounts them).
    pub tlb_shootdowns_per_s: f64,
    pub evictions: Option<u64>,
    pub eviction_batches: Option<u64>,
}

/// Creates (or reuses) the segment files of `cfg.size` in `dir`, filled with data, and runs the
/// threads for `cfg.seconds`.
pub fn run(dir: &Path, cfg: &Config) -> std::io::Result<Report> {
    let segments = (cfg.size as usize).div_ceil(SEGMENT).max(1);
    let tuning = Tuning { backend: cfg.backend, pool_size: cfg.pool_size, ..Tuning::default() };
    let engine = backend::engine(&tuning, segments as u64, SEGMENT as u64)?;
    let mut segs = Vec::with_capacity(segments);
    for i in 0..segments {
        let path = dir.join(format!("{i:06}.seg"));
        if std::fs::metadata(&path).map(|m| m.len() as usize).ok() != Some(SEGMENT) {
            let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
            let mut chunk = vec![0u8; 1 << 20];
            for c in 0..SEGMENT / chunk.len() {
                chunk.fill((i * 64 + c) as u8 | 1);
                f.write_all_at(&chunk, (c * chunk.len()) as u64)?;
            }
            f.sync_all()?;
        }
        segs.push(Segment::open(&path, SEGMENT, i as u32, &*engine)?);
    }
    // Start cold: nothing of the files in the page cache.
    for i in 0..segments {
        let f = std::fs::File::open(dir.join(format!("{i:06}.seg")))?;
        // SAFETY: a plain syscall on an open descriptor.
        unsafe { libc::posix_fadvise(std::os::unix::io::AsRawFd::as_raw_fd(&f), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    let segs = Arc::new(segs);
    let pages = (segments * SEGMENT / PAGE) as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let secs = cfg.seconds.ceil() as usize + 1;
    let per_second: Arc<Vec<AtomicU64>> = Arc::new((0..secs).map(|_| AtomicU64::new(0)).collect());
    let hist: Arc<Vec<AtomicU64>> = Arc::new((0..40).map(|_| AtomicU64::new(0)).collect());
    let (faults0, tlb0) = (faults(), tlb_shootdowns());
    let started = Instant::now();
    let workers: Vec<_> = (0..cfg.threads)
        .map(|t| {
            let (segs, stop, per_second, hist) = (segs.clone(), stop.clone(), per_second.clone(), hist.clone());
            let (seed, writes) = (cfg.seed + t as u64, cfg.write_percent as u64);
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut rng = Rng::new(seed);
                let mut buf = vec![0u8; PAGE];
                while !stop.load(Ordering::Relaxed) {
                    let page = rng.below(pages);
                    let (seg, off) = ((page as usize * PAGE) / SEGMENT, (page as usize * PAGE) % SEGMENT);
                    let t0 = Instant::now();
                    if rng.below(100) < writes {
                        buf[..8].copy_from_slice(&page.to_le_bytes());
                        segs[seg].write_at(off, &buf)?;
                    } else {
                        segs[seg].read_at(off, &mut buf)?;
                    }
                    let ns = t0.elapsed().as_nanos() as u64;
                    hist[(64 - ns.max(1).leading_zeros()) as usize].fetch_add(1, Ordering::Relaxed);
                    let s = (started.elapsed().as_secs() as usize).min(secs - 1);
                    per_second[s].fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(cfg.seconds));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a worker panicked")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (faults1, tlb1) = (faults(), tlb_shootdowns());
    let counts: Vec<u64> = hist.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let ops: u64 = counts.iter().sum();
    let pct = |q: f64| {
        let mut seen = 0;
        for (b, &n) in counts.iter().enumerate() {
            seen += n;
            if seen as f64 >= q * ops as f64 {
                return (1u64 << b) as f64 / 1000.0;
            }
        }
        0.0
    };
    let per_op = |d: u64| if ops == 0 { 0.0 } else { d as f64 / ops as f64 };
    let pool = engine.pool();
    Ok(Report {
        backend: format!("{:?}", cfg.backend).to_lowercase(),
        size: (segments * SEGMENT) as u64,
        threads: cfg.threads,
        seconds: elapsed,
        write_percent: cfg.write_percent,
        pool_size: pool.map(|p| p.bytes),
        ops,
        iops: ops as f64 / elapsed,
        iops_per_second: per_second
            .iter()
            .take(cfg.seconds.floor().max(1.0) as usize)
            .map(|c| c.load(Ordering::Relaxed))
            .collect(),
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        minor_faults_per_op: per_op(faults1.0 - faults0.0),
        major_faults_per_op: per_op(faults1.1 - faults0.1),
        tlb_shootdowns_per_s: tlb1.saturating_sub(tlb0) as f64 / elapsed,
        evictions: pool.map(|p| p.evictions),
        eviction_batches: pool.and_then(|p| p.eviction_batches),
    })
}

/// This process's (minor, major) page faults.
fn faults() -> (u64, u64) {
    // SAFETY: a zeroed rusage is a valid out-buffer.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    (ru.ru_minflt as u64, ru.ru_majflt as u64)
}

/// TLB shootdown interrupts so far, summed over the CPUs (0 where the kernel shows none).
fn tlb_shootdowns() -> u64 {
    let t = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    t.lines()
        .find(|l| l.trim_start().starts_with("TLB:"))
        .map(|l| l.split_whitespace().skip(1).map_while(|w| w.parse::<u64>().ok()).sum())
        .unwrap_or(0)
}
