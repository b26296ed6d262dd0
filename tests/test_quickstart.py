"""The quickstart recipe end to end, shortened: the loss falls and the output is a usable HF model."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_the_quickstarts_first_command_installs_what_draws_the_loss_curve():
    """The README says the quickstart's folder holds the loss curve: matplotlib, the plot extra, must be
    installed by scripts/quickstart.sh, or the run says "no loss curve: plots need matplotlib"."""
    setup = next(shlex.split(line, comments=True) for line in (REPO / "scripts/quickstart.sh").read_text().splitlines()
                 if "scripts/setup.sh" in line)
    extras = setup[setup.index("scripts/setup.sh") + 1].split(",") if setup[-1] != "scripts/setup.sh" else []
    plot = re.search(r"^plot = \[(.*)\]", (REPO / "pyproject.toml").read_text(), re.M).group(1)  # no tomllib on 3.10
    assert "plot" in extras and '"matplotlib' in plot
    assert "holds a model card and the loss curve" in " ".join((REPO / "README.md").read_text().split())


def test_the_readmes_commands_say_where_seqtune_is():
    """`seqtune` is in .venv/bin: the README's examples activate it first, or call it by that path."""
    for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
        first = next((i for i, command in enumerate(commands) if command.startswith("seqtune")), None)
        if first is not None:
            assert "source .venv/bin/activate" in commands[:first], block


@pytest.mark.slow
def test_quickstart_trains_and_saves_a_loadable_model(seqtune, tmp_path):
    out = tmp_path / "quickstart"
    result = seqtune("train", "recipes/quickstart.yaml", f"output_dir={out}", "train.max_steps=200",
                     "logging.every_steps=10", "checkpoint.every=100", "checkpoint.keep_last=1")
    assert result.returncode == 0, result.stderr[-3000:]

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 20 and losses[-1] < losses[0] / 2, losses
    assert records[-1]["summary"]["steps"] == 200
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000200"]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    for path in (out, out / "checkpoints" / "step-00000200"):
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": "Reverse: c a t"}],
                                               add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        assert generated.shape[1] > inputs["input_ids"].shape[1]
    assert tokenizer.chat_template and (out / "model.safetensors").is_file()
    saved = (out / "recipe.yaml").read_text()
    assert "max_steps: 200" in saved and "quickstart" in saved
    report = json.loads((out / "truncation_report.json").read_text())
    assert report["rows_in"] == 2000 and report["rows_kept"] == 2000
    # what the README promises the folder holds; DeepSpeed, unused, says nothing at the checkpoints
    assert (out / "loss_curve.png").is_file() and (out / "README.md").is_file()
    assert "Setting accelerator" not in result.stdout + result.stderr


@pytest.mark.slow
def test_trackers_selected_by_the_recipe_write_offline_records(seqtune, tmp_path):
    out = tmp_path / "run"
    result = seqtune("train", "recipes/quickstart.yaml", f"output_dir={out}", "train.max_steps=3",
                     "logging.every_steps=1",
                     "logging.loggers=[jsonl, wandb, {name: tensorboard, log_dir: tb}]")
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert list((out / "wandb").glob("offline-run-*"))
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 5  # 3 steps, the evaluation, the summary
