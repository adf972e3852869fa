#!/usr/bin/env bash
# Runs one storage experiment and writes results/<experiment>/{results.csv,results.json,*.png}.
#
#   sudo scripts/experiments/run.sh matrix [--quick]      # every workload, every target, peers
#   sudo scripts/experiments/run.sh fsync-cost [--quick]
#   sudo scripts/experiments/run.sh scaling [--quick]
#   sudo scripts/experiments/run.sh larger-than-memory [--quick] [--limit 512M] [--ratios 0.25,1,8]
#        [--backends mmap,pread,direct] [--devices disk,ram] [--jobs 2] [--runtime 30]
#        # cgroup v1 memory controller; "ram" is a zram device (LZ4) with ext4, created and removed
#
# Installs what it needs: fio and python3-venv (Debian), matplotlib (PyPI, into
# target/experiments-venv); the harness installs libfuse3-dev for the passthrough_ll peer.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
if [ "$(id -u)" != 0 ]; then
    echo "experiments mount filesystems and drop caches: run as root" >&2
    exit 1
fi
# fio, and python3 with venv (Debian splits ensurepip into python3-venv).
need=()
command -v fio >/dev/null || need+=(fio)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3 python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
VENV=$ROOT/target/experiments-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q matplotlib
fi
cargo build --release --quiet --features testing --manifest-path "$ROOT/Cargo.toml"
exec "$VENV/bin/python" "$ROOT/scripts/experiments/harness.py" "$@"
