"""plugins.packing: the `none`, `bfd` and `wrapped` strategies, their plans and their collates.

A plan is micro-batches -> rows -> pieces (a sample index, or an (index, start, stop) slice).
`best_fit_decreasing` is checked against a plain item-by-item best-fit-decreasing written here.
"""
from __future__ import annotations

import itertools
import math
import random
from bisect import bisect_left, insort

import pytest
import torch

from seqtune_testing import encode_chat
from framework.data.pipeline import PreparedData
from framework.types import IGNORE_INDEX, Sample
from plugins.packing import bfd, best_fit_decreasing, none, wrapped


# --- helpers ------------------------------------------------------------------------------------

def reference_bfd_loads(lengths: list[int], capacity: int) -> list[int]:
    """Textbook best-fit decreasing, one item at a time: longest first, each into the open bin
    with the least room that still fits it, else a new bin. Returns the sorted bin loads."""
    rooms: list[int] = []  # remaining room of every bin, kept sorted
    for length in sorted(lengths, reverse=True):
        i = bisect_left(rooms, length)
        if i < len(rooms):
            room = rooms.pop(i)
            insort(rooms, room - length)
        else:
            insort(rooms, capacity - length)
    return sorted(capacity - room for room in rooms)


def loads(bins: list[list[int]], lengths: list[int]) -> list[int]:
    return sorted(sum(lengths[i] for i in b) for b in bins)


def check_bins(bins: list[list[int]], lengths: list[int], capacity: int) -> None:
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))  # every index exactly once
    assert all(b for b in bins)
    assert max((sum(lengths[i] for i in b) for b in bins), default=0) <= capacity


def partition(bins: list[list[int]]) -> frozenset:
    return frozenset(frozenset(b) for b in bins)


def flat_rows(plan: list[list[list]]) -> list[list]:
    return [row for micro_batch in plan for row in micro_batch]


def batch_sizes_ok(plan: list[list[list]], batch_size: int) -> bool:
    return all(len(mb) == batch_size for mb in plan[:-1]) and 1 <= len(plan[-1]) <= batch_size


def make_sample(n: int, first: int = 10) -> Sample:
    """A sample of n tokens whose first label is masked, like every encoded chat."""
    ids = list(range(first, first + n))
    return Sample(ids, [IGNORE_INDEX] + ids[1:])


PAD = 0


@pytest.fixture(scope="module")
def chat_samples(tiny_tokenizer) -> list[Sample]:
    """Encoded conversations of assorted lengths (labels[0] is -100, prompts are masked)."""
    words = "ant bee cat dog eel fox gnu hen ibis jay kite lark mole newt owl".split()
    conversations = []
    for k in range(1, 9):
        conversations.append([{"role": "user", "content": f"Reverse: {' '.join(words[:k])}"},
                              {"role": "assistant", "content": " ".join(reversed(words[:k]))}])
    conversations.append([{"role": "user", "content": "What is 2 + 3?"},
                          {"role": "assistant", "content": "2 + 3 = 5"},
                          {"role": "user", "content": "Uppercase: sun"},
                          {"role": "assistant", "content": "SUN"}])
    samples = [encode_chat(tiny_tokenizer, messages) for messages in conversations]
    assert all(s.labels[0] == IGNORE_INDEX and s.num_trainable > 0 for s in samples)
    assert len({len(s.input_ids) for s in samples}) > 5
    return samples


# --- best_fit_decreasing ------------------------------------------------------------------------

