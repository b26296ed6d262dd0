"""GRPO through the real CLI on the CPU: two processes train as one process does on the same completions
(a test-only generator, `fixed`, that completes prompts without the model), the built-in `transformers`
generator logs every metric, and recipes grpo cannot run are refused by `check` and `train` in one line
before anything is written."""
from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from framework.cli import app
from seqtune_testing import REPO, STOP_PLUGIN, TINY_MODEL, error_lines, logged, max_difference, train_cli

LETTERS = "abcdefghijklmnopqrstuvwxyz"
GROUP, MAX_NEW = 4, 6


def write_prompts(path: Path, count: int = 16) -> None:
    """`Last: <k letters>` prompts (k from 2 to 6). The fixed generator's completion j of a prompt is the
    last j + 1 + skew tokens of its turn (skew: the turn's length % 3, here (k + 7) % 3), one letter a
    token: each answer is the last letters that completion i % 4 of its group writes (for i % 4 = 3, or
    when that is more than the prompt's letters, an answer no completion writes). Rewards differ within
    groups, and completions' lengths between prompts."""
    rows = []
    for i in range(count):
        k = 2 + i % 5
        letters = [LETTERS[(5 * i + n) % 26] for n in range(k)]
        wanted = i % 4 + 1 + (k + 7) % 3
        answer = " ".join(letters[-wanted:]) if i % 4 < 3 and wanted <= k else "z z z"
        rows.append({"prompt": "Last: " + " ".join(letters), "answer": answer})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def grpo_run(tmp_path):
    """`seqtune train` of a GRPO recipe on the quickstart model config and tokenizer; its logged steps."""
    site = tmp_path / "site"  # not tests/: on PYTHONPATH it would shadow the `framework` and `plugins` packages
    site.mkdir()
    shutil.copy(REPO / "tests/grpo_fixed_generator.py", site)
    (site / "stop_plugin.py").write_text(STOP_PLUGIN)  # SIGTERM after step 2, once, when STOP_ONCE names a file
    write_prompts(tmp_path / "prompts.jsonl")

    def run(name: str, objective: str, *extra: str, env: dict | None = None, returncode: int = 0) -> list[dict]:
        mixture = f"[{{source: {tmp_path / 'prompts.jsonl'}, fraction: 1.0, format: prompt_answer}}]"
        done = train_cli("recipes/quickstart.yaml", tmp_path / name, "plugins=[grpo_fixed_generator]",
                         f"data.mixture={mixture}",
                         f"objective={{name: grpo, num_generations: {GROUP}, max_new_tokens: {MAX_NEW}, {objective}}}",
                         "eval=null", "data.max_seq_length=64", "train.max_steps=3", "optimizer={name: sgd, lr: 0.5}",
                         "scheduler=constant", "logging.every_steps=1", "logging.loggers=[jsonl]",
                         f"data.cache_dir={tmp_path / 'cache'}", *extra, env={"PYTHONPATH": str(site), **(env or {})})
        assert done.returncode == returncode, done.stdout[-2000:] + done.stderr[-3000:]
        return logged(tmp_path / name) if returncode == 0 else []

    return run


