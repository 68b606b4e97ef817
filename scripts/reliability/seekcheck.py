#!/usr/bin/env python3
"""Check a file's SEEK_DATA/SEEK_HOLE map against its bytes, and print its sha256.

usage: seekcheck.py FILE [--expect SHA256] [--probes N] [--seed S]

Walks the file with lseek(SEEK_DATA)/lseek(SEEK_HOLE), checks that the map is well formed
(monotonic, inside [0, size], a hole at EOF), that every byte the map calls a hole reads
as zero, and that random probes of SEEK_DATA/SEEK_HOLE agree with the walked map. Reads
the whole file with pread and prints one line:

  size=N segments=N data=N hole=N sha256=HEX

Exit status 0 when everything holds (and the hash equals --expect if given), 1 otherwise,
with one line per problem on stderr. A hole reported where the file has non-zero bytes is
data loss for every sparse-aware copier (cp, tar -S, rsync -S, qemu-img).
"""
import errno
import hashlib
import os
import random
import sys

CHUNK = 1 << 20


def walk(fd, size):
    """The data segments [(start, end)] as SEEK_DATA/SEEK_HOLE report them."""
    segs = []
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        if data < pos or hole <= data or hole > size:
            raise ValueError(f"bad segment from pos {pos}: data={data} hole={hole} size={size}")
        segs.append((data, hole))
        pos = hole
    return segs


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    path = args.pop(0)
    expect = None
    probes = 256
    seed = 1
    while args:
        a = args.pop(0)
        if a == "--expect":
            expect = args.pop(0)
        elif a == "--probes":
            probes = int(args.pop(0))
        elif a == "--seed":
            seed = int(args.pop(0))
        else:
            print(f"unknown argument {a}", file=sys.stderr)
            return 2
    problems = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        segs = walk(fd, size)
        if segs and segs[-1][1] > size:
            problems.append("last data segment ends past EOF")
        if size > 0:
            try:
                os.lseek(fd, size, os.SEEK_DATA)
                problems.append(f"SEEK_DATA at EOF ({size}) did not fail with ENXIO")
            except OSError as e:
                if e.errno != errno.ENXIO:
                    problems.append(f"SEEK_DATA at EOF: {e}")
        # Bytes: hash everything, and check holes read as zero.
        h = hashlib.sha256()
        holes = []
        pos = 0
        for s, e in segs:
            if s > pos:
                holes.append((pos, s))
            pos = e
        if pos < size:
            holes.append((pos, size))
        hi = 0
        off = 0
        while off < size:
            n = min(CHUNK, size - off)
            buf = os.pread(fd, n, off)
            if len(buf) != n:
                problems.append(f"short read at {off}: {len(buf)} of {n}")
                break
            h.update(buf)
            # Zero check of the parts of [off, off+n) that the map calls holes.
            while hi < len(holes) and holes[hi][1] <= off:
                hi += 1
            j = hi
            while j < len(holes) and holes[j][0] < off + n:
                a = max(holes[j][0], off) - off
                b = min(holes[j][1], off + n) - off
                part = buf[a:b]
                if part.count(0) != len(part):
                    first = next(i for i, c in enumerate(part) if c != 0)
                    problems.append(
                        f"non-zero byte {part[first]:#04x} at {off + a + first:#x} inside "
                        f"reported hole [{holes[j][0]:#x}, {holes[j][1]:#x})"
                    )
                j += 1
            off += n
        # Random probes against the walked map.
        rnd = random.Random(seed)
        for _ in range(probes if size else 0):
            p = rnd.randrange(size)
            in_data = next(((s, e) for s, e in segs if s <= p < e), None)
            try:
                d = os.lseek(fd, p, os.SEEK_DATA)
            except OSError as e:
                d = None if e.errno == errno.ENXIO else e
            hpos = os.lseek(fd, p, os.SEEK_HOLE)
            if in_data:
                if d != p or hpos != in_data[1]:
                    problems.append(f"probe {p:#x} in data {in_data}: SEEK_DATA={d} SEEK_HOLE={hpos}")
            else:
                nxt = next((s for s, e in segs if s > p), None)
                end = nxt if nxt is not None else size
                if d != nxt or hpos != p:
                    problems.append(
                        f"probe {p:#x} in hole ending {end:#x}: SEEK_DATA={d} SEEK_HOLE={hpos}"
                    )
        digest = h.hexdigest()
    finally:
        os.close(fd)
    data = sum(e - s for s, e in segs)
    print(f"size={size} segments={len(segs)} data={data} hole={size - data} sha256={digest}")
    if expect and digest != expect:
        problems.append(f"sha256 {digest} != expected {expect}")
    for p in problems[:20]:
        print(f"seekcheck: {path}: {p}", file=sys.stderr)
    if len(problems) > 20:
        print(f"seekcheck: ... {len(problems) - 20} more", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
