#!/usr/bin/env python3
"""Passthrough transitions under load: two reader threads open a dense file read-only
(kernel passthrough when nothing else has it open), read and SEEK_DATA, close, again;
the main thread opens it read-write in a loop (joining passthrough readers as a bypassed
writer, or opening first as an ordinary one) and writes random or all-zero data,
truncates, reads back, fstats and SEEK_DATAs against an in-memory model. Fails on any
mismatch (content, size, a hole reported over model data) and when the final file differs.

  scripts/reliability/ptstress.py MOUNTPOINT SECONDS
"""
import os, random, sys, threading, time
mnt = sys.argv[1]; dur = float(sys.argv[2]); p = os.path.join(mnt, "f")
MIB = 1 << 20
rnd = random.Random(1)
model = bytearray(os.urandom(4 * MIB))
with open(p, "wb") as f: f.write(model)
stop = False; errors = []
def reader():
    r = random.Random(2)
    while not stop:
        try:
            fd = os.open(p, os.O_RDONLY)
            for _ in range(r.randint(1, 5)):
                os.pread(fd, r.randint(1, 256 << 10), r.randint(0, 6 * MIB))
                os.lseek(fd, r.randint(0, 6 * MIB), os.SEEK_DATA) if r.random() < 0.3 else None
                time.sleep(r.random() * 0.002)
            os.close(fd)
        except OSError as e:
            if e.errno != 6:  # ENXIO from SEEK_DATA past EOF is fine
                errors.append(("reader", e)); 
            try: os.close(fd)
            except OSError: pass
ts = [threading.Thread(target=reader) for _ in range(2)]
for t in ts: t.start()
end = time.time() + dur; ops = 0
while time.time() < end:
    fd = os.open(p, os.O_RDWR)
    for _ in range(rnd.randint(1, 8)):
        k = rnd.random(); off = rnd.randint(0, 6 * MIB); n = rnd.randint(1, 512 << 10)
        if k < 0.5:
            data = os.urandom(n) if rnd.random() < 0.6 else bytes(n)
            os.pwrite(fd, data, off)
            if off > len(model): model.extend(bytes(off - len(model)))
            model[off:off + n] = data
        elif k < 0.65:
            os.ftruncate(fd, off)
            if off < len(model): del model[off:]
            else: model.extend(bytes(off - len(model)))
        elif k < 0.8:
            # read back through the writer and check
            got = os.pread(fd, n, off)
            want = bytes(model[off:off + n])
            if got != want: errors.append(("writer-read", off, n)); 
        elif k < 0.9:
            st = os.fstat(fd)
            if st.st_size != len(model): errors.append(("size", st.st_size, len(model)))
        else:
            try:
                d = os.lseek(fd, off, os.SEEK_DATA)
                # never a hole where the model has nonzero data
                seg = model[off:d]
                if any(seg): errors.append(("hole-over-data", off, d))
            except OSError as e:
                if e.errno != 6: errors.append(("seek", e))
                elif any(model[off:]): errors.append(("enxio-over-data", off))
        ops += 1
    os.close(fd)
    if errors: break
stop = True
for t in ts: t.join()
with open(p, "rb") as f: final = f.read()
print("ops", ops, "errors", errors[:5], "final-ok", final == bytes(model), len(final), len(model))
sys.exit(1 if errors or final != bytes(model) else 0)
