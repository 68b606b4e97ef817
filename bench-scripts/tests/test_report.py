"""Tests of the reports: merging a rerun, derived ratios, CSV and Markdown from a results.json."""

import argparse
import csv
import json
import os
import sys
import tempfile
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from sparsebench import report  # noqa: E402

FIXTURES = os.path.join(HERE, "fixtures")
SMALL = os.path.join(FIXTURES, "results-small.json")    # dd-zeros and cp-never on dir
RERUN = os.path.join(FIXTURES, "results-rerun.json")    # dd-zeros on dir again, 10% faster


def load(path):
    with open(path) as f:
        return json.load(f)


class Merge(unittest.TestCase):
    def test_rerun_replaces_its_backend_scenario_pairs(self):
        d = load(SMALL)
        d["failures"] = ["dir dd-zeros direct:direct (run 1): old", "dir dd-zeros/x y", "dir dd-zeros: z",
                         "dir cp-never direct:direct (run 1): kept", "backend dir: kept"]
        old_cp = [r for r in d["records"] if r["scenario"] == "cp-never"]
        report.merge_results(d, RERUN)
        rerun = load(RERUN)
        self.assertEqual([r for r in d["records"] if r["scenario"] == "cp-never"], old_cp)
        self.assertEqual([r for r in d["records"] if r["scenario"] == "dd-zeros"], rerun["records"])
        self.assertEqual(d["failures"], ["dir cp-never direct:direct (run 1): kept", "backend dir: kept"]
                         + rerun["failures"])
        self.assertEqual(d["notes"], ["rerun note"])
        mg = d["meta"]["merged"]
        self.assertEqual(len(mg), 1)
        self.assertEqual(mg[0]["replaced"], ["dd-zeros on dir"])
        self.assertEqual(mg[0]["command"], rerun["meta"]["command"])


class Derive(unittest.TestCase):
    def test_ratios(self):
        d = load(SMALL)
        report.derive(d["records"])
        g = {(r["scenario"], r["variant"]): r for r in d["records"]}
        s, di = g[("dd-zeros", "sparsefs")], g[("dd-zeros", "direct")]
        self.assertAlmostEqual(s["ratios"]["speedup_vs_direct"], di["median"]["wall_s"] / s["median"]["wall_s"])
        self.assertEqual(di["ratios"]["speedup_vs_direct"], 1.0)
        self.assertEqual(s["ratios"]["best_peer"], g[("dd-zeros", "peer")]["label"])
        self.assertAlmostEqual(s["ratios"]["io_calls_vs_direct"],
                               s["strace_run"]["trace"]["io_calls"] / di["strace_run"]["trace"]["io_calls"])


class ReportOnly(unittest.TestCase):
    def run_report(self, merge=None):
        out = tempfile.TemporaryDirectory()
        self.addCleanup(out.cleanup)
        a = argparse.Namespace(report_only=SMALL, merge=merge, out=out.name, md=None)
        with mock.patch.object(report, "ensure_matplotlib", return_value=False), \
                mock.patch.object(report, "log"):
            self.assertEqual(report.report_only(a), 0)
        return out.name

    def test_writes_json_csv_and_markdown(self):
        out = self.run_report()
        self.assertEqual(sorted(os.listdir(out)), ["benchmarks.md", "results.csv", "results.json"])
        self.assertEqual(load(os.path.join(out, "results.json"))["records"][0]["scenario"], "dd-zeros")
        with open(os.path.join(out, "results.csv")) as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(rows[0].keys(), set(report.CSV_FIELDS) | set(rows[0].keys()))
        self.assertEqual({r["scenario"] for r in rows}, {"dd-zeros", "cp-never"})
        self.assertEqual(len([r for r in rows if r["metric_set"] == "timing"]), len(load(SMALL)["records"]))
        with open(os.path.join(out, "benchmarks.md")) as f:
            md = f.read()
        for heading in ("# sparsefs benchmarks", "## Headline", "## Machine", "## Method", "## Results",
                        "### dd-zeros", "### cp-never", "## Projecting to GPFS / Lustre / BeeGFS"):
            self.assertIn("\n" + heading + "\n", "\n" + md)
        self.assertIn("[results.json](./results.json)", md)
        self.assertNotIn("## Plots", md)

    def test_merge_is_noted(self):
        out = self.run_report(merge=[RERUN])
        with open(os.path.join(out, "benchmarks.md")) as f:
            md = f.read()
        self.assertIn("Replaced by a later run (2030-01-01T00:00:00", md)


if __name__ == "__main__":
    unittest.main()
