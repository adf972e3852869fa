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
