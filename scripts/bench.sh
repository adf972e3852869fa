#!/usr/bin/env bash
# Side-by-side benchmark of mmapfs against tmpfs, ext4 and libfuse's passthrough_hp (the C
# reference FUSE filesystem, built by scripts/peers.sh) on this machine, using fio.
#
#   sudo scripts/bench.sh            # SIZE=1G FILES=10000 RUNS=3 RUNTIME=10 by default
#
# Rows: sequential 1 MiB write of SIZE with a final fsync, sequential 1 MiB read (cold: page
# caches dropped, mmapfs remounted first so its daemon maps nothing, and the row below it says
# how much of the file was still cached when the read began; warm: cached), random 4 KiB
# reads (warm: psync, then loads through a mapping, fio's mmap engine), random 4 KiB writes into
# the first 64 MiB with an fsync after each, random 4 KiB stores for RUNTIME seconds through a shared mapping of
# MAP_SIZE, pre-read, with one msync at the end (fio's mmap engine), fsx's mixed workload (read,
# write, mapped read, mapped write + msync, truncate: `mmapfs-coherence fsx-timed`, 100,000
# operations, seconds), and create / stat / unlink of FILES files (fio's filecreate/filestat/
# filedelete engines, 10 jobs of FILES/10 files each). Each cell is the median of RUNS runs;
# the last columns are mmapfs's ratios to the others (for seconds, lower is better). The
# mmapfs store and passthrough_hp's directory live on the ext4 directory's filesystem.
set -euo pipefail

SIZE=${SIZE:-1G}
MAP_SIZE=${MAP_SIZE:-512M}
# passthrough_hp holds a descriptor per file it knows: FILES stays below the descriptor limit.
FILES=${FILES:-10000}
RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib.sh
. "$ROOT/scripts/lib.sh"

if [ "$(id -u)" != 0 ]; then
    echo "bench.sh mounts tmpfs and drops page caches: run it as root" >&2
    exit 1
fi
if ! command -v fio >/dev/null; then
    echo "installing fio from Debian's packages…" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
fi
bench_setup bench

PEER=$("$ROOT/scripts/peers.sh")
COHERENCE=$ROOT/target/release/mmapfs-coherence
mkdir -p "$WORK/tmpfs" "$WORK/ext4" "$WORK/mmapfs" "$WORK/passthrough_hp" "$WORK/ext4/.pt"
mount -t tmpfs -o size=8G tmpfs "$WORK/tmpfs"
# passthrough_hp keeps a descriptor per inode it knows: as many as the hard limit allows.
(ulimit -n "$(ulimit -Hn)" && exec "$PEER" --foreground "$WORK/ext4/.pt" "$WORK/passthrough_hp") >"$WORK/peer.log" 2>&1 &
PEER_PID=$!
wait_mounted "$WORK/passthrough_hp" "$PEER_PID" 10 || { cat "$WORK/peer.log"; exit 1; }
trap 'unmount_quietly "$WORK/passthrough_hp"; bench_cleanup' EXIT
EXT_FS=$(stat -f -c %T "$WORK/ext4")
DEVICE=$(findmnt -n -o SOURCE -T "$WORK/ext4")
mount_mmapfs() {
    "$BIN" mount --store "$WORK/store" "$WORK/mmapfs" >>"$WORK/daemon.log" 2>&1 &
    DAEMON=$!
    wait_mounted "$WORK/mmapfs" "$DAEMON" 10 || { cat "$WORK/daemon.log"; exit 1; }
}
remount_mmapfs() {
    umount "$WORK/mmapfs"
    wait "$DAEMON"
    mount_mmapfs
}
mount_mmapfs

TARGETS=(tmpfs ext4 mmapfs passthrough_hp)
RESULTS=$WORK/results.tsv
: >"$RESULTS"

