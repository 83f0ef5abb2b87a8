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


def test_sizes_spanning_more_than_8x_use_a_log_axis_and_quality_is_symlog(tmp_path, figures):
    rows = [row("fp32", "torch", 516, 8.5, 0.0), row("w2", "llama.cpp", 40, 70.0, 0.9)]
    pareto_plots(rows, tmp_path)
    (fig,) = figures
    speed_ax, quality_ax = fig.axes
    assert speed_ax.get_xscale() == "log" and quality_ax.get_xscale() == "log"
    assert quality_ax.get_yscale() == "symlog" and "symlog" in quality_ax.get_ylabel()


def crowded():
    """Eight candidates within 4 MiB and 2 points of loss, a failed one at +7,000%, the base far away."""
    rows = [row(f"cand{i}", "llama.cpp", 100 + 0.5 * i, 60 + 0.2 * i, 0.02 + 0.002 * i) for i in range(8)]
    return rows + [row("failed", "torch", 110, 50, 70.0), row("fp32", "torch", 516, 8.5, 0.0, pareto=True)]


def references():
    return [row("llama.cpp Q4_0 + imatrix (reference)", "llama.cpp", 92, 61, 0.099, kind="q4_0", reference=True),
            row("llama.cpp Q4_K_M + imatrix (reference)", "llama.cpp", 105, 58, 0.045, kind="q4_k_m", reference=True)]


def test_one_failed_candidate_does_not_flatten_the_quality_axis(tmp_path, figures):
    pareto_plots(crowded(), tmp_path)
    (fig,) = figures
    quality_ax = fig.axes[1]
    tr = quality_ax.transData
    # on a linear axis +2% and +3.4% would be 0.02% of the height apart; on the symlog axis they are far apart
    y = [tr.transform((100, v))[1] for v in (2.0, 3.4, 7000.0)]
    assert (y[1] - y[0]) / (y[2] - y[0]) > 0.05


def test_labels_do_not_overlap(tmp_path, figures):
    import itertools

    pareto_plots(crowded(), tmp_path, references=references())
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert len(boxes) == 12                             # 10 candidates + 2 references
        assert not [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]
        assert all(ax.bbox.contains(b.x0, b.y0) and ax.bbox.contains(b.x1, b.y1) for b in boxes)


def test_the_reference_ladder_is_a_curve_in_the_legend(tmp_path, figures):
    pareto_plots(crowded(), tmp_path, references=references())
    (fig,) = figures
    for ax in fig.axes:
        (curve,) = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
        assert len(curve.get_xydata()) == 2 and list(curve.get_xdata()) == [92, 105]       # by size
        assert "reference" in curve.get_label()
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [curve.get_label()]
    (curve,) = [ln for ln in fig.axes[1].lines if ln.get_linestyle() == "--"]
    assert list(curve.get_ydata()) == pytest.approx([9.9, 4.5])


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
