"""Shared constants (sizes, backends, scenarios), logging, number formatting and BenchError."""

import os
import re
import statistics
import sys
import time

MiB = 1 << 20
GiB = 1 << 30
# the repository root: bench-scripts/sparsebench/common.py -> ../..
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ALL_BACKENDS = ["dir", "xfs", "bindfs", "gluster", "gluster-shard", "gluster-remote"]
DEFAULT_BACKENDS = ["dir", "bindfs", "gluster-shard"]
# Workload sizes per --size profile. full is the reference; medium halves every input so
# that every scenario on the three default backends with --runs 3 fits in about an hour
# on a 2-vCPU machine; quick is the smoke test's.
SIZES = {
    "full": {"image": 2 * GiB, "image_extents": 64, "rs_image": 4 * GiB, "rs_fraction": 0.03,
             "zeros_mib": 1024, "ckpt": 1 * GiB, "dense": 1 * GiB, "small_files": 20000,
             "ls_entries": 50000},
    "medium": {"image": 1 * GiB, "image_extents": 32, "rs_image": 2 * GiB, "rs_fraction": 0.03,
               "zeros_mib": 512, "ckpt": 512 * MiB, "dense": 512 * MiB, "small_files": 10000,
               "ls_entries": 25000},
    "quick": {"image": 256 * MiB, "image_extents": 8, "rs_image": 512 * MiB, "rs_fraction": 0.03,
              "zeros_mib": 128, "ckpt": 128 * MiB, "dense": 128 * MiB, "small_files": 2000,
              "ls_entries": 5000},
}
QUICK_BACKENDS = ["dir", "bindfs"]
ALL_SCENARIOS = ["dd-zeros", "cp-never", "rsync-S", "rsync-plain", "rsync-inplace", "tar-x",
                 "qemu-convert", "checkpoint", "dense", "smallfiles", "read-sparse", "sweep"]
SWEEP_BLOCKS = ["4K", "16K", "32K", "64K", "256K", "1M", "4M"]


class _Titles(dict):
    """Backend titles; `gluster-remote-<N>us` (one per --delay-us) is titled by its delay."""

    def __missing__(self, be):
        d = remote_delay(be)
        if d is None:
            raise KeyError(be)
        return f"sharded GlusterFS, brick waits {d} µs per operation"


def remote_delay(be):
    """The brick delay in µs of a `gluster-remote-<N>us` backend name, else None."""
    m = re.fullmatch(r"gluster-remote-(\d+)us", be)
    return int(m.group(1)) if m else None


def remote_name(delay_us):
    """The backend name of gluster-remote at `delay_us` µs per brick operation."""
    return f"gluster-remote-{delay_us}us"


BACKEND_TITLE = _Titles({"dir": "ext4 directory", "xfs": "XFS (loop image)", "bindfs": "bindfs over ext4",
                         "gluster": "GlusterFS", "gluster-shard": "sharded GlusterFS"})
# the order in which backends are "most like a parallel filesystem" (for the headline)
REMOTENESS = ["gluster-shard", "gluster", "bindfs", "xfs", "dir"]
KIND_ORDER = {"sparsefs": 0, "direct": 1, "bindfs": 2, "peer": 3}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt_bytes(n):
    if n is None:
        return "-"
    n = float(n)
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if abs(n) >= div:
            v = n / div
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{n:.0f} B"


def fmt_s(s):
    if s is None:
        return "-"
    if s >= 100:
        return f"{s:.0f}"
    if s >= 10:
        return f"{s:.1f}"
    if s >= 0.1:
        return f"{s:.2f}"
    return f"{s:.3f}"


def fmt_n(n):
    if n is None:
        return "-"
    return f"{int(round(n)):,}"


def fmt_x(r):
    if r is None:
        return "-"
    return f"{r:.2f}×" if r < 10 else f"{r:.0f}×" if r >= 100 else f"{r:.1f}×"


def parse_size(s):
    m = re.fullmatch(r"(\d+)([KMG]?)", s)
    return int(m.group(1)) * {"": 1, "K": 1024, "M": MiB, "G": GiB}[m.group(2)]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class BenchError(Exception):
    """A benchmark step failed (recorded as a failure; the run goes on where it can)."""
