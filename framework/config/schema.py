"""The recipe schema: the single source of truth for keys, types, defaults and help text.

Each field's `help` metadata feeds `seqtune check`, the generated docs/recipe-reference.md and the
JSON Schema. Fields typed `Component` take a plugin name (`adamw`) or a mapping with `name` plus
that plugin's own options (`{name: adamw, lr: 1e-5}`); the options are checked against the
plugin's factory once plugins are loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union


def opt(default: Any = None, help: str = "", *, minimum: float | None = None, factory=None) -> Any:
    """A dataclass field carrying help text and an optional lower bound."""
    meta = {"help": help, "minimum": minimum}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


REQUIRED: Any = object()  # sentinel default: the key must be set by the recipe


def choices(cls: type, name: str) -> tuple:
    """The values a Literal-typed key allows, so other modules check against the schema itself."""
    import typing

    return typing.get_args(typing.get_type_hints(cls)[name])


@dataclass
class Component:
    """A plugin selection: its registered name and the options passed to its factory."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class QuantizationConfig:
    method: Literal["nf4", "fp4"] = opt("nf4", "4-bit data type of the base's linear weights: NF4 (QLoRA's) or FP4.")
    double_quant: bool = opt(True, "Quantize the quantization constants too (QLoRA's double quantization).")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = opt(
        "bfloat16", "dtype each 4-bit weight is dequantized to for its matmul, and of a merged model.")


@dataclass
class ModelConfig:
    name_or_path: Optional[str] = opt(None, "Hub id or local directory of a pretrained model.")
    config: Optional[dict] = opt(
        None, "Build a randomly initialised model from this config (model_type plus AutoConfig "
        "keys) instead of loading weights; vocab_size and special token ids default to the tokenizer's.")
    revision: str = opt("main", "Hub revision (branch, tag or commit) of name_or_path.")
    attn_implementation: Literal["auto", "eager", "sdpa", "flex_attention", "flash_attention_2",
                                 "flash_attention_3"] = opt(
        "sdpa", "Attention kernel; flash_attention_* need the flash-attn package and a GPU, flex_attention a GPU "
        "to train. auto: flash_attention_2 on a GPU with flash-attn, else flex_attention on a GPU for packed rows, "
        "else sdpa.")
    dtype: Literal["float32", "bfloat16", "float16"] = opt(
        "float32", "dtype the weights are loaded in (mixed precision is launch.mixed_precision).")
    trust_remote_code: bool = opt(False, "Allow model code from the hub (only for models you trust).")
    gradient_checkpointing: bool = opt(False, "Recompute activations in backward to save memory.")
    activation_offloading: bool = opt(False, "Keep what the forward saves for the backward in pinned CPU memory, "
                                      "not on the GPU (with gradient_checkpointing: the layer inputs). GPU only.")
    quantization: Optional[QuantizationConfig] = opt(
        None, "Load the base's linear layers in 4 bits (QLoRA: bitsandbytes, `pip install 'seqtune[qlora]'`); "
        "the base is frozen, so it needs a lora section.")


@dataclass
class TokenizerConfig:
    name_or_path: Optional[str] = opt(None, "Hub id or local directory; defaults to model.name_or_path.")
    revision: Optional[str] = opt(None, "Hub revision; defaults to model.revision.")
    use_fast: bool = opt(True, "Use the Rust (fast) tokenizer; false loads the slow Python one. (open-instruct ignores "
                         "its own --use_slow_tokenizer, so that flag maps to nothing.)")
    chat_template: Optional[str] = opt(
        None, "A named template (tulu, chatml, llama3, gemma; see `seqtune plugins`), a .jinja file or "
        "Jinja source; null keeps the tokenizer's own.")
    add_bos: bool = opt(False, "Start every rendered conversation with the BOS token when the template "
                        "does not (open-instruct's --add_bos; gemma needs it).")


@dataclass
class MixtureEntry:
    source: str = opt(REQUIRED, "Local file/folder or hub dataset name.")
    fraction: Optional[float] = opt(
        None, "Share of the source's rows to use (1.0 = all; 2.5 = two copies plus a seeded half).",
        minimum=0.0)
    count: Optional[int] = opt(None, "Exact number of rows to use (a seeded sample).", minimum=1)
    split: str = opt("train", "Split to read.")
    loader: str = opt("auto", "Dataset loader plugin; auto picks one from the source.")
    format: Component = opt(None, "Row format plugin: messages, prompt_completion, alpaca, text, sharegpt, "
                            "preference or preference_text.", factory=lambda: Component("messages"))
    columns: dict[str, str] = opt(None, "Column mapping {name the format expects: name in this "
                                  "source}, e.g. {prompt: question}.", factory=dict)


