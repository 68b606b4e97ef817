#!/usr/bin/env python3
"""Reproducer (issue 18): O_DIRECT writes on a sharded GlusterFS volume lose data.

    bench-scripts/gluster-odirect.py FILE THREADS ITERATIONS [--second-fd]

Writes 1 GiB of random data to FILE (on the GlusterFS mount) in 4 MiB O_DIRECT pwrites
from THREADS threads, fsyncs, reads it back and compares, ITERATIONS times. With
--second-fd the file is first opened buffered (O_RDWR) and the O_DIRECT descriptor is a
reopen of it through /proc/self/fd, as `sparsefs --direct-writes always` does. No sparsefs
involved. Measured 2026-12-05, `SHARD=1 DELAY_US=500 gluster-up.sh` (GlusterFS 10.3):
one descriptor, 1 and 4 threads: 8 of 8 runs equal; --second-fd, 4 threads: 1 of 6 runs
read back different bytes although every call succeeded.
"""
import mmap
import os
import sys
import threading
import time


def main():
    path, threads, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    second = "--second-fd" in sys.argv[4:]
    src = os.urandom(1 << 30)
    bad = 0
    for it in range(iters):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        if second:
            bfd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            fd = os.open(f"/proc/self/fd/{bfd}", os.O_WRONLY | os.O_DIRECT)
        else:
            bfd = None
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o644)
        chunks = list(range(256))
        lock = threading.Lock()
        errs = []

        def work():
            m = mmap.mmap(-1, 4 << 20)
            while True:
                with lock:
                    if not chunks:
                        return
                    c = chunks.pop(0)
                m.seek(0)
                m.write(src[c * (4 << 20):(c + 1) * (4 << 20)])
                try:
                    os.pwrite(fd, m, c * (4 << 20))
                except OSError as e:
                    errs.append((c, e))

        t = time.time()
        ts = [threading.Thread(target=work) for _ in range(threads)]
        for x in ts:
            x.start()
        for x in ts:
            x.join()
        os.fsync(fd)
        os.close(fd)
        if bfd is not None:
            os.fsync(bfd)
            os.close(bfd)
        with open(path, "rb") as f:
            back = f.read()
        equal = back == src
        bad += not equal
        print(f"threads={threads} second_fd={second} run {it}: {time.time() - t:.2f} s "
              f"errors={errs[:2]} equal={equal} allocated={os.stat(path).st_blocks * 512 >> 20} MiB",
              flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
