//! `mmapfs stats`: the figures a daemon writes to `STORE/stats.json` once a second, shown as
//! a table, JSON or Prometheus text, or as rates per interval (`--watch`).

use std::path::{Path, PathBuf};

use super::StatsFormat;
use crate::mounts;
use crate::stats::Snapshot;

/// The store behind `path` (a store directory or an mmapfs mountpoint).
fn store_at(path: &Path) -> Result<PathBuf, String> {
    if path.join("superblock").exists() {
        return Ok(path.to_path_buf());
    }
    mounts::store_of(path)
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
pub fn watch(path: &Path, secs: f64) -> Result<(), String> {
    if !(0.1..=3600.0).contains(&secs) {
        return Err(format!("--watch {secs}: between 0.1 and 3600 seconds"));
    }
    let store = store_at(path)?;
    let (mut prev, _) = read_snapshot(&store)?;
    for line in 0.. {
        std::thread::sleep(std::time::Duration::from_secs_f64(secs));
        let (now, _) = read_snapshot(&store)?;
        if now.pid != prev.pid || !mounts::lock_held(&store) {
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

/// `mmapfs stats`: the figures once, saying so when the daemon that wrote them is gone.
pub fn show(path: &Path, format: StatsFormat) -> Result<(), String> {
    let store = store_at(path)?;
    let file = store.join("stats.json");
    let (snap, data) = read_snapshot(&store)?;
    let alive = mounts::lock_held(&store);
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
