"""`seqtune plan`: memory and data over candidate lengths, the recommendation, and the remedies."""
from __future__ import annotations

import json

import pytest

from seqtune_testing import encode_chat
from framework.data.tokenize import cut_warning, shortest_keeping
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


def png_title(path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return image.text["Title"]


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The plan table's rows by their length cell (`2,048`, or `128 *` for the recipe's own)."""
    rows = [line.split("│")[1:-1] for line in stdout.splitlines() if line.count("│") > 6]
    return {cells[0].strip(): [cell.strip() for cell in cells] for cells in rows}


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: ")]


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


@pytest.mark.slow
def test_plan_on_the_recipes_own_data(seqtune, tmp_path):
    data = tmp_path / "rows.jsonl"
    long_rows(data)
    plot = tmp_path / "plan.png"
    result = seqtune("plan", "recipes/quickstart.yaml", "--gpu", "24", "--plot", str(plot),
                     f"data.mixture=[{{source: {data}, fraction: 1.0}}]", "data.truncation=drop")
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert rows["256"][4] == "20" and rows["1,024"][5] == "0.00%"  # 20 long rows dropped at 256
    # the long rows (all under 352 tokens) hold half the trainable tokens: kept whole from 352, the
    # smallest length keeping 99%, shorter than 512, the first listed one that does
    assert rows["128 *"][4] == "20" and rows["512"][5] == "0.00%"
    assert "smallest keeping 99% of trainable tokens: 352" in result.stdout
    assert warnings(result.stderr) == ["warning: data.max_seq_length 128 cuts 50.0% of the trainable tokens (0 of 40 "
                                       "rows truncated, 20 dropped by truncation); data.max_seq_length=352 keeps 99% "
                                       "or more"]
    # --plot: the memory chart at the path, the length histogram beside it, both said
    lengths = tmp_path / "plan-lengths.png"
    assert f"memory chart written to {plot}" in result.stdout
    assert f"length histogram written to {lengths}" in result.stdout
    assert readable_png(plot) and readable_png(lengths)
    # --gpu 24 names no GPU: the chart says what it planned for, not "memory per GPU on GPU"
    assert png_title(plot) == "recipes/quickstart.yaml: memory on one 24 GiB GPU"
    assert "on 1 x 24 GiB GPU, truncation drop" in result.stdout


@pytest.mark.slow
def test_the_recipes_own_length_gets_its_row_and_a_warning_when_it_cuts_too_much(seqtune):
    """The issue's run: max_seq_length 48 cut rows the table of 256 to 32,768 never showed."""
    cut = seqtune("plan", "recipes/quickstart.yaml", "--gpu", "h100", "data.max_seq_length=48")
    assert cut.returncode == 0, cut.stderr
    rows = table_rows(cut.stdout)
    assert list(rows)[:2] == ["48 *", "256"] and "* the recipe's max_seq_length" in cut.stdout
    assert rows["48 *"][2] == "yes" and rows["48 *"][3] == "145" and rows["48 *"][5] == "5.67%"
    assert "<= 48 " in cut.stdout  # the histogram's buckets include it too
    assert warnings(cut.stderr) == ["warning: data.max_seq_length 48 cuts 5.7% of the trainable tokens (145 of 2,000 "
                                    "rows truncated, 0 dropped by truncation); data.max_seq_length=68 keeps 99% or "
                                    "more"]
    kept = seqtune("plan", "recipes/quickstart.yaml", "--gpu", "h100")  # 128 cuts nothing
    assert kept.returncode == 0 and table_rows(kept.stdout)["128 *"][5] == "0.00%" and not warnings(kept.stderr)


