"""Held-out evaluation: what eval.split holds out, and an eval_loss that is the exact token mean over the
whole held-out set, whatever the packing, the number of processes or DeepSpeed."""
from __future__ import annotations

import json

import numpy as np
import pytest

from framework.errors import UserError
from framework.training.evaluation import split_off


class Plan:
    """The distinct rows of a mixture: row d of the cache is row index[d] of source source[d]."""

    def __init__(self, n):
        self.source, self.index = np.zeros(n, dtype=np.int32), np.arange(n)

    def distinct(self):
        return self, None


def data_with_repeats():
    """Six cached rows, the mixture holding rows 0 and 3 twice (fraction above 1 repeats rows)."""
    from datasets import Dataset
    from datasets.table import InMemoryTable
    import pyarrow as pa

    from framework.data.pipeline import PreparedData

    distinct = [0, 1, 2, 3, 0, 4, 3, 5]
    table = pa.table({"input_ids": [[d] * (d + 1) for d in range(6)]})
    indices = InMemoryTable(pa.table({"indices": pa.array(distinct, type=pa.uint64())}))
    dataset = Dataset(InMemoryTable(table), indices_table=indices)
    return PreparedData(dataset, [d + 1 for d in distinct], None, {}, False, None, Plan(6), None), distinct


@pytest.mark.parametrize("split, count", [(2, 2), (0.5, 3)])
def test_a_held_out_row_leaves_training_with_all_its_copies_and_is_evaluated_once(split, count):
    data, distinct = data_with_repeats()
    trained, held, origins = split_off(data, split, seed=3)
    held_rows = [ids[0] for ids in held.dataset["input_ids"]]
    trained_rows = [ids[0] for ids in trained.dataset["input_ids"]]
    assert len(held_rows) == len(set(held_rows)) == count
    assert not set(held_rows) & set(trained_rows)
    assert sorted(trained_rows) == sorted(d for d in distinct if d not in held_rows)  # every other copy trains
    assert [o["row"] - 1 for o in origins] == held_rows and trained.lengths == [r + 1 for r in trained_rows]
    assert split_off(data, split, seed=3)[2] == origins  # seeded


def test_holding_out_every_row_is_refused():
    with pytest.raises(UserError, match="eval.split: 6 holds out 6 of the 6 distinct rows"):
        split_off(data_with_repeats()[0], 6, seed=0)


def held_out_loss(folder, repo):
    from seqtune_testing import load_script

    ask = load_script("scripts/ask")
    return ask.held_out_loss(*ask.load(str(folder)), repo / "recipes/quickstart/data/eval.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("layout", [[], ["data.packing=bfd"], ["launch.num_processes=2"],
                                    ["launch.num_processes=2", "launch.deepspeed={zero_stage: 2}"]],
                         ids=["padded", "packed", "two-processes", "zero2"])
def test_eval_loss_is_the_token_mean_over_the_whole_held_out_set(seqtune, tmp_path, repo, layout):
    """The last evaluation scores the saved model: the same number as scoring it directly, one row at a time."""
    out = tmp_path / "run"
    done = seqtune("train", "recipes/quickstart.yaml", f"output_dir={out}", "train.max_steps=12", "eval.every_steps=5",
                   "eval.per_device_batch_size=7", "logging.loggers=[jsonl]", *layout, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "100 rows -> 100 kept (0 truncated" in done.stderr  # the direct score below cuts nothing either
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evaluations] == [5, 10, 12]
    assert evaluations[-1]["eval_loss"] == pytest.approx(held_out_loss(out, repo), rel=1e-5)
    assert records[-1]["summary"]["eval_loss"] == evaluations[-1]["eval_loss"]
    assert evaluations[-1]["eval_perplexity"] == pytest.approx(np.exp(evaluations[-1]["eval_loss"]))
