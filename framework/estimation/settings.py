"""The settings that decide a run's memory, as one frozen object the memory model reads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from framework.config.schema import DeepSpeedConfig, LaunchConfig, ModelConfig, choices
from framework.estimation.adapters import LoraSpec
from framework.estimation.quantization import QuantSpec
from framework.estimation.shapes import ModelShape

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}  # per element of each model.dtype
DEFAULT_OVERHEAD_GIB = 1.5  # CUDA context, cuBLAS/NCCL workspaces
DEFAULT_OVERHEAD_FRACTION = 0.05  # caching-allocator fragmentation, on top of everything else


@dataclass(frozen=True)
class MemorySettings:
    """Everything about a run that decides its memory, as the recipe states it.

    `precision` is accelerate's mixed_precision; `weights_dtype` the dtype the weights are loaded in;
    `zero_stage` None means no DeepSpeed (DDP, or a single process). `lora` (or just its parameter
    count, `lora_trainable_params`) makes it a LoRA run: only the adapters train; `quantization` loads
    the base's linear layers in 4 bits (QLoRA, with LoRA only). `optimizer_states` is the number of
    full-size state tensors per trainable parameter (AdamW 2, SGD with momentum 1). Overhead is
    `overhead_gib` plus `overhead_fraction` of the rest. `sequence_parallel` processes share each row,
    each holding `tokens_per_row` of its tokens. `max_new_tokens` > 0 plans a generation phase between
    steps (an objective that samples its own completions: generation.py): micro_batch rows, each
    `num_generations` of one prompt, of max_seq_length tokens at most, max_new_tokens of them generated,
    `generation_batch` of them at a time (None: all).
    """

    micro_batch: int
    max_seq_length: int
    num_gpus: int = 1
    precision: str = "no"
    weights_dtype: str = "float32"
    zero_stage: Optional[int] = None
    offload_optimizer: bool = False
    offload_params: bool = False
    gradient_checkpointing: bool = False
    activation_offloading: bool = False
    loss_chunk_tokens: Optional[int] = None
    loss_holds_head_gradient: bool = False
    attn_implementation: str = "sdpa"
    sequence_parallel: int = 1
    lora: Optional[LoraSpec] = None
    lora_trainable_params: Optional[int] = None
    quantization: Optional[QuantSpec] = None  # a 4-bit base (QLoRA): needs lora
    optimizer_states: int = 2
    reference_copy: bool = False  # a frozen copy of the model beside it (a live reference without LoRA)
    num_generations: int = 1  # completions sampled per prompt (already counted in micro_batch's rows)
    max_new_tokens: int = 0  # tokens generated per completion; 0: no generation phase
    generation_batch: Optional[int] = None  # sequences sampled at once (the generator's batch_size); None: all rows
    overhead_gib: float = DEFAULT_OVERHEAD_GIB
    overhead_fraction: float = DEFAULT_OVERHEAD_FRACTION

    def __post_init__(self) -> None:
        allowed = {"precision": choices(LaunchConfig, "mixed_precision"), "weights_dtype": choices(ModelConfig, "dtype"),
                   "attn_implementation": choices(ModelConfig, "attn_implementation"),
                   "zero_stage": (None, *choices(DeepSpeedConfig, "zero_stage"))}
        for name, values in allowed.items():
            if getattr(self, name) not in values:
                raise ValueError(f"{name} must be one of {values}, got {getattr(self, name)!r}")
        for name in ("micro_batch", "max_seq_length", "num_gpus", "sequence_parallel", "num_generations"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        batch = self.generation_batch
        if batch is not None and (not isinstance(batch, int) or batch < 1):
            raise ValueError(f"generation_batch must be a positive integer or None, got {self.generation_batch!r}")
        if self.quantization is not None and self.lora is None and self.lora_trainable_params is None:
            raise ValueError("quantization needs lora: a 4-bit base is frozen and trains through adapters")
        if min(self.optimizer_states, self.overhead_gib, self.overhead_fraction, self.max_new_tokens) < 0:
            raise ValueError("optimizer_states, overhead_gib, overhead_fraction and max_new_tokens must not be "
                             "negative")

    @property
    def half(self) -> bool:
        """Mixed precision: matmuls (and under DeepSpeed the whole model) in 16 bits."""
        return self.precision in ("bf16", "fp16")

    @property
    def weight_bytes(self) -> int:
        return DTYPE_BYTES[self.weights_dtype]

    @property
    def act_bytes(self) -> int:
        """The dtype matmuls compute in: 16-bit under mixed precision, else the weights' own."""
        return 2 if self.half else self.weight_bytes

    @property
    def tokens_per_row(self) -> int:
        """The tokens of each row one process holds: rows pad to a multiple of sequence_parallel."""
        return -(-self.max_seq_length // self.sequence_parallel)

    @property
    def padded_length(self) -> int:
        """A whole row as the attention kernel sees it under sequence parallelism (padding included)."""
        return self.tokens_per_row * self.sequence_parallel

    def trainable_lora(self, shape: ModelShape) -> Optional[int]:
        """The LoRA parameter count (None for full fine-tuning)."""
        if self.lora_trainable_params is None and self.lora is not None:
            return self.lora.trainable_parameters(shape)
        return self.lora_trainable_params
