"""framework.data.tokenize through prepare_data: tokens, labels, truncation and the Report.

Expected rows and counts come from this file's own reference of each strategy, applied to
`encode_chat` of every source row, never from the plugins under test.
"""
from __future__ import annotations

import collections
import json
import math

import pytest

from seqtune_testing import encode_chat
from framework.data.tokenize import Report
from framework.data.tokenize import encode_text
from framework.errors import UserError
from framework.types import IGNORE_INDEX, Sample
from seqtune_testing import trained_runs

N_ROWS = 30


def reference(strategy: str, full: Sample, max_len: int) -> Sample | None:
    """What `strategy` must leave of a row: the spec written out independently of the plugins."""
    ids, labels = full.input_ids, full.labels
    if len(ids) > max_len:
        if strategy == "right":
            ids, labels = ids[:max_len], labels[:max_len]
        elif strategy == "left":
            ids, labels = ids[-max_len:], labels[-max_len:]
        elif strategy == "drop":
            return None
        elif strategy == "turns":
            ends = [end for _, end in trained_runs(labels) if end <= max_len]
            if not ends:
                return None
            ids, labels = ids[:ends[-1]], labels[:ends[-1]]
        labels = [IGNORE_INDEX, *labels[1:]]
    kept = Sample(list(ids), list(labels))
    return kept if kept.num_trainable else None


def lower_percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    ordered = sorted(values)
    pick = lambda p: ordered[math.floor(p / 100 * (len(ordered) - 1))]  # noqa: E731
    return {"p50": pick(50), "p90": pick(90), "p99": pick(99), "max": ordered[-1]}


def as_key(sample: Sample) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(sample.input_ids), tuple(sample.labels)


@pytest.fixture
def source(tmp_path, kit):
    rows = kit.conversations(N_ROWS)
    return kit.write_jsonl(tmp_path / "chats.jsonl", rows), rows


@pytest.mark.parametrize("max_len", [40, 110])
@pytest.mark.parametrize("strategy", ["right", "left", "drop", "turns"])
def test_truncated_rows_and_report_match_a_count_of_our_own(source, write_recipe, kit, tiny_tokenizer,
                                                            strategy, max_len):
    path, rows = source
    recipe = write_recipe([{"source": path, "fraction": 1.0}], max_seq_length=max_len, truncation=strategy)
    full = [encode_chat(tiny_tokenizer, row["messages"]) for row in rows]
    kept = [reference(strategy, sample, max_len) for sample in full]
    survivors = [k for k in kept if k is not None]
    if not survivors:  # nothing left to train on is a user error, not an empty run
        with pytest.raises(UserError, match="no row is left to train on"):
            kit.prepare(recipe)
        return
    data = kit.prepare(recipe)
    assert sorted(kit.rows_of(data)) == sorted(as_key(k) for k in survivors)
    assert data.lengths == [len(ids) for ids in data.dataset["input_ids"]]
    assert max(data.lengths, default=0) <= max_len

    report = data.report
    truncated = sum(1 for f, k in zip(full, kept) if k is not None and len(k.input_ids) < len(f.input_ids))
    expected = Report(
        max_seq_length=max_len, rows_in=N_ROWS, rows_kept=len(survivors), rows_truncated=truncated,
        rows_dropped=N_ROWS - len(survivors),
        tokens_in=sum(len(f.input_ids) for f in full),
        tokens_lost=sum(len(f.input_ids) for f in full) - sum(len(k.input_ids) for k in survivors),
        trainable_tokens_in=sum(f.num_trainable for f in full),
        trainable_tokens_lost=sum(f.num_trainable for f in full) - sum(k.num_trainable for k in survivors),
        lengths_before=lower_percentiles([len(f.input_ids) for f in full]),
        lengths_after=lower_percentiles([len(k.input_ids) for k in survivors]),
        dropped={"empty": 0, "no_assistant_turn": 0, "no_trainable_token": 0,
                 "cut_by_truncation": N_ROWS - len(survivors)})
    assert report == expected
    # The report adds up against the rows actually kept.
    assert report.rows_kept + report.rows_dropped == report.rows_in == N_ROWS
    assert report.tokens_in - report.tokens_lost == sum(data.lengths)
    trainable_left = sum(label != IGNORE_INDEX for labels in data.dataset["labels"] for label in labels)
    assert report.trainable_tokens_in - report.trainable_tokens_lost == trainable_left


