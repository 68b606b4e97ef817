"""The command line of bench-scripts/run: options, checks, signals, the run and its outputs."""

import argparse
import datetime
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

from .backends import gluster_running, glusterfs_mounts
from .common import (ALL_BACKENDS, ALL_SCENARIOS, DEFAULT_BACKENDS, QUICK_BACKENDS, REMOTENESS, REPO,
                     SIZES, BenchError, log, remote_name)
from .harness import Harness
from .report import derive, machine_info, report_only, write_outputs

TOOLS = ("strace", "cmp", "rsync", "tar", "dd", "cp", "bindfs", "qemu-img", "fallocate", "fusermount3")
VM_MEMORY = os.path.join(REPO, "bench-scripts", "vm-memory.sh")


def build_parser():
    ap = argparse.ArgumentParser(description="sparsefs benchmark harness (see docs/benchmarks.md)")
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 run, dir+bindfs: a smoke test (<5 min)")
    ap.add_argument("--backend", action="append", choices=ALL_BACKENDS, help="repeatable")
    ap.add_argument("--scenario", action="append", choices=ALL_SCENARIOS, help="repeatable")
    ap.add_argument("--size", choices=list(SIZES), help="workload sizes (default full, quick with --quick; "
                    "medium halves every input)")
    ap.add_argument("--runs", type=int, help="timed runs per variant (default 3, quick 1)")
    ap.add_argument("--delay-us", action="append", type=int, metavar="N",
                    help="gluster-remote: every brick operation waits N µs (GlusterFS delay-gen), default 500; "
                         "repeatable: a latency sweep (e.g. 0 100 500 2000), one volume per delay")
    ap.add_argument("--gluster-dir", help="use this existing GlusterFS mount (a subdir is created and removed)")
    ap.add_argument("--sparsefs", default=os.path.join(REPO, "target", "release", "sparsefs"),
                    help="sparsefs binary (copied to a temp dir at start)")
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "bench"), help="results, CSV and plots")
    ap.add_argument("--md", help="Markdown report (default: docs/benchmarks.md, or OUT/benchmarks.md with --out)")
    ap.add_argument("--timeout", type=float, default=3600, help="per-workload timeout, s")
    ap.add_argument("--mount-opt", action="append", default=[], metavar="ARG",
                    help="extra argument of every sparsefs mount (repeatable), e.g. --mount-opt=--flush-depth=1")
    ap.add_argument("--report-only", metavar="RESULTS_JSON",
                    help="run nothing: regenerate CSV, plots and Markdown from an earlier results.json")
    ap.add_argument("--merge", action="append", metavar="RESULTS_JSON",
                    help="with --report-only: this later run's (backend, scenario) records replace the "
                         "earlier run's (repeatable)")
    return ap


def check_run_args(ap, a):
    """Checks a measuring run's options and tools (ap.error exits); returns (backends, scenarios)."""
    if os.geteuid() != 0:
        ap.error("must run as root (mounts, loop devices, drop_caches)")
    if not os.path.isfile(a.sparsefs) or not os.access(a.sparsefs, os.X_OK):
        ap.error(f"--sparsefs {a.sparsefs}: not an executable file")
    backends = list(dict.fromkeys(a.backend or (QUICK_BACKENDS if a.quick else DEFAULT_BACKENDS)))
    scenarios = [s for s in ALL_SCENARIOS if s in (a.scenario or ALL_SCENARIOS)]
    from . import mounts
    mounts.EXTRA_ARGS[:] = a.mount_opt
    if a.delay_us and "gluster-remote" not in backends:
        ap.error("--delay-us is for --backend gluster-remote")
    if any(d < 0 or d > 1_000_000 for d in a.delay_us or []):
        ap.error("--delay-us must be between 0 and 1000000")
    if "gluster-remote" in backends:
        delays = sorted(set(a.delay_us or [500]))
        i = backends.index("gluster-remote")
        backends[i:i + 1] = [remote_name(d) for d in delays]
        # the most remote first, for the report's headline
        REMOTENESS[:0] = [remote_name(d) for d in reversed(delays)]
    gl = [b for b in backends if b.startswith("gluster")]
    if a.gluster_dir and len(gl) > 1:
        ap.error("--gluster-dir serves one gluster backend: pass only one of gluster, gluster-shard, "
                 "gluster-remote with one --delay-us")
    if a.gluster_dir and not gl:
        ap.error("--gluster-dir given but no gluster backend selected (--backend gluster-shard)")
    for tool in TOOLS:
        if shutil.which(tool) is None:
            ap.error(f"{tool} not found (install it: apt-get install strace rsync bindfs qemu-utils fuse3)")
    if "xfs" in backends and shutil.which("mkfs.xfs") is None:
        ap.error("mkfs.xfs not found (apt-get install xfsprogs)")
    return backends, scenarios


