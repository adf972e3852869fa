//! Counters are readable while the daemon runs (`mmapfs stats`, table and JSON) and after it
//! stops; the experiment knobs work: the pread backend stores the same bytes the mmap backend
//! reads back (also across kill -9), `--sync none` skips syncing, madvise/populate mount.

mod common;

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::{Mounted, fresh_stats, run, stats_json};

fn op<'a>(s: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    s["ops"].as_array().unwrap().iter().find(|o| o["op"] == name)
}

#[test]
fn stats_while_running_and_after() {
    let mut m = Mounted::new(&["--madvise", "random"]);
    let data = vec![7u8; 3 << 20];
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(m.path("f")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::read(m.path("f")).unwrap().len(), data.len());
    let s = fresh_stats(&m.store);
    assert_eq!(stats_json(&m.mnt)["pid"], s["pid"], "by mountpoint too");
    assert_eq!(s["pid"].as_u64().unwrap(), m.pid() as u64);
    assert_eq!(s["options"]["backend"], "mmap");
    assert_eq!(s["options"]["madvise"], "random");
    let w = op(&s, "write").expect("writes counted");
    assert_eq!(w["bytes"].as_u64().unwrap(), data.len() as u64);
    assert!(w["p50_us"].as_f64().unwrap() > 0.0 && w["p99_us"].as_f64() <= w["max_us"].as_f64());
    assert_eq!(op(&s, "fsync").unwrap()["count"], 1);
    assert!(s["msync_bytes"].as_u64().unwrap() >= data.len() as u64, "fsync msynced the written ranges");
    assert!(s["journal_syncs"].as_u64().unwrap() >= 1);
    assert!(s["resident_bytes"].as_u64().unwrap() >= data.len() as u64);
    assert_eq!(s["inodes"], 2);
    // The table, by store directory.
    let (ok, _) = run(&[OsStr::new("stats"), m.store.as_os_str()]);
    assert!(ok);
    let out = std::process::Command::new(common::BIN).arg("stats").arg(&m.store).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("write") && table.contains("msync:") && table.contains("backend=mmap"), "{table}");
    // Kernel options as -o spells them, not Rust's debug form.
    assert!(table.contains("fsname=mmapfs:") && table.contains("default_permissions"), "{table}");
    assert!(!table.contains("FSName(") && !table.contains("DefaultPermissions"), "{table}");
    assert!(!table.contains("not running"), "{table}");
    m.stop();
    let out = std::process::Command::new(common::BIN).arg("stats").arg(&m.store).output().unwrap();
    let stale = String::from_utf8_lossy(&out.stdout);
    assert!(
        stale.starts_with("the daemon (pid ") && stale.contains("is not running") && stale.contains("s ago"),
        "{stale}"
    );
    // Not a store nor a mount: a clear error.
    let (ok, err) = run(&[OsStr::new("stats"), OsStr::new("/")]);
    assert!(!ok && err.contains("neither an mmapfs store nor an mmapfs mountpoint"), "{err}");
}

#[test]
fn pread_backend_writes_what_mmap_reads_even_after_kill_9() {
    written_by_one_read_by_default(&["--backend", "pread", "--segment-size", "4M"]);
}

/// Writes of two pages or more go in with pwrite by default; `--map-writes` copies them
/// through the mapping: both give the same bytes, also across kill -9.
#[test]
fn map_writes_writes_what_the_default_reads_even_after_kill_9() {
    written_by_one_read_by_default(&["--map-writes", "--segment-size", "4M"]);
}

/// The direct backend (O_DIRECT into the daemon's own pool, written through): what it wrote
/// before kill -9 is what the default backend reads, and its pool counters are in the stats.
#[test]
fn direct_backend_writes_what_mmap_reads_even_after_kill_9() {
    pooled_backend_writes_what_mmap_reads_even_after_kill_9("direct");
}

/// The same for the vm backend (vmcache), whose stats also count eviction batches.
#[test]
fn vm_backend_writes_what_mmap_reads_even_after_kill_9() {
    pooled_backend_writes_what_mmap_reads_even_after_kill_9("vm");
}

fn pooled_backend_writes_what_mmap_reads_even_after_kill_9(backend: &str) {
    let mut m = Mounted::new(&["--backend", backend, "--pool-size", "4M"]);
    let data: Vec<u8> = (0..6u32 << 20).map(|i| (i / 4096 % 251) as u8).collect();
    fs::write(m.path("x"), &data).unwrap();
    // After kill -9 and a mount in the same mode, the file is read through the pool.
    m.kill9();
    m.start().unwrap();
    assert!(fs::read(m.path("x")).unwrap() == data, "read back through the pool");
    let s = fresh_stats(&m.store);
    assert_eq!(s["options"]["backend"], backend);
    let pool = &s["pool"];
    assert_eq!(pool["bytes"], 4 << 20);
    assert!(pool["misses"].as_u64().unwrap() >= 1536, "{pool}");
    assert!(pool["evictions"].as_u64().unwrap() > 0, "6 MiB through a 4 MiB pool: {pool}");
    if backend == "vm" {
        assert!(pool["eviction_batches"].as_u64().unwrap() > 0, "{pool}");
    }
    drop(m);
    written_by_one_read_by_default(&["--backend", backend, "--pool-size", "4M", "--segment-size", "4M"]);
}

