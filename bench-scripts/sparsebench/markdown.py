"""The Markdown report: headline, generated observations, machine, method, result tables, projection."""

import os

from .common import (ALL_SCENARIOS, BACKEND_TITLE, KIND_ORDER, REMOTENESS, MiB, fmt_bytes, fmt_n, fmt_s, fmt_x,
                     remote_delay)
from .straceparse import READ_CALLS, WRITE_CALLS


def _remoteness(records):
    """Backends of `records`, the most like a parallel filesystem first: gluster-remote by
    falling delay, then REMOTENESS, then any other."""
    present = list(dict.fromkeys(r["backend"] for r in records))
    remote = sorted((b for b in present if remote_delay(b) is not None), key=remote_delay, reverse=True)
    known = [b for b in REMOTENESS if b in present and b not in remote]
    return remote + known + [b for b in present if b not in remote and b not in known]


def headline(records):
    """One line per scenario on the most parallel-FS-like backend measured."""
    lines = []
    want = ["cp-never", "dd-zeros", "tar-x", "rsync-plain", "rsync-inplace", "qemu-convert", "checkpoint",
            "rsync-S", "dense", "read-sparse", "smallfiles"]
    for sc in want:
        recs = [r for r in records if r["scenario"] == sc]
        if not recs:
            continue
        be = next(b for b in _remoteness(records) if any(r["backend"] == b for r in recs))
        cases = []
        for r in recs:
            if r["backend"] == be and r["case"] not in cases:
                cases.append(r["case"])
        for case in cases:
            g = {r["variant"]: r for r in recs if r["backend"] == be and r["case"] == case and r["variant"] != "peer"}
            s, d = g.get("sparsefs"), g.get("direct")
            if not s or not d or not s["median"]["wall_s"] or not d["median"]["wall_s"]:
                continue
            sp = d["median"]["wall_s"] / s["median"]["wall_s"]
            faster = f"{sp:.1f}× faster than" if sp >= 1.05 else (
                f"{1 / sp:.1f}× slower than" if sp <= 0.95 else "as fast as")
            st_, dt_ = s["strace_run"].get("trace") or {}, d["strace_run"].get("trace") or {}
            what = describe_scenario(sc, recs[0], case)
            txt = (f"**{what} on {BACKEND_TITLE[be]}**: sparsefs {faster} direct "
                   f"({fmt_s(s['median']['wall_s'])} s vs {fmt_s(d['median']['wall_s'])} s), ")
            if sc == "smallfiles":
                txt += (f"{fmt_n(st_.get('calls', {}).get('meta'))} backend metadata calls vs "
                        f"{fmt_n(dt_.get('calls', {}).get('meta'))}")
            else:
                txt += (f"{fmt_n(st_.get('io_calls'))} backend I/O calls vs {fmt_n(dt_.get('io_calls'))} "
                        f"(+ {fmt_n(st_.get('calls', {}).get('meta'))} vs {fmt_n(dt_.get('calls', {}).get('meta'))} "
                        f"metadata calls)")
            if sc == "read-sparse":
                sr = (s["median"].get("stats") or {}).get("backend.read.bytes")
                dr = (d["strace_run"].get("trace") or {}).get("read_bytes")
                txt += f"; backend bytes read {fmt_bytes(sr)} vs {fmt_bytes(dr)}"
            elif s["median"]["alloc_bytes"] is not None and d["median"]["alloc_bytes"] is not None:
                txt += f"; allocated {fmt_bytes(s['median']['alloc_bytes'])} vs {fmt_bytes(d['median']['alloc_bytes'])}"
            pr = s["ratios"].get("speedup_vs_best_peer")
            if pr:
                txt += f"; vs the best sparse tool ({s['ratios']['best_peer']}): {fmt_x(pr)}"
            lines.append(txt)
    return lines


