"""Every figure featcache writes, drawn for a paper: one home for matplotlib.

Conventions, the same in every figure: saved at :data:`DPI` (150) with ``bbox_inches="tight"``
so no label is clipped; PNG always, PDF or SVG as well on request (``--plot-format png,pdf``,
:func:`parse_formats`, :func:`save`); legends outside the axes or at matplotlib's ``best``
place, never over the data; user text (class and run names) passed through :func:`text` so
a ``$`` never starts mathtext; colorbars labelled in the units of the cells.

The figures of a run directory (:func:`write_run_plots`, called by
:class:`featcache.runs.RunWriter`):

- ``confusion.<fmt>``: the row-normalised confusion matrix summed over seeds
  (:func:`confusion_data`), cells in % of the true class, a colorbar, the run in the title;
- ``per_class_acc.<fmt>``: per-class test accuracy, mean ± std over seeds as error bars, the
  classes ordered by training images and the many/medium/few groups shaded; vertical bars
  with upright labels up to 20 classes, horizontal bars above (labels never overlap);
- ``loss_curve.<fmt>``: the mean training loss of every epoch, one line per seed and per
  loss a run records (``epoch_loss``, TFA-LT's stage I ``stage1_epoch_loss_wrs`` / ``_rus``);
- ``reliability.png`` (:func:`reliability_figure`, written by the run writer): accuracy per
  confidence bin (15 bins, :mod:`featcache.calibration`), the calibrated curve beside the raw
  one after temperature scaling.

``featcache compare`` and a grid over ``shots`` draw :func:`shots_curve_figure`.

``featcache grid``'s heatmaps (:func:`heatmap_figure`) and the HTML report's own figures
(:mod:`featcache.report`: :func:`group_bars_figure`, :func:`reliability_bars_figure`,
:func:`shots_knob_figure`, besides the confusion and per-class figures above) are drawn here too.

The MedMNIST benchmark's figures (:func:`write_bench_plots`, called by
:func:`featcache.pipelines.bench_medmnist.write_outputs`), from its ``summary`` table (one
row per selected cell, mean ± std over seeds), one column of panels per data set, ACC above
AUC, one legend below every panel:

- ``size_resize.<fmt>`` (:func:`size_resize_figure`): ACC and AUC against image size, one
  line per backbone × method × resize (solid: scale, dashed: pad or pad-norm);
- ``data_efficiency.<fmt>`` (:func:`data_efficiency_figure`, runs with ``--per-class``): ACC
  and AUC against training images per class, the full training split as a dotted line.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featcache.errors import FeatcacheError

DPI = 150
FORMATS = ("png", "pdf", "svg")
GROUPS = ("many", "medium", "few")
GROUP_COLOURS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
# per_seed keys holding one loss per epoch, and how the loss curve names them
LOSS_KEYS = {"epoch_loss": "training loss", "stage1_epoch_loss_wrs": "stage I (WRS)",
             "stage1_epoch_loss_rus": "stage I (RUS)", "stage2_epoch_loss": "stage II"}


def plt():  # noqa: ANN201
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def text(s: object) -> str:
    """User text for matplotlib: a ``$`` would start mathtext (and fail on an odd count)."""
    return str(s).replace("$", r"\$")


def parse_formats(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"png,pdf"`` -> ``("png", "pdf")``: the figure formats to write. PNG is always
    written (the report and the HTML page read it), first; an unknown format is an error."""
    items = [s.strip().lower().lstrip(".") for s in (spec.split(",") if isinstance(spec, str) else spec)]
    items = [s for s in items if s]
    bad = [s for s in items if s not in FORMATS]
    if bad:
        raise FeatcacheError(f"--plot-format: unknown format '{bad[0]}'; choose from "
                             f"{', '.join(FORMATS)} (comma-separated, e.g. png,pdf).")
    return ("png", *dict.fromkeys(s for s in items if s != "png"))


def save(fig, stem: str | Path, formats: Sequence[str] = ("png",)) -> list[Path]:  # noqa: ANN001
    """Write ``fig`` as ``stem.<fmt>`` for every format (at :data:`DPI`, tight bounding box)
    and close it; returns the files written."""
    stem = Path(stem)
    paths = []
    for fmt in parse_formats(formats):
        path = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(path, format=fmt, dpi=DPI, bbox_inches="tight")
        paths.append(path)
    plt().close(fig)
    return paths


