"""Per-run FUSE mounts of a backend workspace (sparsefs, bindfs) and sparsefs's stats counters."""

import json
import os
import time

from .common import BenchError
from .proc import find_pid, fuse_unmount, lazy_umount, sh, wait_exit


# Arguments added to every sparsefs mount (`--mount-opt`).
EXTRA_ARGS = []


def mount_sparsefs(binpath, backing, mnt, extra):
    """Mounts sparsefs over `backing` at `mnt`; returns the daemon's pid."""
    os.makedirs(mnt, exist_ok=True)
    argv = [binpath, "mount", backing, mnt] + list(extra) + EXTRA_ARGS
    sh(argv, timeout=60)
    pid = find_pid(lambda a: a[0] == binpath and "mount" in a and mnt in a)
    if pid is None:
        lazy_umount(mnt)
        raise BenchError(f"sparsefs daemon for {mnt} not found")
    return pid


def unmount_sparsefs(binpath, mnt, pid):
    """Unmounts and waits for the daemon to exit; returns the seconds it took."""
    t = time.monotonic()
    p = sh([binpath, "umount", mnt], check=False, timeout=300)
    if p.returncode != 0:
        lazy_umount(mnt)
    wait_exit(pid, 300)
    return time.monotonic() - t


def mount_bindfs(src, mnt):
    """Mounts bindfs over `src` at `mnt`; returns the daemon's pid (None if not found)."""
    os.makedirs(mnt, exist_ok=True)
    sh(["bindfs", src, mnt], timeout=60)
    pid = find_pid(lambda a: os.path.basename(a[0]) == "bindfs" and mnt in a)
    return pid


def unmount_bindfs(mnt, pid):
    t = time.monotonic()
    fuse_unmount(mnt, "bindfs")
    if pid:
        wait_exit(pid, 120)
    return time.monotonic() - t


class RunMount:
    """A sparsefs or bindfs mount (`kind`) of `backing` at `mnt` for one run, registered on the
    cleanup stack so that it goes away also on failure or interruption."""

    def __init__(self, binpath, cleanups, kind, backing, mnt, extra=()):
        self.bin, self.cleanups, self.kind, self.mnt = binpath, cleanups, kind, mnt
        if kind == "sparsefs":
            self.pid = mount_sparsefs(binpath, backing, mnt, extra)
            self.token = cleanups.push("sparsefs mount", lambda: lazy_umount(mnt))
        else:
            self.pid = mount_bindfs(backing, mnt)
            self.token = cleanups.push("bindfs mount", lambda: fuse_unmount(mnt, "bindfs"))

    def _unmount(self):
        if self.kind == "sparsefs":
            return unmount_sparsefs(self.bin, self.mnt, self.pid)
        return unmount_bindfs(self.mnt, self.pid)

    def unmount(self):
        """Unmounts (the daemon has exited on return); returns the seconds it took."""
        t = self._unmount()
        self.cleanups.run(self.token)
        self.pid = None
        return t

    def close(self, on_error):
        """For a `finally`: unmounts if still mounted (a BenchError goes to `on_error`)."""
        if self.pid:
            try:
                self._unmount()
            except BenchError as e:
                on_error(e)
        self.cleanups.run(self.token)


def stats_json(binpath, mnt):
    p = sh([binpath, "stats", "--json", mnt], check=False)
    if p.returncode != 0:
        return None
    try:
        return json.loads(p.stdout)
    except ValueError:
        return None


GAUGES = {"dirty_bytes", "dirty_peak"}


def stats_diff(after, before):
    if after is None:
        return None
    if before is None:
        return after
    out = {}
    for k, v in after.items():
        if isinstance(v, dict):
            out[k] = stats_diff(v, before.get(k, {}))
        elif k in GAUGES or not isinstance(v, (int, float)):
            out[k] = v
        else:
            out[k] = v - before.get(k, 0)
    return out


def flatten(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def stats_io_calls(st):
    if not st:
        return None
    b = st.get("backend", {})
    return sum(b.get(k, {}).get("calls", 0) for k in ("write", "read", "lseek", "punch", "allocate",
                                                        "ftruncate", "fsync"))
