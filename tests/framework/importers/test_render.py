"""An imported recipe holds exactly what the importer mapped: every value, loaded as seqtune loads a recipe
(omegaconf, `${...}` resolved), equals the flag's value as mapped, whatever its length or characters."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from framework.config.load import read_recipe
from framework.errors import UserError
from framework.importers.commands import Command, parse_command, words_of_script
from framework.importers.open_instruct import SCRIPTS, read, render
from seqtune_testing import REPO

FIXTURES = REPO / "tests/fixtures/open_instruct"
SEED = REPO / "recipes/tulu3/gemma2-2b-sft.yaml"
ABSENT = object()


def seed_script() -> str:
    header = [line[4:] for line in SEED.read_text().splitlines() if line.startswith("#   ")]
    return "\n".join(line for line in header if "seqtune check" not in line)


def same(got: Any, want: Any) -> bool:
    """Equal, and of the same type all the way down (a string that loads as a number is not equal)."""
    if type(got) is not type(want):
        return False
    if isinstance(want, dict):
        return list(got) == list(want) and all(same(got[key], want[key]) for key in want)
    if isinstance(want, list):
        return len(got) == len(want) and all(same(a, b) for a, b in zip(got, want))
    return got == want


def at(data: dict, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return ABSENT
        data = data[part]
    return data


def wrongly_loaded(command: Command, tmp_path: Path) -> dict[str, tuple[Any, Any]]:
    """The keys whose value loads back from the written recipe other than the importer mapped it."""
    draft = read(command)
    path = tmp_path / "recipe.yaml"
    path.write_text(render(draft, command, str(path)))
    loaded, _ = read_recipe(path)
    return {key: (value, at(loaded.data, key)) for key, value in draft.values.items()
            if not same(at(loaded.data, key), value)}


@pytest.mark.parametrize("name", ["seed", *sorted(p.stem for p in FIXTURES.glob("*.sh"))])
def test_every_value_of_every_real_command_loads_back_as_mapped(name, tmp_path):
    script = seed_script() if name == "seed" else (FIXTURES / f"{name}.sh").read_text()
    command = parse_command(words_of_script(script, f"{name}.sh"), SCRIPTS)
    assert wrongly_loaded(command, tmp_path) == {}


def padded(text: str, length: int) -> str:
    return (text * (length // len(text) + 1))[:length]


VALUES = {
    "40 characters": padded("output/open_instruct_smollm2_lora_run_", 40),
    "80, with ' #' and ': '": padded("output/run # not a comment: part of it ", 80),
    "200, with quotes and flow characters": padded("""a "quoted" 'word', {braces} [list] & *star ! %pct @at `t` """,
                                                   200),
    "interpolation-like": "output/${oc.env:HOME}/run_\\${literal}_and_\\\\${more}",
    "a number, a boolean, a null, as text": "1e5",
    "yes": "yes",
    "null": "null",
    "leading dash and colon": "- x: y",
    "a line break": "first line\nsecond: line # not a comment",
    "unicode": "modèles/ünïcode-名前",
    "2,000 characters with spaces": padded("word ", 2000),
    "trailing space and hash": "run #1 ",
}


@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
def test_long_and_odd_values_load_back_as_mapped(value, tmp_path):
    flags = ["--output_dir", value, "--exp_name", value, "--model_name_or_path", value, "--model_revision", value,
             "--chat_template_name", value, "--dataset_mix_dir", value, "--dataset_local_cache_dir", value,
             "--dataset_mixer_list", value, "0.5", value + "_2", "100"]
    command = parse_command(["accelerate", "launch", "--main_process_ip", value, "open_instruct/finetune.py", *flags],
                            SCRIPTS)
    assert wrongly_loaded(command, tmp_path) == {}


def test_a_comment_after_a_long_value_is_still_a_comment(tmp_path):
    command = parse_command(["open_instruct/finetune.py", "--output_dir", "output/open_instruct_smollm2_lora_run_1"],
                            SCRIPTS)
    text = render(read(command), command, "recipe.yaml")
    assert "output_dir: output/open_instruct_smollm2_lora_run_1  # --output_dir\n" in text


def test_a_value_omegaconf_cannot_hold_is_an_error_naming_its_flag():
    command = parse_command(["open_instruct/finetune.py", "--model_revision", "???"], SCRIPTS)
    with pytest.raises(UserError, match=r"--model_revision: '\?\?\?' cannot be written in a recipe"):
        render(read(command), command, "recipe.yaml")
