"""The dpo objective: its losses against their closed forms, sequence log-probabilities against a direct
per-token computation, the preference formats, and how a pair is encoded, cut and laid out."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import plugins.chat_templates

from framework import IGNORE_INDEX, Pair, Sample, UserError
from framework.data.tokenize import CODES
from plugins.dpo import dpo, preference_loss
from plugins.preference import preference, preference_text
from plugins.packing import BestFitDecreasing, PadToLongest
from plugins.truncation import drop, refuse, right
from seqtune_testing import trained_runs

USER = {"role": "user", "content": "Reverse: c a t"}
GOOD = {"role": "assistant", "content": "t a c"}
BAD = {"role": "assistant", "content": "c a t"}
# (chosen, rejected) summed log-probabilities of one pair, and their trained tokens
POLICY, REFERENCE, COUNTS = [[-10.0, -12.0]], [[-11.0, -11.0]], [[4.0, 2.0]]


def softplus(x: float) -> float:  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


def loss_of(kind, beta, **options):
    losses, chosen, rejected = preference_loss(kind, torch.tensor(POLICY, dtype=torch.float64),
                                               None if kind == "simpo" else torch.tensor(REFERENCE, dtype=torch.float64),
                                               torch.tensor(COUNTS, dtype=torch.float64), beta, **options)
    return losses.item(), chosen.item(), rejected.item()


def test_each_loss_is_its_closed_form():
    # h = (policy - reference)(chosen) - (policy - reference)(rejected) = (-10 + 11) - (-12 + 11) = 2
    assert loss_of("sigmoid", 0.1)[0] == pytest.approx(softplus(-0.2), abs=1e-12)
    assert loss_of("sigmoid", 0.1, label_smoothing=0.1)[0] == pytest.approx(
        0.9 * softplus(-0.2) + 0.1 * softplus(0.2), abs=1e-12)
    # ipo on averaged log-probabilities (TRL's): h = (-10 + 11) / 4 - (-12 + 11) / 2 = 0.75; summed (the paper's): 2
    assert loss_of("ipo", 0.1)[0] == pytest.approx((0.75 - 1 / 0.2) ** 2, abs=1e-12)  # 18.0625
    assert loss_of("ipo", 0.1, averaged=False)[0] == pytest.approx((2 - 1 / 0.2) ** 2, abs=1e-12)  # 9
    assert loss_of("hinge", 0.1)[0] == pytest.approx(1 - 0.1 * 2, abs=1e-12)  # 0.8
    assert loss_of("hinge", 1.0)[0] == 0.0  # past the margin
    # dpo_norm: per-token means, chosen -10/4 vs -11/4, rejected -12/2 vs -11/2: h = 0.25 + 0.5 = 0.75
    assert loss_of("dpo_norm", 5.0)[0] == pytest.approx(softplus(-5.0 * 0.75), abs=1e-12)
    # simpo: beta * (-10/4) - beta * (-12/2) - gamma, with beta 2 and gamma 0.5: 6.5
    assert loss_of("simpo", 2.0, gamma=0.5)[0] == pytest.approx(softplus(-6.5), abs=1e-12)


def test_rewards_are_beta_times_the_log_ratio_on_the_loss_normalisation():
    assert loss_of("sigmoid", 0.1)[1:] == pytest.approx((0.1, -0.1))
    assert loss_of("dpo_norm", 5.0)[1:] == pytest.approx((5.0 * 0.25, 5.0 * -0.5))
    assert loss_of("simpo", 2.0, gamma=0.5)[1:] == pytest.approx((2.0 * -2.5, 2.0 * -6.0))


def test_options_that_do_not_go_together_are_recipe_errors():
    def problems(**options):
        return dict(dpo.check(**{"loss": "sigmoid", "reference": "auto", "label_smoothing": 0.0, "gamma": 0.0,
                                 **options}))

    assert "reference-free" in problems(loss="simpo", reference="cached")["reference"]
    assert "compares with a reference" in problems(reference="none")["reference"]
    assert "SimPO" in problems(gamma=0.5)["gamma"]
    assert "no label smoothing" in problems(loss="ipo", label_smoothing=0.1)["label_smoothing"]
    assert "by definition" in problems(loss="dpo_norm", logps="sum")["logps"]
    assert "loss: dpo_norm" in problems(logps="mean")["logps"]
    assert problems(loss="ipo", logps="sum") == {} and problems(loss="hinge", logps="mean") == {}
    assert problems() == {} and problems(loss="simpo", gamma=0.5) == {}
    assert dpo().reference == "cached" and dpo(loss="simpo").reference == "none"


# -- formats ------------------------------------------------------------------------------------

def test_preference_rows_keep_their_shared_prompt():
    pair = preference({"chosen": [USER, GOOD], "rejected": [USER, BAD]})
    assert pair == Pair([USER, GOOD], [USER, BAD])
    assert preference_text({"prompt": "Reverse: c a t", "chosen": "t a c", "rejected": "c a t"}) == pair


@pytest.mark.parametrize("row, reason", [
    ({"chosen": [USER, GOOD], "rejected": [{"role": "user", "content": "other"}, BAD]}, "differ before their final"),
    ({"chosen": [USER, GOOD], "rejected": [USER]}, "'rejected' must end with an assistant turn"),
    ({"chosen": [USER, GOOD]}, "'rejected' list"),
    ({"prompt": "p", "chosen": "c"}, "'rejected'"),
])
def test_a_malformed_pair_says_why(row, reason):
    format_ = preference_text if "prompt" in row else preference
    with pytest.raises(ValueError, match=reason):
        format_(row)


# -- encoding -----------------------------------------------------------------------------------

def encode(tokenizer, rows, max_seq_length=128, truncate=right, **settings):
    settings = {"train_on": "last_assistant", "template": "the chat template", "untrainable": "drop", **settings}
    encoder = dpo().encoder(tokenizer, truncate, max_seq_length, settings["train_on"], settings["template"],
                            settings["untrainable"])
    return encoder([(p.chosen, None, p.rejected) for p in rows], lambda i: f"pairs.jsonl:{i + 1}")


def sides(out, i):
    n_chosen, n_rejected = out["sequences"][i]
    ids, labels = out["input_ids"][i], out["labels"][i]
    return (ids[:n_chosen], labels[:n_chosen]), (ids[n_chosen:], labels[n_chosen:])


def test_a_pair_is_both_sides_end_to_end_with_only_the_final_answer_trained(tiny_tokenizer):
    earlier = [USER, GOOD, {"role": "user", "content": "Uppercase: dog"}]
    out = encode(tiny_tokenizer, [Pair(earlier + [{"role": "assistant", "content": "DOG"}],
                                       earlier + [{"role": "assistant", "content": "Dog"}])])
    (chosen_ids, chosen_labels), (rejected_ids, rejected_labels) = sides(out, 0)
    assert out["length"][0] == len(chosen_ids) + len(rejected_ids) and out["dropped"] == [0]
    [(start, end)] = trained_runs(chosen_labels)  # one trained span: the final answer, not "t a c"
    assert chosen_ids[:start] == rejected_ids[:start]  # the same prompt tokens on both sides
    assert "DOG" in tiny_tokenizer.decode(chosen_ids[start:end])
    assert len(trained_runs(rejected_labels)) == 1
    assert out["trainable"][0] == sum(label != IGNORE_INDEX for label in chosen_labels + rejected_labels)


def test_a_long_pair_loses_its_prompt_from_the_left_first(tiny_tokenizer):
    long_user = {"role": "user", "content": " ".join(["cat dog"] * 40)}
    full = encode(tiny_tokenizer, [Pair([long_user, GOOD], [long_user, BAD])], max_seq_length=1000)
    (chosen_ids, chosen_labels), _ = sides(full, 0)
    answer = len(chosen_ids) - trained_runs(chosen_labels)[0][0]
    limit = len(chosen_ids) - 20  # a prompt 20 tokens too long: only the prompt is cut
    cut = encode(tiny_tokenizer, [Pair([long_user, GOOD], [long_user, BAD])], max_seq_length=limit)
    (kept_ids, kept_labels), (rejected_ids, _) = sides(cut, 0)
    assert len(kept_ids) == limit and kept_ids == chosen_ids[20:]  # the last tokens of the prompt, the whole answer
    assert len(kept_ids) - trained_runs(kept_labels)[0][0] == answer and kept_labels[0] == IGNORE_INDEX
    assert len(rejected_ids) <= limit and cut["length_before"] == full["length"]


def test_a_pair_with_a_side_left_with_nothing_to_train_is_dropped_and_counted(tiny_tokenizer):
    long_answer = {"role": "assistant", "content": " ".join(["t a c"] * 60)}
    pair = Pair([USER, long_answer], [USER, BAD])
    encoded_prompt = encode(tiny_tokenizer, [Pair([USER, GOOD], [USER, BAD])])
    prompt = trained_runs(sides(encoded_prompt, 0)[0][1])[0][0]
    out = encode(tiny_tokenizer, [pair], max_seq_length=2 * prompt)  # the prompt keeps half: both answers fit partly
    assert out["dropped"] == [0]
    assert encode(tiny_tokenizer, [pair], max_seq_length=2 * prompt, truncate=drop)["dropped"] == [
        CODES["cut_by_truncation"]]
    with pytest.raises(UserError, match="pairs.jsonl:1: a side of this pair has .* tokens, more than max_seq_length"):
        encode(tiny_tokenizer, [pair], max_seq_length=2 * prompt, truncate=refuse)


def test_single_conversations_and_train_on_all_are_refused(tiny_tokenizer):
    encoder = dpo().encoder(tiny_tokenizer, right, 64, "assistant", "t", "drop")
    with pytest.raises(UserError, match="pairs.jsonl:1: objective dpo trains preference pairs"):
        encoder([([USER, GOOD], None, None)], lambda i: "pairs.jsonl:1")
    with pytest.raises(UserError, match="data.train_on: all"):
        dpo().encoder(tiny_tokenizer, right, 64, "all", "t", "drop")


# -- layout and log-probabilities ---------------------------------------------------------------

def tiny_model(vocab_size):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=256)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float64)


def direct_logp(model, ids, labels):
    """One sequence on its own through the model: the sum of log p(label) over its trained tokens."""
    logits = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
    targets = torch.tensor(labels[1:])
    trained = targets != IGNORE_INDEX
    return logits[trained].gather(-1, targets[trained, None]).sum().item()


@pytest.mark.parametrize("packing", [BestFitDecreasing(), PadToLongest(None)], ids=["bfd", "none"])
def test_sequence_log_probabilities_are_each_sides_own_sum(tiny_tokenizer, packing):
    from datasets import Dataset

    from framework.data.pipeline import PreparedData

    pairs = [Pair([USER, GOOD], [USER, BAD]),
             Pair([USER, {"role": "assistant", "content": "t a c a t"}], [USER, {"role": "assistant", "content": "x"}])]
    out = encode(tiny_tokenizer, pairs)

    data = PreparedData(Dataset.from_dict(dict(out)), list(out["length"]), None, {}, False, None, None, None)
    rows = data.take([[0, 1]] if packing.packs_rows else [[0], [1]])
    objective = dpo(memory_mib=0.01)  # a few tokens per chunk: the chunks join up
    batch = objective.collate(rows, packing, tiny_tokenizer.pad_token_id, False)
    assert objective.units(rows, batch) == 2
    model = tiny_model(len(tiny_tokenizer))
    got = objective.sequence_logps(model, batch)
    want = [[direct_logp(model, *side) for side in sides(out, i)] for i in range(2)]
    assert got.flatten().tolist() == pytest.approx([x for pair in want for x in pair], rel=1e-9)


def test_the_loss_backpropagates_and_reports_rewards(tiny_tokenizer):
    out = encode(tiny_tokenizer, [Pair([USER, GOOD], [USER, BAD])])
    rows = [[Sample(out["input_ids"][0], out["labels"][0], tuple(out["sequences"][0]))]]
    objective = dpo(beta=0.5)
    batch = objective.collate(rows, BestFitDecreasing(), tiny_tokenizer.pad_token_id, False)
    model = tiny_model(len(tiny_tokenizer))
    with torch.no_grad():
        batch["reference_logps"] = objective.sequence_logps(model, batch) - torch.tensor([[1.0, -1.0]],
                                                                                           dtype=torch.float64)
    loss, metrics = objective.loss(model, batch, token_loss=None)
    assert loss.item() == pytest.approx(softplus(-0.5 * 2), rel=1e-9)  # h = 1 - (-1) = 2
    assert metrics["rewards/accuracy"].item() == 1 and metrics["rewards/margin"].item() == pytest.approx(1.0)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# -- planning -----------------------------------------------------------------------------------

def test_the_tulu3_dpo_recipe_is_planned_with_two_sequences_and_its_reference(repo, monkeypatch):
    from framework.config import load_recipe
    from framework.estimation.for_recipe import estimate_for_recipe

    monkeypatch.chdir(repo)

    def plan(*overrides):
        return estimate_for_recipe(load_recipe("recipes/tulu3/llama3.1-8b-dpo.yaml", list(overrides)))

    cached, live = plan(), plan("objective.reference=live")
    assert cached.settings["micro_batch"] == 2 and any("2 sequences per row" in note for note in cached.notes)
    psi = cached.settings["num_parameters"]
    assert live.weights - cached.weights == -(-psi * 2 // 32)  # a bf16 frozen copy, sharded over 32 GPUs by ZeRO-3
    zero2 = "launch.deepspeed={zero_stage: 2}"
    assert plan("objective.reference=live", zero2).weights - plan(zero2).weights == psi * 2  # a copy on every GPU
    assert "frozen reference model" in live.details["weights"]
    with_lora = plan("objective.reference=live", "lora={r: 16}")
    assert "frozen reference model" not in with_lora.details["weights"]  # the adapter is switched off instead
    sft = estimate_for_recipe(load_recipe("recipes/tulu3/llama3.1-8b-dpo.yaml", ["objective=sft", "data.mixture="
                                          "[{source: allenai/llama-3.1-tulu-3-8b-preference-mixture, fraction: 1.0}]"]))
    assert sft.settings["micro_batch"] == 1 and sft.activations * 2 == cached.activations


# -- recipes ------------------------------------------------------------------------------------

def prepared(repo, tmp_path, *overrides):
    from framework.config import load_recipe
    from framework.registry import bind_parts
    from framework.training.setup import prepare

    loaded = load_recipe(repo / "recipes/quickstart.yaml", [
        "data.mixture=[{source: recipes/quickstart/data/preferences.jsonl, count: 16, format: preference}]",
        "objective=dpo", "eval=null", f"data.cache_dir={tmp_path}", *overrides])
    return prepare(loaded, bind_parts(loaded))


def test_recipe_mistakes_around_pairs_are_named(repo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    prep = prepared(repo, tmp_path, "train.loss=cross_entropy")
    assert "train.loss: objective dpo scores sequences itself" in capsys.readouterr().err
    assert prep.data.report.rows_kept == 16 and all(len(s) == 2 for s in prep.data.dataset["sequences"])
    with pytest.raises(UserError, match="data.packing: wrapped joins rows across documents"):
        prepared(repo, tmp_path, "data.packing=wrapped")
    with pytest.raises(UserError, match=r"preferences.jsonl:\d+: is a preference pair .* set objective: \{name: dpo\}"):
        prepared(repo, tmp_path, "objective=sft")


def test_preference_columns_can_be_remapped_and_a_bad_pair_is_named_by_file_and_line(repo, tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(repo)
    rows = [{"prompt": "Reverse: c a t", "good": "t a c", "bad": "c a t"},
            {"prompt": "Uppercase: dog", "good": "DOG", "bad": "Dog"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    mixture = (f"data.mixture=[{{source: {tmp_path / 'pairs.jsonl'}, fraction: 1.0, format: preference_text, "
               "columns: {chosen: good, rejected: bad}}]")
    prep = prepared(repo, tmp_path, mixture)
    assert prep.data.report.rows_kept == 2
    (tmp_path / "bad.jsonl").write_text(json.dumps({"chosen": [USER, GOOD]}) + "\n\n"
                                        + json.dumps({"chosen": [USER, GOOD], "rejected": [USER, GOOD, USER]}) + "\n")
    with pytest.raises(UserError, match="bad.jsonl:1: needs a 'rejected' list"):
        prepared(repo, tmp_path, f"data.mixture=[{{source: {tmp_path / 'bad.jsonl'}, fraction: 1.0, format: preference}}]")


def test_check_samples_shows_each_side_of_a_pair_under_its_name(repo, tmp_path, monkeypatch, tiny_tokenizer):
    from framework.cli.show import render_sample, samples_to_show

    monkeypatch.chdir(repo)
    prep = prepared(repo, tmp_path)
    [row] = samples_to_show(prep.data, 1)
    text = render_sample(tiny_tokenizer, row, prep.objective.sequence_names).plain
    chosen, rejected = row.kept.split()
    assert f"[chosen: {len(chosen.input_ids)} tokens, {chosen.num_trainable} trained]" in text
    assert f"[rejected: {len(rejected.input_ids)} tokens, {rejected.num_trainable} trained]" in text
    assert text.index("[chosen") < text.index("[rejected")


# -- parity with TRL and open-instruct: their formulas, computed here from per-token log-probabilities --

def scored(objective, model, reference_model, tokenizer, out):
    """(loss, metrics) of every encoded pair, one micro-batch, the reference from `reference_model`."""
    rows = [[Sample(out["input_ids"][i], out["labels"][i], tuple(out["sequences"][i]))] for i in range(len(out["length"]))]
    batch = objective.collate(rows, BestFitDecreasing(), tokenizer.pad_token_id, False)
    with torch.no_grad():
        batch["reference_logps"] = objective.sequence_logps(reference_model, batch)
    return objective.loss(model, batch, token_loss=None)


def side_logps(model, ids, labels) -> tuple[float, int]:
    """A sequence's summed log-probability of its trained tokens and how many there are, directly."""
    return direct_logp(model, ids, labels), sum(label != IGNORE_INDEX for label in labels[1:])