ADVERSARIAL = [
    ([], 10),
    ([10], 10),
    ([1], 10),
    ([6, 6, 4, 4, 4, 4], 10),
    ([5, 5, 5, 5, 4, 4, 3, 3, 3, 2, 2, 1, 1, 1], 10),
    ([7, 3, 3, 3, 3, 3, 3, 3, 3, 1, 1], 10),
    ([9, 8, 7, 6, 5, 4, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1], 10),
    ([4] * 9 + [3] * 7 + [2] * 5, 11),  # several open bins of different rooms take the same length
    ([51, 34, 34, 33, 33, 33, 17, 17, 17, 16, 16, 16, 16, 2, 2, 2, 1, 1, 1, 1], 100),
    ([3] * 40, 8),
    ([1] * 30, 7),
    ([8] * 5 + [1] * 13, 8),
    ([6, 5, 5, 4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 2], 12),
]


@pytest.mark.parametrize("lengths, capacity", ADVERSARIAL)
def test_bfd_matches_the_reference_on_adversarial_cases(lengths, capacity):
    for seed in range(3):
        bins = best_fit_decreasing(lengths, capacity, seed)
        check_bins(bins, lengths, capacity)
        assert loads(bins, lengths) == reference_bfd_loads(lengths, capacity)


def test_bfd_matches_the_reference_on_every_small_multiset():
    capacity = 7
    for n in range(1, 7):
        for lengths in itertools.combinations_with_replacement(range(1, capacity + 1), n):
            lengths = list(lengths)
            bins = best_fit_decreasing(lengths, capacity, seed=n)
            check_bins(bins, lengths, capacity)
            assert loads(bins, lengths) == reference_bfd_loads(lengths, capacity), lengths


@pytest.mark.parametrize("n, capacity, high, seed", [(3000, 128, 40, 0), (3000, 128, 128, 1),
                                                     (2500, 100, 60, 2), (4000, 512, 300, 3)])
def test_bfd_matches_the_reference_on_random_inputs_with_many_ties(n, capacity, high, seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, high) for _ in range(n)]
    bins = best_fit_decreasing(lengths, capacity, seed)
    check_bins(bins, lengths, capacity)
    expected = reference_bfd_loads(lengths, capacity)
    assert len(bins) == len(expected)
    assert loads(bins, lengths) == expected


def test_bfd_matches_the_reference_on_log_normal_lengths():
    rng = random.Random(5)
    capacity = 1024
    lengths = [min(capacity, max(1, round(rng.lognormvariate(4.5, 0.9)))) for _ in range(3000)]
    bins = best_fit_decreasing(lengths, capacity, seed=5)
    check_bins(bins, lengths, capacity)
    assert loads(bins, lengths) == reference_bfd_loads(lengths, capacity)


def test_bfd_is_deterministic_per_seed_and_the_seed_decides_ties():
    lengths = [3] * 12 + [5] * 6 + [2] * 9
    first = best_fit_decreasing(lengths, 8, seed=4)
    assert best_fit_decreasing(lengths, 8, seed=4) == first
    groupings = {partition(best_fit_decreasing(lengths, 8, seed)) for seed in range(10)}
    assert len(groupings) > 1
    for seed in range(10):  # whichever grouping, the loads are the same
        assert loads(best_fit_decreasing(lengths, 8, seed), lengths) == loads(first, lengths)


def test_bfd_does_not_change_its_input():
    lengths = [5, 3, 3, 7, 1]
    best_fit_decreasing(lengths, 8, seed=0)
    assert lengths == [5, 3, 3, 7, 1]


def test_an_item_longer_than_capacity_raises():
    with pytest.raises(ValueError):
        best_fit_decreasing([4, 9, 2], 8, seed=0)
    with pytest.raises(ValueError):
        bfd().plan([4, 9, 2], 2, 8, seed=0)
    best_fit_decreasing([4, 8, 2], 8, seed=0)  # exactly the capacity fits


def test_bfd_fills_bins_to_99_percent_on_log_normal_lengths():
    rng = random.Random(11)
    capacity = 4096
    lengths = [min(capacity, max(1, round(rng.lognormvariate(5.5, 1.0)))) for _ in range(4000)]
    bins = best_fit_decreasing(lengths, capacity, seed=0)
    check_bins(bins, lengths, capacity)
    assert sum(lengths) / (len(bins) * capacity) >= 0.99


# --- bfd plan -----------------------------------------------------------------------------------

def test_bfd_plan_is_the_bins_shuffled_into_micro_batches():
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(500)]
    plan = bfd().plan(lengths, 4, 128, seed=3)
    rows = flat_rows(plan)
    bins = best_fit_decreasing(lengths, 128, seed=3)
    assert sorted(map(sorted, rows)) == sorted(map(sorted, bins))  # the same bins...
    assert rows != bins  # ...not in creation (longest first) order
    created = {tuple(sorted(b)): k for k, b in enumerate(bins)}
    order = [created[tuple(sorted(r))] for r in rows]
    assert order != sorted(order)
    assert batch_sizes_ok(plan, 4)
    assert len(plan) == math.ceil(len(bins) / 4)
    check_bins(rows, lengths, 128)
    assert all(isinstance(piece, int) for row in rows for piece in row)


def test_bfd_plan_is_deterministic_per_seed():
    rng = random.Random(1)
    lengths = [rng.randint(1, 30) for _ in range(200)]
    plan = bfd().plan(lengths, 3, 64, seed=8)
    assert bfd().plan(lengths, 3, 64, seed=8) == plan
    assert bfd().plan(lengths, 3, 64, seed=9) != plan


@pytest.mark.parametrize("n, batch_size", [(1, 1), (1, 5), (40, 1), (40, 7)])
def test_bfd_plan_batch_sizes(n, batch_size):
    lengths = [7 + (i % 5) for i in range(n)]
    plan = bfd().plan(lengths, batch_size, 16, seed=0)
    assert batch_sizes_ok(plan, batch_size)
    check_bins(flat_rows(plan), lengths, 16)


def test_bfd_plan_of_no_rows_is_empty():
    assert bfd().plan([], 4, 16, seed=0) == []


# --- bfd collate --------------------------------------------------------------------------------

def expected_packed(rows: list[list[Sample]], pad: int):
    """What a packed micro-batch must hold, built independently of the plugin."""
    width = max(sum(len(s.input_ids) for s in row) for row in rows)
    ids, labels, positions, starts = [], [], [], []
    for r, row in enumerate(rows):
        row_ids, row_labels, row_pos = [], [], []
        for sample in row:
            starts.append((r, len(row_ids)))
            row_ids += sample.input_ids
            row_labels += sample.labels
            row_pos += list(range(len(sample.input_ids)))
        tail = width - len(row_ids)
        if tail:
            row_ids += [pad] * tail
            row_labels += [IGNORE_INDEX] * tail
            row_pos += list(range(tail))
        ids.append(row_ids)
        labels.append(row_labels)
        positions.append(row_pos)
    return ids, labels, positions, starts


def test_bfd_collate_packs_samples_with_restarting_positions(chat_samples, tiny_tokenizer):
    s = chat_samples
    rows = [[s[0], s[3], s[1]], [s[7]], [s[2], s[8]], [s[4], s[5]]]
    pad = tiny_tokenizer.pad_token_id
    batch = bfd().collate(rows, pad)
    ids, labels, positions, starts = expected_packed(rows, pad)
    assert {"input_ids", "labels", "position_ids", "num_tokens"} <= set(batch)
    assert "attention_mask" not in batch  # sequences are told apart by position_ids
    assert "cu_seq_lens_q" not in batch  # flash-attention's boundaries only come with a padding-free row
    assert batch["input_ids"].tolist() == ids
    assert batch["labels"].tolist() == labels
    assert batch["position_ids"].tolist() == positions
    assert int(batch["num_tokens"]) == sum(len(x.input_ids) for row in rows for x in row)
    for r, at in starts:  # no sample is trained on its first token (nothing predicts it)
        assert batch["position_ids"][r, at] == 0
        assert batch["labels"][r, at] == IGNORE_INDEX
    padding = batch["input_ids"] == pad
    assert padding.any()
    assert (batch["labels"][padding] == IGNORE_INDEX).all()
    real = batch["input_ids"].numel() - int(padding.sum())
    assert int(batch["num_tokens"]) == real
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == sum(x.num_trainable for row in rows for x in row)


