"""The metadata scale benchmark's helpers (bench-scripts/scale.sh): the source tree, and the
raw records -> results.json + Markdown fragment.

scale.sh runs the workloads and writes what it measured as tab-separated lines to
OUT/raw.tsv (`backing  target  step  key  value`, "-" where a level does not apply), the
machine facts to OUT/meta.tsv (`key  value`), and `sparsefs stats --json` snapshots to
OUT/stats/. Everything here but `gen_tree` is pure: text in, dicts and text out.

    python3 -m sparsebench.scale gen DIR N        # N files, 0-4 KiB each, 1000 per directory
    python3 -m sparsebench.scale report OUT       # OUT/results.json and OUT/scale.md
"""

import json
import os
import random
import sys

from .common import fmt_bytes, fmt_n, fmt_s
from .mounts import stats_diff
from .straceparse import parse_strace

STEPS = ["rsync", "find", "ls", "du", "rm"]
STEP_TITLE = {"rsync": "`rsync -a SRC/ T/tree/`", "find": "`find T/tree -type f | wc -l`",
              "ls": "`ls -lR T/tree`", "du": "`du -s T/tree`", "rm": "`rm -rf T/tree`"}
TARGETS = ["direct", "bindfs", "sparsefs"]
BACKING_TITLE = {"dir": "local directory", "bindfs": "bindfs over a local directory",
                 "gluster": "GlusterFS"}
FILES_PER_DIR = 1000
MAX_FILE = 4096
# keys of raw.tsv whose values stay strings
TEXT_KEYS = {"err", "left_after_rm_list", "left_after_umount_list", "stats_before", "stats_after",
             "strace", "title", "fstype", "path", "nofile"}


