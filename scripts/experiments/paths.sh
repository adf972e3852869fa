#!/usr/bin/env bash
# The store's access paths without FUSE (issue 19): mmapfs-paths drives each backend (mmap,
# pread, direct, vm) from THREADS threads of one process, random 4 KiB reads (and WRITES
# percent writes) over data sets from 1/4x to 8x a memory limit, the process in a v1 memory
# cgroup of LIMIT (so the page cache of mmap and pread is bounded as the pool of direct and
# vm is: POOL, default half the limit). Prints one TSV line per run:
#   backend size_MiB iops p50_us p99_us minor_faults/op major_faults/op tlb_shootdowns/s evictions iops_per_second...
#
#   sudo scripts/experiments/paths.sh [DIR]      # LIMIT=1G THREADS=2 SECONDS=10 WRITES=0
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DIR=${1:-/var/tmp/mmapfs-paths}
LIMIT=${LIMIT:-1G}
POOL=${POOL:-}
THREADS=${THREADS:-2}
SECONDS_EACH=${SECONDS:-10}
WRITES=${WRITES:-0}
[ "$(id -u)" = 0 ] || { echo "paths.sh makes a memory cgroup: run it as root" >&2; exit 1; }
cargo build --release --quiet --features testing --bin mmapfs-paths --manifest-path "$ROOT/Cargo.toml"
BIN=$ROOT/target/release/mmapfs-paths
limit=$(numfmt --from=iec "$LIMIT")
pool=${POOL:-$((limit / 2))}
CG=/sys/fs/cgroup/memory/mmapfs-paths-$$
mkdir "$CG"
trap 'rmdir "$CG" 2>/dev/null || true' EXIT
echo "$limit" >"$CG/memory.limit_in_bytes"
mkdir -p "$DIR"
printf 'backend\tsize_MiB\tiops\tp50_us\tp99_us\tminor/op\tmajor/op\ttlb/s\tevictions\tiops_per_second\n'
for mult in 0.25 0.5 1 2 4 8; do
    size=$(awk -v l="$limit" -v m="$mult" 'BEGIN { printf "%d", l * m }')
    for backend in mmap pread direct vm; do
        sync; echo 3 >/proc/sys/vm/drop_caches
        json=$(sh -c 'echo $$ >"$1/tasks"; shift; exec "$@"' sh "$CG" "$BIN" "$DIR" --backend "$backend" \
            --size "$size" --threads "$THREADS" --seconds "$SECONDS_EACH" --write-percent "$WRITES" --pool-size "$pool")
        python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("\t".join(str(x) for x in [r["backend"], r["size"]>>20, round(r["iops"]), r["p50_us"], r["p99_us"], round(r["minor_faults_per_op"],3), round(r["major_faults_per_op"],3), round(r["tlb_shootdowns_per_s"]), r["evictions"] if r["evictions"] is not None else "-", ",".join(map(str, r["iops_per_second"]))]))' "$json"
    done
done
