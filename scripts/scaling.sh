#!/usr/bin/env bash
# Cost grows with the work, not with the store: per-operation time of lookup (stat after the
# kernel's caches were dropped, so each goes to the filesystem), create and unlink in one
# directory of 10, 10^4 and 10^6 entries, of reading the 10^6-entry directory, and of an fsync
# of one page with 10^6 files in the store — mmapfs next to tmpfs, side by side in one run.
#
#   sudo scripts/scaling.sh            # SIZES="10 10000 1000000" OPS=2000 by default
set -euo pipefail
SIZES=${SIZES:-10 10000 1000000}
OPS=${OPS:-2000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib.sh
. "$ROOT/scripts/lib.sh"
bench_setup scaling
mkdir -p "$WORK/mmapfs" "$WORK/tmpfs"
mount -t tmpfs -o size=4G,nr_inodes=0 tmpfs "$WORK/tmpfs"
"$BIN" mount --store "$WORK/store" "$WORK/mmapfs" >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
wait_mounted "$WORK/mmapfs" "$DAEMON" 10 || { cat "$WORK/daemon.log"; exit 1; }

python3 - "$WORK" "$OPS" $SIZES <<'PY'
import os, sys, time, random

work, ops, sizes = sys.argv[1], int(sys.argv[2]), [int(s) for s in sys.argv[3:]]
targets = ["mmapfs", "tmpfs"]

def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")

def timed(f, n):
    t = time.perf_counter()
    f()
    return (time.perf_counter() - t) / n * 1e6  # µs per operation

def fill(d, n):
    os.makedirs(d, exist_ok=True)
    for i in range(n):
        os.close(os.open(f"{d}/f{i:07d}", os.O_CREAT | os.O_WRONLY, 0o644))

rows = {}
for t in targets:
    root = f"{work}/{t}"
    for n in sizes:
        d = f"{root}/dir{n}"
        print(f"{t}: filling a directory of {n:,} entries…", file=sys.stderr, flush=True)
        fill(d, n)
        # Each lookup must reach the filesystem: distinct names, the kernel's dentry cache
        # dropped before each round (a small directory takes several rounds).
        per_round = min(n, ops)
        spent = 0.0
        for _ in range(max(1, ops // per_round)):
            names = [f"{d}/f{i:07d}" for i in random.sample(range(n), per_round)]
            drop_caches()
            t0 = time.perf_counter()
            for p in names:
                os.stat(p)
            spent += time.perf_counter() - t0
        rows[(f"lookup in {n:,}", t)] = spent / (max(1, ops // per_round) * per_round) * 1e6
        new = [f"{d}/new{i}" for i in range(ops)]
        rows[(f"create in {n:,}", t)] = timed(lambda: [os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)) for p in new], ops)
        rows[(f"unlink in {n:,}", t)] = timed(lambda: [os.unlink(p) for p in new], ops)
    big = max(sizes)
    drop_caches()
    d = f"{root}/dir{big}"
    count = 0
    def listing():
        global count
        with os.scandir(d) as it:
            count = sum(1 for _ in it)
    rows[(f"readdir of {big:,} (per entry)", t)] = timed(listing, big)
    assert count == big, (count, big)
    fd = os.open(f"{root}/one-page", os.O_CREAT | os.O_RDWR, 0o644)
    page = b"x" * 4096
    def fsyncs():
        for i in range(200):
            os.pwrite(fd, page, (i % 16) * 4096)
            os.fsync(fd)
    rows[(f"write + fsync of one page, {big:,} files in the store", t)] = timed(fsyncs, 200)
    os.close(fd)

labels = list(dict.fromkeys(k[0] for k in rows))
print(f"{'µs per operation':52}" + "".join(f"{t:>12}" for t in targets))
for l in labels:
    print(f"{l:52}" + "".join(f"{rows[(l, t)]:12.1f}" for t in targets))
for op in ("lookup", "create", "unlink"):
    v = [rows[(f"{op} in {n:,}", "mmapfs")] for n in sizes]
    print(f"mmapfs {op}: largest/smallest directory = {max(v) / min(v):.2f}x")
PY
