"""Data preparation at the seed's scale: a cold and a warm run of the real pipeline, stage by stage,
next to plain batched tokenization of the same rows.

    python bench/data_scale.py [--rows 200000] [--workers 1 2] [--small 50000] [--work DIR]

Rows are synthetic chats shaped like the Tulu 3 SFT mixture (`bench/synthetic_chats.py`, ~600
tokens each) and the tokenizer is the real Qwen2.5 vocabulary with its own ChatML template (built
offline, as the tests build it). For each worker count it runs, in fresh processes:
- cold: `seqtune check recipe --samples 1` with an empty cache: read, mix, tokenize, write the cache;
  its stage times come from the cache entry, its peak memory is the whole process tree's (PSS);
- warm: the same command again (the cache is filled and written out to disk): time to the first sample;
- warm train: `seqtune train` of a tiny model on the cached rows, until its first step starts;
and, in this process, plain batched tokenization (`encode_batch`, 1,000 at a time) of the same rows
rendered by the template (up to 100,000 of them: the rate is per row). With `--small`, a cold run at
that size too, for the cost per row at two sizes.

Targets on a 2-core machine: cold end-to-end at least 0.6x plain tokenization's rows/s with one
worker, faster with two; cost per row the same at both sizes; warm under 10 s; peak RSS under 3 GB.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from synthetic_chats import write  # noqa: E402  (a sibling script)

RECIPE = """\
output_dir: {work}/out
model: {{config: {{model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
                  num_attention_heads: 2, num_key_value_heads: 1, max_position_embeddings: 4096}}}}
tokenizer: {{name_or_path: {tokenizer}}}
data:
  mixture: [{{source: {data}, fraction: 1.0}}]
  max_seq_length: 4096
  cache_dir: {work}/cache
launch: {{device: cpu}}
logging: {{loggers: [jsonl]}}
"""


def qwen_tokenizer(work: Path) -> Path:
    folder = work / "qwen2.5-tokenizer"
    if not (folder / "tokenizer.json").is_file():
        spec = importlib.util.spec_from_file_location("qwen_tokenizer_builder", REPO / "tests/qwen_tokenizer.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.qwen25_tokenizer(work / "builder-cache").save_pretrained(folder)
    return folder


def tree_memory(pid: int) -> int:
    """Bytes of memory a process and all its descendants hold: their proportional set sizes (PSS),
    so that pages forked workers share with their parent count once (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            rollup = Path(f"/proc/{current}/smaps_rollup").read_text()
            total += int(next(line.split()[1] for line in rollup.splitlines() if line.startswith("Pss:"))) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


def timed(command: list[str], until: str | None = None) -> tuple[float, float]:
    """(seconds, peak memory of the process tree in GB) of a command, sampling memory every 0.2 s;
    with `until`, the seconds until a stderr line holds that text (then the command is stopped)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], tree_memory(process.pid))

    threading.Thread(target=sample, daemon=True).start()
    tail, seconds = [], None
    for line in process.stderr:
        tail = (tail + [line])[-40:]
        if until and until in line and seconds is None:
            seconds = time.perf_counter() - started
            process.terminate()
    process.wait()
    done.set()
    if seconds is None and process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{''.join(tail)}")
    return seconds or time.perf_counter() - started, peak[0] / 2**30


def seqtune(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("seqtune")), *args]


def prepare_run(recipe: Path, workers: int, cache: Path) -> dict:
    """A cold run, then the warm ones; stage times from the cache entry the cold run wrote."""
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    check = seqtune("check", str(recipe), "--samples", "1", f"data.num_workers={workers}")
    cold, cold_rss = timed(check)
    os.sync()  # the cold run's gigabytes of shards reach the disk before the warm runs are timed
    meta = json.loads(next(cache.glob("preprocessed/*/complete.json")).read_text())
    warm, warm_rss = timed(check)
    # the rich logger's header ("<run>: N rows, S optimizer steps, ...") comes right before the first step
    train, _ = timed(seqtune("train", str(recipe), f"data.num_workers={workers}", "--overwrite",
                             "logging.loggers=[rich]"), until="optimizer steps,")
    return {"cold": cold, "cold_rss": cold_rss, "warm": warm, "warm_rss": warm_rss, "train": train,
            **meta["seconds"], "rows": meta["mixture"]["rows"]}


def plain_rate(data: Path, tokenizer_dir: Path, rows: int) -> float:
    """Rows/s of plain batched tokenization of the rows rendered by the template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    with data.open() as lines:
        texts = [tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=False)
                 for line, _ in zip(lines, range(rows))]
    started = time.perf_counter()
    for i in range(0, len(texts), 1000):
        tokenizer.backend_tokenizer.encode_batch(texts[i:i + 1000], add_special_tokens=False)
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--small", type=int, default=0, help="also a cold run at this size (cost per row)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/seqtune-data-scale"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer = qwen_tokenizer(args.work)
    results, sizes = {}, [args.rows] + ([args.small] if args.small else [])
    for rows in sizes:
        data = args.work / f"chats-{rows}.jsonl"
        if not data.is_file():
            write(data, rows)
        recipe = args.work / f"recipe-{rows}.yaml"
        recipe.write_text(RECIPE.format(work=args.work / f"run-{rows}", tokenizer=tokenizer, data=data))
        for workers in (args.workers if rows == args.rows else args.workers[:1]):
            results[rows, workers] = prepare_run(recipe, workers, args.work / f"run-{rows}" / "cache")
            print(f"{rows:,} rows, {workers} worker(s): {results[rows, workers]}", flush=True)
    plain = plain_rate(args.work / f"chats-{args.rows}.jsonl", tokenizer, min(args.rows, 100_000))
    report(results, plain, args)


def report(results: dict, plain: float, args: argparse.Namespace) -> None:
    print(f"\nplain batched tokenization: {plain:,.0f} rows/s (Qwen2.5, {min(args.rows, 100_000):,} rows)\n")
    print("| rows | workers | read s | tokenize s | cold s | cold rows/s | vs plain | peak memory GB | warm check s "
          "| warm train to 1st step s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (rows, workers), r in sorted(results.items(), key=lambda item: (-item[0][0], item[0][1])):
        rate = rows / r["cold"]
        print(f"| {rows:,} | {workers} | {r['read']:.1f} | {r['tokenize']:.1f} | {r['cold']:.1f} | {rate:,.0f} | "
              f"{rate / plain:.2f}x | {max(r['cold_rss'], r['warm_rss']):.2f} | {r['warm']:.1f} | {r['train']:.1f} |")
    if args.small:
        big, small = results[args.rows, args.workers[0]], results[args.small, args.workers[0]]
        ratio = (big["cold"] / args.rows) / (small["cold"] / args.small)
        print(f"\ncost per row at {args.rows:,} rows / at {args.small:,} rows: {ratio:.2f}")


if __name__ == "__main__":
    main()
