"""A decoder model's shape, for planning: from the recipe's model.config, a local folder, the local
Hugging Face cache, or a bundled copy of a known model's config.json (offline, no download).

Pure Python and cheap to import (no torch, no transformers).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from framework.config.paths import looks_local
from framework.errors import UserError

BUNDLED_CONFIGS = Path(__file__).parent / "model_configs"  # <org>__<name>.json, offline shapes

# Defaults for a config.json without tie_word_embeddings: the transformers config classes' own
# defaults. A model type not listed is taken as untied, which counts more parameters (the safe side).
TIED_BY_DEFAULT = {"gemma": True, "gemma2": True, "gemma3": True, "gemma3_text": True, "gpt2": True,
                   "llama": False, "mistral": False, "mixtral": False, "qwen2": False, "qwen3": False,
                   "olmo": False, "olmo2": False, "olmo3": False, "phi3": False}
# Where a decoder layer puts its RMSNorms: "pre" (Llama, Qwen2): before attention and before the MLP;
# "sandwich" (Gemma 2/3): before and after each; "post" (OLMo 2): after each, plus q/k norms.
NORM_LAYOUT = {"gemma2": "sandwich", "gemma3": "sandwich", "gemma3_text": "sandwich",
               "olmo2": "post", "olmo3": "post"}
# Models whose layers alternate sliding-window and full attention: two masks where a kernel takes a
# dense one (one per window), as transformers and the sequence-parallel wrapper build them.
ALTERNATING_WINDOWS = {"gemma2", "gemma3", "gemma3_text"}
# Models whose positions are a learned embedding table: nothing exists past its last row. Rotary
# (Llama, Qwen2, Gemma...) models run past max_position_embeddings, on positions never trained.
LEARNED_POSITIONS = {"gpt2", "gpt_bigcode", "gpt_neo", "opt", "biogpt"}
POSITION_KEYS = ("max_position_embeddings", "n_positions")  # n_positions: GPT-2's name


# --- the model's shape ------------------------------------------------------------------------------

@dataclass
class ModelShape:
    """The sizes of a Llama-style decoder that decide its memory. `num_parameters` 0 means: count them."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    num_parameters: int = 0
    model_type: str = "llama"
    qkv_bias: bool = False  # Qwen2; attention_bias=true elsewhere
    o_bias: bool = False  # attention_bias=true (not Qwen2)
    mlp_bias: bool = False
    logit_softcapping: bool = False  # Gemma 2: tanh soft-capping of the final logits
    attn_softcapping: bool = False  # Gemma 2: tanh soft-capping of the attention scores
    max_positions: Optional[int] = None  # max_position_embeddings, when the config gives it
    source: str = field(default="", compare=False)  # where the shape was read from, for display

    def __post_init__(self) -> None:
        if not self.num_parameters:
            self.num_parameters = self.count_parameters()

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, vocab_size: Optional[int] = None,
                    source: str = "model.config") -> "ModelShape":
        """A shape from Hugging Face config.json keys. `vocab_size` is used when the config has none
        (a recipe's model.config takes it from the tokenizer). Problems name `source`."""
        cfg = dict(config)
        if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), Mapping):
            cfg = {**cfg, **cfg["text_config"]}  # multimodal wrappers keep the decoder in text_config
        if cfg.get("vocab_size") is None and vocab_size is not None:
            cfg["vocab_size"] = vocab_size
        required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        missing = [key for key in required if cfg.get(key) is None]
        if missing:
            hint = (" (a recipe's model.config takes vocab_size from the tokenizer: pass the tokenizer's "
                    "length, or set model.config.vocab_size)" if missing == ["vocab_size"] else "")
            raise UserError(f"{source}: no {', '.join(missing)}; the memory plan needs it{hint}")
        sizes = {}
        for key in (*required, "num_key_value_heads", "head_dim"):
            value = cfg.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{source}: {key} must be a positive integer, got {value!r}")
            sizes[key] = value
        model_type = str(cfg.get("model_type") or "")
        heads = sizes["num_attention_heads"]
        tied = cfg.get("tie_word_embeddings")
        attention_bias = bool(cfg.get("attention_bias"))
        return cls(
            hidden_size=sizes["hidden_size"], intermediate_size=sizes["intermediate_size"],
            num_layers=sizes["num_hidden_layers"], num_heads=heads,
            num_kv_heads=sizes.get("num_key_value_heads", heads),
            head_dim=sizes.get("head_dim", sizes["hidden_size"] // heads),
            vocab_size=sizes["vocab_size"],
            tie_word_embeddings=bool(TIED_BY_DEFAULT.get(model_type, False) if tied is None else tied),
            model_type=model_type or "llama",
            qkv_bias=attention_bias or model_type == "qwen2",
            o_bias=attention_bias and model_type != "qwen2",
            mlp_bias=bool(cfg.get("mlp_bias")),
            logit_softcapping=bool(cfg.get("final_logit_softcapping")),
            attn_softcapping=bool(cfg.get("attn_logit_softcapping")),
            max_positions=position_limit(cfg)[0],
            source=source)

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def norm_layout(self) -> str:
        return NORM_LAYOUT.get(self.model_type, "pre")

    @property
    def attention_masks(self) -> int:
        """How many different masks its layers attend with (one per attention window)."""
        return 2 if self.model_type in ALTERNATING_WINDOWS else 1

    @property
    def norm_in_fp32(self) -> bool:
        """Whether its RMSNorms multiply by the weight in fp32 (Gemma, OLMo 2) rather than after
        casting back to the input's dtype (Llama, Qwen2)."""
        return self.model_type.startswith("gemma") or self.norm_layout == "post"

    def projections(self) -> dict[str, tuple[int, int]]:
        """Each linear layer of a decoder layer: (in_features, out_features)."""
        h, inter = self.hidden_size, self.intermediate_size
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, inter), "up_proj": (h, inter),
                "down_proj": (inter, h)}

    def layer_matmul_parameters(self) -> int:
        return sum(i * o for i, o in self.projections().values())

    def layer_parameters(self) -> int:
        """One decoder layer: attention q/k/v/o and the gated MLP (gate, up, down), their biases if
        any, and the RMSNorm weights of its norm layout."""
        h, q, kv = self.hidden_size, self.q_dim, self.kv_dim
        biases = ((q + 2 * kv) * self.qkv_bias + h * self.o_bias
                  + (2 * self.intermediate_size + h) * self.mlp_bias)
        norms = {"pre": 2 * h, "sandwich": 4 * h, "post": 2 * h + q + kv}[self.norm_layout]
        return self.layer_matmul_parameters() + biases + norms

    def count_parameters(self) -> int:
        """Embeddings + layers + final norm + the lm_head when it is not tied to the embeddings."""
        embedding = self.vocab_size * self.hidden_size
        lm_head = 0 if self.tie_word_embeddings else embedding
        return embedding + self.num_layers * self.layer_parameters() + self.hidden_size + lm_head


