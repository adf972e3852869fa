//! `mmapfs-paths`, the access paths without FUSE (issue 19's experiment): every backend runs,
//! counts what it did, and the pool backends evict when the data is larger than their pool.

use std::process::Command;

#[test]
fn every_backend_runs_and_reports() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for backend in ["mmap", "pread", "direct", "vm"] {
        let out = Command::new(env!("CARGO_BIN_EXE_mmapfs-paths"))
            .arg(dir.path())
            .args(["--backend", backend, "--size", "128M", "--seconds", "1", "--pool-size", "4M"])
            .args(["--write-percent", "20", "--threads", "2"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{backend}: {}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["backend"], backend);
        assert_eq!(r["size"], 128 << 20);
        assert!(r["ops"].as_u64().unwrap() > 100, "{backend}: {r}");
        assert!(r["p99_us"].as_f64().unwrap() >= r["p50_us"].as_f64().unwrap(), "{backend}: {r}");
        assert_eq!(r["iops_per_second"].as_array().unwrap().len(), 1, "{backend}: {r}");
        let pooled = matches!(backend, "direct" | "vm");
        assert_eq!(r["pool_size"].as_u64(), pooled.then_some(4 << 20), "{backend}: {r}");
        if pooled {
            assert!(r["evictions"].as_u64().unwrap() > 0, "128 MiB through a 4 MiB pool: {r}");
        }
        assert_eq!(r["eviction_batches"].as_u64().is_some(), backend == "vm", "{backend}: {r}");
    }
    // A bad argument is refused clearly.
    let out = Command::new(env!("CARGO_BIN_EXE_mmapfs-paths")).arg(dir.path()).args(["--size", "lots"]).output();
    let out = out.unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--size"));
}