FIXED = "generator: fixed, rewards: [exact_match]"
TWO = ("launch.num_processes=2", "train.per_device_batch_size=2", "train.gradient_accumulation_steps=1")
ACCUMULATED = ("train.per_device_batch_size=2", "train.gradient_accumulation_steps=2")
ONE_BATCH = ("train.per_device_batch_size=4", "train.gradient_accumulation_steps=1")


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_two_processes_train_as_one_on_the_same_completions(grpo_run, tmp_path, loss_type):
    """The same four prompts make each optimizer step: two ranks of two, one process's two micro-batches of
    two, or one micro-batch of four. dapo divides by the step's completion tokens over both ranks, grpo
    averages completions over both: either normaliser taken per rank or per micro-batch would differ. With
    a live reference (beta > 0) on every rank."""
    objective = f"{FIXED}, loss_type: {loss_type}, beta: 0.04"
    two = grpo_run("two", objective, *TWO)
    accumulated = grpo_run("accumulated", objective, *ACCUMULATED)
    # one micro-batch of four: dapo's normaliser (the whole step's tokens) is what it could get wrong
    one_batch = grpo_run("one_batch", objective, *ONE_BATCH) if loss_type == "dapo" else accumulated
    for one in (accumulated, one_batch):
        for key in ("reward", "accuracy/exact_match", "reward_std", "reward/exact_match/std", "completion_length",
                    "completion_length_max", "completions_cut"):
            assert [m[key] for m in two] == pytest.approx([m[key] for m in one], abs=1e-9), key
        assert [m["loss"] for m in two] == pytest.approx([m["loss"] for m in one], abs=1e-6)
        assert [m["kl"] for m in two] == pytest.approx([m["kl"] for m in one], rel=1e-5, abs=1e-9)
    assert max_difference(tmp_path / "accumulated", tmp_path / "two") < 1e-5
    assert max_difference(tmp_path / ("one_batch" if loss_type == "dapo" else "accumulated"), tmp_path / "two") < 1e-5
    # what they agree on is learning: mixed rewards in every step, updates far above the tolerance
    assert all(0 < m["accuracy/exact_match"] < 1 and m["reward_std"] > 0 for m in two)
    assert all(m["grad_norm"] * 0.5 > 1e-2 for m in two)
    assert all(m["completions_cut"] == pytest.approx(1 / GROUP) for m in two)  # each group's last completion
    assert two[0]["kl"] == 0 and two[-1]["kl"] > 1e-6  # the model left its reference


@pytest.mark.slow
def test_zero2_trains_as_ddp(grpo_run, tmp_path):
    """Two ZeRO-2 processes (DeepSpeed partitions the gradients and optimizer states; generation reads the
    whole weights each rank holds) train as two DDP processes do."""
    objective = f"{FIXED}, loss_type: dapo"
    ddp = grpo_run("ddp", objective, *TWO)
    zero2 = grpo_run("zero2", objective, *TWO, "launch.deepspeed={zero_stage: 2}")
    assert [m["loss"] for m in zero2] == pytest.approx([m["loss"] for m in ddp], abs=1e-6)
    assert [m["reward"] for m in zero2] == [m["reward"] for m in ddp]
    assert max_difference(tmp_path / "ddp", tmp_path / "zero2") < 1e-5


@pytest.mark.slow
def test_iterations_train_several_steps_on_one_generation(grpo_run, tmp_path):
    """iterations: 2: one generation per two optimizer steps; the second trains on the same completions
    against the log-probabilities of the policy that sampled them, so its ratios leave 1."""
    calls = tmp_path / "calls.txt"
    metrics = grpo_run("mu", f"{FIXED}, iterations: 2, epsilon: 0.05", "train.max_steps=4",
                       env={"GRPO_CALLS": str(calls)})
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert len(calls.read_text().splitlines()) == 2  # steps 1 and 3 generate; 2 and 4 reuse
    assert [m["time/generation_s"] > 0 for m in metrics] == [True, False, True, False]
    assert metrics[0]["reward"] == metrics[1]["reward"] and metrics[2]["reward"] == metrics[3]["reward"]
    assert metrics[0]["clip_ratio"] == 0 and metrics[1]["clip_ratio"] > 0  # the weights moved in between
    assert metrics[1]["loss"] != metrics[0]["loss"]


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_same_completions_and_weights(grpo_run, tmp_path):
    """The real generator samples with a seed of the run's seed, the step and the rank: a run stopped after
    step 2 (SIGTERM, a checkpoint) and started again samples what the uninterrupted run sampled."""
    objective = "rewards: [exact_match], beta: 0.04, temperature: 1.0"
    stopping = ("train.max_steps=4", "checkpoint.every=2", "plugins=[grpo_fixed_generator, stop_plugin]")
    whole = grpo_run("whole", objective, *stopping)
    once = {"STOP_ONCE": str(tmp_path / "once")}
    grpo_run("stopped", objective, *stopping, env=once, returncode=128 + 15)
    resumed = grpo_run("stopped", objective, *stopping, env=once)
    for key in ("reward", "completion_length", "kl", "loss"):
        assert [m[key] for m in resumed][-2:] == [m[key] for m in whole][-2:], key  # steps 3 and 4
    assert max_difference(tmp_path / "whole", tmp_path / "stopped") == 0


