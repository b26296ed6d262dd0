"""The dpo objective: its losses against their closed forms, sequence log-probabilities against a direct
per-token computation, the preference formats, and how a pair is encoded, cut and laid out."""
from __future__ import annotations

import math

import pytest
import torch

from framework import IGNORE_INDEX, Pair, Sample, UserError
from framework.data.tokenize import CODES
from plugins.dpo import dpo, preference, preference_loss, preference_text
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
    assert loss_of("ipo", 0.1)[0] == pytest.approx((2 - 1 / 0.2) ** 2, abs=1e-12)  # 9
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
    settings = {"train_on": "assistant", "template": "the chat template", "untrainable": "drop", **settings}
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
