//! Counters a user can read while mmapfs runs: per FUSE operation count, bytes and a latency
//! histogram; plus what the store and the kernel report. The daemon writes a snapshot to
//! `STORE/stats.json` every second; `mmapfs stats` reads it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::{counter::Counter as PromCounter, family::Family, gauge::Gauge as PromGauge};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

/// The operations counted, in table order.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Lookup,
    Getattr,
    Setattr,
    Read,
    Write,
    Create,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Rename,
    Link,
    Symlink,
    Readlink,
    Open,
    Release,
    Flush,
    Fsync,
    Readdir,
    Fsyncdir,
    Statfs,
    Xattr,
    Fallocate,
    Lseek,
    CopyFileRange,
}

const OPS: [&str; 25] = [
    "lookup",
    "getattr",
    "setattr",
    "read",
    "write",
    "create",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "rename",
    "link",
    "symlink",
    "readlink",
    "open",
    "release",
    "flush",
    "fsync",
    "readdir",
    "fsyncdir",
    "statfs",
    "xattr",
    "fallocate",
    "lseek",
    "copy_file_range",
];

/// Latency buckets: bucket `i` holds latencies in `[2^i, 2^(i+1))` nanoseconds.
const BUCKETS: usize = 40;

struct Counter {
    count: AtomicU64,
    bytes: AtomicU64,
    max_ns: AtomicU64,
    hist: [AtomicU64; BUCKETS],
}

impl Default for Counter {
    fn default() -> Self {
        Counter {
            count: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
            hist: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Lock-free per-operation counters.
pub struct Stats {
    ops: Vec<Counter>,
    started: Instant,
}

impl Default for Stats {
    fn default() -> Self {
        Stats { ops: (0..OPS.len()).map(|_| Counter::default()).collect(), started: Instant::now() }
    }
}

/// Records one operation when dropped.
pub struct Timer<'a> {
    stats: &'a Stats,
    op: Op,
    bytes: u64,
    t0: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.stats.record(self.op, self.bytes, self.t0.elapsed());
    }
}

impl Stats {
    /// Starts timing one `op` moving `bytes`.
    pub fn time(&self, op: Op, bytes: u64) -> Timer<'_> {
        Timer { stats: self, op, bytes, t0: Instant::now() }
    }

    pub fn record(&self, op: Op, bytes: u64, took: Duration) {
        let c = &self.ops[op as usize];
        let ns = took.as_nanos().min(u64::MAX as u128) as u64;
        c.count.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
        c.max_ns.fetch_max(ns, Ordering::Relaxed);
        let b = (63 - ns.max(1).leading_zeros() as usize).min(BUCKETS - 1);
        c.hist[b].fetch_add(1, Ordering::Relaxed);
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The operations that happened, with percentiles from the histogram (upper bucket bounds).
    pub fn ops(&self) -> Vec<OpStats> {
        let mut v = Vec::new();
        for (i, c) in self.ops.iter().enumerate() {
            let count = c.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let hist: Vec<u64> = c.hist.iter().map(|h| h.load(Ordering::Relaxed)).collect();
            let pct = |p: f64| {
                let want = ((count as f64) * p).ceil().max(1.0) as u64;
                let mut seen = 0;
                for (b, n) in hist.iter().enumerate() {
                    seen += n;
                    if seen >= want {
                        return (1u64 << (b + 1)) as f64 / 1000.0;
                    }
                }
                0.0
            };
            let max_us = c.max_ns.load(Ordering::Relaxed) as f64 / 1000.0;
            v.push(OpStats {
                op: OPS[i].to_string(),
                count,
                bytes: c.bytes.load(Ordering::Relaxed),
                // A bucket's upper bound can exceed the largest value seen.
                p50_us: pct(0.5).min(max_us),
                p99_us: pct(0.99).min(max_us),
                max_us,
            });
        }
        v
    }
}

/// One operation's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpStats {
    pub op: String,
    pub count: u64,
    pub bytes: u64,
    /// Latency percentiles in microseconds (upper bounds of power-of-two buckets).
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// Everything `mmapfs stats` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub pid: u32,
    pub store: String,
    pub mountpoint: String,
    /// Every knob the daemon runs with.
    pub options: std::collections::BTreeMap<String, String>,
    pub uptime_s: f64,
    pub ops: Vec<OpStats>,
    pub msync_calls: u64,
    pub msync_bytes: u64,
    pub msync_ms: f64,
    pub journal_appends: u64,
    pub journal_syncs: u64,
    pub minor_faults: u64,
    pub major_faults: u64,
    pub segments_mapped: u64,
    /// Bytes of the segments in the page cache (mincore); absent with the pread backend.
    pub resident_bytes: Option<u64>,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub inodes: u64,
    /// The `direct` or `vm` backend's buffer pool.
    #[serde(default)]
    pub pool: Option<PoolStats>,
    /// The mount's limits in the kernel (its bdi), read when the snapshot was taken.
    #[serde(default)]
    pub kernel_limits: Option<KernelLimits>,
}

