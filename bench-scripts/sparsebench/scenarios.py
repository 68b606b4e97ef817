"""The scenarios: per scenario its workload command, peers (best sparse tools), verification, sizes."""

import os
import re
import shlex
import sys

from .common import SWEEP_BLOCKS, MiB
from .proc import sh


class Variant:
    """One way of running a scenario's workload: through sparsefs, direct, through bindfs, or a peer."""

    def __init__(self, kind, label, command=None, mount_args=None, case=None):
        self.kind = kind          # sparsefs | direct | bindfs | peer
        self.label = label        # shown in tables
        self.command = command    # for peers: fn(view, dest) -> argv
        self.mount_args = mount_args or []
        self.slug = re.sub(r"[^a-zA-Z0-9]+", "-", f"{kind}-{label}").strip("-")


class Scenario:
    """A workload and how to judge its result; `h` is the Harness (inputs, sizes, backend info)."""

    name = ""
    drop_caches = False
    output = None          # file name of the result inside dest

    def cases(self, h):
        return [""]

    def setup_case(self, h, case, be, ws):
        pass

    def peers(self, h, be, case):
        return []

    def variants(self, h, be, case):
        vs = [Variant("sparsefs", "sparsefs"), Variant("direct", "direct")]
        if be in ("dir", "xfs"):
            vs.append(Variant("bindfs", "bindfs"))
        return vs + self.peers(h, be, case)

    def prepare(self, h, case, v, view, dest):
        pass

    def workload(self, h, case, view, dest):
        raise NotImplementedError

    def command(self, h, case, v, view, dest):
        if v.kind == "peer":
            return v.command(view, dest)
        return self.workload(h, case, view, dest)

    def describe(self, h, case, v):
        argv = self.command(h, case, v, "MNT" if v.kind in ("sparsefs", "bindfs") else "BACKEND", "DEST")
        return shlex.join(argv).replace(h.local, "SRC").replace(h.tmp, "TMP").replace(sys.executable, "python3")

    def result_file(self, h, case, out_backend):
        return os.path.join(out_backend, self.output) if self.output else None

    def verify(self, h, case, v, out_backend):
        return None

    def logical(self, h, case):
        return h.inputs["image"]["size"], "B"

    def ideal(self, h, case):
        return h.inputs["image"]["data_bytes"]


def sh_c(*cmds):
    return ["sh", "-c", " && ".join(shlex.join(c) for c in cmds)]


class ImageCopy(Scenario):
    output = "img.raw"

    def verify(self, h, case, v, out_backend):
        f = os.path.join(out_backend, "img.raw")
        if not os.path.exists(f):
            return "no output file"
        if not h.same(f, h.img):
            return "output differs from the source image"
        return None


class DdZeros(Scenario):
    name = "dd-zeros"
    output = "zeros.raw"

    def workload(self, h, case, view, dest):
        n = h.sizes()["zeros_mib"]
        return ["dd", "if=/dev/zero", f"of={dest}/zeros.raw", "bs=1M", f"count={n}", "status=none"]

    def peers(self, h, be, case):
        n = h.sizes()["zeros_mib"]
        return [Variant("peer", "dd conv=sparse", lambda view, dest: [
            "dd", "if=/dev/zero", f"of={dest}/zeros.raw", "bs=1M", f"count={n}", "conv=sparse", "status=none"])]

    def verify(self, h, case, v, out_backend):
        f = os.path.join(out_backend, "zeros.raw")
        n = h.sizes()["zeros_mib"] * MiB
        if not os.path.exists(f) or os.path.getsize(f) != n:
            return f"size {os.path.getsize(f) if os.path.exists(f) else None} != {n}"
        if not h.same(f, None):
            return "output is not all zeros"
        return None

    def logical(self, h, case):
        return h.sizes()["zeros_mib"] * MiB, "B"

    def ideal(self, h, case):
        return 0


class CpNever(ImageCopy):
    name = "cp-never"

    def workload(self, h, case, view, dest):
        return ["cp", "--sparse=never", h.img, f"{dest}/img.raw"]

    def peers(self, h, be, case):
        return [Variant("peer", "cp --sparse=always",
                        lambda view, dest: ["cp", "--sparse=always", h.img, f"{dest}/img.raw"])]


class RsyncS(ImageCopy):
    name = "rsync-S"

    def workload(self, h, case, view, dest):
        return ["rsync", "-S", h.img, f"{dest}/"]

    def peers(self, h, be, case):
        return [Variant("peer", "cp --sparse=always",
                        lambda view, dest: ["cp", "--sparse=always", h.img, f"{dest}/img.raw"])]


class RsyncPlain(ImageCopy):
    name = "rsync-plain"

    def workload(self, h, case, view, dest):
        return ["rsync", h.img, f"{dest}/"]

    def peers(self, h, be, case):
        return [Variant("peer", "rsync -S", lambda view, dest: ["rsync", "-S", h.img, f"{dest}/"])]


class RsyncInplace(ImageCopy):
    name = "rsync-inplace"

    def prepare(self, h, case, v, view, dest):
        # an older version of the image (other extents) is already there, written the same way
        sh(["cp", "--sparse=always", h.old_img, f"{dest}/img.raw"])

    def workload(self, h, case, view, dest):
        return ["rsync", "--inplace", h.img, f"{dest}/img.raw"]

    def peers(self, h, be, case):
        return [Variant("peer", "rsync -S --inplace",
                        lambda view, dest: ["rsync", "-S", "--inplace", h.img, f"{dest}/img.raw"])]


