#!/usr/bin/env bash
# The mmap coherence suite: every scenario of `mmapfs-coherence` against DIR (or, without DIR,
# against a fresh mmapfs in each mode it offers: default, --threads 1, -o writeback_cache,
# -o direct_io, the pread backend, and the direct and vm backends with a 32 MiB pool) and, as the
# reference, against tmpfs.
#
#   sudo scripts/coherence.sh            # mmapfs in every mode vs tmpfs
#   sudo scripts/coherence.sh /mnt/x     # any directory vs tmpfs
#
# Prints a table scenario × target (pass/FAIL/n-a and seconds) and exits 1 if a target fails a
# scenario that tmpfs passes. One failure is documented rather than counted: under
# writeback_cache the kernel holds written data until writeback, so write(2) without fsync is
# not safe from SIGKILL of the daemon (durability-write); it shows as "fail (documented)".
# Environment:
#   FSX_OPS     operations per exerciser run (100000)      FSX_SEED  fixed seed (20261127)
#   LARGE       size of the large-file scenario (256M)      MEMCG     daemon memory limit there (96M)
#   MMAPFS_BIN, COHERENCE_BIN   prebuilt binaries (else: cargo build --release --features testing)
#   RESULTS     also write the table to this file
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib.sh
. "$ROOT/scripts/lib.sh"
FSX_OPS=${FSX_OPS:-100000}
FSX_SEED=${FSX_SEED:-20261127}
LARGE=${LARGE:-256M}
MEMCG=${MEMCG:-96M}
DIR=${1:-}

if [ -z "${MMAPFS_BIN:-}" ] || [ -z "${COHERENCE_BIN:-}" ]; then
    cargo build --release --quiet --features testing --manifest-path "$ROOT/Cargo.toml" || exit 1
    MMAPFS_BIN=$ROOT/target/release/mmapfs
    COHERENCE_BIN=$ROOT/target/release/mmapfs-coherence
fi
to_bytes() { numfmt --from=iec "$1"; }
LARGE_BYTES=$(to_bytes "$LARGE")
RANDOM_SEED=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')

# The scenario names come from the binary (listed once, there); fsx runs twice, with a fixed
# and with a random seed.
mapfile -t LISTED < <("$COHERENCE_BIN" --list)
SCENARIOS=()
for s in "${LISTED[@]}"; do
    if [ "$s" = fsx ]; then SCENARIOS+=(fsx-fixed-seed fsx-random-seed); else SCENARIOS+=("$s"); fi
done

WORK=$(mktemp -d /var/tmp/mmapfs-coherence.XXXXXX)
CGROUP=/sys/fs/cgroup/memory/mmapfs-coherence-$$
declare -A CELL RC PEAK
TARGETS=()
cleanup() {
    for s in "$WORK"/store-*; do
        [ -f "$s/lock" ] && kill -TERM "$(cat "$s/lock" 2>/dev/null)" 2>/dev/null
    done
    sleep 0.5
    unmount_quietly "$WORK"/mnt-* "$WORK/tmpfs"
    [ -d "$CGROUP" ] && rmdir "$CGROUP" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

progress() { if [ -t 2 ]; then printf '\r%-78s' "$*" >&2; fi; }

# run_target NAME DIR [DAEMON-SPEC STORE]
run_target() {
    local name=$1 dir=$2 daemon=${3:-} store=${4:-}
    TARGETS+=("$name")
    for s in "${SCENARIOS[@]}"; do
        progress "$name: $s"
        local args=() scen=$s
        case $s in
            fsx-fixed-seed) scen=fsx; args=(--seed "$FSX_SEED" --ops "$FSX_OPS") ;;
            fsx-random-seed) scen=fsx; args=(--seed "$RANDOM_SEED" --ops "$FSX_OPS") ;;
            fsx-timed) args=(--ops $((FSX_OPS / 5))) ;;
            large-file) args=(--size "$LARGE_BYTES") ;;
            durability-*) args=(--seed "$RANDOM_SEED") ;;
        esac
        if [ -n "$daemon" ]; then
            args+=(--daemon "$daemon")
            case $s in fsx-fixed-seed | fsx-random-seed) args+=(--remount-every $((FSX_OPS / 4))) ;; esac
        fi
        # The large file runs with the daemon in a memory cgroup well below the file's size.
        if [ "$s" = large-file ] && [ -n "$store" ] && [ -d /sys/fs/cgroup/memory ]; then
            mkdir -p "$CGROUP" && echo "$MEMCG" >"$CGROUP/memory.limit_in_bytes" &&
                cat "$store/lock" >"$CGROUP/cgroup.procs" 2>/dev/null
        fi
        local t0 t1 rc
        t0=$(date +%s.%N)
        timeout 900 "$COHERENCE_BIN" "$scen" "$dir" "${args[@]}" >"$WORK/log-$name-$s" 2>&1
        rc=$?
        t1=$(date +%s.%N)
        if [ "$s" = large-file ] && [ -d "$CGROUP" ]; then
            PEAK[$name]=$(($(cat "$CGROUP/memory.max_usage_in_bytes" 2>/dev/null || echo 0) >> 20))
            cat "$CGROUP/cgroup.procs" 2>/dev/null | while read -r p; do echo "$p" >/sys/fs/cgroup/memory/cgroup.procs; done
            rmdir "$CGROUP" 2>/dev/null
        fi
        local secs
        secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
        case $rc in
            0) CELL[$name,$s]="pass ${secs}s" ;;
            2) CELL[$name,$s]="n/a" ;;
            *) CELL[$name,$s]="FAIL ${secs}s" ;;
        esac
        if [ "$rc" = 1 ] && [ "$s" = durability-write ] && [[ $name == *writeback_cache* ]]; then
            CELL[$name,$s]="fail (documented)"
            rc=3
        fi
        RC[$name,$s]=$rc
    done
}

