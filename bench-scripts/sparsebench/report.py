"""Results: derived ratios, the machine description, results.json/csv, merged reruns, all outputs."""

import csv
import json
import os
import subprocess
import sys

from .common import REPO, log
from .markdown import write_markdown
from .plots import PLOT_FILES, ensure_matplotlib, make_plots
from .proc import first_line


def derive(records):
    """Ratios vs direct and vs the best peer, per (scenario, case, backend)."""
    groups = {}
    for r in records:
        groups.setdefault((r["scenario"], r["case"], r["backend"]), []).append(r)
    for recs in groups.values():
        direct = next((r for r in recs if r["variant"] == "direct"), None)
        peers = [r for r in recs if r["variant"] == "peer" and r["median"]["wall_s"]]
        best = min(peers, key=lambda r: r["median"]["wall_s"]) if peers else None
        for r in recs:
            w = r["median"]["wall_s"]
            io = (r["strace_run"].get("trace") or {}).get("io_calls")
            d_io = (direct["strace_run"].get("trace") or {}).get("io_calls") if direct else None
            r["ratios"] = {
                "speedup_vs_direct": (direct["median"]["wall_s"] / w) if direct and w and direct["median"]["wall_s"] else None,
                "speedup_vs_best_peer": (best["median"]["wall_s"] / w) if best and w else None,
                "best_peer": best["label"] if best else None,
                "io_calls_vs_direct": (io / d_io) if io is not None and d_io else None,
            }
    return groups


CSV_FIELDS = ["scenario", "case", "backend", "variant", "label", "metric_set", "runs", "ok",
              "wall_s", "sync_s", "umount_s", "throughput", "throughput_unit", "speedup_vs_direct",
              "speedup_vs_best_peer", "size", "alloc_bytes", "ideal_bytes",
              "writes", "write_bytes", "reads", "read_bytes", "seeks_data_hole", "lseeks_local", "punches",
              "allocates", "ftruncates", "fsyncs", "meta_calls", "io_calls", "total_syscalls",
              "app_write_bytes", "zero_bytes_elided", "bytes_punched", "zero_bytes_written", "hole_read_bytes",
              "seeks_from_index", "dirty_peak", "daemon_cpu_s", "daemon_rss_kib", "command"]


def csv_rows(records):
    rows = []
    for r in records:
        base = {k: r[k] for k in ("scenario", "case", "backend", "variant", "label")}
        m = r["median"]
        rows.append(dict(base, metric_set="timing", runs=len(r["runs"]), ok=r["ok"], wall_s=m["wall_s"],
                         sync_s=m["sync_s"], umount_s=m["umount_s"], throughput=m["throughput"],
                         throughput_unit=f"{r['logical_unit']}/s",
                         speedup_vs_direct=r["ratios"]["speedup_vs_direct"],
                         speedup_vs_best_peer=r["ratios"]["speedup_vs_best_peer"],
                         daemon_cpu_s=m.get("daemon_cpu_s"), daemon_rss_kib=m.get("daemon_rss_kib"),
                         command=r["command"]))
        rows.append(dict(base, metric_set="result", runs=len(r["runs"]), ok=r["ok"], size=m["size"],
                         alloc_bytes=m["alloc_bytes"], ideal_bytes=r["ideal_bytes"]))
        t = r["strace_run"].get("trace")
        if t:
            c = t["calls"]
            rows.append(dict(base, metric_set="strace", runs=1, ok=r["strace_run"]["ok"],
                             writes=c["write"], write_bytes=t["write_bytes"], reads=c["read"],
                             read_bytes=t["read_bytes"], seeks_data_hole=c["seek"], lseeks_local=c["lseek_local"],
                             punches=c["punch"], allocates=c["allocate"], ftruncates=c["ftruncate"],
                             fsyncs=c["fsync"], meta_calls=c["meta"], io_calls=t["io_calls"],
                             total_syscalls=t["summary_total"]))
        if r["variant"] == "sparsefs" and m.get("stats"):
            s = m["stats"]
            g = lambda k: s.get(k)  # noqa: E731
            rows.append(dict(base, metric_set="sparsefs_stats", runs=len(r["runs"]), ok=r["ok"],
                             writes=g("backend.write.calls"), write_bytes=g("backend.write.bytes"),
                             reads=g("backend.read.calls"), read_bytes=g("backend.read.bytes"),
                             seeks_data_hole=g("backend.lseek.calls"), punches=g("backend.punch.calls"),
                             allocates=g("backend.allocate.calls"), ftruncates=g("backend.ftruncate.calls"),
                             fsyncs=g("backend.fsync.calls"), io_calls=m.get("stats_io_calls"),
                             app_write_bytes=g("app_write_bytes"), zero_bytes_elided=g("zero_bytes_elided"),
                             bytes_punched=g("bytes_punched"), zero_bytes_written=g("zero_bytes_written"),
                             hole_read_bytes=g("hole_read_bytes"), seeks_from_index=g("seeks_from_index"),
                             dirty_peak=g("dirty_peak"), daemon_cpu_s=m.get("daemon_cpu_s"),
                             daemon_rss_kib=m.get("daemon_rss_kib")))
    return rows


