//! `mmapfs-coherence SCENARIO DIR [OPTIONS]`: the scenarios of the mmap coherence suite, run
//! against any directory (mmapfs, tmpfs, ext4, another FUSE filesystem).
//!
//! Exit status: 0 the guarantee held, 1 it did not (the reason is printed), 2 the scenario does
//! not apply here (the crash scenarios need a daemon to kill; see `--daemon`).
//! `scripts/coherence.sh` runs them all, in every mode, side by side with tmpfs.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use clap::builder::PossibleValuesParser;
use mmapfs::rng::Rng;
use mmapfs::testing::{Mapping, wait_mounted};

const PAGE: usize = 4096;

type Outcome = Result<(), String>;

/// How to crash and restart the mmapfs daemon that serves DIR (for the durability scenarios
/// and the exerciser's remounts): `--daemon BIN,STORE[,MOUNT ARGS…]`.
#[derive(Clone, Debug)]
struct Daemon {
    bin: PathBuf,
    store: PathBuf,
    args: Vec<String>,
}

struct Opts {
    dir: PathBuf,
    daemon: Option<Daemon>,
    seed: u64,
    ops: u64,
    size: u64,
    remount_every: u64,
}

/// The scenarios of the mmap coherence suite, run against any directory.
#[derive(Parser)]
#[command(name = "mmapfs-coherence", about)]
struct Cli {
    /// Print the scenario names, one per line, and exit
    #[arg(long, exclusive = true)]
    list: bool,
    /// The scenario to run
    #[arg(required_unless_present = "list", value_parser = PossibleValuesParser::new(SCENARIOS.iter().map(|s| s.0)))]
    scenario: Option<String>,
    /// The directory to run it in (a mounted mmapfs, tmpfs, ext4, …)
    #[arg(required_unless_present = "list")]
    dir: Option<PathBuf>,
    /// How to crash and restart the mmapfs daemon serving DIR: BIN,STORE[,MOUNT ARGS…]
    #[arg(long, value_name = "BIN,STORE[,ARGS…]", value_parser = parse_daemon)]
    daemon: Option<Daemon>,
    /// Seed of the randomized scenarios [default: from the clock, printed]
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Operations of the fsx exerciser
    #[arg(long, default_value_t = 100_000)]
    ops: u64,
    /// Bytes of the large-file scenario
    #[arg(long, default_value_t = 256 << 20)]
    size: u64,
    /// fsx remounts the daemon every N operations (0: never)
    #[arg(long, value_name = "N", default_value_t = 0)]
    remount_every: u64,
}

