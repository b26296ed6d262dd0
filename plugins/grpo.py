"""Online RL with verifiable rewards: the `grpo` objective (GRPO and its DAPO and Dr. GRPO variants).

A row is a prompt with a reference answer (formats `prompt_answer`, `ground_truth`: plugins/prompts.py).
Each optimizer step first generates `num_generations` completions per prompt with the model being
trained (the `generator`, plugins/generation.py), scores them with the `rewards` (weighted sum), and
turns each group's rewards into advantages: A = r - mean(group), divided by the group's std (+ 1e-4)
unless `scale_rewards: none` (Dr. GRPO). Then, with the completion tokens the only trained tokens and
ratio = pi(token) / pi_old(token) (pi_old: the policy that sampled them; with `iterations: 1` the same
weights, so the ratio is 1 and only its gradient counts):

    per-token loss = -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A) + beta * KL

with KL the k3 estimator exp(ref - logp) - (ref - logp) - 1 against the starting model (`beta` > 0:
a live reference; with LoRA the adapter disabled). `loss_type` aggregates the tokens as TRL does:
`grpo` each completion's mean, averaged over completions; `dapo` summed over every completion token
of the optimizer step (all ranks) and divided by their number; `dr_grpo` summed and divided by
completions x max_new_tokens. A completion cut at max_new_tokens is trained (`mask_truncated: false`)
or left out of the loss.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from framework import (EMPTY, IGNORE_INDEX, Bounds, Sample, UserError, add_row, hookimpl, target_values,
                       trained_index, trained_token_logps)
from framework.data.tokenize import COLUMNS
from framework.rewards import reward_names

LossType = Literal["grpo", "dapo", "dr_grpo"]


class GRPO:
    sequence_parallel = False
    uses_token_loss = False  # it scores completions with trained_token_logps (memory_mib), not train.loss
    unit = "completion"
    sequence_names = ("prompt", "reference answer")  # how `check --samples` labels a row's two parts
    label_keys = ("sequence_index",)
    train_on = "last_assistant"  # unused: prompts carry no trained turn

    def __init__(self, rewards: list, generator: Any, options: dict):
        self.rewards, self.generator = rewards, generator
        for key, value in options.items():
            setattr(self, key, value)
        self.sequences_per_row = self.num_generations
        self.reference = "live" if self.beta > 0 else "none"
        # for the memory plan: the KV cache of what the generator samples at once
        self.generation = {"num_generations": self.num_generations, "max_new_tokens": self.max_new_tokens,
                           "batch_size": getattr(generator, "batch_size", None)}

    def recipe_problems(self, recipe) -> list[tuple[str, str]]:
        """(key, problem) of each recipe setting this objective cannot run with."""
        found, ds = [], recipe.launch.deepspeed
        if recipe.data.packing.name != "none":
            found.append(("data.packing", "objective grpo lays out its own rows (prompt + completion): use none"))
        if ds is not None and ds.zero_stage == 3:
            found.append(("launch.deepspeed.zero_stage", "3 partitions the weights grpo generates with (every token "
                          "would gather every layer): use 2 or less"))
        if recipe.train.loss_reduction != "token_mean":
            found.append(("train.loss_reduction", "objective grpo aggregates by its loss_type: leave token_mean"))
        if recipe.eval is not None:
            found.append(("eval", "objective grpo is judged by what it generates: remove eval and compare with "
                          "`python scripts/ask.py OUTPUT_DIR --before START --accuracy ROWS`"))
        if self.max_new_tokens >= recipe.data.max_seq_length:
            found.append(("objective.max_new_tokens", f"{self.max_new_tokens} leaves no room for a prompt in "
                          f"data.max_seq_length {recipe.data.max_seq_length} (prompt + completion): raise it"))
        return found

    # -- data ------------------------------------------------------------------------------------

    def encoder(self, tokenizer, truncate, max_seq_length, train_on, template, untrainable):
        from framework.data.chat import Renderer

        render, room = Renderer(tokenizer), max_seq_length - self.max_new_tokens

        def encode(rows, where):
            out = {key: [] for key in COLUMNS}
            for i, (messages, answer, rejected) in enumerate(rows):
                if not messages or not isinstance(answer, str) or rejected is not None:
                    raise UserError(f"{where(i)}: objective grpo trains prompts with a reference answer and this row "
                                    "is not one: give its source format: prompt_answer or ground_truth")
                prompt = tokenizer(render(messages, generation_prompt=True), add_special_tokens=False)["input_ids"]
                # The answer rides in the cache as its UTF-8 bytes, a second sequence never fed to the model:
                # exact whatever the tokenizer
                raw = list(answer.encode("utf-8"))
                row = Sample(prompt + raw, [IGNORE_INDEX] * (len(prompt) + len(raw)), (len(prompt), len(raw)))
                # A prompt is not cut (a cut question is another question): one without room is dropped
                cause = "cut_by_truncation" if len(prompt) > room else None
                add_row(out, EMPTY if cause else row, row, cause)
            return out

        return encode

    def sequence_text(self, k: int, part: Sample) -> str | None:
        """The reference answer as text for `check --samples` (the cache holds its UTF-8 bytes)."""
        return bytes(part.input_ids).decode("utf-8") if k == 1 else None

    def collate(self, rows, packing, pad_token_id, padding_free):
        import torch

        samples = [sample for row in rows for sample in row]
        split = [sample.split() if sample.sequences else [sample, Sample([], [])] for sample in samples]
        prompts = [prompt.input_ids for prompt, _ in split]
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, :len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        return {"input_ids": ids, "labels": torch.full_like(ids, IGNORE_INDEX), "filler": not samples[0].sequences,
                "num_tokens": sum(map(len, prompts)), "prompt_ids": prompts,
                "answers": [bytes(answer.input_ids).decode("utf-8") for _, answer in split]}

    def units(self, rows, tensors):
        return 0 if tensors["filler"] else len(tensors["prompt_ids"]) * self.num_generations

    # -- generation and scoring ---------------------------------------------------------------------

    def rollout(self, model, tensors: dict, tokenizer: Any, seed: int, where: list[str]) -> dict:
        """The micro-batch's completions, on the CPU: each prompt's group sampled by the model as it is
        now, scored, and its advantages; the tensors its loss reads."""
        import torch

        from framework.rewards import score

        prompts, answers, eos = tensors["prompt_ids"], tensors["answers"], _eos_ids(tokenizer)
        training = model.training
        model.eval()
        with torch.no_grad():
            completions = self.generator.generate(
                model, prompts, num_generations=self.num_generations, max_new_tokens=self.max_new_tokens,
                temperature=self.temperature, top_p=self.top_p, eos_token_ids=eos,
                pad_token_id=tokenizer.pad_token_id, seed=seed)
        model.train(training)
        group = self.num_generations
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
        owners = [k // group for k in range(len(completions))]
        asked = tokenizer.batch_decode(prompts)
        # a row named with its question too: the engine knows the row's place, the user its text
        named = [f"{place} ({' '.join(text.split())[:60]!r})"
                 for place, text in zip(where, tokenizer.batch_decode(prompts, skip_special_tokens=True))]
        rewards, by_name = score(self.rewards, texts, [answers[k] for k in owners], [asked[k] for k in owners],
                                 [named[k] for k in owners])
        out = self._layout(prompts, completions, tokenizer.pad_token_id, eos)
        out.update(_advantages(torch.tensor(rewards, dtype=torch.float64), group, self.scale_rewards))
        for name, values in by_name.items():
            scores = torch.tensor(values, dtype=torch.float64)
            out[f"reward/{name}"] = scores
            out[f"reward/{name}/std"] = _advantages(scores, group, "none")["group_std"]
        out["correct"] = [name for name, reward in zip(reward_names(self.rewards), self.rewards) if reward.correctness]
        return out

    def _layout(self, prompts, completions, pad_token_id, eos_ids) -> dict:
        """Each prompt + completion as a right-padded row; only the completion's tokens trained (none of a
        cut one's with mask_truncated); which completion each token belongs to."""
        import torch

        group = self.num_generations
        rows = [prompts[k // group] + completion for k, completion in enumerate(completions)]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        labels, index = torch.full_like(ids, IGNORE_INDEX), torch.full_like(ids, IGNORE_INDEX)
        mask = torch.zeros_like(ids)
        cut = [not (completion and completion[-1] in eos_ids) for completion in completions]
        for k, (row, completion) in enumerate(zip(rows, completions)):
            ids[k, :len(row)], mask[k, :len(row)], index[k, :len(row)] = torch.tensor(row), 1, k
            if not (cut[k] and self.mask_truncated):
                labels[k, len(row) - len(completion):len(row)] = torch.tensor(completion, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "sequence_index": index,
                "num_tokens": int(mask.sum()), "completion_length": torch.tensor([float(len(c)) for c in completions]),
                "cut": torch.tensor([float(c) for c in cut])}

    # -- the loss -----------------------------------------------------------------------------------

    def sequence_logps(self, model, batch):
        """Every trained (completion) token's log-probability, in row-major order: what the reference
        and the old policy give per token."""
        return trained_token_logps(model, batch, self.memory_mib)

    def loss(self, model, batch, token_loss):
        import torch

        logps = self.sequence_logps(model, batch)
        if "advantages" not in batch:  # a rank's empty filler: no completions, the same metrics (zero)
            return 0 * logps.sum(), {name: logps.new_zeros(()) for name in self._metric_names()}
        sequence = target_values(batch, "sequence_index", trained_index(batch))
        completions = len(batch["advantages"])
        old = batch.get("old_logps")
        per_token, clipped = surrogate(logps, logps.detach() if old is None else old,
                                       batch["advantages"].to(logps.dtype).index_select(0, sequence),
                                       self.epsilon, self.epsilon_high)
        kl = None
        if self.beta:
            kl = k3(logps, batch["reference_logps"].to(logps.dtype))
            per_token = per_token + self.beta * kl
        lengths = torch.zeros(completions, dtype=logps.dtype, device=logps.device).index_add(
            0, sequence, torch.ones_like(logps))
        loss_sum = aggregate(per_token, sequence, lengths, self.loss_type, self.max_new_tokens,
                             batch.get("tokens_per_completion", 1.0))
        return loss_sum + 0 * logps.sum(), self._metrics(batch, lengths, clipped, kl)

    def _metric_names(self) -> list[str]:
        names = ["reward", "reward_std", "completion_length", "completion_length_max", "completions_cut",
                 "clip_ratio"]
        named = list(zip(reward_names(self.rewards), self.rewards))
        names += [f"reward/{name}{part}" for name, _ in named for part in ("", "/std")]
        names += [f"accuracy/{name}" for name, reward in named if reward.correctness]
        return names + (["kl"] if self.beta else [])

    def _metrics(self, batch, lengths, clipped, kl) -> dict:
        """Sums over the micro-batch's completions (the engine divides by completions); clip_ratio and kl
        are token means over the step's trained tokens, as TRL's (divided here by the step's tokens per
        completion, as dapo's loss)."""
        device, per_completion = lengths.device, batch.get("tokens_per_completion", 1.0)
        metrics = {"reward": batch["rewards"].sum(), "reward_std": batch["group_std"].sum(),
                   "completion_length": batch["completion_length"].sum(),
                   "completion_length_max": batch["completion_length"].max(), "completions_cut": batch["cut"].sum(),
                   "clip_ratio": clipped.sum() / per_completion}
        for key in batch:
            if key.startswith("reward/"):
                metrics[key] = batch[key].sum()
        for name in batch.get("correct", []):
            metrics[f"accuracy/{name}"] = (batch[f"reward/{name}"] >= 1).sum()
        if kl is not None:
            metrics["kl"] = kl.detach().sum() / per_completion
        return {name: value.to(device) for name, value in metrics.items()}


def surrogate(logps, old_logps, advantages, epsilon: float, epsilon_high: float):
    """(per-token clipped surrogate loss, whether each token's ratio was clipped), as PPO with DAPO's
    separate upper bound: -min(ratio A, clip(ratio, 1 - epsilon, 1 + epsilon_high) A)."""
    import torch

    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    region = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + epsilon_high) & (advantages > 0))
    return loss, region.to(logps.dtype).detach()


