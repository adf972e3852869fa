//! The mmap coherence suite (`scripts/coherence.sh`) as part of `cargo test`: every scenario,
//! in every mode mmapfs offers, side by side with tmpfs; the randomized exerciser runs
//! 100,000 operations with a fixed and with a random seed, remounting (clean and after
//! SIGKILL) along the way. Fails if mmapfs fails a scenario that tmpfs passes.

use std::process::Command;

#[test]
fn coherence_suite_passes_in_every_mode() {
    let root = env!("CARGO_MANIFEST_DIR");
    let results = format!("{root}/target/coherence-table.txt");
    let out = Command::new(format!("{root}/scripts/coherence.sh"))
        .env("MMAPFS_BIN", env!("CARGO_BIN_EXE_mmapfs"))
        .env("COHERENCE_BIN", env!("CARGO_BIN_EXE_mmapfs-coherence"))
        .env("RESULTS", &results)
        .env("FSX_OPS", std::env::var("FSX_OPS").unwrap_or_else(|_| "100000".into()))
        .output()
        .expect("run scripts/coherence.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "coherence suite failed:\n{stdout}\n{stderr}");
    // Every mmapfs cell is a pass (the crash scenarios too: the suite mounts mmapfs itself),
    // except the documented limit of writeback_cache (unsynced writes die with the daemon).
    let rows: Vec<&str> = stdout.lines().skip(1).take_while(|l| !l.starts_with("fsx seeds")).collect();
    // One row per scenario the binary lists, fsx twice (a fixed and a random seed).
    let listed = Command::new(env!("CARGO_BIN_EXE_mmapfs-coherence")).arg("--list").output().unwrap();
    let scenarios = String::from_utf8_lossy(&listed.stdout).lines().count();
    assert!(scenarios >= 14, "{scenarios} scenarios listed");
    assert_eq!(rows.len(), scenarios + 1, "one row per scenario:\n{stdout}");
    for line in rows {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert!(!cells.contains(&"FAIL"), "{line}");
        let ok = cells.iter().filter(|c| matches!(**c, "pass" | "n/a" | "(documented)")).count();
        assert_eq!(ok, 8, "tmpfs and seven mmapfs modes: {line}");
    }
}
