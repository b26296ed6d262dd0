"""Everything before the first step: plugins, data, the batch plan, the model and the optimizer, the
loggers, and the checkpoint to resume from. Every input error surfaces before output_dir is written."""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from framework.config import LoadedRecipe, display_path
from framework.data.batching import BatchPlan, padding_free_layout, plan_batches
from framework.data.pipeline import PreparedData, prepare_data
from framework.errors import UserError
from framework.launch.accelerator import make_accelerator
from framework.launch.launcher import is_worker
from framework.launch.preflight import preflight
from framework.model.attention import dense_mask_warning, on_gpu, resolve, separates_documents
from framework.model.loading import build_model, check_positions, param_groups
from framework.model.lora import apply_lora, load_lora_weights, trainable_summary
from framework.model.offload import Offloader, offloading
from framework.model.quantization import parameter_count
from framework.model.tokenizer import load_tokenizer
from framework.registry import Parts, bind_parts
from framework.training.checkpoints import TrainerState, find_resume
from framework.training.checkpoints import read as read_checkpoint
from framework.training.checkpoints import restore as restore_checkpoint
from framework.training.evaluation import EvalSet, eval_data, eval_set, record_split
from framework.training.outputs import say, warn
from framework.training.ownership import Claim, check_output_dir, note_total_steps, run_identity, take_output_dir
from framework.training.reference import make_references
from framework.training.sequence_parallel import Groups, make_groups
from framework.types import RunInfo


