"""The model card: a README.md that huggingface_hub reads back, written offline and atomically."""
from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData, constants

from framework.report.card import CardFacts, base_license, dataset_ids, render, write_card

RECIPE = "run_name: tulu-sft\nmodel:\n  name_or_path: allenai/OLMo-2-1124-7B\ndata:\n  max_seq_length: 4096\n"
DATA = {"rows_in": 2000, "rows_kept": 1980, "rows_truncated": 37, "rows_dropped": 20, "tokens_in": 512000,
        "tokens_lost": 3100, "trainable_tokens_in": 204800, "trainable_tokens_lost": 1024,
        "max_seq_length": 4096, "dropped": {"empty": 0, "no_trainable": 20}}


def facts(tmp_path: Path, **changes) -> CardFacts:
    local = tmp_path / "extra.jsonl"
    local.write_text("{}\n")
    base = dict(run_name="tulu-sft", base_model="allenai/OLMo-2-1124-7B", base_license="apache-2.0",
                datasets=["allenai/tulu-3-sft-mixture", str(local)], objective="sft", lora=False,
                recipe_yaml=RECIPE, data=dict(DATA),
                hyperparameters={"learning_rate": 5e-6, "effective_batch": 128, "epochs": 2, "steps": 31,
                                 "optimizer": "adamw", "precision": "bf16", "deepspeed_stage": 3},
                results={"train_loss": 1.234567, "eval_loss": 1.3456789, "perplexity": 3.84127,
                         "tokens": 1024000.0, "train_seconds": 754.25, "peak_memory_gib": 61.4321},
                hardware="8 x NVIDIA H100 80GB", loss_curve="loss_curve.png", seqtune_version="0.1.0")
    base.update(changes)
    return CardFacts(**base)


def test_hub_base_model_card_loads_with_huggingface_hub(tmp_path):
    given = facts(tmp_path)
    path = write_card(tmp_path, given)
    card = ModelCard.load(path)
    assert card.data.base_model == "allenai/OLMo-2-1124-7B"
    assert card.data.datasets == ["allenai/tulu-3-sft-mixture"]
    assert card.data.library_name == "transformers"
    assert card.data.tags == ["seqtune", "sft"]
    assert card.data.license == "apache-2.0"
    assert card.data.pipeline_tag == "text-generation"
    assert ModelCardData(**card.data.to_dict()).to_dict() == card.data.to_dict()

    body = card.text
    assert "# tulu-sft" in body
    assert "| metric | value |" in body
    assert "| train loss | 1.235 |" in body and "| eval loss | 1.346 |" in body
    assert "| perplexity | 3.841 |" in body and "| tokens | 1,024,000 |" in body
    assert "| peak memory | 61.43 GiB |" in body and "| train time | 754.2 s (12m 34s) |" in body
    assert "![loss curve](loss_curve.png)" in body
    assert f"```yaml\n{RECIPE}```" in body
    assert "seqtune train recipe.yaml" in body
    assert f"`{given.datasets[1]}`" in body  # the local file: in the body, not in the metadata
    assert "on 1,980 rows (of 2,000: 20 dropped in preprocessing)" in body
    assert "1,024 of 204,800 (0.50%)" in body and "3,100 of 512,000 (0.61%)" in body
    assert "20 no trainable" in body and "8 x NVIDIA H100 80GB" in body
    assert "| learning rate | 5e-06 |" in body and "- seqtune 0.1.0" in body


def test_config_built_model_has_no_base_model(tmp_path):
    card = ModelCard(render(facts(tmp_path, base_model=None, base_license=None, loss_curve=None)))
    assert "base_model" not in card.data.to_dict() and "license" not in card.data.to_dict()
    assert "built from its config" in card.text
    assert "![loss curve]" not in card.text


def test_lora_card_is_a_peft_card(tmp_path):
    local_base = tmp_path / "models" / "base"
    local_base.mkdir(parents=True)
    card = ModelCard(render(facts(tmp_path, base_model=str(local_base), lora=True, objective="dpo")))
    assert card.data.library_name == "peft"
    assert card.data.tags == ["seqtune", "dpo", "lora"]
    assert "base_model" not in card.data.to_dict()  # a local path is no hub id
    assert "LoRA adapters" in card.text and "- peft " in card.text


