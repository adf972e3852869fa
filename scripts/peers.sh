#!/usr/bin/env bash
# Builds the C peer FUSE filesystem the benchmarks compare mmapfs with: libfuse's
# passthrough_hp example (a multi-threaded passthrough to a directory, libfuse's own
# performance reference), from Debian's fuse3 source package, into target/peers/.
# Prints the binary's path. Needs deb-src access to deb.debian.org (added if missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/target/peers
BIN=$OUT/passthrough_hp
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
mkdir -p "$OUT/src"
export DEBIAN_FRONTEND=noninteractive
need=()
command -v g++ >/dev/null || need+=(g++)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v dpkg-source >/dev/null || need+=(dpkg-dev)
pkg-config --exists fuse3 2>/dev/null || need+=(libfuse3-dev)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! ls "$OUT"/src/fuse3-*/example/passthrough_hp.cc >/dev/null 2>&1; then
    if ! grep -rqs "deb-src\|Types: deb-src" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$(. /etc/os-release && echo "$VERSION_CODENAME")" >/etc/apt/sources.list.d/mmapfs-src.sources
        apt-get update -qq
    fi
    (cd "$OUT/src" && apt-get source -qq fuse3 >/dev/null 2>&1)
fi
SRC=$(ls -d "$OUT"/src/fuse3-*/example | head -1)
# shellcheck disable=SC2046
g++ -std=c++17 -O2 -o "$BIN" "$SRC/passthrough_hp.cc" $(pkg-config fuse3 --cflags --libs) -lpthread
echo "$BIN"
