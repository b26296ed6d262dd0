"""The data driver: mixture sampling, bad rows, truncation accounting."""
from __future__ import annotations

import pytest

from framework.chat import encode_chat
from framework.config.schema import DataConfig, MixtureEntry
from framework.data import load_mixture, pick_loader, sample_rows, tokenize
from framework.errors import UserError
from plugins.datasets import messages
from plugins.truncation import right


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Uppercase: w{i}"},
                         {"role": "assistant", "content": f"W{i}"}]}


@pytest.mark.parametrize("fraction, count, expected", [(1.0, None, 10), (0.5, None, 5), (2.5, None, 25),
                                                       (None, 3, 3), (None, 23, 23)])
def test_fraction_and_count_give_exact_row_numbers(fraction, count, expected):
    rows = list(range(10))
    picked = sample_rows(rows, MixtureEntry(source="x", fraction=fraction, count=count), seed=1)
    assert len(picked) == expected
    assert all(picked.count(r) >= expected // 10 for r in rows)  # whole copies come first


def test_sampling_is_seeded():
    entry = MixtureEntry(source="x", fraction=0.3)
    assert sample_rows(list(range(100)), entry, 5) == sample_rows(list(range(100)), entry, 5)
    assert sample_rows(list(range(100)), entry, 5) != sample_rows(list(range(100)), entry, 6)


def test_mixture_formats_samples_and_shuffles_every_source():
    data = DataConfig(mixture=[MixtureEntry(source="a", fraction=1.0), MixtureEntry(source="b", count=2)])
    sources = {"a": [chat(i) for i in range(4)], "b": [chat(100 + i) for i in range(10)]}
    mixed = load_mixture(data, [lambda s, split: sources[s]] * 2, [messages, messages], seed=0)
    assert len(mixed) == 6
    words = [m[0]["content"] for m in mixed]
    assert sum(w.startswith("Uppercase: w10") for w in words) == 2
    assert words != sorted(words) or len(set(words)) < 2


def test_a_bad_row_is_named_by_source_and_row_number():
    data = DataConfig(mixture=[MixtureEntry(source="rows.jsonl", fraction=1.0)])
    rows = [chat(0), {"messages": [{"role": "robot", "content": "x"}]}]
    with pytest.raises(UserError, match=r"rows.jsonl: row 2: messages\[0\] has unknown role 'robot'"):
        load_mixture(data, [lambda s, split: rows], [messages], seed=0)


def test_an_empty_mixture_is_an_error():
    data = DataConfig(mixture=[MixtureEntry(source="rows.jsonl", fraction=1.0)])
    with pytest.raises(UserError, match="the mixture has no rows"):
        load_mixture(data, [lambda s, split: []], [messages], seed=0)


def test_loader_is_picked_from_the_suffix_else_the_hub(tmp_path):
    assert pick_loader(MixtureEntry(source="x/train.jsonl", fraction=1.0)) == "json"
    assert pick_loader(MixtureEntry(source="allenai/tulu-3-sft-mixture", fraction=1.0)) == "hub"
    odd = tmp_path / "rows.txt"
    odd.write_text("")
    assert pick_loader(MixtureEntry(source=str(odd), fraction=1.0)) is None


def test_truncation_report_counts_cut_and_dropped_rows(tiny_tokenizer):
    long_prompt = [{"role": "user", "content": "a " * 200}, {"role": "assistant", "content": "ok"}]
    short = chat(1)["messages"]
    rows, report = tokenize([short, long_prompt], tiny_tokenizer, max_len=40, truncate=right, num_workers=1)
    # The long row keeps only prompt tokens after a right cut: nothing to train, so it is dropped.
    assert report.rows_in == 2 and report.rows_kept == 1 and report.rows_dropped == 1
    assert report.trainable_tokens_lost == encode_chat(tiny_tokenizer, long_prompt).num_trainable > 0
    assert len(rows) == 1 and len(rows[0].input_ids) == report.lengths[0] <= 40