def test_the_cases_above_exercise_truncation_and_dropping(source, tiny_tokenizer):
    """Guards the parametrisation: each strategy truncates or drops some rows and keeps others."""
    _, rows = source
    full = [encode_chat(tiny_tokenizer, row["messages"]) for row in rows]
    assert any(len(f.input_ids) <= 110 for f in full) and any(len(f.input_ids) > 110 for f in full)
    for strategy in ("right", "left", "turns"):
        kept = [reference(strategy, f, 110) for f in full]
        assert any(k is not None and len(k.input_ids) < len(f.input_ids) for f, k in zip(full, kept))
    assert any(reference("right", f, 40) is None for f in full)  # nothing trainable left
    assert any(reference("right", f, 40) is not None for f in full)
    assert all(reference("turns", f, 40) is None for f in full)  # no first turn fits: all dropped
    assert any(reference("turns", f, 110) is not None for f in full)

def test_turns_rows_end_right_after_whole_assistant_turns(source, write_recipe, kit, tiny_tokenizer):
    path, _ = source
    data = kit.prepare(write_recipe([{"source": path, "fraction": 1.0}], max_seq_length=110, truncation="turns"))
    im_end = tiny_tokenizer.convert_tokens_to_ids(kit.IM_END)
    assert data.report.rows_truncated > 0
    newline = tiny_tokenizer.convert_tokens_to_ids("Ċ")
    cut = 0
    for ids, labels in zip(data.dataset["input_ids"], data.dataset["labels"]):
        for _, end in trained_runs(labels):
            assert ids[end - 1] == im_end
        if labels[-1] != IGNORE_INDEX:  # cut right after a trained run
            assert ids[-1] == im_end
            cut += 1
        else:  # a whole row: its last turn, then the template's newline
            assert (ids[-2:], labels[-2:]) == ([im_end, newline], [im_end, IGNORE_INDEX])
    assert cut == data.report.rows_truncated


def test_left_truncation_masks_the_first_label_of_each_cut_row(source, write_recipe, kit):
    path, _ = source
    data = kit.prepare(write_recipe([{"source": path, "fraction": 1.0}], max_seq_length=40, truncation="left"))
    assert data.report.rows_truncated == data.report.rows_kept > 0
    assert all(labels[0] == IGNORE_INDEX for labels in data.dataset["labels"])
    assert data.report.lengths_after == {"p50": 40, "p90": 40, "p99": 40, "max": 40}


def test_raise_names_source_row_and_length(tmp_path, write_recipe, kit, tiny_tokenizer):
    rows = [kit.chat(f"q{i}", f"a{i}") for i in range(6)]
    rows[3] = kit.chat("a much longer question " * 8, "and a much longer answer " * 8)
    path = kit.write_jsonl(tmp_path / "rows.jsonl", rows)
    length = len(encode_chat(tiny_tokenizer, rows[3]["messages"]).input_ids)
    with pytest.raises(UserError) as info:
        kit.prepare(write_recipe([{"source": path, "fraction": 1.0}], max_seq_length=60, truncation="raise"))
    (line,) = info.value.problems
    assert line.startswith(f"{path}:4: has {length} tokens, more than max_seq_length 60 (truncation: raise)")


def test_raise_keeps_every_row_that_fits(tmp_path, write_recipe, kit):
    path = kit.write_jsonl(tmp_path / "rows.jsonl", [kit.chat(f"q{i}", f"a{i}") for i in range(6)])
    data = kit.prepare(write_recipe([{"source": path, "fraction": 1.0}], max_seq_length=60, truncation="raise"))
    assert data.report.rows_kept == 6 and data.report.tokens_lost == 0 and data.report.rows_truncated == 0