def test_ipo_by_default_is_trls_on_averaged_log_ratios(tiny_tokenizer):
    """TRL divides each side's log-probability by its completion tokens before IPO's squared loss:
    ((pi_c - ref_c) / n_c - (pi_r - ref_r) / n_r - 1 / (2 beta))^2; `logps: sum` is the paper's form."""
    pair = Pair([USER, {"role": "assistant", "content": "t a c t a c t a c"}], [USER, BAD])  # sides of unequal length
    out = encode(tiny_tokenizer, [pair])
    model, reference = tiny_model(len(tiny_tokenizer)), tiny_model(len(tiny_tokenizer))
    with torch.no_grad():
        for p in reference.parameters():  # another starting model: the log-ratios are not 0
            p.add_(0.05 * torch.randn_like(p))
    (pc, nc), (pr, nr) = [side_logps(model, *side) for side in sides(out, 0)]
    (rc, _), (rr, _) = [side_logps(reference, *side) for side in sides(out, 0)]
    assert nc != nr
    beta = 0.5
    trl = ((pc - rc) / nc - (pr - rr) / nr - 1 / (2 * beta)) ** 2
    paper = ((pc - rc) - (pr - rr) - 1 / (2 * beta)) ** 2
    assert scored(dpo(loss="ipo", beta=beta), model, reference, tiny_tokenizer, out)[0].item() == pytest.approx(trl, rel=1e-9)
    assert scored(dpo(loss="ipo", beta=beta, logps="sum"), model, reference, tiny_tokenizer, out)[0].item() == \
        pytest.approx(paper, rel=1e-9)
    assert abs(trl - paper) > 0.01


