"""The pictures a user sees first: loss.png (training), trends.png (`rain eval`), doc_lengths.png (`rain data report`)."""

import json
import math

import numpy as np
import pytest

from rain.data.report import LENGTH_BINS, length_axis
from rain.eval.plots import trend_panels, write_trends
from rain.train.metrics import plot_losses, smooth

PNG = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- loss.png


def test_smoothed_falling_line_tracks_it_without_lag():
    # A short run whose loss falls steadily from 9.0 to 8.3: the smoothed curve is the line itself, not a
    # running average still near the first (highest) point.
    line = list(np.linspace(9.0, 8.3, 8))
    smoothed = smooth(line, half_window=3)
    assert min(line) <= min(smoothed) and max(smoothed) <= max(line)
    assert smoothed == pytest.approx(line, abs=1e-9)


def test_smoothed_plateau_is_flat_at_its_level():
    assert smooth([2.5] * 50, half_window=5) == pytest.approx([2.5] * 50, abs=1e-12)
    # A loss that falls, then holds at 3.0: past the window, the plateau is drawn at 3.0, not above it.
    curve = list(np.linspace(6.0, 3.0, 10)) + [3.0] * 30
    assert smooth(curve, half_window=5)[15:] == pytest.approx([3.0] * 25, abs=1e-9)


def test_smoothing_quietens_noise_and_skips_a_diverged_point():
    rng = np.random.default_rng(0)
    noisy = 3.0 + rng.normal(0, 0.1, 400)
    assert np.std(smooth(noisy, half_window=10)) < np.std(noisy) / 3
    smoothed = smooth([4.0, 4.0, math.nan, 4.0, 4.0], half_window=1)
    assert smoothed == pytest.approx([4.0] * 5)


def test_loss_plot_is_written_for_a_run_with_training_records(tmp_path):
    records = [{"kind": "val", "step": 0, "tokens": 0, "val_loss": 9.2}]
    records += [{"kind": "train", "step": s, "tokens": 1024 * s, "loss": 9.0 - 0.1 * s} for s in range(1, 9)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert plot_losses(tmp_path).read_bytes()[:8] == PNG
    (tmp_path / "metrics.jsonl").write_text(json.dumps(records[0]) + "\n")
    assert plot_losses(tmp_path / "nothing") is None and plot_losses(tmp_path) is None


# ----------------------------------------------------------------------------- trends.png


def row(step, task, metric, value, **kw):
    return {"checkpoint": f"step_{step:07d}", "step": step, "tokens": 1000 * step, "task": task, "metric": metric,
            "value": value, "stderr": None, "n_shot": None if task == "val" else 0, "limit": None,
            "evaluator": "rain", **kw}


def val_rows(step, loss, source="all"):
    return [row(step, "val", "loss", loss, source=source), row(step, "val", "ppl", math.exp(loss), source=source),
            row(step, "val", "bpb", loss / 2, source=source)]


def test_trend_panels_have_units_start_at_step_zero_and_skip_perplexity():
    rows = [r for step, loss in ((0, 6.0), (2, 5.0), (4, 4.0)) for r in val_rows(step, loss)]
    rows += [row(s, "piqa", m, 0.5 + s / 100, stderr=0.05) for s in (0, 2, 4) for m in ("acc", "acc_norm")]
    panels = {p.title: p for p in trend_panels(rows)}
    # Perplexity is exp(loss): a panel of it would repeat the loss panel.
    assert list(panels) == ["piqa", "val bpb", "val loss"]
    assert {t: p.ylabel for t, p in panels.items()} == {
        "piqa": "accuracy", "val bpb": "bits per byte", "val loss": "loss (nats/token)"}
    assert [s.label for s in panels["piqa"].series] == ["0-shot acc", "0-shot acc_norm"]
    assert panels["piqa"].baselines == [0.5] and panels["val loss"].baselines == []
    assert panels["piqa"].series[0].stderr == [0.05] * 3
    assert all(s.tokens == [0, 2000, 4000] for p in panels.values() for s in p.series)  # from step 0
    assert panels["val loss"].series[0].values == [6.0, 5.0, 4.0]


def test_trend_panels_leave_out_what_cannot_be_drawn():
    rows = [row(2, "piqa", "acc", None), row(4, "piqa", "acc", math.nan),  # never scored: no piqa panel
            row(2, "arc_easy", "acc", 0.3), row(4, "arc_easy", "acc", math.nan),  # one point of two
            {**row(6, "arc_easy", "acc", 0.9), "tokens": None}]  # no token count: nowhere on the x axis
    panels = trend_panels(rows)
    assert [(p.title, [s.tokens for s in p.series]) for p in panels] == [("arc_easy", [[2000]])]
    assert trend_panels(val_rows(2, 5.0)[1:2]) == []  # perplexity alone: nothing to draw


def test_a_task_reporting_two_units_gets_a_panel_for_each():
    rows = [row(2, "lambada_openai", "acc", 0.3, evaluator="lm-eval"),
            row(2, "lambada_openai", "perplexity", 900.0, evaluator="lm-eval")]
    assert sorted(p.ylabel for p in trend_panels(rows)) == ["accuracy", "perplexity"]


def test_trends_png_written_only_when_something_is_drawable(tmp_path):
    rows = val_rows(0, 6.0) + val_rows(2, 5.0) + [row(2, "hellaswag", "acc_norm", 0.26, stderr=0.04)]
    written = write_trends(tmp_path / "a", rows, plot=True)
    assert [p.name for p in written] == ["trends.md", "trends.png"]
    assert written[1].read_bytes()[:8] == PNG
    assert "val ppl (all)" in written[0].read_text()  # perplexity stays in the table
    written = write_trends(tmp_path / "b", [r for r in rows if r["metric"] == "ppl"], plot=True)
    assert [p.name for p in written] == ["trends.md"]


# ----------------------------------------------------------------------------- doc_lengths.png


def histogram(lengths) -> np.ndarray:
    return np.histogram(lengths, LENGTH_BINS)[0]


def test_length_axis_fits_the_documents_not_the_bin_range():
    hist = {"code": histogram([14, 15, 17]), "prose": histogram([45, 50, 55]), "empty": histogram([])}
    lo, hi = length_axis(hist)
    assert 10 <= lo < 14 and 55 < hi <= 100  # the data, a bin to spare either side; not 1 .. 10M
    hist["long"] = histogram([200_000])
    assert 200_000 < length_axis(hist)[1] <= 1_000_000


def test_length_axis_of_no_documents_is_the_whole_range():
    assert length_axis({"a": histogram([])}) == (LENGTH_BINS[0], LENGTH_BINS[-1])
