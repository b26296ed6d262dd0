"""The docs site: `mkdocs build --strict` passes, and fails on a broken link; the generated plugin
hook page is current; every shipped recipe validates against the published JSON Schema."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from framework import hookspecs
from framework.config import hook_reference, load_recipe

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "recipe.schema.json").read_text(encoding="utf-8"))
REGENERATE = "run `python -m framework.config.hook_reference` to regenerate it"
# the schema's own dialect, and the older one many editors' language servers implement
VALIDATORS = [jsonschema.Draft202012Validator, jsonschema.Draft7Validator]


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner is not a build warning
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config),
                           "--site-dir", str(site)], cwd=config.parent, env=env,
                          capture_output=True, text=True, timeout=300)


def _copy_of_the_site(dest: Path) -> Path:
    """docs/ and mkdocs.yml copied; the rest of the repository linked, so links out of docs/
    still find their files (the hook checks those exist)."""
    shutil.copytree(ROOT / "docs", dest / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "mkdocs.yml", dest / "mkdocs.yml")
    for entry in ROOT.iterdir():
        if entry.name not in ("docs", "mkdocs.yml") and not entry.name.startswith("."):
            (dest / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return dest / "mkdocs.yml"


# --- the site ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_site_builds_strict_with_every_page_in_the_nav(tmp_path):
    result = _mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    home = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    for title in ("Guide", "Reference", "Extending", "Benchmarks", "Plugin hooks", "Recipe reference"):
        assert title in home
    # published as a file, with the exact bytes editors and validators download
    assert (tmp_path / "site" / "recipe.schema.json").read_bytes() == \
        (ROOT / "docs" / "recipe.schema.json").read_bytes()
    # a link to a repository file outside docs/ becomes its path, not a dead link
    plugins_page = (tmp_path / "site" / "writing-plugins" / "index.html").read_text(encoding="utf-8")
    assert "<code>framework/hookspecs.py</code>" in plugins_page
    assert "../framework/hookspecs.py" not in plugins_page


@pytest.mark.slow
def test_links_out_of_docs_go_to_the_source_url_when_set(tmp_path):
    config = _copy_of_the_site(tmp_path / "repo")
    with config.open("a", encoding="utf-8") as f:
        f.write("\nextra:\n  source_url: https://example.org/seqtune/blob/main/\n")
    result = _mkdocs_build(config, tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    page = (tmp_path / "site" / "writing-plugins" / "index.html").read_text(encoding="utf-8")
    assert 'href="https://example.org/seqtune/blob/main/framework/hookspecs.py"' in page
    assert 'href="https://example.org/seqtune/blob/main/examples/seqtune-markdown"' in page


def test_a_broken_link_fails_the_strict_build(tmp_path):
    config = _copy_of_the_site(tmp_path / "repo")
    page = tmp_path / "repo" / "docs" / "packing.md"
    page.write_text(page.read_text(encoding="utf-8") + "\n\nSee [nowhere](no-such-page.md), "
                    "[no anchor](data.md#no-such-section) and [no file](../framework/no_such.py).\n",
                    encoding="utf-8")
    result = _mkdocs_build(config, tmp_path / "site")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "no-such-page.md" in output  # a missing page (mkdocs)
    assert "no-such-section" in output  # a missing anchor (mkdocs: validation.links.anchors)
    assert "the repository has no 'framework/no_such.py'" in output  # a missing file (docs/hooks.py)


# --- the generated plugin hook reference ---------------------------------------------------------

def test_committed_plugin_hooks_page_equals_the_generated_one():
    committed = ROOT / hook_reference.PAGE
    assert committed.is_file(), f"{hook_reference.PAGE} is missing; {REGENERATE}"
    assert committed.read_text(encoding="utf-8") == hook_reference.render(), \
        f"{hook_reference.PAGE} is out of date with framework/hookspecs.py; {REGENERATE}"


def test_hook_reference_main_writes_the_page_and_check_reports_drift(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hook_reference, "ROOT", tmp_path)
    assert hook_reference.main(["--check"]) == 1  # nothing generated yet
    assert hook_reference.main([]) == 0
    assert hook_reference.main(["--check"]) == 0

    (tmp_path / hook_reference.PAGE).write_text("# stale\n")
    capsys.readouterr()
    assert hook_reference.main(["--check"]) == 1
    assert "python -m framework.config.hook_reference" in capsys.readouterr().err


def test_every_hook_has_a_section_with_its_signature_and_docstring():
    page = hook_reference.render()
    names = [f.__name__ for f in hook_reference.hooks()]
    assert "seqtune_register_losses" in names and "seqtune_train_end" in names
    headings = [line[4:] for line in page.splitlines() if line.startswith("### ")]
    assert headings == sorted(names, key=lambda n: not n.startswith("seqtune_register_"))
    assert page.index("## Registration hooks") < page.index("### seqtune_register_losses") \
        < page.index("## Lifecycle hooks") < page.index("### seqtune_train_start")
    assert "def seqtune_register_losses() -> Factories\n" in page
    assert "def seqtune_log(step: int, metrics: dict[str, float]) -> None\n" in page
    assert "def seqtune_train_start(run: RunInfo) -> None\n" in page
    for fn in hook_reference.hooks():
        first_line = fn.__doc__.strip().splitlines()[0]
        assert first_line in page


def test_the_contract_tables_become_markdown_tables():
    page = hook_reference.render()
    assert "=====" not in page
    assert "| family | factory(positional..., \\*, options) | returns |" in page
    assert "| truncation | (input_ids: list, labels: list, max_seq_length: int) |" in page
    # two declared values of one family stay two entries, not one run-on sentence
    assert "factory.chunk_tokens -> int (vocab_size, options)<br>factory.holds_head_gradient" in page


def test_a_new_hook_appears_without_touching_the_generator(monkeypatch):
    def seqtune_register_widgets() -> hookspecs.Factories:
        """Widgets (`widget.name`), for this test only."""

    monkeypatch.setattr(hookspecs, "seqtune_register_widgets",
                        hookspecs.hookspec(seqtune_register_widgets), raising=False)
    page = hook_reference.render()
    assert "### seqtune_register_widgets" in page
    assert "Widgets (`widget.name`), for this test only." in page
    assert page.index("### seqtune_register_widgets") < page.index("## Lifecycle hooks")


# --- recipes against the published JSON Schema ---------------------------------------------------

def _is_recipe(path: Path) -> bool:
    """Every YAML file under recipes/; under examples/, those shaped like a recipe."""
    if path.is_relative_to(ROOT / "recipes"):
        return True
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return isinstance(data, dict) and bool({"output_dir", "data", "extends"} & set(data))


SHIPPED = sorted(p for pattern in ("recipes/**/*.yaml", "examples/**/*.yaml")
                 for p in ROOT.glob(pattern) if _is_recipe(p))
IDS = [p.relative_to(ROOT).as_posix() for p in SHIPPED]


def _errors(validator: type, data: object) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '<recipe>'}: {e.message}"
            for e in validator(SCHEMA).iter_errors(data)]


def test_the_shipped_recipes_are_found():
    assert {"recipes/quickstart.yaml", "recipes/smollm2/lora.yaml",
            "examples/seqtune-markdown/example/recipe.yaml"} <= set(IDS)


@pytest.mark.parametrize("validator", VALIDATORS, ids=lambda v: v.__name__)
@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_every_shipped_recipe_validates_after_extends_and_interpolation(path, validator):
    data = load_recipe(path).data  # plain data: extends merged, ${...} resolved
    assert _errors(validator, data) == []


@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_every_shipped_recipe_validates_as_an_editor_sees_it(path):
    """As written, before `extends:` is merged: only keys a base provides may be missing."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    errors = jsonschema.Draft202012Validator(SCHEMA).iter_errors(data)
    left_to_base = "extends" in data
    assert [e.message for e in errors if not (left_to_base and e.validator == "required"
                                              and not e.absolute_path)] == []


@pytest.mark.parametrize("validator", VALIDATORS, ids=lambda v: v.__name__)
def test_a_wrong_recipe_fails_validation(validator):
    data = copy.deepcopy(load_recipe(ROOT / "recipes" / "quickstart.yaml").data)
    assert _errors(validator, data) == []
    data["train"]["max_step"] = 5  # unknown key (max_steps)
    data["seed"] = "seven"  # wrong type
    errors = _errors(validator, data)
    assert len(errors) == 2, errors
    assert any(e.startswith("train:") and "max_step" in e for e in errors), errors
    assert any(e.startswith("seed:") and "integer" in e for e in errors), errors
