"""Terminal length histograms: bucket counts and bars (the PNG: tests/framework/report/test_plots.py)."""
from __future__ import annotations

from framework.cli.histogram import buckets, terminal


def test_buckets_count_each_length_once_with_edges_inclusive():
    assert buckets([1, 256, 257, 512, 5000], [256, 512]) == [("<= 256", 2), ("<= 512", 2), ("> 512", 1)]


def test_terminal_bars_scale_to_the_largest_bucket():
    lines = terminal([10] * 4 + [300] * 2, [256, 512], width=8)
    assert lines[0].count("█") == 8 and lines[1].count("█") == 4 and lines[2].count("█") == 0
    assert lines[0].rstrip().endswith("66.7%")