def png_bytes(fig) -> bytes:  # noqa: ANN001
    """``fig`` as PNG bytes (at :data:`DPI`, tight), closed; for pages that embed figures."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt().close(fig)
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# Confusion matrix


def confusion_data(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, normalised)``: ``[C, C]`` counts (rows = true class, columns = predicted)
    and the same divided by each row's total, so every row with test rows sums to 1 (a class
    with no test row is a row of NaN)."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(pred)), 1)
    return counts, normalise_rows(counts)


def normalise_rows(counts: np.ndarray) -> np.ndarray:
    """Each row of ``counts`` divided by its sum (NaN where the sum is 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.where(totals > 0, totals, 1), np.nan)


def confusion_figure(normalised: np.ndarray, class_names: Sequence[str], *, title: str):  # noqa: ANN201
    """The row-normalised confusion matrix: cells in % of the true class (numbers printed up
    to 20 classes, tick labels up to 40), a colorbar in the same unit."""
    C = normalised.shape[0]
    side = min(2.5 + 0.45 * C, 14.0)
    fig, ax = plt().subplots(figsize=(side + 1.2, side))
    pct = 100 * normalised
    im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    names = [text(n) for n in (class_names if len(class_names) == C else range(C))]
    if C <= 40:
        size = 8 if C <= 15 else 6
        ax.set_xticks(range(C), names, rotation=45 if C <= 15 else 90, ha="right" if C <= 15 else "center",
                      rotation_mode="anchor" if C <= 15 else "default", fontsize=size)
        ax.set_yticks(range(C), names, fontsize=size)
    if C <= 20:
        for (i, j), v in np.ndenumerate(pct):
            if math.isfinite(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if v > 50 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(text(title), fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of the true class")
    return fig


# --------------------------------------------------------------------------------------
# Per-class accuracy


def _group_of(groups: dict[str, Sequence[int]] | None, C: int) -> list[str | None]:
    member: list[str | None] = [None] * C
    for g, cs in (groups or {}).items():
        for c in cs:
            if 0 <= c < C:
                member[c] = g
    return member


def per_class_figure(mean: np.ndarray, std: np.ndarray | None, class_names: Sequence[str], *,
                     title: str, train_counts: np.ndarray | None = None,
                     groups: dict[str, Sequence[int]] | None = None):  # noqa: ANN201
    """Per-class accuracy (fractions in [0, 1], shown in %) with ``std`` over seeds as error
    bars. Classes are ordered by ``train_counts`` (most images first) when given; the
    many/medium/few ``groups`` are shaded behind the bars. Up to 20 classes: vertical bars,
    labels upright (level when short); more: horizontal bars, one readable label per class
    (the figure grows)."""
    mean = 100 * np.asarray(mean, dtype=float)
    std = None if std is None else 100 * np.asarray(std, dtype=float)
    C = mean.size
    names = [text(n) for n in (class_names if len(class_names) == C else range(C))]
    order = (np.argsort(-np.asarray(train_counts, dtype=float), kind="stable")
             if train_counts is not None else np.arange(C))
    member = _group_of(groups, C)
    horizontal = C > 20
    pos = np.arange(C)
    if horizontal:
        fig, ax = plt().subplots(figsize=(6.5, max(3.0, 0.22 * C + 1.2)))
    else:
        fig, ax = plt().subplots(figsize=(max(5.0, 0.45 * C + 2.0), 4.0))
    # group shading: one band per run of consecutive classes of the same group
    shaded: set[str] = set()
    start = 0
    for k in range(1, C + 1):
        if k == C or member[order[k]] != member[order[start]]:
            g = member[order[start]]
            if g is not None:
                span = (ax.axhspan if horizontal else ax.axvspan)
                span(start - 0.5, k - 0.5, color=GROUP_COLOURS[g], alpha=0.12, linewidth=0,
                     label=None if g in shaded else f"{g}-shot classes")
                shaded.add(g)
            start = k
    values = np.nan_to_num(mean[order], nan=0.0)
    err = None if std is None else np.nan_to_num(std[order], nan=0.0)
    colours = [GROUP_COLOURS.get(member[c], "tab:gray") for c in order]
    if horizontal:
        ax.barh(pos, values, xerr=err, color=colours, capsize=2, height=0.7,
                error_kw={"elinewidth": 0.8})
        ax.set_yticks(pos, [names[c] for c in order], fontsize=7 if C <= 60 else 5)
        ax.invert_yaxis()  # most images on top
        ax.set_xlim(0, 105)
        ax.set_xlabel("test accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.bar(pos, values, yerr=err, color=colours, capsize=3, width=0.7)
        # short names stay level; longer ones stand upright, so neighbours never touch
        upright = C > 12 or max((len(n) for n in names), default=0) > 5
        ax.set_xticks(pos, [names[c] for c in order], rotation=90 if upright else 0, fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    missing = [names[c] for c in order if not math.isfinite(mean[c])]
    sub = " (mean ± std over seeds" + (", classes by training images" if train_counts is not None else "") + ")"
    ax.set_title(text(title) + sub + (f"\nno test rows: {', '.join(missing[:5])}" if missing else ""),
                 fontsize=9)
    if shaded:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


# --------------------------------------------------------------------------------------
# Loss curves


def loss_curves(per_seed: Sequence[dict]) -> dict[str, list[tuple[int, list[float]]]]:
    """The per-epoch losses a run records, ``{label: [(seed, losses), ...]}`` (see
    :data:`LOSS_KEYS`); empty when the run recorded none."""
    out: dict[str, list[tuple[int, list[float]]]] = {}
    for m in per_seed:
        for key, label in LOSS_KEYS.items():
            values = m.get(key)
            if isinstance(values, list) and values and all(isinstance(v, int | float) or v is None for v in values):
                out.setdefault(label, []).append((int(m.get("seed", 0)),
                                                  [math.nan if v is None else float(v) for v in values]))
    return out


def loss_figure(curves: dict[str, list[tuple[int, list[float]]]], *, title: str):  # noqa: ANN201
    """Mean training loss per epoch: one colour per loss, one line per seed (seeds faint,
    their mean bold when there are several); legend at the best place."""
    fig, ax = plt().subplots(figsize=(6.0, 3.8))
    colours = iter(("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"))
    for label, seeds in curves.items():
        colour = next(colours, "tab:gray")
        for _, values in seeds:
            ax.plot(np.arange(1, len(values) + 1), values, color=colour,
                    alpha=0.35 if len(seeds) > 1 else 1.0, linewidth=1)
        lengths = {len(v) for _, v in seeds}
        if len(seeds) > 1 and len(lengths) == 1:
            mean = np.nanmean(np.array([v for _, v in seeds]), 0)
            ax.plot(np.arange(1, mean.size + 1), mean, color=colour, linewidth=2,
                    label=f"{label} (mean of {len(seeds)} seeds)")
        else:
            ax.plot([], [], color=colour, label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss")
    ax.grid(alpha=0.3)
    ax.set_title(text(title), fontsize=10)
    ax.legend(loc="best", fontsize=8)
    return fig


# --------------------------------------------------------------------------------------
# Grid heatmaps


def heatmap_figure(val: np.ndarray, test: np.ndarray, xs: Sequence, ys: Sequence, *, x: str, y: str,
                   select: str):  # noqa: ANN201
    """Mean validation ``select`` (fractions, shown in %) over knobs ``x`` × ``y``, each
    cell's test figure below in brackets; the colorbar in % like the cells."""
    from featcache.tables import fmt_number

    val_pct, test_pct = 100 * np.asarray(val, float), 100 * np.asarray(test, float)
    fig, ax = plt().subplots(figsize=(2.2 + 1.1 * len(xs), 1.6 + 0.7 * len(ys)))
    im = ax.imshow(val_pct, cmap="viridis", aspect="auto")
    label = lambda v: fmt_number(v) if isinstance(v, float) else str(v)  # noqa: E731
    ax.set_xticks(range(len(xs)), [label(v) for v in xs], rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(ys)), [label(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    finite = val_pct[np.isfinite(val_pct)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (r, c), v in np.ndenumerate(val_pct):
        if math.isfinite(v):
            ax.text(c, r, f"{v:.1f}\n({test_pct[r, c]:.1f})", ha="center", va="center",
                    fontsize=7, color="white" if v < mid else "black")
    ax.set_title(f"val {select} % (test % in brackets), best over other knobs", fontsize=9)
    fig.colorbar(im, ax=ax, label=f"val {select} (%)")
    return fig


# --------------------------------------------------------------------------------------
# A run directory's figures


def write_run_plots(out_dir: Path, *, title: str, class_names: Sequence[str],
                    confusion: np.ndarray | None, per_seed: Sequence[dict],
                    train_counts: Sequence[np.ndarray] = (),
                    groups: dict[str, Sequence[int]] | None = None,
                    formats: Sequence[str] = ("png",)) -> list[Path]:
    """Write the run's confusion matrix, per-class accuracy and loss curve (see the module
    docstring) in ``formats``; returns the files written."""
    from featcache.metrics import groups_from_counts

    out_dir = Path(out_dir)
    written: list[Path] = []
    if confusion is not None:
        fig = confusion_figure(normalise_rows(confusion), class_names,
                               title=f"{title}: confusion, % of the true class (all seeds)")
        written += save(fig, out_dir / "confusion", formats)
    C = len(class_names)
    accs = [m.get("per_class_acc") for m in per_seed]
    if accs and all(isinstance(a, list) and len(a) == C for a in accs):
        arr = np.array([[math.nan if v is None else v for v in a] for a in accs], dtype=float)
        with warnings.catch_warnings():  # a class missing from every seed: NaN, silently
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, std = np.nanmean(arr, 0), np.nanstd(arr, 0)
        counts = np.mean(train_counts, axis=0) if len(train_counts) else None
        if groups is None and counts is not None:
            groups = groups_from_counts(counts)
        fig = per_class_figure(mean, std if len(accs) > 1 else None, class_names, title=title,
                               train_counts=counts, groups=groups)
        written += save(fig, out_dir / "per_class_acc", formats)
    curves = loss_curves(per_seed)
    if curves:
        written += save(loss_figure(curves, title=f"{title}: training loss"), out_dir / "loss_curve", formats)
    return written



# --------------------------------------------------------------------------------------
# Calibration and shots


def reliability_figure(labels: np.ndarray, logits: np.ndarray, *, title: str,
                       calibrated: np.ndarray | None = None, bins: int = 15):  # noqa: ANN201
    """Reliability diagram: accuracy per top-label confidence bin against the diagonal, with
    the ECE in the legend and the share of rows per bin as grey bars; ``calibrated`` (the
    temperature-scaled logits, ``logits / T`` per seed) adds the calibrated curve."""
    from featcache.calibration import probabilities, reliability_bins

    fig, ax = plt().subplots(figsize=(4.6, 4.4))
    curves = [("raw", logits, "tab:blue")]
    if calibrated is not None:
        curves.append(("temperature-scaled", calibrated, "tab:orange"))
    for name, z, colour in curves:
        r = reliability_bins(labels, probabilities(z), bins)
        ok = r["count"] > 0
        centres = (r["edges"][:-1] + r["edges"][1:]) / 2
        ax.plot(centres[ok], r["acc"][ok], marker="o", color=colour,
                label=f"{name}: ECE {100 * r['ece']:.1f}%")
        if name == "raw":
            w = r["edges"][1] - r["edges"][0]
            ax.bar(centres[ok], r["count"][ok] / max(r["count"].sum(), 1), width=w * 0.9,
                   color="0.85", label="fraction of rows", zorder=0)
    _reliability_axes(ax, title, "confidence (top-label probability)")
    return fig


def _reliability_axes(ax, title: str, xlabel: str) -> None:  # noqa: ANN001
    """The frame both reliability diagrams share: the diagonal, unit axes, labels, legend."""
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(text(title), fontsize=9)
    ax.legend(loc="best", fontsize=7, frameon=False)


def shots_curve_figure(rows: Sequence[dict], *, title: str = ""):  # noqa: ANN201
    """Accuracy (left) and balanced accuracy (right) against K, one line per ``method``,
    mean ± std over seeds (``rows``: dicts with method, shots, acc, acc_std, balanced_acc,
    balanced_acc_std)."""
    fig, axes = plt().subplots(1, 2, figsize=(10.5, 4.0), sharey=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    ticks = sorted({r["shots"] for r in rows})
    for ax, (name, key) in zip(axes, (("accuracy", "acc"), ("balanced accuracy", "balanced_acc")),
                               strict=True):
        for method in methods:
            pts = sorted((r for r in rows if r["method"] == method and r.get(key) is not None),
                         key=lambda r: r["shots"])
            if pts:
                ax.errorbar([r["shots"] for r in pts], [100 * r[key] for r in pts],
                            yerr=[100 * (r.get(f"{key}_std") or 0.0) for r in pts], marker="o",
                            capsize=3, label=text(method))
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("shots (training images per class)")
        ax.set_title(f"test {name}, mean ± std over seeds", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if title:
        fig.suptitle(text(title), fontsize=10)
    return fig


# --------------------------------------------------------------------------------------
# The MedMNIST benchmark


def _bench_axes(datasets: Sequence[str]):  # noqa: ANN202
    """One column per data set, ACC above AUC."""
    return plt().subplots(2, len(datasets), figsize=(max(6.0, 4.5 * len(datasets)), 6.5), squeeze=False)


def _bench_column(axes, j: int, dataset: str, xlabel: str, ticks: list, base: int) -> None:  # noqa: ANN001
    """Titles, log x axis with ticks at the values used, grid: column ``j`` (ACC row, AUC row)."""
    for i, m in enumerate(("ACC", "AUC")):
        ax = axes[i][j]
        ax.set_title(f"{text(dataset)} {m}")
        ax.set_xlabel(xlabel)
        ax.set_xscale("log", base=base)
        ax.set_xticks(ticks, [str(v) for v in ticks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)


def _bench_legend(fig, axes, title: str):  # noqa: ANN001, ANN202
    """One legend below every panel (never over the data) and the title; returns ``fig``."""
    handles, labels = axes[0][0].get_legend_handles_labels()
    ncol = max(1, min(len(labels), 3))
    rows = -(-len(labels) // ncol) if labels else 0
    height = fig.get_figheight()
    bottom = min(0.45, (0.25 + 0.2 * rows) / height)  # inches of legend as a fraction of the figure
    if labels:
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


def size_resize_figure(summary):  # noqa: ANN001, ANN201
    """ACC and AUC against image size, one line per backbone × method × resize, per data set
    (``summary``: the benchmark's polars summary; cells on the full training split only)."""
    import polars as pl

    full = summary.filter(pl.col("per_class").is_null())
    datasets = full["dataset"].unique(maintain_order=True).to_list()
    fig, axes = _bench_axes(datasets)
    for j, d in enumerate(datasets):
        part = full.filter(pl.col("dataset") == d)
        for key, line in part.group_by(["backbone", "method", "resize"], maintain_order=True):
            line = line.sort("size")
            for i, m in enumerate(("acc", "auc")):
                axes[i][j].errorbar(line["size"].to_list(), line[m].to_list(), yerr=line[f"{m}_std"].to_list(),
                                    marker="o", capsize=3, linestyle="-" if key[2] == "scale" else "--",
                                    label=text(" · ".join(map(str, key))))
        _bench_column(axes, j, d, "image size (px)", sorted(part["size"].unique().to_list()), base=2)
    return _bench_legend(fig, axes, "Image size × resize strategy (solid: scale, dashed: pad or pad-norm)")


def data_efficiency_figure(summary):  # noqa: ANN001, ANN201
    """Test ACC and AUC against training images per class, one line per backbone × method ×
    size × resize, the same cell on the full training split as a dotted line."""
    import polars as pl

    datasets = summary["dataset"].unique(maintain_order=True).to_list()
    fig, axes = _bench_axes(datasets)
    for j, d in enumerate(datasets):
        part = summary.filter(pl.col("dataset") == d)
        for key, line in part.group_by(["backbone", "method", "size", "resize"], maintain_order=True):
            sub = line.filter(pl.col("per_class").is_not_null()).sort("per_class")
            full = line.filter(pl.col("per_class").is_null())
            for i, m in enumerate(("acc", "auc")):
                axes[i][j].errorbar(sub["per_class"].to_list(), sub[m].to_list(), yerr=sub[f"{m}_std"].to_list(),
                                    marker="o", capsize=3, label=text(" · ".join(map(str, key))))
                if len(full):
                    axes[i][j].axhline(full[m][0], linestyle=":", linewidth=1, color=axes[i][j].lines[-1].get_color())
        _bench_column(axes, j, d, "training images per class",
                      sorted(part["per_class"].drop_nulls().unique().to_list()), base=10)
    return _bench_legend(fig, axes, "Data efficiency (dotted: full training split)")


def write_bench_plots(out_dir: Path, summary, *, per_class: bool,  # noqa: ANN001
                      formats: Sequence[str] = ("png",)) -> list[Path]:
    """Write the MedMNIST benchmark's ``size_resize`` and, for a ``--per-class`` run,
    ``data_efficiency`` figures (see the module docstring) in ``formats``; returns the files."""
    out_dir = Path(out_dir)
    written = save(size_resize_figure(summary), out_dir / "size_resize", formats)
    if per_class:
        written += save(data_efficiency_figure(summary), out_dir / "data_efficiency", formats)
    return written


# --------------------------------------------------------------------------------------
# The HTML report's own figures (featcache.report gathers their data)


def group_bars_figure(names: Sequence[str], groups: Sequence[str], mean: np.ndarray,
                      std: np.ndarray):  # noqa: ANN201
    """Grouped bars: one group per title in ``groups`` (Many, Medium, ...), one bar per run
    in ``names``; ``mean`` and ``std`` are ``[runs, groups]`` fractions (NaN: no bar), shown
    in % with the std over seeds as error bars; the legend outside the axes."""
    n = len(names)
    width = 0.8 / n
    fig, ax = plt().subplots(figsize=(max(6.0, 1.2 * len(groups) + 0.35 * n * len(groups)), 4.0))
    for i, name in enumerate(names):
        x = np.arange(len(groups)) + (i - (n - 1) / 2) * width
        ax.bar(x, 100 * np.asarray(mean[i], float), width, yerr=100 * np.asarray(std[i], float),
               capsize=3, label=text(name))
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Accuracy by class group (mean ± std over seeds)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def reliability_bars_figure(r: dict, *, title: str):  # noqa: ANN201
    """Reliability as bars: accuracy per confidence bin, the gap to the bin's mean confidence
    hatched over each bar, the rows per bin printed above it, the diagonal dashed (``r``:
    :func:`featcache.calibration.reliability_bins`'s edges, acc, conf and count)."""
    fig, ax = plt().subplots(figsize=(4.6, 4.4))
    centres = (r["edges"][:-1] + r["edges"][1:]) / 2
    w = r["edges"][1] - r["edges"][0]
    ok = r["count"] > 0
    ax.bar(centres[ok], r["acc"][ok], width=w * 0.95, color="tab:blue", alpha=0.85, label="accuracy")
    # the gap between accuracy and mean confidence, hatched over the bar (either direction)
    low = np.minimum(r["acc"], r["conf"])[ok]
    ax.bar(centres[ok], np.abs(r["conf"] - r["acc"])[ok], bottom=low, width=w * 0.95,
           facecolor="none", edgecolor="tab:red", hatch="//", linewidth=0.8, label="gap to confidence")
    for x, n, top in zip(centres[ok], r["count"][ok], np.maximum(r["acc"], r["conf"])[ok], strict=True):
        ax.text(x, min(top + 0.01, 0.97), str(int(n)), ha="center", va="bottom", fontsize=6, color="0.3")
    _reliability_axes(ax, title, "confidence (top-1 softmax probability)")
    return fig


def _num(v: object, default: float = math.nan) -> float:
    return default if v is None else float(v)


def shots_knob_figure(lines: dict[str, list[tuple[float, dict]]], knob: str):  # noqa: ANN201
    """Total (left) and balanced accuracy (right) against a shots ``knob``: ``lines`` maps a
    label to ``(knob value, metrics)`` points (metrics with ``acc``, ``acc_std``,
    ``balanced_acc``, ``balanced_acc_std`` fractions); log x axis, mean ± std over seeds."""
    fig, axes = plt().subplots(1, 2, figsize=(10.5, 4.0), sharey=True)
    for ax, (title, key) in zip(axes, (("Total accuracy", "acc"), ("Balanced accuracy", "balanced_acc")), strict=True):
        for label, pts in lines.items():
            pts = sorted(pts, key=lambda p: p[0])
            xs = [p[0] for p in pts]
            ys = [100 * (_num(m.get(key))) for _, m in pts]
            es = [100 * (_num(m.get(f"{key}_std"), 0.0)) for _, m in pts]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=text(label))
        ax.set_xscale("log")
        ax.set_xlabel(f"{knob} (training images per class)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig
