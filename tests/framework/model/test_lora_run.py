"""LoRA through the real CLI: the adapter and the merged model load, and a LoRA run resumes exactly."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

PLUGIN = '''
import os, signal
from framework import hookimpl

@hookimpl
def seqtune_step_end(step):
    if step == int(os.environ.get("KILL_AT", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
'''
COMMON = ["train.max_steps=12", "data.mixture=[{source: recipes/quickstart/data/train.jsonl, count: 200}]",
          "lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj], merge: true}", "optimizer.lr=1e-2",
          "checkpoint.every=5", "logging.loggers=[jsonl]", "plugins=[kill_plugin]"]


@pytest.mark.slow
def test_lora_saves_adapter_and_merged_model_and_resumes_exactly(seqtune, tmp_path, monkeypatch, repo):
    (tmp_path / "kill_plugin.py").write_text(PLUGIN)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    whole = seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'whole'}", *COMMON)
    assert whole.returncode == 0, whole.stderr[-2000:]
    monkeypatch.setenv("KILL_AT", "7")
    assert seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'resumed'}", *COMMON).returncode != 0
    monkeypatch.delenv("KILL_AT")
    resumed = seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'resumed'}", *COMMON)
    assert resumed.returncode == 0 and "at step 5" in resumed.stderr, resumed.stderr[-2000:]
    want = load_file(str(tmp_path / "whole/adapter_model.safetensors"))
    got = load_file(str(tmp_path / "resumed/adapter_model.safetensors"))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "whole/merged")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "whole/merged")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "whole/merged")  # the same architecture
    adapted = PeftModel.from_pretrained(base, tmp_path / "whole")
    assert {n for n, _ in adapted.named_parameters() if "lora_" in n}
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Reverse: c a t"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert merged.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]
