"""plugins.truncation on real encoded multi-turn conversations (the quickstart tokenizer).

Each strategy is checked on its own and through `truncate_row`/`make_encoder`, which call it only
for over-length rows, mask the first label of a cut row and drop rows with nothing left to train.
"""
from __future__ import annotations

import pytest

from seqtune_testing import encode_chat
from framework.data.tokenize import make_encoder, truncate_row
from framework.errors import UserError
from framework.types import IGNORE_INDEX, Sample
from seqtune_testing import trained_runs
from plugins.truncation import drop, left, refuse, right, seqtune_register_truncation, turns

CHAT = [{"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Reverse: c a t"},
        {"role": "assistant", "content": "t a c"},
        {"role": "user", "content": "Uppercase: the sun is bright"},
        {"role": "assistant", "content": "THE SUN IS BRIGHT"},
        {"role": "user", "content": "What is 41 + 39?"},
        {"role": "assistant", "content": "41 + 39 = 80"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


@pytest.fixture(scope="module")
def im_end(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids("<|im_end|>")


@pytest.fixture(scope="module")
def full(tokenizer) -> Sample:
    sample = encode_chat(tokenizer, CHAT)
    assert len(sample.input_ids) > 60
    return sample


def test_every_builtin_strategy_is_registered():
    assert seqtune_register_truncation() == {"right": right, "left": left, "drop": drop, "raise": refuse,
                                             "turns": turns}


def test_the_conversation_has_three_trained_turns_ending_with_im_end(full, im_end):
    assert len(trained_runs(full.labels)) == 3
    assert all(full.input_ids[end - 1] == im_end for _, end in trained_runs(full.labels))


# -- right -----------------------------------------------------------------------------------------

def test_right_keeps_the_first_max_len_tokens(full):
    (start, _), *_ = trained_runs(full.labels)
    for max_len in (start + 1, start + 20, len(full.input_ids) - 1):
        ids, labels = right(full.input_ids, full.labels, max_len)
        assert (list(ids), list(labels)) == (full.input_ids[:max_len], full.labels[:max_len])
        kept = truncate_row(full, right, max_len)
        assert kept == Sample(full.input_ids[:max_len], full.labels[:max_len])


def test_right_cutting_inside_an_answer_loses_its_end_of_turn(full, im_end):
    (start, end), *_ = trained_runs(full.labels)
    kept = truncate_row(full, right, end - 1)
    assert kept.input_ids == full.input_ids[:end - 1]
    assert trained_runs(kept.labels) == [(start, end - 1)] and kept.input_ids[-1] != im_end
    assert kept.num_trainable == end - 1 - start


def test_right_that_leaves_nothing_trained_drops_the_row(full):
    (start, _), *_ = trained_runs(full.labels)
    assert truncate_row(full, right, start) is None
    assert truncate_row(full, right, start + 1) is not None


# -- left -------------------------------------------------------------------------------------------

def test_left_keeps_the_last_max_len_tokens(full):
    for max_len in (12, 40, len(full.input_ids) - 1):
        ids, labels = left(full.input_ids, full.labels, max_len)
        assert (list(ids), list(labels)) == (full.input_ids[-max_len:], full.labels[-max_len:])


def test_left_masks_the_first_label_of_the_cut_row(full):
    # Choose a cut whose first kept token is trained: nothing can predict it, so it is masked.
    max_len = next(n for n in range(5, len(full.input_ids)) if full.labels[-n] != IGNORE_INDEX)
    kept = truncate_row(full, left, max_len)
    assert kept.input_ids == full.input_ids[-max_len:]
    assert kept.labels[0] == IGNORE_INDEX != full.labels[-max_len]
    assert kept.labels[1:] == full.labels[-max_len + 1:]
    assert kept.num_trainable == sum(label != IGNORE_INDEX for label in full.labels[-max_len:]) - 1


def test_left_that_leaves_only_the_first_label_trained_drops_the_row(full, im_end):
    # The last two tokens are the final <|im_end|> (trained) and the newline (not trained).
    assert full.input_ids[-2] == im_end and full.labels[-2] == im_end and full.labels[-1] == IGNORE_INDEX
    assert truncate_row(full, left, 1) is None
    assert truncate_row(full, left, 2) is None  # its one trained label is the cut row's first
    assert truncate_row(full, left, 3).num_trainable == 1


# -- drop and raise ------------------------------------------------------------------------------

def test_drop_removes_only_over_length_rows(full):
    n = len(full.input_ids)
    assert drop(full.input_ids, full.labels, n - 1) is None
    assert truncate_row(full, drop, n - 1) is None
    assert truncate_row(full, drop, n) == full


def test_raise_refuses_over_length_rows_with_their_length(full):
    n = len(full.input_ids)
    with pytest.raises(ValueError) as info:
        truncate_row(full, refuse, 20)
    assert str(info.value).startswith(f"has {n:,} tokens, more than max_seq_length 20 (truncation: raise)")
    assert truncate_row(full, refuse, n) == full  # a row that fits is never refused


def test_raise_through_the_encoder_names_source_row_and_length(tokenizer, full):
    encode = make_encoder(tokenizer, refuse, 20, "assistant")
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    names = ["first.jsonl: row 4", "data/second.jsonl: row 17"]
    with pytest.raises(UserError) as info:
        encode([(short, None, None), (CHAT, None, None)], names.__getitem__)
    (line,) = info.value.problems
    assert line.startswith(f"data/second.jsonl: row 17: has {len(full.input_ids)} tokens, "
                           "more than max_seq_length 20")


@pytest.mark.parametrize("strategy", [drop, right, turns])
def test_a_row_truncation_leaves_nothing_to_train_is_dropped_as_cut(tokenizer, full, strategy):
    from framework.data.tokenize import CODES

    (start, _), *_ = trained_runs(full.labels)  # the first trained token: cut before it, nothing is left
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    batch, names = [(short, None, None), (CHAT, None, None)], ["data/a.jsonl:4", "data/b.jsonl:17"].__getitem__
    out = make_encoder(tokenizer, strategy, start, "assistant")(batch, names)
    assert out["dropped"] == [0, CODES["cut_by_truncation"]] and out["length"][1] == 0
    assert out["length_before"][1] == len(full.input_ids) and out["trainable_before"][1] == full.num_trainable
    with pytest.raises(UserError) as info:
        make_encoder(tokenizer, strategy, start, "assistant", untrainable_rows="error")(batch, names)
    assert info.value.problems[0].startswith(f"data/b.jsonl:17: has {len(full.input_ids)} tokens and truncation "
                                             f"to max_seq_length {start} leaves none of them to train")


# -- turns ----------------------------------------------------------------------------------------

def expected_turns(full: Sample, max_len: int) -> Sample | None:
    """The longest prefix within max_len that ends right after a whole trained turn."""
    ends = [end for _, end in trained_runs(full.labels) if end <= max_len]
    return Sample(full.input_ids[:ends[-1]], full.labels[:ends[-1]]) if ends else None


def test_turns_keeps_only_complete_assistant_turns(full, im_end):
    n = len(full.input_ids)
    (_, first_end), *_ = trained_runs(full.labels)
    for max_len in range(first_end, n):
        kept = truncate_row(full, turns, max_len)
        assert kept == expected_turns(full, max_len), max_len
        assert len(kept.input_ids) <= max_len
        assert kept.labels[-1] != IGNORE_INDEX and kept.input_ids[-1] == im_end  # cut right after a turn
        for _, end in trained_runs(kept.labels):
            assert kept.input_ids[end - 1] == im_end
        assert kept.input_ids == full.input_ids[:len(kept.input_ids)]


def test_turns_keeps_every_turn_that_fits(full):
    ends = [end for _, end in trained_runs(full.labels)]
    # Exactly up to the second turn's end: the first two turns are kept, and nothing after them.
    kept = truncate_row(full, turns, ends[1])
    assert kept.input_ids == full.input_ids[:ends[1]]
    assert len(trained_runs(kept.labels)) == 2
    # One token short of the second turn: only the first survives.
    assert truncate_row(full, turns, ends[1] - 1).input_ids == full.input_ids[:ends[0]]


def test_turns_drops_a_row_whose_first_turn_does_not_fit(full):
    (_, first_end), *_ = trained_runs(full.labels)
    assert turns(full.input_ids, full.labels, first_end - 1) is None
    assert truncate_row(full, turns, first_end - 1) is None


def test_turns_with_train_on_last_assistant_keeps_only_a_whole_last_turn(tokenizer):
    sample = encode_chat(tokenizer, CHAT, "last_assistant")
    (_, end), = trained_runs(sample.labels)
    assert end == len(sample.input_ids) - 1  # then only the final newline
    assert truncate_row(sample, turns, end) == Sample(sample.input_ids[:end], sample.labels[:end])
    assert truncate_row(sample, turns, end - 1) is None


# -- rows with nothing to train ----------------------------------------------------------------

@pytest.mark.parametrize("strategy", [right, left, drop, refuse, turns], ids=lambda s: s.__name__)
def test_rows_with_no_trainable_token_are_dropped_by_every_strategy(strategy):
    assert truncate_row(Sample([5, 6, 7], [IGNORE_INDEX] * 3), strategy, 10) is None
    assert truncate_row(Sample([5, 6, 7], [IGNORE_INDEX, 6, 7]), strategy, 10) == Sample([5, 6, 7], [IGNORE_INDEX, 6, 7])


PROMPT_THEN_ANSWER = [IGNORE_INDEX] * 18 + [38, 39]  # trained only in its last two tokens
ANSWER_THEN_PROMPT = [IGNORE_INDEX, 21] + [IGNORE_INDEX] * 18  # trained only near its start


@pytest.mark.parametrize("strategy, labels", [(right, PROMPT_THEN_ANSWER), (drop, PROMPT_THEN_ANSWER),
                                              (turns, PROMPT_THEN_ANSWER), (left, ANSWER_THEN_PROMPT),
                                              (drop, ANSWER_THEN_PROMPT)],
                         ids=["right", "drop", "turns", "left", "drop-2"])
def test_over_length_rows_with_no_trainable_token_left_are_dropped(strategy, labels):
    assert truncate_row(Sample(list(range(20, 40)), labels), strategy, 10) is None


def test_the_trained_part_that_survives_a_cut_is_kept():
    ids = list(range(20, 40))
    assert truncate_row(Sample(ids, PROMPT_THEN_ANSWER), left, 10) == Sample(ids[-10:], PROMPT_THEN_ANSWER[-10:])
    assert truncate_row(Sample(ids, ANSWER_THEN_PROMPT), right, 10) == Sample(ids[:10], ANSWER_THEN_PROMPT[:10])
    assert truncate_row(Sample(ids, ANSWER_THEN_PROMPT), turns, 10) == Sample(ids[:2], ANSWER_THEN_PROMPT[:2])


def test_strategies_do_not_modify_their_inputs(full):
    ids, labels = list(full.input_ids), list(full.labels)
    for strategy in (right, left, drop, turns):
        truncate_row(Sample(ids, labels), strategy, 30)
    assert (ids, labels) == (full.input_ids, full.labels)

