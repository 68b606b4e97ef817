#!/usr/bin/env python3
"""zrx: a small seeded exerciser for what fsx 0.3.2 does not do: FALLOC_FL_ZERO_RANGE, all-zero
and mostly-zero pwrite buffers, and SEEK_DATA/SEEK_HOLE answers checked against the model.

usage: zrx.py FILE [--ops N] [--seed S] [--flen BYTES] [--opmax BYTES] [--log-ops N] [--good PATH]

Operations (weights in OPS below), each applied to FILE and to an in-memory model:
  write      pwrite of random bytes          zwrite   pwrite of an all-zero buffer
  swrite     pwrite of zeros with a few non-zero bytes (zero detection edge cases)
  read       pread, compared with the model  zero     fallocate(ZERO_RANGE)
  zerok      fallocate(ZERO_RANGE|KEEP_SIZE) punch    fallocate(PUNCH_HOLE|KEEP_SIZE)
  alloc      fallocate(0)                     truncate ftruncate (shrink or grow)
  fsync, fdatasync, reopen (close/open),      seek     SEEK_DATA/SEEK_HOLE at a random
                                                       offset: a hole must be zeros in the
                                                       model, SEEK_DATA must not skip data
Offsets and sizes are unaligned. A fallocate mode the file system refuses with EOPNOTSUPP
is counted and left out from then on (reported at the end). Stops at the first mismatch,
prints the seed, the last --log-ops operations, and the differing range, writes the model's
bytes to --good PATH (default FILE.zrxgood), exit status 1.
Success prints: "zrx: N ops OK seed=S size=N sha256=HEX skipped=[...]" (the model's hash).
"""
import ctypes
import ctypes.util
import errno
import hashlib
import os
import random
import sys
from collections import deque

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def fallocate(fd, mode, off, length):
    if libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


OPS = {
    "write": 10, "zwrite": 5, "swrite": 3, "read": 10, "zero": 5, "zerok": 3, "punch": 4,
    "alloc": 2, "truncate": 2, "fsync": 1, "fdatasync": 1, "reopen": 1, "seek": 6,
}


class Fail(Exception):
    pass