@pytest.mark.parametrize("train_on", ["assistant", "last_assistant", "all"])
def test_train_on_selects_the_trained_tokens(source, write_recipe, kit, tiny_tokenizer, train_on):
    path, rows = source
    data = kit.prepare(write_recipe([{"source": path, "fraction": 1.0}], max_seq_length=4096, train_on=train_on))
    expected = [as_key(encode_chat(tiny_tokenizer, row["messages"], train_on)) for row in rows]
    assert sorted(kit.rows_of(data)) == sorted(expected)
    assert data.report.trainable_tokens_in == sum(
        sum(label != IGNORE_INDEX for label in labels) for _, labels in expected)


def test_text_rows_train_every_token_after_the_first_and_end_with_eos(tmp_path, write_recipe, kit, tiny_tokenizer):
    texts = ["Once upon a time there was a fox.", "The end.", "A third document here"]
    prose = kit.write_jsonl(tmp_path / "prose.jsonl", [{"text": t} for t in texts])
    chats = kit.write_jsonl(tmp_path / "chats.jsonl", [kit.chat("hi", "yo")])
    data = kit.prepare(write_recipe([{"source": prose, "fraction": 1.0, "format": "text"},
                                     {"source": chats, "fraction": 1.0}], max_seq_length=4096))
    expected = [as_key(encode_text(tiny_tokenizer, t)) for t in texts]
    expected.append(as_key(encode_chat(tiny_tokenizer, [{"role": "user", "content": "hi"},
                                                          {"role": "assistant", "content": "yo"}])))
    assert sorted(kit.rows_of(data)) == sorted(expected)
    for text in texts:
        ids, labels = as_key(encode_text(tiny_tokenizer, text))
        assert ids[-1] == tiny_tokenizer.eos_token_id
        assert labels == (IGNORE_INDEX, *ids[1:])


def test_a_long_text_row_is_truncated_like_any_other(tmp_path, write_recipe, kit, tiny_tokenizer):
    text = " ".join(f"word{i}" for i in range(200))
    prose = kit.write_jsonl(tmp_path / "prose.jsonl", [{"text": text}])
    data = kit.prepare(write_recipe([{"source": prose, "fraction": 1.0, "format": "text"}],
                                    max_seq_length=32, truncation="left"))
    full = encode_text(tiny_tokenizer, text)
    assert kit.rows_of(data) == [(tuple(full.input_ids[-32:]), (IGNORE_INDEX, *full.input_ids[-31:]))]
    assert data.report.trainable_tokens_lost == full.num_trainable - 31


def test_report_summary_and_json(source, write_recipe, kit):
    path, _ = source
    data = kit.prepare(write_recipe([{"source": path, "fraction": 1.0}], max_seq_length=120, truncation="drop"))
    report = data.report
    assert json.loads(json.dumps(vars(report))) == vars(report)
    summary = report.summary()
    assert f"{report.rows_in:,} rows -> {report.rows_kept:,} kept" in summary
    assert f"{report.rows_dropped:,} dropped" in summary and "max_seq_length 120" in summary
    assert "/".join(str(report.lengths_before[k]) for k in ("p50", "p90", "p99", "max")) in summary


def test_duplicated_rows_are_counted_once_per_copy(source, write_recipe, kit, tiny_tokenizer):
    path, rows = source
    data = kit.prepare(write_recipe([{"source": path, "fraction": 2.0}], max_seq_length=4096))
    tokens = sum(len(encode_chat(tiny_tokenizer, row["messages"]).input_ids) for row in rows)
    assert data.report.rows_in == 2 * N_ROWS and data.report.tokens_in == 2 * tokens
    counts = collections.Counter(kit.rows_of(data))
    assert set(counts.values()) == {2}
