"""The decoder's final hidden states without the full-vocabulary logits, for losses that apply the
output layer themselves (chunk by chunk, or in a fused kernel).

The model is run as training runs it (through DDP, DeepSpeed and PEFT wrappers, so their hooks
fire) with `logits_to_keep` set to no position: transformers' causal LMs then apply the output layer
to nothing. The final hidden states (after the last norm) are taken from the decoder's output. The
output layer stays a module: a loss calls it, so ZeRO-3's gathering and a LoRA adapter on it work.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Optional

from framework.errors import UserError
from framework.types import IGNORE_INDEX, MODEL_INPUTS

BYTES_PER_LOGIT = 16  # a chunk's logits, soft-capped copy, fp32 upcast and gradient, at most 4 bytes each


@dataclass
class DecoderOutput:
    """What a loss needs to compute the logits itself, for any part of the sequence."""

    hidden: Any  # (batch, sequence, hidden size): the final norm's output, in the graph
    head: Any  # the output layer (lm_head), a module to call on hidden states
    vocab_size: int
    softcap: Optional[float]  # gemma-2's final_logit_softcapping: logits = softcap * tanh(logits / softcap)
    autocast: Optional[tuple[str, Any]]  # (device type, dtype) of the autocast the model ran under

    def logits(self, hidden: Any) -> Any:
        """The logits of some hidden states, as the model itself would compute them."""
        import torch

        with torch.autocast(*self.autocast) if self.autocast else contextlib.nullcontext():
            logits = self.head(hidden)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def causal_lm(model: Any) -> Any:
    """The transformers model inside the wrappers training puts around it (PEFT, DDP, DeepSpeed)."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(getattr(model, "module", None), "forward"):
            model = model.module
        else:
            return model


def decoder_output(model: Any, batch: dict) -> DecoderOutput:
    """Run `model` (as wrapped for training) on a batch's inputs, computing no logits."""
    import torch

    inner = causal_lm(model)
    if "logits_to_keep" not in inspect.signature(inner.forward).parameters:
        raise UserError(f"train.loss: {type(inner).__name__} cannot skip its logits (its forward takes no "
                        "logits_to_keep); set train.loss: cross_entropy")
    captured: dict[str, Any] = {}

    def keep(module: Any, args: Any, output: Any) -> None:
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state
        device = captured["hidden"].device.type
        if torch.is_autocast_enabled(device):
            captured["autocast"] = (device, torch.get_autocast_dtype(device))

    handle = inner.get_decoder().register_forward_hook(keep)
    try:
        inputs = {key: batch[key] for key in MODEL_INPUTS if key in batch}
        nothing = torch.empty(0, dtype=torch.long, device=batch["input_ids"].device)
        model(**inputs, use_cache=False, logits_to_keep=nothing)
    finally:
        handle.remove()
    config = getattr(inner.config, "get_text_config", lambda: inner.config)()
    return DecoderOutput(captured["hidden"], inner.get_output_embeddings(), config.vocab_size,
                         getattr(config, "final_logit_softcapping", None), captured.get("autocast"))


def upcast(logits: Any) -> Any:
    """Logits in at least fp32 for the softmax (a float64 model keeps float64)."""
    import torch

    return logits if logits.dtype == torch.float64 else logits.float()


def chunk_tokens(vocab_size: int, memory_mib: float = 512) -> int:
    """Tokens per chunk: as many as keep one chunk's logits within `memory_mib`."""
    return max(1, int(memory_mib * 2**20) // (vocab_size * BYTES_PER_LOGIT))


def chunk_ranges(out: DecoderOutput, count: int, batch: dict, memory_mib: float = 512) -> list[tuple[int, int]]:
    """(start, stop) of each chunk of `count` trained tokens, sized to `memory_mib` of logits.

    Under ZeRO-3 (a partitioned output layer) every rank must call each module as often as every other:
    DeepSpeed traces the order of module calls and a rank that deviates waits in a collective the others
    never join. There are then always as many chunks as the run's fullest micro-batch needs
    (`batch["token_capacity"]`, the same on every rank), the ones past `count` empty."""
    chunk = chunk_tokens(out.vocab_size, memory_mib)
    n = max(1, -(-count // chunk))
    if batch.get("token_capacity") and any(hasattr(p, "ds_id") for p in out.head.parameters()):
        n = max(n, -(-batch["token_capacity"] // chunk))
    return [(min(k * chunk, count), min((k + 1) * chunk, count)) for k in range(n)]


def trained_positions(labels: Any, shifted: bool = False) -> Any:
    """Where the trained tokens are predicted: flat indices into the (rows x length) batch of every
    position t whose next label (t + 1) is trained, in row-major order; with `shifted` labels (a
    sequence-parallel rank's `shift_labels`, shifted once on the whole row) of every position whose own
    label is trained. The engine takes them on the CPU, before the batch reaches the device
    (`batch["trained_positions"]`): on a GPU, `nonzero` makes the host wait for the device."""
    width = labels.size(1)
    rows, positions = ((labels if shifted else labels[:, 1:]) != IGNORE_INDEX).nonzero(as_tuple=True)
    return rows * width + positions


def target_values(batch: dict, key: str, index: Any) -> Any:
    """A per-token key of the batch (`labels`, or an objective's own such as the sequence each token
    belongs to) at the tokens that positions `index` predict: `key` one position on, or `shift_<key>` at
    the position itself where the engine shifted it (sequence parallelism)."""
    shifted = batch.get(f"shift_{key}")
    if shifted is not None:
        return shifted.reshape(-1).index_select(0, index)
    return batch[key].reshape(-1).index_select(0, index + 1)


def trained_index(batch: dict) -> Any:
    """`batch["trained_positions"]`, or the same computed from its labels where a caller's batch lacks it."""
    index = batch.get("trained_positions")
    if index is None:
        shifted = batch.get("shift_labels")
        index = trained_positions(batch["labels"]) if shifted is None else trained_positions(shifted, shifted=True)
    return index


def trained_states(out: DecoderOutput, batch: dict) -> tuple[Any, Any]:
    """(the final hidden states at the trained positions, the tokens they predict), gathered with
    `batch["trained_positions"]` (computed here when a caller's batch lacks it). How many there are is
    their shape: nothing is read back from the device."""
    index = trained_index(batch)
    hidden = out.hidden.reshape(-1, out.hidden.size(-1)).index_select(0, index)
    return hidden, target_values(batch, "labels", index)


def trained_token_logps(model: Any, batch: dict, memory_mib: float = 512) -> Any:
    """The log-probability of every trained token of a batch (labels after the shift, in row-major
    order), never holding the full-vocabulary logits of more than one chunk of tokens: each chunk is
    recomputed in the backward. For objectives that score whole sequences (DPO and its variants). An
    empty filler gives an empty result, still connected to every parameter."""
    import torch
    from torch.utils.checkpoint import checkpoint

    out = decoder_output(model, batch)
    hidden, targets = trained_states(out, batch)
    parts = []
    for start, stop in chunk_ranges(out, len(targets), batch, memory_mib):
        args = (out, hidden[start:stop], targets[start:stop])
        parts.append(checkpoint(_chunk_logps, *args, use_reentrant=False) if torch.is_grad_enabled()
                     else _chunk_logps(*args))
    return torch.cat(parts)


def _chunk_logps(out: DecoderOutput, hidden: Any, targets: Any) -> Any:
    logits = upcast(out.logits(hidden))
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)
