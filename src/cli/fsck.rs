//! `mmapfs fsck`'s report, as text or JSON, and its exit status.

use std::path::Path;
use std::process::ExitCode;

use crate::store;

/// `mmapfs fsck`: prints the report; the exit status says clean (0), damaged (1), or that the
/// check could not run (2).
pub fn fsck(dir: &Path, json: bool) -> ExitCode {
    let r = match store::fsck::check(dir) {
        Ok(r) => r,
        Err(store::fsck::CannotRun(m)) => {
            eprintln!("mmapfs fsck: {}: cannot check: {m}", dir.display());
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        // A store whose metadata would not load has no figures to show (format 0), only damage.
        if r.format_version == 0 {
            println!("{}", r.store);
        } else {
            println!("{}: format {}", r.store, r.format_version);
            println!(
                "  {} inodes ({} files, {} directories, {} orphans due for freeing), {} journal records after the checkpoint",
                r.inodes, r.files, r.directories, r.orphans, r.journal_records
            );
            println!(
                "  {} segments: {} MiB in use, {} MiB free",
                r.segments,
                r.used_bytes >> 20,
                r.free_bytes_in_segments >> 20
            );
        }
        for n in &r.notes {
            println!("  note: {n}");
        }
        for p in &r.problems {
            println!("  DAMAGE: {p}");
        }
        println!("{}", if r.clean() { "clean" } else { "the store is damaged" });
    }
    if r.clean() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
