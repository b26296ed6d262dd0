"""plugins.truncation: `right` keeps the first max_len tokens of a row."""
from __future__ import annotations

from framework.types import IGNORE_INDEX
from plugins.truncation import right


def test_right_keeps_the_first_max_len_tokens_and_labels():
    ids = [10, 11, 12, 13, 14, 15]
    labels = [IGNORE_INDEX, IGNORE_INDEX, 12, 13, 14, 15]
    assert right(ids, labels, 4) == ([10, 11, 12, 13], [IGNORE_INDEX, IGNORE_INDEX, 12, 13])
    assert ids == [10, 11, 12, 13, 14, 15]  # the inputs are not modified


def test_right_leaves_short_rows_whole():
    assert right([1, 2], [1, 2], 2) == ([1, 2], [1, 2])
    assert right([1, 2], [IGNORE_INDEX, 2], 10) == ([1, 2], [IGNORE_INDEX, 2])


def test_right_can_cut_away_every_trainable_label():
    ids, labels = right([1, 2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 3, 4], 2)
    assert ids == [1, 2]
    assert labels == [IGNORE_INDEX, IGNORE_INDEX]
