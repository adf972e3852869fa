#!/usr/bin/env bash
# Crash torture, N rounds (default 300): four concurrent clients (N/3 with the direct backend,
# N with one client and checkpoints all the time), kill -9 of the daemon at
# random moments, fsck and a model check after every round (tests/crash_torture.rs).
# Usage: sudo scripts/crash_torture.sh [N]     (MMAPFS_SEED=… reproduces a run)
set -euo pipefail
cd "$(dirname "$0")/.."
export MMAPFS_TORTURE_ROUNDS="${1:-300}"
exec cargo test --release --test crash_torture -- --nocapture
