"""Parsing `strace -f -C -y` output into backend calls by kind and target file, plus the -c summary."""

import os
import re

# syscall -> kind for backend-call attribution (strace)
WRITE_CALLS = {"write", "pwrite64", "writev", "pwritev", "pwritev2"}
READ_CALLS = {"read", "pread64", "readv", "preadv", "preadv2"}
SYNC_CALLS = {"fsync", "fdatasync", "sync_file_range", "syncfs"}
TRUNC_CALLS = {"ftruncate", "truncate"}
# I/O kinds that are round trips to a parallel filesystem server (metadata kept apart)
IO_KINDS = ["write", "read", "seek", "punch", "allocate", "ftruncate", "fsync"]
ALL_KINDS = IO_KINDS + ["lseek_local", "meta"]

# "PID call(...)" as strace -f -o FILE writes every line; on stderr strace writes
# "[pid PID] call(...)" while it traces several tasks and "call(...)" while only one
LINE_RE = re.compile(r"^(?:\[pid +(\d+)\] +|(\d+) +)?(.*)$")
CALL_RE = re.compile(r"^([a-z_0-9]+)\((.*)$")
RESUMED_RE = re.compile(r"^<\.\.\. ([a-z_0-9]+) resumed>(.*)$")
RET_RE = re.compile(r"\)\s+=\s+(-?\d+)")
FD_PATH_RE = re.compile(r"(\d+)<([^>]*)>")
SELFREF_RE = re.compile(r'"/proc/self/fd/(\d+)')
TOP_TARGETS = 25


def strace_prefix(out):
    """The argv prefix that runs a workload under strace, writing to `out`."""
    return ["strace", "-f", "-C", "-y", "-s", "0", "-qq", "-o", out, "--"]


class BackendCalls:
    """Counts the calls of one strace output that touch the directory `root`."""

    def __init__(self, root):
        self.root = root
        self.mark = re.compile(re.escape(root) + r"(?=[/>\"])")
        self.quoted = re.compile(r'"(' + re.escape(root) + r'(?:/[^"]*)?)"')
        self.fdmap = {}    # fd -> last path seen for it (for calls by "/proc/self/fd/N" path)
        self.pending = {}  # pid -> (name, text) of an <unfinished ...> call
        self.targets = {}
        self.counts = {k: 0 for k in ALL_KINDS}
        self.nbytes = {"write": 0, "read": 0}
        self.per_call = {}
        self.summary_lines, self.summary, self.total = [], {}, None
        self.in_summary = False

    def _ours(self, path):
        return bool(self.mark.search("<" + path + ">"))

    def touches(self, text):
        """The backend path a call touches (fd annotation, path argument, /proc/self/fd/N), or None."""
        fds = FD_PATH_RE.findall(text)
        for fd, path in fds:
            self.fdmap[fd] = path
        for _fd, path in fds:
            if self.mark.match(path) or self._ours(path):
                return path
        m = self.quoted.search(text)
        if m:
            return m.group(1)
        for fd in SELFREF_RE.findall(text):
            path = self.fdmap.get(fd, "")
            if self._ours(path):
                return path
        return None

    def classify(self, name, text):
        if name in WRITE_CALLS:
            return "write"
        if name in READ_CALLS:
            return "read"
        if name == "lseek":
            return "seek" if ("SEEK_DATA" in text or "SEEK_HOLE" in text) else "lseek_local"
        if name == "fallocate":
            return "punch" if "PUNCH_HOLE" in text else "allocate"
        if name in TRUNC_CALLS:
            return "ftruncate"
        if name in SYNC_CALLS:
            return "fsync"
        if name in ("copy_file_range", "sendfile", "sendfile64"):
            # copy_file_range(in, off, out, ...), sendfile(out, in, ...): a write if out is ours
            fds = FD_PATH_RE.findall(text)
            out_fd = (fds[1] if len(fds) > 1 else None) if name == "copy_file_range" else (fds[0] if fds else None)
            return "write" if out_fd and self._ours(out_fd[1]) else "read"
        return "meta"

    def _target(self, name, kind, path):
        root = self.root
        rel = os.path.relpath(path, root) if path.startswith(root) else path
        rel = re.sub(r"\d+", "N", rel.replace(" (deleted)", ""))
        key = f"{kind}:{name} {rel}"
        self.targets[key] = self.targets.get(key, 0) + 1

    def _finish(self, name, text, ret_text, path):
        kind = self.classify(name, text)
        self._target(name, kind, path)
        self.counts[kind] += 1
        self.per_call[name] = self.per_call.get(name, 0) + 1
        if kind in self.nbytes:
            m = RET_RE.search(ret_text)
            if m and int(m.group(1)) > 0:
                self.nbytes[kind] += int(m.group(1))

    def _summary_line(self, line):
        self.summary_lines.append(line)
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit():
            name = parts[-1]
            calls = int(parts[3])
            if name == "total":
                self.total = calls
            else:
                self.summary[name] = calls

    def feed(self, line):
        """One line of strace output, without its newline."""
        if self.in_summary:
            self._summary_line(line)
            return
        if line.startswith("% time"):
            self.in_summary = True
            self.summary_lines.append(line)
            return
        # fast path: most lines (FUSE traffic, the local source) cannot touch the backend
        if (self.root not in line and "/proc/self/fd/" not in line and "<unfinished" not in line
                and "resumed>" not in line):
            return
        m = LINE_RE.match(line)
        pid, rest = m.group(1) or m.group(2) or "", m.group(3)
        r = RESUMED_RE.match(rest)
        if r:
            p = self.pending.pop(pid, None)
            if p is None:
                return
            name, text = p
            text2 = text + r.group(2)
            hit = self.touches(text2)
            if hit:
                self._finish(name, text2, r.group(2), hit)
            return
        c = CALL_RE.match(rest)
        if not c:
            return
        name = c.group(1)
        if rest.endswith("<unfinished ...>"):
            self.pending[pid] = (name, rest)
            return
        hit = self.touches(rest)
        if hit:
            self._finish(name, rest, rest, hit)

    def result(self):
        counts = self.counts
        io_calls = sum(counts[k] for k in IO_KINDS)
        return {
            "calls": counts, "write_bytes": self.nbytes["write"], "read_bytes": self.nbytes["read"],
            "io_calls": io_calls, "all_calls": io_calls + counts["meta"] + counts["lseek_local"],
            "per_syscall": self.per_call, "summary": self.summary, "summary_total": self.total,
            "targets": dict(sorted(self.targets.items(), key=lambda x: -x[1])[:TOP_TARGETS]),
            "summary_text": "\n".join(self.summary_lines),
        }


def parse_strace_lines(lines, root):
    """parse_strace on an iterable of lines (with or without their newlines)."""
    bc = BackendCalls(root)
    for raw in lines:
        bc.feed(raw.rstrip("\n"))
    return bc.result()


def parse_strace(path, root):
    """Counts the calls of an `strace -f -C -y` output file that touch `root` (by fd path or path
    argument), by kind, with bytes for reads and writes; plus the -c summary."""
    with open(path, errors="replace") as f:
        return parse_strace_lines(f, root)
