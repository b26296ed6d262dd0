"""The grpo objective against TRL's GRPOTrainer formulas, written here from TRL's documented definitions in
its padded (completions x length) form with a completion mask: the loss and every parameter's gradient
for each loss_type (grpo, dapo, dr_grpo), with and without the KL term, cut completions trained or
masked; the group advantages; the metrics; and a rollout's layout from a generator's completions."""
from __future__ import annotations

import copy

import pytest
import torch

from framework.model.heads import trained_positions
from plugins.grpo import _advantages, grpo

VOCAB, PAD, EOS = 40, 0, 3
GROUP, MAX_NEW = 4, 6
EPSILON, EPSILON_HIGH = 0.2, 0.28
# Two prompts of different lengths, four completions each, of different lengths: those without the eos
# (3) at their end were cut at MAX_NEW tokens
PROMPTS = [[5, 9, 14], [7, 11, 6, 21, 8]]
COMPLETIONS = [[12, 17, 3], [20, 4, 9, 31, 25, 16], [8, 3], [15, 22, 19, 3],
               [30, 3], [10, 27, 5, 33, 3], [18, 6, 24, 11, 29, 13], [3]]
REWARDS = [1.0, 0.0, 0.5, 0.0, 0.0, 1.0, 0.25, 1.0]


def tiny_model():
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float64)


def perturbed(model, scale: float = 0.05):
    other = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn_like(p))
    return other