def position_limit(config: Mapping[str, Any]) -> tuple[Optional[int], bool]:
    """(the model's number of positions or None when its config does not say, whether they are a
    learned table the model cannot run past)."""
    limit = next((config[key] for key in POSITION_KEYS if isinstance(config.get(key), int)), None)
    return limit, str(config.get("model_type") or "") in LEARNED_POSITIONS


def length_problem(config: Mapping[str, Any], max_seq_length: int, source: str) -> tuple[bool, str] | None:
    """(whether it is an error, the message) when max_seq_length is beyond the model's positions."""
    limit, learned = position_limit(config)
    if limit is None or max_seq_length <= limit:
        return None
    if learned:
        return True, (f"data.max_seq_length: {max_seq_length:,} is beyond the model's {limit:,} learned position "
                      f"embeddings ({source}), which it cannot run past; set data.max_seq_length={limit} or less")
    return False, (f"data.max_seq_length: {max_seq_length:,} is beyond the model's max_position_embeddings "
                   f"{limit:,} ({source}): positions past it were never trained, so quality may suffer; lower "
                   "data.max_seq_length, or extend the model's context (rope_scaling)")


def model_config(recipe_model: Any, cache_dir: Optional[str | Path] = None) -> tuple[dict, str]:
    """(config.json of the recipe's model, where it came from), without downloading anything: see
    `load_shape`. A model built from model.config gives that mapping."""
    if getattr(recipe_model, "config", None) is not None:
        return dict(recipe_model.config), "model.config"
    name = getattr(recipe_model, "name_or_path", None)
    if not name:
        raise UserError("model: set model.name_or_path or model.config; the memory plan needs the model's shape")
    return _find_config(str(name), getattr(recipe_model, "revision", None) or "main", cache_dir)


def load_shape(recipe_model: Any, *, vocab_size: Optional[int] = None,
               cache_dir: Optional[str | Path] = None) -> ModelShape:
    """The shape of the recipe's model, without downloading anything.

    In order: `model.config` (vocab_size from it, else the `vocab_size` passed, the tokenizer's
    length); `model.name_or_path` as a local directory with a config.json; the config.json of that
    hub id in the local Hugging Face cache (`cache_dir`, default the usual one); the bundled copy in
    framework/estimation/model_configs/ for a few common models.
    """
    config, source = model_config(recipe_model, cache_dir)
    return ModelShape.from_config(config, vocab_size=vocab_size, source=source)


def bundled_models() -> list[str]:
    """Hub ids whose config ships with seqtune."""
    return sorted(path.stem.replace("__", "/", 1) for path in BUNDLED_CONFIGS.glob("*__*.json"))


def _find_config(name: str, revision: str, cache_dir: Optional[str | Path]) -> tuple[dict, str]:
    local = Path(name).expanduser()
    if local.is_dir():
        path = local / "config.json"
        if not path.is_file():
            raise UserError(f"model.name_or_path: the directory {name} has no config.json")
        return _read_json(path), str(path)
    if looks_local(name):
        raise UserError(f"model.name_or_path: no such directory: {name}; the memory plan needs the model's shape: "
                        "run it where that folder is, or name the model's hub id (model.name_or_path=org/name as "
                        f"an override; shapes bundled for: {', '.join(bundled_models())})")
    cached = _from_hf_cache(name, revision, cache_dir)
    if cached is not None:
        return _read_json(Path(cached)), f"{name} (Hugging Face cache)"
    for path in BUNDLED_CONFIGS.glob("*__*.json"):
        if path.stem.replace("__", "/", 1).lower() == name.lower():
            return _read_json(path), f"{name} (bundled {path.parent.name}/{path.name})"
    raise UserError(f"model.name_or_path: the shape of '{name}' is not known here: it is not a local "
                    "directory, its config.json is not in the Hugging Face cache, and no config is bundled "
                    f"for it (bundled: {', '.join(bundled_models())}); fetch it once with "
                    f"`huggingface-cli download {name} config.json`, or describe the model under model.config")


def _from_hf_cache(name: str, revision: str, cache_dir: Optional[str | Path]) -> Optional[str]:
    """The cached config.json of a hub id, or None; reads the cache only, never the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None
    try:
        found = try_to_load_from_cache(name, "config.json", cache_dir=cache_dir, revision=revision)
    except ValueError:  # not a valid repo id
        return None
    return found if isinstance(found, str) else None  # None: not cached; a sentinel: cached as missing


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"model: cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"model: {path} is not a JSON object")
    return data