def test_bfd_collate_padding_tail_is_its_own_sequence():
    rows = [[make_sample(3), make_sample(4)], [make_sample(2)], [make_sample(5, first=50), make_sample(2)]]
    batch = bfd().collate(rows, PAD)
    assert batch["input_ids"].shape == (3, 7)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3],
                                              [0, 1, 0, 1, 2, 3, 4],
                                              [0, 1, 2, 3, 4, 0, 1]]
    assert batch["input_ids"][1].tolist() == [10, 11, PAD, PAD, PAD, PAD, PAD]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 11] + [IGNORE_INDEX] * 5
    assert int(batch["num_tokens"]) == 16


def test_bfd_collate_padding_free_is_one_row_without_padding(chat_samples, tiny_tokenizer):
    s = chat_samples
    rows = [[s[0], s[3], s[1]], [s[7]], [s[2], s[8]]]
    pad = tiny_tokenizer.pad_token_id
    batch = bfd().collate(rows, pad, padding_free=True)
    flat = [x for row in rows for x in row]
    total = sum(len(x.input_ids) for x in flat)
    assert batch["input_ids"].shape == (1, total)
    assert batch["input_ids"][0].tolist() == [t for x in flat for t in x.input_ids]
    assert batch["labels"][0].tolist() == [t for x in flat for t in x.labels]
    assert batch["position_ids"][0].tolist() == [p for x in flat for p in range(len(x.input_ids))]
    for side in ("q", "k"):  # as flash-attention's varlen kernel takes them, so transformers need not work them out
        assert batch[f"cu_seq_lens_{side}"].tolist() == [0, *itertools.accumulate(len(x.input_ids) for x in flat)]
        assert batch[f"cu_seq_lens_{side}"].dtype == torch.int32
        assert batch[f"max_length_{side}"] == max(len(x.input_ids) for x in flat)  # a Python int: no read back
    assert int(batch["num_tokens"]) == total
    padded = bfd().collate(rows, pad)  # the same tokens as the padded layout, minus the padding
    keep = padded["input_ids"] != pad
    assert padded["input_ids"][keep].tolist() == batch["input_ids"][0].tolist()
    assert padded["labels"][keep].tolist() == batch["labels"][0].tolist()
    assert int(padded["num_tokens"]) == int(batch["num_tokens"])


# --- none ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, batch_size, sizes", [(10, 3, [3, 3, 3, 1]), (8, 4, [4, 4]), (2, 5, [2]),
                                                  (1, 1, [1]), (0, 2, [])])
def test_none_plan_covers_every_index_once(n, batch_size, sizes):
    plan = none().plan([7] * n, batch_size, 128, seed=11)
    assert [len(mb) for mb in plan] == sizes
    rows = flat_rows(plan)
    assert all(len(row) == 1 and isinstance(row[0], int) for row in rows)  # one whole sample a row
    assert sorted(row[0] for row in rows) == list(range(n))


def test_none_plan_is_deterministic_per_seed_and_shuffled():
    lengths = list(range(1, 51))
    plan = none().plan(lengths, 4, 64, seed=3)
    assert none().plan(lengths, 4, 64, seed=3) == plan
    assert none().plan(lengths, 4, 64, seed=4) != plan
    assert [row[0] for row in flat_rows(plan)] != list(range(50))


