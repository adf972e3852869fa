//! Nothing that returned is lost across `kill -9`: concurrent clients (writes, truncates,
//! renames, exchanges, hard links, unlinks, punched holes, xattrs, stores through a shared
//! mapping + msync, file and directory fsyncs, mkdir/rmdir) while the daemon is killed at
//! random moments. After every kill, `mmapfs fsck` must find the store clean, and the remount
//! must show every operation that returned — checked per client against the model of
//! `common/model.rs` (the one operation each client had in flight may or may not have
//! happened; a write in flight may have happened in part). Four clients for 30 rounds, the
//! direct backend, and one client with checkpoints all the time; `scripts/crash_torture.sh N`
//! runs N rounds.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::model::{Model, check, observe, run_op, shape};
use common::{Mounted, Rng};

/// Rounds of the four-client run (`MMAPFS_TORTURE_ROUNDS`, default 30).
fn rounds() -> usize {
    std::env::var("MMAPFS_TORTURE_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30)
}

#[test]
fn four_clients_survive_kill_9_and_fsck_finds_the_store_clean() {
    torture(rounds(), 4, &["--journal-limit", "256K"]);
}

/// The same with the direct backend (O_DIRECT into the daemon's pool, written through) and a
/// pool small enough to evict all the time.
#[test]
fn the_direct_backend_survives_kill_9_too() {
    torture((rounds() / 3).max(1), 4, &["--journal-limit", "256K", "--backend", "direct", "--pool-size", "4M"]);
}

/// The same with the vm backend (vmcache: one virtual region, evicted in batches).
#[test]
fn the_vm_backend_survives_kill_9_too() {
    torture((rounds() / 3).max(1), 4, &["--journal-limit", "256K", "--backend", "vm", "--pool-size", "4M"]);
}

/// One client and a journal limit so small that checkpoints (and kills in the middle of one)
/// happen all the time.
#[test]
fn kills_during_checkpoints_lose_nothing() {
    torture(rounds(), 1, &["--journal-limit", "64K"]);
}

fn torture(rounds: usize, clients: usize, extra: &[&str]) {
    let mut args = vec!["--segment-size", "4M"];
    args.extend_from_slice(extra);
    let mut m = Mounted::new(&args);
    let mut rng = common::seeded_rng();
    let mut models: Vec<Model> = vec![Model::default(); clients];
    for c in 0..clients {
        fs::create_dir_all(m.path(&format!("c{c}/e0"))).unwrap();
    }
    let mut total = 0;
    for round in 0..rounds {
        let killed = Arc::new(AtomicBool::new(false));
        let pid = m.pid();
        let delay = Duration::from_millis(20 + rng.below(400));
        let results = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|s| {
            for (c, model) in models.iter().enumerate() {
                let (root, killed, results) = (m.path(&format!("c{c}")), killed.clone(), results.clone());
                let mut model = model.clone();
                let mut rng = Rng::new(rng.next_u64());
                s.spawn(move || {
                    let mut done = 0;
                    let inflight = loop {
                        let op = model.random_op(&mut rng);
                        match run_op(&root, &op) {
                            Ok(()) => {
                                model.apply(&op);
                                done += 1;
                            }
                            Err(e) => {
                                assert!(
                                    killed.load(Ordering::SeqCst),
                                    "round {round} client {c}: {op:?} failed while the daemon lived: {e}"
                                );
                                break op;
                            }
                        }
                    };
                    results.lock().unwrap().push((c, model, inflight, done));
                });
            }
            std::thread::sleep(delay);
            killed.store(true, Ordering::SeqCst);
            // SAFETY: kill(2) of the daemon we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        });
        m.kill9();
        let (code, report) = common::fsck(&m.store);
        assert_eq!(code, 0, "round {round}: fsck after kill -9:\n{report}");
        m.start().unwrap_or_else(|e| panic!("round {round}: remount after kill -9 failed: {e}"));
        let mut results = Arc::try_unwrap(results).unwrap().into_inner().unwrap();
        results.sort_by_key(|r| r.0);
        let mut done = 0;
        for (c, model, inflight, n) in results {
            let seen = observe(&m.path(&format!("c{c}")));
            models[c] = check(c, &seen, &model, Some(&inflight));
            done += n;
        }
        total += done;
        eprintln!("round {round}: {done} operations by {clients} clients, then kill -9; fsck clean, all there");
    }
    m.stop();
    assert_eq!(common::fsck(&m.store).0, 0, "fsck after a clean unmount");
    m.start().unwrap();
    for (c, model) in models.iter().enumerate() {
        assert!(observe(&m.path(&format!("c{c}"))) == shape(model), "client {c} after a clean remount");
    }
    eprintln!("{rounds} rounds, {total} acknowledged operations, nothing lost");
}
