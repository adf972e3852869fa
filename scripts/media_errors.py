#!/usr/bin/env python3
"""What a media error does, per target: ext4 itself and mmapfs with each backend, all on the
same faulty device (ext4, errors=continue, on a loop device over mmapfs-faultdev, which fails
chosen device ranges). Prints a markdown table: what the client sees, what later requests
see, whether the mount lives, what the remount keeps once the device is healed.

Usage: sudo scripts/media_errors.py [TARGET ...]   (targets: ext4 mmap pread direct)
"""

import json
import mmap
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
MiB = 1 << 20


def sh(*args, check=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"{args}: {r.stderr}")
    return r.stdout.strip()


def wait(cond, secs=20):
    deadline = time.time() + secs
    while not cond():
        if time.time() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.02)


def pattern(seed):
    return bytes((i * 7 + seed) % 251 + 1 for i in range(MiB))


def errno_of(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return os.strerror(e.errno).split()[0] if e.errno != 5 else "EIO"


def device_page(path, at):
    """The device offset of byte `at` of `path` (filefrag's extent list, 4 KiB blocks)."""
    out = sh("filefrag", "-v", "-b4096", path)
    for line in out.splitlines():
        parts = line.replace(":", " ").replace("..", " ").split()
        if len(parts) >= 6 and parts[0].isdigit():
            lstart, lend, pstart = int(parts[1]), int(parts[2]), int(parts[3])
            if lstart * 4096 <= at < (lend + 1) * 4096:
                return (pstart + at // 4096 - lstart) * 4096
    raise SystemExit(f"{at} not mapped in {path}: {out}")


def mapped_load(path, at):
    pid = os.fork()
    if pid == 0:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        m = mmap.mmap(fd, at + 1, mmap.MAP_SHARED, mmap.PROT_READ)
        m[at]
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return "SIGBUS" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGBUS else "ok"


class Disk:
    def __init__(self, work):
        self.work = work
        backing = os.path.join(work, "backing")
        with open(backing, "wb") as f:
            f.truncate(256 * MiB)
        self.dev = os.path.join(work, "dev")
        self.ext4 = os.path.join(work, "ext4")
        os.makedirs(self.dev)
        os.makedirs(self.ext4)
        self.proc = subprocess.Popen([os.path.join(BIN, "mmapfs-faultdev"), backing, self.dev],
                                     stderr=subprocess.DEVNULL)
        wait(lambda: os.path.ismount(self.dev))
        self.loop = sh("losetup", "--find", "--show", os.path.join(self.dev, "disk"))
        sh("mkfs.ext4", "-q", "-F", "-b", "4096", self.loop)
        sh("mount", "-o", "errors=continue", self.loop, self.ext4)

    def ctl(self, cmd):
        with open(os.path.join(self.dev, "ctl"), "w") as f:
            f.write(cmd + "\n")

    def close(self):
        sh("umount", "-l", self.ext4, check=False)
        sh("losetup", "-d", self.loop, check=False)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()


class Target:
    """ext4 itself, or an mmapfs mount of a store on the ext4."""

    def __init__(self, disk, backend):
        self.disk, self.backend, self.proc = disk, backend, None
        self.mnt = disk.ext4 if backend == "ext4" else os.path.join(disk.work, "mnt")

    def start(self):
        if self.backend == "ext4":
            return
        os.makedirs(self.mnt, exist_ok=True)
        self.proc = subprocess.Popen([os.path.join(BIN, "mmapfs"), "mount", "--store",
                                      os.path.join(self.disk.ext4, "store"), self.mnt, "--backend",
                                      self.backend, "--segment-size", "4M", "--pool-size", "4M"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait(lambda: os.path.ismount(self.mnt) or self.proc.poll() is not None)

    def stop(self):
        """Unmounts; returns the daemon's exit status (0 for ext4)."""
        if self.backend == "ext4":
            return 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait()

    def where(self, name, at):
        """The file on the ext4 and the offset in it holding byte `at` of `name`."""
        if self.backend == "ext4":
            return os.path.join(self.mnt, name), at
        v = json.loads(sh(os.path.join(BIN, "mmapfs"), "inspect", os.path.join(self.mnt, name), "--json"))
        for e in v["file"]["extents"]:
            if e["file_offset"] <= at < e["file_offset"] + e["length"]:
                seg = os.path.join(self.disk.ext4, "store", "segments", "%06d.seg" % e["segment"])
                return seg, e["segment_offset"] + at - e["file_offset"]
        raise SystemExit(f"{name}@{at} not found")


def run(backend, work):
    disk = Disk(work)
    t = Target(disk, backend)
    try:
        return cases(disk, t, backend)
    finally:
        if t.proc and t.proc.poll() is None:
            t.stop()
        disk.close()


def cases(disk, t, backend):
    t.start()
    data = {n: pattern(i) for i, n in enumerate("fgh")}
    for n, d in data.items():
        with open(os.path.join(t.mnt, n), "wb") as f:
            f.write(d)
            os.fsync(f.fileno())
    bad_f, bad_g, bad_h = t.where("f", 256 << 10), t.where("g", 512 << 10), t.where("h", 128 << 10)
    t.stop()
    if backend == "ext4":
        sh("umount", disk.ext4)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
    if backend == "ext4":
        sh("mount", "-o", "errors=continue", disk.loop, disk.ext4)
    disk.ctl("fail-read %d 4096" % device_page(*bad_f))
    disk.ctl("fail-read %d 4096" % device_page(*bad_g))
    t.start()
    p = lambda n: os.path.join(t.mnt, n)  # noqa: E731
    row = {}

    def overwrite():
        fd = os.open(p("g"), os.O_WRONLY)
        try:
            os.pwrite(fd, b"overwrite", (512 << 10) + 100)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_bad():
        fd = os.open(p("f"), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.pread(fd, 16 << 10, 256 << 10)
        finally:
            os.close(fd)

    row["small overwrite of a bad page (+ fsync)"] = errno_of(overwrite)
    row["read of a bad page"] = errno_of(read_bad)
    row["the same read again"] = errno_of(read_bad)
    row["client's mapped load of it"] = mapped_load(p("f"), (256 << 10) + 100)
    def create():
        with open(p("new"), "wb") as f:
            f.write(b"x")
            os.fsync(f.fileno())

    def read_good():
        with open(p("h"), "rb") as f:
            f.read(4096)

    row["a new file + fsync afterwards"] = errno_of(create)
    row["read of a good page afterwards"] = errno_of(read_good)
    disk.ctl("fail-write %d 4096" % device_page(*bad_h))

    def write_back():
        fd = os.open(p("h"), os.O_WRONLY)
        try:
            os.pwrite(fd, b"\xee" * 4096, 128 << 10)
            os.fsync(fd)
        finally:
            os.close(fd)

    row["overwrite + fsync of a page the device cannot write"] = errno_of(write_back)
    row["the mount lives"] = "yes" if os.path.isdir(t.mnt) and errno_of(lambda: os.stat(p("f"))) == "ok" else "NO"
    status = t.stop()
    row["unmount exit status"] = str(status)
    disk.ctl("heal")
    if backend == "ext4":
        sh("umount", disk.ext4)
        sh("mount", "-o", "errors=continue", disk.loop, disk.ext4)
    t.start()
    kept = []
    for n, d in data.items():
        try:
            with open(p(n), "rb") as f:
                back = f.read()
        except OSError as e:
            kept.append(f"{n}: {os.strerror(e.errno)}")
            continue
        diff = [i for i in range(len(d)) if back[i:i + 1] != d[i:i + 1]]
        if not diff:
            kept.append(f"{n} whole")
        else:
            kept.append(f"{n}: {len(diff)} bytes differ")
    row["healed, remounted: the files fsynced before"] = ", ".join(kept)
    t.stop()
    return row


def main():
    if os.geteuid() != 0:
        raise SystemExit("needs root (loop devices, mount)")
    targets = sys.argv[1:] or ["ext4", "mmap", "pread", "direct"]
    sh("cargo", "build", "--release", "--quiet", "--features", "testing", "--manifest-path",
       os.path.join(ROOT, "Cargo.toml"))
    rows = {}
    for t in targets:
        with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="mmapfs-media.") as work:
            rows[t] = run(t, work)
    cases = list(next(iter(rows.values())).keys())
    print("| case | " + " | ".join(targets) + " |")
    print("|---|" + "---|" * len(targets))
    for c in cases:
        print(f"| {c} | " + " | ".join(rows[t][c] for t in targets) + " |")


if __name__ == "__main__":
    main()
