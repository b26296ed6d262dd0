"""The seqtune plugin contract: every hook a plugin may implement.

A plugin is any module or object with functions marked `@framework.hookimpl` whose names match the
specs below. Built-ins live in `plugins/`; third-party packages declare an entry point in the
`seqtune` group; a recipe can add modules by dotted path in its `plugins:` list.

Two kinds of hooks:

* **Registration hooks** (`seqtune_register_*`) return a `{name: factory}` map for one family. A
  recipe selects a factory by name (`truncation: right`, `optimizer: {name: adamw, lr: 1e-5}`).
  Runtime inputs are the factory's positional parameters; the recipe's options are its
  keyword-only parameters, checked against the signature before anything runs (unknown options,
  wrong types and missing required options are recipe errors). A name registered twice is an
  error naming both plugins. Every implementation is called; none is firstresult.
* **Option values are checked without building anything.** Annotate a numeric option with its
  bounds, `lr: Annotated[float, Bounds(gt=0)] = 1e-4` (`framework.Bounds(gt=, ge=, lt=, le=)`; on a
  list, every number), and declare rules across options as `factory.check`: a function called with
  every option (set or defaulted) that yields `(option, message)` pairs (`""` for the whole plugin),
  e.g. `("fused", "set fused or foreach to true, not both")`. Both run when the recipe is bound, in
  the same pass as every other recipe problem, and each problem names the file and key.
* **Options that name plugins.** A factory may take other plugins as options, as objective grpo takes
  its `rewards:` and `generator:`: it declares them as `factory.plugin_options = {option: family}`
  (`{"rewards": "rewards", "generator": "generators"}`) and annotates them as the raw YAML they are
  (`rewards: list[Any]`, `generator: Any = "transformers"`). Each component (a name, or a mapping with
  `name` and that plugin's options) is bound as the family's own selections are, in the same pass, its
  problems named by key (`objective.rewards[1].pattern`), and the factory receives the bound factories
  instead: a list for a list, and for the `rewards` family a `framework.BoundReward(name, weight,
  factory)` each, its `weight` (a number above 0, default 1) taken from the component.
* **Lifecycle hooks** (`seqtune_train_*`, `seqtune_log`, ...) are observer calls made by the engine
  on the main process only. The logger objects a recipe selects are registered as plugins for the
  run, so loggers and callbacks see the same calls and never reach into the loop.

Factory signatures per family (what the engine passes positionally, what each must return):

=================  ===========================================  =====================================
family             factory(positional..., *, options)           returns
=================  ===========================================  =====================================
dataset_loaders    (source: str, split: str)                    row dicts, a `framework.Rows` (row
                                                                dicts with each row's file and line,
                                                                named in later errors), or a
                                                                datasets.Dataset
dataset_formats    (row: dict)                                  {role, content} messages, or a str
                                                                (plain text: every token trained);
                                                                [], "" or no assistant turn: the
                                                                row is dropped and counted
truncation         (input_ids: list, labels: list,              (input_ids, labels), or None to drop
                   max_seq_length: int)
packing            ()                                           a `framework.types.Packing`: plan
                                                                (micro-batches of rows of pieces)
                                                                and collate (tensors)
optimizers         (param_groups: list[dict])                   a torch.optim.Optimizer
schedulers         (optimizer, num_training_steps: int)         a torch LR scheduler
losses             ()                                           loss(model, batch) -> (summed loss,
                                                                trainable tokens): see below
loggers            (output_dir: str)                            an object with lifecycle hookimpls
objectives         ()                                           a `framework.types.Objective`: see
                                                                seqtune_register_objectives
rewards            ()                                           reward(completions, answers, prompts)
                                                                -> one float per completion: see
                                                                seqtune_register_rewards
generators         ()                                           an object with generate(model,
                                                                prompts, ...): see
                                                                seqtune_register_generators
=================  ===========================================  =====================================

`seqtune_register_chat_templates` is the one family of plain values: `{name: jinja_source}`.

**Declared for planning.** `seqtune check` and `seqtune plan` size a run without building it, and
the framework never names a plugin, so what they need is declared by the plugin itself and read
generically (`framework.registry.declared`). A declared value is a constant, or a function called
with the runtime arguments listed and those of the recipe's options it accepts:

=================  =========================================  ========================================
family             declared                                   meaning (when undeclared)
=================  =========================================  ========================================
dataset_loaders    factory.first_row -> rows | None           the source's first row, read cheaply (a
                   (source, split)                            one-row list or Rows, named as the
                                                              loader names rows): `seqtune check`
                                                              tries its columns and format (not read)
dataset_formats    factory.columns -> tuple[str, ...]         the columns a row must have, before the
                   (options)                                  source's `columns:` mapping; a source
                                                              without one is refused naming the
                                                              columns it has (only the row's error)
optimizers         factory.state_tensors -> int               full-size state tensors per trained
                   (options)                                  parameter: AdamW 2, SGD with momentum 1
                                                              (planned as 2, Adam-like, with a note)
schedulers         factory.warmup_steps -> int                optimizer steps of warmup for a run of
                   (num_training_steps, options)              that many steps (shown as unknown)
packing            Packing.pad_to_multiple_of,                on the object the factory returns: see
                   .supports_padding_free, .packs_rows        `framework.types.Packing`
losses             factory.chunk_tokens -> int                tokens whose full-vocabulary logits
                   (vocab_size, options)                      exist at once (all of the micro-batch's)
                   factory.holds_head_gradient -> bool        the output layer's gradient is held
                   (zero_stage, options)                      from forward to backward (False)
objectives         Objective.sequences_per_row, .reference    on the object the factory returns: see
                                                              `framework.types.Objective`
rewards            factory.needs_answer -> bool (options)     it compares with the row's reference
                                                              answer: a prompt row without one is
                                                              refused (True)
                   factory.correctness -> bool (options)      it scores 1 for a correct answer and 0
                                                              otherwise: the engine logs its mean as
                                                              an accuracy (False)
=================  =========================================  ========================================
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from framework.types import RunInfo

hookspec = pluggy.HookspecMarker("seqtune")
hookimpl = pluggy.HookimplMarker("seqtune")

Factories = dict[str, Callable[..., Any]]


# -- registration hooks ------------------------------------------------------------------------

@hookspec
def seqtune_register_dataset_loaders() -> Factories:
    """Loaders that read a mixture entry's `source` (a path or hub name) into row dicts.

    A loader returns an iterable of row dicts, a `framework.Rows`, or a `datasets.Dataset`. Build a
    `Rows` file by file with `Rows.add_file(name, rows, lines)`, where `lines` are each row's 1-based
    physical line (None: its rows are numbered 1..n); any later error about a row (its format, its
    chat template, its truncation) then names `name:line` (or `name: row N`). Plain rows and Datasets
    are named `<source>: row N`. A source with no rows is an error naming it. Data that cannot be
    read should raise `UserError` naming the file and line.
    """


@hookspec
def seqtune_register_dataset_formats() -> Factories:
    """Formats that turn one raw row into chat messages (`data.mixture[].format`).

    A format raises ValueError (or TypeError/KeyError) with a short reason for a malformed row; the
    pipeline adds the row's file and line. A row with nothing to train is not malformed: return it as
    it is (an empty list, an empty string, or messages without an assistant turn), and the pipeline
    drops and counts it by cause (`data.untrainable: drop`), or stops at it (`error`).

    Its keyword-only parameters are its options, as in every family (`format: {name: sharegpt,
    roles: {bot: assistant}}`). `seqtune check` formats each local source's first row and compares
    the columns the format declares (`factory.columns`) with the source's, so a wrong column stops
    the check, not the run.
    """


@hookspec
def seqtune_register_chat_templates() -> dict[str, str]:
    """Named Jinja chat templates (`tokenizer.chat_template: tulu`), as template source text.

    A template must render messages[:i] as a prefix of messages[:i+1], and end every assistant
    turn with an end-of-turn token, so that labels can be masked without generation markers.
    """


@hookspec
def seqtune_register_truncation() -> Factories:
    """Strategies that bound a tokenized row to `data.max_seq_length` (`data.truncation`)."""


@hookspec
def seqtune_register_packing() -> Factories:
    """Strategies that group tokenized rows into micro-batches (`data.packing`)."""


@hookspec
def seqtune_register_optimizers() -> Factories:
    """Optimizers (`optimizer.name`); they receive parameter groups with weight decay set."""


@hookspec
def seqtune_register_schedulers() -> Factories:
    """Learning-rate schedules (`scheduler.name`), sized by the exact number of optimizer steps."""


@hookspec
def seqtune_register_losses() -> Factories:
    """Losses (`train.loss`): each factory returns `loss(model, batch) -> (loss_sum, tokens)`.

    `model` is the model as training wrapped it (DDP, DeepSpeed, PEFT: call it, or its modules, so
    their hooks run); `batch` holds `input_ids`, `labels` (-100 where nothing is trained), and
    `attention_mask` or `position_ids`, and `token_capacity`, a Python int: the most tokens a
    micro-batch of the run holds, the same on every rank. Under ZeRO-3 every rank must call each module
    equally often (DeepSpeed traces the calls), so a loss that calls the output layer once per chunk
    should make as many chunks on every rank: `framework.chunk_ranges` does. Return the *sum* over trained tokens of the next-token
    cross-entropy (position t predicts token t+1), as an fp32 scalar in the autograd graph, and the
    number of those tokens. The engine scales it (`train.loss_reduction`) and runs the backward, so
    reductions, packing, accumulation and DeepSpeed work for every loss. A fused kernel gets the
    final hidden states and the output layer from `framework.decoder_output(model, batch)`.

    Under sequence parallelism (`launch.sequence_parallel`) a rank's batch holds its part of every row,
    and `shift_labels` (the labels already shifted, once, on the whole row: position t's own label)
    instead of `labels`, so a loss that shifts labels itself fails loudly rather than shifting twice.
    `framework.trained_states(decoder_output(...), batch)` gives (hidden states, targets) either way.
    Pass every MODEL_INPUTS key the batch has to the model: `sequence_parallel` reaches the attention.
    """


@hookspec
def seqtune_register_objectives() -> Factories:
    """Training objectives (`objective: {name: sft}`, the default, `dpo`, or `grpo`); a factory returns a
    `framework.types.Objective`, which owns what differs between objectives:

    * **encoding**: `encoder(...)` returns the preprocessing pass's `encode(rows, where)`; its
      `train_on` is data.train_on with `auto` resolved to the objective's `train_on` attribute (SFT:
      every assistant turn; DPO: each side's final one), so one recipe key says what is trained. Rows are
      formatted rows `(messages, text, rejected)` (from a format returning a `framework.Pair`: the chosen
      conversation and the rejected one; else rejected is None); it returns the cache columns of `framework.data.tokenize.COLUMNS`. A row of several
      sequences (a pair) is stored end to end with their lengths in `sequences`.
    * **micro-batches**: `collate(rows, packing, pad_token_id, padding_free)` lays a micro-batch's
      rows out with the recipe's packing strategy (a pair's two sequences as two documents of one
      packed row, or two rows) and adds what its loss reads; `units(rows)` counts on the CPU what
      `train.loss_reduction` divides by (trainable tokens for SFT, pairs for DPO).
    * **state**: `reference` says what the engine provides in `batch["reference_logps"]` (rows x
      sequences, no gradient): nothing (`none`), the frozen starting model's `sequence_logps` every
      step (`live`: a frozen copy, or with LoRA the model with its adapter disabled), or the same
      numbers computed once before training and cached beside the data cache (`cached`).
    * **the loss**: `loss(model, batch, token_loss)` returns the summed loss over the micro-batch's
      units and a dict of metric sums over them (the engine divides them by the units of the logging
      window, over every rank, and logs them by name). `token_loss` is the recipe's train.loss plugin.
    * **online RL** (optional): an objective with `rollout(model, tensors, tokenizer, seed, where) ->
      tensors` generates before it learns. The engine gives it each micro-batch's collated prompts on the
      CPU, the model unwrapped, a seed fixed by the run's seed, step, rank and micro-batch, and `where`
      naming each row for errors; it returns the micro-batch its loss reads (framework/training/rollout.py).
      Its rows are prompts: formatted `(messages, answer, None)` from a format returning a
      `framework.Prompt`. Its generator and rewards are options naming plugins (see the top of this file).
      `iterations` (default 1): optimizer steps on each generation (the batch plan repeats each step's
      micro-batches; from the second on, `batch["old_logps"]` holds the sampling policy's per-token
      log-probabilities). `loss` may read `batch["tokens_per_completion"]` (the step's trained tokens
      over its units, over all ranks) to normalise by tokens while the engine divides by units.
    * **recipe checks** (optional): `recipe_problems(recipe) -> [(key, problem)]`, what it cannot run
      with (GRPO: packing, ZeRO-3, ...); `check` and `train` refuse them, one line each.
    * **planning**: `sequences_per_row` (sequences per data row: 1, or 2 for a pair) scales the
      planner's tokens per row, and a packed row holds max_seq_length x that many tokens; `generation`
      (`{num_generations, max_new_tokens, batch_size}`) adds the generation phase's KV cache.
    """


@hookspec
def seqtune_register_rewards() -> Factories:
    """Rewards that score completions (objective grpo's `rewards: [{name: last_number, weight: 1.0}]`).

    Each reward is built once (`BoundReward.reward`): `factory(**options)` returns `reward(completions,
    answers, prompts) -> list[float]`, called on each rank's batches of completions as text: `answers[i]`
    is completion i's prompt row's reference answer (None when the row has none) and `prompts[i]` the
    prompt as the model read it (its chat template's rendering, special tokens as text). It returns one finite number per completion. A reward that raises,
    returns another count or a non-finite score stops the run with one line naming the reward and the
    row (`framework.score_rewards`); a row without an answer is refused when the reward declares
    `needs_answer` (the default). A reward that scores 1 for a correct answer and 0 otherwise declares
    `correctness = True`, and the engine logs its mean as an accuracy. An option whose value is wrong
    in itself (a pattern that does not compile, a function that does not import) belongs in
    `factory.check`, so the recipe's check names it.
    """


@hookspec
def seqtune_register_generators() -> Factories:
    """Generation engines that sample completions for online RL (objective grpo's `generator:`).

    `factory(**options)` is called once, before training, and returns an object with
    `generate(model, prompts, *, num_generations, max_new_tokens, temperature, top_p, eos_token_ids,
    pad_token_id, seed) -> list[list[int]]`: `prompts` are token ids (the chat template applied, its
    generation prompt included), `model` the policy being trained. It returns `len(prompts) *
    num_generations` completions' token ids, prompt i's at `i * num_generations` to `(i + 1) *
    num_generations - 1`, each ending at its first token of `eos_token_ids` (kept) or cut at
    `max_new_tokens`, without padding. `seed` (None: unseeded) makes sampling repeatable. The built-in
    `transformers` calls the model's own `generate`; a faster engine (vLLM) replaces it behind this one
    method.
    """


@hookspec
def seqtune_register_loggers() -> Factories:
    """Loggers (`logging.loggers`); each factory returns an object implementing lifecycle hooks."""


# -- lifecycle hooks (main process only) -------------------------------------------------------

@hookspec
def seqtune_train_start(run: RunInfo) -> None:
    """Called once after the model, data and optimizer are ready, before the first step."""


@hookspec
def seqtune_micro_batch(step: int, pieces: list) -> None:
    """Called before each micro-batch of optimizer step `step` with the rows it holds (lists of
    sample indices or slices; None for a rank's empty filler): for data-order audits."""


@hookspec
def seqtune_step_end(step: int) -> None:
    """Called after every optimizer step (`step` counts from 1)."""


@hookspec
def seqtune_log(step: int, metrics: dict[str, float]) -> None:
    """Called every `logging.every_steps` optimizer steps with that window's metrics."""


@hookspec
def seqtune_checkpoint_saved(step: int, path: str) -> None:
    """Called after a checkpoint has been completely written (and renamed into place) at `path`."""


@hookspec
def seqtune_train_end(summary: dict[str, float]) -> None:
    """Called once after the final model is saved; `summary` holds the run's totals."""
