"""Length histograms: bucket counts, the terminal bars, and a PNG that decodes."""
from __future__ import annotations

import struct
import zlib

from framework.cli.histogram import buckets, terminal, write_png


def test_buckets_count_each_length_once_with_edges_inclusive():
    assert buckets([1, 256, 257, 512, 5000], [256, 512]) == [("<= 256", 2), ("<= 512", 2), ("> 512", 1)]


def test_terminal_bars_scale_to_the_largest_bucket():
    lines = terminal([10] * 4 + [300] * 2, [256, 512], width=8)
    assert lines[0].count("█") == 8 and lines[1].count("█") == 4 and lines[2].count("█") == 0
    assert lines[0].rstrip().endswith("66.7%")


def test_png_is_a_valid_grayscale_image_with_one_bar_per_bucket(tmp_path):
    path = tmp_path / "lengths.png"
    write_png(path, [10] * 4 + [300] * 2, [256, 512], size=(300, 100))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth, color) == (300, 100, 8, 0)
    idat = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[idat - 4:idat])
    raw = zlib.decompress(data[idat + 4: idat + 4 + length])
    bottom = raw[(height - 1) * (width + 1) + 1:height * (width + 1)]
    # The bottom row is dark under the two non-empty buckets and white under the empty one.
    assert bottom[50] < 128 and bottom[150] < 128 and bottom[250] == 255