def k3(logps, reference_logps):
    """The k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    import torch

    delta = reference_logps - logps
    return torch.exp(delta) - delta - 1


def aggregate(per_token, sequence, lengths, loss_type: str, max_new_tokens: int, tokens_per_completion: float):
    """The micro-batch's loss as a sum over its completions, which the engine divides by the step's
    completions (train.loss_reduction token_mean): `grpo` each completion's token mean; `dr_grpo` its
    token sum / max_new_tokens; `dapo` its token sum / the step's completion tokens per completion (so
    the step's loss is its token sum over all its completion tokens)."""
    if loss_type == "grpo":
        return (per_token / lengths.clamp(min=1).index_select(0, sequence)).sum()
    if loss_type == "dr_grpo":
        return per_token.sum() / max_new_tokens
    return per_token.sum() / max(tokens_per_completion, 1e-9)


def _advantages(rewards, group: int, scale: str) -> dict:
    """Group-relative advantages: r - the group's mean, over the group's std (+ 1e-4) unless not scaled."""
    grouped = rewards.view(-1, group)
    mean, std = grouped.mean(1, keepdim=True), grouped.std(1, keepdim=True)
    advantages = grouped - mean
    if scale == "group":
        advantages = advantages / (std + 1e-4)
    return {"advantages": advantages.reshape(-1), "rewards": rewards,
            "group_std": std.expand_as(grouped).reshape(-1)}


