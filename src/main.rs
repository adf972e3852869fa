//! `mmapfs`: parses the command line and dispatches to the library (`cli` for the reports,
//! `daemon` for a mount).

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use mmapfs::cli::{self, Cli, Cmd, StatsFormat};
use mmapfs::config::default_store;
use mmapfs::daemon;
use mmapfs::store::{self, FormatOptions};

fn main() -> ExitCode {
    // Everything the daemon creates on the host (store files, stats.json) is private to its
    // user, whatever umask it was started with; the store code sets 0600/0700 itself too.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match cli::helper_form(&args) {
        // mount(8)'s form: returns once the mount is live, then serves in the background.
        Some(h) if !h.foreground => match daemon::background(h.log.as_deref()) {
            Some(code) => return code,
            None => Cli::parse_from(h.args),
        },
        Some(h) => {
            daemon::init_logging(false);
            Cli::parse_from(h.args)
        }
        None => {
            daemon::init_logging(false);
            Cli::parse()
        }
    };
    let r = match cli.cmd {
        Cmd::Mount(args) => args.config().and_then(|cfg| daemon::mount(&cfg)),
        Cmd::Format { dir, segment_size, capacity } => {
            store::format(&dir, FormatOptions { segment_size: segment_size.0, capacity: capacity.0 })
                .map_err(|e| e.to_string())
        }
        Cmd::Stats { path, json, format, watch } => {
            let path = path.unwrap_or_else(default_store);
            match watch {
                Some(secs) => cli::stats::watch(&path, secs),
                None => cli::stats::show(&path, if json { StatsFormat::Json } else { format }),
            }
        }
        Cmd::Fsck { store, json } => return cli::fsck(&store.unwrap_or_else(default_store), json),
        Cmd::Inspect { path, inode, json, png } => {
            cli::inspect::run(&path.unwrap_or_else(default_store), inode, json, png.as_deref())
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "mmapfs", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man { dir } => clap_mangen::generate_to(Cli::command(), &dir)
            .map_err(|e| format!("writing the manual pages into {}: {e}", dir.display())),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mmapfs: error: {e}");
            daemon::tell_starter(&format!("mmapfs: error: {e}"));
            ExitCode::FAILURE
        }
    }
}