/// The mount's backing device (`/sys/class/bdi/MAJ:MIN`) as the kernel has it: how much
/// dirty page cache the mount's files may hold, and how far the kernel reads ahead.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelLimits {
    /// `MAJ:MIN`.
    pub bdi: String,
    /// The daemon is marked with `PR_SET_IO_FLUSHER`.
    pub io_flusher: bool,
    /// What `-o dirty_limit` asked for.
    pub dirty_limit: String,
    pub strict_limit: bool,
    /// Percent of the machine's dirty threshold.
    pub max_ratio: Option<u64>,
    pub max_bytes: Option<u64>,
    pub read_ahead_kb: Option<u64>,
}

/// The media type of [`Snapshot::prometheus`]'s text, for an HTTP answer.
pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

/// Registers a counter family of `rows` (its labels and value).
fn counter(r: &mut Registry, name: &str, help: &str, rows: Vec<(Labels, f64)>) {
    let f = Family::<Labels, PromCounter<f64, AtomicU64>>::default();
    for (labels, v) in rows {
        f.get_or_create(&labels).inc_by(v);
    }
    r.register(name, help, f);
}

/// Registers a gauge family of `rows` (its labels and value).
fn gauge(r: &mut Registry, name: &str, help: &str, rows: Vec<(Labels, f64)>) {
    let f = Family::<Labels, PromGauge<f64, AtomicU64>>::default();
    for (labels, v) in rows {
        f.get_or_create(&labels).set(v);
    }
    r.register(name, help, f);
}

/// The `direct` or `vm` backend's buffer pool: its size, and page hits, misses (reads from the
/// segment files), evictions and pages written to the segment files.
pub type PoolStats = crate::store::PoolFigures;