def describe_scenario(sc, rec, case):
    size = fmt_bytes(rec["logical"]) if rec["logical_unit"] == "B" else None
    return {
        "cp-never": f"cp --sparse=never of a {size} image",
        "dd-zeros": f"dd of {size} of zeros",
        "tar-x": f"tar -x of a {size} image (archive made without -S)",
        "rsync-plain": f"rsync (no -S) of a {size} image",
        "rsync-S": f"rsync -S of a {size} image",
        "rsync-inplace": f"rsync --inplace of a {size} image over an older version",
        "qemu-convert": f"qemu-img convert -O raw of a {size} image",
        "checkpoint": f"4-process strided checkpoint of {size} (half zeros)",
        "dense": f"dd of {size} of random data",
        "read-sparse": f"{case} reading a {size} image with 3% data",
        "smallfiles": f"smallfiles: {case}",
    }.get(sc, sc)


SCENARIO_TEXT = {
    "dd-zeros": "`dd if=/dev/zero bs=1M` into a new file. Peer: `dd conv=sparse` (seeks over zero blocks, "
                "one ftruncate at the end).",
    "cp-never": "`cp --sparse=never` of the VM-like image (an unchanged tool that writes every zero). "
                "Peer: `cp --sparse=always`.",
    "rsync-S": "`rsync -S` of the image (rsync's own sparse writes: an lseek per zero run). "
               "Peer: `cp --sparse=always`.",
    "rsync-plain": "plain `rsync` of the image (temp file + rename, writes every zero). Peer: `rsync -S`.",
    "rsync-inplace": "`rsync --inplace` of the image over an older version of it (other extents, written the "
                     "same way beforehand, untimed): old data must become zero. Peer: `rsync -S --inplace` "
                     "(punches holes itself).",
    "tar-x": "`tar -x` of an archive made without `-S` holding the image. Peer: `tar -x` then "
             "`fallocate --dig-holes` (only where the backend can punch).",
    "qemu-convert": "`qemu-img convert -O raw` of a qcow2 of the image (qemu-img skips zeros itself). "
                    "Peer: `truncate` + `qemu-img convert -n --target-is-zero`.",
    "checkpoint": "4 processes write one file with `os.pwrite` in 4 MiB blocks, strided (block i by process "
                  "i mod 4); about half of the 1 MiB sub-chunks are zero. Peer: the same writer, then "
                  "`fallocate --dig-holes` (only where the backend can punch).",
    "dense": "`dd bs=1M` of random data (source pre-generated in /dev/shm): the cost of sparsefs when "
             "there is nothing to gain. Peer: `dd conv=sparse`.",
    "smallfiles": "a Python loop creating, then stat-ing, then unlinking N empty files; and `ls -f` (names "
                  "only) and `ls -l` (every entry stat-ed) of a directory with M entries (made directly on "
                  "the backend beforehand).",
    "read-sparse": "the image with 3% data is written through sparsefs (`cp --sparse=never`, untimed), then "
                   "read back with `cp --sparse=auto` and `tar -S -c` (page cache dropped before each read) "
                   "from the same sparsefs mount and from the backend directly. For the direct reads, read "
                   "calls and bytes come from `/proc/PID/io` of the reader (all its read syscalls; `tar -S` "
                   "on a backend without SEEK_DATA makes two 512-byte reads per KiB, too many to trace), "
                   "everything else from strace (`--seccomp-bpf`, reads not stopped).",
    "sweep": "`cp --sparse=never` of the image through sparsefs mounted with each `--sparse-block` "
             "(write size 4M).",
}


def md_table(recs, be):
    hdr = ("| variant | median wall s | throughput | × vs direct | × vs best peer | writes (calls / bytes) "
           "| reads (calls / bytes) | SEEK_DATA/HOLE | punch | ftruncate | backend I/O calls | metadata calls "
           "| allocated |")
    out = [hdr, "|" + "|".join(["---"] * (hdr.count("|") - 1)) + "|"]
    for r in sorted(recs, key=lambda r: (KIND_ORDER[r["variant"]], r["label"])):
        m = r["median"]
        t = r["strace_run"].get("trace") or {}
        c = t.get("calls", {})
        unit = r["logical_unit"]
        if m["throughput"] is None:
            thr = "-"
        elif unit == "B":
            thr = f"{fmt_bytes(m['throughput'])}/s"
        else:
            thr = f"{m['throughput']:,.0f} {unit}/s"
        skipped = r["strace_run"].get("skipped")
        name = r["variant"] if r["variant"] in ("sparsefs", "direct", "bindfs") else f"peer: `{r['label']}`"
        if r["scenario"] == "sweep":
            name = f"sparsefs {r['case']}"
        if not r["ok"]:
            name += " **FAILED**"
        out.append("| " + " | ".join([
            name, fmt_s(m["wall_s"]), thr, fmt_x(r["ratios"]["speedup_vs_direct"]),
            fmt_x(r["ratios"]["speedup_vs_best_peer"]),
        ] + (["(as direct)"] * 7 if skipped else [
            f"{fmt_n(c.get('write'))} / {fmt_bytes(t.get('write_bytes'))}" if t else "-",
            f"{fmt_n(c.get('read'))} / {fmt_bytes(t.get('read_bytes'))}" if t else "-",
            fmt_n(c.get("seek")), fmt_n(c.get("punch")), fmt_n(c.get("ftruncate")), fmt_n(t.get("io_calls")),
            fmt_n(c.get("meta"))]) + [fmt_bytes(m["alloc_bytes"]),
        ]) + " |")
    return out


