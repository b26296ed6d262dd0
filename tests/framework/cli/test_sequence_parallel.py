"""launch.sequence_parallel through the real CLI: `check` and `train` refuse a split the model's heads,
the kernel or the length cannot take (one line naming the key and both numbers, exit 2, nothing
written); `check --gpu` shows each GPU's share of a row; `plan` lists the longest length per split."""
from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from framework.config.validate import Problems
from framework.estimation.sequence_parallel import check_recipe
from seqtune_testing import error_lines

REPO = Path(__file__).resolve().parents[3]
LONG = "recipes/tulu3/gemma2-2b-sft-long-context.yaml"
ROW = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'


def recipe(tmp_path: Path, heads: int = 8, kv_heads: int = 4, processes: int = 6, length: int = 128,
           model: str | None = None) -> Path:
    """A valid recipe of a tiny model built from model.config (or a hub id), run by `processes`."""
    (tmp_path / "rows.jsonl").write_text(ROW * 4)
    described = (f"name_or_path: {model}" if model else
                 f"config: {{model_type: llama, hidden_size: {heads * 4}, intermediate_size: 64, "
                 f"num_hidden_layers: 1, num_attention_heads: {heads}, num_key_value_heads: {kv_heads}}}")
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(f"""\
        output_dir: out
        model: {{{described}}}
        tokenizer: {{name_or_path: {REPO / 'recipes/quickstart/tokenizer'}}}
        data: {{mixture: [{{source: rows.jsonl, fraction: 1.0}}], max_seq_length: {length}}}
        optimizer: adamw
        scheduler: linear
        launch: {{device: cpu, num_processes: {processes}}}
        logging: {{loggers: [jsonl]}}
        """))
    return path


def refused(result, tmp_path: Path) -> str:
    """The one problem of a refused command: exit 2, no traceback, nothing written."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout and not (tmp_path / "out").exists()
    [line] = error_lines(result.stderr)
    assert line.startswith("override launch.sequence_parallel=") or "model.attn_implementation" in line
    return line


@pytest.mark.parametrize("shape, n, expected", [
    ({"heads": 8, "kv_heads": 4}, 3, "the model's 8 attention heads cannot be dealt out to 3 processes"),
    ({"heads": 12, "kv_heads": 4}, 6, "the model's 4 key/value heads can be neither dealt out to 6 processes nor "
                                      "replicated up to 6"),
    ({"length": 31, "processes": 2}, 2, "data.max_seq_length 31 split 2 ways leaves 15 tokens per process"),
], ids=["heads", "kv-heads", "too-short"])
def test_check_and_train_refuse_a_split_in_one_line(seqtune, tmp_path, shape, n, expected):
    path = recipe(tmp_path, **shape)
    for command in ("check", "train"):
        result = seqtune(command, path, f"launch.sequence_parallel={n}", cwd=tmp_path)
        line = refused(result, tmp_path)
        assert f"launch.sequence_parallel={n}: launch.sequence_parallel: {expected}" in line
        if command == "check":
            assert result.stdout == ""


def test_a_kernel_outside_the_wrappers_is_refused(seqtune, tmp_path):
    """The schema lists only kernels the wrapper runs, so a name outside them is the schema's error;
    the split's own check is there for a kernel the schema may gain."""
    result = seqtune("check", recipe(tmp_path, processes=2), "launch.sequence_parallel=2",
                     "model.attn_implementation=paged_attention", cwd=tmp_path)
    assert "model.attn_implementation: invalid value 'paged_attention'" in refused(result, tmp_path)
    stub = SimpleNamespace(launch=SimpleNamespace(sequence_parallel=2), data=SimpleNamespace(max_seq_length=64),
                           model=SimpleNamespace(attn_implementation="paged_attention", config={}))
    problems = Problems(lambda key: "recipe.yaml")
    check_recipe(stub, problems)
    assert problems.lines == ["recipe.yaml: launch.sequence_parallel: model.attn_implementation paged_attention "
                              "cannot run under sequence parallelism: use one of sdpa, eager, flex_attention, "
                              "flash_attention_2, flash_attention_3 (or auto)"]


def test_a_split_the_model_takes_is_valid_and_an_unknown_models_heads_wait_for_training(seqtune, tmp_path):
    assert seqtune("check", recipe(tmp_path), "launch.sequence_parallel=2", cwd=tmp_path).returncode == 0
    # no config here for a hub id that is neither cached nor bundled: training checks the loaded model
    unknown = recipe(tmp_path, model="acme/unknown-model")
    result = seqtune("check", unknown, "launch.sequence_parallel=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_check_gpu_shows_each_gpus_share_of_a_row(seqtune):
    result = seqtune("check", LONG, "--gpu", "3090")
    assert result.returncode == 0, result.stderr
    assert "each GPU holds 16,384 of its 65,536 tokens (rows pad to a multiple of 4); 1 data-parallel group of 4" \
        in result.stdout
    assert "all-to-all buffers" in result.stdout and "16,384 tokens per GPU" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("fits: ")
    assert "all-to-all" not in seqtune("check", LONG, "--gpu", "3090", "launch.sequence_parallel=1").stdout


def split_table(stdout: str) -> dict[str, int]:
    """The sequence parallelism table of `plan`: its longest max_seq_length by sequence_parallel (`4 *`
    for the recipe's own)."""
    block = stdout.split("sequence parallelism:")[1].split("GPUs: the fewest")[0]
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in block.splitlines() if line.count("│") == 5]
    return {cells[0]: int(cells[2].replace(",", "")) for cells in rows}


@pytest.mark.slow
def test_plan_lists_the_longest_length_for_each_split(seqtune):
    """The seed's GPUs (4 x RTX 3090) with the long-context recipe: each split fits longer rows, and 4
    processes to a row fit the recipe's 65,536 tokens."""
    result = seqtune("plan", LONG, "--gpu", "3090")
    assert result.returncode == 0, result.stderr
    longest = split_table(result.stdout)
    assert list(longest) == ["1", "2", "4 *"]
    assert longest["4 *"] >= 65536 and longest["4 *"] > longest["2"] > longest["1"]
    assert "sequence_parallel 4" in result.stdout  # the length table says which split it plans


@pytest.mark.slow
def test_plan_offers_each_split_to_a_recipe_that_does_not_fit(seqtune):
    seed = seqtune("plan", "recipes/tulu3/gemma2-2b-sft.yaml", "--gpu", "3090")
    assert seed.returncode == 1
    assert list(split_table(seed.stdout)) == ["1 *", "2", "4"]
    assert "  launch.sequence_parallel=4: " in seed.stdout


def test_the_runs_size_counts_data_parallel_groups_not_processes():
    from framework.cli.show import run_size

    def size(processes: int, n: int) -> str:
        recipe = SimpleNamespace(train=SimpleNamespace(per_device_batch_size=1, gradient_accumulation_steps=2),
                                 launch=SimpleNamespace(num_processes=processes, sequence_parallel=n),
                                 scheduler=SimpleNamespace(name="linear"))
        plan = SimpleNamespace(total_steps=10, epochs=[[]], efficiency=1.0)
        parts = SimpleNamespace(scheduler=lambda: None)
        return dict(run_size(recipe, parts, SimpleNamespace(packs_rows=True), plan, [100]))["effective batch"]

    assert size(4, 1) == "8 packed rows (1 x 2 accumulation x 4 processes)"
    assert size(4, 4) == "2 packed rows (1 x 2 accumulation x 1 data-parallel group of 4 processes)"
    assert size(8, 2) == "8 packed rows (1 x 2 accumulation x 4 data-parallel groups of 2 processes)"
