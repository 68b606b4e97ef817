"""Backends (dir, xfs, bindfs, gluster, gluster-shard, gluster-remote-<N>us): bring-up, capability probe, teardown."""

import os
import subprocess
import time

from .common import BACKEND_TITLE, GiB, MiB, REPO, BenchError, log, remote_delay
from .proc import detach_loops, fs_type, fuse_unmount, is_mountpoint, lazy_umount, remove_tree, sh

BACKENDS_ENV = "SPARSEFS_BENCH_BACKENDS"
GLUSTER_PROCS = ("glusterd", "glusterfs", "glusterfsd")


def backend_scripts():
    """The directory holding gluster-up.sh and gluster-down.sh: $SPARSEFS_BENCH_BACKENDS if set
    (an explicit override), else `shared/backends` beside the repository (as in CI)."""
    env = os.environ.get(BACKENDS_ENV)
    if env:
        return env
    beside = os.path.join(os.path.dirname(REPO), "shared", "backends")
    if os.path.isdir(beside):
        return beside
    raise BenchError(f"the GlusterFS scripts (gluster-up.sh) are not in {beside}: set {BACKENDS_ENV}=DIR "
                     f"or pass --gluster-dir MOUNT")


def glusterfs_mounts():
    """Mount points of GlusterFS FUSE mounts on this machine."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "fuse.glusterfs":
                out.append(parts[1].replace("\\040", " "))
    return out


def gluster_running():
    """Why the harness must not start its own GlusterFS (a volume mounted, a gluster process
    running), or None."""
    for mnt in glusterfs_mounts():
        return f"{mnt} is mounted"
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if comm in GLUSTER_PROCS:
                return f"a {comm} process is running (pid {d})"
    return None


def probe(root):
    """What the backend really does: SEEK_DATA and punch (write, call, read back)."""
    p = os.path.join(root, ".sparsefs-bench-probe")
    caps = {}
    try:
        with open(p, "wb") as f:
            f.truncate(4 * MiB)
            f.seek(2 * MiB)
            f.write(b"\x01" * (64 * 1024))
        fd = os.open(p, os.O_RDONLY)
        try:
            caps["seek_data"] = os.lseek(fd, 0, os.SEEK_DATA) > 0
        except OSError as e:
            caps["seek_data"] = False
            caps["seek_data_error"] = os.strerror(e.errno)
        finally:
            os.close(fd)
        r = subprocess.run(["fallocate", "-p", "-o", str(2 * MiB), "-l", "65536", p],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        with open(p, "rb") as f:
            f.seek(2 * MiB)
            zeroed = f.read(65536) == bytes(65536)
        caps["punch"] = r.returncode == 0 and zeroed
        if r.returncode != 0:
            caps["punch_error"] = r.stderr.strip()[-120:]
    finally:
        if os.path.exists(p):
            os.unlink(p)
    return caps


def _dir(base, cleanups, info):
    root = os.path.join(base, "root")
    os.makedirs(root)
    info["how"] = f"a directory on the root filesystem ({fs_type(root)})"
    return root


def _xfs(base, cleanups, info):
    img = os.path.join(base, "xfs.img")
    mnt = os.path.join(base, "mnt")
    os.makedirs(mnt)
    with open(img, "wb") as f:
        f.truncate(8 * GiB)
    cleanups.push("xfs image", lambda: os.path.exists(img) and os.unlink(img))
    sh(["mkfs.xfs", "-q", img])
    cleanups.push("xfs mount", lambda: (lazy_umount(mnt), detach_loops(img)))
    sh(["mount", "-o", "loop", img, mnt])
    info["how"] = "8 GiB sparse image on the root filesystem, mkfs.xfs -q, mount -o loop"
    return mnt


def _bindfs(base, cleanups, info):
    src = os.path.join(base, "src")
    mnt = os.path.join(base, "mnt")
    os.makedirs(src)
    os.makedirs(mnt)
    cleanups.push("bindfs backend", lambda: fuse_unmount(mnt, "bindfs"))
    sh(["bindfs", src, mnt])
    info["how"] = "bindfs over a directory on the root filesystem"
    return mnt


def _gluster(be, base, cleanups, info, gluster_dir):
    if gluster_dir:
        gd = os.path.realpath(gluster_dir)
        if not os.path.isdir(gd):
            raise BenchError(f"--gluster-dir {gd} is not a directory")
        info["how"] = f"existing GlusterFS mount {gd} (--gluster-dir; {is_mountpoint(gd) or 'subdir'})"
        return gd
    why = gluster_running()
    # the previous backend's GlusterFS (a latency sweep brings one up per delay) may still
    # be exiting: give it a few seconds
    for _ in range(150):
        if not why:
            break
        time.sleep(0.1)
        why = gluster_running()
    if why:
        raise BenchError(f"cannot start GlusterFS: {why}; only one instance can run on this "
                         f"machine (port 24007): pass --gluster-dir MOUNT to use it")
    scripts = backend_scripts()
    # the volume, its state and its mount all live under the harness's temp dir; the mount
    # point is whatever gluster-up.sh prints last
    gbase = os.path.join(base, "gl")
    env = dict(os.environ, BASE=gbase)
    delay = remote_delay(be)
    if be == "gluster-shard" or delay is not None:
        env["SHARD"] = "1"
    if delay:
        # every brick operation waits `delay` µs (GlusterFS's delay-gen): a brick across a network
        env["DELAY_US"] = str(delay)
    down = os.path.join(scripts, "gluster-down.sh")
    cleanups.push("gluster volume", lambda: subprocess.run(
        [down], env=dict(os.environ, BASE=gbase), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    log(f"starting GlusterFS ({be}) with {scripts}/gluster-up.sh")
    p = sh([os.path.join(scripts, "gluster-up.sh")], env=env, timeout=300)
    info["how"] = (f"gluster-up.sh{' SHARD=1' if be == 'gluster-shard' or delay is not None else ''}"
                   f"{f' DELAY_US={delay}' if delay else ''} (own volume)")
    return p.stdout.strip().splitlines()[-1]


class Workspace:
    """A backend brought up for the run: `ws` is a fresh directory inside it."""

    def __init__(self, ws, info, notes, verify_via):
        self.ws = ws
        self.info = info              # how it was set up, probed capabilities
        self.notes = notes            # remarks for the report
        self.trust_seek = bool(info.get("seek_data"))
        # (mount root, directory under it): verify by reading the directory under the mount
        self.verify_via = verify_via


def bring_up(be, tmp, cleanups, gluster_dir=None):
    """Sets backend `be` up under `tmp` (its teardown pushed on `cleanups`); returns a Workspace."""
    base = os.path.join(tmp, be)
    os.makedirs(base)
    info = {"name": be, "title": BACKEND_TITLE[be]}
    if be == "dir":
        root = _dir(base, cleanups, info)
    elif be == "xfs":
        root = _xfs(base, cleanups, info)
    elif be == "bindfs":
        root = _bindfs(base, cleanups, info)
    else:
        root = _gluster(be, base, cleanups, info, gluster_dir)
    ws = os.path.join(root, f"sparsefs-bench-{os.getpid()}")
    os.makedirs(ws)
    cleanups.push(f"{be} workspace", lambda: remove_tree(ws))
    info.update(probe(ws))
    verify_via = None
    if be == "bindfs":
        # verify what bindfs stored by reading the directory under it (plain ext4: fast,
        # SEEK_DATA works) instead of through bindfs's 4 KiB FUSE reads
        verify_via = (root, os.path.join(base, "src"))
    notes = []
    if be == "gluster-shard" and info.get("seek_data"):
        notes.append(f"{be}: SEEK_DATA works on this volume, so it is probably not sharded")
    if be == "gluster" and not info.get("seek_data"):
        notes.append(f"{be}: SEEK_DATA fails on this volume, so it is probably sharded")
    log(f"backend {be}: workspace {ws}; SEEK_DATA={'yes' if info['seek_data'] else 'no'}, "
        f"punch={'yes' if info['punch'] else 'no'}")
    return Workspace(ws, info, notes, verify_via)