def sparsefs_line(r):
    m = r["median"]
    s = m.get("stats") or {}
    if not s:
        return None
    g = lambda k: s.get(k)  # noqa: E731
    t = r["strace_run"].get("trace") or {}
    c = t.get("calls", {})
    parts = [f"writes {fmt_n(g('backend.write.calls'))} ({fmt_bytes(g('backend.write.bytes'))})",
             f"reads {fmt_n(g('backend.read.calls'))} ({fmt_bytes(g('backend.read.bytes'))})",
             f"lseek {fmt_n(g('backend.lseek.calls'))}", f"punch {fmt_n(g('backend.punch.calls'))}",
             f"ftruncate {fmt_n(g('backend.ftruncate.calls'))}", f"fsync {fmt_n(g('backend.fsync.calls'))}",
             f"zero bytes elided {fmt_bytes(g('zero_bytes_elided'))}",
             f"punched {fmt_bytes(g('bytes_punched'))}", f"hole reads {fmt_bytes(g('hole_read_bytes'))}",
             f"seeks from index {fmt_n(g('seeks_from_index'))}", f"dirty peak {fmt_bytes(g('dirty_peak'))}",
             f"daemon CPU {fmt_s(m.get('daemon_cpu_s'))} s", f"peak RSS {fmt_bytes((m.get('daemon_rss_kib') or 0) * 1024)}"]
    if t.get("summary", {}).get("read"):
        parts.append(f"FUSE requests ≈ {fmt_n(t['summary']['read'])} (daemon reads of /dev/fuse, strace run)")
    line = "sparsefs's own counters (median): " + ", ".join(parts) + "."
    st = r.get("strace_run_stats") or {}
    if st and t:
        pairs = [("write", "backend.write.calls"), ("punch", "backend.punch.calls"),
                 ("ftruncate", "backend.ftruncate.calls"), ("seek", "backend.lseek.calls"),
                 ("read", "backend.read.calls")]
        diffs = [f"{k} {c.get(k)} (strace) vs {st.get(sk)} (stats)" for k, sk in pairs
                 if st.get(sk) is not None and c.get(k) != st.get(sk)]
        line += (" In the strace run, strace and the stats agree on writes, reads, punch, ftruncate and lseek."
                 if not diffs else " strace vs stats in the strace run differ: " + "; ".join(diffs) + ".")
    return line


