"""Experiment harness for mmapfs: mounts the configurations an experiment compares, drives
them with fio, and writes results/<experiment>/results.csv, results.json (machine, kernel,
options, mmapfs counters of every run) and PNG plots, with a progress line while it runs.

Experiments: matrix, fsync-cost, scaling, larger-than-memory. Run through scripts/experiments/run.sh.
"""

import csv
import json
import os
import re
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "release" / "mmapfs"


def progress(msg):
    sys.stderr.write("\r" + msg[:100].ljust(100))
    sys.stderr.flush()


def machine():
    mem = next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1]
    fio = subprocess.run(["fio", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "mem_kib": int(mem),
        "fio": fio,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def wait_mounted(proc, mnt, log, what):
    """Waits up to 8 s for `mnt` to become a mountpoint; fails with the log if `proc` exits."""
    for _ in range(400):
        if os.path.ismount(mnt):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} did not mount: {open(log).read()}")
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not mount within 8 s")


class Mmapfs:
    """A daemon on a fresh store; unmounted on exit."""

    def __init__(self, work, name, args, cgroup=None):
        self.store = Path(work) / f"store-{name}"
        self.mnt = Path(work) / f"mnt-{name}"
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.log = open(str(self.store) + ".log", "a")
        self.proc = subprocess.Popen(
            [str(BIN), "mount", "--store", str(self.store), str(self.mnt), *args],
            stdout=self.log, stderr=self.log, preexec_fn=join(cgroup))
        wait_mounted(self.proc, self.mnt, self.log.name, f"mmapfs {args}")

    def remount(self):
        """Unmounts and mounts the same store again: the new daemon maps nothing yet."""
        self.__exit__(None, None, None)
        self.proc = subprocess.Popen(
            [str(BIN), "mount", "--store", str(self.store), str(self.mnt), *self.args],
            stdout=self.log, stderr=self.log)
        wait_mounted(self.proc, self.mnt, self.log.name, f"mmapfs {self.args}")

    def stats(self):
        time.sleep(1.2)  # the daemon writes its snapshot every second
        out = subprocess.run([str(BIN), "stats", "--json", str(self.mnt)], capture_output=True, text=True)
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", "-l", str(self.mnt)])


def join(cgroup):
    """A preexec_fn that moves the child into the memory cgroup directory `cgroup` (or None)."""
    if cgroup is None:
        return None
    return lambda: (Path(cgroup) / "cgroup.procs").write_text(str(os.getpid()))


def fio(directory, cgroup=None, **kw):
    args = ["fio", f"--directory={directory}", "--output-format=json", "--name=job"]
    args += [f"--{k}={v}" for k, v in kw.items()]
    try:
        out = subprocess.run(args, capture_output=True, text=True, preexec_fn=join(cgroup), timeout=900)
    except subprocess.TimeoutExpired:
        raise RuntimeError("fio did not finish within 15 minutes")
    if out.returncode != 0:
        raise RuntimeError(f"fio failed: {out.stderr}")
    return json.loads(out.stdout)["jobs"][0]


def save(name, rows, meta, plots):
    out = ROOT / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    with open(out / "results.json", "w") as f:
        json.dump({"machine": machine(), "rows": rows, **meta}, f, indent=2)
    with open(out / "results.md", "w") as f:
        f.write(markdown(rows))
    for fname, draw in plots.items():
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig = draw(plt)
        fig.savefig(out / fname, dpi=110, bbox_inches="tight")
        plt.close(fig)
    progress("")
    sys.stderr.write("\r")
    print(f"results in {out}")
    return out


def markdown(rows):
    """`rows` as a Markdown table (for docs/experiments.md)."""
    def cell(v):
        if isinstance(v, float):
            return "n/a" if v != v else (f"{v:,.2f}" if abs(v) < 10 else f"{v:,.0f}")
        return f"{v:,}" if isinstance(v, int) else str(v)
    keys = list(rows[0].keys())
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def fsync_cost(quick):
    """Latency of fsync after N dirty 4 KiB pages of a 1 GiB file, per backend and sync policy,
    with ext4 as the reference; and fsync of one dirty page as the file and store grow."""
    dirty = [1, 4, 16, 64, 256, 1024, 4096] + ([] if quick else [16384, 65536])
    size = "256M" if quick else "1G"
    configs = [("mmap", "full"), ("mmap", "data"), ("pread", "full"), ("pread", "data"), ("mmap", "none")]
    rows, counters = [], {}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        targets = [("ext4", None)] + [(f"mmapfs {b} sync={s}", ["--backend", b, "--sync", s]) for b, s in configs]
        for name, args in targets:
            ctx = Mmapfs(work, name.replace(" ", "_").replace("=", "-"), args) if args else None
            d = ctx.mnt if ctx else Path(work) / "ext4"
            d.mkdir(exist_ok=True)
            try:
                progress(f"{name}: laying out {size}")
                fio(d, rw="write", bs="1M", size=size, filename="f", end_fsync=1)
                for n in dirty:
                    progress(f"{name}: fsync after {n} dirty pages")
                    rounds = max(5, min(50, 4096 // n)) if n < 16384 else 3
                    j = fio(d, rw="randwrite", bs="4k", size=size, filename="f", fsync=n,
                            number_ios=n * rounds, invalidate=0, randrepeat=0)
                    p = j["sync"]["lat_ns"]["percentile"]
                    rows.append({"target": name, "dirty_pages": n, "fsyncs": j["sync"]["total_ios"],
                                 "p50_us": p["50.000000"] / 1000, "p99_us": p["99.000000"] / 1000})
                # Independence of file and store size: one dirty page with more data around.
                if ctx:
                    progress(f"{name}: one dirty page, store grown by 2 GiB")
                    fio(d, rw="write", bs="1M", size="2G" if not quick else "512M", filename="g")
                    j = fio(d, rw="randwrite", bs="4k", size=size, filename="f", fsync=1,
                            number_ios=50, invalidate=0, randrepeat=0)
                    p = j["sync"]["lat_ns"]["percentile"]
                    rows.append({"target": name + " (bigger store)", "dirty_pages": 1,
                                 "fsyncs": j["sync"]["total_ios"],
                                 "p50_us": p["50.000000"] / 1000, "p99_us": p["99.000000"] / 1000})
                    counters[name] = ctx.stats()
            finally:
                if ctx:
                    ctx.__exit__(None, None, None)

    def draw(plt):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        for ax, key in zip(axes, ("p50_us", "p99_us")):
            for t in dict.fromkeys(r["target"] for r in rows if "bigger" not in r["target"]):
                pts = [(r["dirty_pages"], r[key]) for r in rows if r["target"] == t]
                ax.plot(*zip(*pts), marker="o", label=t)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("dirty 4 KiB pages before fsync")
            ax.set_title(f"fsync latency {key[:3]}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("µs")
        axes[1].legend(fontsize=8)
        return fig

    save("fsync-cost", rows, {"options": {"file": size, "dirty": dirty}, "mmapfs_counters": counters},
         {"fsync-latency.png": draw})


def scaling(quick):
    """IOPS of random 4 KiB reads (direct_io, so every read reaches the daemon) and overwrites
    against --threads 1, 2, 4 and 1, 2, 4 concurrent clients, one file each."""
    runtime = 3 if quick else 10
    rows, counters = [], {}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        for threads in (1, 2, 4):
            with Mmapfs(work, f"t{threads}", ["--threads", str(threads), "-o", "direct_io"]) as m:
                for clients in (1, 2, 4):
                    for rw in ("randread", "randwrite"):
                        progress(f"threads {threads}, {clients} clients, {rw}")
                        j = fio(m.mnt, rw=rw, bs="4k", size="128M", numjobs=clients, group_reporting=1,
                                time_based=1, runtime=runtime)
                        side = "read" if rw == "randread" else "write"
                        rows.append({"threads": threads, "clients": clients, "workload": rw,
                                     "iops": round(j[side]["iops"])})
                counters[f"threads={threads}"] = m.stats()

    def draw(plt):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, rw in zip(axes, ("randread", "randwrite")):
            for t in (1, 2, 4):
                pts = [(r["clients"], r["iops"]) for r in rows if r["threads"] == t and r["workload"] == rw]
                ax.plot(*zip(*pts), marker="o", label=f"--threads {t}")
            ax.set_xlabel("concurrent clients (one file each)")
            ax.set_ylabel("IOPS")
            ax.set_title(f"{rw} 4 KiB, direct_io")
            ax.grid(True, alpha=0.3)
            ax.legend()
        return fig

    save("scaling", rows, {"options": {"runtime_s": runtime, "mode": "direct_io"}, "mmapfs_counters": counters},
         {"scaling.png": draw})


def memcg(name, limit):
    """A fresh cgroup-v1 memory cgroup limited to `limit` bytes; its path."""
    cg = Path("/sys/fs/cgroup/memory") / name
    if not cg.parent.is_dir():
        raise RuntimeError("the cgroup v1 memory controller is not mounted at /sys/fs/cgroup/memory")
    cg.mkdir(exist_ok=True)
    (cg / "memory.limit_in_bytes").write_text(str(limit))
    return cg


def faults(pid):
    """(minor faults, major faults, bytes read from storage) of process `pid` so far; the last
    counts reads the process caused either way, by pread or by a fault."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    io = dict(line.split(": ") for line in open(f"/proc/{pid}/io").read().splitlines())
    return int(f[7]), int(f[9]), int(io["read_bytes"])


def tlb_shootdowns():
    """TLB shootdown interrupts so far, summed over the CPUs (/proc/interrupts' TLB line)."""
    for line in open("/proc/interrupts"):
        if line.strip().startswith("TLB:"):
            return sum(int(x) for x in line.split()[1:] if x.isdigit())
    return 0


def cg_stat(cg, key):
    for line in open(cg / "memory.stat"):
        k, v = line.split()
        if k == key:
            return int(v)
    return 0


class RamDevice:
    """A RAM-backed block device for the store (zram, LZ4, holding fio's incompressible
    data uncompressed), with ext4 on it, mounted under `work`; removed on exit. zram's memory is
    the kernel's, not charged to the experiment's memory cgroup."""

    def __init__(self, work, size):
        control = Path("/sys/class/zram-control/hot_add")
        if not control.exists():
            raise RuntimeError("this kernel has no zram: no RAM-backed device")
        self.n = int(control.read_text())
        self.dev = f"/dev/zram{self.n}"
        blk = Path(f"/sys/block/zram{self.n}")
        try:
            (blk / "comp_algorithm").write_text("lz4")
        except OSError:
            pass
        (blk / "disksize").write_text(str(size))
        subprocess.run(["mkfs.ext4", "-q", "-F", self.dev], check=True)
        self.path = Path(work) / f"zram{self.n}"
        self.path.mkdir()
        subprocess.run(["mount", self.dev, str(self.path)], check=True)

    def close(self):
        # The daemons are gone by now; a plain umount (not lazy) frees the device at once.
        for _ in range(120):
            if subprocess.run(["umount", str(self.path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", str(self.path)])
        # The device stays busy for a while after the umount (seen: 10–30 s).
        for _ in range(120):
            try:
                Path("/sys/class/zram-control/hot_remove").write_text(str(self.n))
                return
            except OSError as e:
                err = e
                time.sleep(0.5)
        print(f"\nzram{self.n} not removed ({err}); later: echo {self.n} > /sys/class/zram-control/hot_remove",
              file=sys.stderr)


def larger_than_memory(quick, opts):
    """Random 4 KiB reads over data sets from 1/4 to 8 times the memory the daemon and its
    client may use (both in one cgroup-v1 memory cgroup), for each backend — mmap (the segment
    page cache behind the daemon's mappings), pread (the same page cache through pread) and
    direct (O_DIRECT into the daemon's own buffer pool, CLOCK) — on the real disk and on a
    RAM-backed device, with IOPS over time like the CIDR 2022 paper's figure, and a sequential
    scan of the largest data set. Reads are O_DIRECT on the FUSE file, so every one reaches the
    daemon and only its buffer management is measured."""
    limit = opts.limit or ((128 if quick else 512) << 20)
    ratios = opts.ratios or ([0.25, 0.5, 1, 2, 4] + ([] if quick else [8]))
    runtime = opts.runtime or (10 if quick else 30)
    backends = opts.backends or ["mmap", "pread", "direct"]
    devices = opts.devices or ["disk", "ram"]
    jobs = opts.jobs or 2
    pool = max(limit - (64 << 20), limit // 2)
    biggest = int(limit * max(ratios))
    rows, series, counters = [], [], {}
    with tempfile.TemporaryDirectory(dir="/var/tmp", ignore_cleanup_errors=True) as work:
        for device in devices:
            ram = RamDevice(work, int(biggest * 1.3) + (512 << 20)) if device == "ram" else None
            base = ram.path if ram else Path(work)
            try:
                progress(f"{device}: laying out {biggest >> 20} MiB")
                with Mmapfs(base, "ltm", []) as m:
                    fio(m.mnt, rw="write", bs="1M", size=biggest, filename="f", end_fsync=1)
                for backend in backends:
                    extra = ["--pool-size", str(pool)] if backend == "direct" else []
                    runs = [("randread", r) for r in ratios] + [("seqscan", max(ratios))]
                    for workload, ratio in runs:
                        size = int(limit * ratio)
                        name = f"mmapfs-ltm-{os.getpid()}-{device}-{backend}-{workload}-{ratio}"
                        drop_caches()
                        cg = memcg(name, limit)
                        try:
                            with Mmapfs(base, "ltm", ["--backend", backend, *extra], cgroup=cg) as m:
                                rows.append(ltm_run(m, cg, work, device, backend, workload, ratio, size, limit,
                                                    runtime, jobs, series, counters))
                        finally:
                            try:
                                cg.rmdir()
                            except OSError:
                                pass
            finally:
                if ram:
                    ram.close()

    print()
    for r in rows:
        print(r)
    rand = [r for r in rows if r["workload"] == "randread"]

    def draw_time(plt):
        fig, axes = plt.subplots(len(devices), len(ratios), figsize=(3.2 * len(ratios), 3.2 * len(devices)),
                                 sharex=True, squeeze=False)
        for row, device in enumerate(devices):
            for col, ratio in enumerate(ratios):
                ax = axes[row][col]
                for backend in backends:
                    pts = [(p["second"], p["iops"]) for p in series
                           if p["device"] == device and p["backend"] == backend and p["ratio"] == ratio]
                    if pts:
                        ax.plot(*zip(*pts), label=backend)
                ax.set_title(f"{device}: data/memory = {ratio}", fontsize=9)
                ax.grid(True, alpha=0.3)
                if row == len(devices) - 1:
                    ax.set_xlabel("s")
            axes[row][0].set_ylabel("random 4 KiB read IOPS")
        axes[0][0].legend()
        fig.tight_layout()
        return fig

    def draw_ratio(plt):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for device in devices:
            for backend in backends:
                pts = [(r["ratio"], r["iops"]) for r in rand if r["backend"] == backend and r["device"] == device]
                if pts:
                    ax.plot(*zip(*pts), marker="o", linestyle="-" if device == "ram" else "--",
                            label=f"{backend}, {device}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"data set / memory limit ({limit >> 20} MiB)")
        ax.set_ylabel("IOPS (over the run)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        return fig

    save("larger-than-memory", rows,
         {"options": {"limit": limit, "ratios": ratios, "runtime_s": runtime, "numjobs": jobs, "direct": 1,
                      "backends": backends, "devices": devices, "pool_size": pool,
                      "ram_device": "zram (lz4), ext4" if "ram" in devices else None},
          "series": series, "mmapfs_counters": counters},
         {"ltm-time.png": draw_time, "ltm-ratio.png": draw_ratio})


def ltm_run(m, cg, work, device, backend, workload, ratio, size, limit, runtime, jobs, series, counters):
    """One run of the larger-than-memory experiment; its result row."""
    pid = m.proc.pid
    log = Path(work) / f"iops-{device}-{backend}-{workload}-{ratio}"
    if workload == "randread":
        job = ["--rw=randread", "--bs=4k", f"--numjobs={jobs}", "--time_based=1", f"--runtime={runtime}",
               "--randrepeat=0"]
    else:
        job = ["--rw=read", "--bs=1M", "--numjobs=1"]
    cmd = ["fio", f"--directory={m.mnt}", "--name=job", "--filename=f", f"--size={size}", "--direct=1",
           "--group_reporting=1", "--output-format=json", f"--write_iops_log={log}", "--log_avg_msec=1000", *job]
    f0, tlb0, out0 = faults(pid), tlb_shootdowns(), cg_stat(cg, "pgpgout")
    pool0 = (m.stats().get("pool") or {}).get("evictions", 0) if backend == "direct" else 0
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=join(cg))
    t0, samples = time.time(), []
    while proc.poll() is None:
        time.sleep(1)
        f = faults(pid)
        usage = int((cg / "memory.usage_in_bytes").read_text())
        samples.append((round(time.time() - t0, 1), f[0] - f0[0], f[1] - f0[1], usage >> 20, (f[2] - f0[2]) >> 20))
        progress(f"{device} {backend} {workload} data/memory {ratio}: {samples[-1][0]:.0f} s, "
                 f"{samples[-1][2]} major faults, cgroup {samples[-1][3]} MiB")
    took = time.time() - t0
    out = json.loads(proc.stdout.read())
    if proc.returncode != 0:
        raise RuntimeError(f"fio failed with {proc.returncode}")
    f1, tlb1, out1 = faults(pid), tlb_shootdowns(), cg_stat(cg, "pgpgout")
    st = m.stats()
    pool1 = (st.get("pool") or {}).get("evictions", 0) if backend == "direct" else 0
    # Each job logs one averaged sample per second; the jobs' clocks are not aligned to the
    # millisecond, so the n-th samples of all jobs are summed as second n.
    per_s = {}
    for path in Path(work).glob(f"{log.name}_iops.*.log"):
        for n, line in enumerate(open(path), start=1):
            per_s[n] = per_s.get(n, 0) + int(line.split(",")[1])
    if workload == "randread":
        for sec, iops in sorted(per_s.items()):
            series.append({"device": device, "backend": backend, "ratio": ratio, "second": sec, "iops": iops})
    r = out["jobs"][0]["read"]
    reads = r["total_ios"] or 1
    counters[f"{device} {backend} {workload} ratio {ratio}"] = {**st, "samples": samples}
    return {"device": device, "backend": backend, "workload": workload, "data_mib": size >> 20,
            "limit_mib": limit >> 20, "ratio": ratio, "iops": round(r["iops"]), "mib_s": round(r["bw"] / 1024),
            "p99_us": r["clat_ns"]["percentile"]["99.000000"] / 1000,
            "major_faults_per_read": round((f1[1] - f0[1]) / reads, 3),
            "minor_faults_per_read": round((f1[0] - f0[0]) / reads, 3),
            "storage_kib_per_read": round((f1[2] - f0[2]) / 1024 / reads, 2),
            "tlb_shootdowns_per_s": round((tlb1 - tlb0) / took),
            "cgroup_pgpgout_per_s": round((out1 - out0) / took),
            "pool_evictions_per_s": round((pool1 - pool0) / took),
            "cgroup_peak_mib": int((cg / "memory.max_usage_in_bytes").read_text()) >> 20}


PEERS = ROOT / "target" / "peers"


def build_peers():
    """The peer FUSE filesystems: libfuse's passthrough_ll (Debian's libfuse3-dev examples) and
    the fuser crate's `simple` example (built from its crates.io package)."""
    PEERS.mkdir(parents=True, exist_ok=True)
    built = {}
    ll = PEERS / "passthrough_ll"
    src = Path("/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c")
    if not src.exists():
        subprocess.run(["apt-get", "install", "-y", "-qq", "libfuse3-dev", "pkg-config"], check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, capture_output=True)
    if src.exists() and not ll.exists():
        flags = subprocess.run(["pkg-config", "fuse3", "--cflags", "--libs"], capture_output=True, text=True).stdout.split()
        subprocess.run(["cc", "-O2", "-o", str(ll), str(src), *flags], check=False)
    if ll.exists():
        built["passthrough_ll"] = ll
    simple = PEERS / "fuser" / "target" / "release" / "examples" / "simple"
    if not simple.exists():
        home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
        srcs = sorted(home.glob("registry/src/*/fuser-0.18.*"))
        if srcs:
            shutil.copytree(srcs[-1], PEERS / "fuser", dirs_exist_ok=True)
            # The package pins an old toolchain (rust-toolchain); build it with this machine's.
            subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "simple"], cwd=PEERS / "fuser",
                           check=False, env={**os.environ, "RUSTUP_TOOLCHAIN": "stable"})
    if simple.exists():
        built["fuser-simple"] = simple
    # libfuse's multi-threaded C reference, from Debian's fuse3 source (scripts/peers.sh).
    hp = subprocess.run([str(ROOT / "scripts" / "peers.sh")], capture_output=True, text=True)
    if hp.returncode == 0 and Path(hp.stdout.strip()).exists():
        built["passthrough_hp"] = Path(hp.stdout.strip())
    return built


class Peer:
    """A peer FUSE filesystem mounted over a directory on ext4."""

    def __init__(self, work, name, binary):
        self.mnt = Path(work) / f"mnt-{name}"
        data = Path(work) / f"data-{name}"
        self.mnt.mkdir(parents=True, exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        log = open(Path(work) / f"{name}.log", "w")
        if name.startswith("passthrough_ll"):
            cmd = [str(binary), "-f", "-o", f"source={data}", str(self.mnt)]
        elif name.startswith("passthrough_hp"):
            cmd = [str(binary), "--foreground", str(data), str(self.mnt)]
        else:
            cmd = [str(binary), "--data-dir", str(data), "--mount-point", str(self.mnt), "--n-threads", str(os.cpu_count())]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        wait_mounted(self.proc, self.mnt, log.name, name)

    def close(self):
        subprocess.run(["umount", "-l", str(self.mnt)])
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def fsx_timed(directory, seed, ops=100_000):
    """Seconds for fsx's mix (read, write, mapped read, mapped write + msync, truncate) in
    `directory`, by the coherence exerciser (which checks every read)."""
    exe = ROOT / "target" / "release" / "mmapfs-coherence"
    out = subprocess.run([str(exe), "fsx-timed", str(directory), "--ops", str(ops), "--seed", str(seed)],
                         capture_output=True, text=True)
    m = re.search(r" in ([0-9.]+) s", out.stdout)
    if out.returncode != 0 or not m:
        raise RuntimeError(out.stdout + out.stderr)
    (Path(directory) / "fsx-timed").unlink(missing_ok=True)
    return float(m.group(1))


def drop_caches():
    subprocess.run(["sync"])
    Path("/proc/sys/vm/drop_caches").write_text("3")


def matrix(quick):
    """The throughput matrix: every workload on tmpfs, ext4, mmapfs in each backend and cache
    mode, and the peer FUSE filesystems; medians of RUNS runs (1 with --quick)."""
    runs = 1 if quick else 3
    size = "256M" if quick else "1G"
    runtime = 3 if quick else 5
    files = 2000 if quick else 10000
    peers = build_peers()
    mm = {
        "mmapfs": [],
        "mmapfs pread": ["--backend", "pread"],
        "mmapfs backend=direct": ["--backend", "direct"],
        "mmapfs writeback_cache": ["-o", "writeback_cache"],
        "mmapfs direct_io": ["-o", "direct_io"],
        "mmapfs dirty_limit=kernel": ["-o", "dirty_limit=kernel,read_ahead=kernel"],
    }
    workloads = [
        ("seq write 1M + fsync (MiB/s)", dict(rw="write", bs="1M", size=size, end_fsync=1), "write", "bw"),
        ("seq read 1M cold (MiB/s)", dict(rw="read", bs="1M", size=size), "read", "bw"),
        ("seq read 1M warm (MiB/s)", dict(rw="read", bs="1M", size=size, invalidate=0), "read", "bw"),
        ("rand read 4k psync 1 job (IOPS)", dict(rw="randread", bs="4k", size=size, invalidate=0, time_based=1, runtime=runtime), "read", "iops"),
        ("rand read 4k psync 4 jobs (IOPS)", dict(rw="randread", bs="4k", size=size, invalidate=0, time_based=1, runtime=runtime, numjobs=4, group_reporting=1), "read", "iops"),
        ("rand read 4k mmap (IOPS)", dict(rw="randread", bs="4k", size=size, invalidate=0, ioengine="mmap", time_based=1, runtime=runtime), "read", "iops"),
        ("rand write 4k fsync/32 (IOPS)", dict(rw="randwrite", bs="4k", size=size, fsync=32, invalidate=0, time_based=1, runtime=runtime), "write", "iops"),
        ("rand write 4k mmap + msync/32 (IOPS)", dict(rw="randwrite", bs="4k", size=size, ioengine="mmap", fsync=32, invalidate=0, time_based=1, runtime=runtime), "write", "iops"),
        ("rand 4k stores via mmap, msync at end (IOPS)", dict(rw="randwrite", bs="4k", size="512M", ioengine="mmap", invalidate=0, pre_read=1, time_based=1, runtime=runtime, end_fsync=1), "write", "iops"),
        ("fsx mix 100k ops (s, lower better)", "fsx", None, None),
    ]
    rows, counters = [], {}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        tmpfs = Path(work) / "tmpfs"
        tmpfs.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4G", "tmpfs", str(tmpfs)], check=True)
        targets = [("tmpfs", None), ("ext4", None), *[(n, ("mmapfs", a)) for n, a in mm.items()],
                   *[(n, ("peer", b)) for n, b in peers.items()]]
        try:
            for run in range(runs):
                for name, kind in targets:
                    ctx = None
                    if kind and kind[0] == "mmapfs":
                        ctx = Mmapfs(work, name.replace(" ", "_") + f"-{run}", kind[1])
                        d = ctx.mnt
                    elif kind:
                        ctx = Peer(work, name + f"-{run}", kind[1])
                        d = ctx.mnt
                    else:
                        d = tmpfs if name == "tmpfs" else Path(work) / "ext4"
                        d.mkdir(exist_ok=True)
                    try:
                        for label, job, side, metric in workloads:
                            progress(f"run {run + 1}/{runs} {name}: {label}")
                            if "cold" in label:
                                if isinstance(ctx, Mmapfs):
                                    ctx.remount()  # a cold read must not find pages the daemon maps
                                drop_caches()
                            try:
                                if job == "fsx":
                                    v = fsx_timed(d, run + 1)
                                else:
                                    j = fio(d, filename="f", **job)
                                    v = j[side]["bw"] / 1024 if metric == "bw" else j[side]["iops"]
                            except RuntimeError:
                                v = float("nan")
                            rows.append({"run": run, "target": name, "workload": label, "value": round(v, 1)})
                        try:
                            (Path(d) / "f").unlink(missing_ok=True)
                            meta = Path(d) / "meta"
                            meta.mkdir(exist_ok=True)
                        except OSError as e:  # the filesystem died (a peer crashed)
                            print(f"\n{name}: {e}; its remaining figures are NaN", file=sys.stderr)
                            meta = None
                        for op in ("filecreate", "filestat", "filedelete"):
                            progress(f"run {run + 1}/{runs} {name}: {op}")
                            try:
                                if meta is None:
                                    raise RuntimeError("filesystem gone")
                                # The runtime cap only bites on very slow peers (the fuser
                                # example's directories cost O(entries) per create): the rate
                                # is then over the files done.
                                j = fio(meta, ioengine=op, numjobs=10, group_reporting=1, nrfiles=files // 10,
                                        filesize="4k", bs="4k", openfiles=1, fallocate="none", create_on_open=1,
                                        runtime=30)
                                v = j["read"]["iops"]
                            except RuntimeError:
                                v = float("nan")
                            rows.append({"run": run, "target": name, "workload": f"{op[4:]} {files} files (/s)", "value": round(v, 1)})
                        if meta is not None:
                            shutil.rmtree(meta, ignore_errors=True)
                        if isinstance(ctx, Mmapfs):
                            counters[f"{name} run {run}"] = ctx.stats()
                    finally:
                        if isinstance(ctx, Mmapfs):
                            ctx.__exit__(None, None, None)
                        elif ctx:
                            ctx.close()
        finally:
            subprocess.run(["umount", "-l", str(tmpfs)])

    import statistics
    names = list(dict.fromkeys(r["target"] for r in rows))
    labels = list(dict.fromkeys(r["workload"] for r in rows))
    med = {(t, w): statistics.median([r["value"] for r in rows if r["target"] == t and r["workload"] == w] or [float("nan")])
           for t in names for w in labels}
    table = [{"workload": w, **{t: med[(t, w)] for t in names},
              "mmapfs/tmpfs": round(med[("mmapfs", w)] / med[("tmpfs", w)], 2) if med[("tmpfs", w)] else None,
              **{f"mmapfs/{p}": round(med[("mmapfs", w)] / med[(p, w)], 2) if med.get((p, w)) else None
                 for p in ("ext4", "passthrough_ll", "passthrough_hp", "fuser-simple") if p in names}}
             for w in labels]
    print("\n" + " | ".join(["workload", *names]))
    for r in table:
        print(" | ".join([r["workload"], *[f"{r[t]:,.0f}" for t in names]]))

    def draw(plt):
        import math
        fig, axes = plt.subplots(len(labels), 1, figsize=(10, 2.2 * len(labels)))
        for ax, w in zip(axes, labels):
            vals = [med[(t, w)] for t in names]
            ax.bar(range(len(names)), [0 if math.isnan(v) else v for v in vals],
                   color=["#888" if not t.startswith("mmapfs") else "#c44" for t in names])
            finite = [v for v in vals if v == v and v > 0]
            if finite and max(finite) > 20 * min(finite):
                ax.set_yscale("log")  # tmpfs's syncs are free: keep the others readable
            for i, v in enumerate(vals):
                if v == v:
                    ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=6)
            ax.set_title(w, fontsize=9)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, fontsize=7, rotation=15)
        fig.tight_layout()
        return fig

    save("matrix", table, {"options": {"runs": runs, "file": size, "runtime_s": runtime, "files": files},
                           "raw": rows, "mmapfs_counters": counters}, {"matrix.png": draw})


EXPERIMENTS = {"matrix": matrix, "fsync-cost": fsync_cost, "scaling": scaling,
               "larger-than-memory": larger_than_memory}

def options(argv):
    import argparse
    size = lambda v: int(v[:-1]) << {"K": 10, "M": 20, "G": 30}[v[-1].upper()] if v[-1].isalpha() else int(v)
    p = argparse.ArgumentParser(prog="run.sh", description="storage experiments through mmapfs")
    p.add_argument("experiment", choices=EXPERIMENTS)
    p.add_argument("--quick", action="store_true", help="shorter runs, smaller data")
    p.add_argument("--limit", type=size, help="larger-than-memory: the memory limit (e.g. 512M)")
    p.add_argument("--ratios", type=lambda v: [float(x) for x in v.split(",")],
                   help="larger-than-memory: data set / memory ratios (e.g. 0.25,1,4,8)")
    p.add_argument("--backends", type=lambda v: v.split(","), help="larger-than-memory: mmap,pread,direct")
    p.add_argument("--devices", type=lambda v: v.split(","), help="larger-than-memory: disk,ram")
    p.add_argument("--jobs", type=int, help="larger-than-memory: fio jobs of random reads (default 2)")
    p.add_argument("--runtime", type=int, help="larger-than-memory: seconds per random-read run")
    return p.parse_args(argv)


if __name__ == "__main__":
    o = options(sys.argv[1:])
    if o.experiment == "larger-than-memory":
        larger_than_memory(o.quick, o)
    else:
        EXPERIMENTS[o.experiment](o.quick)
