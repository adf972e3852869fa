//! The command line: its arguments (clap), mount(8)'s helper form, and the reports of the
//! subcommands that do not mount (fsck, stats, inspect). `main.rs` parses and dispatches.

mod fsck;
mod helper;
pub mod inspect;
mod mount_args;
pub mod stats;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub use fsck::fsck;
pub use helper::{HelperForm, helper_form};
pub use mount_args::MountArgs;

use crate::config::parse_size;
use crate::store::FormatOptions;

#[derive(Parser)]
#[command(name = "mmapfs", version, about = "A FUSE filesystem whose file data lives in memory-mapped segment files")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Mount a store (created on first use) and serve it in the foreground until it is
    /// unmounted (umount MOUNTPOINT) or the process gets SIGINT/SIGTERM.
    Mount(MountArgs),
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

/// How `mmapfs stats` prints the figures.
#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
pub enum StatsFormat {
    Table,
    Json,
    /// Prometheus' text exposition format
    Prometheus,
}

/// A size on the command line: parsed like `64M`, shown the same way in `--help`.
#[derive(Clone, Copy, Debug)]
pub struct Size(pub u64);

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

/// Writes a report to stdout; a reader that stops early (`| head`) is not an error.
pub(crate) fn print(out: &str) -> Result<(), String> {
    match std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("writing the report: {e}")),
        _ => Ok(()),
    }
}
