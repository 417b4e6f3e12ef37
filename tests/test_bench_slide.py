"""benchmarks/bench_slide.py's own measuring parts: the ground truth sampled on a map's grid,
the child-process memory sampler, and the table."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_slide import TreeMemory, ground_truth_on, table  # noqa: E402

from histoview.preprocessing.phantom_slide import GroundTruth  # noqa: E402


def test_ground_truth_sampled_at_map_pixel_centres():
    # labels at 8 um/px: column c holds value c % 4, so the sampled column says where it was read
    labels = np.tile((np.arange(12) % 4).astype(np.uint8), (10, 1))
    gt = GroundTruth(labels, 8.0, (320, 384), 0.25)
    # 14 um map pixels from (0, 0): centres at 7, 21, 35, 49, 63 um -> label columns 0, 2, 4, 6, 7
    got = ground_truth_on((3, 5), 14.0, (0.0, 0.0), gt)
    assert got.shape == (3, 5)
    np.testing.assert_array_equal(got[0], np.array([0, 2, 4, 6, 7]) % 4)
    # a map whose corner is 16 um to the right starts two label columns later
    shifted = ground_truth_on((1, 3), 8.0, (0.0, 16.0), gt)
    np.testing.assert_array_equal(shifted[0], np.array([2, 3, 4]) % 4)
    # past the label map's edge: its last column, not an error
    edge = ground_truth_on((1, 2), 64.0, (0.0, 0.0), gt)
    np.testing.assert_array_equal(edge[0], [labels[0, 4], labels[0, 11]])


def test_tree_memory_counts_the_child_and_its_children():
    code = (
        "import subprocess, sys, time; "
        "kid = subprocess.Popen([sys.executable, '-c', "
        "'import time; b = bytearray(120 * 2**20); b[::4096] = bytes(len(b[::4096])); "
        "time.sleep(1.5)']); "
        "a = bytearray(60 * 2**20); a[::4096] = bytes(len(a[::4096])); kid.wait()"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    meter = TreeMemory(child.pid, every_s=0.05)
    meter.start()
    child.wait()
    time.sleep(0.1)
    meter.stop.set()
    meter.join()
    assert meter.peak_procs >= 2
    assert meter.peak_pss > 170 * 2**20  # 120 + 60 MiB touched, in two processes


def test_table_has_a_row_per_record_and_the_memory_ratio():
    rec = {
        "method": "amil",
        "size": 10000,
        "tiles": 85,
        "wall_s": 60.0,
        "launch_to_first_batch_s": 12.0,
        "engine_tiles_per_s": 3.0,
        "forward_tiles_per_s": 4.0,
        "ratio_engine": 0.75,
        "ratio_end_to_end": 0.35,
        "peak_pss_tree_gib": 1.0,
        "peak_rss_largest_process_gib": 0.9,
        "auc": 0.93,
        "auc_in_situ_vs_benign": 0.91,
        "seam_score": 0.98,
    }
    text = table([rec, {**rec, "size": 25000, "peak_pss_tree_gib": 1.5}])
    rows = text.splitlines()
    assert len(rows) == 4 and all(r.count("|") == rows[0].count("|") for r in rows)
    assert "| 1.50 |" in rows[3] and "0.910/-" in rows[2]