@pytest.mark.slow
def test_a_run_stopped_between_the_steps_of_one_generation_resumes_on_it(grpo_run, tmp_path):
    """iterations: 2, stopped after step 3: step 4 trains on step 3's completions and old log-probabilities,
    which the checkpoint kept, not on a new generation from the weights step 3 left."""
    objective = "rewards: [exact_match], beta: 0.04, temperature: 1.0, iterations: 2"
    stopping = ("train.max_steps=4", "plugins=[grpo_fixed_generator, stop_plugin]")
    whole = grpo_run("whole", objective, *stopping)
    once = {"STOP_ONCE": str(tmp_path / "once"), "STOP_AT": "3"}
    grpo_run("stopped", objective, *stopping, env=once, returncode=128 + 15)
    assert list((tmp_path / "stopped/checkpoints/step-00000003").glob("rollout_rank*.pt"))
    resumed = grpo_run("stopped", objective, *stopping, env=once)
    assert resumed[-1]["time/generation_s"] == 0  # no generation at step 4
    for key in ("reward", "completion_length", "kl", "loss", "clip_ratio"):
        assert resumed[-1][key] == whole[-1][key], key
    assert max_difference(tmp_path / "whole", tmp_path / "stopped") == 0


@pytest.mark.slow
def test_the_transformers_generator_logs_every_metric(grpo_run):
    rewards = "rewards: [exact_match, {name: regex, pattern: '[a-z]', weight: 0.5}]"
    metrics = grpo_run("sampled", f"{rewards}, beta: 0.04, temperature: 1.0", "train.max_steps=2",
                       "train.per_device_batch_size=2")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert {"loss", "reward", "reward_std", "reward/exact_match", "reward/regex", "accuracy/exact_match",
                "reward/exact_match/std", "reward/regex/std", "completion_length", "completion_length_max",
                "completions_cut", "clip_ratio", "kl", "time/generation_s", "time/learning_s"} <= set(m), sorted(m)
        assert m["completion_length"] <= m["completion_length_max"] <= MAX_NEW  # the longest, not a sum
        assert "accuracy/regex" not in m  # regex is a format reward, not a correctness check
        assert m["reward"] == pytest.approx(m["reward/exact_match"] + 0.5 * m["reward/regex"], abs=1e-6)
        assert m["accuracy/exact_match"] == m["reward/exact_match"]
        assert 1 <= m["completion_length"] <= MAX_NEW and 0 <= m["completions_cut"] <= 1
        assert m["clip_ratio"] == 0  # iterations 1: the policy that sampled is the one trained, ratio 1
        assert m["kl"] >= 0 and m["time/generation_s"] > 0 and m["time/learning_s"] > 0
    assert metrics[0]["kl"] == pytest.approx(0, abs=1e-9)  # the first step: the model is its reference


# -- recipes grpo cannot run: refused by check and train, in one line, before anything is written ---------

RECIPE = f"""\
output_dir: out
{TINY_MODEL}objective: {{name: grpo, rewards: [exact_match], num_generations: 4, max_new_tokens: 8}}
data:
  mixture: [{{source: prompts.jsonl, fraction: 1.0, format: prompt_answer}}]
  max_seq_length: 64
  packing: none
optimizer: adamw
scheduler: constant
launch: {{device: cpu}}
logging: {{loggers: [jsonl]}}
"""
ROWS = '{"prompt": "Last: a b", "answer": "b"}\n' * 8


@pytest.mark.parametrize("overrides, rows, expected", [
    (["objective.num_generations=1"], ROWS, "objective.num_generations: must be at least 2"),
    (["objective.rewards=[exact_mach]"], ROWS, "objective.rewards[0]: unknown reward 'exact_mach'"),
    ([], '{"prompt": "Last: a b"}\n' * 8, "format 'prompt_answer' needs column(s) answer (columns: prompt)"),
    (["data.packing=bfd"], ROWS, "data.packing: objective grpo lays out its own rows"),
    (["launch.deepspeed={zero_stage: 3}"], ROWS, "launch.deepspeed.zero_stage: 3 partitions the weights"),
    (["objective.max_new_tokens=64"], ROWS, "objective.max_new_tokens: 64 leaves no room for a prompt"),
], ids=["one-generation", "unknown-reward", "row-without-answer", "packing", "zero3", "no-room-for-a-prompt"])
@pytest.mark.parametrize("command", ["check", "train"])
def test_a_recipe_grpo_cannot_run_is_one_line(tmp_path, monkeypatch, command, overrides, rows, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipe.yaml").write_text(textwrap.dedent(RECIPE))
    (tmp_path / "prompts.jsonl").write_text(rows)
    result = CliRunner().invoke(app, [command, "recipe.yaml", *overrides])
    assert result.exit_code == 2, (result.exit_code, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stdout + result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["check", "--samples", "1"], ["train"]], ids=["check-samples", "train"])
