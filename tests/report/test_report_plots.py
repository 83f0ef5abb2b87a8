"""report.plots: the Pareto plots are written (PNG and SVG) and show what the rows say."""

from __future__ import annotations

import pytest

import matplotlib  # noqa: F401

from edgellm.report.plots import pareto_plots  # noqa: E402


def row(recipe, runtime, size_mib, speed, loss, **kw):
    return {"model": "m/smollm2-135m", "recipe": recipe, "runtime": runtime, "size_bytes": size_mib * 2**20,
            "decode_tok_s": speed, "quality_loss": loss, "measured": True, **kw}


@pytest.fixture
def figures(monkeypatch):
    """The figures pareto_plots draws, kept open so their axes can be read."""
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    monkeypatch.undo()
    for fig in kept:
        plt.close(fig)


def test_png_and_svg_are_written(tmp_path, figures):
    rows = [row("fp32", "torch", 516, 8.5, 0.0, pareto=True), row("w8", "llama.cpp", 138, 57.5, 0.0059, chosen=True),
            row("w4", "llama.cpp", 111, 60.0, None)]                      # no quality: not plotted
    assert pareto_plots(rows, tmp_path) == ["pareto.png", "pareto.svg"]
    png = (tmp_path / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert (tmp_path / "pareto.svg").read_text().lstrip().startswith("<?xml")
    (fig,) = figures
    speed_ax, quality_ax = fig.axes
    assert len(speed_ax.lines) == 2 and len(quality_ax.lines) == 2
    chosen = [ln for ln in speed_ax.lines if ln.get_marker() == "*"]
    assert len(chosen) == 1 and tuple(chosen[0].get_xydata()[0]) == pytest.approx((138, 57.5))
    assert [c for ln in quality_ax.lines for c in ln.get_xydata()[0]] == pytest.approx([516, 0.0, 138, 0.59])
    assert speed_ax.get_ylabel() == "decode tok/s" and "perplexity increase" in quality_ax.get_ylabel()
    assert speed_ax.get_xscale() == "linear"             # 516 / 138 < 8: sizes stay on a linear axis


def test_sizes_spanning_more_than_8x_use_a_log_axis_and_quality_stays_linear(tmp_path, figures):
    rows = [row("fp32", "torch", 516, 8.5, 0.0), row("w2", "llama.cpp", 40, 70.0, 0.9)]
    pareto_plots(rows, tmp_path)
    (fig,) = figures
    speed_ax, quality_ax = fig.axes
    assert speed_ax.get_xscale() == "log" and quality_ax.get_xscale() == "log"
    assert quality_ax.get_yscale() == "linear"


def test_predicted_figures_and_classifiers_are_labelled(tmp_path, figures):
    rows = [row("fp32", "onnxruntime", 90, None, 0.0, examples_per_s=800.0),
            row("int8", "onnxruntime", 23, None, 0.004, examples_per_s=1500.0, measured=False)]
    pareto_plots(rows, tmp_path, lm=False, predicted=True)
    (fig,) = figures
    speed_ax, quality_ax = fig.axes
    assert speed_ax.get_ylabel() == "examples/s (predicted)" and "accuracy drop" in quality_ax.get_ylabel()
    assert "^ onnxruntime" in speed_ax.get_title()
    assert all(ln.get_markerfacecolor() != "none" for ln in speed_ax.lines)   # all predicted: none drawn hollow


def test_a_measured_loss_with_a_predicted_speed_is_hollow(tmp_path, figures):
    rows = [row("fp32", "torch", 516, 8.5, 0.0), row("w8", "torch", 216, 10.0, 0.0003, measured=False)]
    pareto_plots(rows, tmp_path)
    (fig,) = figures
    faces = [ln.get_markerfacecolor() for ln in fig.axes[0].lines]
    assert faces[0] != "none" and faces[1] == "none"
