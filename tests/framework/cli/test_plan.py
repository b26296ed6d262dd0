"""`seqtune plan`: memory and data over candidate lengths, the recommendation, and the remedies."""
from __future__ import annotations

import json

from seqtune_testing import encode_chat
from framework.estimation.sweep import LengthRow, data_at, recommend
from plugins.packing import none
from plugins.truncation import drop, right


def long_rows(path, tokenizer_words: int = 150, rows: int = 40) -> None:
    with path.open("w") as out:
        for i in range(rows):
            words = tokenizer_words if i % 2 else 10
            out.write(json.dumps({"messages": [{"role": "user", "content": "a b " * words},
                                               {"role": "assistant", "content": "ok " * 20}]}) + "\n")


def readable_png(path) -> bool:
    import matplotlib.image

    height, width = matplotlib.image.imread(path).shape[:2]
    return width > 600 and height > 300


def test_plot_to_a_path_that_is_not_png_fails_before_any_work(seqtune, tmp_path):
    result = seqtune("plan", "recipes/quickstart.yaml", "--gpu", "24", "--plot", tmp_path / "plan.pdf")
    assert result.returncode == 2 and "give a path ending in .png" in result.stderr + result.stdout
    assert "GiB per GPU" not in result.stdout


def test_data_at_counts_what_each_strategy_cuts_and_loses(tiny_tokenizer):
    samples = [encode_chat(tiny_tokenizer, [{"role": "user", "content": "a b " * n},
                                            {"role": "assistant", "content": "ok " * 20}]) for n in (10, 150)]
    assert len(samples[0].input_ids) < 256 < len(samples[1].input_ids)
    cut = data_at(samples, right, none(), 2, 256, seed=0)
    assert cut[:2] == (0, 1)  # the long row loses its answer under `right`: nothing trainable, dropped
    assert cut[2] == samples[1].num_trainable / (samples[0].num_trainable + samples[1].num_trainable)
    assert data_at(samples, drop, none(), 2, 256, seed=0)[1] == 1
    assert data_at(samples, right, none(), 2, 1024, seed=0)[:3] == (0, 0, 0.0)


def test_recommend_the_largest_fit_and_the_smallest_that_keeps_99_percent():
    rows = [LengthRow(256, 10, True, trainable_lost=0.2), LengthRow(512, 20, True, trainable_lost=0.005),
            LengthRow(1024, 30, False, trainable_lost=0.0)]
    assert recommend(rows) == (512, 512)
    assert recommend([LengthRow(256, 50, False)]) == (None, None)


def test_plan_on_the_recipes_own_data(seqtune, tmp_path):
    data = tmp_path / "rows.jsonl"
    long_rows(data)
    plot = tmp_path / "plan.png"
    result = seqtune("plan", "recipes/quickstart.yaml", "--gpu", "24", "--plot", str(plot),
                     f"data.mixture=[{{source: {data}, fraction: 1.0}}]", "data.truncation=drop")
    assert result.returncode == 0, result.stderr
    lines = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 6}
    assert "20" in lines["256"].split("│")[5] and "0.00%" in lines["1,024"]  # 20 long rows dropped at 256
    assert "smallest keeping 99% of trainable tokens: 512" in result.stdout
    # --plot: the memory chart at the path, the length histogram beside it, both said
    lengths = tmp_path / "plan-lengths.png"
    assert f"memory chart written to {plot}" in result.stdout
    assert f"length histogram written to {lengths}" in result.stdout
    assert readable_png(plot) and readable_png(lengths)


def test_plan_offline_without_the_data_still_plans_memory_and_remedies(seqtune, tmp_path):
    plot = tmp_path / "plan.png"
    result = seqtune("plan", "recipes/tulu3/gemma2-2b-sft.yaml", "--gpu", "3090", "--plot", plot)
    assert result.returncode == 1
    assert "data columns skipped" in result.stdout and "largest max_seq_length that fits: 1,024" in result.stdout
    # the memory chart even so (most useful when nothing fits); no lengths, so no histogram
    assert readable_png(plot) and "length histogram skipped" in result.stdout
    assert not (tmp_path / "plan-lengths.png").exists()
    assert "model.gradient_checkpointing=true: 20.1 GiB (fits)" in result.stdout
    assert "model.activation_offloading=true: 19.8 GiB (fits)" in result.stdout


def test_with_gradient_checkpointing_the_seed_recipe_fits_8192_tokens_on_a_3090(seqtune):
    """The memory savers' lines: the longest length with each; checkpointing (with the default chunked
    loss) reaches past 8,192 where the unchunked loss stops far short."""
    def longest(stdout: str, saver: str) -> int:
        block = stdout.split("memory savers")[1].split("at max_seq_length")[0]
        line = next(line for line in block.splitlines() if line.strip().startswith(saver + ":"))
        return int(line.split(": ")[1].replace(",", ""))

    chunked = seqtune("plan", "recipes/tulu3/gemma2-2b-sft.yaml", "--gpu", "3090").stdout
    unchunked = seqtune("plan", "recipes/tulu3/gemma2-2b-sft.yaml", "--gpu", "3090", "train.loss=cross_entropy").stdout
    assert longest(chunked, "model.gradient_checkpointing=true") >= 8192
    assert longest(unchunked, "model.gradient_checkpointing=true") < 4096
    # the unchunked recipe's "all of them" switches to the chunked loss too: the same longest length
    assert longest(unchunked, "all of them") == longest(chunked, "all of them") > longest(unchunked, "as the recipe is")
    assert longest(chunked, "all of them") >= longest(chunked, "model.gradient_checkpointing=true")