def test_a_later_row_without_its_answer_is_named_by_file_and_line(tmp_path, monkeypatch, command):
    """`check` reads a source's first row only; preprocessing (`check --samples`, `train`) reads them all."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipe.yaml").write_text(textwrap.dedent(RECIPE))
    (tmp_path / "prompts.jsonl").write_text(ROWS[:len(ROWS) // 2] + '{"prompt": "Last: a c"}\n' + ROWS)
    assert CliRunner().invoke(app, ["check", "recipe.yaml"]).exit_code == 0
    result = CliRunner().invoke(app, [*command, "recipe.yaml", f"data.cache_dir={tmp_path / 'cache'}"])
    assert result.exit_code == 2, (result.exit_code, result.stdout[-2000:], result.stderr[-2000:])
    assert error_lines(result.stderr) == ["prompts.jsonl:5: needs a non-empty string (or number) column 'answer', "
                                          "got null"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_reward_that_raises_stops_the_run_in_one_line_naming_it_and_the_row(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "raising_reward.py").write_text(
        "def boom(completions, answers, prompts):\n    raise ValueError('cannot score')\n")
    write_prompts(tmp_path / "prompts.jsonl")
    mixture = f"[{{source: {tmp_path / 'prompts.jsonl'}, fraction: 1.0, format: prompt_answer}}]"
    done = train_cli("recipes/quickstart.yaml", tmp_path / "out", f"data.mixture={mixture}", "eval=null",
                     "objective={name: grpo, num_generations: 2, max_new_tokens: 4, "
                     "rewards: [{name: python, function: 'raising_reward:boom'}]}",
                     "data.max_seq_length=64", "train.max_steps=1", "logging.loggers=[jsonl]",
                     f"data.cache_dir={tmp_path / 'cache'}", env={"PYTHONPATH": str(site)})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = error_lines(done.stderr)
    assert "reward python: raised ValueError('cannot score') on training row" in line and "'user Last:" in line


@pytest.mark.slow
def test_check_and_plan_show_a_grpo_recipe_as_it_trains(seqtune, tmp_path):
    """check --samples shows a prompt and its reference answer as text; check --gpu plans the generation
    phase; plan skips the data columns (the rows' tokens are not what trains)."""
    write_prompts(tmp_path / "prompts.jsonl")
    grpo = (f"data.mixture=[{{source: {tmp_path / 'prompts.jsonl'}, fraction: 1.0, format: prompt_answer}}]",
            "eval=null", "objective={name: grpo, rewards: [exact_match], num_generations: 4, max_new_tokens: 8}",
            "data.max_seq_length=64", f"data.cache_dir={tmp_path / 'cache'}")
    shown = seqtune("check", "recipes/quickstart.yaml", *grpo, "--samples", "1")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "[prompt: " in shown.stdout and "[reference answer: " in shown.stdout
    size, answer = re.search(r"\[reference answer: (\d+) characters\]\n(.*)\n", shown.stdout).groups()
    answers = [json.loads(line)["answer"] for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert answer in answers and int(size) == len(answer)  # the answer as text, not its bytes decoded as tokens
    planned = seqtune("check", "recipes/quickstart.yaml", *grpo, "--gpu", "3090")
    assert planned.returncode == 0 and "KV cache" in planned.stdout and "4 sequences per row" in planned.stdout
    swept = seqtune("plan", "recipes/quickstart.yaml", *grpo, "--gpu", "3090")
    assert swept.returncode == 0 and "data columns skipped: objective grpo trains the completions" in swept.stdout
