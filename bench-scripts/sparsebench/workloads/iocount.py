"""Runs a command and writes its /proc/PID/io counters (read/write syscalls and bytes) as JSON.

usage: iocount.py OUT.json ARGV...   (exit status: the command's)
"""
import json, os, sys
out, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # a zombie still has its /proc/PID/io
with open("/proc/%d/io" % pid) as f:
    io = {k: int(v) for k, v in (line.split(": ") for line in f.read().splitlines())}
_, status = os.waitpid(pid, 0)
with open(out, "w") as f:
    json.dump(io, f)
sys.exit(os.waitstatus_to_exitcode(status))