def test_a_tie_counts_0_in_the_reward_accuracy_as_in_trl_and_open_instruct(tiny_tokenizer):
    """(chosen_rewards > rejected_rewards).float().mean(): the first step, where the model is its own
    reference, reads 0 for every pair."""
    out = encode(tiny_tokenizer, [Pair([USER, GOOD], [USER, BAD]), Pair([USER, BAD], [USER, GOOD])])
    model = tiny_model(len(tiny_tokenizer))
    _, metrics = scored(dpo(), model, model, tiny_tokenizer, out)
    assert metrics["rewards/margin"].item() == 0 and metrics["rewards/accuracy"].item() == 0


def tulu_tokenizer(tiny_tokenizer):
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (Path(plugins.chat_templates.__file__).parent / "tulu.jinja").read_text()
    return tokenizer


def open_instruct_encoding(tokenizer, messages) -> tuple[list[int], list[int]]:
    """open-instruct's preference tokenization (dataset_transformation.py): the whole conversation
    tokenized once; each non-assistant message masked, from the end of the conversation before it to its
    own end (with the generation prompt when an assistant turn follows); everything else trained."""
    def length(upto: list[dict], gen: bool = False) -> int:
        text = tokenizer.apply_chat_template(upto, tokenize=False, add_generation_prompt=gen)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    labels = list(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            start = 0 if i == 0 else length(messages[:i])
            end = length(messages[:i + 1], i + 1 < len(messages) and messages[i + 1]["role"] == "assistant")
            labels[start:end] = [IGNORE_INDEX] * (end - start)
    return ids, labels


MULTI_TURN = [USER, GOOD, {"role": "user", "content": "Uppercase: dog"}]
MULTI_PAIR = Pair(MULTI_TURN + [{"role": "assistant", "content": "DOG"}],
                  MULTI_TURN + [{"role": "assistant", "content": "dog dog"}])


def test_train_on_assistant_scores_every_turn_as_open_instruct_and_dpo_norm_computes_its_numbers(tiny_tokenizer):
    """The Tulu 3 DPO recipe (tulu template, dpo_norm, data.train_on: assistant) on a multi-turn pair:
    the same token ids and trained tokens as open-instruct's tokenization, and its dpo_norm loss from
    per-token log-probabilities averaged over every assistant turn."""
    tokenizer = tulu_tokenizer(tiny_tokenizer)
    out = encode(tokenizer, [MULTI_PAIR], train_on="assistant")
    model, reference = tiny_model(len(tokenizer)), tiny_model(len(tokenizer))
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    theirs = [open_instruct_encoding(tokenizer, side) for side in (MULTI_PAIR.chosen, MULTI_PAIR.rejected)]
    assert [list(side) for side in sides(out, 0)] == [list(side) for side in theirs]
    assert all(len(trained_runs(labels)) == 2 for _, labels in theirs)  # both assistant turns
    beta = 5.0
    (pc, nc), (pr, nr) = [side_logps(model, *side) for side in theirs]
    (rc, _), (rr, _) = [side_logps(reference, *side) for side in theirs]
    want = softplus(-beta * ((pc - rc) / nc - (pr - rr) / nr))  # -log sigmoid(beta h) on the averages
    loss, _ = scored(dpo(loss="dpo_norm", beta=beta), model, reference, tokenizer, out)
    assert loss.item() == pytest.approx(want, rel=1e-9)
    final_only, _ = scored(dpo(loss="dpo_norm", beta=beta), model, reference, tokenizer, encode(tokenizer, [MULTI_PAIR]))
    assert abs(final_only.item() - want) > 1e-3  # the default (TRL's: the final turn) is another number


def test_under_summed_losses_the_shared_turns_cancel(tiny_tokenizer):
    model, reference = tiny_model(len(tiny_tokenizer)), tiny_model(len(tiny_tokenizer))
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    every, last = [scored(dpo(beta=0.5), model, reference, tiny_tokenizer, encode(tiny_tokenizer, [MULTI_PAIR], train_on=t))
                   for t in ("assistant", "last_assistant")]
    assert every[0].item() == pytest.approx(last[0].item(), rel=1e-9)
    assert every[1]["logps/chosen"].item() < last[1]["logps/chosen"].item()  # more tokens scored


def test_a_long_multi_turn_pair_loses_its_shared_history_first_and_keeps_both_answers(tiny_tokenizer):
    history = [{"role": "user", "content": " ".join(["cat dog"] * 30)}, {"role": "assistant", "content": "ok " * 30}]
    pair = Pair(history + MULTI_PAIR.chosen[-2:], history + MULTI_PAIR.rejected[-2:])
    full = encode(tiny_tokenizer, [pair], max_seq_length=1000, train_on="assistant")
    (chosen_ids, _), (rejected_ids, _) = sides(full, 0)
    limit = max(len(chosen_ids), len(rejected_ids)) - 40  # 40 tokens of the shared history too many
    (kept_ids, _), (kept_rejected, _) = sides(encode(tiny_tokenizer, [pair], max_seq_length=limit,
                                                      train_on="assistant"), 0)
    assert kept_ids == chosen_ids[40:] and kept_rejected == rejected_ids[40:]  # both answers whole
