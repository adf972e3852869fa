//! `mmapfs-paths`: the store's access paths (mmap, pread, direct, vm) driven from threads of
//! one process, without FUSE, over segment files in a directory; prints one JSON report.
//! Run it inside a memory cgroup to see a data set larger than memory (scripts/experiments/
//! paths.sh does). Built with the `testing` feature.

use clap::Parser;
use mmapfs::store::Backend;
use mmapfs::store::paths::{Config, run};

/// Random page reads and writes through one backend, in one process.
#[derive(Parser)]
struct Args {
    /// Directory of the segment files (made and filled if missing; reused otherwise)
    dir: std::path::PathBuf,
    #[arg(long, value_enum, default_value_t = Backend::Mmap)]
    backend: Backend,
    /// Bytes of data, in whole 64 MiB segments (e.g. 1G)
    #[arg(long, default_value = "1G", value_parser = size)]
    size: u64,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Percent of accesses that write a page
    #[arg(long, default_value_t = 0)]
    write_percent: u32,
    /// Buffer pool of the direct and vm backends
    #[arg(long, default_value = "256M", value_parser = size)]
    pool_size: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() {
    let a = Args::parse();
    let cfg = Config {
        backend: a.backend,
        size: a.size,
        threads: a.threads.max(1),
        seconds: a.seconds,
        write_percent: a.write_percent.min(100),
        pool_size: a.pool_size,
        seed: a.seed,
    };
    std::fs::create_dir_all(&a.dir).unwrap_or_else(|e| fail(&format!("{}: {e}", a.dir.display())));
    match run(&a.dir, &cfg) {
        Ok(r) => println!("{}", serde_json::to_string(&r).expect("a report encodes")),
        Err(e) => fail(&format!("{}: {e}", a.dir.display())),
    }
}

fn size(s: &str) -> Result<u64, String> {
    // K, M, G are powers of two, as everywhere in mmapfs.
    parse_size::Config::new().with_binary().parse_size(s).map_err(|e| e.to_string())
}

fn fail(msg: &str) -> ! {
    eprintln!("mmapfs-paths: {msg}");
    std::process::exit(1)
}