def test_no_hub_datasets_means_no_datasets_key(tmp_path):
    card = ModelCard(render(facts(tmp_path, datasets=["recipes/quickstart/data/train.jsonl"])))
    assert "datasets" not in card.data.to_dict()
    assert "`recipes/quickstart/data/train.jsonl`" in card.text


def test_base_license_from_a_local_folder(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n\n# A model\n")
    assert base_license(str(tmp_path)) == "apache-2.0"


def test_base_license_unknown(tmp_path):
    assert base_license(str(tmp_path)) is None  # a folder without README.md
    (tmp_path / "README.md").write_text("# no front matter\n")
    assert base_license(str(tmp_path)) is None
    assert base_license(None) is None


def test_base_license_of_an_uncached_hub_model_stays_offline(tmp_path, monkeypatch):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache

    def no_network(*args, **kwargs):
        raise AssertionError("base_license tried to download")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_network)
    monkeypatch.setattr("huggingface_hub.repocard.hf_hub_download", no_network)
    assert base_license("seqtune-tests/no-such-model") is None


def test_base_license_from_the_hub_cache(tmp_path, monkeypatch):
    repo = tmp_path / "models--org--model"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "README.md").write_text("---\nlicense: mit\n---\n")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert base_license("org/model") == "mit"
    # the cache knows the repo has no README.md: the sentinel, not a path
    (snapshot / "README.md").unlink()
    (repo / ".no_exist" / ("0" * 40)).mkdir(parents=True)
    (repo / ".no_exist" / ("0" * 40) / "README.md").touch()
    assert base_license("org/model") is None


def test_write_card_replaces_and_leaves_no_temp_file(tmp_path):
    (tmp_path / "README.md").write_text("old card\n")
    path = write_card(tmp_path, facts(tmp_path))
    assert path == tmp_path / "README.md"
    assert path.read_text().startswith("---\nlibrary_name: transformers\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "extra.jsonl"]


def test_dataset_ids():
    sources = ["allenai/tulu-3-sft-mixture", "recipes/quickstart/data/train.jsonl", "data/x.parquet",
               "HuggingFaceH4/ultrafeedback_binarized"]
    assert dataset_ids(sources) == ["allenai/tulu-3-sft-mixture", "HuggingFaceH4/ultrafeedback_binarized"]
    assert dataset_ids(["./org/name", "a/b/c", "recipes/quickstart/data"]) == []  # paths, not ids


def test_the_card_counts_the_rows_trained_and_those_held_out(tmp_path):
    """The issue's card said "200 rows (of 200)" of a run that trained on 180 and held 20 out."""
    split = render(facts(tmp_path, trained_rows=1_960, evaluation={"rows": 20, "split": True, "sources": []}))
    assert "on 1,960 rows (of 2,000: 20 dropped in preprocessing, 20 held out for evaluation)" in split
    assert "Evaluated on 20 held-out rows of the same data (eval.split), never trained on." in split
    assert "- trained on: 1,960 rows; 20 held out for evaluation (eval.split), never trained on" in split
    own = render(facts(tmp_path, trained_rows=1_980, evaluation={"rows": 100, "split": False,
                                                                 "sources": ["recipes/quickstart/data/eval.jsonl"]}))
    assert "on 1,980 rows (of 2,000: 20 dropped in preprocessing)" in own
    assert "Evaluated on 100 rows of `recipes/quickstart/data/eval.jsonl`." in own
    assert "- trained on: 1,980 rows\n" in own


def test_the_reproduce_command_says_where_it_runs_from(tmp_path):
    started, recipe = tmp_path / "my project", tmp_path / "runs/sft/recipe.yaml"  # a space: quoted
    card = render(facts(tmp_path, started_in=str(started), recipe_path=str(recipe),
                        reproduce_overrides=["output_dir=out/sft-again"]))
    assert f"```bash\ncd '{started}'\nseqtune train {recipe} output_dir=out/sft-again\n```" in card
    assert "relative paths start in the directory the run started in" in card


def test_a_lora_card_names_the_base_the_adapter_loads(tmp_path):
    base = tmp_path / "models/base"
    card = render(facts(tmp_path, base_model=str(base), lora=True))
    assert f"peft loads it over the base model (`adapter_config.json` names it: `{base}`)." in card