/// Random writes of 1 byte to 70 KB through a mount with `args`, fsync, kill -9, remount with
/// the defaults: the file reads back as written.
fn written_by_one_read_by_default(args: &[&str]) {
    let mut m = Mounted::new(args);
    let mut rng = common::seeded_rng();
    let mut model = vec![0u8; 10 << 20];
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.path("p")).unwrap();
    for _ in 0..200 {
        let off = rng.below(model.len() as u64 - 70_000) as usize;
        let n = 1 + rng.below(70_000) as usize;
        let mut d = vec![0u8; n];
        rng.fill(&mut d);
        f.write_all_at(&d, off as u64).unwrap();
        model[off..off + n].copy_from_slice(&d);
    }
    f.set_len(model.len() as u64).unwrap();
    let mut back = vec![0u8; model.len()];
    f.read_exact_at(&mut back, 0).unwrap();
    assert!(back == model, "read back through {args:?}");
    f.sync_all().unwrap();
    drop(f);
    m.kill9();
    // Remount with the defaults: same store, same bytes.
    m.args = vec![];
    m.start().unwrap();
    assert!(fs::read(m.path("p")).unwrap() == model);
}

#[test]
fn sync_none_skips_syncing() {
    let m = Mounted::new(&["--sync", "none", "--populate"]);
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(m.path("f")).unwrap();
    f.write_all(&[1u8; 1 << 20]).unwrap();
    f.sync_all().unwrap();
    let s = fresh_stats(&m.store);
    assert_eq!(s["options"]["sync"], "none");
    assert_eq!(s["options"]["populate"], "true");
    assert_eq!(s["msync_calls"], 0);
    assert_eq!(s["journal_syncs"], 0);
    assert!(m.log().contains("NOT durable"));
}

/// A missing name is cached as a negative entry: stat-then-create of a new file costs one
/// LOOKUP, and the file then exists for everyone (the negative entry turned positive).
#[test]
fn a_miss_is_looked_up_once() {
    let m = Mounted::new(&[]);
    let before = |s: &serde_json::Value| op(s, "lookup").map_or(0, |o| o["count"].as_u64().unwrap());
    // `stats MOUNTPOINT` itself looks up "superblock" there once (is it a store?): done
    // before the count starts.
    let _ = std::process::Command::new(common::BIN).arg("stats").arg(&m.mnt).output().unwrap();
    let n0 = before(&fresh_stats(&m.store));
    for i in 0..20 {
        let p = m.path(&format!("new{i}"));
        assert_eq!(fs::metadata(&p).unwrap_err().kind(), std::io::ErrorKind::NotFound);
        assert_eq!(fs::metadata(&p).unwrap_err().kind(), std::io::ErrorKind::NotFound);
        fs::write(&p, b"x").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"x");
    }
    let s = fresh_stats(&m.store);
    assert_eq!(before(&s) - n0, 20, "one LOOKUP per new name");
    assert_eq!(s["options"]["madvise"], "random", "the default advice");
    // Removing one makes it missing again.
    fs::remove_file(m.path("new3")).unwrap();
    assert!(!m.path("new3").exists() && m.path("new4").exists());
}

/// `--max-write` caps the WRITE requests the kernel sends (a 1 MiB write arrives in 64 KiB
/// pieces, all of them stored); a value out of range is refused before mounting.
#[test]
fn max_write_caps_write_requests() {
    let m = Mounted::new(&["--max-write", "64K"]);
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    fs::write(m.path("f"), &data).unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), data);
    let s = fresh_stats(&m.store);
    assert_eq!(s["options"]["max_write"], "65536");
    let w = op(&s, "write").unwrap();
    assert_eq!(w["bytes"].as_u64().unwrap(), 1 << 20);
    assert!(w["count"].as_u64().unwrap() >= 16, "{w}");
    let dir = tempfile::tempdir().unwrap();
    let (ok, err) = run(&[
        OsStr::new("mount"),
        OsStr::new("--store"),
        dir.path().join("s").as_os_str(),
        dir.path().join("m").as_os_str(),
        OsStr::new("--max-write"),
        OsStr::new("1"),
    ]);
    assert!(!ok && err.contains("max_write=1: must be between 4K and 16M"), "{err}");
}