@dataclass
class DataConfig:
    mixture: list[MixtureEntry] = opt(REQUIRED, "Sources to mix, each with a fraction or a count.")
    max_seq_length: int = opt(2048, "Maximum tokens per row after tokenization.", minimum=1)
    truncation: Component = opt(None, "How rows longer than max_seq_length are cut.",
                                factory=lambda: Component("right"))
    packing: Component = opt(None, "How rows are grouped into micro-batches.",
                             factory=lambda: Component("none"))
    train_on: Literal["auto", "assistant", "last_assistant", "all"] = opt(
        "auto", "Which tokens are trained: every assistant turn, only the last one, or all tokens; auto is the "
        "objective's own (sft: every assistant turn; dpo: each side's final one).")
    num_workers: int = opt(1, "Processes used for tokenization.", minimum=1)
    mix_dir: Optional[str] = opt(None, "If set, the mixed untokenized rows and their stats go here.")
    cache_dir: Optional[str] = opt(None, "Where preprocessed rows are cached; default $SEQTUNE_CACHE "
                                   "or ~/.cache/seqtune.")
    untrainable: Literal["drop", "error"] = opt(
        "drop", "Rows with nothing to train (no assistant turn, empty, or everything cut by truncation): drop "
        "and count them by cause (as open-instruct drops them), or stop with an error naming the first.")


@dataclass
class TrainConfig:
    per_device_batch_size: int = opt(1, "Rows (or packed sequences) per micro-batch per process.", minimum=1)
    gradient_accumulation_steps: int = opt(1, "Micro-batches per optimizer step.", minimum=1)
    epochs: int = opt(1, "Passes over the data.", minimum=1)
    max_steps: Optional[int] = opt(None, "Stop after this many optimizer steps (overrides epochs).",
                                   minimum=1)
    loss_reduction: Literal["token_mean", "mean", "sum"] = opt(
        "token_mean", "token_mean: summed token losses of a whole optimizer step / its trainable "
        "tokens; mean: mean per micro-batch, averaged (HF default); sum: open-instruct's reduce_loss sum.")
    clip_grad_norm: Optional[float] = opt(None, "Clip the global gradient norm to this value.",
                                          minimum=0.0)
    loss: Component = opt(None, "Loss plugin: chunked_cross_entropy (exact, never holds the full-vocabulary "
                          "logits) or cross_entropy (transformers' own logits).",
                          factory=lambda: Component("chunked_cross_entropy"))


@dataclass
class EvalConfig:
    mixture: list[MixtureEntry] = opt(None, "Held-out sources, each with a fraction or a count, as data.mixture.",
                                      factory=list)
    split: Optional[float] = opt(
        None, "Instead of mixture: hold out this share (below 1) or this many (1 or more) of the training "
        "mixture's distinct rows, seeded; they are never trained on (listed in output_dir/eval_split.json).",
        minimum=0.0)
    every_steps: Optional[int] = opt(None, "Evaluate every N optimizer steps; always after the last one.",
                                     minimum=1)
    per_device_batch_size: Optional[int] = opt(None, "Rows per evaluation micro-batch (null: train's).", minimum=1)
    keep_best: bool = opt(False, "Also save the model of the evaluation with the lowest eval_loss so far to "
                          "output_dir/best (weights, tokenizer, model card; its best.json says which step).")
    early_stopping_patience: Optional[int] = opt(
        None, "Stop after this many evaluations in a row in which eval_loss did not fall below the best by more "
        "than eval.min_delta; the final model is the last trained (keep_best keeps the best).", minimum=1)
    min_delta: float = opt(0.0, "How far below the best eval_loss an evaluation must come to reset the "
                           "early-stopping count (any fall still makes a new best).", minimum=0.0)


@dataclass
class CheckpointConfig:
    every: Union[Literal["epoch"], int, None] = opt(
        None, "Save a checkpoint every epoch, every N optimizer steps, or never (null).", minimum=1)
    keep_last: Optional[int] = opt(None, "Keep only the newest N checkpoints.", minimum=1)
    resume: str = opt("auto", "auto: continue from the newest complete checkpoint in output_dir if there "
                      "is one; never: start over; or the path of a checkpoints/step-N folder.")


@dataclass
class LoggingConfig:
    every_steps: int = opt(1, "Log metrics every N optimizer steps.", minimum=1)
    peak_tflops: Optional[float] = opt(None, "Peak dense TFLOP/s of one device, for MFU; known GPUs "
                                       "(3090, 4090, A100, H100, H200) need not set it.", minimum=0.0)
    loggers: list[Component] = opt(None, "Logger plugins, by name or {name, options}.",
                                   factory=lambda: [Component("rich"), Component("jsonl")])