def test_none_collate_pads_to_the_longest_row():
    rows = [[make_sample(3, first=10)], [make_sample(1, first=20)], [make_sample(2, first=30)]]
    batch = none().collate(rows, pad_token_id=99)
    assert batch["input_ids"].tolist() == [[10, 11, 12], [20, 99, 99], [30, 31, 99]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 11, 12], [IGNORE_INDEX] * 3, [IGNORE_INDEX, 31, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert int(batch["num_tokens"]) == 6
    for key in ("input_ids", "labels", "attention_mask"):
        assert batch[key].dtype == torch.long


def test_none_collate_of_chat_samples(chat_samples, tiny_tokenizer):
    pad = tiny_tokenizer.pad_token_id
    rows = [[s] for s in chat_samples]
    batch = none().collate(rows, pad)
    width = max(len(s.input_ids) for s in chat_samples)
    assert batch["input_ids"].shape == (len(rows), width)
    for r, s in enumerate(chat_samples):
        n = len(s.input_ids)
        assert batch["input_ids"][r].tolist() == s.input_ids + [pad] * (width - n)
        assert batch["labels"][r].tolist() == s.labels + [IGNORE_INDEX] * (width - n)
        assert batch["attention_mask"][r].tolist() == [1] * n + [0] * (width - n)
    assert int(batch["num_tokens"]) == sum(len(s.input_ids) for s in chat_samples)


@pytest.mark.parametrize("multiple, lengths, width", [(4, [5, 1], 8), (4, [4, 2], 4), (8, [1], 8),
                                                      (None, [5, 1], 5), (1, [3], 3), (3, [7, 7], 9)])
def test_none_pad_to_multiple_of_rounds_the_width(multiple, lengths, width):
    packing = none(pad_to_multiple_of=multiple)
    batch = packing.collate([[make_sample(n)] for n in lengths], PAD)
    assert batch["input_ids"].shape == (len(lengths), width)
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert int(batch["num_tokens"]) == sum(lengths)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert packing.pad_to_multiple_of == (multiple or 1)


# --- wrapped ------------------------------------------------------------------------------------

def test_wrapped_plan_cuts_the_stream_into_rows_of_max_len():
    rng = random.Random(2)
    lengths = [rng.randint(1, 70) for _ in range(120)]
    max_len = 32
    plan = wrapped().plan(lengths, 3, max_len, seed=5)
    rows = flat_rows(plan)
    sizes = [sum(stop - start for _, start, stop in row) for row in rows]
    assert all(size == max_len for size in sizes[:-1])
    assert 1 <= sizes[-1] <= max_len
    assert len(rows) == math.ceil(sum(lengths) / max_len)
    assert batch_sizes_ok(plan, 3)
    # every token of every sample exactly once, each sample's slices in order and end to end
    covered: dict[int, list[tuple[int, int]]] = {}
    stream = [piece for row in rows for piece in row]
    for index, start, stop in stream:
        assert 0 <= start < stop <= lengths[index]
        covered.setdefault(index, []).append((start, stop))
    assert sorted(covered) == list(range(len(lengths)))
    for index, slices in covered.items():
        assert slices[0][0] == 0 and slices[-1][1] == lengths[index]
        assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
    seen = [index for index, _, _ in stream]
    order = [i for k, i in enumerate(seen) if k == 0 or seen[k - 1] != i]
    assert len(order) == len(lengths)  # a sample's slices are consecutive in the stream
    assert order != sorted(order)  # samples are shuffled


def test_wrapped_plan_is_deterministic_per_seed():
    lengths = [5, 17, 3, 9, 40, 2, 11, 8] * 5
    plan = wrapped().plan(lengths, 2, 16, seed=1)
    assert wrapped().plan(lengths, 2, 16, seed=1) == plan
    assert wrapped().plan(lengths, 2, 16, seed=2) != plan


def prepared(samples: list[Sample]) -> PreparedData:
    from datasets import Dataset

    dataset = Dataset.from_dict({"input_ids": [s.input_ids for s in samples],
                                 "labels": [s.labels for s in samples],
                                 "length": [len(s.input_ids) for s in samples],
                                 "sequences": [list(s.sequences) for s in samples]})
    return PreparedData(dataset, list(dataset["length"]), report=None, mixture_stats={}, from_cache=False,
                        cache_path=None, plan=None, reader=lambda: None)


def test_wrapped_slices_and_collate_join_them():
    rng = random.Random(4)
    samples, first = [], 1
    for _ in range(25):
        n = rng.randint(1, 30)
        samples.append(make_sample(n, first=first))
        first += n  # every token id is unique, so a wrong slice cannot go unnoticed
    lengths = [len(s.input_ids) for s in samples]
    data = prepared(samples)
    assert data.lengths == lengths
    max_len = 16
    plan = wrapped().plan(lengths, 4, max_len, seed=0)
    joined_ids, joined_labels = [], []
    for micro_batch in plan:
        rows = data.take(micro_batch)
        for row, pieces in zip(rows, micro_batch):  # each slice is exactly its part of the sample
            for sample, (index, start, stop) in zip(row, pieces):
                assert sample.input_ids == samples[index].input_ids[start:stop]
                assert sample.labels == samples[index].labels[start:stop]
        batch = wrapped().collate(rows, PAD)
        width = max(sum(len(s.input_ids) for s in row) for row in rows)
        assert batch["input_ids"].shape == (len(rows), width)
        for r, row in enumerate(rows):
            ids = [t for s in row for t in s.input_ids]
            labels = [t for s in row for t in s.labels]
            assert batch["input_ids"][r].tolist() == ids + [PAD] * (width - len(ids))
            assert batch["labels"][r].tolist() == labels + [IGNORE_INDEX] * (width - len(ids))
            assert batch["attention_mask"][r].tolist() == [1] * len(ids) + [0] * (width - len(ids))
            joined_ids += ids
            joined_labels += labels
        assert int(batch["num_tokens"]) == sum(len(s.input_ids) for row in rows for s in row)
    order = []
    for index, _, _ in (piece for mb in plan for row in mb for piece in row):
        if not order or order[-1] != index:
            order.append(index)
    assert joined_ids == [t for i in order for t in samples[i].input_ids]  # the samples end to end
    assert joined_labels == [t for i in order for t in samples[i].labels]
    assert sorted(joined_ids) == list(range(1, first))


def test_wrapped_of_an_exact_multiple_has_no_short_row():
    plan = wrapped().plan([8, 8, 16], 10, 8, seed=0)
    rows = flat_rows(plan)
    assert len(rows) == 4 and all(sum(b - a for _, a, b in row) == 8 for row in rows)


def test_a_padding_free_rows_boundaries_reach_the_attention_kernel(chat_samples, tiny_tokenizer):
    """The boundaries flash-attention's varlen kernel takes travel with the batch into every attention call
    (here an sdpa kernel registered under another name, which records what it is given), as the engine
    passes the collated inputs, and change nothing else."""
    from transformers import AttentionInterface, AttentionMaskInterface, AutoConfig, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    from framework import MODEL_INPUTS

    seen = []

    def recording(module, query, key, value, attention_mask, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")})
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("recording_sdpa", recording)
    AttentionMaskInterface.register("recording_sdpa", sdpa_mask)
    batch = bfd().collate([[chat_samples[0], chat_samples[3]], [chat_samples[1]]], tiny_tokenizer.pad_token_id,
                          padding_free=True)
    config = AutoConfig.for_model("llama", vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="recording_sdpa").eval()
    inputs = {key: batch[key] for key in MODEL_INPUTS if key in batch}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits
        model.set_attn_implementation("sdpa")
        plain = model(**{k: batch[k] for k in ("input_ids", "position_ids")}, use_cache=False).logits
    assert len(seen) == 2  # one call a layer, each given the boundaries
    assert all(s["cu_seq_lens_q"] is batch["cu_seq_lens_q"] and s["max_length_k"] == batch["max_length_k"] for s in seen)
    torch.testing.assert_close(logits, plain, rtol=0, atol=0)
