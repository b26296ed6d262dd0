"""Token-length histograms: in the terminal, and as a PNG written without any plotting library."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path


def buckets(lengths: list[int], edges: list[int]) -> list[tuple[str, int]]:
    """Counts per bucket `(previous edge, edge]`, plus one bucket above the last edge."""
    counts = [0] * (len(edges) + 1)
    for length in lengths:
        counts[next((i for i, edge in enumerate(edges) if length <= edge), len(edges))] += 1
    labels = [f"<= {edge:,}" for edge in edges] + [f"> {edges[-1]:,}"]
    return list(zip(labels, counts))


def terminal(lengths: list[int], edges: list[int], width: int = 40) -> list[str]:
    """One line per bucket: label, a bar scaled to the largest bucket, count and share."""
    rows = buckets(lengths, edges)
    top = max((count for _, count in rows), default=0) or 1
    total = max(len(lengths), 1)
    return [f"{label:>10} {'█' * round(width * count / top):<{width}} {count:>8,} {count / total:6.1%}"
            for label, count in rows]


def write_png(path: Path, lengths: list[int], edges: list[int], size: tuple[int, int] = (640, 320)) -> None:
    """A bar chart of the buckets as an 8-bit grayscale PNG (bars dark on white, one per bucket)."""
    width, height = size
    rows = buckets(lengths, edges)
    top = max((count for _, count in rows), default=0) or 1
    pixels = bytearray(b"\xff" * (width * height))
    slot = width // len(rows)
    for i, (_, count) in enumerate(rows):
        bar = round((height - 10) * count / top)
        for y in range(height - bar, height):
            start = y * width + i * slot + 2
            pixels[start:start + slot - 4] = b"\x30" * (slot - 4)
    raw = b"".join(b"\x00" + bytes(pixels[y * width:(y + 1) * width]) for y in range(height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