def main():
    a = sys.argv[1:]
    if not a or a[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    path = a.pop(0)
    opts = {"--ops": 10000, "--seed": None, "--flen": 4 << 20, "--opmax": 512 << 10, "--log-ops": 40,
            "--good": path + ".zrxgood"}
    while a:
        k = a.pop(0)
        if k not in opts:
            print(f"zrx: unknown argument {k}", file=sys.stderr)
            return 2
        v = a.pop(0)
        opts[k] = v if k == "--good" else int(v)
    seed = opts["--seed"] if opts["--seed"] is not None else random.randrange(1 << 32)
    nops, flen, opmax = opts["--ops"], opts["--flen"], opts["--opmax"]
    rnd = random.Random(seed)
    print(f"zrx: seed={seed} ops={nops} flen={flen} opmax={opmax} file={path}", flush=True)
    names = list(OPS)
    weights = [OPS[n] for n in names]
    model = bytearray()
    log = deque(maxlen=opts["--log-ops"])
    skipped = set()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    def check_range(off, n, why):
        got = os.pread(fd, n, off)
        want = bytes(model[off:off + n])
        if got != want:
            i = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
            raise Fail(f"{why}: mismatch at {off + i:#x} (read {len(got)} of {n} bytes from {off:#x}): "
                       f"got {got[i:i + 8].hex() or 'EOF'} want {want[i:i + 8].hex()}")

    def span():
        off = rnd.randrange(flen)
        n = rnd.randrange(1, opmax + 1)
        return off, min(n, flen - off)

    step = 0
    try:
        for step in range(1, nops + 1):
            op = rnd.choices(names, weights)[0]
            if op in skipped:
                continue
            size = len(model)
            if op in ("write", "zwrite", "swrite"):
                off, n = span()
                if op == "write":
                    buf = rnd.randbytes(n)
                elif op == "zwrite":
                    buf = bytes(n)
                else:
                    b = bytearray(n)
                    for _ in range(rnd.randrange(1, 4)):
                        b[rnd.randrange(n)] = rnd.randrange(1, 256)
                    buf = bytes(b)
                log.append(f"{step} {op} {off:#x}+{n:#x}")
                if os.pwrite(fd, buf, off) != n:
                    raise Fail("short write")
                if off > size:
                    model.extend(bytes(off - size))
                model[off:off + n] = buf
            elif op == "read":
                if size == 0:
                    continue
                off = rnd.randrange(size)
                n = min(rnd.randrange(1, opmax + 1), size - off)
                log.append(f"{step} read {off:#x}+{n:#x}")
                check_range(off, n, "read")
            elif op in ("zero", "zerok", "punch", "alloc"):
                off, n = span()
                mode = {"zero": FALLOC_FL_ZERO_RANGE,
                        "zerok": FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                        "punch": FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "alloc": 0}[op]
                log.append(f"{step} {op} {off:#x}+{n:#x} (size {size:#x})")
                try:
                    fallocate(fd, mode, off, n)
                except OSError as e:
                    if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                        skipped.add(op)
                        log.append(f"{step} {op} -> {e.strerror}: not used from now on")
                        continue
                    raise
                end = off + n
                keep = mode & FALLOC_FL_KEEP_SIZE
                if op == "alloc" or not keep:
                    if end > size:
                        model.extend(bytes(end - size))
                if op != "alloc":
                    lo, hi = off, min(end, len(model))
                    if hi > lo:
                        model[lo:hi] = bytes(hi - lo)
            elif op == "truncate":
                n = rnd.randrange(flen)
                log.append(f"{step} truncate {size:#x} -> {n:#x}")
                os.ftruncate(fd, n)
                if n < size:
                    del model[n:]
                else:
                    model.extend(bytes(n - size))
            elif op in ("fsync", "fdatasync"):
                log.append(f"{step} {op}")
                (os.fsync if op == "fsync" else os.fdatasync)(fd)
            elif op == "reopen":
                log.append(f"{step} close/open")
                os.close(fd)
                fd = os.open(path, os.O_RDWR)
            elif op == "seek":
                if size == 0:
                    continue
                p = rnd.randrange(size)
                h = os.lseek(fd, p, os.SEEK_HOLE)
                try:
                    d = os.lseek(fd, p, os.SEEK_DATA)
                except OSError as e:
                    if e.errno != errno.ENXIO:
                        raise
                    d = size
                log.append(f"{step} seek {p:#x}: SEEK_DATA={d:#x} SEEK_HOLE={h:#x}")
                if not (p <= h <= size) or not (p <= d <= size):
                    raise Fail(f"seek at {p:#x}: SEEK_DATA={d:#x} SEEK_HOLE={h:#x} outside [{p:#x}, {size:#x}]")
                # [p, d) is reported as hole and [h, next data) too: both must be zeros.
                if any(model[p:d]):
                    i = next(i for i in range(p, d) if model[i])
                    raise Fail(f"SEEK_DATA from {p:#x} skipped data at {i:#x} (returned {d:#x})")
                if h < size:
                    try:
                        d2 = os.lseek(fd, h, os.SEEK_DATA)
                    except OSError as e:
                        if e.errno != errno.ENXIO:
                            raise
                        d2 = size
                    if any(model[h:d2]):
                        i = next(i for i in range(h, d2) if model[i])
                        raise Fail(f"hole [{h:#x}, {d2:#x}) reported from {p:#x} holds data at {i:#x}")
            st = os.fstat(fd).st_size
            if st != len(model):
                raise Fail(f"size {st:#x}, model {len(model):#x}")
        # final full comparison
        check_range(0, len(model), "final read")
    except (Fail, OSError) as e:
        print(f"zrx: FAIL at op {step} seed={seed}: {e}", file=sys.stderr)
        print(f"zrx: last {len(log)} ops:", file=sys.stderr)
        for line in log:
            print(f"  {line}", file=sys.stderr)
        with open(opts["--good"], "wb") as g:
            g.write(model)
        return 1
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    print(f"zrx: {nops} ops OK seed={seed} size={len(model)} "
          f"sha256={hashlib.sha256(model).hexdigest()} skipped={sorted(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