def tree_layout(n, per_dir=FILES_PER_DIR):
    """(directory name, file count) for n files in directories of per_dir files."""
    out = []
    for d in range((n + per_dir - 1) // per_dir):
        out.append((f"d{d:05d}", min(per_dir, n - d * per_dir)))
    return out


def gen_tree(root, n, seed=15):
    """Writes n files of 0..MAX_FILE bytes (slices of one random buffer) under root in
    directories of FILES_PER_DIR; returns (files, bytes). Deterministic for a seed."""
    rng = random.Random(seed)
    buf = rng.randbytes(64 * 1024 + MAX_FILE)
    os.makedirs(root, exist_ok=True)
    files = nbytes = 0
    for dname, count in tree_layout(n):
        d = os.path.join(root, dname)
        os.mkdir(d)
        for i in range(count):
            size = rng.randrange(MAX_FILE + 1)
            off = rng.randrange(64 * 1024)
            fd = os.open(os.path.join(d, f"f{files:07d}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                if size:
                    os.write(fd, buf[off:off + size])
            finally:
                os.close(fd)
            files += 1
            nbytes += size
    return files, nbytes


def _value(key, v):
    if key in TEXT_KEYS:
        return v
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def parse_raw(text):
    """raw.tsv -> {backing: {target: {step: {key: value}}}} in the order first seen; numbers
    parsed; a repeated key keeps its last value."""
    out = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("\t", 4)
        if len(parts) != 5:
            raise ValueError(f"raw.tsv: bad line {line!r}")
        b, t, s, k, v = parts
        out.setdefault(b, {}).setdefault(t, {}).setdefault(s, {})[k] = _value(k, v)
    return out


def parse_meta(text):
    """meta.tsv (`key<TAB>value` lines) -> dict of strings."""
    out = {}
    for line in text.splitlines():
        if "\t" in line:
            k, v = line.split("\t", 1)
            out[k] = v
    return out


def meta_per_file(before, after, n):
    """From two `sparsefs stats --json` snapshots: the backend calls of the interval per file,
    {"meta": total, "meta_by_kind": {kind: per file, nonzero only}, "meta_errors": per file,
    "data": data-path calls per file, "data_by_kind": ...}; None without the after snapshot."""
    d = stats_diff(after, before)
    if d is None or not n:
        return None
    meta = d.get("meta", {}) or {}
    data = d.get("backend", {}) or {}
    by_kind = {k: v.get("calls", 0) / n for k, v in meta.items() if v.get("calls", 0)}
    data_kind = {k: v.get("calls", 0) / n for k, v in data.items() if v.get("calls", 0)}
    return {
        "meta": sum(v.get("calls", 0) for v in meta.values()) / n,
        "meta_by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "meta_errors": sum(v.get("errors", 0) for v in meta.values()) / n,
        "data": sum(v.get("calls", 0) for v in data.values()) / n,
        "data_by_kind": dict(sorted(data_kind.items(), key=lambda kv: -kv[1])),
        "counters": {k: v for k, v in d.items() if isinstance(v, (int, float)) and v},
    }


def _load_json(out_dir, rel):
    if not rel:
        return None
    try:
        with open(os.path.join(out_dir, rel)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def step_ok(rec, n):
    """Why a step's record is a failure (a string), or None if it passed."""
    if rec is None or "seconds" not in rec:
        return "did not finish"
    if rec.get("rc", 0) != 0:
        return f"exit {rec['rc']}"
    if "count" in rec and rec["count"] != n:
        return f"counted {rec['count']} files, not {n}"
    return None


def build_results(raw, meta, out_dir=None):
    """raw (parse_raw) + meta (parse_meta) -> the results.json document. out_dir is where
    the stats snapshots and strace summaries named in raw are read from (None: skipped)."""
    n = int(meta.get("files", 0))
    res = {"meta": meta, "files": n, "backings": [], "problems": []}
    for bname, targets in raw.items():
        if bname == "-":
            continue
        binfo = targets.get("-", {}).get("-", {})
        b = {"name": bname, "title": binfo.get("title", BACKING_TITLE.get(bname, bname)),
             "path": binfo.get("path"), "fstype": binfo.get("fstype"), "targets": {}, "ratios": {}}
        for tname in TARGETS:
            if tname not in targets:
                continue
            trec = targets[tname]
            tinfo = dict(trec.get("-", {}))
            t = {"steps": {}, **tinfo}
            for s in STEPS:
                rec = dict(trec.get(s, {})) if s in trec else None
                if rec is None:
                    continue
                fail = step_ok(rec, n)
                rec["ok"] = fail is None
                if s != "rsync" and t["steps"].get("rsync", {}).get("ok") is False:
                    rec["tree_incomplete"] = True  # not the same work as the other targets
                if fail:
                    rec["failure"] = fail
                    res["problems"].append(f"{bname}/{tname} {s}: {fail}"
                                           + (f" ({rec['err']})" if rec.get("err") else ""))
                if out_dir is not None and tname == "sparsefs":
                    calls = meta_per_file(_load_json(out_dir, rec.get("stats_before")),
                                          _load_json(out_dir, rec.get("stats_after")), n)
                    if calls is not None:
                        rec["backend_per_file"] = calls
                if out_dir is not None and rec.get("strace"):
                    p = os.path.join(out_dir, rec["strace"])
                    if os.path.exists(p):
                        sm = parse_strace(p, "/nonexistent-root")
                        rec["strace_summary"] = {"total": sm["summary_total"], "calls": sm["summary"]}
                t["steps"][s] = rec
            for key, what in (("left_after_rm", "left in the backing after rm -rf"),
                              ("left_after_umount", "left in the backing after unmount")):
                if tinfo.get(key):
                    res["problems"].append(f"{bname}/{tname}: {tinfo[key]} entries {what}: "
                                           f"{tinfo.get(key + '_list', '')}".rstrip(": "))
            if tinfo.get("emfile_lines"):
                res["problems"].append(f"{bname}/{tname}: {tinfo['emfile_lines']} 'Too many open files' "
                                       "lines in the daemon log and step errors")
            if tinfo.get("daemon_died"):
                res["problems"].append(f"{bname}/{tname}: the daemon died (steps after it skipped)")
            if tname == "sparsefs":
                t["derived"] = sparsefs_derived(t, n)
            b["targets"][tname] = t
        for s in STEPS:  # a failed step has no ratio: it did not do the same work
            secs = {tn: tt["steps"][s]["seconds"] for tn, tt in b["targets"].items()
                    if s in tt["steps"] and tt["steps"][s]["ok"] and not tt["steps"][s].get("tree_incomplete")}
            sp = secs.get("sparsefs")
            b["ratios"][s] = {
                "sparsefs/bindfs": sp / secs["bindfs"] if sp is not None and secs.get("bindfs") else None,
                "sparsefs/direct": sp / secs["direct"] if sp is not None and secs.get("direct") else None,
            }
        res["backings"].append(b)
    return res


def sparsefs_derived(t, n):
    """Figures derived from the sparsefs target's records: RSS per cached inode after find and
    after ls -lR (sparsefs stats has no inode count, so the N files stand for it; `find -type f`
    reads d_type and looks no file up, `ls -lR` looks every file up), peak fds."""
    d = {}
    for s in ("find", "ls"):
        rss = t["steps"].get(s, {}).get("rss_kib")
        if rss is not None and n:
            d[f"rss_after_{s}_per_inode_b"] = rss * 1024 / n
            if t.get("rss_mount_kib") is not None:
                d[f"rss_growth_{s}_per_inode_b"] = (rss - t["rss_mount_kib"]) * 1024 / n
    fds = [s.get("fds_peak") for s in t["steps"].values() if s.get("fds_peak") is not None]
    if fds:
        d["fds_peak"] = max(fds)
    return d


def _limit(v):
    try:
        return fmt_n(int(v))
    except (TypeError, ValueError):
        return "?"


def _ratio(r):
    return "-" if r is None else f"{r:.2f}"


def _cell(rec):
    if rec is None:
        return "-"
    if "seconds" not in rec:
        return "did not finish"
    s = fmt_s(rec["seconds"])
    if rec.get("failure"):
        s += f" **FAIL: {rec['failure']}**"
    if rec.get("tree_incomplete"):
        s += " (tree incomplete: rsync failed)"
    if rec.get("strace"):
        s += " (strace)"
    return s


def _per_file(x):
    return "-" if x is None else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def _kib(k):
    return "-" if k is None else fmt_bytes(k * 1024)


def render_markdown(res):
    """The Markdown fragment for docs/benchmarks.md."""
    m, n = res["meta"], res["files"]
    out = [f"### Metadata at scale: {fmt_n(n)} small files (issue 15)", ""]
    out.append(f"Command: `{m.get('command', 'bench-scripts/scale.sh')}` on {m.get('date', '?')}"
               f" ({m.get('minutes', '?')} min). Machine: {m.get('nproc', '?')} vCPU"
               f" ({m.get('cpu', '?')}), {m.get('ram', '?')} RAM, Linux {m.get('kernel', '?')};"
               f" source tree and backings under {m.get('under', '?')} ({m.get('under_fstype', '?')});"
               f" load average at start {m.get('load_start', '?')}, at end {m.get('load_end', '?')}"
               " (other work on the machine makes timings noisy: compare targets of one run).")
    out.append("")
    out.append(f"sparsefs: {m.get('sparsefs_version', '?')} (sha256 {m.get('sparsefs_sha', '?')[:16]}…,"
               f" repo HEAD {m.get('head', '?')}), default options, daemon started under"
               f" `prlimit --nofile={m.get('nofile', '4096')}:{m.get('nofile', '4096')}`;"
               f" {m.get('bindfs_version', 'bindfs')}, {m.get('rsync_version', 'rsync')}.")
    out.append("")
    cache = ("Page cache, dentries and inodes dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before every step"
             if m.get("cache") == "cold" else "caches kept between steps (`--warm`; `sync` before each step)")
    out.append(f"Tree: {fmt_n(n)} files of 0-4 KiB ({fmt_bytes(int(m.get('src_bytes', 0)))} in all) in"
               f" directories of {FILES_PER_DIR}, made once; per backing and target the five steps run"
               f" in order on a fresh T: {', '.join(STEP_TITLE[s] for s in STEPS)}. {cache}."
               " Targets: **direct** (T on the backing), **bindfs** (T is a bindfs mount over a directory"
               " of the backing), **sparsefs** (T is `sparsefs mount` over a directory of the backing)."
               " Ratios are wall-time ratios: above 1, sparsefs took longer.")
    for b in res["backings"]:
        out += ["", f"**{b['title']}** ({b.get('fstype') or '?'})", ""]
        out.append("| step | direct s | bindfs s | sparsefs s | sparsefs / bindfs | sparsefs / direct |")
        out.append("|---|---|---|---|---|---|")
        for s in STEPS:
            cells = [_cell(b["targets"].get(t, {}).get("steps", {}).get(s)) if t in b["targets"] else "-"
                     for t in TARGETS]
            r = b["ratios"].get(s, {})
            out.append(f"| {STEP_TITLE[s].replace('|', chr(92) + '|')} | {' | '.join(cells)} | {_ratio(r.get('sparsefs/bindfs'))}"
                       f" | {_ratio(r.get('sparsefs/direct'))} |")
        sp = b["targets"].get("sparsefs")
        if sp:
            out += ["", "sparsefs daemon, per step (backend calls per file from `sparsefs stats --json`,"
                    " diffed around the step; fds sampled every 0.2 s):", ""]
            out.append("| step | peak fds | RSS after | backend metadata calls / file | by kind / file | data calls / file |")
            out.append("|---|---|---|---|---|---|")
            for s in STEPS:
                rec = sp["steps"].get(s)
                if rec is None:
                    continue
                c = rec.get("backend_per_file") or {}
                kinds = ", ".join(f"{k} {_per_file(v)}" for k, v in list(c.get("meta_by_kind", {}).items())[:5]
                                  if v >= 0.005)
                if c.get("meta_errors", 0) >= 0.005:
                    kinds += f" (of which errors {_per_file(c['meta_errors'])}: ENOENT, ENODATA, ...)"
                out.append(f"| {s} | {fmt_n(rec.get('fds_peak'))} | {_kib(rec.get('rss_kib'))} |"
                           f" {_per_file(c.get('meta'))} | {kinds or '-'} | {_per_file(c.get('data'))} |")
            d = sp.get("derived", {})
            line = f"Peak RSS (VmHWM) {_kib(sp.get('hwm_kib'))}; RSS at mount {_kib(sp.get('rss_mount_kib'))}"
            for s, what in (("find", "`find`"), ("ls", "`ls -lR`")):
                if d.get(f"rss_after_{s}_per_inode_b") is not None:
                    line += (f", after {what} {_kib(sp['steps'][s].get('rss_kib'))}"
                             f" = {fmt_bytes(d[f'rss_after_{s}_per_inode_b'])} per file"
                             f" ({fmt_bytes(d.get(f'rss_growth_{s}_per_inode_b'))} above the RSS at mount)")
            line += (f" (`sparsefs stats` reports no inode count, so the {fmt_n(n)} files stand for it;"
                     " `find -type f` reads d_type and looks no file up, `ls -lR` looks every file up);"
                     f" peak fds {fmt_n(d.get('fds_peak'))} under a limit of {_limit(sp.get('nofile'))} open files.")
            out += ["", line]
            tr = [(s, r["strace_summary"]) for s, r in sp["steps"].items() if r.get("strace_summary")]
            for s, sm in tr:
                top = sorted(sm["calls"].items(), key=lambda kv: -kv[1])[:6]
                out.append(f"strace -f -c of the daemon during {s} (that step's time is slowed by strace):"
                           f" {fmt_n(sm['total'])} syscalls, {_per_file((sm['total'] or 0) / n if n else None)}"
                           f" per file; top: {', '.join(f'{k} {fmt_n(v)}' for k, v in top)}.")
        bf = b["targets"].get("bindfs")
        if bf and bf.get("hwm_kib") is not None:
            fds = [r.get("fds_peak") for r in bf["steps"].values() if r.get("fds_peak") is not None]
            out.append(f"bindfs daemon: peak RSS {_kib(bf.get('hwm_kib'))}, peak fds {fmt_n(max(fds) if fds else None)}.")
        du = [f"{t} {fmt_bytes(tt['steps']['du']['du_kib'] * 1024)}" for t, tt in b["targets"].items()
              if tt["steps"].get("du", {}).get("du_kib") is not None]
        if du:
            out.append("`du -s` reported: " + ", ".join(du) + ".")
        left = [f"{t}: {tt.get('left_after_rm')} entries ({tt.get('left_after_rm_list', '')})"
                for t, tt in b["targets"].items() if tt.get("left_after_rm")]
        out.append("Left in the backing after `rm -rf`: " + ("; ".join(left) if left else "nothing, every target") + ".")
    out.append("")
    if res["problems"]:
        out.append("Problems: " + "; ".join(res["problems"]) + ".")
    else:
        out.append(f"Every step passed (find counted {fmt_n(n)} files everywhere; rm -rf left nothing).")
    return "\n".join(out) + "\n"


def report(out_dir):
    """OUT/raw.tsv + OUT/meta.tsv -> OUT/results.json, OUT/scale.md; returns the Markdown."""
    with open(os.path.join(out_dir, "raw.tsv")) as f:
        raw = parse_raw(f.read())
    with open(os.path.join(out_dir, "meta.tsv")) as f:
        meta = parse_meta(f.read())
    res = build_results(raw, meta, out_dir)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(res, f, indent=1, sort_keys=False)
        f.write("\n")
    md = render_markdown(res)
    with open(os.path.join(out_dir, "scale.md"), "w") as f:
        f.write(md)
    return md, res


def main(argv):
    if len(argv) >= 3 and argv[0] == "gen":
        files, nbytes = gen_tree(argv[1], int(argv[2]))
        print(files, nbytes)
        return 0
    if len(argv) == 2 and argv[0] == "report":
        md, res = report(argv[1])
        sys.stdout.write(md)
        return 1 if res["problems"] else 0
    print("usage: python3 -m sparsebench.scale gen DIR N | report OUT",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
