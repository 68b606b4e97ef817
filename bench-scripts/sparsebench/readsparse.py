"""The read-sparse scenario's runner: write an image through sparsefs, read it back two ways."""

import json
import os
import subprocess
import sys
import time

from .common import BenchError, log
from .files import files_equal
from .mounts import RunMount, stats_diff, stats_json
from .proc import DaemonTrace, cpu_rss, drop_caches, remove_tree, sh
from .scenarios import Scenario, Variant
from .straceparse import IO_KINDS, READ_CALLS, parse_strace

CASES = ["cp --sparse=auto", "tar -S -c"]


class ReadSparseCase(Scenario):
    """How a read-sparse record is described and sized (its runs are not the generic ones)."""

    def __init__(self, sc, s):
        self.name = sc.name
        self.s = s

    def describe(self, h, case, v):
        where = "MNT/rs" if v.kind in ("sparsefs", "bindfs") else "BACKEND/rs"
        if case.startswith("cp"):
            return f"cp --sparse=auto {where}/rs.raw LOCAL/rs.raw"
        return f"tar -S -cf LOCAL/rs.tar -C {where} rs.raw"

    def logical(self, h, case):
        return h.inputs["rs_image"]["size"], "B"

    def ideal(self, h, case):
        return h.inputs["rs_image"]["data_bytes"]


def read_argv(case, src_dir, out):
    if case.startswith("cp"):
        return ["cp", "--sparse=auto", os.path.join(src_dir, "rs.raw"), os.path.join(out, "rs.raw")]
    return ["tar", "-S", "-cf", os.path.join(out, "rs.tar"), "-C", src_dir, "rs.raw"]


def untraced_reads_argv(trace_file, iocount_py, io_file, argv):
    """A reader on a backend without SEEK_DATA can make millions of small reads (tar -S: 2 per
    KiB): its reads are counted from /proc/PID/io of the reader and everything else is traced
    (--seccomp-bpf: reads do not stop)."""
    return (["strace", "-f", "-C", "-y", "-s", "0", "-qq", "--seccomp-bpf", "-e",
             "trace=!" + ",".join(sorted(READ_CALLS)), "-o", trace_file, "--",
             sys.executable, iocount_py, io_file] + argv)


