"""Ask a trained quickstart model a few of its tasks: `python scripts/ask.py output/quickstart`.

Greedy decoding with the saved tokenizer's chat template, so this also proves the output directory
is a complete Hugging Face checkpoint.
"""
from __future__ import annotations

import sys

QUESTIONS = ("Reverse: c a t", "Uppercase: dog", "Sort: 7 2 9 1", "Repeat sun 3 times.",
             "What letter comes after k?", "What is 12 + 7?")


def main(model_dir: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    for question in QUESTIONS:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                               add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
        answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        print(f"{question!r:32} -> {answer!r}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "output/quickstart")