def observations(records, failures):
    """Generated findings, one bullet per kind, listing every scenario/backend where it shows."""
    groups = {}  # title -> [items]

    def add(title, item):
        groups.setdefault(title, []).append(item)

    for r in records:
        if r["variant"] != "sparsefs" or not r["median"]["wall_s"]:
            continue
        where = f"{r['scenario']}{' / ' + r['case'] if r['case'] else ''} on {r['backend']}"
        sp = r["ratios"]["speedup_vs_direct"]
        if sp is not None and sp < 0.9:
            add("sparsefs slower than direct (sparsefs vs direct wall time)",
                f"{where} {fmt_s(r['median']['wall_s'])} s vs {fmt_s(r['median']['wall_s'] * sp)} s "
                f"({fmt_x(1 / sp)} slower)")
        cr = r["ratios"]["io_calls_vs_direct"]
        d = next((x for x in records if x["variant"] == "direct" and x["backend"] == r["backend"]
                  and x["scenario"] == r["scenario"] and x["case"] == r["case"]), None)
        t = r["strace_run"].get("trace") or {}
        dt = (d["strace_run"].get("trace") or {}) if d else {}
        if cr is not None and cr > 1.0:
            add("sparsefs made more backend I/O calls than direct (strace)",
                f"{where} {fmt_n(t.get('io_calls'))} vs {fmt_n(dt.get('io_calls'))}")
        if r["scenario"] == "sweep":
            continue  # the sweep repeats cp-never: its findings would only repeat those
        if t and dt and t["calls"]["meta"] > max(100, 2 * dt["calls"]["meta"]):
            top = sorted(((n, c) for n, c in t["per_syscall"].items()
                          if n not in WRITE_CALLS | READ_CALLS | {"lseek", "fallocate", "ftruncate", "fsync"}),
                         key=lambda x: -x[1])[:4]
            add("sparsefs made many more backend metadata calls than direct (strace; top calls)",
                f"{where} {fmt_n(t['calls']['meta'])} vs {fmt_n(dt['calls']['meta'])} "
                f"({', '.join(f'{n} {c:,}' for n, c in top)})")
        gx = t.get("per_syscall", {}).get("getxattr", 0) if t else 0
        aw = (r["median"].get("stats") or {}).get("app_writes") or 0
        if gx and aw and gx >= 0.5 * aw:
            add("one backend getxattr per application write: the kernel asks FUSE for security.capability "
                "before each write(2) (file_remove_privs) and sparsefs forwards it to the backend, a metadata "
                "round trip per write on a parallel filesystem (backend getxattr calls vs application writes)",
                f"{where} {gx:,} vs {int(aw):,}")
        ideal, alloc = r["ideal_bytes"], r["median"]["alloc_bytes"]
        if (r["scenario"] != "sweep" and ideal is not None and alloc is not None
                and alloc > max(ideal * 1.5, ideal + 4 * MiB)):
            add("allocated well above the ideal (data bytes)", f"{where} {fmt_bytes(alloc)} vs {fmt_bytes(ideal)}")
        for run in r["runs"]:
            if run.get("dirty_bytes_at_end"):
                add("data still dirty after the workload (flushed only at unmount, so not in the stats)",
                    f"{where} {fmt_bytes(run['dirty_bytes_at_end'])}")
                break
        st = r.get("strace_run_stats") or {}
        if t and st:
            for k, sk in (("write", "backend.write.calls"), ("punch", "backend.punch.calls"),
                          ("ftruncate", "backend.ftruncate.calls"), ("read", "backend.read.calls")):
                if st.get(sk) is not None and t["calls"][k] != st[sk]:
                    tg = [f"{key.split(':', 1)[1]} ×{n}" for key, n in t.get("targets", {}).items()
                          if key.startswith(k + ":")]
                    add("strace and sparsefs stats disagree (the stats count only the data path; strace by "
                        "target file)", f"{where}: {k} {t['calls'][k]} vs {st[sk]} ({', '.join(tg) or '?'})")
    out = [f"{title}: " + "; ".join(items) + "." for title, items in groups.items()]
    return out + [f"FAILURE: {f}" for f in failures]


def write_markdown(path, outdir, meta, records, plots, failures, notes, backend_info):
    rel = os.path.relpath(outdir, os.path.dirname(os.path.abspath(path)))
    L = []
    _intro(L, meta, records, failures, notes, rel)
    _machine(L, meta, backend_info)
    _method(L, meta)
    _results(L, records, plots, rel)
    L.extend(projection_section(records))
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