class ReadSparseRun:
    """read-sparse on one backend: per run and variant, (sparsefs: write the image through a
    fresh mount, untimed) then each read case, page cache dropped first."""

    def __init__(self, h, sc, be, ws):
        self.h, self.sc, self.be, self.ws = h, sc, be, ws
        # (reading through bindfs is what the direct variant does on the bindfs backend)
        self.variants = [Variant("sparsefs", "sparsefs (same mount that wrote it)"),
                         Variant("direct", "backend directly")]
        self.rsdir = os.path.join(ws, "rs")
        self.backend_file = os.path.join(self.rsdir, "rs.raw")
        self.recs = {(c, v.slug): [] for c in CASES for v in self.variants}
        self.traces = {}
        self.mnt = os.path.join(h.tmp, "mnt")
        self.out = os.path.join(h.local, "rs-out")
        self.verified_write = False

    def run(self):
        h = self.h
        os.makedirs(self.rsdir, exist_ok=True)
        plan = [(r + 1, False) for r in range(h.runs)] + [(0, True)]
        for run_no, traced in plan:
            for v in self.variants:
                self.run_variant(v, run_no, traced)
        remove_tree(self.out)
        remove_tree(self.rsdir)
        s = h.sizes()
        for case in CASES:
            for v in self.variants:
                if (case, v.slug) in self.traces:
                    h.add_record(ReadSparseCase(self.sc, s), case, self.be, v, self.recs[(case, v.slug)],
                                 self.traces[(case, v.slug)])

    def run_variant(self, v, run_no, traced):
        h, be = self.h, self.be
        mount = None
        try:
            if v.kind == "sparsefs":
                remove_tree(self.backend_file)
                mount = RunMount(h.bin, h.cleanups, "sparsefs", self.ws, self.mnt)
                p = sh(["cp", "--sparse=never", h.rs_img, os.path.join(self.mnt, "rs", "rs.raw")], check=False)
                if p.returncode != 0:
                    raise BenchError(f"writing the image through sparsefs: {p.stderr.strip()}")
                view = self.mnt
            elif v.kind == "bindfs":
                mount = RunMount(h.bin, h.cleanups, "bindfs", self.ws, self.mnt)
                view = self.mnt
            else:
                view = self.ws
            daemon = mount.pid if mount else None
            for case in CASES:
                rec = self.read_case(v, case, view, daemon, run_no, traced)
                h.report_run(self.sc, case, be, v, rec)
                if traced:
                    self.traces[(case, v.slug)] = rec
                else:
                    self.recs[(case, v.slug)].append(rec)
            if daemon:
                mount.unmount()
            if v.kind == "sparsefs" and not self.verified_write:
                self.verified_write = True
                if not h.same(self.backend_file, h.rs_img):
                    h.failures.append(f"{be} read-sparse: the image written through sparsefs "
                                      f"differs from its source on the backend")
        except BenchError as e:
            h.failures.append(f"{be} read-sparse {v.kind}: {e}")
            log(f"{be} read-sparse {v.kind}: FAILED: {e}")
        finally:
            if mount:
                mount.close(lambda e: None)

    def read_case(self, v, case, view, daemon, run_no, traced):
        """One timed read of the image (`case`) in variant `v`; returns its run record."""
        h, out, mnt = self.h, self.out, self.mnt
        rec = {"run": run_no, "strace": traced, "ok": True}
        remove_tree(out)
        os.makedirs(out)
        argv = read_argv(case, os.path.join(view, "rs"), out)
        trace_file = os.path.join(h.tmp, "trace.txt")
        if os.path.exists(trace_file):
            os.unlink(trace_file)
        tracer = None
        before = stats_json(h.bin, mnt) if v.kind == "sparsefs" else None
        drop_caches()
        if traced:
            if v.kind == "sparsefs":
                tracer = DaemonTrace(daemon, trace_file)
                ttok = h.cleanups.push("strace", tracer.stop)
            else:
                io_file = os.path.join(h.tmp, "io.json")
                argv = untraced_reads_argv(trace_file, h.iocount_py, io_file, argv)
        t0 = time.monotonic()
        p = subprocess.run(argv, cwd=h.local, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, timeout=h.args.timeout)
        rec["wall_s"] = time.monotonic() - t0
        if tracer:
            tracer.stop()
            h.cleanups.run(ttok)
        if p.returncode != 0:
            rec["ok"] = False
            rec["error"] = f"exit {p.returncode}: {p.stderr.strip()[-300:]}"
        if v.kind == "sparsefs":
            rec["stats"] = stats_diff(stats_json(h.bin, mnt), before)
        if daemon:
            rec["daemon_cpu_s"], rec["daemon_rss_kib"] = cpu_rss(daemon)
        if traced:
            rec["trace"] = parse_strace(trace_file, view if v.kind == "bindfs" else self.ws)
            if v.kind != "sparsefs":
                with open(io_file) as f:
                    io = json.load(f)
                t = rec["trace"]
                t["calls"]["read"] = io["syscr"]
                t["read_bytes"] = io["rchar"]
                t["io_calls"] = sum(t["calls"][k] for k in IO_KINDS)
                t["reads_from"] = "/proc/PID/io of the reader (all its read syscalls)"
        if rec["ok"]:
            self.verify_copy(case, rec)
        st = os.stat(self.backend_file)
        rec["size"], rec["alloc_bytes"] = st.st_size, st.st_blocks * 512
        return rec

    def verify_copy(self, case, rec):
        """The copy read back (extracted first for tar) must equal the image."""
        h, out = self.h, self.out
        if case.startswith("cp"):
            ok = files_equal(os.path.join(out, "rs.raw"), h.rs_img, True)
            st = os.stat(os.path.join(out, "rs.raw"))
            rec["local_alloc_bytes"] = st.st_blocks * 512
        else:
            x = os.path.join(out, "x")
            os.makedirs(x)
            ok = subprocess.run(["tar", "-xf", os.path.join(out, "rs.tar"), "-C", x],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
            ok = ok and files_equal(os.path.join(x, "rs.raw"), h.rs_img, True)
            rec["archive_bytes"] = os.path.getsize(os.path.join(out, "rs.tar"))
        if not ok:
            rec["ok"] = False
            rec["error"] = "verify: the copy read back differs from the image"


def run_read_sparse(h, sc, be, ws):
    ReadSparseRun(h, sc, be, ws).run()
