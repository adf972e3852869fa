# Shell helpers shared by the scripts (sourced, not run): starting and stopping a daemon and
# waiting for its mount, written once.

# wait_mounted MNT [PID] [SECONDS=10]: waits until MNT is a mountpoint; fails early if the
# daemon PID exits, and after SECONDS.
wait_mounted() {
    local mnt=$1 pid=${2:-} secs=${3:-10} i
    for ((i = 0; i < secs * 100; i++)); do
        mountpoint -q "$mnt" && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 0.01
    done
    return 1
}

# unmount_quietly MNT…: lazily detaches each MNT that is still mounted.
unmount_quietly() {
    local m
    for m in "$@"; do
        mountpoint -q "$m" 2>/dev/null && umount -l "$m"
    done
    return 0
}

# bench_setup NAME: builds the release binary (BIN), makes a work directory WORK under
# /var/tmp, and on exit stops the daemon whose pid is in DAEMON, unmounts WORK/mmapfs and
# WORK/tmpfs, and removes WORK.
bench_setup() {
    cargo build --release --quiet --features testing --manifest-path "$ROOT/Cargo.toml"
    BIN=${MMAPFS_BIN:-$ROOT/target/release/mmapfs}
    WORK=$(mktemp -d "/var/tmp/mmapfs-$1.XXXXXX")
    DAEMON=
    trap bench_cleanup EXIT
}

bench_cleanup() {
    if [ -n "$DAEMON" ]; then kill -TERM "$DAEMON" 2>/dev/null || true; wait "$DAEMON" 2>/dev/null || true; fi
    unmount_quietly "$WORK/mmapfs" "$WORK/tmpfs"
    rm -rf "$WORK"
}
