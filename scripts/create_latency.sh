#!/usr/bin/env bash
# No pauses: the latency of every create while checkpoints are taken, next to a run without
# checkpoints.
#
#   sudo scripts/create_latency.sh        # FILES=2000000 DIRS=100 LIMIT=8M by default
#
# One process creates FILES empty files (open O_CREAT + close, timed one by one) spread over
# DIRS directories, twice, each on a fresh store: with `--journal-limit LIMIT` (a checkpoint
# every LIMIT of journal: many during the run) and with a limit too large to be reached (no
# checkpoint at all). Prints p50/p99/p99.9/max of each run and the checkpoints the first took.
set -euo pipefail
FILES=${FILES:-2000000}
DIRS=${DIRS:-100}
LIMIT=${LIMIT:-8M}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib.sh
. "$ROOT/scripts/lib.sh"
if [ "$(id -u)" != 0 ]; then
    echo "create_latency.sh drops page caches between runs: run it as root" >&2
    exit 1
fi
bench_setup create-latency
mkdir -p "$WORK/mmapfs"

run() { # run NAME JOURNAL_LIMIT
    rm -rf "$WORK/store"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    RUST_LOG=info "$BIN" mount --store "$WORK/store" --journal-limit "$2" "$WORK/mmapfs" >"$WORK/$1.log" 2>&1 &
    DAEMON=$!
    wait_mounted "$WORK/mmapfs" "$DAEMON" 10 || { cat "$WORK/$1.log"; exit 1; }
    python3 - "$WORK/mmapfs" "$FILES" "$DIRS" "$1" >>"$WORK/results.txt" <<'PY'
import os, sys, time
from array import array
mnt, files, dirs, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for d in range(dirs):
    os.mkdir(f"{mnt}/d{d}")
lat = array("q")
clock = time.perf_counter_ns
flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
start = clock()
for i in range(files):
    path = f"{mnt}/d{i % dirs}/f{i}"
    t = clock()
    os.close(os.open(path, flags, 0o644))
    lat.append(clock() - t)
    if i % 100000 == 0:
        print(f"\r{name}: {i:,} files", end="", file=sys.stderr)
took = (clock() - start) / 1e9
print("\r", end="", file=sys.stderr)
s = sorted(lat)
q = lambda p: s[min(len(s) - 1, int(p * len(s)))] / 1000
over = sum(1 for v in lat if v > 1_000_000)
print(f"{name}\t{files / took:.0f}\t{q(0.5):.1f}\t{q(0.99):.1f}\t{q(0.999):.1f}\t{q(0.9999):.1f}\t{s[-1] / 1000:.1f}\t{over}")
PY
    kill -TERM "$DAEMON"
    wait "$DAEMON" || true
    DAEMON=
    CKPTS=$(grep -c "checkpoint at seq" "$WORK/$1.log" || true)
    echo "$1 checkpoints: $CKPTS ($(grep -o 'checkpoint at seq.*' "$WORK/$1.log" | tail -1))" >>"$WORK/notes.txt"
}

: >"$WORK/results.txt"
: >"$WORK/notes.txt"
run "with checkpoints (--journal-limit $LIMIT)" "$LIMIT"
run "without checkpoints" 1T
echo "create latency, $FILES files in $DIRS directories, one process (µs)"
printf '%-42s %10s %8s %8s %8s %8s %10s %8s\n' run creates/s p50 p99 p99.9 p99.99 max '>1ms'
while IFS=$'\t' read -r name rate p50 p99 p999 p9999 max over; do
    printf '%-42s %10s %8s %8s %8s %8s %10s %8s\n' "$name" "$rate" "$p50" "$p99" "$p999" "$p9999" "$max" "$over"
done <"$WORK/results.txt"
cat "$WORK/notes.txt"
