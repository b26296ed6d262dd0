"""`seqtune report`: a run's record read back from its files, finished or not; and what a finished run
leaves for people: the loss curve and a model card Hugging Face reads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework.errors import UserError
from framework.report.run import read_run, report_rows


def test_report_reads_what_training_wrote_without_importing_training(repo):
    """No import circle (training/outputs -> report/run -> training/best -> training/outputs): report/
    knows the files, not the code that writes them."""
    import subprocess
    import sys

    code = ("import sys, framework; before = set(sys.modules)\n"
            "import framework.report.run, framework.report.card, framework.report.plots\n"
            "print(sorted(m for m in set(sys.modules) - before if m.startswith('framework.training')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def write_run(folder, records, state, checkpoints=()):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "run.json").write_text(json.dumps(state))
    for name in checkpoints:
        (folder / "checkpoints" / name).mkdir(parents=True)
        (folder / "checkpoints" / name / "trainer_state.json").write_text("{}")


def test_a_stopped_run_says_how_far_it_got_and_where_it_resumes(tmp_path):
    records = [{"step": 10, "loss": 3.0, "tokens_per_s": 900.0, "peak_memory_gib": 1.5},
               {"step": 20, "loss": 2.0, "tokens_per_s": 1000.0, "mfu": 0.25, "peak_memory_gib": 1.75},
               {"step": 20, "eval_loss": 2.5}, {"step": 30, "loss": 1.5, "tokens_per_s": 1200.0, "mfu": 0.35}]
    (tmp_path / "checkpoints" / "step-00000030").mkdir(parents=True)  # not complete: no trainer_state.json
    write_run(tmp_path, records, {"identity": {}, "finished": None, "total_steps": 100}, ["step-00000020"])
    rows = dict(report_rows(read_run(tmp_path)))
    assert rows["status"].startswith("not finished: last logged step 30 of 100")
    assert rows["train loss"] == "3 -> 1.5 (3 logged)" and rows["eval loss"] == "2.5"
    assert rows["tokens/s"] == "1,100" and rows["MFU"] == "30.0%"  # the windows after the first
    assert rows["peak memory"] == "1.75 GiB" and rows["last checkpoint"] == "step-00000020"


def test_a_resumed_runs_repeated_steps_count_once_and_a_cut_last_line_is_ignored(tmp_path):
    records = [{"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0}, {"step": 20, "loss": 2.25},
               {"summary": {"steps": 20, "train_seconds": 12.5}}]
    write_run(tmp_path, records, {"finished": 20})
    with (tmp_path / "metrics.jsonl").open("a") as out:
        out.write('{"step": 30, "lo')
    run = read_run(tmp_path)
    assert [r["loss"] for r in run.logged] == [3.0, 2.25]
    rows = dict(report_rows(run))
    assert rows["status"] == "finished after 20 steps" and rows["train time"] == "12.5 s"


def test_a_folder_that_is_no_run_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        read_run(tmp_path / "missing")
    with pytest.raises(UserError, match="has no metrics.jsonl; it is written by the jsonl logger"):
        read_run(tmp_path)


@pytest.mark.slow
def test_a_finished_run_has_a_loss_curve_a_model_card_and_a_report(seqtune, tmp_path):
    from huggingface_hub import ModelCard, ModelCardData
    from matplotlib.image import imread

    out = tmp_path / "run"
    done = seqtune("train", "recipes/quickstart.yaml", f"output_dir={out}", "train.max_steps=30",
                   "logging.every_steps=10", "eval.every_steps=10", "lora={r: 4, merge: true}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert imread(out / "loss_curve.png").shape[1] >= 800
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and "lora" in card.data.tags and "base_model" not in card.data.to_dict()
    ModelCardData(**card.data.to_dict())
    assert "![loss curve](loss_curve.png)" in card.text and "eval loss" in card.text
    merged = ModelCard.load(out / "merged" / "README.md")
    assert merged.data.library_name == "transformers" and (out / "merged" / "loss_curve.png").is_file()
    shown = seqtune("report", str(out), "--plots")
    assert shown.returncode == 0, shown.stderr
    assert "finished after 30 steps" in shown.stdout and "eval loss" in shown.stdout
    assert "loss curve written to" in shown.stdout


@pytest.mark.slow
def test_without_matplotlib_a_run_says_which_extra_draws_its_curve(seqtune, tmp_path, monkeypatch):
    fake = tmp_path / "no_matplotlib" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'matplotlib'\")\n")
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    out = tmp_path / "run"
    done = seqtune("train", "recipes/quickstart.yaml", f"output_dir={out}", "train.max_steps=3", "eval=null")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no loss curve: plots need matplotlib: pip install 'seqtune[plot]'" in done.stderr
    assert not (out / "loss_curve.png").exists() and "loss_curve.png" not in (out / "README.md").read_text()


@pytest.mark.slow
def test_the_card_says_what_trained_and_its_paths_work_from_anywhere(seqtune, repo, tmp_path):
    """A LoRA run on a local base named by a relative path, 20 of its 200 rows held out: the card counts
    the 180 trained, and its reproduce command and the adapter's base path work from another folder."""
    import os
    import re
    import subprocess
    import sys

    from huggingface_hub import ModelCard

    data = [f"tokenizer.name_or_path={repo / 'recipes/quickstart/tokenizer'}", "logging.loggers=[jsonl]",
            f"data.mixture=[{{source: {repo / 'recipes/quickstart/data/train.jsonl'}, count: 200}}]"]
    base = seqtune("train", repo / "recipes/quickstart.yaml", "output_dir=base", "train.max_steps=1", "eval=null",
                   *data, cwd=tmp_path)
    assert base.returncode == 0, base.stderr[-3000:]
    run = seqtune("train", repo / "recipes/quickstart.yaml", "output_dir=run", "train.max_steps=3", "model.config=null",
                  "model.name_or_path=base", "eval={split: 20}", "lora={r: 4}", *data, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    card = ModelCard.load(tmp_path / "run" / "README.md").text
    assert "on 180 rows (of 200: 20 held out for evaluation)" in card
    assert "Evaluated on 20 held-out rows of the same data (eval.split), never trained on." in card
    assert "- trained on: 180 rows; 20 held out for evaluation (eval.split), never trained on" in card
    adapter = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tmp_path / "base")
    assert f"`adapter_config.json` names it: `{tmp_path / 'base'}`" in card

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    loads = ("from peft import AutoPeftModelForCausalLM\n"
             f"AutoPeftModelForCausalLM.from_pretrained({str(tmp_path / 'run')!r})\nprint('loaded')")
    loaded = subprocess.run([sys.executable, "-c", loads], cwd=elsewhere, capture_output=True, text=True)
    assert "loaded" in loaded.stdout, loaded.stderr[-3000:]
    command = re.search(r"```bash\n(.*?)```", card, re.S).group(1)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    again = subprocess.run(["bash", "-ec", command], cwd=elsewhere, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "run-again" / "adapter_model.safetensors").is_file()
