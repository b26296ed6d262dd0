"""Two real processes (gloo on the CPU): only the main one tokenizes; the other reads its cache."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

WORKER = textwrap.dedent('''
    import json, os, sys
    from accelerate import Accelerator
    from framework.registry import bind_parts
    from framework.config import load_recipe
    from framework.data.pipeline import prepare_data
    from framework.model.tokenizer import load_tokenizer

    recipe_path, out_dir = sys.argv[1], sys.argv[2]
    accelerator = Accelerator(cpu=True)
    loaded = load_recipe(recipe_path)
    parts = bind_parts(loaded)
    tokenizer = load_tokenizer(loaded.recipe, parts.registry.entries["chat_templates"])
    data = prepare_data(loaded.recipe, parts.loaders, parts.formats, parts.truncation, tokenizer,
                        accelerator.local_main_process_first())
    result = {"rank": accelerator.process_index, "world": accelerator.num_processes,
              "from_cache": data.from_cache, "rows": len(data.dataset), "lengths": data.lengths[:50]}
    with open(os.path.join(out_dir, f"rank{accelerator.process_index}.json"), "w") as f:
        json.dump(result, f)
''')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_only_the_main_process_tokenizes_and_the_other_reads_the_cache(repo, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'out'}\nmodel: {{config: {{model_type: llama}}}}\n"
                      f"tokenizer: {{name_or_path: {repo / 'recipes/quickstart/tokenizer'}}}\n"
                      f"data:\n  cache_dir: {tmp_path / 'cache'}\n  max_seq_length: 48\n  mixture:\n"
                      f"    - {{source: {repo / 'recipes/quickstart/data/train.jsonl'}, count: 300}}\n")
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(free_port()), str(worker), str(recipe), str(tmp_path)],
                            cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["from_cache"] is False and ranks[1]["from_cache"] is True
    assert ranks[0]["rows"] == ranks[1]["rows"] == 300
    assert ranks[0]["lengths"] == ranks[1]["lengths"]