# fio_json DIR ARGS… → prints the job's JSON
fio_json() {
    local dir=$1
    shift
    # A failed job prints no JSON: metric then records nan and the run goes on.
    fio --directory="$dir" --output-format=json "$@" 2>/dev/null || true
}
metric() { # metric read|write bw|iops  (bw in MiB/s; nan if fio failed: the run goes on)
    python3 -c '
import json, sys
try:
    j = json.load(sys.stdin)["jobs"][0][sys.argv[1]]
    print(round(j["bw"] / 1024, 1) if sys.argv[2] == "bw" else round(j["iops"]))
except (ValueError, KeyError, IndexError):
    print("nan")' "$1" "$2"
}
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# cached_mib FILE…: MiB of the files in the page cache (fincore)
cached_mib() { fincore -b -n -o RES "$@" 2>/dev/null | awk '{s += $1} END {printf "%.1f", s / 1048576}'; }
# where_cached TARGET: the files whose page cache a cold read of TARGET's file must not find
where_cached() {
    case $1 in
        tmpfs) echo "$WORK/tmpfs/seq" ;;
        ext4) echo "$WORK/ext4/seq" ;;
        passthrough_hp) echo "$WORK/ext4/.pt/seq" "$WORK/passthrough_hp/seq" ;;
        mmapfs) echo "$WORK/mmapfs/seq" "$WORK"/store/segments/* ;;
    esac
}
progress() { printf '\r%-70s' "$*" >&2; }

# Warm-up: on a VM, the first touch of guest memory is slow; touch it once before measuring.
progress "warming up memory…"
fio_json "$WORK/tmpfs" --name=warm --rw=write --bs=1M --size=4G --filename=warm >/dev/null
rm -f "$WORK/tmpfs/warm"

for run in $(seq "$RUNS"); do
    for t in "${TARGETS[@]}"; do
        d=$WORK/$t
        progress "run $run/$RUNS: $t: sequential write"
        v=$(fio_json "$d" --name=seqw --rw=write --bs=1M --size="$SIZE" --end_fsync=1 --filename=seq | metric write bw)
        record "seq write 1M + fsync (MiB/s)" "$t" "$v"
        progress "run $run/$RUNS: $t: sequential read, cold"
        [ "$t" = mmapfs ] && remount_mmapfs
        drop_caches
        # shellcheck disable=SC2046
        cached=$(cached_mib $(where_cached "$t"))
        v=$(fio_json "$d" --name=seqr --rw=read --bs=1M --size="$SIZE" --filename=seq | metric read bw)
        record "seq read 1M cold (MiB/s)" "$t" "$v"
        record "  cached when it began (MiB)" "$t" "$cached"
        progress "run $run/$RUNS: $t: sequential read, warm"
        v=$(fio_json "$d" --name=seqr --rw=read --bs=1M --size="$SIZE" --invalidate=0 --filename=seq | metric read bw)
        record "seq read 1M warm (MiB/s)" "$t" "$v"
        progress "run $run/$RUNS: $t: random 4 KiB reads"
        v=$(fio_json "$d" --name=randr --rw=randread --bs=4k --size="$SIZE" --invalidate=0 --time_based --runtime="$RUNTIME" --filename=seq | metric read iops)
        record "rand read 4k warm (IOPS)" "$t" "$v"
        progress "run $run/$RUNS: $t: random 4 KiB loads through a mapping"
        v=$(fio_json "$d" --name=mapr --rw=randread --bs=4k --size="$SIZE" --ioengine=mmap --invalidate=0 --time_based --runtime="$RUNTIME" --filename=seq | metric read iops)
        record "rand read 4k mmap warm (IOPS)" "$t" "$v"
        progress "run $run/$RUNS: $t: random 4 KiB writes, fsync after each"
        v=$(fio_json "$d" --name=randw --rw=randwrite --bs=4k --size=64M --fsync=1 --time_based --runtime="$RUNTIME" --filename=seq | metric write iops)
        record "rand write 4k + fsync each (IOPS)" "$t" "$v"
        rm -f "$d/seq"
        progress "run $run/$RUNS: $t: random 4 KiB stores through a mapping"
        v=$(fio_json "$d" --name=mapw --rw=randwrite --bs=4k --size="$MAP_SIZE" --ioengine=mmap --invalidate=0 \
            --pre_read=1 --time_based --runtime="$RUNTIME" --end_fsync=1 --filename=map | metric write iops)
        record "mmap rand 4k stores + msync (IOPS)" "$t" "$v"
        rm -f "$d/map"
        progress "run $run/$RUNS: $t: fsx mix"
        v=$("$COHERENCE" fsx-timed "$d" --ops 100000 --seed "$run" | sed -n 's/.* in \([0-9.]*\) s.*/\1/p')
        record "fsx mix 100k ops (s, lower better)" "$t" "${v:-nan}"
        rm -f "$d/fsx-timed"
        mkdir -p "$d/meta"
        for op in filecreate filestat filedelete; do
            progress "run $run/$RUNS: $t: $op"
            v=$(fio_json "$d/meta" --name=meta --ioengine=$op --numjobs=10 --group_reporting --nrfiles=$((FILES / 10)) \
                --filesize=4k --bs=4k --openfiles=1 --fallocate=none --create_on_open=1 | metric read iops)
            record "${op#file} $FILES files (/s)" "$t" "$v"
        done
        rm -rf "$d/meta"
    done