def _intro(L, meta, records, failures, notes, rel):
    """Title, run notes, headline and generated observations."""
    L.append("# sparsefs benchmarks")
    L.append("")
    L.append("<!-- generated by bench-scripts/run; do not edit by hand -->")
    L.append("")
    if meta.get("interrupted"):
        L.append("> **Interrupted run: partial results** (only the scenarios and backends that finished "
                 "before the signal).")
        L.append("")
    if meta["quick"]:
        L.append("> **Quick mode (`--quick`)**: small sizes, one run, noisy: a smoke test of the harness, "
                 "not figures to quote.")
        L.append("")
    if meta.get("size", "full") == "medium":
        L.append("> **Medium sizes (`--size medium`)**: every input is half the reference size (a 1 GiB "
                 "image, 512 MiB of zeros, 10k small files), so that every scenario on three backends with three runs fits in "
                 "about an hour here. Full-size (2 GiB image) runs of the zero-heavy scenarios: "
                 "[docs/bench/zero-heavy](bench/zero-heavy/benchmarks.md).")
        L.append("")
    L.append(f"Generated {meta['finished']} by `{meta['command']}` in {meta['duration_s'] / 60:.1f} min "
             f"({meta['runs']} timed run(s) per variant, medians; plus one separate strace run per variant). "
             f"Raw data: [results.json]({rel}/results.json), [results.csv]({rel}/results.csv).")
    L.append("")
    L.append(f"The plain-passthrough figures (sequential 1 MiB write and read of 2 GiB, 4 KiB random "
             f"writes, create+stat+unlink, `ls -f` of 50k entries; sparsefs vs the directory directly vs "
             f"bindfs in one run) come from `bench-scripts/passthrough.sh`: "
             f"[ext4]({rel}/passthrough.md), [tmpfs]({rel}/passthrough-tmpfs.md).")
    for mg in meta.get("merged", []):
        L.append("")
        L.append(f"Replaced by a later run ({mg['finished']}, {mg['duration_s'] / 60:.1f} min, build "
                 f"{mg.get('git') or '?'}): {', '.join(mg['replaced'])}, by `{mg['command']}`.")
    if meta.get("machine", {}).get("vm_page_reporting") == "paused":
        L.append("The VM's free page reporting was paused for the run and free memory touched once first "
                 "(`bench-scripts/vm-memory.sh`: otherwise the variant that allocates long-freed memory "
                 "pays a host fault per page, 4 s per GiB here).")
    L.append("")
    L.append("## Headline")
    L.append("")
    for h in headline(records):
        L.append(f"- {h}")
    if failures:
        L.append(f"- **{len(failures)} workload(s) failed or produced wrong output** (see Observations).")
    L.append("")
    obs = observations(records, failures) + notes
    if obs:
        L.append("## Observations (generated)")
        L.append("")
        for o in obs:
            L.append(f"- {o}")
        L.append("")


def _machine(L, meta, backend_info):
    """The machine, tool versions and the probed backends."""
    mi = meta["machine"]
    L.append("## Machine")
    L.append("")
    L.append(f"- {mi['nproc']} CPUs ({mi['cpu_model']}), {fmt_bytes(mi['mem_total'])} RAM, {mi['kernel']}")
    L.append(f"- load average at start {' '.join(mi['loadavg_start'])}, at end {' '.join(meta['loadavg_end'])} "
             "(other work on the machine makes timings noisy: compare variants of one run, not runs)")
    L.append(f"- sparsefs: {meta['sparsefs_version']}, binary {meta['sparsefs_path']} built "
             f"{meta.get('sparsefs_mtime')}, sha256 {str(meta.get('sparsefs_sha256'))[:16]}…; repo HEAD {mi['git']}")
    for k, v in mi["versions"].items():
        L.append(f"- {k}: {v}")
    L.append("")
    L.append("Backends (probed at start: write, call, read back):")
    L.append("")
    L.append("| backend | how | SEEK_DATA | punch hole |")
    L.append("|---|---|---|---|")
    for be, i in backend_info.items():
        L.append(f"| {be} | {i['how']} | {'yes' if i.get('seek_data') else 'no (' + i.get('seek_data_error', 'whole file is data') + ')'} "
                 f"| {'yes' if i.get('punch') else 'no'} |")
    L.append("")


