#!/usr/bin/env bash
# Mount time and daemon heap after one million metadata operations.
#
#   sudo scripts/mount_time.sh        # OPS=1000000 WORKERS=4 by default
#
# Creates OPS files (each create is one journaled metadata operation) through a real mount with
# WORKERS parallel processes, then measures how long a mount takes (a) after `kill -9` of the
# daemon, so the journal since the last checkpoint must be replayed, and (b) after a clean
# unmount (checkpoint only). Reports the daemon's anonymous memory (RssAnon: its heap; file
# data lives in the segment mappings, which are file-backed) once mounted.
set -euo pipefail
OPS=${OPS:-1000000}
WORKERS=${WORKERS:-4}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib.sh
. "$ROOT/scripts/lib.sh"
cargo build --release --quiet --features testing --manifest-path "$ROOT/Cargo.toml"
BIN=$ROOT/target/release/mmapfs
WORK=$(mktemp -d /var/tmp/mmapfs-mount-time.XXXXXX)
STORE=$WORK/store
MNT=$WORK/mnt
DAEMON=
cleanup() {
    if [ -n "$DAEMON" ]; then kill -TERM "$DAEMON" 2>/dev/null || true; wait "$DAEMON" 2>/dev/null || true; fi
    unmount_quietly "$MNT"
    rm -rf "$WORK"
}
trap cleanup EXIT

start() { # sets DAEMON, and T to the seconds until the mount is live
    local t0 t1
    t0=$(date +%s.%N)
    "$BIN" mount --store "$STORE" "$MNT" >>"$WORK/daemon.log" 2>&1 &
    DAEMON=$!
    wait_mounted "$MNT" "$DAEMON" 600 || { cat "$WORK/daemon.log"; exit 1; }
    t1=$(date +%s.%N)
    T=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
}
heap() { awk '/RssAnon/ {printf "%.0f MiB", $2/1024}' "/proc/$DAEMON/status"; }

start
echo "creating $OPS files with $WORKERS processes…" >&2
python3 - "$MNT" "$OPS" "$WORKERS" <<'PY'
import os, sys, time
from multiprocessing import Process, Value
mnt, ops, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
done = Value('q', 0)
def work(w):
    d = os.path.join(mnt, f"w{w}")
    os.mkdir(d)
    n = ops // workers
    for i in range(n):
        os.close(os.open(f"{d}/file-{i:07d}", os.O_CREAT | os.O_WRONLY, 0o644))
        if i % 1000 == 999:
            with done.get_lock():
                done.value += 1000
ps = [Process(target=work, args=(w,)) for w in range(workers)]
t = time.time()
for p in ps: p.start()
while any(p.is_alive() for p in ps):
    time.sleep(1)
    el = time.time() - t
    print(f"\r{done.value:>9,} / {ops:,} files, {done.value / el:,.0f}/s", end="", file=sys.stderr)
for p in ps: p.join()
print(f"\r{ops:,} files in {time.time() - t:.1f} s ({ops / (time.time() - t):,.0f}/s)        ", file=sys.stderr)
PY
files=$(find "$MNT" -type f | wc -l)
journal=$(du -sh "$STORE/meta" | cut -f1)
kill -9 "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; umount -l "$MNT"
start
t_crash=$T
heap_crash=$(heap)
kill -TERM "$DAEMON"; wait "$DAEMON" || true
start
t_clean=$T
heap_clean=$(heap)
echo "files in the store:                  $files (metadata on disk before the crash: $journal)"
echo "mount after kill -9 (replay):        ${t_crash} s, daemon heap ${heap_crash}"
echo "mount after clean unmount:           ${t_clean} s, daemon heap ${heap_clean}"
grep -E "opened store" "$WORK/daemon.log" | tail -2 | sed 's/^.*INFO  mmapfs::store\] /log: /'