# mount_mmapfs MODE ARGS… → starts a daemon on a fresh store, sets MNT and STORE
mount_mmapfs() {
    local mode=$1
    shift
    STORE=$WORK/store-$mode
    MNT=$WORK/mnt-$mode
    mkdir -p "$MNT"
    "$MMAPFS_BIN" mount --store "$STORE" "$MNT" --segment-size 16M --capacity 8G "$@" >"$STORE.log" 2>&1 &
    disown # scenarios kill and restart it; no job notices
    wait_mounted "$MNT" "" 10 && return 0
    echo "mmapfs ($mode) did not mount:" >&2
    cat "$STORE.log" >&2
    return 1
}

unmount_mmapfs() {
    local pid
    pid=$(cat "$STORE/lock" 2>/dev/null)
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 200); do mountpoint -q "$MNT" || break; sleep 0.05; done
    unmount_quietly "$MNT"
}

# The reference.
mkdir -p "$WORK/tmpfs"
if mount -t tmpfs -o size=2G tmpfs "$WORK/tmpfs" 2>/dev/null; then
    run_target tmpfs "$WORK/tmpfs"
else
    mkdir -p /dev/shm/mmapfs-coherence-$$ && run_target tmpfs /dev/shm/mmapfs-coherence-$$
    rm -rf /dev/shm/mmapfs-coherence-$$
fi

if [ -n "$DIR" ]; then
    run_target "$(basename "$DIR")" "$DIR"
else
    NPROC=$(nproc)
    for mode in "default threads=$NPROC:--threads,$NPROC" "threads=1:--threads,1" \
        "writeback_cache:-o,writeback_cache" "direct_io:-o,direct_io" "backend=pread:--backend,pread" \
        "backend=direct:--backend,direct,--pool-size,32M" "backend=vm:--backend,vm,--pool-size,32M"; do
        name=${mode%%:*}
        name=mmapfs\ ${name// /,}
        args=${mode#*:}
        IFS=, read -r -a argv <<<"$args"
        slug=${name//[^a-zA-Z0-9]/_}
        mount_mmapfs "$slug" "${argv[@]}" || exit 1
        run_target "$name" "$MNT" "$MMAPFS_BIN,$STORE,$args" "$STORE"
        unmount_mmapfs
    done
fi
progress ""
[ -t 2 ] && printf '\r' >&2

{
    printf '%-22s' "scenario"
    for t in "${TARGETS[@]}"; do printf '%-26s' "$t"; done
    printf '\n'
    for s in "${SCENARIOS[@]}"; do
        printf '%-22s' "$s"
        for t in "${TARGETS[@]}"; do printf '%-26s' "${CELL[$t,$s]}"; done
        printf '\n'
    done
    echo "fsx seeds: fixed $FSX_SEED, random $RANDOM_SEED; $FSX_OPS operations each; large file $LARGE, daemon memory limit $MEMCG"
    for t in "${TARGETS[@]}"; do
        [ -n "${PEAK[$t]:-}" ] && echo "daemon peak memory during large-file, $t: ${PEAK[$t]} MiB"
    done
} | tee "${RESULTS:-/dev/null}"

status=0
for s in "${SCENARIOS[@]}"; do
    for t in "${TARGETS[@]:1}"; do
        if [ "${RC[$t,$s]}" = 1 ]; then
            echo "--- $t / $s:" >&2
            tail -5 "$WORK/log-$t-$s" >&2
            [ "${RC[tmpfs,$s]}" = 0 ] && status=1
        fi
    done
done
exit $status