def pause_vm_memory(h, a, machine):
    """A VM's free page reporting makes first touches of long-freed memory slow, which would
    time whichever variant allocates such memory: paused for the run, free memory touched once
    (not in --quick), restored at the end. bench-scripts/vm-memory.sh says why."""
    vm = subprocess.run([VM_MEMORY, "pause"] + (["0"] if a.quick else []), capture_output=True, text=True)
    vm_state = (vm.stdout.split() or ["none"])[-1] if vm.returncode == 0 else "none"
    machine["vm_page_reporting"] = "paused" if vm_state != "none" else "none"
    h.cleanups.push("vm memory", lambda: subprocess.run([VM_MEMORY, "restore", vm_state], check=False))


def run_with_cleanup(h, a, backends, scenarios, machine):
    """Runs the harness; everything it set up is undone also on failure, Ctrl-C or SIGTERM.
    Returns the exit status so far (130 interrupted, 1 harness error, else 0)."""
    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too, explicitly: a shell without job control starts background commands with
    # SIGINT ignored, and Python then keeps it ignored (kill -INT did nothing).
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    status = 0
    try:
        pause_vm_memory(h, a, machine)
        log(f"backends {backends}, scenarios {scenarios}, runs {h.runs}, sizes {a.size}"
            f"{' (quick)' if a.quick else ''}, VM page reporting {machine['vm_page_reporting']}")
        h.run()
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        status = 130
    except BenchError as e:
        log(f"error: {e}")
        h.failures.append(f"harness: {e}")
        status = 1
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        h.cleanups.unwind_to(0)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return status


def run_meta(h, a, backends, scenarios, machine, status):
    """results.json's "meta": what ran, where, with which binary and inputs."""
    with open("/proc/loadavg") as f:
        loadavg_end = f.read().split()[:3]
    return {
        "command": shlex.join(["bench-scripts/run"] + sys.argv[1:]),
        "quick": a.quick, "size": a.size, "sizes": SIZES[a.size], "runs": h.runs, "backends": backends,
        "scenarios": scenarios,
        "started": datetime.datetime.fromtimestamp(h.t_start).isoformat(timespec="seconds"),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "duration_s": time.time() - h.t_start, "machine": machine,
        "loadavg_end": loadavg_end,
        "sparsefs_path": a.sparsefs, "sparsefs_version": h.sparsefs_version,
        "sparsefs_sha256": getattr(h, "sparsefs_sha256", None), "sparsefs_mtime": getattr(h, "sparsefs_mtime", None),
        "inputs": getattr(h, "inputs", {}), "gluster_dir": a.gluster_dir,
        "interrupted": status == 130,
    }


def main(argv=None):
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.merge and not a.report_only:
        ap.error("--merge needs --report-only")
    if a.report_only:
        return report_only(a)
    backends, scenarios = check_run_args(ap, a)
    a.out = os.path.abspath(a.out)
    a.size = a.size or ("quick" if a.quick else "full")
    h = Harness(a)
    h.backends = backends
    h.scenarios = scenarios
    h.runs = a.runs or (1 if a.quick else 3)
    if any(b.startswith("gluster") for b in backends) and not a.gluster_dir:
        why = gluster_running()
        if why:
            mounts = glusterfs_mounts()
            hint = f"--gluster-dir MOUNT (e.g. --gluster-dir {mounts[0]})" if mounts else "--gluster-dir MOUNT"
            print(f"bench-scripts/run: error: {why}; only one GlusterFS instance can run on this machine "
                  f"(port 24007), so the harness will not start its own: pass {hint} "
                  f"to use the running one", file=sys.stderr)
            return 2
    machine = machine_info()
    status = run_with_cleanup(h, a, backends, scenarios, machine)
    if not h.records:
        log("no results")
        return status or 1
    derive(h.records)
    meta = run_meta(h, a, backends, scenarios, machine, status)
    if status == 130:
        log("writing the partial results collected before the interruption")
    write_outputs(a, meta, h.records, h.backend_info, h.failures, h.notes)
    log(f"total {meta['duration_s']:.0f} s")
    if status == 130:
        return status
    if h.failures:
        log(f"{len(h.failures)} FAILURE(S):")
        for f in h.failures:
            log(f"  {f}")
        return 1
    return status
