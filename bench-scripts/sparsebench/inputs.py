"""The workloads' local inputs (sparse images, tarball, qcow2, checkpoint reference, random data)."""

import os
import shutil
import sys
import time

from .common import MiB, log
from .files import make_image
from .proc import sh

WORKLOADS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workloads")
IMAGE_SCENARIOS = {"cp-never", "rsync-S", "rsync-plain", "rsync-inplace", "tar-x", "qemu-convert", "sweep"}


def install_workload(name, dest):
    """Copies the workload script `name` (sparsebench/workloads/) to `dest`."""
    shutil.copyfile(os.path.join(WORKLOADS, name), dest)


def prepare_inputs(h):
    """Makes the local inputs of the scenarios in h.scenarios under h.local; sets h.inputs (for
    results.json) and the paths the scenarios use (h.img, h.ckpt_py, ...)."""
    s = h.sizes()
    L = h.local
    need = set(h.scenarios)
    h.inputs = {}
    t = time.monotonic()
    if need & IMAGE_SCENARIOS:
        h.img = os.path.join(L, "img.raw")
        data = make_image(h.img, s["image"], s["image_extents"], 1)
        h.inputs["image"] = {"path": "img.raw", "size": s["image"], "data_bytes": data,
                             "extents": s["image_extents"], "extent_size": MiB, "alignment": 4096}
    if "rsync-inplace" in need:
        h.old_img = os.path.join(L, "old", "img.raw")
        os.makedirs(os.path.dirname(h.old_img))
        make_image(h.old_img, s["image"], s["image_extents"], 2)
        os.utime(h.old_img, (1_100_000_000, 1_100_000_000))
    if "tar-x" in need:
        h.tarball = os.path.join(L, "img.tar")
        sh(["tar", "-cf", h.tarball, "-C", L, "img.raw"])
        h.inputs["tar"] = {"size": os.path.getsize(h.tarball), "made_with": "tar -cf (no -S)"}
    if "qemu-convert" in need:
        h.qcow = os.path.join(L, "img.qcow2")
        sh(["qemu-img", "convert", "-O", "qcow2", h.img, h.qcow])
        h.inputs["qcow2"] = {"size": os.path.getsize(h.qcow)}
    if "read-sparse" in need:
        h.iocount_py = os.path.join(L, "iocount.py")
        install_workload("iocount.py", h.iocount_py)
        h.rs_img = os.path.join(L, "rs", "rs.raw")
        os.makedirs(os.path.dirname(h.rs_img))
        n = max(1, round(s["rs_image"] * s["rs_fraction"] / MiB))
        data = make_image(h.rs_img, s["rs_image"], n, 3)
        h.inputs["rs_image"] = {"size": s["rs_image"], "data_bytes": data, "extents": n}
    if "checkpoint" in need:
        h.ckpt_py = os.path.join(L, "ckpt.py")
        install_workload("checkpoint.py", h.ckpt_py)
        h.ckpt_pool = os.path.join(L, "ckpt.pool")
        with open(h.ckpt_pool, "wb") as f:
            f.write(os.urandom(16 * MiB))
        h.ckpt_ref = os.path.join(L, "ckpt.ref")
        sh([sys.executable, h.ckpt_py, h.ckpt_ref, h.ckpt_pool, str(s["ckpt"]), "1"])
        data = 0
        with open(h.ckpt_ref, "rb") as f:
            zero = bytes(MiB)
            while True:
                b = f.read(MiB)
                if not b:
                    break
                data += 0 if b == zero[:len(b)] else len(b)
        h.inputs["checkpoint"] = {"size": s["ckpt"], "data_bytes": data, "writers": 4,
                                  "block": 4 * MiB, "sub_chunk": MiB}
    if "dense" in need:
        h.rand = f"/dev/shm/sparsefs-bench-{os.getpid()}.rand"
        h.cleanups.push("dense source", lambda: os.path.exists(h.rand) and os.unlink(h.rand))
        with open(h.rand, "wb") as f:
            for _ in range(s["dense"] // (16 * MiB)):
                f.write(os.urandom(16 * MiB))
        h.inputs["dense"] = {"size": s["dense"], "source": "/dev/shm"}
    if "smallfiles" in need:
        h.sf_py = os.path.join(L, "smallfiles.py")
        install_workload("smallfiles.py", h.sf_py)
    if "dd-zeros" in need:
        h.inputs["zeros"] = {"size": s["zeros_mib"] * MiB}
    log(f"inputs ready in {time.monotonic() - t:.1f} s")
