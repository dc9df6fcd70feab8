"""Figures for a paper (featcache.plots): row-normalised confusion data, 150 dpi PNGs plus the
requested formats, tick labels that do not overlap, a heatmap colorbar in the cells' unit, and
a loss curve in every training run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_cache import make_feature_cache
from PIL import Image

from featcache import plots
from featcache.cli import main
from featcache.errors import FeatcacheError


def test_confusion_data_is_row_normalised() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 1, 1, 1, 1, 0, 2, 2, 1])
    counts, norm = plots.confusion_data(labels, pred, 4)
    assert counts.tolist() == [[1, 2, 0, 0], [0, 2, 0, 0], [1, 1, 2, 0], [0, 0, 0, 0]]
    np.testing.assert_allclose(norm[:3].sum(1), 1.0)
    np.testing.assert_allclose(norm[0], [1 / 3, 2 / 3, 0, 0])
    np.testing.assert_allclose(norm[2], [0.25, 0.25, 0.5, 0])
    assert np.isnan(norm[3]).all()  # class 3 has no test row
    fig = plots.confusion_figure(norm, ["a", "b", "c", "d"], title="run-x: confusion")
    ax, cbar = fig.axes  # the matrix and its colorbar
    np.testing.assert_allclose(np.ma.filled(ax.images[0].get_array(), np.nan), 100 * norm)
    assert "%" in cbar.get_ylabel() and "run-x" in ax.get_title()
    plots.plt().close(fig)


def test_formats() -> None:
    assert plots.parse_formats("png,pdf") == ("png", "pdf")
    assert plots.parse_formats("svg") == ("png", "svg") and plots.parse_formats(" PDF , png") == ("png", "pdf")
    with pytest.raises(FeatcacheError, match="unknown format 'jpeg'"):
        plots.parse_formats("png,jpeg")


def _overlaps(boxes: list) -> bool:
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


@pytest.mark.parametrize(("C", "long"), [(6, False), (8, True), (20, True), (60, True)])
def test_per_class_labels_do_not_overlap(C: int, long: bool) -> None:
    rng = np.random.default_rng(0)
    counts = np.sort(rng.integers(1, 500, C))[::-1].astype(float)
    groups = {"many": [c for c in range(C) if counts[c] > 100],
              "medium": [c for c in range(C) if 20 <= counts[c] <= 100],
              "few": [c for c in range(C) if counts[c] < 20]}
    names = [f"a rather long class name {c}" if long else f"c{c}" for c in range(C)]
    fig = plots.per_class_figure(rng.random(C), 0.05 * rng.random(C), names, title="r",
                                 train_counts=counts, groups=groups)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    ticks = ax.get_yticklabels() if C > 20 else ax.get_xticklabels()
    assert len(ticks) == C
    assert not _overlaps([t.get_window_extent(renderer) for t in ticks])
    assert any(type(c).__name__ == "ErrorbarContainer" for c in ax.containers)  # std over seeds
    legend = ax.get_legend()
    assert legend is not None and legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
    plots.plt().close(fig)


def test_heatmap_colorbar_is_in_the_cells_unit() -> None:
    val = np.array([[0.5, 0.6], [0.7, np.nan]])
    fig = plots.heatmap_figure(val, val - 0.1, [0.01, 0.1], [0.0, 5e-4], x="lr", y="weight_decay",
                               select="balanced_acc")
    ax, cbar = fig.axes
    image = ax.images[0]
    np.testing.assert_allclose(np.ma.filled(image.get_array(), np.nan), 100 * val)
    assert "(%)" in cbar.get_ylabel()
    texts = [t.get_text() for t in ax.texts]
    assert "50.0\n(40.0)" in texts  # the cells print percent, like the colorbar
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "5e-4"]
    plots.plt().close(fig)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return make_feature_cache(tmp_path_factory.mktemp("plots") / "c.h5", num_classes=5,
                              counts=[150, 80, 40, 20, 12], dim=8, test_per_class=8, seed=5)


def _png_dpi(path) -> float:  # noqa: ANN001
    with Image.open(path) as im:
        return float(im.info["dpi"][0])


def test_runs_write_figures_at_150_dpi_in_every_requested_format(cache, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train-head", "--cache", str(cache), "--epochs", "3", "--seeds", "0,1",
                                    "--device", "cpu", "--plot-format", "png,pdf", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("confusion", "per_class_acc", "loss_curve"):
        assert _png_dpi(out / f"{name}.png") == pytest.approx(150, abs=0.5)
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF")
        assert not (out / f"{name}.svg").exists()
    doc = json.loads((out / "metrics.json").read_text())
    assert all(len(m["epoch_loss"]) == 3 for m in doc["per_seed"])  # what the loss curve draws
    assert json.loads((out / "config.json").read_text())["plot_format"] == "png,pdf"
    # TFA-LT records both stage-I branches and stage II; a grid writes SVG heatmaps on request
    tfa = tmp_path / "tfa"
    res = CliRunner().invoke(main, ["train-head", "--cache", str(cache), "--ensemble", "logit", "--epochs", "2",
                                    "--ensemble-epochs", "2", "--seeds", "0", "--device", "cpu", "--out", str(tfa)])
    assert res.exit_code == 0, res.output
    seed = json.loads((tfa / "metrics.json").read_text())["per_seed"][0]
    assert {"stage1_epoch_loss_wrs", "stage1_epoch_loss_rus", "stage2_epoch_loss"} <= set(seed)
    assert set(plots.loss_curves([seed])) == {"stage I (WRS)", "stage I (RUS)", "stage II"}
    assert _png_dpi(tfa / "loss_curve.png") == pytest.approx(150, abs=0.5)
    grid = tmp_path / "grid"
    res = CliRunner().invoke(main, ["grid", "--cache", str(cache), "--param", "lr=0.01,0.1", "--param",
                                    "weight_decay=0,5e-4", "--epochs", "2", "--seeds", "0", "--device", "cpu",
                                    "--plot-format", "svg", "--out", str(grid)])
    assert res.exit_code == 0, res.output
    assert _png_dpi(grid / "heatmap_lr__weight_decay.png") == pytest.approx(150, abs=0.5)
    assert b"<svg" in (grid / "heatmap_lr__weight_decay.svg").read_bytes()[:500]
    assert (grid / "loss_curve.svg").exists()
    bad = CliRunner().invoke(main, ["train-head", "--cache", str(cache), "--plot-format", "gif"])
    assert bad.exit_code != 0 and "unknown format 'gif'" in bad.output


def test_finetune_writes_its_loss_curve_in_the_requested_formats(tmp_path) -> None:  # noqa: ANN001
    from featcache.pipelines import finetune

    result = finetune.run(finetune.FinetuneConfig(
        dataset="synthetic-lt", dataset_options={"max_per_class": 20, "test_per_class": 2}, epochs=2,
        batch_size=32, seeds=(0,), progress=False, plot_format="png,svg", out=str(tmp_path / "ft")))
    out = result.out_dir
    assert _png_dpi(out / "loss_curve.png") == pytest.approx(150, abs=0.5)
    assert (out / "loss_curve.svg").is_file() and (out / "confusion.svg").is_file()
    with pytest.raises(FeatcacheError, match="unknown format"):
        finetune.FinetuneConfig(dataset="synthetic-lt", plot_format="bmp")


# --------------------------------------------------------------------------------------
# The MedMNIST benchmark's figures (drawn here, written by bench_medmnist.write_outputs)


def _bench_summary(per_class: bool):  # noqa: ANN202
    """A summary as the benchmark writes it: 5 backbones × 2 resizes × 4 sizes (full split),
    plus per-class cells at 2, 10 and 50 images per class for the data-efficiency figure."""
    import polars as pl

    rows = [{"dataset": "d", "per_class": None, "backbone": f"backbone-{k}", "method": "linear", "resize": r,
             "size": s, "acc": 0.5 + 0.01 * k, "acc_std": 0.01, "auc": 0.6, "auc_std": 0.01}
            for k in range(5) for r in ("scale", "pad") for s in (28, 64, 128, 224)]
    if per_class:
        rows += [dict(r, per_class=n, acc=r["acc"] - 0.1 / n) for r in rows[:4] for n in (2, 10, 50)]
    return pl.DataFrame(rows)


def _panels_under_a_legend(fig) -> list[str]:  # noqa: ANN001
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends
    return [ax.get_title() for legend in legends for ax in fig.axes
            if legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))]


def test_bench_plot_legend_does_not_cover_the_data(tmp_path) -> None:  # noqa: ANN001
    fig = plots.size_resize_figure(_bench_summary(per_class=False))
    assert [ax.get_title() for ax in fig.axes] == ["d ACC", "d AUC"]
    assert len(fig.axes[0].get_legend_handles_labels()[1]) == 5 * 2  # backbone × resize lines
    plots.save(fig, tmp_path / "size_resize")
    assert _panels_under_a_legend(fig) == [], "legend over a panel"


def test_bench_plots_are_written_at_150_dpi_in_every_requested_format(tmp_path) -> None:  # noqa: ANN001
    written = plots.write_bench_plots(tmp_path, _bench_summary(per_class=True), per_class=True,
                                      formats=("png", "pdf"))
    assert sorted(p.name for p in written) == ["data_efficiency.pdf", "data_efficiency.png",
                                               "size_resize.pdf", "size_resize.png"]
    for name in ("size_resize", "data_efficiency"):
        assert _png_dpi(tmp_path / f"{name}.png") == pytest.approx(150, abs=0.5)
        assert (tmp_path / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    fig = plots.data_efficiency_figure(_bench_summary(per_class=True))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "10", "50"]
    # every backbone × method × size × resize line has its full-split figure as a dotted line
    assert len([ln for ln in ax.lines if ln.get_linestyle() == ":"]) == 5 * 2 * 4
    plots.plt().close(fig)
    assert [p.name for p in plots.write_bench_plots(tmp_path / ".", _bench_summary(per_class=False),
                                                    per_class=False)] == ["size_resize.png"]