fn parse_daemon(v: &str) -> Result<Daemon, String> {
    let mut parts = v.split(',').map(str::to_string);
    let (Some(bin), Some(store)) = (parts.next(), parts.next()) else {
        return Err("expected BIN,STORE[,ARGS…]".into());
    };
    Ok(Daemon { bin: bin.into(), store: store.into(), args: parts.collect() })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // Internal: this program run again as the other process of a scenario.
    if args.len() >= 2 && args[1] == "helper" {
        return match helper(&args[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("helper: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    if cli.list {
        for (name, _) in SCENARIOS {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    let (Some(name), Some(dir)) = (cli.scenario, cli.dir) else { return ExitCode::from(2) };
    let o = Opts {
        dir,
        daemon: cli.daemon,
        seed: cli.seed,
        ops: cli.ops,
        size: cli.size,
        remount_every: cli.remount_every,
    };
    let run = SCENARIOS.iter().find(|s| s.0 == name).expect("clap checked the name").1;
    let work = o.dir.join(format!(".coherence-{name}-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&work) {
        eprintln!("cannot create {}: {e}", work.display());
        return ExitCode::FAILURE;
    }
    let r = run(&o, &work);
    let _ = std::fs::remove_dir_all(&work);
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e == NOT_APPLICABLE => ExitCode::from(2),
        Err(e) => {
            eprintln!("FAIL {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

const NOT_APPLICABLE: &str = "not applicable";

type Scenario = fn(&Opts, &Path) -> Outcome;

const SCENARIOS: &[(&str, Scenario)] = &[
    ("shared-two-process", shared_two_process),
    ("write-vs-mapping", write_vs_mapping),
    ("fork-shared", fork_shared),
    ("private-cow", private_cow),
    ("truncate-mapped", truncate_mapped),
    ("mtime-after-msync", mtime_after_msync),
    ("many-writers", many_writers),
    ("store-write-race", store_write_race),
    ("durability-write", |o, w| durability(o, w, Sync::None)),
    ("durability-msync", |o, w| durability(o, w, Sync::Msync)),
    ("durability-fsync", |o, w| durability(o, w, Sync::Fsync)),
    ("durability-fdatasync", |o, w| durability(o, w, Sync::Fdatasync)),
    ("large-file", large_file),
    ("fsx", fsx),
    ("fsx-timed", fsx_timed),
];

// ---------------------------------------------------------------- helpers

fn check(cond: bool, msg: impl FnOnce() -> String) -> Outcome {
    if cond { Ok(()) } else { Err(msg()) }
}

fn io<T>(r: std::io::Result<T>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn open_rw(p: &Path, create: bool) -> Result<File, String> {
    io(
        OpenOptions::new().read(true).write(true).create(create).truncate(false).open(p),
        &format!("open {}", p.display()),
    )
}

/// Maps `len` bytes of `f` (see [`Mapping`] for why nothing borrows the mapped bytes).
fn map_file(f: &File, len: usize, shared: bool) -> Result<Mapping, String> {
    io(Mapping::new(f, len, shared), "mmap")
}

fn msync(m: &Mapping) -> Outcome {
    io(m.msync(), "msync")
}

/// Runs this program as a helper process: `helper KIND ARGS…`.
fn spawn_helper(args: &[&str]) -> Result<std::process::Child, String> {
    let exe = io(std::env::current_exe(), "current_exe")?;
    io(Command::new(exe).arg("helper").args(args).stdout(Stdio::piped()).spawn(), "spawn helper")
}

fn wait_helper(mut c: std::process::Child, secs: u64) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = io(c.try_wait(), "wait")? {
            return check(st.success(), || format!("helper exited with {st}"));
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            return Err("helper hung".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn helper(args: &[String]) -> Outcome {
    let kind = args.first().map(String::as_str).unwrap_or("");
    let path = Path::new(args.get(1).map(String::as_str).unwrap_or(""));
    match kind {
        // Maps the file and answers each of the parent's 100 stores with its own.
        "echo" => {
            let f = open_rw(path, false)?;
            let m = map_file(&f, 1 << 20, true)?;
            for round in 1..=100u64 {
                check(m.wait_for(0, round, Duration::from_secs(10)), || format!("round {round} never arrived"))?;
                m.store(100 * PAGE + 8, round * 1000);
            }
            Ok(())
        }
        "pwrite" => {
            let off: u64 = args[2].parse().map_err(|_| "offset")?;
            let v: u64 = args[3].parse().map_err(|_| "value")?;
            io(open_rw(path, false)?.write_all_at(&v.to_ne_bytes(), off), "pwrite")
        }
        // Opens the file anew and prints the u64 read(2) finds at the offset.
        "pread" => {
            let off: u64 = args[2].parse().map_err(|_| "offset")?;
            let mut b = [0u8; 8];
            io(io(File::open(path), "open")?.read_exact_at(&mut b, off), "pread")?;
            println!("{}", u64::from_ne_bytes(b));
            Ok(())
        }
        // Reads the file through a shared mapping of its own: must not see private stores.
        "map-read" => {
            let off: usize = args[2].parse().map_err(|_| "offset")?;
            let f = open_rw(path, false)?;
            let m = map_file(&f, PAGE * 4, true)?;
            println!("{}", m.load(off));
            Ok(())
        }
        // Stores its pattern into its own pages, many times over.
        "page-writer" => {
            let id: usize = args[2].parse().map_err(|_| "id")?;
            let pages: usize = args[3].parse().map_err(|_| "pages")?;
            let f = open_rw(path, false)?;
            let m = map_file(&f, pages * 16 * PAGE, true)?;
            for round in 0..200u64 {
                for p in 0..pages {
                    let base = (id * pages + p) * PAGE;
                    for w in (0..PAGE).step_by(8) {
                        m.store(base + w, ((id as u64) << 48) | (round << 16) | (w as u64 / 8));
                    }
                }
            }
            Ok(())
        }
        // Writes whole pages of one value with pwrite(2) for `ms` milliseconds.
        "pwrite-loop" => {
            let v: u64 = args[2].parse().map_err(|_| "value")?;
            let ms: u64 = args[3].parse().map_err(|_| "ms")?;
            let f = open_rw(path, false)?;
            let page: Vec<u8> = std::iter::repeat_n(v.to_ne_bytes(), PAGE / 8).flatten().collect();
            let deadline = Instant::now() + Duration::from_millis(ms);
            while Instant::now() < deadline {
                io(f.write_all_at(&page, 0), "pwrite")?;
            }
            Ok(())
        }
        // Stores into every page of a shared mapping of BYTES, PASSES times, each pass in a
        // scattered order, then msyncs and checks the mapping: page p ends up holding
        // `map_stamp(p, PASSES)` at its first and last word.
        "map-stores" => {
            let bytes: usize = args[2].parse().map_err(|_| "bytes")?;
            let passes: u64 = args[3].parse().map_err(|_| "passes")?;
            let pages = bytes / PAGE;
            check(pages > 0 && bytes.is_multiple_of(PAGE), || "BYTES must be whole pages".into())?;
            // A stride prime to the page count visits every page once per pass, far apart.
            let gcd = |mut a: usize, mut b: usize| {
                while b != 0 {
                    (a, b) = (b, a % b);
                }
                a
            };
            let stride = (1..).map(|k| pages / 3 + k).find(|&s| gcd(s, pages) == 1).expect("some stride");
            let f = open_rw(path, true)?;
            io(f.set_len(bytes as u64), "ftruncate")?;
            let m = map_file(&f, bytes, true)?;
            for pass in 1..=passes {
                for i in 0..pages {
                    let p = (i * stride + pass as usize) % pages;
                    m.store(p * PAGE, map_stamp(p, pass));
                    m.store(p * PAGE + PAGE - 8, map_stamp(p, pass));
                }
            }
            msync(&m)?;
            (0..pages).try_for_each(|p| {
                let (a, b) = (m.load(p * PAGE), m.load(p * PAGE + PAGE - 8));
                check(a == map_stamp(p, passes) && b == a, || format!("page {p} holds {a:#x}/{b:#x} after msync"))
            })
        }
        // Streams BYTES with write(2) in 1 MiB chunks, chunk i filled with the word i + 1,
        // then fsyncs.
        "stream-writes" => {
            let bytes: usize = args[2].parse().map_err(|_| "bytes")?;
            let f = open_rw(path, true)?;
            for i in 0..bytes >> 20 {
                let chunk: Vec<u8> =
                    std::iter::repeat_n((i as u64 + 1).to_ne_bytes(), (1 << 20) / 8).flatten().collect();
                io(f.write_all_at(&chunk, (i << 20) as u64), "write")?;
            }
            io(f.sync_all(), "fsync")
        }
        _ => Err(format!("unknown helper {kind}")),
    }
}

/// What `helper map-stores` leaves in page `p` after pass `pass` (tests/dirty_pages.rs checks it).
fn map_stamp(p: usize, pass: u64) -> u64 {
    ((p as u64) << 16) | pass
}

// ---------------------------------------------------------------- scenarios

/// Two unrelated processes map one file MAP_SHARED: stores in one are loads in the other at
/// once, no msync, in both directions.
fn shared_two_process(_: &Opts, w: &Path) -> Outcome {
    let p = w.join("shared");
    let f = open_rw(&p, true)?;
    io(f.set_len(1 << 20), "set_len")?;
    let m = map_file(&f, 1 << 20, true)?;
    let child = spawn_helper(&["echo", p.to_str().unwrap_or("")])?;
    for round in 1..=100u64 {
        m.store(0, round);
        check(m.wait_for(100 * PAGE + 8, round * 1000, Duration::from_secs(10)), || {
            format!("round {round}: the other process's store never arrived")
        })?;
    }
    wait_helper(child, 10)
}

/// write(2)/pwrite from another process is seen by an existing mapping; mapped stores are seen
/// by read(2) in another process that opens the file afresh — and that open leaves this
/// mapping's view intact.
fn write_vs_mapping(_: &Opts, w: &Path) -> Outcome {
    let p = w.join("f");
    let ps = p.to_str().unwrap_or("");
    let f = open_rw(&p, true)?;
    io(f.set_len(16 * PAGE as u64), "set_len")?;
    let m = map_file(&f, 16 * PAGE, true)?;
    m.load(0); // fault the page in before the other process writes
    wait_helper(spawn_helper(&["pwrite", ps, "8192", "4242"])?, 10)?;
    check(m.load(8192) == 4242, || format!("pwrite from another process not in the mapping: {}", m.load(8192)))?;
    m.store(3 * PAGE + 16, 777);
    let out = io(spawn_helper(&["pread", ps, &(3 * PAGE + 16).to_string()])?.wait_with_output(), "pread helper")?;
    let seen = String::from_utf8_lossy(&out.stdout).trim().to_string();
    check(seen == "777", || format!("mapped store not seen by read(2) in a fresh open: {seen}"))?;
    check(m.load(3 * PAGE + 16) == 777, || "a fresh open elsewhere dropped this mapping's store".into())?;
    wait_helper(spawn_helper(&["pwrite", ps, &(3 * PAGE + 16).to_string(), "888"])?, 10)?;
    check(m.load(3 * PAGE + 16) == 888, || "second pwrite not seen by the mapping".into())
}

/// The classic: a MAP_SHARED mapping inherited across fork; parent and child take turns writing
/// strings into it and each prints what the other wrote.
fn fork_shared(_: &Opts, w: &Path) -> Outcome {
    let f = open_rw(&w.join("zero"), true)?;
    io(f.set_len(PAGE as u64), "set_len")?;
    let m = map_file(&f, PAGE, true)?;
    // SAFETY: the child only touches the mapping, formats into a stack buffer and _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err("fork failed".into());
    }
    let turns = 20u64;
    let is_child = pid == 0;
    let mut ok = true;
    for t in 0..turns {
        let mine = t % 2 == u64::from(is_child);
        if mine {
            let msg = format!("{} says {t:02}\0", if is_child { "child " } else { "parent" });
            m.copy_in(8, msg.as_bytes());
            m.store(0, t + 1);
        } else {
            if !m.wait_for(0, t + 1, Duration::from_secs(10)) {
                ok = false;
                break;
            }
            let want = format!("{} says {t:02}", if is_child { "parent" } else { "child " });
            let text = m.read(8, want.len());
            if !is_child {
                println!("parent read: {}", String::from_utf8_lossy(&text));
            }
            ok &= text == want.as_bytes();
        }
    }
    if is_child {
        // SAFETY: leaving the forked child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    check(ok && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, || {
        "parent and child did not see each other's strings in turn".into()
    })
}

/// MAP_PRIVATE: private stores never reach the file or other mappings.
fn private_cow(_: &Opts, w: &Path) -> Outcome {
    let p = w.join("p");
    let f = open_rw(&p, true)?;
    io(f.write_all_at(&[7u8; 4 * PAGE], 0), "write")?;
    let m = map_file(&f, 4 * PAGE, false)?;
    m.store(PAGE, 0xdead_beef);
    let _ = m.msync();
    check(m.load(PAGE) == 0xdead_beef, || "private store lost".into())?;
    let mut b = [0u8; 8];
    io(f.read_exact_at(&mut b, PAGE as u64), "pread")?;
    check(b == [7u8; 8], || format!("private store reached the file: {b:?}"))?;
    let out = io(
        spawn_helper(&["map-read", p.to_str().unwrap_or(""), &PAGE.to_string()])?.wait_with_output(),
        "map-read helper",
    )?;
    let seen: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    check(seen == u64::from_ne_bytes([7; 8]), || format!("private store visible in another mapping: {seen:x}"))?;
    // A later write(2) is seen by the private mapping only where it was not copied on write.
    io(f.write_all_at(&[9u8; 8], 2 * PAGE as u64), "pwrite")?;
    check(m.load(2 * PAGE) == u64::from_ne_bytes([9; 8]) && m.load(PAGE) == 0xdead_beef, || {
        "private mapping view wrong after a write".into()
    })
}

/// Truncate while mapped: SIGBUS past the new EOF, data before intact, a regrown range reads
/// zeros.
fn truncate_mapped(_: &Opts, w: &Path) -> Outcome {
    let p = w.join("t");
    let f = open_rw(&p, true)?;
    io(f.write_all_at(&[0x55u8; 4 * PAGE], 0), "write")?;
    let m = map_file(&f, 4 * PAGE, true)?;
    check(m.load(3 * PAGE) == u64::from_ne_bytes([0x55; 8]), || "initial data".into())?;
    io(open_rw(&p, false)?.set_len((PAGE + PAGE / 2) as u64), "truncate")?;
    // Touching page 3 must raise SIGBUS: do it in a child and look at how it died.
    // SAFETY: the child only loads from the mapping (which faults) and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let _ = m.load(3 * PAGE);
        // SAFETY: leaving the child.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    check(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGBUS, || {
        format!("no SIGBUS past EOF (status {status:#x})")
    })?;
    check(m.load(PAGE) == u64::from_ne_bytes([0x55; 8]) && m.load(0) == u64::from_ne_bytes([0x55; 8]), || {
        "data before EOF damaged".into()
    })?;
    io(f.set_len(4 * PAGE as u64), "regrow")?;
    let tail = m.read(PAGE + PAGE / 2, 4 * PAGE - (PAGE + PAGE / 2));
    check(tail.iter().all(|&b| b == 0), || "regrown range does not read zeros through the mapping".into())?;
    let mut buf = vec![0u8; 4 * PAGE];
    io(f.read_exact_at(&mut buf, 0), "pread")?;
    check(buf[PAGE + PAGE / 2..].iter().all(|&b| b == 0) && buf[..PAGE + PAGE / 2].iter().all(|&b| b == 0x55), || {
        "read(2) after regrow".into()
    })
}

fn times(p: &Path) -> Result<(i64, i64, i64, i64), String> {
    use std::os::unix::fs::MetadataExt;
    let m = io(std::fs::metadata(p), "stat")?;
    Ok((m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
}

/// mtime and ctime advance after a mapped store once it is written back (msync).
fn mtime_after_msync(_: &Opts, w: &Path) -> Outcome {
    let p = w.join("m");
    let f = open_rw(&p, true)?;
    io(f.set_len(16 * PAGE as u64), "set_len")?;
    let m = map_file(&f, 16 * PAGE, true)?;
    m.store(0, 1);
    msync(&m)?;
    let before = times(&p)?;
    std::thread::sleep(Duration::from_millis(20));
    m.store(5 * PAGE, 2);
    msync(&m)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let after = times(&p)?;
        if (after.0, after.1) > (before.0, before.1) && (after.2, after.3) > (before.2, before.3) {
            let len = io(std::fs::metadata(&p), "stat")?.len();
            return if len == 16 * PAGE as u64 {
                Ok(())
            } else {
                Err(format!("mapped stores changed the size to {len}"))
            };
        }
        if Instant::now() > deadline {
            return Err(format!("mtime/ctime did not advance: {before:?} → {after:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Eight processes store into disjoint pages of one mapped file at once: nothing lost or torn.
fn many_writers(_: &Opts, w: &Path) -> Outcome {
    const PROCS: usize = 8;
    const PAGES: usize = 2;
    let p = w.join("many");
    let f = open_rw(&p, true)?;
    io(f.set_len((PAGES * 16 * PAGE) as u64), "set_len")?;
    let ps = p.to_str().unwrap_or("");
    let kids: Vec<_> = (0..PROCS)
        .map(|id| spawn_helper(&["page-writer", ps, &id.to_string(), &PAGES.to_string()]))
        .collect::<Result<_, _>>()?;
    for k in kids {
        wait_helper(k, 60)?;
    }
    let m = map_file(&f, PAGES * 16 * PAGE, true)?;
    let mut buf = vec![0u8; PAGES * 16 * PAGE];
    io(f.read_exact_at(&mut buf, 0), "pread")?;
    for id in 0..PROCS {
        for pg in 0..PAGES {
            let base = (id * PAGES + pg) * PAGE;
            for wd in (0..PAGE).step_by(8) {
                let want = ((id as u64) << 48) | (199 << 16) | (wd as u64 / 8);
                let via_read = u64::from_ne_bytes(buf[base + wd..base + wd + 8].try_into().unwrap_or([0; 8]));
                check(m.load(base + wd) == want && via_read == want, || {
                    format!("process {id} page {pg} word {}: lost or torn", wd / 8)
                })?;
            }
        }
    }
    Ok(())
}

/// Mapped stores and pwrite(2) race on one page from two processes: the final content is one
/// of the two in every aligned 8-byte word, and read(2) agrees with the mapping.
fn store_write_race(_: &Opts, w: &Path) -> Outcome {
    const A: u64 = 0xaaaa_aaaa_aaaa_aaaa;
    const B: u64 = 0xbbbb_bbbb_bbbb_bbbb;
    let p = w.join("race");
    let f = open_rw(&p, true)?;
    io(f.set_len(PAGE as u64), "set_len")?;
    let m = map_file(&f, PAGE, true)?;
    let writer = spawn_helper(&["pwrite-loop", p.to_str().unwrap_or(""), &B.to_string(), "300"])?;
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        for wd in (0..PAGE).step_by(8) {
            m.store(wd, A);
        }
    }
    wait_helper(writer, 30)?;
    msync(&m)?;
    let mut buf = vec![0u8; PAGE];
    io(f.read_exact_at(&mut buf, 0), "pread")?;
    for wd in (0..PAGE).step_by(8) {
        let v = m.load(wd);
        check(v == A || v == B, || format!("word {} is {v:#x}: a mix", wd / 8))?;
        let r = u64::from_ne_bytes(buf[wd..wd + 8].try_into().unwrap_or([0; 8]));
        check(r == v, || format!("word {}: read(2) {r:#x} but mapping {v:#x}", wd / 8))?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Sync {
    /// No sync at all: the data went in with write(2), which returned.
    None,
    Msync,
    Fsync,
    Fdatasync,
}

impl Daemon {
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.store.join("lock")).ok()?.trim().parse().ok()
    }

    /// Kills the daemon (SIGKILL when `crash`, else SIGTERM), clears the mount, starts a new one.
    fn restart(&self, mnt: &Path, crash: bool) -> Outcome {
        let pid = self.pid().ok_or("no daemon pid in the store's lock file")?;
        // SAFETY: kill(2) of the daemon serving the mount.
        unsafe { libc::kill(pid, if crash { libc::SIGKILL } else { libc::SIGTERM }) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            // Reap it if it is our child; otherwise just wait for it to go.
            // SAFETY: a non-blocking waitpid.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = mmapfs::mounts::lazy_unmount(mnt);
        let log =
            io(OpenOptions::new().create(true).append(true).open(self.store.with_extension("log")), "daemon log")?;
        let child = io(
            Command::new(&self.bin)
                .arg("mount")
                .arg("--store")
                .arg(&self.store)
                .arg(mnt)
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(io(log.try_clone(), "log")?)
                .stderr(log)
                .spawn(),
            "start daemon",
        )?;
        let mut child = child;
        wait_mounted(mnt, &mut child, Duration::from_secs(30)).map(drop).map_err(|e| format!("remount: {e}"))
    }
}

/// Map, store, sync with `how`, SIGKILL the daemon, remount: every synced byte is back. With
/// `Sync::None` the bytes go in with write(2) and are not synced at all: the daemon promises
/// them anyway (they are in its mapping once write returns), except under writeback_cache.
fn durability(o: &Opts, w: &Path, how: Sync) -> Outcome {
    let Some(d) = &o.daemon else { return Err(NOT_APPLICABLE.into()) };
    let mut rng = Rng::new(o.seed);
    let mut data = vec![0u8; 64 * PAGE];
    rng.fill(&mut data);
    let p = w.join("durable");
    // The file stays open (and mapped) across the kill: a close would hand cached data to
    // the daemon (under writeback_cache the kernel flushes on close) and hide what is tested.
    let f = open_rw(&p, true)?;
    io(f.set_len(data.len() as u64), "set_len")?;
    let m = map_file(&f, data.len(), true)?;
    match how {
        Sync::None => io(f.write_all_at(&data, 0), "write")?,
        _ => {
            m.copy_in(0, &data);
            match how {
                Sync::Msync => msync(&m)?,
                Sync::Fsync => io(f.sync_all(), "fsync")?,
                Sync::Fdatasync => io(f.sync_data(), "fdatasync")?,
                Sync::None => {}
            }
        }
    }
    d.restart(&o.dir, true)?;
    drop((m, f));
    let mut back = vec![0u8; data.len()];
    io(io(File::open(&p), "reopen")?.read_exact_at(&mut back, 0), "read back")?;
    check(back == data, || match how {
        Sync::None => "bytes written with write(2), not synced, lost after SIGKILL + remount".into(),
        _ => format!("bytes synced with {how:?} lost after SIGKILL + remount"),
    })
}

/// A file larger than a segment (and than the daemon's memory budget, when the suite runs the
/// daemon in a memory cgroup) mapped, filled and verified end to end.
fn large_file(o: &Opts, w: &Path) -> Outcome {
    let len = o.size as usize;
    let p = w.join("large");
    let f = open_rw(&p, true)?;
    io(f.set_len(len as u64), "set_len")?;
    let m = map_file(&f, len, true)?;
    for pg in 0..len / PAGE {
        m.store(pg * PAGE, pg as u64 ^ 0x5a5a);
        m.store(pg * PAGE + PAGE - 8, !(pg as u64));
    }
    msync(&m)?;
    drop(m);
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    for chunk in 0..len / CHUNK {
        io(f.read_exact_at(&mut buf, (chunk * CHUNK) as u64), "pread")?;
        for i in 0..buf.len() / PAGE {
            let pg = chunk * (CHUNK / PAGE) + i;
            let a = u64::from_ne_bytes(buf[i * PAGE..i * PAGE + 8].try_into().unwrap_or([0; 8]));
            let b = u64::from_ne_bytes(buf[i * PAGE + PAGE - 8..(i + 1) * PAGE].try_into().unwrap_or([0; 8]));
            check(a == pg as u64 ^ 0x5a5a && b == !(pg as u64), || format!("page {pg} wrong"))?;
        }
    }
    let m = map_file(&f, len, true)?;
    for pg in (0..len / PAGE).step_by(97) {
        check(m.load(pg * PAGE) == pg as u64 ^ 0x5a5a, || format!("page {pg} wrong through a new mapping"))?;
    }
    Ok(())
}

/// The randomized exerciser (after fsx): read, write, mapped read, mapped write, truncate,
/// fallocate, punch hole, fsync and msync on one file, every byte checked against a model
/// after each operation; with `--daemon`, remounts (clean, then after SIGKILL) every
/// `--remount-every` operations.
/// Checks the file against the model: its size, and every byte through the mapping when there
/// is one of the right size, else through read(2).
fn verify(f: &File, map: Option<&Mapping>, model: &[u8], at: impl Fn() -> String) -> Outcome {
    let size = io(f.metadata(), "fstat")?.len();
    check(size == model.len() as u64, || format!("{}: size {size} != model {}", at(), model.len()))?;
    match map.filter(|m| m.len() == model.len()) {
        Some(m) => check(m.equals(0, model), || format!("{}: mapped view differs", at())),
        None => {
            let mut b = vec![0u8; model.len()];
            io(f.read_exact_at(&mut b, 0), "verify read")?;
            check(b == model, || format!("{}: file differs", at()))
        }
    }
}

/// Makes everything durable (mapped stores and cached writes live in the kernel until written
/// back), restarts the daemon (after SIGKILL when `crash`, else cleanly), and checks the file
/// came back as the model says. Returns the file opened anew. The caller drops its mapping.
fn remount(d: &Daemon, mnt: &Path, p: &Path, f: File, crash: bool, model: &[u8]) -> Result<File, String> {
    io(f.sync_all(), "fsync before remount")?;
    drop(f);
    d.restart(mnt, crash)?;
    let f = open_rw(p, false)?;
    verify(&f, None, model, || "after remount".into())?;
    Ok(f)
}

// One arm per operation of the exerciser: long, but a table read top to bottom.
fn fsx(o: &Opts, w: &Path) -> Outcome {
    const MAX: u64 = 256 * 1024;
    let seed = if o.seed == 0 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    } else {
        o.seed
    };
    println!("fsx seed {seed} ({} operations)", o.ops);
    let mut rng = Rng::new(seed);
    let p = w.join("fsx");
    let mut f = open_rw(&p, true)?;
    io(f.set_len(0), "truncate")?;
    let mut model: Vec<u8> = Vec::new();
    let mut map: Option<Mapping> = None;
    let mut crash_next = false;
    for n in 0..o.ops {
        let op = rng.below(100);
        let size = model.len() as u64;
        let what: String;
        match op {
            0..=19 => {
                let off = rng.below(MAX);
                let len = 1 + rng.below(MAX / 8).min(MAX - off);
                let mut d = vec![0u8; len as usize];
                rng.fill(&mut d);
                io(f.write_all_at(&d, off), "write")?;
                if model.len() < (off + len) as usize {
                    model.resize((off + len) as usize, 0);
                }
                model[off as usize..(off + len) as usize].copy_from_slice(&d);
                what = format!("write {off}+{len}");
            }
            20..=34 if size > 0 => {
                let off = rng.below(size);
                let len = 1 + rng.below(size - off);
                let mut b = vec![0u8; len as usize];
                io(f.read_exact_at(&mut b, off), "read")?;
                check(b == model[off as usize..(off + len) as usize], || {
                    format!("op {n}: read {off}+{len} differs (seed {seed})")
                })?;
                what = format!("read {off}+{len}");
            }
            35..=54 if size > 0 => {
                // Mapped write inside the current size (a mapping cannot grow a file).
                if map.as_ref().is_none_or(|m| m.len() != model.len()) {
                    map = Some(map_file(&f, model.len(), true)?);
                }
                let m = map.as_ref().ok_or("map")?;
                let off = rng.below(size);
                let len = 1 + rng.below((size - off).min(MAX / 8));
                let mut d = vec![0u8; len as usize];
                rng.fill(&mut d);
                m.copy_in(off as usize, &d);
                model[off as usize..(off + len) as usize].copy_from_slice(&d);
                what = format!("mapwrite {off}+{len}");
            }
            55..=64 => {
                let len = rng.below(MAX);
                map = None;
                io(f.set_len(len), "truncate")?;
                model.resize(len as usize, 0);
                what = format!("truncate {len}");
            }
            65..=71 => {
                let off = rng.below(MAX);
                let len = 1 + rng.below(MAX / 4);
                let keep = rng.below(2) == 0;
                let mode = if keep { libc::FALLOC_FL_KEEP_SIZE } else { 0 };
                map = None;
                // SAFETY: a plain syscall on our descriptor.
                let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
                if r != 0 {
                    let e = std::io::Error::last_os_error();
                    check(e.raw_os_error() == Some(libc::EOPNOTSUPP), || format!("fallocate: {e}"))?;
                } else if !keep && model.len() < (off + len) as usize {
                    model.resize((off + len) as usize, 0);
                }
                what = format!("fallocate{} {off}+{len}", if keep { " keep" } else { "" });
            }
            72..=79 if size > 0 => {
                let off = rng.below(size);
                let len = 1 + rng.below(size - off);
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                // SAFETY: a plain syscall on our descriptor.
                let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
                if r == 0 {
                    model[off as usize..(off + len) as usize].fill(0);
                } else {
                    let e = std::io::Error::last_os_error();
                    check(e.raw_os_error() == Some(libc::EOPNOTSUPP), || format!("punch: {e}"))?;
                }
                what = format!("punch {off}+{len}");
            }
            80..=84 => {
                io(f.sync_all(), "fsync")?;
                what = "fsync".into();
            }
            85..=89 if map.is_some() => {
                msync(map.as_ref().ok_or("map")?)?;
                what = "msync".into();
            }
            _ if size > 0 => {
                // Mapped read of the whole file.
                if map.as_ref().is_none_or(|m| m.len() != model.len()) {
                    map = Some(map_file(&f, model.len(), true)?);
                }
                what = "mapread".into();
            }
            _ => continue,
        }
        verify(&f, map.as_ref(), &model, || format!("op {n} ({what}), seed {seed}"))?;
        if let (Some(d), true) = (&o.daemon, o.remount_every > 0 && n > 0 && n % o.remount_every == 0) {
            if let Some(m) = map.take() {
                msync(&m)?;
            }
            f = remount(d, &o.dir, &p, f, crash_next, &model).map_err(|e| format!("op {n}: {e} (seed {seed})"))?;
            crash_next = !crash_next;
        }
    }
    Ok(())
}

/// fsx's classic mix, timed (a benchmark row of scripts/bench.sh and the experiment matrix,
/// and one more coherence check): read, write, mapped read, mapped write + msync, truncate,
/// equally likely, on one file of up to 256 KiB with operations up to 64 KiB; every read and
/// mapped read is checked against the model (not the whole file after every operation, as
/// `fsx` does, which would time the checking). Each mapped operation maps and unmaps the
/// file, as fsx does. Prints the elapsed time.
fn fsx_timed(o: &Opts, w: &Path) -> Outcome {
    const MAX: u64 = 256 * 1024;
    const OPLEN: u64 = 64 * 1024;
    let seed = if o.seed == 0 { 1 } else { o.seed };
    let mut rng = Rng::new(seed);
    let p = w.join("fsx-timed");
    let f = open_rw(&p, true)?;
    io(f.set_len(0), "truncate")?;
    let mut model: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; OPLEN as usize];
    let started = Instant::now();
    for n in 0..o.ops {
        let size = model.len() as u64;
        let fail = |what: &str, off: u64, len: u64| format!("op {n}: {what} {off}+{len} differs (seed {seed})");
        match rng.below(5) {
            0 if size > 0 => {
                let off = rng.below(size);
                let len = 1 + rng.below(OPLEN.min(size - off));
                let b = &mut buf[..len as usize];
                io(f.read_exact_at(b, off), "read")?;
                check(*b == model[off as usize..(off + len) as usize], || fail("read", off, len))?;
            }
            1 => {
                let off = rng.below(MAX);
                let len = 1 + rng.below(OPLEN.min(MAX - off));
                let d = &mut buf[..len as usize];
                rng.fill(d);
                io(f.write_all_at(d, off), "write")?;
                let end = (off + len) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(d);
            }
            2 if size > 0 => {
                let off = rng.below(size);
                let len = 1 + rng.below(OPLEN.min(size - off));
                let m = map_file(&f, size as usize, true)?;
                check(m.equals(off as usize, &model[off as usize..(off + len) as usize]), || {
                    fail("mapread", off, len)
                })?;
            }
            3 if size > 0 => {
                let off = rng.below(size);
                let len = 1 + rng.below(OPLEN.min(size - off));
                let d = &mut buf[..len as usize];
                rng.fill(d);
                let m = map_file(&f, size as usize, true)?;
                m.copy_in(off as usize, d);
                msync(&m)?;
                model[off as usize..(off + len) as usize].copy_from_slice(d);
            }
            4 => {
                let len = rng.below(MAX);
                io(f.set_len(len), "truncate")?;
                model.resize(len as usize, 0);
            }
            _ => continue,
        }
    }
    let took = started.elapsed().as_secs_f64();
    verify(&f, None, &model, || format!("after {} operations (seed {seed})", o.ops))?;
    println!("fsx-timed: {} operations in {took:.3} s (seed {seed})", o.ops);
    Ok(())
}
