"""Running processes: commands, /proc lookups, unmounts, drop_caches, strace on a daemon, cleanups."""

import os
import shlex
import shutil
import signal
import subprocess
import time

from .common import BenchError, log


def sh(argv, check=True, timeout=None, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    p = subprocess.run(argv, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} failed ({p.returncode}): {(p.stderr or '').strip()[-400:]}")
    return p


def first_line(argv):
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=20)
        return (p.stdout.strip().splitlines() or ["?"])[0]
    except Exception as e:  # noqa: BLE001
        return f"unavailable ({e.__class__.__name__})"


def proc_argv(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def find_pid(pred):
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            argv = proc_argv(d)
            if argv and pred(argv):
                return int(d)
    return None


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_exit(pid, timeout=120):
    t = time.monotonic()
    while alive(pid):
        if time.monotonic() - t > timeout:
            raise BenchError(f"process {pid} did not exit within {timeout} s")
        time.sleep(0.02)


def cpu_rss(pid):
    """(utime+stime seconds, VmHWM KiB) of a process, all threads."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        hwm = None
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
        return cpu, hwm
    except (OSError, IndexError, ValueError):
        return None, None


def is_mountpoint(path):
    path = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[1].replace("\\040", " ") == path:
                return parts[2]
    return None


def lazy_umount(path):
    if is_mountpoint(path):
        subprocess.run(["umount", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if is_mountpoint(path):
        subprocess.run(["umount", "-l", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def drop_caches():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def fs_type(path):
    best, typ = "", "?"
    path = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            p = line.split()
            if len(p) > 2 and (path == p[1] or path.startswith(p[1].rstrip("/") + "/")) and len(p[1]) >= len(best):
                best, typ = p[1], p[2]
    return typ


def detach_loops(img):
    p = subprocess.run(["losetup", "-j", img], stdout=subprocess.PIPE, text=True)
    for line in p.stdout.splitlines():
        dev = line.split(":", 1)[0]
        subprocess.run(["losetup", "-d", dev], stderr=subprocess.DEVNULL)


def fuse_unmount(mnt, what):
    if is_mountpoint(mnt):
        r = subprocess.run(["fusermount3", "-u", mnt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if r.returncode != 0:
            lazy_umount(mnt)


def remove_tree(path):
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            if os.path.exists(path):
                subprocess.run(["rm", "-rf", path])
        else:
            os.unlink(path)


class DaemonTrace:
    """strace -f -C -y attached to a running daemon."""

    def __init__(self, pid, out):
        self.out = out
        self.proc = subprocess.Popen(["strace", "-f", "-C", "-y", "-s", "0", "-qq", "-p", str(pid), "-o", out],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        t = time.monotonic()
        while True:  # attached when every thread has a tracer
            tasks = os.listdir(f"/proc/{pid}/task")
            traced = 0
            for tid in tasks:
                try:
                    with open(f"/proc/{pid}/task/{tid}/status") as f:
                        if any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f):
                            traced += 1
                except OSError:
                    traced += 1
            if traced == len(tasks):
                break
            if self.proc.poll() is not None or time.monotonic() - t > 20:
                raise BenchError(f"strace could not attach to {pid}: {self.proc.stderr.read()[-300:]}")
            time.sleep(0.02)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class CleanupStack:
    """What to undo at the end (mounts, loop devices, temp dirs), newest first.

    `push` returns a token; `run(token)` undoes one entry early (and only once)."""

    def __init__(self):
        self.entries = []  # LIFO of (description, fn); fn None once run

    def __len__(self):
        return len(self.entries)

    def push(self, desc, fn):
        self.entries.append((desc, fn))
        return len(self.entries) - 1

    def run(self, token):
        desc, fn = self.entries[token]
        if fn is not None:
            self.entries[token] = (desc, None)
            fn()

    def unwind_to(self, mark=0):
        """Runs the entries registered since `mark` (e.g. one backend's), newest first; a
        failing entry is logged and the others still run."""
        while len(self.entries) > mark:
            desc, fn = self.entries.pop()
            if fn is None:
                continue
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                log(f"cleanup '{desc}' failed: {e}")
