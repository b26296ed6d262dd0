"""plugins.packing: `none` shuffles rows into micro-batches and pads each to its longest row."""
from __future__ import annotations

import pytest
import torch

from framework.types import IGNORE_INDEX, Sample
from plugins.packing import none


def test_plan_is_deterministic_per_seed():
    lengths = [5, 3, 8, 1, 9, 2, 7, 4, 6, 10, 11, 12]
    packing = none()
    assert packing.plan(lengths, 4, seed=3) == none().plan(lengths, 4, seed=3)
    assert packing.plan(lengths, 4, seed=3) != packing.plan(lengths, 4, seed=4)


def test_plan_shuffles():
    plan = none().plan(list(range(50)), 50, seed=0)
    assert plan[0] != list(range(50))


@pytest.mark.parametrize("n, batch_size, sizes", [(10, 3, [3, 3, 3, 1]), (8, 4, [4, 4]), (2, 5, [2]),
                                                  (1, 1, [1]), (0, 2, [])])
def test_plan_covers_every_index_once_in_batches_of_batch_size(n, batch_size, sizes):
    plan = none().plan([7] * n, batch_size, seed=11)
    assert [len(batch) for batch in plan] == sizes
    flat = [i for batch in plan for i in batch]
    assert sorted(flat) == list(range(n))


def row(ids, labels=None):
    return Sample(list(ids), list(labels if labels is not None else ids))


def test_collate_pads_to_the_longest_row():
    rows = [row([1, 2, 3], [IGNORE_INDEX, 2, 3]), row([4]), row([5, 6])]
    batch = none().collate(rows, pad_token_id=0)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0], [5, 6, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX],
                                        [5, 6, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    for tensor in batch.values():
        assert tensor.dtype == torch.long


def test_collate_uses_the_pad_token_id():
    batch = none().collate([row([1, 2]), row([3])], pad_token_id=99)
    assert batch["input_ids"].tolist() == [[1, 2], [3, 99]]
    assert batch["labels"][1, 1].item() == IGNORE_INDEX


def test_collate_pads_to_a_multiple():
    packing = none(pad_to_multiple_of=4)
    batch = packing.collate([row([1, 2, 3, 4, 5]), row([6])], pad_token_id=0)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][0].tolist() == [1, 2, 3, 4, 5, 0, 0, 0]
    assert batch["attention_mask"].sum(dim=1).tolist() == [5, 1]
    assert batch["labels"][0, 5:].tolist() == [IGNORE_INDEX] * 3
    # already a multiple: no extra padding
    assert packing.collate([row([1, 2, 3, 4])], pad_token_id=0)["input_ids"].shape == (1, 4)


def test_collate_without_multiple_adds_no_padding_to_a_single_row():
    batch = none().collate([row([7, 8, 9])], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[7, 8, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1]]
