"""Tests of the harness's pure helpers: sizes, formatting, stats diffs, file comparison, CLI."""

import argparse
import os
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
sys.path.insert(0, BENCH)

from sparsebench import common  # noqa: E402
from sparsebench.backends import BACKENDS_ENV, backend_scripts  # noqa: E402
from sparsebench.common import MiB, fmt_bytes, fmt_n, fmt_s, fmt_x, median, parse_size  # noqa: E402
from sparsebench.files import files_equal, make_image  # noqa: E402
from sparsebench.mounts import flatten, stats_diff, stats_io_calls  # noqa: E402
from sparsebench.proc import CleanupStack  # noqa: E402
from sparsebench.scenarios import Variant, build_scenarios  # noqa: E402


class Sizes(unittest.TestCase):
    def test_parse_size(self):
        self.assertEqual(parse_size("4K"), 4096)
        self.assertEqual(parse_size("32K"), 32 << 10)
        self.assertEqual(parse_size("1M"), MiB)
        self.assertEqual(parse_size("2G"), 2 << 30)
        self.assertEqual(parse_size("512"), 512)
        self.assertEqual(sorted(common.SWEEP_BLOCKS, key=parse_size), common.SWEEP_BLOCKS)

    def test_size_profiles(self):
        full, medium = common.SIZES["full"], common.SIZES["medium"]
        self.assertEqual(set(full), set(medium))
        for k in ("image", "zeros_mib", "ckpt", "dense", "small_files", "ls_entries", "image_extents"):
            self.assertEqual(medium[k] * 2, full[k], k)


class Formatting(unittest.TestCase):
    def test_fmt_bytes(self):
        self.assertEqual(fmt_bytes(None), "-")
        self.assertEqual(fmt_bytes(0), "0 B")
        self.assertEqual(fmt_bytes(1536), "1.5 KiB")
        self.assertEqual(fmt_bytes(2 << 30), "2 GiB")
        self.assertEqual(fmt_bytes(300 * MiB), "300 MiB")

    def test_fmt_s_n_x(self):
        self.assertEqual([fmt_s(x) for x in (None, 123.4, 12.34, 1.234, 0.01234)],
                         ["-", "123", "12.3", "1.23", "0.012"])
        self.assertEqual(fmt_n(1234567.4), "1,234,567")
        self.assertEqual(fmt_n(None), "-")
        self.assertEqual([fmt_x(x) for x in (None, 1.234, 12.34, 123.4)], ["-", "1.23×", "12.3×", "123×"])

    def test_median_ignores_none(self):
        self.assertIsNone(median([None]))
        self.assertEqual(median([3, None, 1, 2]), 2)


class Stats(unittest.TestCase):
    def test_stats_diff_keeps_gauges(self):
        before = {"app_writes": 10, "dirty_peak": 5, "backend": {"write": {"calls": 3, "bytes": 100}}}
        after = {"app_writes": 15, "dirty_peak": 7, "version": "x",
                 "backend": {"write": {"calls": 5, "bytes": 300}, "punch": {"calls": 1}}}
        self.assertEqual(stats_diff(after, before), {
            "app_writes": 5, "dirty_peak": 7, "version": "x",
            "backend": {"write": {"calls": 2, "bytes": 200}, "punch": {"calls": 1}}})
        self.assertIsNone(stats_diff(None, before))
        self.assertIs(stats_diff(after, None), after)

    def test_flatten_and_io_calls(self):
        st = {"backend": {"write": {"calls": 2}, "lseek": {"calls": 3}, "getxattr": {"calls": 9}}, "x": 1}
        self.assertEqual(flatten(st), {"backend.write.calls": 2, "backend.lseek.calls": 3,
                                       "backend.getxattr.calls": 9, "x": 1})
        self.assertEqual(stats_io_calls(st), 5)
        self.assertIsNone(stats_io_calls(None))


