//! Serving in the background, as mount(8) expects of a helper: the process forks, the parent
//! waits on a pipe until the child says the mount is live (or why it failed) and exits with
//! that status; the child leaves the terminal's session and logs to a file or syslog.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;

use nix::fcntl::OFlag;
use nix::unistd::{ForkResult, dup2_stderr, dup2_stdin, dup2_stdout, fork, pipe2, setsid};

/// The write end of the pipe a background daemon's starter waits on (see [`background`]).
static STARTER: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Tells the process that started this background daemon how the mount went ("ok", or the
/// error), once; a no-op in the foreground.
pub fn tell_starter(msg: &str) {
    if let Some(mut f) = STARTER.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = f.write_all(msg.as_bytes());
    }
}

/// Logging to stderr (`RUST_LOG`, default info), or to syslog for a background daemon that
/// has no log file.
pub fn init_logging(to_syslog: bool) {
    let env = env_logger::Env::default().default_filter_or("info");
    if to_syslog {
        let level = std::env::var("RUST_LOG")
            .ok()
            .and_then(|l| l.parse::<log::LevelFilter>().ok())
            .unwrap_or(log::LevelFilter::Info);
        if syslog::init(syslog::Facility::LOG_DAEMON, level, Some("mmapfs")).is_ok() {
            return;
        }
    }
    env_logger::Builder::from_env(env).init();
}

/// Forks: the parent waits until the child says the mount is live (exit 0) or failed (its
/// error on stderr, exit 1) and returns that exit status; the child leaves the terminal's
/// session, logs to `log` or syslog, and returns `None` to go on and serve. Called before any
/// thread exists.
pub fn background(log: Option<&Path>) -> Option<ExitCode> {
    // The log is opened before the fork: a path that cannot be opened is refused here, while
    // the caller still sees stderr, not after it has been told nothing.
    let out = match log {
        Some(p) => std::fs::OpenOptions::new().create(true).append(true).open(p),
        None => std::fs::OpenOptions::new().write(true).open("/dev/null"),
    };
    let out = match out {
        Ok(f) if !f.metadata().is_ok_and(|m| m.is_dir()) => f,
        Ok(_) => return refuse_log(log, "is a directory"),
        Err(e) => return refuse_log(log, &e.to_string()),
    };
    let (rd, wr) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mmapfs: error: pipe: {e}");
            return Some(ExitCode::FAILURE);
        }
    };
    // SAFETY: no thread exists yet (the caller's contract), so the child may run anything.
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("mmapfs: error: fork: {e}");
            Some(ExitCode::FAILURE)
        }
        Ok(ForkResult::Child) => {
            drop(rd);
            // Fails only for a process group leader, which a fresh child is not.
            let _ = setsid();
            detach_stdio(&out);
            init_logging(log.is_none());
            *STARTER.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::fs::File::from(wr));
            None
        }
        Ok(ForkResult::Parent { .. }) => {
            drop(wr);
            Some(wait_for_child(rd))
        }
    }
}

/// Points stdin at /dev/null and stdout and stderr at `out` (the log, or /dev/null).
fn detach_stdio(out: &std::fs::File) {
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = dup2_stdin(&null);
    }
    let _ = dup2_stdout(out);
    let _ = dup2_stderr(out);
}

fn refuse_log(log: Option<&Path>, why: &str) -> Option<ExitCode> {
    let name = log.map_or_else(|| "/dev/null".into(), |p| p.display().to_string());
    eprintln!("mmapfs: error: -o log={name}: {why}");
    Some(ExitCode::FAILURE)
}

/// The starter's side: what the child said, as an exit status (its error on stderr).
fn wait_for_child(rd: OwnedFd) -> ExitCode {
    let mut said = String::new();
    let _ = std::fs::File::from(rd).read_to_string(&mut said);
    if said == "ok" {
        return ExitCode::SUCCESS;
    }
    if said.is_empty() {
        said = "mmapfs: error: the daemon ended before the mount was live".into();
    }
    eprintln!("{said}");
    ExitCode::FAILURE
}
