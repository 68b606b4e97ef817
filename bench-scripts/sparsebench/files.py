"""Local file helpers: byte-for-byte comparison that skips holes, and the sparse test images."""

import errno
import os
import random

from .common import MiB

CHUNK = 8 * MiB
_ZERO = bytes(CHUNK)


def _read_full(fd, buf, off):
    n = 0
    while n < len(buf):
        k = os.preadv(fd, [memoryview(buf)[n:]], off + n)
        if k == 0:
            break
        n += k
    return n


def files_equal(out, src, out_seek=False):
    """Byte-for-byte comparison, like cmp, with 8 MiB reads. Ranges that SEEK_DATA on the
    (local, trusted) source reports as holes are compared with zeros instead of being read;
    with `out_seek` (a backend whose SEEK_DATA was probed to work) ranges that are holes in
    both files are skipped, and everything else of `out` is read. `src` None: all zeros."""
    try:
        fo = os.open(out, os.O_RDONLY)
    except OSError:
        return False
    fs = os.open(src, os.O_RDONLY) if src else None

    def is_hole(fd, pos, n):
        try:
            return os.lseek(fd, pos, os.SEEK_DATA) >= pos + n
        except OSError as e:
            if e.errno == errno.ENXIO:
                return True
            raise

    try:
        size = os.fstat(fo).st_size
        if fs is not None and os.fstat(fs).st_size != size:
            return False
        a, b = bytearray(CHUNK), bytearray(CHUNK)
        pos = 0
        while pos < size:
            n = min(CHUNK, size - pos)
            src_hole = fs is None or is_hole(fs, pos, n)
            if src_hole and out_seek:
                try:
                    if is_hole(fo, pos, n):
                        pos += n
                        continue
                except OSError:
                    out_seek = False
            if _read_full(fo, a, pos) != n:
                return False
            if src_hole:
                if (a if n == CHUNK else a[:n]) != (_ZERO if n == CHUNK else _ZERO[:n]):
                    return False
            elif _read_full(fs, b, pos) != n or (a != b if n == CHUNK else a[:n] != b[:n]):
                return False
            pos += n
        return True
    finally:
        os.close(fo)
        if fs is not None:
            os.close(fs)


def make_image(path, size, nextents, seed):
    """A sparse `size`-byte file holding `nextents` random 1 MiB extents at random 4 KiB-aligned
    offsets (one per equal region; reproducible for a seed); returns the data bytes."""
    rng = random.Random(seed)
    region = size // nextents
    offsets = []
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(nextents):
            off = region * i + rng.randrange(0, (region - MiB) // 4096) * 4096
            f.seek(off)
            f.write(os.urandom(MiB))
            offsets.append(off)
    os.utime(path, (1_000_000_000, 1_000_000_000))
    return nextents * MiB
