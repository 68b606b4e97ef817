"""Tests of the scale benchmark's pure helpers: the tree layout, raw.tsv/meta.tsv parsing,
stats diffs per file, failure detection and the Markdown fragment."""

import json
import os
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from sparsebench import scale  # noqa: E402


def stats(meta_calls, data_calls=0, errors=0):
    """A `sparsefs stats --json`-shaped document with the given meta calls by kind."""
    return {"app_writes": data_calls, "dirty_peak": 4096,
            "backend": {"write": {"calls": data_calls, "bytes": 0, "nanos": 0, "errors": 0}},
            "meta": {k: {"calls": v, "errors": errors if k == "open" else 0} for k, v in meta_calls.items()}}


class TreeLayout(unittest.TestCase):
    def test_directories_hold_at_most_per_dir_and_sum_to_n(self):
        for n in (1, 999, 1000, 1001, 20000, 1000000):
            lay = scale.tree_layout(n)
            self.assertEqual(sum(c for _, c in lay), n)
            self.assertTrue(all(0 < c <= scale.FILES_PER_DIR for _, c in lay))
            self.assertEqual(len({d for d, _ in lay}), len(lay))

    def test_gen_tree_makes_n_files_of_at_most_4k_deterministically(self):
        with tempfile.TemporaryDirectory() as d:
            files, nbytes = scale.gen_tree(os.path.join(d, "a"), 1500)
            self.assertEqual(files, 1500)
            sizes = [os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(d, "a")) for f in fs]
            self.assertEqual(len(sizes), 1500)
            self.assertEqual(sum(sizes), nbytes)
            self.assertLessEqual(max(sizes), scale.MAX_FILE)
            self.assertEqual(scale.gen_tree(os.path.join(d, "b"), 1500), (files, nbytes))


class RawParsing(unittest.TestCase):
    def test_parse_raw_nests_and_types_values(self):
        raw = scale.parse_raw("dir\t-\t-\tfstype\text4\n"
                              "dir\tsparsefs\trsync\tseconds\t1.250\n"
                              "dir\tsparsefs\trsync\trc\t0\n"
                              "dir\tsparsefs\trsync\terr\trsync: error 12\tand a tab\n"
                              "dir\tsparsefs\t-\tnofile\t4096\n\n")
        self.assertEqual(raw["dir"]["-"]["-"]["fstype"], "ext4")
        self.assertEqual(raw["dir"]["sparsefs"]["rsync"]["seconds"], 1.25)
        self.assertEqual(raw["dir"]["sparsefs"]["rsync"]["rc"], 0)
        self.assertEqual(raw["dir"]["sparsefs"]["rsync"]["err"], "rsync: error 12\tand a tab")
        self.assertEqual(raw["dir"]["sparsefs"]["-"]["nofile"], "4096")

    def test_parse_raw_rejects_short_lines(self):
        with self.assertRaises(ValueError):
            scale.parse_raw("dir\tsparsefs\trsync\n")

    def test_parse_meta(self):
        self.assertEqual(scale.parse_meta("files\t20000\ncommand\ta\tb\nnoise\n"),
                         {"files": "20000", "command": "a\tb"})


class PerFile(unittest.TestCase):
    def test_meta_per_file_diffs_and_divides(self):
        before = stats({"open": 10, "stat": 5, "unlink": 0}, data_calls=3)
        after = stats({"open": 30, "stat": 45, "unlink": 20}, data_calls=23, errors=10)
        c = scale.meta_per_file(before, after, 20)
        self.assertEqual(c["meta"], (20 + 40 + 20) / 20)
        self.assertEqual(list(c["meta_by_kind"]), ["stat", "open", "unlink"])
        self.assertEqual(c["meta_by_kind"]["stat"], 2.0)
        self.assertEqual(c["meta_errors"], 0.5)
        self.assertEqual(c["data"], 1.0)
        self.assertEqual(c["counters"], {"app_writes": 20, "dirty_peak": 4096})

    def test_meta_per_file_without_after_or_files_is_none(self):
        self.assertIsNone(scale.meta_per_file(stats({}), None, 10))
        self.assertIsNone(scale.meta_per_file(stats({}), stats({}), 0))


class StepOk(unittest.TestCase):
    def test_failures(self):
        self.assertIsNone(scale.step_ok({"seconds": 1, "rc": 0, "count": 5}, 5))
        self.assertEqual(scale.step_ok({"seconds": 1, "rc": 23}, 5), "exit 23")
        self.assertEqual(scale.step_ok({"seconds": 1, "rc": 0, "count": 4}, 5), "counted 4 files, not 5")
        self.assertEqual(scale.step_ok({"rc": 0}, 5), "did not finish")
        self.assertEqual(scale.step_ok(None, 5), "did not finish")


