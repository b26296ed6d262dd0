"""Token-length histograms in the terminal: bucket counts and bars (the PNG is `framework.report.plots`)."""
from __future__ import annotations


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