/// `mmapfs stats --watch` prints rates per second while the daemon works, and says when it has
/// ended; `--format prometheus` prints every counter in Prometheus' text format.
#[test]
fn stats_watch_and_prometheus() {
    let mut m = Mounted::new(&[]);
    let mut watch = std::process::Command::new(common::BIN)
        .args(["stats", "--watch", "0.5"])
        .arg(&m.mnt)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(m.path("f")).unwrap();
    while std::time::Instant::now() < deadline {
        f.write_all(&[1u8; 65536]).unwrap();
        f.sync_all().unwrap();
    }
    drop(f);
    let out = std::process::Command::new(common::BIN).args(["stats", "--format", "prometheus"]).arg(&m.mnt).output();
    let prom = String::from_utf8_lossy(&out.unwrap().stdout).into_owned();
    // OpenMetrics: the family is named without `_total`, its samples with it, and it ends.
    assert!(prom.contains("# TYPE mmapfs_requests counter") && prom.ends_with("# EOF\n"), "{prom}");
    let write_line = prom.lines().find(|l| l.starts_with("mmapfs_requests_total{") && l.contains("op=\"write\""));
    let n: f64 = write_line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).expect("write count");
    assert!(n > 0.0, "{prom}");
    for l in prom.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = l.rsplit_once(' ').expect("name and value");
        assert!(name.starts_with("mmapfs_") && name.contains("store=\"") && value.parse::<f64>().is_ok(), "{l}");
    }
    m.stop();
    let status =
        common::wait_timeout(&mut watch, Duration::from_secs(10)).expect("--watch did not end with the daemon");
    assert!(status.success());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut watch.stdout.take().unwrap(), &mut text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.first().is_some_and(|l| l.contains("ops/s") && l.contains("msync/s")), "{text}");
    let busy =
        lines.iter().skip(1).filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok()).filter(|&v| v > 0.0);
    assert!(busy.count() >= 2, "rates while writing: {text}");
    assert!(text.contains("has ended"), "{text}");
}

/// `-o metrics=ADDR` serves the counters over HTTP at /metrics while the mount lives (the same
/// samples `stats --format prometheus` prints), answers 404 elsewhere, and an address that
/// cannot be bound refuses the mount. The Grafana dashboard in docs/ names only metrics served
/// (with the vm backend, which has every family: the pool's too).
#[test]
fn metrics_are_served_over_http() {
    use std::io::{Read, Write};
    let get = |addr: &str, path: &str| -> (String, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    };
    let mut m = Mounted::new(&["-o", "metrics=127.0.0.1:0", "--backend", "vm", "--pool-size", "4M"]);
    let log = m.log();
    let addr = log
        .lines()
        .find_map(|l| l.split("serving metrics at http://").nth(1))
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in the log: {log}"))
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    fs::write(m.path("f"), b"counted").unwrap();
    let (head, body) = get(&addr, "/metrics");
    assert!(head.starts_with("HTTP/1.0 200") && head.contains("application/openmetrics-text"), "{head}");
    let write_line = body.lines().find(|l| l.starts_with("mmapfs_requests_total{") && l.contains("op=\"write\""));
    assert!(write_line.is_some_and(|l| l.ends_with(" 1.0")), "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    // The same samples as `mmapfs stats --format prometheus` (by name), once stats.json has
    // the requests too.
    fresh_stats(&m.store);
    let names = |t: &str| -> std::collections::BTreeSet<String> {
        t.lines().filter(|l| !l.starts_with('#')).map(|l| l.split('{').next().unwrap().to_string()).collect()
    };
    let out = std::process::Command::new(common::BIN).args(["stats", "--format", "prometheus"]).arg(&m.mnt).output();
    let cli = String::from_utf8(out.unwrap().stdout).unwrap();
    assert_eq!(names(&body), names(&cli));
    let dashboard: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana/mmapfs.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    assert!(exprs.len() >= 8, "{exprs:?}");
    let served = names(&body);
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("mmapfs_") {
            let name: String =
                rest[i..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit()).collect();
            assert!(served.contains(&name), "the dashboard asks for {name}, which is not served: {e}");
            rest = &rest[i + name.len()..];
        }
    }
    assert!(get(&addr, "/").0.starts_with("HTTP/1.0 404"));
    m.stop();
    assert!(std::net::TcpStream::connect(&addr).is_err(), "still listening after the unmount");
    // An address in use: the mount is refused, saying why.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut busy = Mounted::new_stopped(&["-o", &format!("metrics=127.0.0.1:{port}")]);
    let err = busy.start().unwrap_err();
    assert!(err.contains("cannot listen on 127.0.0.1"), "{err}");
    let mut bad = Mounted::new_stopped(&["-o", "metrics=nowhere"]);
    let err = bad.start().unwrap_err();
    assert!(err.contains("metrics=nowhere"), "{err}");
}
