"""LoRA adapters as the memory model sees them: their trainable parameters and the activations their
branches keep, from the recipe's `lora:` section and the model's shape."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from framework.estimation.shapes import ModelShape

# peft's "all-linear" adapts every linear layer of the decoder but the output layer (lm_head).
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSpec:
    """The recipe's lora section as the planner needs it: rank, adapted layer names, dropout."""

    r: int
    target_modules: tuple[str, ...]
    dropout: float = 0.0

    @classmethod
    def from_recipe(cls, lora: Any) -> "LoraSpec":
        targets = lora.target_modules
        names = ALL_LINEAR if isinstance(targets, str) else tuple(str(t).rsplit(".", 1)[-1] for t in targets)
        return cls(r=int(lora.r), target_modules=names, dropout=float(lora.dropout))

    def _modules(self, shape: ModelShape) -> tuple[dict[str, tuple[int, int]], list[str]]:
        """(in, out) of each adapted layer the planner knows (per decoder layer, or lm_head once), and
        the names it does not know."""
        known = {**shape.projections(), "lm_head": (shape.hidden_size, shape.vocab_size)}
        unknown = [name for name in self.target_modules if name not in known]
        return {name: known[name] for name in dict.fromkeys(self.target_modules) if name in known}, unknown

    def unknown_modules(self, shape: ModelShape) -> list[str]:
        return self._modules(shape)[1]

    def trainable_parameters(self, shape: ModelShape) -> int:
        """r x (in + out) per adapted linear layer: lora_A is r x in, lora_B is out x r."""
        modules, _ = self._modules(shape)
        per_layer = sum(self.r * (i + o) for name, (i, o) in modules.items() if name != "lm_head")
        head = self.r * sum(modules["lm_head"]) if "lm_head" in modules else 0
        return shape.num_layers * per_layer + head

    def activation_bytes(self, shape: ModelShape, act_bytes: int) -> tuple[int, int]:
        """Bytes per token an adapter branch keeps for backward: (per decoder layer, lm_head).

        Each adapted layer keeps its lora_A output (r values, the input of lora_B) and, with dropout,
        its own dropped-out copy of the input (in values) plus the dropout mask (1 byte each).
        """
        modules, _ = self._modules(shape)

        def branch(in_features: int) -> int:
            return self.r * act_bytes + ((act_bytes + 1) * in_features if self.dropout > 0 else 0)

        per_layer = sum(branch(i) for name, (i, _) in modules.items() if name != "lm_head")
        head = branch(modules["lm_head"][0]) if "lm_head" in modules else 0
        return per_layer, head