impl Snapshot {
    /// The counters in the OpenMetrics text format (which Prometheus scrapes), labelled with
    /// the store, encoded by the `prometheus-client` crate. The sample names are those of
    /// earlier versions (`mmapfs_requests_total{…}`); the `# TYPE`/`# HELP` lines name the
    /// metric family (`mmapfs_requests`), as OpenMetrics has it, and the text ends in `# EOF`.
    pub fn prometheus(&self) -> String {
        let mut r = Registry::with_prefix("mmapfs");
        let store = vec![("store".to_string(), self.store.clone())];
        let one = |v: f64| vec![(store.clone(), v)];
        let per_op = |f: &dyn Fn(&OpStats) -> f64| -> Vec<(Labels, f64)> {
            let op = |o: &OpStats| [store.clone(), vec![("op".to_string(), o.op.clone())]].concat();
            self.ops.iter().map(|o| (op(o), f(o))).collect()
        };
        counter(&mut r, "requests", "FUSE requests served, by operation", per_op(&|o| o.count as f64));
        counter(&mut r, "request_bytes", "Bytes moved by requests, by operation", per_op(&|o| o.bytes as f64));
        gauge(&mut r, "request_p99_microseconds", "99th percentile latency, by operation", per_op(&|o| o.p99_us));
        counter(&mut r, "msync_calls", "msync calls made by fsync", one(self.msync_calls as f64));
        counter(&mut r, "msync_bytes", "Bytes msynced by fsync", one(self.msync_bytes as f64));
        counter(&mut r, "msync_seconds", "Time spent in msync", one(self.msync_ms / 1000.0));
        counter(&mut r, "journal_appends", "Journal records appended", one(self.journal_appends as f64));
        counter(&mut r, "journal_syncs", "Journal fdatasyncs", one(self.journal_syncs as f64));
        counter(&mut r, "minor_faults", "The daemon's minor page faults", one(self.minor_faults as f64));
        counter(&mut r, "major_faults", "The daemon's major page faults", one(self.major_faults as f64));
        gauge(&mut r, "segments_mapped", "Segment files mapped", one(self.segments_mapped as f64));
        if let Some(v) = self.resident_bytes {
            gauge(&mut r, "resident_bytes", "Bytes of the segments in the page cache", one(v as f64));
        }
        if let Some(p) = &self.pool {
            gauge(&mut r, "pool_bytes", "Size of the direct or vm backend's buffer pool", one(p.bytes as f64));
            counter(&mut r, "pool_hits", "Buffer pool page hits", one(p.hits as f64));
            counter(&mut r, "pool_misses", "Buffer pool misses (pages read with O_DIRECT)", one(p.misses as f64));
            counter(&mut r, "pool_evictions", "Buffer pool pages evicted", one(p.evictions as f64));
            counter(&mut r, "pool_writes", "Pages written with O_DIRECT", one(p.writes as f64));
            if let Some(b) = p.eviction_batches {
                counter(&mut r, "pool_eviction_batches", "Eviction batches (vm backend)", one(b as f64));
            }
        }
        if let Some(k) = &self.kernel_limits {
            if let Some(b) = k.max_bytes {
                let help = "Dirty page cache the mount may hold (bdi max_bytes)";
                gauge(&mut r, "dirty_limit_bytes", help, one(b as f64));
            }
            if let Some(kb) = k.read_ahead_kb {
                gauge(&mut r, "read_ahead_bytes", "The kernel's read-ahead for the mount", one((kb << 10) as f64));
            }
        }
        gauge(&mut r, "used_bytes", "Bytes of file data stored", one(self.used_bytes as f64));
        gauge(&mut r, "capacity_bytes", "The store's capacity", one(self.capacity_bytes as f64));
        gauge(&mut r, "inodes", "Inodes in the store", one(self.inodes as f64));
        gauge(&mut r, "uptime_seconds", "Seconds since the mount", one(self.uptime_s));
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &r);
        s
    }

    /// The header of [`Snapshot::rates`].
    pub const RATES_HEADER: &'static str =
        "    ops/s   read MiB/s  write MiB/s   msync/s  jsync/s  faults/s  resident MiB";

    /// Rates per second since `prev` (an earlier snapshot of the same daemon), one line.
    pub fn rates(&self, prev: &Snapshot) -> String {
        let dt = (self.uptime_s - prev.uptime_s).max(1e-3);
        let total = |s: &Snapshot, f: &dyn Fn(&OpStats) -> u64| s.ops.iter().map(f).sum::<u64>();
        let bytes_of = |s: &Snapshot, op: &str| s.ops.iter().filter(|o| o.op == op).map(|o| o.bytes).sum::<u64>();
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        let mib = |v: f64| v / (1 << 20) as f64;
        format!(
            "{:9.0} {:12.1} {:12.1} {:9.0} {:8.0} {:9.0} {:13.1}",
            rate(total(self, &|o| o.count), total(prev, &|o| o.count)),
            mib(rate(bytes_of(self, "read"), bytes_of(prev, "read"))),
            mib(rate(bytes_of(self, "write"), bytes_of(prev, "write"))),
            rate(self.msync_calls, prev.msync_calls),
            rate(self.journal_syncs, prev.journal_syncs),
            rate(self.minor_faults + self.major_faults, prev.minor_faults + prev.major_faults),
            mib(self.resident_bytes.unwrap_or(0) as f64),
        )
    }

    /// A table for people.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "mmapfs pid {} — store {} at {}, up {:.0} s",
            self.pid, self.store, self.mountpoint, self.uptime_s
        );
        let opts: Vec<String> = self.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(s, "options: {}", opts.join(" "));
        let _ = writeln!(
            s,
            "{:<16}{:>12}{:>14}{:>11}{:>11}{:>11}",
            "operation", "count", "bytes", "p50 µs", "p99 µs", "max µs"
        );
        for o in &self.ops {
            let _ = writeln!(
                s,
                "{:<16}{:>12}{:>14}{:>11.1}{:>11.1}{:>11.1}",
                o.op, o.count, o.bytes, o.p50_us, o.p99_us, o.max_us
            );
        }
        let _ = writeln!(s, "msync: {} calls, {} bytes, {:.1} ms", self.msync_calls, self.msync_bytes, self.msync_ms);
        let _ = writeln!(s, "journal: {} appends, {} syncs", self.journal_appends, self.journal_syncs);
        let _ = writeln!(s, "daemon page faults: {} minor, {} major", self.minor_faults, self.major_faults);
        if let Some(p) = &self.pool {
            let _ = writeln!(
                s,
                "buffer pool: {} MiB; {} hits, {} misses, {} evictions, {} pages written",
                p.bytes >> 20,
                p.hits,
                p.misses,
                p.evictions,
                p.writes
            );
            if let Some(b) = p.eviction_batches {
                let _ = writeln!(s, "  evicted in {b} batches (madvise MADV_DONTNEED)");
            }
        }
        if let Some(k) = &self.kernel_limits {
            let opt = |v: Option<u64>, f: &dyn Fn(u64) -> String| v.map_or_else(|| "?".to_string(), f);
            let _ = writeln!(
                s,
                "kernel: bdi {}, dirty limit {} ({}% of the machine's, {}; -o dirty_limit={}), read-ahead {}, \
                 I/O flusher {}",
                k.bdi,
                opt(k.max_bytes, &|b| format!("{} MiB", b >> 20)),
                opt(k.max_ratio, &|r| r.to_string()),
                if k.strict_limit { "strict" } else { "not strict" },
                k.dirty_limit,
                opt(k.read_ahead_kb, &|kb| format!("{kb} KiB")),
                if k.io_flusher { "yes" } else { "no" }
            );
        }
        let resident = self.resident_bytes.map_or("n/a (pread backend)".to_string(), |r| format!("{} MiB", r >> 20));
        let resident = if self.pool.is_some() { format!("{resident} (in the buffer pool)") } else { resident };
        let _ = writeln!(s, "segments: {} mapped, resident {resident}", self.segments_mapped);
        let _ = writeln!(
            s,
            "space: {} MiB used of {} MiB; {} inodes",
            self.used_bytes >> 20,
            self.capacity_bytes >> 20,
            self.inodes
        );
        s
    }
}

/// The daemon's page faults so far: (minor, major).
pub fn page_faults() -> (u64, u64) {
    // SAFETY: zeroed rusage is a valid out-buffer for getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (0, 0);
    }
    (ru.ru_minflt as u64, ru.ru_majflt as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_buckets() {
        let s = Stats::default();
        for _ in 0..99 {
            s.record(Op::Read, 4096, Duration::from_nanos(1500)); // bucket [1024, 2048)
        }
        s.record(Op::Read, 4096, Duration::from_micros(900)); // bucket [524288, 1048576)
        let ops = s.ops();
        assert_eq!(ops.len(), 1);
        let r = &ops[0];
        assert_eq!((r.op.as_str(), r.count, r.bytes), ("read", 100, 409_600));
        assert_eq!(r.p50_us, 2.048);
        assert_eq!(r.p99_us, 2.048);
        assert_eq!(r.max_us, 900.0);
        s.record(Op::Read, 0, Duration::from_micros(900));
        assert_eq!(s.ops()[0].p99_us, 900.0, "clamped to the maximum");
    }
}
