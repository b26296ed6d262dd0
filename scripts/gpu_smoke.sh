#!/usr/bin/env bash
# GPU smoke test, by hand on a machine with one CUDA GPU (about 5 minutes):
#     bash scripts/gpu_smoke.sh
# Needs only python with a CUDA build of torch; installs this project with its deepspeed extra, from
# SEQTUNE_WHEELS (a folder made by scripts/wheelhouse.py) with --no-index on a machine without network.
# Trains recipes/gpu_smoke.yaml (a random ~0.48B model, bf16, bfd packing, ZeRO-2) at
# max_seq_length 2048 and 4096 with flash-attention when flash_attn imports, else sdpa, and prints
# one JSON line per run: tokens/s, MFU, peak GPU memory and the memory plan's estimate for the
# same run (`seqtune check --gpu`; target: within 10% of the measured peak).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
# Offline nodes: SEQTUNE_WHEELS names a folder made by scripts/wheelhouse.py; installs with --no-index.
# Nothing is installed when seqtune and deepspeed already import.
if ! "$python" -c "import framework, deepspeed, omegaconf, datasets" 2>/dev/null; then
    if [ -n "${SEQTUNE_WHEELS:-}" ]; then
        "$python" -m pip install -q --no-index --find-links "$SEQTUNE_WHEELS" -e ".[deepspeed]"
    else
        "$python" -m pip install -q -e ".[deepspeed]"
    fi
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=output/gpu_smoke
mkdir -p "$out"
"$python" - "$out/data.jsonl" <<'PY'
import json, random, sys
rng = random.Random(0)
words = "the model learns to answer questions about data tokens and long context windows".split()
with open(sys.argv[1], "w") as f:  # 6,000 chats, log-normal lengths (a long tail, as chat data has)
    for _ in range(6000):
        say = lambda: " ".join(rng.choice(words) for _ in range(max(1, int(rng.lognormvariate(5.0, 1.0)))))
        f.write(json.dumps({"messages": [{"role": "user", "content": say()},
                                         {"role": "assistant", "content": say()}]}) + "\n")
PY
attn=$("$python" -c "import importlib.util as u; print('flash_attention_2' if u.find_spec('flash_attn') else 'sdpa')")
for length in 2048 4096; do
    run="$out/run-$length"
    seqtune train recipes/gpu_smoke.yaml "output_dir=$run" "data.max_seq_length=$length" \
        "model.attn_implementation=$attn" >"$run.log" 2>&1 || { tail -20 "$run.log"; exit 1; }
    "$python" - "$run/metrics.jsonl" "$length" "$attn" <<'PY'
import json, sys
from framework.config import load_recipe
from framework.estimation.for_recipe import estimate_for_recipe
from framework.model.loading import recipe_shape
from framework.registry import build_registry
loaded = load_recipe("recipes/gpu_smoke.yaml", [f"data.max_seq_length={sys.argv[2]}",
                                                  f"model.attn_implementation={sys.argv[3]}"])
planned = estimate_for_recipe(loaded, recipe_shape(loaded.recipe, build_registry())).total_gib
records = [json.loads(line) for line in open(sys.argv[1])]
logs = [r for r in records if "loss" in r][1:] or [r for r in records if "loss" in r]  # skip warm-up
mean = lambda key: sum(r.get(key) or 0 for r in logs) / len(logs)
print(json.dumps({"max_seq_length": int(sys.argv[2]), "attention": sys.argv[3],
                  "tokens_per_s": round(mean("tokens_per_s")), "mfu": round(mean("mfu"), 4),
                  "peak_memory_gib": round(max(r["peak_memory_gib"] for r in logs), 2),
                  "planned_gib": round(planned, 2),
                  "final_loss": round(logs[-1]["loss"], 4)}))
PY
done
