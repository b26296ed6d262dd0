"""Ask a trained model a few quickstart tasks, and measure its held-out loss.

    python scripts/ask.py output/quickstart
    python scripts/ask.py output/smollm2-sft --before models/SmolLM2-135M-Instruct \
        --eval recipes/smollm2/data/eval.jsonl
    python scripts/ask.py output/quickstart-dpo --before output/quickstart \
        --pairs recipes/quickstart/data/preferences_eval.jsonl
    python scripts/ask.py output/quickstart-grpo --before output/quickstart \
        --accuracy recipes/quickstart/data/prompts_eval.jsonl

Greedy decoding with the saved tokenizer's chat template, so this also proves the output directory
is a complete Hugging Face checkpoint (a LoRA run's adapter folder loads through peft). With
`--before`, the base model answers the same questions beside it; with `--eval`, each model's loss on
the file's conversations is printed: the exact token mean over the assistant tokens seqtune trains;
with `--pairs`, on a file of {chosen, rejected} preference pairs, how often each model gives the chosen
answer the higher log-probability and the mean margin between them (nats, summed over the answer),
and with `--before` too, DPO's held-out reward accuracy: how often that margin grew; with `--accuracy`,
on a file of {prompt, answer} rows, how often each model's greedy answer is exactly the answer
(whitespace normalised: the `exact_match` reward), by the task (the prompt's first word).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

QUESTIONS = ("Reverse: c a t", "Uppercase: dog", "Sort: 7 2 9 1", "Repeat sun 3 times.",
             "What letter comes after k?", "What is 12 + 7?")


def load(model_dir: str):
    """Tokenizer and model of a saved folder: a full model, or a peft adapter over its base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if (Path(model_dir) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        # a QLoRA run's adapter is scored on the 4-bit base it trained on (its recipe says how)
        quantized = quantization(Path(model_dir))
        extra = {"quantization_config": quantized} if quantized is not None else {}
        model = AutoPeftModelForCausalLM.from_pretrained(model_dir, **extra).eval()
        for module in model.modules():  # as training computes it (framework.model.quantization.load_quantized)
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        return tokenizer, model
    return tokenizer, AutoModelForCausalLM.from_pretrained(model_dir).eval()


def quantization(model_dir: Path):
    """The BitsAndBytesConfig of the run's model.quantization (its saved recipe.yaml), or None."""
    import yaml

    recipe = model_dir / "recipe.yaml"
    section = (yaml.safe_load(recipe.read_text()) or {}).get("model", {}).get("quantization") if recipe.is_file() else None
    if not section:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=section.get("method", "nf4"),
                              bnb_4bit_use_double_quant=section.get("double_quant", True),
                              bnb_4bit_compute_dtype=getattr(torch, section.get("compute_dtype", "bfloat16")))


def answers(tokenizer, model, questions=QUESTIONS, max_new_tokens: int = 16) -> list[str]:
    out = []
    for question in questions:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                               add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        out.append(tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def held_out_loss(tokenizer, model, path: Path) -> float:
    """Token-mean cross-entropy over every trained (assistant) token of the file's conversations."""
    import torch

    from framework.data.chat import encode_chats
    from framework.types import IGNORE_INDEX

    rows = [json.loads(line)["messages"] for line in Path(path).read_text().splitlines() if line.strip()]
    total, tokens = 0.0, 0
    with torch.no_grad():
        for sample in encode_chats(tokenizer, rows):
            logits = model(input_ids=torch.tensor([sample.input_ids])).logits[0, :-1].float()
            targets = torch.tensor(sample.labels[1:])  # labels[t] is the target predicted at t - 1
            total += torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX,
                                                       reduction="sum").item()
            tokens += int((targets != IGNORE_INDEX).sum())
    return total / tokens


def held_out_pairs(tokenizer, model, path: Path):
    """Each pair's log-probability margin, chosen - rejected (summed over the answers' tokens)."""
    import torch

    from framework import Sample
    from plugins.dpo import dpo
    from plugins.packing import PadToLongest
    from plugins.truncation import right

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    objective = dpo()
    encode = objective.encoder(tokenizer, right, 10**6, "last_assistant", "the chat template", "error")
    out = encode([(row["chosen"], None, row["rejected"]) for row in rows], lambda i: f"{path}:{i + 1}")
    samples = [[Sample(ids, labels, tuple(n))] for ids, labels, n in zip(out["input_ids"], out["labels"], out["sequences"])]
    with torch.no_grad():
        batch = objective.collate(samples, PadToLongest(None), tokenizer.pad_token_id, False)
        logps = objective.sequence_logps(model, batch)
    return logps[:, 0] - logps[:, 1]


def accuracy(tokenizer, model, path: Path, max_new_tokens: int = 32) -> dict[str, list[bool]]:
    """Whether each row's greedy answer matches its reference answer, grouped by the prompt's first word."""
    from plugins.generation import TransformersGenerator
    from plugins.grpo import _eos_ids
    from plugins.rewards import exact_match

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                             add_generation_prompt=True) for row in rows]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]
    completions = TransformersGenerator(64).generate(
        model, ids, num_generations=1, max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0,
        eos_token_ids=_eos_ids(tokenizer), pad_token_id=tokenizer.pad_token_id)
    scores = exact_match()(tokenizer.batch_decode(completions, skip_special_tokens=True),
                           [row["answer"] for row in rows], [None] * len(rows))
    found: dict[str, list[bool]] = {}
    for row, score in zip(rows, scores):
        found.setdefault(row["prompt"].split()[0], []).append(score == 1)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", default="output/quickstart")
    parser.add_argument("--before", help="the model before training, answering beside it")
    parser.add_argument("--eval", type=Path, help="a JSONL file of {messages} rows held out of training")
    parser.add_argument("--pairs", type=Path, help="a JSONL file of {chosen, rejected} pairs held out of training")
    parser.add_argument("--accuracy", type=Path, help="a JSONL file of {prompt, answer} rows held out of training")
    args = parser.parse_args()
    columns = {"before": args.before, "after": args.model_dir} if args.before else {"": args.model_dir}
    replies, margins = {}, {}
    for name, folder in columns.items():
        tokenizer, model = load(folder)
        replies[name] = answers(tokenizer, model)
        if args.eval:
            loss = held_out_loss(tokenizer, model, args.eval)
            print(f"held-out loss{' ' + name if name else ''}: {loss:.4f} (perplexity {math.exp(loss):.2f})")
        if args.accuracy:
            found = accuracy(tokenizer, model, args.accuracy)
            every = [hit for hits in found.values() for hit in hits]
            tasks = ", ".join(f"{task} {sum(hits) / len(hits):.0%}" for task, hits in sorted(found.items()))
            print(f"held-out exact match{' ' + name if name else ''}: {sum(every) / len(every):.1%} of "
                  f"{len(every)} ({tasks})")
        if args.pairs:
            margins[name] = held_out_pairs(tokenizer, model, args.pairs)
            print(f"held-out pairs{' ' + name if name else ''}: chosen more likely in "
                  f"{(margins[name] > 0).float().mean().item():.1%}, mean log-probability margin "
                  f"{margins[name].mean().item():+.2f}")
    if args.pairs and args.before:  # DPO's implicit reward: the margin gained over the starting model
        gained = margins["after"] - margins["before"]
        print(f"held-out reward accuracy (the margin grew): {(gained > 0).float().mean().item():.1%}")
    for i, question in enumerate(QUESTIONS):
        print(f"{question!r:30} " + "  ".join(f"{name + ': ' if name else '-> '}{replies[name][i]!r:28}"
                                               for name in columns))


if __name__ == "__main__":
    main()
