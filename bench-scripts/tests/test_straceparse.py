"""Tests of the strace parser (sparsebench.straceparse) on real strace output (fixtures/)."""

import json
import os
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from sparsebench.straceparse import (ALL_KINDS, IO_KINDS, parse_strace,  # noqa: E402
                                     parse_strace_lines, strace_prefix)

FIXTURES = os.path.join(HERE, "fixtures")
# the backend directory in every fixture (fixtures/make_fixtures.sh)
ROOT = "/tmp/sbfix/ws"


def parse(name, root=ROOT):
    return parse_strace(os.path.join(FIXTURES, name), root)


class ThreadsFixture(unittest.TestCase):
    """fixtures/syscalls.py under `strace -f -C -y -s 0 -qq -e trace=...`: two writer threads,
    a FIFO reader blocked in openat and read, copy_file_range both ways, errors, a local file
    and a sibling directory named like the root. The expected figures are counted by hand
    from syscalls.py."""

    @classmethod
    def setUpClass(cls):
        cls.t = parse("threads.txt")

    def test_counts_by_kind(self):
        self.assertEqual(self.t["calls"], {
            # 2 pwrite64, the FIFO write, copy_file_range into ROOT, the write that fails with EBADF
            "write": 5,
            # the FIFO read (resumed), copy_file_range out of ROOT
            "read": 2,
            # SEEK_DATA twice per writer (one of them ENXIO past the end); SEEK_SET is local
            "seek": 4, "lseek_local": 2,
            "punch": 2, "allocate": 2, "ftruncate": 2, "fsync": 2,
            # per writer openat+newfstatat(/proc/self/fd/N)+close; FIFO 2x openat+close;
            # copy 3x openat+close; the ENOENT openat
            "meta": 17,
        })
        self.assertEqual(self.t["io_calls"], 19)
        self.assertEqual(self.t["all_calls"], 38)

    def test_bytes_only_from_successful_calls(self):
        # 2 x 64 KiB pwrite + 5 (FIFO) + 64 KiB copy_file_range in; the EBADF write adds nothing
        self.assertEqual(self.t["write_bytes"], 2 * 65536 + 5 + 65536)
        self.assertEqual(self.t["read_bytes"], 5 + 65536)

    def test_local_files_and_sibling_directory_do_not_count(self):
        self.assertFalse([k for k in self.t["targets"] if "other" in k or "data" in k or "back" in k])
        # fsync of local/other and ws2/other: not counted
        self.assertEqual(self.t["per_syscall"]["fsync"], 2)
        self.assertEqual(self.t["summary"]["fsync"], 4)

    def test_unfinished_and_resumed_calls_are_joined(self):
        with open(os.path.join(FIXTURES, "threads.txt")) as f:
            text = f.read()
        self.assertIn("<unfinished ...>", text)
        self.assertIn("resumed>", text)
        # the FIFO reader's openat and read only complete after the main thread opens and writes
        self.assertEqual(self.t["targets"]["read:read fifo"], 1)
        self.assertEqual(self.t["targets"]["meta:openat fifo"], 2)

    def test_proc_self_fd_path_is_attributed(self):
        self.assertEqual(self.t["targets"]["meta:newfstatat partN.bin"], 2)

    def test_copy_file_range_direction(self):
        self.assertEqual(self.t["targets"]["write:copy_file_range copy"], 1)
        self.assertEqual(self.t["targets"]["read:copy_file_range copy"], 1)

    def test_targets_normalise_digits(self):
        self.assertEqual(self.t["targets"]["write:pwrite64 partN.bin"], 2)
        self.assertEqual(self.t["targets"]["punch:fallocate partN.bin"], 2)
        self.assertEqual(self.t["targets"]["meta:openat missing"], 1)

    def test_summary(self):
        self.assertEqual(self.t["summary"]["pwrite64"], 4)  # 2 into ROOT, 2 elsewhere
        self.assertEqual(self.t["summary"]["copy_file_range"], 2)
        self.assertEqual(self.t["summary_total"], sum(self.t["summary"].values()))
        self.assertTrue(self.t["summary_text"].startswith("% time"))

    def test_stderr_form_with_pid_prefixes_gives_the_same_counts(self):
        """strace writing to stderr prefixes "[pid N]" while it traces several tasks, nothing
        while only one is left (after the threads exit)."""
        with open(os.path.join(FIXTURES, "threads-stderr.txt")) as f:
            text = f.read()
        self.assertIn("[pid ", text)
        self.assertIn("\ncopy_file_range(", text)
        s = parse("threads-stderr.txt")
        for k in ("calls", "write_bytes", "read_bytes", "io_calls", "targets", "per_syscall"):
            self.assertEqual(s[k], self.t[k], k)
        self.assertEqual(s["summary"], {})
        self.assertIsNone(s["summary_total"])