def padded_logps(model, trained_mask):
    """(completions, MAX_NEW) log-probabilities of each completion's tokens, each prompt + completion run
    alone through the model (no padding, no layout), 0 past a completion's end."""
    rows = []
    for k, completion in enumerate(COMPLETIONS):
        ids = torch.tensor([PROMPTS[k // GROUP] + completion])
        logits = model(ids).logits[0, :-1].log_softmax(-1)
        start = len(PROMPTS[k // GROUP]) - 1  # the position that predicts the completion's first token
        logps = logits[start:start + len(completion)].gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)
        rows.append(torch.cat([logps, logps.new_zeros(MAX_NEW - len(completion))]))
    return torch.stack(rows) * trained_mask


def completion_mask(mask_truncated: bool):
    """TRL's completion mask (tokens up to and with the eos), times ~is_truncated with mask_truncated."""
    mask = torch.zeros(len(COMPLETIONS), MAX_NEW, dtype=torch.float64)
    for k, completion in enumerate(COMPLETIONS):
        mask[k, :len(completion)] = 1
        if mask_truncated and completion[-1] != EOS:
            mask[k] = 0
    return mask


def trl_advantages(rewards, scale: bool):
    grouped = rewards.view(-1, GROUP)
    advantages = grouped - grouped.mean(1, keepdim=True)
    if scale:
        advantages = advantages / (grouped.std(1, keepdim=True) + 1e-4)  # torch's unbiased std, as TRL's
    return advantages.reshape(-1)


def trl_loss(logps, old, ref, advantages, mask, beta, loss_type):
    """TRL GRPOTrainer._compute_loss on padded tensors."""
    coef_1 = torch.exp(logps - old)
    coef_2 = torch.clamp(coef_1, 1 - EPSILON, 1 + EPSILON_HIGH)
    per_token_loss = -torch.min(coef_1 * advantages[:, None], coef_2 * advantages[:, None])
    if beta:
        per_token_loss = per_token_loss + beta * (torch.exp(ref - logps) - (ref - logps) - 1)
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "dr_grpo":
        return (per_token_loss * mask).sum() / (per_token_loss.size(0) * MAX_NEW)
    return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)  # dapo: over the whole (global) batch


def fixed_batch(objective, model, reference, mask, noise):
    """The batch the engine gives objective.loss: GRPO's own layout and advantages, with the old (this
    model's, plus `noise`) and reference log-probabilities per trained token in row-major order, taken
    from the padded tensors above, and the step's completion tokens per completion."""
    batch = objective._layout(PROMPTS, COMPLETIONS, PAD, [EOS])
    batch.update(_advantages(torch.tensor(REWARDS, dtype=torch.float64), GROUP, objective.scale_rewards))
    batch["trained_positions"] = trained_positions(batch["labels"])
    trained = mask.bool()
    with torch.no_grad():
        batch["old_logps"] = (padded_logps(model, mask) + noise)[trained]
        batch["reference_logps"] = padded_logps(reference, mask)[trained]
    batch["tokens_per_completion"] = float(mask.sum()) / len(COMPLETIONS)
    return batch


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def relative(got, want) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp(min=1e-300))


@pytest.fixture(scope="module")
def models():
    model = tiny_model()
    return model, perturbed(model)


@pytest.mark.parametrize("scale_rewards", ["group", "none"])
@pytest.mark.parametrize("mask_truncated", [False, True], ids=["cut-trained", "cut-masked"])
@pytest.mark.parametrize("beta", [0.0, 0.04], ids=["no-kl", "kl"])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_the_loss_and_its_gradients_are_trls(models, loss_type, beta, mask_truncated, scale_rewards):
    model, reference = models
    objective = grpo(rewards=[], generator=None, num_generations=GROUP, max_new_tokens=MAX_NEW, epsilon=EPSILON,
                     epsilon_high=EPSILON_HIGH, beta=beta, loss_type=loss_type, mask_truncated=mask_truncated,
                     scale_rewards=scale_rewards, memory_mib=0.001)  # a few tokens per chunk: the chunks join up
    mask = completion_mask(mask_truncated)
    torch.manual_seed(2)
    noise = 0.3 * torch.randn(len(COMPLETIONS), MAX_NEW, dtype=torch.float64)
    with torch.no_grad():
        current = padded_logps(model, mask)
    old = current + noise * mask  # the policy that sampled them: ratios leave the clipping band

    model.zero_grad(set_to_none=True)
    logps = padded_logps(model, mask)
    advantages = trl_advantages(torch.tensor(REWARDS, dtype=torch.float64), scale=scale_rewards == "group")
    with torch.no_grad():
        ref = padded_logps(reference, mask)
    want = trl_loss(logps, old, ref, advantages, mask, beta, loss_type)
    want.backward()
    want_grads = gradients(model)
    ratios = torch.exp(current - old)[mask.bool()]
    assert ((ratios < 1 - EPSILON) | (ratios > 1 + EPSILON_HIGH)).any() and \
        ((ratios > 1 - EPSILON) & (ratios < 1 + EPSILON_HIGH) & (ratios != 1)).any()

    model.zero_grad(set_to_none=True)
    loss_sum, _ = objective.loss(model, fixed_batch(objective, model, reference, mask, noise), None)
    got = loss_sum / len(COMPLETIONS)  # the engine's token_mean: the step's completions
    got.backward()
    got_grads = gradients(model)

    assert got.item() == pytest.approx(want.item(), rel=1e-9)
    worst = max(relative(got_grads[name], want_grads[name]) for name in want_grads)
    assert worst < 1e-6, worst


def test_the_loss_types_differ_on_this_batch(models):
    """So that the comparison above could tell them apart (completions of different lengths)."""
    model, reference = models
    mask = completion_mask(False)
    with torch.no_grad():
        logps, ref = padded_logps(model, mask), padded_logps(reference, mask)
        advantages = trl_advantages(torch.tensor(REWARDS, dtype=torch.float64), scale=True)
        values = [trl_loss(logps, logps + 0.1, ref, advantages, mask, 0.04, kind).item()
                  for kind in ("grpo", "dapo", "dr_grpo")]
    assert min(abs(a - b) for a, b in [(values[0], values[1]), (values[1], values[2]), (values[0], values[2])]) \
        > 1e-4


def test_advantages_are_relative_to_the_group_over_its_unbiased_std():
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    scaled = _advantages(rewards, 4, "group")
    assert scaled["advantages"][:4].tolist() == [0.0] * 4  # a group of equal rewards teaches nothing
    std = (3 * 0.25 ** 2 + 0.75 ** 2) ** 0.5 / 3 ** 0.5  # unbiased: n - 1 = 3
    assert scaled["advantages"][4:].tolist() == pytest.approx([-0.25 / (std + 1e-4), 0.75 / (std + 1e-4),
                                                               -0.25 / (std + 1e-4), -0.25 / (std + 1e-4)], rel=1e-12)
    assert scaled["group_std"].tolist() == pytest.approx([0.0] * 4 + [std] * 4, rel=1e-12)
    unscaled = _advantages(rewards, 4, "none")  # Dr. GRPO
    assert unscaled["advantages"].tolist() == [0.0] * 4 + [-0.25, 0.75, -0.25, -0.25]
    assert unscaled["rewards"].tolist() == rewards.tolist()


def test_clip_ratio_and_kl_are_token_means_over_the_steps_trained_tokens(models):
    model, reference = models
    objective = grpo(rewards=[], generator=None, num_generations=GROUP, max_new_tokens=MAX_NEW, epsilon=EPSILON,
                     epsilon_high=EPSILON_HIGH, beta=0.04, loss_type="dapo")
    mask = completion_mask(False)
    torch.manual_seed(2)
    noise = 0.3 * torch.randn(len(COMPLETIONS), MAX_NEW, dtype=torch.float64)
    batch = fixed_batch(objective, model, reference, mask, noise)
    with torch.no_grad():
        logps, ref = padded_logps(model, mask), padded_logps(reference, mask)
        _, metrics = objective.loss(model, batch, None)
    old = logps + noise * mask
    ratio, advantages = torch.exp(logps - old), trl_advantages(torch.tensor(REWARDS, dtype=torch.float64), True)
    region = ((ratio < 1 - EPSILON) & (advantages[:, None] < 0)) | \
        ((ratio > 1 + EPSILON_HIGH) & (advantages[:, None] > 0))
    # TRL's: means over the trained tokens (not over completions of their means)
    want_clip = ((region * mask).sum() / mask.sum()).item()
    want_kl = (((torch.exp(ref - logps) - (ref - logps) - 1) * mask).sum() / mask.sum()).item()
    n = len(COMPLETIONS)
    assert want_clip > 0
    assert metrics["clip_ratio"].item() / n == pytest.approx(want_clip, rel=1e-12)
    assert want_kl > 0 and metrics["kl"].item() / n == pytest.approx(want_kl, rel=1e-9)
    assert metrics["reward"].item() / n == pytest.approx(sum(REWARDS) / n)
    assert metrics["completion_length"].item() / n == pytest.approx(sum(map(len, COMPLETIONS)) / n)
    assert metrics["completions_cut"].item() == 2
    with torch.no_grad():  # the policy that sampled them is this one (iterations 1): ratio 1, nothing clipped
        del batch["old_logps"]
        _, metrics = objective.loss(model, batch, None)
    assert metrics["clip_ratio"].item() == 0


class Replayed:
    """A generator that returns the given completions whatever the model."""

    def __init__(self, completions):
        self.completions, self.calls = completions, []

    def generate(self, model, prompts, **settings):
        self.calls.append((prompts, settings))
        return self.completions


def tokenizer_model(tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def rolled_out(tokenizer, rewards, **options):
    """(objective, the batch its rollout makes of two prompts and eight replayed completions: "Reverse:
    c a t" answered 1, 1, 0 (cut: no end token), 0 by exact_match; "Uppercase: dog" 1, 0, 0, 1)."""
    words = ["t a c", " t  a c", "c a t", "x", "DOG", "dog", "D O G", "DOG"]
    completions = [tokenizer(w, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for w in words]
    completions[2] = completions[2][:-1]
    objective = grpo(rewards=rewards, generator=Replayed(completions), num_generations=4, max_new_tokens=8,
                     **options)
    prompts = [tokenizer("Reverse: c a t", add_special_tokens=False)["input_ids"],
               tokenizer("Uppercase: dog", add_special_tokens=False)["input_ids"]]
    out = objective.rollout(tokenizer_model(tokenizer), {"prompt_ids": prompts, "answers": ["t a c", "DOG"]},
                            tokenizer, 5, ["rows.jsonl:1", "rows.jsonl:2"])
    return objective, prompts, completions, out


def test_a_rollout_scores_each_completion_against_its_prompts_answer(tiny_tokenizer):
    from framework.types import BoundReward
    from plugins.rewards import exact_match

    objective, prompts, completions, out = rolled_out(tiny_tokenizer, [BoundReward("exact_match", 1.0, exact_match)])
    assert out["rewards"].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert out["reward/exact_match"].tolist() == out["rewards"].tolist()
    assert out["correct"] == ["exact_match"]
    assert out["cut"].tolist() == [0, 0, 1, 0, 0, 0, 0, 0]
    [(_, settings)] = objective.generator.calls
    assert settings["seed"] == 5 and settings["num_generations"] == 4 and settings["max_new_tokens"] == 8
    assert tiny_tokenizer.convert_tokens_to_ids("<|im_end|>") in settings["eos_token_ids"]
    for k, completion in enumerate(completions):  # each row: its prompt, then its completion, trained
        row = prompts[k // 4] + completion
        assert out["input_ids"][k, :len(row)].tolist() == row
        assert out["labels"][k, len(row) - len(completion):len(row)].tolist() == completion
        assert (out["labels"][k, :len(row) - len(completion)] == -100).all()
        assert out["attention_mask"][k].sum() == len(row)


@pytest.mark.parametrize("names", [["exact_match", "regex"], ["exact_match", "regex", "regex"]],
                         ids=["distinct", "a-name-twice"])
def test_a_ranks_empty_filler_reports_the_same_metrics_as_a_rank_with_completions(tiny_tokenizer, names):
    """Every rank sums the same metric names in one collective (framework/training/metrics.py): a rank
    whose data ran out (an empty filler micro-batch) must name what the others name, a reward given twice
    (two regex patterns) included, which scoring numbers `regex.2`."""
    from functools import partial

    from framework import IGNORE_INDEX, Sample
    from framework.types import BoundReward
    from plugins.rewards import exact_match, regex

    factories = {"exact_match": exact_match, "regex": partial(regex, pattern="a")}
    rewards = [BoundReward(name, 1.0, factories[name]) for name in names]
    objective, _, _, out = rolled_out(tiny_tokenizer, rewards, beta=0.1)
    model = tokenizer_model(tiny_tokenizer)
    out["trained_positions"] = trained_positions(out["labels"])
    with torch.no_grad():
        out["reference_logps"] = objective.sequence_logps(model, out)
        _, metrics = objective.loss(model, out, None)
    filler = objective.collate([[Sample([tiny_tokenizer.pad_token_id], [IGNORE_INDEX])]], None,
                               tiny_tokenizer.pad_token_id, False)
    assert objective.units([], filler) == 0
    _, empty = objective.loss(model, filler, None)
    assert sorted(empty) == sorted(metrics)
    assert all(value.item() == 0 for value in empty.values())