@dataclass
class Prepared:
    """The data side of a run, ready for the loop; building it touches nothing in output_dir."""

    loaded: LoadedRecipe
    parts: Parts
    tokenizer: Any
    data: PreparedData
    packing: Any
    padding_free: bool  # micro-batches as one padding-free row (flash-attention)
    plan: BatchPlan
    attention: str = "sdpa"  # model.attn_implementation, `auto` resolved
    objective: Any = None  # the recipe's objective, built
    evaluation: Optional[EvalSet] = None  # the held-out rows, when the recipe has eval
    groups: Groups = field(default_factory=Groups)  # the sequence-parallel groups (one process each by default)

    @property
    def token_capacity(self) -> int:
        """The most tokens one micro-batch of this run (training or evaluation) holds on one rank: the
        same on every rank (a sequence-parallel rank holds its N-th of each row, rounded up)."""
        recipe = self.loaded.recipe
        rows = max(recipe.train.per_device_batch_size, recipe.eval and recipe.eval.per_device_batch_size or 0)
        return rows * -(-self.data.max_seq_length * self.objective.sequences_per_row // self.groups.size)


def prepare(loaded: LoadedRecipe, parts: Parts, main_first: Any = None, rank: int = 0,
            world: int = 1, groups: Optional[Groups] = None) -> Prepared:
    """Load the tokenizer and the data and plan the run: every data error is raised here.
    `main_first()` gives a context in which the main process prepares (and caches) data first. Data is
    dealt out to the sequence-parallel `groups` (one per process by default: rank of world)."""
    recipe = loaded.recipe
    groups = groups or Groups(1, 0, rank, world)
    rank, world = groups.index, groups.count
    tokenizer = load_tokenizer(recipe, parts.registry.entries["chat_templates"])
    objective, packing = parts.objective(), parts.packing()
    _check_layout(objective, packing, recipe)
    if recipe.launch.sequence_parallel > 1 and not getattr(objective, "sequence_parallel", False):
        raise UserError(f"launch.sequence_parallel: objective {recipe.objective.name} does not declare that it runs "
                        "split over a group (sequence_parallel = True, see hookspecs.seqtune_register_objectives); "
                        "set launch.sequence_parallel: 1")
    if not getattr(objective, "uses_token_loss", True) and any(key == "train.loss" or key.startswith("train.loss.") for key in loaded.provenance):
        warn(f"train.loss: objective {recipe.objective.name} scores sequences itself and does not use it "
             "(its own options size the chunks); the memory plan still reads its chunking")
    first = main_first or contextlib.nullcontext  # a fresh context for each preparation
    data = prepare_data(recipe, parts.loaders, parts.formats, parts.truncation, tokenizer, first(), objective)
    stages = ", ".join(f"{stage} {seconds:,.1f} s" for stage, seconds in data.seconds.items())
    say(f"data{' (cached)' if data.from_cache else ''}: {data.report.summary()}"
        + ("" if data.from_cache else f"; prepared in {stages}"))
    cut = data.report.cut_warning()  # `check --samples` and `train` both come here
    if cut:
        warn(cut)
    data, held, held_rows = eval_data(loaded, parts, tokenizer, objective, data, first())
    attention = _attention(recipe, packing)
    padding_free = padding_free_layout(packing, attention.startswith("flash_attention"))
    row_tokens = data.max_seq_length * objective.sequences_per_row  # a packed row holds whole rows at their longest
    plan = plan_batches(packing, data.lengths, recipe.train, row_tokens, recipe.seed, rank, world, padding_free,
                        getattr(objective, "iterations", 1))
    say(f"packing: {recipe.data.packing.name}, {plan.micro_batches:,} micro-batches per epoch, "
        f"efficiency {plan.efficiency:.2%} (real tokens / token slots); {plan.total_steps:,} optimizer steps")
    prep = Prepared(loaded, parts, tokenizer, data, packing, padding_free, plan, attention, objective, groups=groups)
    prep.evaluation = eval_set(prep, held, rank, world, held_rows)
    return prep


def _check_layout(objective: Any, packing: Any, recipe: Any) -> None:
    """Rows of several sequences (pairs) need a packing that keeps documents whole and apart."""
    if objective.sequences_per_row > 1 and packing.packs_rows and not separates_documents(packing):
        raise UserError(f"data.packing: {recipe.data.packing.name} joins rows across documents, and objective "
                        f"{recipe.objective.name} scores each sequence of a row on its own: use bfd or none")


def _attention(recipe: Any, packing: Any) -> str:
    """The attention kernel, `auto` resolved, with a warning where packed rows get a dense mask."""
    documents, gpu = separates_documents(packing), on_gpu(recipe.launch)
    attention = resolve(recipe.model.attn_implementation, documents, gpu)
    if attention != recipe.model.attn_implementation:
        say(f"attention: {attention} (model.attn_implementation=auto)")
    warning = dense_mask_warning(attention, documents, gpu)
    if warning:
        warn(warning)
    return attention


@dataclass
class Run:
    """A run ready for its first (or next) optimizer step."""

    loaded: LoadedRecipe
    prep: Prepared
    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    loss: Any  # loss(model, batch) -> (summed loss, metric sums): the objective's, with the train.loss plugin
    hook: Any  # the lifecycle hooks (loggers, callbacks); silent on all but the main process
    state: TrainerState
    output_dir: Path
    reference: Any = None  # the reference's log-probabilities (framework.training.reference.Reference), or None
    eval_reference: Any = None  # the same for the evaluation rows
    last_eval: dict = field(default_factory=dict)  # the latest evaluation's metrics, for the summary
    history: list = field(default_factory=list)  # every logged window and evaluation of this process's run
    rollout: Any = None  # an online objective's generations (framework.training.rollout.Rollouts)
    saved_rollout: Optional[dict] = None  # the generation a checkpoint kept for the steps after it

    @property
    def evaluation(self) -> Optional[EvalSet]:
        return self.prep.evaluation


def start(loaded: LoadedRecipe) -> Run | None:
    """Everything before the first step; None when output_dir already holds this run, finished.
    Input errors (another run's output_dir, a bad checkpoint) surface before output_dir is written."""
    from accelerate.utils import set_seed

    recipe = loaded.recipe
    parts = bind_parts(loaded)
    _quiet_libraries()
    for warning in parts.registry.warnings if not is_worker() else ():  # a launcher has said them once
        warn(warning)
    preflight(recipe)
    accelerator = make_accelerator(recipe)
    groups = make_groups(accelerator.process_index, accelerator.num_processes, recipe.launch.sequence_parallel)
    prep = prepare(loaded, parts, accelerator.local_main_process_first, groups=groups)
    claim = _check_output_dir(loaded, prep, accelerator.num_processes)
    if claim.finished is not None and recipe.checkpoint.resume == "auto":
        say(f"output_dir {display_path(claim.output_dir)} already holds this run, finished after "
            f"{claim.finished:,} steps: nothing to train (checkpoint.resume=never trains it again)")
        return None
    deepspeed, resume = recipe.launch.deepspeed is not None, recipe.checkpoint.resume
    # What overwrite_output_dir replaces is never resumed; a checkpoint named elsewhere still is.
    replaced = claim.replaces and resume == "auto"
    resume_from = None if replaced else find_resume(resume, claim.output_dir, deepspeed)
    set_seed(recipe.seed)
    model = _model(recipe, prep, resume_from)
    optimizer = parts.optimizer(param_groups(model))
    model, optimizer = accelerator.prepare(model, optimizer)
    # After prepare: ZeRO-3 regroups the optimizer's parameters, and the schedule must see its groups.
    scheduler = parts.scheduler(optimizer, prep.plan.total_steps)
    state = TrainerState(fingerprint=fingerprint(claim.identity, prep.plan), identity=claim.identity)
    rank = accelerator.process_index
    saved = None if resume_from is None else read_checkpoint(resume_from, state, deepspeed, rank)
    references = make_references(loaded, prep, accelerator, model)  # before a checkpoint's state is restored
    hook = _start_loggers(prep, claim, accelerator)
    if accelerator.is_main_process:
        record_split(claim.output_dir, prep.evaluation)
        note_total_steps(claim.output_dir, prep.plan.total_steps)
    if recipe.data.mix_dir and accelerator.is_main_process:
        prep.data.write_mix(Path(recipe.data.mix_dir), recipe.data.num_workers)
    if saved:
        state = restore_checkpoint(saved, accelerator, optimizer, scheduler)
        say(f"resuming from {resume_from} at step {state.step:,}")
    return Run(loaded, prep, accelerator, model, optimizer, scheduler, _loss(recipe, prep, model, accelerator), hook,
               state, claim.output_dir, *references, saved_rollout=saved.rollout if saved else None)


def _quiet_libraries() -> None:
    """transformers' and the hub's own tqdm bars (loading weights, writing shards) would interleave
    with seqtune's rich progress: one style, seqtune's."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()


def _check_output_dir(loaded: LoadedRecipe, prep: Prepared, world: int) -> Claim:
    """Whether output_dir is free, holds this run, or is replaced (overwrite_output_dir); every
    process reads the same answer here, before any of them writes."""
    identity = run_identity(loaded, prep.data.cache_path.name, world)
    output_dir = Path(loaded.recipe.output_dir)
    return check_output_dir(loaded, output_dir, identity, keep=prep.data.cache_path.parent)


def _loss(recipe: Any, prep: Prepared, model: Any, accelerator: Any) -> Any:
    """The objective's loss (with the train.loss plugin). With model.activation_offloading on a GPU,
    what the decoder body saves for the backward waits in pinned host memory; the loss head's tensors
    stay on the GPU, and nothing moves without gradients (evaluation, reference scoring)."""
    token_loss, objective = prep.parts.loss(), prep.objective

    def loss(model: Any, batch: dict) -> Any:
        return objective.loss(model, batch, token_loss)

    if not recipe.model.activation_offloading:
        return loss
    if accelerator.device.type != "cuda":
        warn("model.activation_offloading: the model runs on the CPU, where there is no GPU memory to "
             "save; nothing is offloaded")
        return loss
    return offloading(loss, Offloader(model, "cuda"))


def _model(recipe: Any, prep: Prepared, resume_from: Path | None) -> Any:
    """The model to train: full weights, or a LoRA adapter on the base (a LoRA checkpoint holds only
    the adapter, so a resumed one rebuilds the base and loads the adapter into it)."""
    if recipe.lora is None:
        model = build_model(recipe, prep.tokenizer, resume_from, prep.attention)
    else:
        model = apply_lora(build_model(recipe, prep.tokenizer, attention=prep.attention), recipe.lora)
        if resume_from is not None:
            load_lora_weights(model, resume_from)
        counts = trainable_summary(model)
        say(f"lora: {counts['trainable']:,} of {counts['total']:,} parameters trainable")
    warning = check_positions(model, prep.data.max_seq_length)
    if warning:
        warn(warning)
    return model


class _Silent:
    """The hook relay on non-main processes: lifecycle calls do nothing there."""

    def __getattr__(self, name: str) -> Any:
        return lambda **kwargs: None


def _start_loggers(prep: Prepared, claim: Claim, accelerator: Any) -> Any:
    """Make the loggers (a missing package fails here), then the run's first write: output_dir
    becomes this run's (replaced first under overwrite_output_dir) once every process has checked it."""
    is_main = accelerator.is_main_process
    loggers = [make(str(claim.output_dir)) for make in prep.parts.loggers] if is_main else []
    accelerator.wait_for_everyone()
    if is_main:
        take_output_dir(claim)
    accelerator.wait_for_everyone()
    if not is_main:
        return _Silent()
    for logger in loggers:
        prep.parts.registry.pm.register(logger)
    return prep.parts.registry.pm.hook


def fingerprint(identity: dict[str, str], plan: BatchPlan) -> str:
    """What must not change for a checkpoint to continue this run exactly: the run's identity and
    the length of every epoch's micro-batch list on this rank."""
    parts = [sorted(identity.items()), [len(epoch) for epoch in plan.epochs]]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def run_info(run: Run) -> RunInfo:
    """What the lifecycle hooks learn about the run at its start."""
    prep, recipe = run.prep, run.loaded.recipe
    parameters = sum(parameter_count(p) for p in run.model.parameters())  # ZeRO-3's partitions, 4-bit weights whole
    return RunInfo(run_name=recipe.run_name, output_dir=recipe.output_dir, recipe=run.loaded.data,
                   total_steps=prep.plan.total_steps, steps_per_epoch=prep.plan.steps_per_epoch[0],
                   num_rows=len(prep.data.dataset), num_parameters=parameters, start_step=run.state.step,
                   extra={"truncation": vars(prep.data.report), "packing_efficiency": prep.plan.efficiency})