def _method(L, meta):
    """How the figures were measured, and the inputs."""
    L.append("## Method")
    L.append("")
    L.append(f"Command line: `{meta['command']}`")
    L.append("")
    L.append("- Variants: **sparsefs** (workload writes through a fresh `sparsefs mount` over a subdir of the "
             "backend, default `--sparse-block 32K --write-size 4M`), **direct** (straight onto the backend), "
             "**bindfs** (through a plain bindfs FUSE mount over the backend; dir/xfs only), **peer** (the best "
             "existing sparse tool for the job, run directly on the backend). Every run starts from an empty "
             "output directory; the variants of one run index run back to back.")
    L.append("- Wall time: the workload command only. `sync` after each run is timed separately (results.json "
             "`sync_s`); sparsefs data is flushed on close, so unmount time (`umount_s`) is small.")
    L.append("- Backend calls: a separate run under strace (`strace -f -C -y -s 0`): for sparsefs attached to "
             "the daemon (`-p`, all threads) just before the workload and stopped (SIGINT) after it; for direct "
             "and peers wrapping the workload. Calls are attributed to the backend by the fd path, the path "
             "argument or `/proc/self/fd/N` (so reads of the local source, `/dev/fuse` traffic and lseek on "
             "the source do not count). *Backend I/O calls* = writes + reads + SEEK_DATA/SEEK_HOLE + punch + "
             "other fallocate + ftruncate + fsync; lseek(SEEK_SET/SEEK_CUR) is local and not counted; "
             "*metadata calls* = everything else on the backend (open/close/stat/statx/getxattr/setxattr/"
             "rename/unlink/getdents/...). The bindfs variant is not traced again: the workload makes the same "
             "calls as in the direct variant (bindfs itself receives them as 4 KiB FUSE writes). sparsefs's "
             "own counters (`sparsefs stats --json`, diffed around the workload; they count data-path calls "
             "only) are recorded too, and compared with strace. The full `-c` summaries and the calls by "
             "target file are in results.json (`strace_run.trace`).")
    L.append("- Peers that punch (`fallocate --dig-holes`) are left out on backends where punching does not "
             "work (bindfs).")
    L.append("- Allocated: `st_blocks × 512` of the result on the backend after unmount and sync; ideal = the "
             "data bytes of the source.")
    L.append("- Correctness: every result is compared with its source byte for byte (like `cmp`, 8 MiB reads; archives are extracted first); any "
             "difference fails the run and makes the harness exit non-zero.")
    L.append("")
    inputs = meta["inputs"]
    if "image" in inputs:
        im = inputs["image"]
        L.append(f"VM-like image: {fmt_bytes(im['size'])} holding {im['extents']} random-data extents of 1 MiB "
                 f"at random 4 KiB-aligned offsets ({fmt_bytes(im['data_bytes'])} data), on local ext4.")
        L.append("")


def _results(L, records, plots, rel):
    """Plots, then per scenario and backend the result tables."""
    if plots:
        L.append("## Plots")
        L.append("")
        for p in plots:
            L.append(f"![{p}]({rel}/{p})")
            L.append("")
    L.append("## Results")
    L.append("")
    L.append("Wall time is the median of the timed runs; call counts come from the strace run; ratios: "
             "× = (other's wall time) / (this variant's wall time), above 1 means this variant is faster.")
    L.append("")
    by_sc = {}
    for r in records:
        by_sc.setdefault(r["scenario"], []).append(r)
    for sc in ALL_SCENARIOS:
        if sc not in by_sc:
            continue
        L.append(f"### {sc}")
        L.append("")
        L.append(SCENARIO_TEXT.get(sc, ""))
        L.append("")
        _scenario_results(L, sc, by_sc[sc])