class TarX(ImageCopy):
    name = "tar-x"

    def workload(self, h, case, view, dest):
        return ["tar", "-xf", h.tarball, "-C", dest]

    def peers(self, h, be, case):
        if not h.backend_info[be].get("punch"):
            return []
        return [Variant("peer", "tar -x + fallocate --dig-holes", lambda view, dest: sh_c(
            ["tar", "-xf", h.tarball, "-C", dest], ["fallocate", "--dig-holes", f"{dest}/img.raw"]))]


class QemuConvert(ImageCopy):
    name = "qemu-convert"

    def workload(self, h, case, view, dest):
        return ["qemu-img", "convert", "-O", "raw", h.qcow, f"{dest}/img.raw"]

    def peers(self, h, be, case):
        size = str(h.inputs["image"]["size"])
        return [Variant("peer", "qemu-img convert -n --target-is-zero", lambda view, dest: sh_c(
            ["truncate", "-s", size, f"{dest}/img.raw"],
            ["qemu-img", "convert", "-n", "--target-is-zero", "-O", "raw", h.qcow, f"{dest}/img.raw"]))]


class Checkpoint(Scenario):
    name = "checkpoint"
    output = "ckpt.bin"

    def workload(self, h, case, view, dest):
        return [sys.executable, h.ckpt_py, f"{dest}/ckpt.bin", h.ckpt_pool, str(h.sizes()["ckpt"]), "4"]

    def peers(self, h, be, case):
        if not h.backend_info[be].get("punch"):
            return []
        return [Variant("peer", "same writer + fallocate --dig-holes", lambda view, dest: sh_c(
            self.workload(h, case, view, dest), ["fallocate", "--dig-holes", f"{dest}/ckpt.bin"]))]

    def verify(self, h, case, v, out_backend):
        f = os.path.join(out_backend, "ckpt.bin")
        if not os.path.exists(f) or not h.same(f, h.ckpt_ref):
            return "checkpoint differs from the reference"
        return None

    def logical(self, h, case):
        return h.sizes()["ckpt"], "B"

    def ideal(self, h, case):
        return h.inputs["checkpoint"]["data_bytes"]


class Dense(Scenario):
    name = "dense"
    output = "dense.bin"

    def workload(self, h, case, view, dest):
        return ["dd", f"if={h.rand}", f"of={dest}/dense.bin", "bs=1M", "status=none"]

    def peers(self, h, be, case):
        return [Variant("peer", "dd conv=sparse", lambda view, dest: [
            "dd", f"if={h.rand}", f"of={dest}/dense.bin", "bs=1M", "conv=sparse", "status=none"])]

    def verify(self, h, case, v, out_backend):
        f = os.path.join(out_backend, "dense.bin")
        if not os.path.exists(f) or not h.same(f, h.rand):
            return "output differs from the random source"
        return None

    def logical(self, h, case):
        return h.sizes()["dense"], "B"

    def ideal(self, h, case):
        return h.sizes()["dense"]


class SmallFiles(Scenario):
    name = "smallfiles"

    def cases(self, h):
        s = h.sizes()
        return [f"create+stat+unlink {s['small_files']}", f"ls -f {s['ls_entries']}",
                f"ls -l {s['ls_entries']}"]

    def workload(self, h, case, view, dest):
        if case.startswith("ls -l"):
            # every entry looked up and stat-ed (readdirplus where the mount has it)
            return ["ls", "-l", os.path.join(view, "lsdir")]
        if case.startswith("ls"):
            return ["ls", "-f", os.path.join(view, "lsdir")]
        return [sys.executable, h.sf_py, f"{dest}/sf", str(h.sizes()["small_files"])]

    def verify(self, h, case, v, out_backend):
        if case.startswith("ls"):
            with open(os.path.join(h.tmp, "stdout.txt")) as f:
                n = sum(1 for _ in f)
            # ls -f: the entries, . and ..; ls -l: a "total" line and the entries
            want = h.sizes()["ls_entries"] + (1 if case.startswith("ls -l") else 2)
            return None if n == want else f"{case.split()[0]} {case.split()[1]} listed {n} lines, expected {want}"
        d = os.path.join(out_backend, "sf")
        if not os.path.isdir(d):
            return "directory missing"
        left = os.listdir(d)
        return f"{len(left)} files left after unlink" if left else None

    def logical(self, h, case):
        s = h.sizes()
        return (s["ls_entries"], "entries") if case.startswith("ls") else (s["small_files"], "files")

    def ideal(self, h, case):
        return None


class ReadSparse(Scenario):
    """Run by readsparse.py: the image is written through sparsefs, then read back."""

    name = "read-sparse"
    drop_caches = True


class Sweep(CpNever):
    name = "sweep"

    def cases(self, h):
        return SWEEP_BLOCKS

    def variants(self, h, be, case):
        return [Variant("sparsefs", f"sparsefs --sparse-block {case}", mount_args=["--sparse-block", case])]


def build_scenarios():
    return {sc.name: sc for sc in (DdZeros(), CpNever(), RsyncS(), RsyncPlain(), RsyncInplace(), TarX(),
                                   QemuConvert(), Checkpoint(), Dense(), SmallFiles(), ReadSparse(), Sweep())}
