"""Checkpoint writer: NPROC processes pwrite one file in strided 4 MiB blocks, about half zeros.

usage: checkpoint.py OUT POOL TOTAL_BYTES NPROC (POOL: a file of random bytes to take data from)
"""
import os, sys, hashlib
out, pool_path, total, nproc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
BLK, SUB = 4 << 20, 1 << 20
with open(pool_path, "rb") as f:
    pool = f.read()
ZERO = bytes(SUB)
def sub(k):  # sub-chunk k: about half are all zero
    if hashlib.blake2b(k.to_bytes(8, "little"), digest_size=1).digest()[0] & 1:
        return ZERO
    o = (k * 4096 * 37) % (len(pool) - SUB)
    return pool[o:o + SUB]
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.close(fd)
kids = []
for i in range(nproc):
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(out, os.O_WRONLY)
            for b in range(i, total // BLK, nproc):
                buf = b"".join(sub(b * 4 + j) for j in range(4))
                off = b * BLK
                while buf:
                    n = os.pwrite(fd, buf, off)
                    buf, off = buf[n:], off + n
            os.close(fd)
            os._exit(0)
        except BaseException as e:
            print("checkpoint writer:", e, file=sys.stderr)
            os._exit(1)
    kids.append(pid)
bad = sum(1 for p in kids if os.waitpid(p, 0)[1] != 0)
sys.exit(1 if bad else 0)