class WorkloadFixtures(unittest.TestCase):
    """The harness's own form, wrapping a workload (direct and peer variants)."""

    def test_dd_direct(self):
        """dd if=/dev/zero of=ROOT/zeros.raw bs=1M count=4 conv=fsync."""
        t = parse("dd-direct.txt")
        self.assertEqual(t["calls"]["write"], 4)
        self.assertEqual(t["write_bytes"], 4 << 20)
        self.assertEqual(t["calls"]["fsync"], 1)
        self.assertEqual(t["calls"]["read"], 0)  # reads of /dev/zero are not the backend's
        self.assertEqual(t["summary"]["read"], 7)
        # openat, dup2 onto stdout, close twice
        self.assertEqual(t["per_syscall"], {"openat": 1, "dup2": 1, "close": 2, "write": 4, "fsync": 1})
        self.assertEqual(t["summary_total"], 129)

    def test_cp_sparse_always(self):
        """cp --sparse=always of an 8 MiB image with 2 MiB of data: SEEK_DATA/SEEK_HOLE on the
        local source do not count, lseek(SEEK_CUR/SET) on the output is local."""
        t = parse("cp-sparse.txt")
        self.assertEqual(t["calls"]["seek"], 0)
        self.assertEqual(t["summary"]["lseek"], 10)
        self.assertEqual(t["calls"]["lseek_local"], 2)
        self.assertEqual(t["write_bytes"], 2 << 20)
        self.assertEqual(t["calls"]["write"], 16)
        self.assertEqual(t["calls"]["punch"], 3)
        self.assertEqual(t["calls"]["ftruncate"], 1)
        self.assertEqual(t["calls"]["read"], 0)

    def test_summary_only(self):
        """`strace -f -c`: no call lines, only the table (with an errors column on some rows)."""
        t = parse("dd-summary.txt")
        self.assertEqual(t["calls"], {k: 0 for k in ALL_KINDS})
        self.assertEqual(t["summary"]["openat"], 32)  # "32  13 openat": calls, not errors
        self.assertEqual(t["summary"]["access"], 1)
        self.assertEqual(t["summary_total"], 129)
        self.assertNotIn("total", t["summary"])
        self.assertEqual(len(t["summary_text"].splitlines()), 27)


