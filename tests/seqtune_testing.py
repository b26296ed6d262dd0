"""Helpers shared by test modules (importable because tests/conftest.py appends tests/ to sys.path)."""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from framework.data.chat import encode_chats
from framework.types import IGNORE_INDEX, Sample

REPO = Path(__file__).resolve().parent.parent
# A recipe's model and tokenizer for tests of recipe checks: a one-layer Llama from a config, the
# quickstart tokenizer (recipe text, to write into a recipe file)
TINY_MODEL = f"""\
model:
  config: {{model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
           num_attention_heads: 2, num_key_value_heads: 1}}
tokenizer: {{name_or_path: {REPO / 'recipes/quickstart/tokenizer'}}}
"""
SEQTUNE = Path(sys.executable).with_name("seqtune")  # the installed console script
# Slow-to-build test inputs (the Qwen2.5 tokenizer, the SmolLM2 model folder) are kept here across runs.
TEST_CACHE = Path(os.environ.get("SEQTUNE_TEST_CACHE", Path.home() / ".cache" / "seqtune-tests"))

# Short chats of varied shape (a system prompt, several exchanges), for tests that compute on every token.
CONVERSATIONS = [
    [{"role": "user", "content": "Reverse: c a t"}, {"role": "assistant", "content": "t a c"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Uppercase: sun"},
     {"role": "assistant", "content": "SUN"}, {"role": "user", "content": "What is 4 + 5?"},
     {"role": "assistant", "content": "4 + 5 = 9"}],
    [{"role": "user", "content": "Sort: 7 2 9 1"}, {"role": "assistant", "content": "1 2 7 9"}],
    [{"role": "user", "content": "Repeat sun 3 times."}, {"role": "assistant", "content": "sun sun sun"}],
    [{"role": "user", "content": "What letter comes after k?"}, {"role": "assistant", "content": "l"}],
]


def encode_chat(tokenizer: Any, messages: list[dict], train_on: str = "assistant") -> Sample:
    """One conversation: token ids of its rendering, labels -100 outside the trained turns."""
    return encode_chats(tokenizer, [messages], train_on)[0]


def trained_runs(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each contiguous run of trained labels."""
    found, start = [], None
    for t, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = t
        elif label == IGNORE_INDEX and start is not None:
            found.append((start, t))
            start = None
    return found


def mixture_rows(data: Any) -> Any:
    """The prepared data's mixture as a small in-memory Dataset of formatted rows in mixture order:
    messages, text, source (data.mixture index) and row (1-based in its source)."""
    import datasets

    reader = data.reader()
    out: dict[str, list] = {"messages": [], "text": [], "source": [], "row": []}
    for rows, _, source, index in reader.batches(0, len(reader.plan)):
        out["messages"] += [messages for messages, _, _ in rows]
        out["text"] += [text for _, text, _ in rows]
        out["source"] += [int(s) for s in source]
        out["row"] += [int(i) + 1 for i in index]
    return datasets.Dataset.from_dict(out)


def formatted_source(loaded: Any, index: int, entry: Any, to_messages: Any) -> Any:
    """A loader's rows through make_source, every row formatted (so every format error shows)."""
    from framework.data.sources import make_source

    source = make_source(loaded, index, entry, to_messages)
    source.formatted(range(len(source)))
    return source


def error_lines(stderr: str) -> list[str]:
    """The problems a refused command printed: `error: <it>` for one, bullets under `error: N problems:`."""
    shown = [line.strip() for line in stderr.splitlines() if line.strip()]
    return [line[2:] for line in shown if line.startswith("•")] or \
        [line.removeprefix("error: ") for line in shown if line.startswith("error: ")]


def load_script(name: str) -> Any:
    """A module of scripts/ or bench/ (`"scripts/ask"`), loaded by path: those folders are not packages."""
    module_name = "seqtune_" + name.replace("/", "_")
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, REPO / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


# -- runs through the real command: several machines on this host, their saved models ------------------

def max_difference(want_dir: Path, got_dir: Path) -> float:
    """The largest weight difference between two saved models (ZeRO's gathered state may also spell
    out the tied lm_head, so the second may hold more keys)."""
    from safetensors.torch import load_file

    want, got = load_file(str(want_dir / "model.safetensors")), load_file(str(got_dir / "model.safetensors"))
    assert set(want) <= set(got)
    return max((want[k] - got[k]).abs().max().item() for k in want)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_machines(args: Sequence[str], cache_dirs: Sequence[Path], envs: Sequence[Mapping[str, str]] = (),
                 machine_rank: bool = True, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Machines on this host: `seqtune train *args` once per machine, all started together, each with its
    own data.cache_dir (a node-local disk), its own extra environment (`envs`), and
    launch.machine_rank=r unless `machine_rank` is False (SLURM's variables give it). The last machine
    starts first, so that the main process still being machine 0's shows ranks follow machine_rank.
    Their output goes to machine<r>.out/.err next to the cache dirs."""
    procs, logs = [], cache_dirs[0].parent
    for rank in reversed(range(len(cache_dirs))):
        rank_args = [f"launch.machine_rank={rank}"] if machine_rank else []
        with open(logs / f"machine{rank}.out", "w") as out, open(logs / f"machine{rank}.err", "w") as err:
            # Its own session, so that a machine left waiting can be stopped with its workers.
            procs.insert(0, subprocess.Popen(
                [str(SEQTUNE), "train", *args, f"data.cache_dir={cache_dirs[rank]}", *rank_args], cwd=REPO,
                env={**os.environ, **(envs[rank] if envs else {})}, stdout=out, stderr=err, start_new_session=True))
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if any(p.returncode for p in procs):  # the others would wait for the failed machine until timeout
            deadline = min(deadline, time.monotonic() + 20)
        time.sleep(0.5)
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return [subprocess.CompletedProcess(p.args, p.wait(), (logs / f"machine{r}.out").read_text(),
                                        (logs / f"machine{r}.err").read_text()) for r, p in enumerate(procs)]


# A plugin (write it to a module on PYTHONPATH, list it in `plugins:`) that stops a run once, with SIGTERM
# after step 2, when STOP_ONCE names a file that is not there yet (it creates it): the run then resumes.
STOP_PLUGIN = '''import os, signal
from framework import hookimpl

@hookimpl
def seqtune_step_end(step):
    once = os.environ.get("STOP_ONCE")
    if step == int(os.environ.get("STOP_AT", 2)) and once and not os.path.exists(once):
        open(once, "w").close()
        os.kill(os.getpid(), signal.SIGTERM)
'''


def stoppable_run(folder: Path) -> tuple[list[str], dict[str, str]]:
    """(overrides, environment) of a run with STOP_PLUGIN (written to `folder`) and a checkpoint every 2 steps."""
    (folder / "stop_plugin.py").write_text(STOP_PLUGIN)
    return ["plugins=[stop_plugin]", "checkpoint.every=2"], {"PYTHONPATH": str(folder)}


def train_cli(recipe: str, out: Path, *overrides: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """`seqtune train recipe output_dir=out *overrides` run from the repository, with extra environment."""
    return subprocess.run([str(SEQTUNE), "train", recipe, f"output_dir={out}", *overrides], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def trained_cli(recipe: str, out: Path, *overrides: str, env: Mapping[str, str] | None = None) -> Path:
    """The same, which must succeed; its output_dir."""
    result = train_cli(recipe, out, *overrides, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def tuned_quickstart(sft: Path, recipe: str, tmp_path: Path, *overrides: str) -> Path:
    """`recipe` (DPO, GRPO) trained from the quickstart SFT model `sft`; its output_dir."""
    return trained_cli(recipe, tmp_path / "tuned", f"model.name_or_path={sft}", f"tokenizer.name_or_path={sft}",
                       "logging.loggers=[jsonl]", *overrides)


def logged(out: Path) -> list[dict]:
    """The logged windows and evaluations of a run (metrics.jsonl; its last line is the summary)."""
    import json

    return [r for line in (out / "metrics.jsonl").read_text().splitlines() if "step" in (r := json.loads(line))]