@dataclass
class DeepSpeedConfig:
    zero_stage: Literal[0, 1, 2, 3] = opt(2, "ZeRO stage.")
    offload_optimizer: bool = opt(False, "Keep optimizer states in CPU memory.")
    offload_params: bool = opt(False, "Keep parameters in CPU memory (ZeRO-3 only).")
    config_file: Optional[str] = opt(None, "A DeepSpeed JSON config to use instead.")


@dataclass
class LaunchConfig:
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto uses CUDA GPUs when present.")
    num_machines: int = opt(1, "Machines in the run.", minimum=1)
    num_processes: int = opt(1, "Processes over all machines (one per GPU).", minimum=1)
    machine_rank: int = opt(0, "This machine's rank (0 is the main machine).", minimum=0)
    main_process_ip: str = opt("127.0.0.1", "Address of the main machine.")
    main_process_port: int = opt(29500, "Port of the main machine.", minimum=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = opt("no", "Autocast precision.")
    sequence_parallel: int = opt(
        1, "Processes that share each sequence (Ulysses sequence parallelism): each holds 1/N of every "
        "row's tokens and attends over the whole row; data parallelism runs over num_processes / N groups "
        "(docs/long-context.md).", minimum=1)
    deepspeed: Optional[DeepSpeedConfig] = opt(None, "Use DeepSpeed ZeRO when set.")
    gpu_memory_gib: Optional[float] = opt(
        None, "Cap each process's CUDA memory at this many GiB (PyTorch's per-process memory fraction): "
        "rehearse a smaller GPU, e.g. the 24 GiB of `seqtune plan --gpu 24`, on a larger one.", minimum=1.0)


@dataclass
class LoraConfig:
    r: int = opt(16, "Rank of the low-rank update.", minimum=1)
    alpha: float = opt(32.0, "Scaling: the update is multiplied by alpha / r.", minimum=0.0)
    dropout: float = opt(0.05, "Dropout on the LoRA branch.", minimum=0.0)
    target_modules: Union[list[str], Literal["all-linear"]] = opt(
        "all-linear", "Linear modules to adapt, by name (q_proj, v_proj, ...), or all-linear.")
    merge: bool = opt(False, "Also write the base model with the adapter merged in, to output_dir/merged.")


@dataclass
class Recipe:
    output_dir: str = opt(REQUIRED, "Where the checkpoint, metrics and resolved recipe go.")
    overwrite_output_dir: bool = opt(
        False, "Replace whatever output_dir holds (another run, other files) instead of refusing; a run "
        "continues into an output_dir that holds the same run without it.")
    run_name: str = opt("seqtune", "Name shown by loggers (open-instruct's --exp_name).")
    seed: int = opt(42, "Seed for data order, sampling and initialisation.")
    plugins: list[str] = opt(None, "Extra plugin modules to register, by dotted import path.",
                             factory=list)
    model: ModelConfig = opt(None, "The model to fine-tune.", factory=ModelConfig)
    tokenizer: TokenizerConfig = opt(None, "The tokenizer and its chat template.",
                                     factory=TokenizerConfig)
    data: DataConfig = opt(REQUIRED, "Data sources, max_seq_length, truncation and packing.")
    train: TrainConfig = opt(None, "Batch sizes, epochs and loss normalisation.", factory=TrainConfig)
    optimizer: Component = opt(None, "Optimizer plugin and its options.",
                               factory=lambda: Component("adamw"))
    scheduler: Component = opt(None, "Learning-rate schedule plugin and its options.",
                               factory=lambda: Component("linear"))
    objective: Component = opt(None, "Training objective plugin and its options: sft (next-token loss on the "
                               "trained tokens) or dpo (preference pairs).", factory=lambda: Component("sft"))
    eval: Optional[EvalConfig] = opt(None, "A held-out evaluation set, scored with the training objective "
                                     "and loss (eval_loss); null: none.")
    checkpoint: CheckpointConfig = opt(None, "When checkpoints are written.", factory=CheckpointConfig)
    logging: LoggingConfig = opt(None, "Which loggers, how often.", factory=LoggingConfig)
    launch: LaunchConfig = opt(None, "Processes, machines, precision and DeepSpeed.",
                               factory=LaunchConfig)
    lora: Optional[LoraConfig] = opt(None, "Train a LoRA adapter (peft) instead of every weight; null "
                                     "trains the full model.")