class DaemonFixture(unittest.TestCase):
    """strace attached to a sparsefs daemon (-p) while dd wrote 4 MiB of zeros and cp wrote an
    8 MiB image with 2 MiB of data through the mount; daemon-stats.json holds the daemon's
    own counters (sparsefs stats --json) diffed around the same workload."""

    @classmethod
    def setUpClass(cls):
        cls.t = parse("daemon.txt")
        with open(os.path.join(FIXTURES, "daemon-stats.json")) as f:
            cls.stats = json.load(f)

    def test_fuse_traffic_is_not_backend_io(self):
        self.assertGreater(self.t["summary"]["read"], 50)  # reads of /dev/fuse
        self.assertEqual(self.t["calls"]["read"], 0)

    def test_data_writes_agree_with_the_stats(self):
        tg = self.t["targets"]
        data_writes = sum(n for k, n in tg.items() if k.startswith("write:") and ".sparsefs-maps" not in k)
        self.assertEqual(data_writes, self.stats["backend_calls"]["write"])
        self.assertEqual(self.t["calls"]["ftruncate"], self.stats["backend_calls"]["ftruncate"])
        map_bytes = self.t["write_bytes"] - self.stats["write_bytes"]
        self.assertTrue(0 < map_bytes < 4096, map_bytes)  # the small .sparsefs-maps files

    def test_only_the_data_reaches_img_raw(self):
        """The daemon's threads block in reads of /dev/fuse, so its trace is full of
        <unfinished ...>/resumed pairs (here, sometimes, a pwritev's too)."""
        with open(os.path.join(FIXTURES, "daemon.txt")) as f:
            self.assertGreater(sum(1 for line in f if line.endswith("<unfinished ...>\n")), 10)
        data = sum(n for k, n in self.t["targets"].items() if k.startswith("write:") and "img.raw" in k)
        self.assertEqual(data, self.stats["backend_calls"]["write"])  # 2 MiB of data: 2 extents
        self.assertGreaterEqual(self.t["write_bytes"], self.stats["write_bytes"])

    def test_io_calls_is_the_sum_of_io_kinds(self):
        self.assertEqual(self.t["io_calls"], sum(self.t["calls"][k] for k in IO_KINDS))
        self.assertEqual(self.t["all_calls"], self.t["io_calls"] + self.t["calls"]["meta"]
                         + self.t["calls"]["lseek_local"])


class Lines(unittest.TestCase):
    """Single lines in the shapes strace writes (from the fixtures, shortened)."""

    def test_resumed_without_unfinished_is_ignored(self):
        t = parse_strace_lines(["12 <... pwrite64 resumed>) = 4096\n"], ROOT)
        self.assertEqual(t["all_calls"], 0)

    def test_unfinished_then_resumed(self):
        t = parse_strace_lines([
            "7 pwrite64(3</r/ws/f>, \"\"..., 4096, 0 <unfinished ...>",
            "8 pwrite64(4</r/ws/g>, \"\"..., 100, 0) = 100",
            "7 <... pwrite64 resumed>) = 4096",
        ], "/r/ws")
        self.assertEqual(t["calls"]["write"], 2)
        self.assertEqual(t["write_bytes"], 4196)

    def test_root_prefix_needs_a_path_boundary(self):
        t = parse_strace_lines([
            "1 write(3</r/ws2/f>, \"\"..., 10) = 10",
            "1 openat(AT_FDCWD</r>, \"/r/wsx\", O_RDONLY) = -1 ENOENT (No such file or directory)",
            "1 newfstatat(AT_FDCWD</r>, \"/r/ws\", {st_mode=S_IFDIR|0755, ...}, 0) = 0",
        ], "/r/ws")
        self.assertEqual(t["calls"]["write"], 0)
        self.assertEqual(t["calls"]["meta"], 1)
        self.assertEqual(t["targets"], {"meta:newfstatat .": 1})

    def test_deleted_file(self):
        t = parse_strace_lines(["1 ftruncate(5</r/ws/a1.tmp (deleted)>, 0) = 0"], "/r/ws")
        self.assertEqual(t["targets"], {"ftruncate:ftruncate aN.tmp": 1})

    def test_sendfile_out_is_the_first_fd(self):
        t = parse_strace_lines([
            "1 sendfile(4</r/ws/out>, 3</src/in>, NULL, 100) = 100",
            "1 sendfile(4</dst/out>, 3</r/ws/in>, NULL, 50) = 50",
        ], "/r/ws")
        self.assertEqual((t["calls"]["write"], t["write_bytes"]), (1, 100))
        self.assertEqual((t["calls"]["read"], t["read_bytes"]), (1, 50))

    def test_file_and_lines_agree(self):
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write("1 fsync(3</r/ws/f>) = 0\n")
            f.flush()
            self.assertEqual(parse_strace(f.name, "/r/ws")["calls"]["fsync"], 1)

    def test_strace_prefix_is_the_documented_form(self):
        self.assertEqual(strace_prefix("/t/x"), ["strace", "-f", "-C", "-y", "-s", "0", "-qq", "-o", "/t/x", "--"])


if __name__ == "__main__":
    unittest.main()