def write_csv(path, records):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in csv_rows(records):
            w.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v))
                        for k, v in row.items()})


def machine_info():
    info = {"nproc": os.cpu_count()}
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                info["mem_total"] = int(line.split()[1]) * 1024
    u = os.uname()
    info["kernel"] = f"{u.sysname} {u.release} {u.version} {u.machine}"
    with open("/proc/cpuinfo") as f:
        info["cpu_model"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    info["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    v = {}
    for name, argv in (("rsync", ["rsync", "--version"]), ("glusterfs", ["glusterfs", "--version"]),
                       ("coreutils", ["cp", "--version"]), ("tar", ["tar", "--version"]),
                       ("qemu-img", ["qemu-img", "--version"]), ("bindfs", ["bindfs", "--version"]),
                       ("xfsprogs", ["mkfs.xfs", "-V"]), ("strace", ["strace", "-V"]),
                       ("fuse3", ["fusermount3", "--version"])):
        v[name] = first_line(argv)
    v["python"] = sys.version.split()[0]
    info["versions"] = v
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no", "src"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
        info["git"] = rev + (" (src/ modified)" if dirty else "")
    except OSError:
        info["git"] = "?"
    return info


def md_path(a):
    if a.md:
        return a.md
    if a.out == os.path.join(REPO, "docs", "bench"):
        return os.path.join(REPO, "docs", "benchmarks.md")
    return os.path.join(a.out, "benchmarks.md")


def write_outputs(a, meta, records, backend_info, failures, notes):
    md = md_path(a)
    os.makedirs(a.out, exist_ok=True)
    for f in PLOT_FILES:  # only our own plots: other tools keep files in docs/bench too
        if os.path.exists(os.path.join(a.out, f)):
            os.unlink(os.path.join(a.out, f))
    res = os.path.join(a.out, "results.json")
    if not a.report_only or a.merge or os.path.abspath(a.report_only) != os.path.abspath(res):
        with open(res, "w") as f:
            json.dump({"meta": meta, "backends": backend_info, "failures": failures, "notes": notes,
                       "records": records}, f, indent=1)
    write_csv(os.path.join(a.out, "results.csv"), records)
    plots = []
    if ensure_matplotlib():
        try:
            plots = make_plots(a.out, records, meta["backends"])
        except Exception as e:  # noqa: BLE001
            log(f"WARNING: plotting failed: {e}")
    write_markdown(md, a.out, meta, records, plots, failures, notes, backend_info)
    log(f"wrote {res}, results.csv, {len(plots)} plot(s), {md}")


def merge_results(d, path):
    """Replaces d's records of every (backend, scenario) that the run in `path` measured
    with that run's (a scenario rerun after a fix), keeping the rest; notes the run in meta."""
    with open(path) as f:
        m = json.load(f)
    keys = {(r["backend"], r["scenario"]) for r in m["records"]}
    d["records"] = [r for r in d["records"] if (r["backend"], r["scenario"]) not in keys] + m["records"]
    d["failures"] = [f for f in d["failures"]
                     if not any(f.startswith(f"{be} {sc} ") or f.startswith(f"{be} {sc}/") or f.startswith(f"{be} {sc}:")
                                for be, sc in keys)] + m["failures"]
    d["notes"] = d.get("notes", []) + [n for n in m.get("notes", []) if n not in d.get("notes", [])]
    for be, info in m.get("backends", {}).items():
        d["backends"].setdefault(be, info)
    mm = m["meta"]
    d["meta"].setdefault("merged", []).append({
        "command": mm["command"], "finished": mm["finished"], "duration_s": mm["duration_s"],
        "git": mm.get("machine", {}).get("git"), "sparsefs_sha256": mm.get("sparsefs_sha256"),
        "replaced": sorted(f"{sc} on {be}" for be, sc in keys)})


def report_only(a):
    a.out = os.path.abspath(a.out)
    with open(a.report_only) as f:
        d = json.load(f)
    for path in a.merge or []:
        merge_results(d, path)
    derive(d["records"])
    write_outputs(a, d["meta"], d["records"], d["backends"], d["failures"], d["notes"])
    return 0