def _scenario_results(L, sc, recs):
    """One scenario: a table per backend (and case), sparsefs's own counters, the commands."""
    bes = []
    for r in recs:
        if r["backend"] not in bes:
            bes.append(r["backend"])
    for be in bes:
        cases = []
        for r in recs:
            if r["backend"] == be and r["case"] not in cases:
                cases.append(r["case"])
        if sc == "sweep":
            cases = [None]
        for case in cases:
            rs = [r for r in recs if r["backend"] == be and (case is None or r["case"] == case)]
            title = f"{BACKEND_TITLE[be]}" + (f" — {case}" if case else "")
            ideal = rs[0]["ideal_bytes"]
            lg = (f"logical {fmt_bytes(rs[0]['logical'])}" if rs[0]["logical_unit"] == "B"
                  else f"{rs[0]['logical']:,} {rs[0]['logical_unit']}")
            L.append(f"**{title}** ({lg}"
                     f"{', ideal allocation ' + fmt_bytes(ideal) if ideal is not None else ''})")
            L.append("")
            L.extend(md_table(rs, be))
            L.append("")
            for r in rs:
                line = sparsefs_line(r)
                if line and sc != "sweep":
                    L.append(line)
                    L.append("")
            if sc == "sweep":
                L.append("| --sparse-block | stats: writes | punch | ftruncate | bytes written | allocated |")
                L.append("|---|---|---|---|---|---|")
                for r in rs:
                    s = r["median"].get("stats") or {}
                    L.append(f"| {r['case']} | {fmt_n(s.get('backend.write.calls'))} | "
                             f"{fmt_n(s.get('backend.punch.calls'))} | {fmt_n(s.get('backend.ftruncate.calls'))} | "
                             f"{fmt_bytes(s.get('backend.write.bytes'))} | {fmt_bytes(r['median']['alloc_bytes'])} |")
                L.append("")
            cmds = sorted({(r["variant"], r["label"], r["command"]) for r in rs},
                          key=lambda x: KIND_ORDER[x[0]])
            L.append("Commands: " + "; ".join(f"{k}: `{c}`" for k, _lbl, c in cmds))
            L.append("")


def projection_section(records):
    L = ["## Projecting to GPFS / Lustre / BeeGFS", ""]
    L.append("On a parallel filesystem each backend call is at least one network round trip, so to first "
             "order")
    L.append("")
    L.append("    time ≈ backend calls × RTT + backend bytes / bandwidth")
    L.append("")
    L.append("with *backend calls* the measured backend I/O calls plus metadata calls (strace counts in the "
             "tables above and in results.csv, metric_set=strace) and *backend bytes* the bytes written plus "
             "read. Take RTT as the per-call latency of your filesystem (e.g. measure a 4 KiB pwrite + fsync "
             "with `dd oflag=dsync`; 50 µs–2 ms is typical) and bandwidth as the single-client streaming "
             "bandwidth. Local CPU time (the daemon's CPU in the tables) adds to this. The call counts do not "
             "depend on the filesystem; a kernel client may split large calls into several RPCs (e.g. 1–4 MiB "
             "each), which the bytes/bandwidth term covers as long as RPCs stream.")
    L.append("")
    rtts = [(0.0002, "0.2 ms"), (0.001, "1 ms")]
    bw = 1e9
    L.append("Metadata calls matter: a parallel filesystem may serve some of them (stat, getxattr) from "
             "client caches, so the last column counts only the I/O calls. Example, bandwidth 1 GB/s, on the "
             "most remote backend measured for each scenario:")
    L.append("")
    L.append("| scenario | variant | backend I/O calls | metadata calls | backend bytes | all calls @ 0.2 ms "
             "| all calls @ 1 ms | I/O calls only @ 1 ms |")
    L.append("|---|---|---|---|---|---|---|---|")
    seen = set()
    for r in records:
        key = (r["scenario"], r["case"])
        if key in seen or r["scenario"] == "sweep":
            continue
        seen.add(key)
        be = next(b for b in _remoteness(records) if any(x["backend"] == b and (x["scenario"], x["case"]) == key
                                                         for x in records))
        for x in sorted([x for x in records if x["backend"] == be and (x["scenario"], x["case"]) == key],
                        key=lambda x: KIND_ORDER[x["variant"]]):
            if x["variant"] == "bindfs":
                continue
            t = x["strace_run"].get("trace")
            if not t:
                continue
            calls = t["io_calls"] + t["calls"]["meta"]
            nb = t["write_bytes"] + t["read_bytes"]
            proj = [calls * rtt + nb / bw for rtt, _ in rtts]
            io_only = t["io_calls"] * 0.001 + nb / bw
            name = x["variant"] if x["variant"] != "peer" else f"peer: {x['label']}"
            L.append(f"| {x['scenario']}{' / ' + x['case'] if x['case'] else ''} ({be}) | {name} | "
                     f"{fmt_n(t['io_calls'])} | {fmt_n(t['calls']['meta'])} | {fmt_bytes(nb)} | "
                     f"{fmt_s(proj[0])} s | {fmt_s(proj[1])} s | {fmt_s(io_only)} s |")
    L.append("")
    return L