def test_the_length_keeping_99_percent_keeps_whole_rows_holding_it():
    assert shortest_keeping([10, 30, 20, 500], [50, 25, 24, 1]) == 30  # 99 of 100 in rows up to 30 tokens
    assert shortest_keeping([10, 30, 20, 500], [50, 25, 24, 2]) == 500
    assert shortest_keeping([0, 0], [0, 0]) is None
    assert cut_warning(128, 0.01, 3, 0, 100, 200) is None  # 1% is within what is kept
    assert cut_warning(128, 0.2, 3, 1, 100, None) == ("data.max_seq_length 128 cuts 20.0% of the trainable tokens "
                                                      "(3 of 100 rows truncated, 1 dropped by truncation)")


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_qlora_recipe_fits_16384_tokens_on_one_3090_offline(seqtune):
    """Llama-3.1-8B with its linear layers in 4 bits, rank-64 adapters, checkpointing and the chunked
    loss: its own 16,384 tokens fit 24 GiB; the same recipe with a bf16 base stops far short."""
    def largest(stdout: str) -> int:
        line = next(line for line in stdout.splitlines() if line.startswith("largest max_seq_length that fits"))
        return int(line.split(": ")[-1].rstrip(")").replace(",", ""))  # the multiple of 64 when shown

    qlora = seqtune("plan", "recipes/llama3.1-8b-qlora.yaml", "--gpu", "3090")
    assert qlora.returncode == 0, qlora.stderr
    assert table_rows(qlora.stdout)["16,384 *"][2] == "yes" and largest(qlora.stdout) >= 16_384
    bf16 = seqtune("plan", "recipes/llama3.1-8b-qlora.yaml", "--gpu", "3090", "model.quantization=null")
    assert bf16.returncode == 1 and largest(bf16.stdout) < 8192
    assert "model.quantization={method: nf4}: 20.6 GiB (fits)" in bf16.stdout  # the remedy a LoRA recipe gets
    check = seqtune("check", "recipes/llama3.1-8b-qlora.yaml", "--gpu", "3090")
    assert check.returncode == 0 and check.stdout.strip().splitlines()[-1].startswith("fits: ")
    assert "linear params × 4 bits" in check.stdout


def gpu_rows(stdout: str) -> dict[str, list[str]]:
    """The GPU table's rows by their memory cell (`80 GiB`, or `24 GiB *` for --gpu's size); a GPU
    list wrapped over two lines leaves a continuation row without one, left out."""
    block = stdout.split("GPUs: the fewest")[1].split("GiB per GPU in brackets")[0]
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in block.splitlines() if line.count("│") >= 4]
    return {cells[1]: cells for cells in rows if cells[1]}


@pytest.mark.slow
def test_the_imported_70b_qlora_command_is_planned_on_gpus_of_each_size(seqtune, tmp_path):
    """open-instruct's Tulu 2 QLoRA script names its model and data by paths of its author's machine:
    the plan says they are not here, asks for the model's hub id, and with it says how many GPUs of
    each size the run needs (the fewest that fit, as the recipe is and with ZeRO-3)."""
    from framework.config import load_recipe
    from framework.estimation.for_recipe import estimate_for_recipe

    recipe = tmp_path / "llama2-70b-qlora.yaml"
    imported = seqtune("import", "open-instruct", "--script", "tests/fixtures/open_instruct/llama2-70b-qlora.sh",
                       "-o", recipe)
    assert imported.returncode == 0, imported.stderr
    unknown = seqtune("plan", recipe, "--gpu", "a100-80")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "model.name_or_path: no such directory: ../hf_llama2_models/70B" in unknown.stderr
    assert "model.name_or_path=org/name" in unknown.stderr and "meta-llama/Llama-2-70b-hf" in unknown.stderr

    hub_id = "model.name_or_path=meta-llama/Llama-2-70b-hf"
    planned = seqtune("plan", recipe, "--gpu", "3090", hub_id)
    assert planned.returncode == 1, planned.stderr  # 8 x 3090 as the recipe is: no
    absent = [line for line in planned.stdout.splitlines() if line.startswith("not on this machine")]
    assert [line.split(": ")[2] for line in absent] == ["data.mixture[0].source", "tokenizer.name_or_path"]
    assert "data columns skipped" in planned.stdout
    rows = gpu_rows(planned.stdout)
    assert rows["24 GiB *"][2].startswith("none") and rows["24 GiB *"][3].startswith("none")
    assert rows["40 GiB"][2].startswith("none") and rows["80 GiB"][2].startswith("1 (")
    # ZeRO-3 partitions the 4-bit weights and the adapters' states: the fewest A100-40s that fit
    count = int(rows["40 GiB"][3].split()[0])
    loaded = load_recipe(recipe, [hub_id])
    at = [estimate_for_recipe(loaded, num_gpus=n, zero_stage=3) for n in (count - 1, count)]
    assert not at[0].fits(40) and at[1].fits(40) and rows["40 GiB"][3] == f"{count} ({at[1].total_gib:.1f})"
