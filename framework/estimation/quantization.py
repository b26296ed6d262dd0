"""A 4-bit base model (QLoRA, the recipe's `model.quantization`) as the memory model sees it.

transformers' bitsandbytes integration (BitsAndBytesConfig(load_in_4bit=True)) replaces every linear
layer of the decoder by a `Linear4bit` and leaves the rest in model.dtype, as the engine loads it
(framework/model/quantization.py: no peft prepare_model_for_kbit_training, which would cast them to
fp32): the embeddings, the output layer (transformers never quantizes it), the norms and the biases.
Each 4-bit weight of n elements is stored, as bitsandbytes 0.4x-0.50 lays it out (checked against a
quantized model in the tests):

- the codes: two 4-bit values a byte, ceil(n / 2) bytes;
- one absmax per block of 64 weights: an fp32 (4 B) without double quantization, an 8-bit code with it,
  whose own constants are one fp32 per 256 blocks; so 0.5 bits a parameter, or 0.127 with double quant;
- per tensor, the 16-entry fp32 NF4/FP4 table (64 B), and with double quant the 256-entry fp32 table of
  the 8-bit absmax codes and their fp32 offset (1,028 B).

The base is frozen: no gradients, no optimizer states. Its matmuls dequantize each weight to the compute
dtype for the forward and again for the backward (the input's gradient); the copy lives for one matmul,
so one layer's largest weight is the most that is held at a time (`working_copy`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from framework.estimation.shapes import ModelShape

BLOCKSIZE = 64  # weights per absmax: bitsandbytes' default, which transformers does not change
NESTED_BLOCKSIZE = 256  # 8-bit absmax per fp32 constant under double quantization
CODE_TABLE_BYTES = 16 * 4  # the NF4 (or FP4) values, fp32, one table per tensor
NESTED_TABLE_BYTES = 256 * 4 + 4  # the 8-bit dynamic map, fp32, and the absmax offset, per tensor
COMPUTE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class QuantSpec:
    """The recipe's model.quantization as the planner needs it."""

    method: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.method not in ("nf4", "fp4") or self.compute_dtype not in COMPUTE_BYTES:
            raise ValueError(f"quantization: method must be nf4 or fp4 and compute_dtype one of "
                             f"{tuple(COMPUTE_BYTES)}, got {self.method!r}, {self.compute_dtype!r}")

    @classmethod
    def from_recipe(cls, quantization: Any) -> "QuantSpec":
        return cls(str(quantization.method), bool(quantization.double_quant), str(quantization.compute_dtype))

    @property
    def compute_bytes(self) -> int:
        return COMPUTE_BYTES[self.compute_dtype]

    def tensor_bytes(self, n: int) -> tuple[int, int]:
        """(the 4-bit codes, the quantization constants) of one quantized weight of n elements."""
        blocks = -(-n // BLOCKSIZE)
        if not self.double_quant:
            return -(-n // 2), blocks * 4 + CODE_TABLE_BYTES
        nested = -(-blocks // NESTED_BLOCKSIZE)
        return -(-n // 2), blocks + nested * 4 + CODE_TABLE_BYTES + NESTED_TABLE_BYTES

    def working_copy(self, shape: ModelShape) -> int:
        """Bytes of the largest weight dequantized for its matmul: the weight in the compute dtype and,
        with double quant, its absmax restored to fp32 (plus the offset added: a second fp32 copy)."""
        n = max(i * o for i, o in shape.projections().values())
        absmax = 2 * 4 * -(-n // BLOCKSIZE) if self.double_quant else 0
        return n * self.compute_bytes + absmax


def base_parts(shape: ModelShape, spec: QuantSpec, weight_bytes: int) -> dict[str, int]:
    """Bytes of a 4-bit base model by part: `codes` and `constants` of the quantized linear layers, and
    `unquantized` (embeddings, the output layer unless tied, norms, biases) at `weight_bytes` each."""
    per_layer = [spec.tensor_bytes(i * o) for i, o in shape.projections().values()]
    return {"codes": shape.num_layers * sum(codes for codes, _ in per_layer),
            "constants": shape.num_layers * sum(constants for _, constants in per_layer),
            "unquantized": (shape.num_parameters - quantized_parameters(shape)) * weight_bytes}


def quantized_parameters(shape: ModelShape) -> int:
    """The parameters of the decoder's linear layers: those bitsandbytes stores in 4 bits."""
    return shape.num_layers * shape.layer_matmul_parameters()


def base_bytes(shape: ModelShape, spec: QuantSpec, weight_bytes: int, dtype: str) -> tuple[int, str]:
    """The 4-bit base model's bytes, and how they are made up, for the estimate's details (`dtype`
    names what `weight_bytes` are)."""
    parts, linear = base_parts(shape, spec, weight_bytes), quantized_parameters(shape)
    quant = f"{spec.method}{', double quant' if spec.double_quant else ''}"
    text = (f"{linear:,} linear params × 4 bits + {parts['constants'] / 2**20:,.0f} MiB constants ({quant}) + "
            f"{shape.num_parameters - linear:,} unquantized × {weight_bytes} B ({dtype})")
    return sum(parts.values()), text
