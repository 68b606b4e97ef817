"""The plots (matplotlib, optional: installed with pip once if missing, else skipped)."""

import os
import subprocess
import sys

from .common import BACKEND_TITLE, MiB, log, parse_size, remote_delay


def ensure_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        pass
    log("matplotlib missing: trying pip install matplotlib (once)")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode == 0:
        try:
            import importlib
            importlib.invalidate_caches()
            import matplotlib  # noqa: F401,F811
            return True
        except ImportError:
            pass
    log("WARNING: matplotlib unavailable, plots skipped")
    return False


PLOT_FILES = ["wall_time.png", "backend_calls.png", "allocated.png", "sweep.png"]
VARIANT_COLORS = {"sparsefs": "#1f77b4", "direct": "#d62728", "bindfs": "#7f7f7f", "peer": "#2ca02c"}


def make_plots(outdir, records, backends):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = []
    main = [r for r in records if r["scenario"] != "sweep"]
    bes = [b for b in backends if any(r["backend"] == b for r in main)]

    def grouped(metric, fname, ylabel, title):
        if not bes:
            return
        fig, axes = plt.subplots(len(bes), 1, figsize=(14, 3.6 * len(bes)), squeeze=False)
        for ax, be in zip(axes[:, 0], bes):
            recs = [r for r in main if r["backend"] == be]
            keys = []
            for r in recs:
                k = r["scenario"] + (f"\n{r['case']}" if r["case"] else "")
                if k not in keys:
                    keys.append(k)
            kinds = [k for k in ("sparsefs", "direct", "bindfs", "peer") if any(r["variant"] == k for r in recs)]
            width = 0.8 / max(1, len(kinds))
            for i, kind in enumerate(kinds):
                xs, ys = [], []
                for j, key in enumerate(keys):
                    r = next((r for r in recs if r["variant"] == kind and
                              r["scenario"] + (f"\n{r['case']}" if r["case"] else "") == key), None)
                    v = metric(r) if r else None
                    if v:
                        xs.append(j + (i - (len(kinds) - 1) / 2) * width)
                        ys.append(v)
                ax.bar(xs, ys, width, label="best sparse tool" if kind == "peer" else kind,
                       color=VARIANT_COLORS[kind])
            ax.set_xticks(range(len(keys)))
            ax.set_xticklabels(keys, fontsize=7)
            ax.set_yscale("log")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title}: {BACKEND_TITLE[be]}")
            ax.legend(fontsize=7)
            ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, fname), dpi=110)
        plt.close(fig)
        made.append(fname)

    grouped(lambda r: r["median"]["wall_s"], "wall_time.png", "median wall time, s (log)", "Wall time")
    grouped(lambda r: (r["strace_run"].get("trace") or {}).get("io_calls"), "backend_calls.png",
            "backend I/O calls (strace, log)", "Backend I/O calls")
    grouped(lambda r: r["median"]["alloc_bytes"] / MiB if r["median"]["alloc_bytes"] else None,
            "allocated.png", "allocated MiB on backend (log)", "Allocated bytes")

    sweep = [r for r in records if r["scenario"] == "sweep"]
    if sweep:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
        ticks = {}
        for be in backends:
            rs = sorted([r for r in sweep if r["backend"] == be], key=lambda r: parse_size(r["case"]))
            if not rs:
                continue
            xs = [parse_size(r["case"]) / 1024 for r in rs]
            ticks.update({x: r["case"] for x, r in zip(xs, rs)})
            a1.plot(xs, [(r["strace_run"].get("trace") or {}).get("io_calls") for r in rs], "o-",
                    label=f"{be}: I/O calls (strace)")
            a1.plot(xs, [r["median"].get("stats_io_calls") for r in rs], "x--", label=f"{be}: I/O calls (sparsefs stats)")
            a2.plot(xs, [(r["median"]["alloc_bytes"] or 0) / MiB for r in rs], "o-", label=be)
        ideal = sweep[0]["ideal_bytes"]
        if ideal:
            a2.axhline(ideal / MiB, color="k", ls=":", label="ideal (data bytes)")
        for ax in (a1, a2):
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(ticks))
            ax.set_xticklabels(list(ticks.values()))
            ax.minorticks_off()
            ax.set_xlabel("--sparse-block")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            ax.set_ylim(bottom=0)
        a1.set_ylabel("backend I/O calls")
        a1.set_title("cp --sparse=never through sparsefs: backend calls")
        a2.set_ylabel("allocated MiB on backend")
        a2.set_title("allocated bytes")
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "sweep.png"), dpi=110)
        plt.close(fig)
        made.append("sweep.png")

    # The latency sweep (gluster-remote at several --delay-us): sparsefs's speed-up over
    # writing directly, per scenario, against the brick's delay per operation.
    remote = sorted({r["backend"] for r in main if remote_delay(r["backend"]) is not None}, key=remote_delay)
    if len(remote) >= 2:
        fig, ax = plt.subplots(figsize=(10, 5))
        keys = []
        for r in main:
            k = (r["scenario"], r["case"])
            if remote_delay(r["backend"]) is not None and k not in keys:
                keys.append(k)
        for k in keys:
            xs, ys = [], []
            for be in remote:
                r = next((r for r in main if r["backend"] == be and (r["scenario"], r["case"]) == k
                          and r["variant"] == "sparsefs"), None)
                v = r and r.get("ratios", {}).get("speedup_vs_direct")
                if v:
                    xs.append(max(remote_delay(be), 10))
                    ys.append(v)
            if xs:
                ax.plot(xs, ys, "o-", label=k[0] + (f" {k[1]}" if k[1] else ""))
        ax.axhline(1, color="k", ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([max(remote_delay(b), 10) for b in remote])
        ax.set_xticklabels([f"{remote_delay(b)} µs" for b in remote])
        ax.minorticks_off()
        ax.set_xlabel("brick delay per operation (GlusterFS delay-gen; 0 plotted at 10)")
        ax.set_ylabel("speed-up of sparsefs over direct (log)")
        ax.set_title("sharded GlusterFS with a remote brick: speed-up against round trip")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "latency.png"), dpi=110)
        plt.close(fig)
        made.append("latency.png")
    return made
