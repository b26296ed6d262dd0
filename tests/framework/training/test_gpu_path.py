"""What the first GPU runs of a review would have hit, rehearsed on the CPU through the real command:
a DPO reference cached on one machine's disk only, a LoRA merge under ZeRO-3, what a save holds on every
rank, and what keys the cached reference."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from framework.config import load_recipe
from framework.training.reference import _key
from seqtune_testing import REPO, SEQTUNE, free_port, max_difference, run_machines

SMALL = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": True}
CPU = ["launch.device=cpu", "logging.loggers=[jsonl]", "eval=null", "scheduler=constant"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> list[str]:
    """A saved starting model (ZeRO-3 initialises a model built from a config differently)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("base")
    tokenizer = AutoTokenizer.from_pretrained(REPO / "recipes/quickstart/tokenizer")
    torch.manual_seed(0)
    config = AutoConfig.for_model(**SMALL, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return [f"model.name_or_path={out}", "model.config=null", f"tokenizer.name_or_path={out}"]


def train(*args: str, timeout: float = 400):
    import subprocess

    result = subprocess.run([str(SEQTUNE), "train", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


DPO = ["recipes/quickstart-dpo.yaml", "data.mixture=[{source: recipes/quickstart/data/preferences.jsonl, count: 64, "
       "format: preference}]", "train.max_steps=3", "train.per_device_batch_size=4", "objective.reference=cached",
       "optimizer={name: sgd, lr: 0.5}", *CPU]


@pytest.mark.slow
def test_a_reference_cached_on_one_machine_only_is_scored_again_by_all(tmp_path, base):
    """Node-local caches: machine 0 holds the reference table from an earlier run, machine 1 does not.
    Every process scores again (had machine 0 read its table, machine 1 would wait in the scoring's
    collectives for ever), machine 1 keeps its own copy, and the run equals the one-machine run."""
    cache0 = tmp_path / "cache0"
    one = train(*DPO, *base, f"output_dir={tmp_path / 'one'}", f"data.cache_dir={cache0}", "launch.num_processes=2")
    assert "reference log-probabilities (train): cached" not in one.stderr
    assert list(cache0.glob("preprocessed/*/reference-train-*.pt"))
    args = [*DPO, *base, f"output_dir={tmp_path / 'two'}", "launch.num_machines=2", "launch.num_processes=2",
            "launch.main_process_ip=127.0.0.1", f"launch.main_process_port={free_port()}"]
    machines = run_machines(args, [cache0, tmp_path / "cache1"], timeout=240)
    assert all(machine.returncode == 0 for machine in machines), [m.stderr[-2000:] for m in machines]
    assert "reference log-probabilities (train): cached" not in machines[0].stderr
    assert list((tmp_path / "cache1").glob("preprocessed/*/reference-train-*.pt"))  # machine 1 has its own now
    assert max_difference(tmp_path / "one", tmp_path / "two") < 1e-6


LORA = ["recipes/quickstart.yaml", "data.mixture=[{source: recipes/quickstart/data/train.jsonl, count: 64}]",
        "train.max_steps=2", "train.per_device_batch_size=4", "train.loss_reduction=token_mean",
        "optimizer={name: sgd, lr: 0.5}", "lora={r: 4, alpha: 8, target_modules: all-linear, merge: true}",
        "launch.num_processes=2", *CPU]


@pytest.mark.slow
def test_a_lora_merge_under_zero3_equals_the_ddp_runs(tmp_path, base):
    """ZeRO-3 leaves the model's own parameters as empty partitions: the adapter and the merged model
    are made from the gathered weights, and equal those of the same run under DDP."""
    train(*LORA, *base, f"output_dir={tmp_path / 'ddp'}")
    train(*LORA, *base, f"output_dir={tmp_path / 'zero3'}", "launch.deepspeed={zero_stage: 3}")
    adapters = [load_file(str(tmp_path / run / "adapter_model.safetensors")) for run in ("ddp", "zero3")]
    assert set(adapters[0]) == set(adapters[1]) and all(v.numel() for v in adapters[1].values())
    assert max((adapters[0][k] - adapters[1][k]).abs().max().item() for k in adapters[0]) < 1e-6
    assert max_difference(tmp_path / "ddp/merged", tmp_path / "zero3/merged") < 1e-6

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "zero3/merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())


COUNT_CLONES = '''
import os
import deepspeed.checkpoint.utils

_clone = deepspeed.checkpoint.utils.clone_tensors_for_torch_save


def counted(item, *args, **kwargs):  # the copy of a whole state dict to host memory accelerate makes under ZeRO-1/2
    with open(os.environ["CLONES"] + "." + os.environ["RANK"], "a") as f:
        f.write("clone\\n")
    return _clone(item, *args, **kwargs)


deepspeed.checkpoint.utils.clone_tensors_for_torch_save = counted
'''


@pytest.mark.slow
def test_zero2_saves_copy_the_model_on_no_rank(tmp_path, base, monkeypatch):
    """Under ZeRO-1/2 every rank holds the whole model: the main process saves it from where it is, and no
    rank copies it to host memory (8 ranks x an 8B model would be ~128 GB of host RAM at each save). The
    checkpoint of the last step holds the final weights."""
    (tmp_path / "count_clones.py").write_text(COUNT_CLONES)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("CLONES", str(tmp_path / "clones"))
    train("recipes/quickstart.yaml", *base, "data.mixture=[{source: recipes/quickstart/data/train.jsonl, count: 64}]",
          "train.max_steps=2", "train.per_device_batch_size=4", "optimizer={name: sgd, lr: 0.5}", *CPU,
          f"output_dir={tmp_path / 'out'}", "launch.num_processes=2", "launch.deepspeed={zero_stage: 2}",
          "checkpoint.every=1", "plugins=[count_clones]")
    assert not list(tmp_path.glob("clones.*"))
    assert max_difference(tmp_path / "out", tmp_path / "out/checkpoints/step-00000002") == 0


def test_the_cached_reference_is_keyed_by_its_kernel_and_device(repo, monkeypatch):
    """A table scored on the CPU, or with sdpa, is not reused by a flash or flex run on a GPU."""
    monkeypatch.chdir(repo)
    recipe = load_recipe("recipes/quickstart-dpo.yaml").recipe

    @dataclasses.dataclass
    class Where:  # what the key reads of the prepared run and of the accelerator
        attention: str = "sdpa"
        device: torch.device = torch.device("cpu")
        num_processes: int = 1

    def key(attention="sdpa", device="cpu", recipe=recipe):
        where = Where(attention, torch.device(device))
        return _key(recipe, where, where, rows=100)

    assert key() == key() != key(attention="flash_attention_2") != key(attention="flex_attention")
    assert key() != key(device="cuda")
    checkpointing = load_recipe("recipes/quickstart-dpo.yaml", ["model.gradient_checkpointing=true"]).recipe
    assert key(recipe=checkpointing) == key()  # the same numbers either way


