"""Small-file metadata workload: creates N empty files in a new directory, stats them, unlinks them.

usage: smallfiles.py DIR N
"""
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
names = [os.path.join(d, "f%06d" % i) for i in range(n)]
for p in names:
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
for p in names:
    os.stat(p)
for p in names:
    os.unlink(p)