class Files(unittest.TestCase):
    def setUp(self):
        self.d = tempfile.TemporaryDirectory()
        self.addCleanup(self.d.cleanup)

    def path(self, name):
        return os.path.join(self.d.name, name)

    def test_image_and_comparison(self):
        a, b = self.path("a"), self.path("b")
        self.assertEqual(make_image(a, 16 * MiB, 4, 1), 4 * MiB)
        make_image(b, 16 * MiB, 4, 1)  # same seed: same offsets, other random data
        self.assertTrue(files_equal(a, a))
        self.assertTrue(files_equal(a, a, out_seek=True))
        self.assertFalse(files_equal(a, b))
        c = self.path("c")
        with open(a, "rb") as f, open(c, "wb") as g:
            g.write(f.read())  # dense copy: same bytes
        self.assertTrue(files_equal(c, a, out_seek=True))
        self.assertFalse(files_equal(self.path("missing"), a))

    def test_zeros(self):
        z = self.path("z")
        with open(z, "wb") as f:
            f.truncate(3 * MiB)
        self.assertTrue(files_equal(z, None))
        with open(z, "r+b") as f:
            f.seek(MiB + 5)
            f.write(b"\1")
        self.assertFalse(files_equal(z, None))


class Scenarios(unittest.TestCase):
    def test_every_scenario_is_built(self):
        self.assertEqual(sorted(build_scenarios()), sorted(common.ALL_SCENARIOS))

    def test_variant_slug(self):
        self.assertEqual(Variant("peer", "cp --sparse=always").slug, "peer-cp-sparse-always")

    def test_workload_scripts_are_files(self):
        from sparsebench.inputs import WORKLOADS
        for name in ("checkpoint.py", "iocount.py", "smallfiles.py"):
            with open(os.path.join(WORKLOADS, name)) as f:
                compile(f.read(), name, "exec")


class Backends(unittest.TestCase):
    def test_scripts_env_overrides(self):
        with mock.patch.dict(os.environ, {BACKENDS_ENV: "/elsewhere/backends"}):
            self.assertEqual(backend_scripts(), "/elsewhere/backends")

    def test_scripts_beside_the_repository(self):
        beside = os.path.join(os.path.dirname(common.REPO), "shared", "backends")
        with mock.patch.dict(os.environ, {BACKENDS_ENV: ""}):
            if os.path.isdir(beside):
                self.assertEqual(backend_scripts(), beside)
            else:
                self.assertRaises(common.BenchError, backend_scripts)


class Cleanups(unittest.TestCase):
    def test_lifo_once_and_failures_logged(self):
        done = []
        cs = CleanupStack()
        cs.push("a", lambda: done.append("a"))
        t = cs.push("b", lambda: done.append("b"))
        cs.push("bad", lambda: 1 / 0)
        cs.push("c", lambda: done.append("c"))
        cs.run(t)
        cs.run(t)
        with open(os.devnull, "w") as devnull:
            stderr, sys.stderr = sys.stderr, devnull
            try:
                cs.unwind_to(0)
            finally:
                sys.stderr = stderr
        self.assertEqual(done, ["b", "c", "a"])
        self.assertEqual(len(cs), 0)


class CommandLine(unittest.TestCase):
    def test_help_lists_every_option(self):
        out = subprocess.run([sys.executable, os.path.join(BENCH, "run"), "--help"], capture_output=True,
                             text=True, check=True).stdout
        for opt in ("--quick", "--backend", "--scenario", "--size", "--runs", "--gluster-dir", "--sparsefs",
                    "--out", "--md", "--timeout", "--report-only", "--merge"):
            self.assertIn(opt, out)

    def test_defaults(self):
        from sparsebench.cli import build_parser
        a = build_parser().parse_args([])
        self.assertEqual(a.out, os.path.join(common.REPO, "docs", "bench"))
        self.assertEqual(a.sparsefs, os.path.join(common.REPO, "target", "release", "sparsefs"))
        self.assertEqual(a.timeout, 3600)
        self.assertTrue(os.path.isfile(os.path.join(common.REPO, "bench-scripts", "run")))

    def test_merge_needs_report_only(self):
        p = subprocess.run([sys.executable, os.path.join(BENCH, "run"), "--merge", "x.json"],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--merge needs --report-only", p.stderr)

    def test_md_path(self):
        from sparsebench.report import md_path
        ns = argparse.Namespace
        self.assertEqual(md_path(ns(md="/x.md", out="/o")), "/x.md")
        self.assertEqual(md_path(ns(md=None, out="/o")), "/o/benchmarks.md")
        self.assertEqual(md_path(ns(md=None, out=os.path.join(common.REPO, "docs", "bench"))),
                         os.path.join(common.REPO, "docs", "benchmarks.md"))


if __name__ == "__main__":
    unittest.main()
