"""The run: per backend and scenario, timed runs and one strace run per variant, recorded."""

import datetime
import hashlib
import os
import shutil
import subprocess
import tempfile
import time

from .backends import bring_up
from .common import SIZES, BenchError, fmt_bytes, fmt_s, log, median
from .files import files_equal
from .inputs import prepare_inputs
from .mounts import RunMount, flatten, stats_diff, stats_io_calls, stats_json
from .proc import CleanupStack, DaemonTrace, cpu_rss, drop_caches, first_line, remove_tree
from .readsparse import run_read_sparse
from .scenarios import build_scenarios
from .straceparse import parse_strace, strace_prefix


class Laps:
    """Seconds spent in each phase of one execution, into `phases` (a run record's phase_s)."""

    def __init__(self, phases):
        self.phases = phases
        self.last = time.monotonic()

    def __call__(self, name):
        now = time.monotonic()
        self.phases[name] = round(now - self.last, 3)
        self.last = now


class Harness:
    """Runs the selected scenarios on the selected backends; collects records and failures."""

    def __init__(self, args):
        self.args = args
        self.q = args.quick
        self.cleanups = CleanupStack()
        self.records = []
        self.failures = []
        self.backend_info = {}
        self.notes = []
        self.t_start = time.time()
        self.trust_seek = False
        self.verify_via = None

    def sizes(self):
        return SIZES[self.args.size]

    # ---------------------------------------------------------------- main loop
    def run(self):
        self.tmp = tempfile.mkdtemp(prefix="sparsefs-bench-", dir="/tmp")
        self.cleanups.push("temp dir", lambda: remove_tree(self.tmp))
        self.local = os.path.join(self.tmp, "local")
        os.makedirs(self.local)
        self.install_binary()
        prepare_inputs(self)
        scen = build_scenarios()
        for be in self.backends:
            self.run_backend(be, scen)

    def install_binary(self):
        """Copies --sparsefs into the temp dir (a rebuild during the run does not matter)."""
        a = self.args
        bindir = os.path.join(self.tmp, "bin")
        os.makedirs(bindir)
        self.bin = os.path.join(bindir, "sparsefs")
        shutil.copy2(a.sparsefs, self.bin)
        self.sparsefs_version = first_line([self.bin, "--version"])
        with open(self.bin, "rb") as f:
            self.sparsefs_sha256 = hashlib.sha256(f.read()).hexdigest()
        self.sparsefs_mtime = datetime.datetime.fromtimestamp(os.stat(a.sparsefs).st_mtime).isoformat(
            timespec="seconds")
        log(f"sparsefs {a.sparsefs} ({self.sparsefs_version}) copied to {self.bin}; temp dir {self.tmp}")

    def run_backend(self, be, scen):
        t_be = time.monotonic()
        mark = len(self.cleanups)
        try:
            w = bring_up(be, self.tmp, self.cleanups, self.args.gluster_dir)
            self.trust_seek, self.verify_via = w.trust_seek, w.verify_via
            self.notes.extend(w.notes)
            self.backend_info[be] = w.info
            ws = w.ws
            if "smallfiles" in self.scenarios:
                self.make_lsdir(ws)
            for name in self.scenarios:
                sc = scen[name]
                t = time.monotonic()
                if name == "read-sparse":
                    run_read_sparse(self, sc, be, ws)
                else:
                    self.run_generic(sc, be, ws)
                log(f"{be} {name}: {time.monotonic() - t:.1f} s")
        except (BenchError, OSError, subprocess.SubprocessError) as e:
            log(f"backend {be}: FAILED: {e}")
            self.failures.append(f"backend {be}: {e}")
        finally:
            self.cleanups.unwind_to(mark)
        log(f"backend {be} done in {time.monotonic() - t_be:.1f} s")

    def same(self, out, src):
        """Is backend file `out` byte-for-byte equal to local `src` (None: all zeros)?"""
        if self.verify_via and (out + "/").startswith(self.verify_via[0] + "/"):
            return files_equal(self.verify_via[1] + out[len(self.verify_via[0]):], src, True)
        return files_equal(out, src, self.trust_seek)

    def make_lsdir(self, ws):
        n = self.sizes()["ls_entries"]
        d = os.path.join(ws, "lsdir")
        t = time.monotonic()
        os.makedirs(d)
        for i in range(n):
            os.close(os.open(os.path.join(d, f"e{i:06d}"), os.O_WRONLY | os.O_CREAT, 0o644))
        log(f"created {n} entries for ls in {time.monotonic() - t:.1f} s")

    # ---------------------------------------------------------------- one scenario
    def run_generic(self, sc, be, ws):
        for case in sc.cases(self):
            variants = sc.variants(self, be, case)
            recs = {v.slug: [] for v in variants}
            traces = {}
            sc.setup_case(self, case, be, ws)
            for r in range(self.runs):
                for v in variants:
                    rec = self.execute(sc, case, be, ws, v, r + 1, False)
                    self.report_run(sc, case, be, v, rec)
                    recs[v.slug].append(rec)
            for v in variants:
                if v.kind == "bindfs":
                    # strace of the workload on the bindfs mount sees exactly the calls of the
                    # direct variant (same application, same calls): not run again
                    traces[v.slug] = {"ok": True, "strace": True, "skipped": "same application calls as direct"}
                    continue
                if v.kind == "peer" and self.q:
                    # --quick keeps the smoke test short: peers' calls are traced in full runs
                    traces[v.slug] = {"ok": True, "strace": True, "skipped": "quick mode: peers are traced in full runs"}
                    continue
                rec = self.execute(sc, case, be, ws, v, 0, True)
                self.report_run(sc, case, be, v, rec)
                traces[v.slug] = rec
            for v in variants:
                self.add_record(sc, case, be, v, recs[v.slug], traces[v.slug])

    def report_run(self, sc, case, be, v, rec):
        tag = f"{be:<13} {sc.name}{'/' + case if case else ''} {v.kind}:{v.label}"
        kind = "strace" if rec["strace"] else f"run {rec['run']}"
        extra = ""
        if rec.get("trace"):
            t = rec["trace"]
            extra = f" backend I/O calls {t['io_calls']} (writes {t['calls']['write']})"
        elif rec.get("alloc_bytes") is not None:
            extra = f" alloc {fmt_bytes(rec['alloc_bytes'])}"
        status = "ok" if rec["ok"] else f"FAILED: {rec.get('error')}"
        log(f"{tag} {kind}: {fmt_s(rec.get('wall_s'))} s{extra} {status}")
        if not rec["ok"]:
            self.failures.append(f"{be} {sc.name}{'/' + case if case else ''} {v.kind}:{v.label} "
                                 f"({kind}): {rec.get('error')}")

    def add_record(self, sc, case, be, v, runs, trace):
        """One record per (scenario, case, backend, variant): medians of the timed runs, the strace run."""
        amount, unit = sc.logical(self, case)
        ideal = sc.ideal(self, case)
        rec = {
            "scenario": sc.name, "case": case or "", "backend": be, "variant": v.kind,
            "label": v.label, "slug": v.slug, "command": sc.describe(self, case, v),
            "logical": amount, "logical_unit": unit, "ideal_bytes": ideal,
            "runs": runs, "strace_run": trace,
            "ok": all(r["ok"] for r in runs) and trace["ok"],
        }
        ok_runs = [r for r in runs if r["ok"]]
        m = {}
        m["wall_s"] = median([r.get("wall_s") for r in ok_runs])
        m["sync_s"] = median([r.get("sync_s") for r in ok_runs])
        m["umount_s"] = median([r.get("umount_s") for r in ok_runs])
        m["throughput"] = amount / m["wall_s"] if m["wall_s"] else None
        m["alloc_bytes"] = median([r.get("alloc_bytes") for r in ok_runs])
        m["size"] = median([r.get("size") for r in ok_runs])
        m["daemon_cpu_s"] = median([r.get("daemon_cpu_s") for r in ok_runs])
        m["daemon_rss_kib"] = median([r.get("daemon_rss_kib") for r in ok_runs])
        if v.kind == "sparsefs":
            flat = [flatten(r.get("stats")) for r in ok_runs if r.get("stats")]
            keys = sorted({k for f in flat for k in f})
            m["stats"] = {k: median([f.get(k) for f in flat]) for k in keys}
            m["stats_io_calls"] = median([stats_io_calls(r.get("stats")) for r in ok_runs])
            if trace.get("stats"):
                rec["strace_run_stats"] = flatten(trace["stats"])
        rec["median"] = m
        self.records.append(rec)

    # ---------------------------------------------------------------- one execution
    def execute(self, sc, case, be, ws, v, run_no, traced):
        """Runs one workload in one variant; returns a run record."""
        rec = {"run": run_no, "strace": traced, "ok": True}
        outname = f"out-{v.slug}"
        out_backend = os.path.join(ws, outname)
        remove_tree(out_backend)
        mnt = os.path.join(self.tmp, "mnt")
        mount = None
        trace_file = os.path.join(self.tmp, "trace.txt")
        if os.path.exists(trace_file):
            os.unlink(trace_file)
        rec["phase_s"] = {}
        lap = Laps(rec["phase_s"])
        try:
            if v.kind in ("sparsefs", "bindfs"):
                mount = RunMount(self.bin, self.cleanups, v.kind, ws, mnt, v.mount_args)
                view = mnt
            else:
                view = ws
            dest = os.path.join(view, outname)
            os.mkdir(dest)
            lap("mount")
            sc.prepare(self, case, v, view, dest)
            argv = sc.command(self, case, v, view, dest)
            daemon = mount.pid if mount else None
            before = stats_json(self.bin, mnt) if v.kind == "sparsefs" else None
            cpu0, _ = cpu_rss(daemon) if daemon else (None, None)
            p, wall = self._workload(sc, v, argv, daemon, traced, trace_file, lap)
            lap("workload")
            rec["wall_s"] = wall
            rec["exit"] = p.returncode
            if p.returncode != 0:
                rec["ok"] = False
                rec["error"] = f"exit {p.returncode}: {p.stderr.strip()[-400:]}"
            if v.kind == "sparsefs":
                after = stats_json(self.bin, mnt)
                rec["stats"] = stats_diff(after, before)
                if after and after.get("dirty_bytes"):
                    rec["dirty_bytes_at_end"] = after["dirty_bytes"]
            if daemon:
                cpu, rss = cpu_rss(daemon)
                rec["daemon_cpu_s"] = cpu
                rec["daemon_cpu_workload_s"] = (cpu - cpu0) if cpu is not None and cpu0 is not None else None
                rec["daemon_rss_kib"] = rss
                rec["umount_s"] = mount.unmount()
            lap("stats_umount")
            self._check(sc, case, v, rec, out_backend, view, ws, trace_file, traced, lap)
        except subprocess.TimeoutExpired as e:
            rec["ok"] = False
            rec["error"] = f"timeout after {e.timeout} s"
        except BenchError as e:
            rec["ok"] = False
            rec["error"] = str(e)
        finally:
            if mount:
                mount.close(lambda e: log(f"unmount: {e}"))
            remove_tree(out_backend)
            lap("cleanup")
        return rec

    def _workload(self, sc, v, argv, daemon, traced, trace_file, lap):
        """Runs the workload command (under strace if `traced`); returns (process, wall seconds)."""
        tracer = None
        if traced:
            if v.kind == "sparsefs":
                tracer = DaemonTrace(daemon, trace_file)
                ttok = self.cleanups.push("strace", tracer.stop)
            else:
                argv = strace_prefix(trace_file) + argv
        stdout = open(os.path.join(self.tmp, "stdout.txt"), "w")
        lap("prepare")
        try:
            if sc.drop_caches:
                drop_caches()
            t0 = time.monotonic()
            p = subprocess.run(argv, cwd=self.local, stdout=stdout, stderr=subprocess.PIPE,
                               text=True, timeout=self.args.timeout)
            wall = time.monotonic() - t0
        finally:
            stdout.close()
        if tracer:
            self.cleanups.run(ttok)
        return p, wall

    def _check(self, sc, case, v, rec, out_backend, view, ws, trace_file, traced, lap):
        """After the workload and unmount: sync (timed), backend calls, verification, allocation."""
        t0 = time.monotonic()
        os.sync()
        rec["sync_s"] = time.monotonic() - t0
        lap("sync")
        if traced:
            # bindfs: the workload's calls on the bindfs mount (tracing the bindfs daemon, which
            # gets 4 KiB FUSE writes, costs minutes); all others: calls on the backend workspace
            rec["trace"] = parse_strace(trace_file, view if v.kind == "bindfs" else ws)
            lap("parse_strace")
        if rec["ok"]:
            err = sc.verify(self, case, v, out_backend)
            lap("verify")
            if err:
                rec["ok"] = False
                rec["error"] = "verify: " + err
        res = sc.result_file(self, case, out_backend)
        if res and os.path.exists(res):
            st = os.stat(res)
            rec["size"] = st.st_size
            rec["alloc_bytes"] = st.st_blocks * 512
