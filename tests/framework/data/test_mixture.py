"""The mixture plan: the same rows in the same order as concatenating the sampled sources and shuffling
them with `datasets` (what seqtune did before it stopped rewriting tables), and the same rows whichever
way a source was read."""
from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

from framework.config.schema import MixtureEntry
from framework.data.mixture import plan_mixture, sample_indices
from seqtune_testing import mixture_rows


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_the_plan_is_datasets_concatenate_then_shuffle(seed):
    sizes = [50, 7, 31]
    entries = [MixtureEntry(source="a", fraction=2.5), MixtureEntry(source="b", count=20),
               MixtureEntry(source="c", fraction=0.5)]
    plan = plan_mixture(sizes, entries, seed)
    picked = [datasets.Dataset.from_dict({"source": [i] * size, "index": list(range(size))})
              .select(sample_indices(size, entry, seed + i)) for i, (size, entry) in enumerate(zip(sizes, entries))]
    expected = datasets.concatenate_datasets(picked).shuffle(seed=seed)
    assert plan.source.tolist() == expected["source"] and plan.index.tolist() == expected["index"]
    assert [s["rows_used"] for s in plan.stats] == [125, 20, 16]


def test_an_empty_mixture_is_an_error():
    from framework.errors import UserError

    with pytest.raises(UserError, match="the mixture has no rows"):
        plan_mixture([5], [MixtureEntry(source="a", fraction=0.0)], 0)


def test_json_lines_read_natively_give_the_rows_a_json_file_gives(tmp_path, write_recipe, kit):
    """The `json` loader reads .jsonl natively (arrow) and .json line by line (Python): the same rows
    must come out, token for token, in the same order."""
    rows = kit.conversations(40)
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    native = kit.prepare(write_recipe([{"source": kit.write_jsonl(tmp_path / "rows.jsonl", rows), "fraction": 1.5}]))
    python = kit.prepare(write_recipe([{"source": tmp_path / "rows.json", "fraction": 1.5}], name="json.yaml"))
    assert kit.rows_of(native) == kit.rows_of(python)
    assert mixture_rows(native)["messages"] == mixture_rows(python)["messages"]
    assert np.array_equal(native.plan.index, python.plan.index)


def test_a_repeated_row_is_tokenized_once_and_trained_on_as_often_as_the_mixture_holds_it(tmp_path, write_recipe,
                                                                                           kit):
    """The tokenizing pass reads each distinct row once, in source order; the mixture (repeats, its
    shuffle, a second source) is an index array into what it wrote, counted with its repeats."""
    from framework.data.cache import open_shards
    from framework.data.chat import encode_chats
    from framework.model.tokenizer import load_tokenizer
    from framework.registry import bind_parts

    a = kit.write_jsonl(tmp_path / "a.jsonl", kit.conversations(12))
    b = kit.write_jsonl(tmp_path / "b.jsonl", kit.conversations(30)[12:])
    loaded = write_recipe([{"source": a, "fraction": 2.5}, {"source": b, "count": 7}])
    data = kit.prepare(loaded)
    assert len(open_shards(data.cache_path)) == 12 + 7  # each distinct row once
    assert data.report.rows_in == len(data.dataset) == 30 + 7
    mixed = mixture_rows(data)
    tokenizer = load_tokenizer(loaded.recipe, bind_parts(loaded).registry.entries["chat_templates"])
    expected = [(tuple(s.input_ids), tuple(s.labels)) for s in encode_chats(tokenizer, mixed["messages"], "assistant")]
    assert kit.rows_of(data) == expected
    assert data.report.tokens_in == sum(len(ids) for ids, _ in expected)