done
cp "$RESULTS" /tmp/mmapfs-bench-results.tsv  # kept if anything below fails
progress "the device: sequential 1 MiB reads with O_DIRECT"
RAW=$({ fio --output-format=json --name=raw --filename="$DEVICE" --readonly --direct=1 --rw=read --bs=1M \
    --size="$SIZE" --offset=1G 2>/dev/null || true; } | metric read bw)
RAW_HOW="the raw device $DEVICE"
if ! awk -v r="$RAW" 'BEGIN { exit !(r + 0 > 0) }'; then
    # Some VMs do not let even root open the disk: read a file of its ext4 with O_DIRECT.
    fio_json "$WORK/ext4" --name=w --rw=write --bs=1M --size="$SIZE" --end_fsync=1 --filename=raw >/dev/null
    RAW=$(fio_json "$WORK/ext4" --name=raw --rw=read --bs=1M --size="$SIZE" --direct=1 --filename=raw | metric read bw)
    RAW_HOW="$DEVICE (cannot be opened here; a file of its ext4 read with O_DIRECT)"
    rm -f "$WORK/ext4/raw"
fi
progress ""
printf '\r' >&2

python3 - "$RESULTS" "$EXT_FS" "$SIZE" "$RUNS" "$RAW_HOW" "$RAW" "$MAP_SIZE" <<'PY'
import sys, statistics, collections, platform
rows = collections.OrderedDict()
for line in open(sys.argv[1]):
    name, target, value = line.rstrip("\n").split("\t")
    rows.setdefault(name, collections.defaultdict(list))[target].append(float(value))
print(f"mmapfs benchmark — {platform.node()}, kernel {platform.release()}, file {sys.argv[3]}, "
      f"median of {sys.argv[4]} runs; 'ext4' is a directory on {sys.argv[2]}, the mmapfs store and "
      f"passthrough_hp's directory are there too; mapped stores into {sys.argv[7]}")
print(f"the device, {sys.argv[5]}: sequential 1 MiB reads with O_DIRECT at {sys.argv[6]} MiB/s")
targets = ("tmpfs", "ext4", "passthrough_hp", "mmapfs")
print(f"{'':36}" + "".join(f"{t:>15}" for t in targets) + "".join(f"{'÷' + t:>10}" for t in ("ext4", "pt_hp")))
for name, by in rows.items():
    # A failed measurement (nan) is left out; a cell with none left is 0.
    med = {t: statistics.median([x for x in v if x == x] or [0.0]) for t, v in by.items()}
    cells = "".join(f"{med.get(t, 0):>15,.2f}" if med.get(t, 0) < 100 else f"{med.get(t, 0):>15,.0f}" for t in targets)
    r = lambda t: f"{med['mmapfs'] / med[t]:>10.2f}" if med.get(t) else f"{'-':>10}"
    print(f"{name:36}{cells}{r('ext4')}{r('passthrough_hp')}")
print("\nspread over the runs (min–max):")
for name, by in rows.items():
    def span(v):
        v = [x for x in v if x == x]
        return f"{min(v):,.0f}–{max(v):,.0f}" if v and max(v) >= 100 else (f"{min(v):.2f}–{max(v):.2f}" if v else "-")
    print(f"{name:36}" + "".join(f" {span(by.get(t, [])):>22}" for t in targets))
PY