def sample_raw(n=1000, sparsefs_rm_rc=0, left=0):
    lines = ["dir\t-\t-\tfstype\text4", "dir\tsparsefs\t-\tnofile\t4096",
             "dir\tsparsefs\t-\trss_mount_kib\t3000", "dir\tsparsefs\t-\thwm_kib\t9000",
             f"dir\tsparsefs\t-\tleft_after_rm\t{left}"]
    if left:
        lines.append("dir\tsparsefs\t-\tleft_after_rm_list\t.fuse_hidden0001 ")
    for t, k in (("direct", 1.0), ("bindfs", 2.0), ("sparsefs", 3.0)):
        for s in scale.STEPS:
            lines += [f"dir\t{t}\t{s}\tseconds\t{k}", f"dir\t{t}\t{s}\trc\t{sparsefs_rm_rc if (t, s) == ('sparsefs', 'rm') else 0}"]
            if s == "find":
                lines.append(f"dir\t{t}\t{s}\tcount\t{n}")
            if t == "sparsefs":
                lines += [f"dir\t{t}\t{s}\tfds_peak\t{12 if s != 'ls' else 4000}",
                          f"dir\t{t}\t{s}\trss_kib\t{5000 if s != 'ls' else 8000}",
                          f"dir\t{t}\t{s}\tstats_before\tstats/{s}.b.json",
                          f"dir\t{t}\t{s}\tstats_after\tstats/{s}.a.json"]
    return scale.parse_raw("\n".join(lines) + "\n")


class Results(unittest.TestCase):
    def test_ratios_derived_figures_and_no_problems(self):
        res = scale.build_results(sample_raw(), {"files": "1000"})
        b = res["backings"][0]
        self.assertEqual(b["ratios"]["rsync"], {"sparsefs/bindfs": 1.5, "sparsefs/direct": 3.0})
        d = b["targets"]["sparsefs"]["derived"]
        self.assertEqual(d["fds_peak"], 4000)
        self.assertEqual(d["rss_after_ls_per_inode_b"], 8000 * 1024 / 1000)
        self.assertEqual(d["rss_growth_find_per_inode_b"], 2000 * 1024 / 1000)
        self.assertEqual(res["problems"], [])

    def test_failed_step_and_leftovers_are_problems(self):
        res = scale.build_results(sample_raw(sparsefs_rm_rc=1, left=1), {"files": "1000"})
        self.assertEqual(len(res["problems"]), 2, res["problems"])
        self.assertIn("dir/sparsefs rm: exit 1", res["problems"][0])
        self.assertIn(".fuse_hidden0001", res["problems"][1])
        self.assertFalse(res["backings"][0]["targets"]["sparsefs"]["steps"]["rm"]["ok"])
        self.assertEqual(res["backings"][0]["ratios"]["rm"], {"sparsefs/bindfs": None, "sparsefs/direct": None})

    def test_stats_snapshots_are_read_from_the_output_directory(self):
        with tempfile.TemporaryDirectory() as out:
            os.mkdir(os.path.join(out, "stats"))
            for s in scale.STEPS:
                for suffix, doc in (("b", stats({"stat": 0})), ("a", stats({"stat": 2000}))):
                    with open(os.path.join(out, "stats", f"{s}.{suffix}.json"), "w") as f:
                        json.dump(doc, f)
            res = scale.build_results(sample_raw(), {"files": "1000"}, out)
            rec = res["backings"][0]["targets"]["sparsefs"]["steps"]["find"]
            self.assertEqual(rec["backend_per_file"]["meta"], 2.0)
            md = scale.render_markdown(res)
            self.assertIn("| find | 12 |", md)
            self.assertIn("stat 2.00", md)


class IncompleteTree(unittest.TestCase):
    def test_steps_after_a_failed_rsync_have_no_ratio(self):
        raw = sample_raw()
        raw["dir"]["sparsefs"]["rsync"]["rc"] = 23
        res = scale.build_results(raw, {"files": "1000"})
        b = res["backings"][0]
        self.assertTrue(b["targets"]["sparsefs"]["steps"]["find"]["tree_incomplete"])
        self.assertNotIn("tree_incomplete", b["targets"]["bindfs"]["steps"]["find"])
        for s in scale.STEPS:
            self.assertIsNone(b["ratios"][s]["sparsefs/bindfs"], s)
        md = scale.render_markdown(res)
        self.assertIn("| 3.00 (tree incomplete: rsync failed) | - | - |", md)
        self.assertIn("**FAIL: exit 23**", md)


class Markdown(unittest.TestCase):
    def test_table_escapes_the_pipe_and_marks_failures(self):
        res = scale.build_results(sample_raw(sparsefs_rm_rc=1), {"files": "1000", "nofile": "4096"})
        md = scale.render_markdown(res)
        self.assertIn("`find T/tree -type f \\| wc -l` | 1.00 | 2.00 | 3.00 | 1.50 | 3.00 |", md)
        self.assertIn("| `rm -rf T/tree` | 1.00 | 2.00 | 3.00 **FAIL: exit 1** | - | - |", md)
        self.assertIn("Problems: dir/sparsefs rm: exit 1", md)
        for line in md.splitlines():
            if line.startswith("| `"):
                self.assertEqual(line.replace("\\|", "").count("|"), 7, line)

    def test_all_passed_sentence(self):
        md = scale.render_markdown(scale.build_results(sample_raw(), {"files": "1000"}))
        self.assertIn("Every step passed", md)
        self.assertIn("Left in the backing after `rm -rf`: nothing, every target.", md)


if __name__ == "__main__":
    unittest.main()
