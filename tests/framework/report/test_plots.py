"""The PNG plots: each writes an image matplotlib reads back, and draws what its inputs say."""
from __future__ import annotations

import sys

import pytest

from framework.errors import UserError
from framework.report import plots

pytest.importorskip("matplotlib")

TRAIN = [{"step": s, "loss": 4.0 / s, "lr": 1e-4} for s in range(1, 21)]
SUMMARY = {"summary": {"steps": 20, "final_loss": 0.2}}
CURVES = {"as the recipe is": [(256, 10.0), (512, 20.0), (1024, 40.0)],
          "model.gradient_checkpointing=true": [(256, 8.0), (512, 12.0), (1024, 18.0)]}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plots.matplotlib_pyplot().close("all")


def image_size(path) -> tuple[int, int]:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(path).shape[:2]
    return width, height


def lines_by_label(figure) -> dict:
    return {line.get_label(): line for line in figure.axes[0].get_lines()}


def test_loss_curve_writes_a_png_of_about_150_dpi(tmp_path):
    path = plots.loss_curve(TRAIN + [SUMMARY], tmp_path / "loss.png", "a run")
    assert path == tmp_path / "loss.png"
    width, height = image_size(path)
    assert 1000 <= width <= 1400 and 500 <= height <= 800


def test_loss_curve_draws_eval_only_when_recorded_and_skips_lines_without_the_keys():
    figure = plots._figure_loss(TRAIN + [SUMMARY, {"step": 5, "lr": 1.0}], "a run")
    assert list(lines_by_label(figure)) == ["train loss"]
    train = lines_by_label(figure)["train loss"]
    assert list(train.get_xdata()) == list(range(1, 21))
    ax = figure.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("optimizer step", "loss", "a run")

    evaluation = [{"step": 10, "eval_loss": 0.5}, {"step": 20, "eval_loss": 0.3}]
    drawn = lines_by_label(plots._figure_loss(TRAIN + evaluation + [SUMMARY], "a run"))
    assert list(drawn) == ["train loss", "eval loss"]
    assert list(drawn["eval loss"].get_xdata()) == [10, 20] and drawn["eval loss"].get_marker() == "o"


def test_loss_curve_is_log_scaled_only_when_the_loss_spans_more_than_10x():
    assert plots._figure_loss(TRAIN, "wide").axes[0].get_yscale() == "log"  # 4.0 down to 0.2
    narrow = [{"step": s, "loss": 2.0 - s / 100} for s in range(1, 21)]
    assert plots._figure_loss(narrow, "narrow").axes[0].get_yscale() == "linear"


def test_loss_curve_without_any_loss_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no loss to plot"):
        plots.loss_curve([SUMMARY, {"step": 1, "lr": 0.1}], tmp_path / "loss.png", "empty")
    assert not (tmp_path / "loss.png").exists()


def test_memory_chart_draws_each_curve_and_the_capacity_line(tmp_path):
    path = plots.memory_chart(CURVES, "RTX 3090", 24.0, tmp_path / "memory.png", "a recipe")
    width, height = image_size(path)
    assert width > 1000 and height > 500
    figure = plots._figure_memory(CURVES, "RTX 3090", 24.0, "a recipe")
    drawn = lines_by_label(figure)
    assert list(drawn)[:2] == list(CURVES)
    assert list(drawn["as the recipe is"].get_xdata()) == [256, 512, 1024]
    capacity = drawn["RTX 3090: 24 GiB"]
    assert list(capacity.get_ydata()) == [24.0, 24.0] and capacity.get_linestyle() == "--"
    ax = figure.axes[0]
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["256", "512", "1,024"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("max_seq_length (tokens)", "memory per GPU (GiB)")
    assert "does not fit" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_memory_chart_keeps_the_capacity_in_view_and_says_what_goes_above():
    far = {"as the recipe is": [(256, 20.0), (512, 200.0)], "saver": [(256, 18.0), (512, 22.0)]}
    ax = plots._figure_memory(far, "GPU", 24.0, "far").axes[0]
    assert ax.get_ylim()[1] < 60  # not stretched to 200 GiB
    assert any("as the recipe is: 200 GiB at 512" in t.get_text() for t in ax.texts)
    hopeless = {"as the recipe is": [(256, 300.0), (512, 400.0)]}
    assert plots._figure_memory(hopeless, "GPU", 24.0, "x").axes[0].get_ylim()[1] > 300  # its first point shows


def test_length_histogram_marks_candidates_with_the_share_longer(tmp_path):
    lengths = [100] * 6 + [300] * 3 + [700]
    path = plots.length_histogram(lengths, [256, 512, 1024, 2048, 4096], tmp_path / "lengths.png", "data")
    width, height = image_size(path)
    assert width > 1000 and height > 500
    ax = plots._figure_lengths(lengths, [256, 512, 1024, 2048, 4096], "data").axes[0]
    marked = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert marked == [256, 512, 1024]  # 2,048 and beyond would only say 0% and stretch the axis
    (top,) = ax.child_axes  # the shares, on an axis above the lines
    assert [t.get_text() for t in top.get_xticklabels()] == ["40.0%", "10.0%", "0.0%"]
    assert sum(patch.get_height() for patch in ax.patches) == len(lengths)  # every row in one bin
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_xscale()) == ("tokens per row", "rows", "log")


def test_length_histogram_of_no_rows_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no token lengths"):
        plots.length_histogram([], [256], tmp_path / "lengths.png", "empty")


def test_a_path_that_is_not_png_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="ending in .png"):
        plots.loss_curve(TRAIN, tmp_path / "loss.pdf", "a run")


def test_without_matplotlib_one_line_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(UserError) as caught:
        plots.loss_curve(TRAIN, tmp_path / "loss.png", "a run")
    assert caught.value.problems == ["plots need matplotlib: pip install 'seqtune[plot]'"]
