"""How fast the commands that should not load torch answer: `python bench/cli_startup.py`.

Target: under 1 s each for `seqtune --help`, `seqtune plugins` and `seqtune check` on an invalid
recipe. Prints the median of several runs of the real console script.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS = 5


def median_seconds(argv: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(argv, cwd=REPO, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    exe = str(Path(sys.executable).with_name("seqtune"))
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "bad.yaml"
        bad.write_text("output_dir: out\nmodle: {}\ndata: {mixture: []}\n")
        cases = {"seqtune --help": [exe, "--help"], "seqtune plugins": [exe, "plugins"],
                 "seqtune check <invalid recipe>": [exe, "check", str(bad)],
                 "seqtune check recipes/tulu3/gemma2-2b-sft.yaml": [exe, "check",
                                                                   "recipes/tulu3/gemma2-2b-sft.yaml"]}
        for name, argv in cases.items():
            print(f"{name:50} {median_seconds(argv):6.3f} s (median of {RUNS})")


if __name__ == "__main__":
    main()
