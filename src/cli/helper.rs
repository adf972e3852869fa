//! mount(8)'s helper form: `mmapfs SOURCE MOUNTPOINT -o OPTS`, as mount.fuse3 runs it, turned
//! into the equivalent `mmapfs mount` command line.

use std::path::PathBuf;

use clap::CommandFactory;

use super::Cli;

/// `mmapfs SOURCE MOUNTPOINT [-o OPTS] [-f]`, as mount(8) runs it through mount.fuse3.
pub struct HelperForm {
    /// The equivalent `mmapfs mount --store SOURCE MOUNTPOINT -o …` command line.
    pub args: Vec<std::ffi::OsString>,
    /// `-f`: serve in the foreground instead of returning once the mount is live.
    pub foreground: bool,
    /// `-o log=FILE`: where a background daemon logs (syslog without it).
    pub log: Option<PathBuf>,
}

/// Options mount(8) and fstab use that mean nothing to the filesystem.
fn mount8_only(o: &str) -> bool {
    matches!(o, "defaults" | "auto" | "noauto" | "user" | "users" | "nouser" | "owner" | "group" | "nofail" | "_netdev")
        || o.starts_with("x-")
        || o.starts_with("comment=")
}

/// Recognizes mount(8)'s helper form: the first argument is no subcommand or flag.
pub fn helper_form(args: &[std::ffi::OsString]) -> Option<HelperForm> {
    let first = args.get(1)?.to_str().unwrap_or("-");
    let subcommands = Cli::command().get_subcommands().map(|c| c.get_name().to_string()).collect::<Vec<_>>();
    if first.starts_with('-') || first == "help" || subcommands.iter().any(|s| s == first) {
        return None;
    }
    let mut h = HelperForm { args: vec!["mmapfs".into(), "mount".into()], foreground: false, log: None };
    let (mut positional, mut opts) = (Vec::new(), Vec::new());
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-f") => h.foreground = true,
            // mount.fuse3 passes these through: no mtab, sloppy, verbose.
            Some("-n" | "-s" | "-v") => {}
            Some("-o") => opts.extend(it.next().and_then(|o| o.to_str()).map(str::to_string)),
            Some(o) if o.starts_with("-o") => opts.push(o[2..].to_string()),
            _ => positional.push(a.clone()),
        }
    }
    let [source, mountpoint] = <[std::ffi::OsString; 2]>::try_from(positional).ok()?;
    let mut keep = Vec::new();
    for o in opts.iter().flat_map(|o| o.split(',')).filter(|o| !o.is_empty()) {
        if let Some(f) = o.strip_prefix("log=") {
            h.log = Some(PathBuf::from(f));
        } else if !mount8_only(o) {
            keep.push(o.to_string());
        }
    }
    // mount(8) never creates a mountpoint: a missing one is an error there, and here.
    h.args.extend(["--store".into(), source, mountpoint, "--existing-mountpoint".into()]);
    if !keep.is_empty() {
        h.args.extend(["-o".into(), keep.join(",").into()]);
    }
    Some(h)
}