def _eos_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    end = getattr(tokenizer, "convert_tokens_to_ids", lambda _: None)("<|im_end|>")
    if isinstance(end, int) and end != getattr(tokenizer, "unk_token_id", None):
        ids.add(end)
    return sorted(i for i in ids if i is not None)


def grpo(*, rewards: list[Any], generator: Any = "transformers",
         num_generations: Annotated[int, Bounds(ge=2)] = 8, max_new_tokens: Annotated[int, Bounds(ge=1)] = 256,
         temperature: Annotated[float, Bounds(ge=0)] = 1.0, top_p: Annotated[float, Bounds(gt=0, le=1)] = 1.0,
         scale_rewards: Literal["group", "none"] = "group", epsilon: Annotated[float, Bounds(gt=0, lt=1)] = 0.2,
         epsilon_high: Annotated[float, Bounds(gt=0)] | None = None,
         iterations: Annotated[int, Bounds(ge=1)] = 1, beta: Annotated[float, Bounds(ge=0)] = 0.0,
         loss_type: LossType = "dapo", mask_truncated: bool = False,
         memory_mib: Annotated[float, Bounds(gt=0)] = 512) -> GRPO:
    """Group relative policy optimisation (see the module): `rewards` a list of reward plugins
    (`{name, weight, options...}`), `generator` the generation engine."""
    options = {"num_generations": num_generations, "max_new_tokens": max_new_tokens, "temperature": temperature,
               "top_p": top_p, "scale_rewards": scale_rewards, "epsilon": epsilon,
               "epsilon_high": epsilon if epsilon_high is None else epsilon_high, "iterations": iterations,
               "beta": beta, "loss_type": loss_type, "mask_truncated": mask_truncated, "memory_mib": memory_mib}
    return GRPO(rewards, generator() if callable(generator) else generator, options)


grpo.plugin_options = {"rewards": "rewards", "generator": "generators"}


@hookimpl
def seqtune_register_objectives():
    return {"grpo": grpo}
