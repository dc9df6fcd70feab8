"""Comparing runs: which folders are head runs, the comparison table, and one HTML page.

``featcache report RUN...`` reads run directories (DESIGN.md §5) through
:func:`featcache.runs.read_run` and :func:`featcache.runs.runs_frame`:

- :func:`collect_runs` sorts the folders it is given: head runs (``train-head``, TFA-LT,
  ``grid``, ``finetune``, ``predict``) are kept; folders that are not runs, or are a table of
  runs (``reproduce``), are skipped with a note; a ``bench medmnist`` folder is refused, since
  its ``metrics.json`` averages many data sets and backbones and one Many/Med/Few row of it
  would mean nothing.
- :func:`report_frame`: one row per run with every metric and the knobs that differ, plus
  sensitivity/specificity when a two-class run is among them and the bootstrap intervals
  (``<metric>_ci_lo``/``_hi``) when a run was trained with ``--bootstrap N``;
  :func:`metric_columns` and :func:`interval_columns` say which the tables show.
- :func:`print_report`: the terminal tables (the runs, then their bootstrap intervals), each
  in the widest layout that fits the console (:func:`featcache.tables.print_fitting`).
- :func:`write_html`: one self-contained page (figures embedded as base64 PNG, no network,
  a few lines of inline JavaScript to sort the table) rendered from the Jinja2 template
  ``featcache/templates/report.html.j2`` with autoescaping on (run and class names are user
  text). Figures are drawn with matplotlib from the run's own files: group bars from
  ``metrics.json``; per-class accuracy bars ordered by training count from ``per_seed`` and
  ``splits.parquet`` with the cache's labels (when the cache named in ``config.json`` is
  still there and has the recorded fingerprint; else the run's ``per_class_acc.png``);
  row-normalised confusion matrices and reliability diagrams from ``predictions.parquet``
  (a run's own ``reliability*.png`` is used when it has one); accuracy against shots when
  the runs differ in a shots knob; a grid's ``heatmap_*.png``; each run's ``loss_curve.png``.
  The figures are drawn by :mod:`featcache.plots` (150 dpi, tight); this module only
  gathers their data.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from featcache import plots as _plots
from featcache import runs as _runs
from featcache.errors import FeatcacheError
from featcache.metrics import GROUPS, groups_from_counts, softmax

log = logging.getLogger(__name__)

TEMPLATE = "report.html.j2"
TEMPLATE_DIR = Path(__file__).with_name("templates")
# Knobs that count training images per class: runs that differ in one get an accuracy-vs-shots
# curve (one line per combination of the other differing knobs).
SHOT_KNOBS = ("shots", "per_class", "train_per_class", "n_per_class", "max_per_class")
DPI = _plots.DPI
_PNG = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------
# Which folders are head runs


@dataclass
class Collected:
    """What :func:`collect_runs` found: ``runs`` (:func:`read_run` dicts, in the order given)
    and ``skipped`` (path, why) for every folder left out."""

    runs: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def notes(self) -> list[str]:
        """One line per skipped folder, for the terminal and the page."""
        return [f"skipped {path}: {why}" for path, why in self.skipped]


def _is_bench(run: dict) -> bool:
    config, metrics = run["config"], run["metrics"]
    return ("cells" in metrics or str(config.get("pipeline", "")).startswith("bench")
            or ("backbones" in config and "datasets" in config))


def collect_runs(paths: list[str] | tuple[str, ...]) -> Collected:
    """Read every path that is a head run; skip (with the reason) what is not one.

    A folder without ``metrics.json`` (or a path that is no folder) and a ``reproduce`` folder
    (a table of runs: its rows are under ``rows/``) are skipped. A damaged ``metrics.json``
    or ``config.json`` and a ``bench medmnist`` folder raise :class:`FeatcacheError`, as does
    a list in which nothing is left.
    """
    found = Collected()
    for p in paths:
        path = Path(p)
        try:
            run = _runs.read_run(path)
        except FeatcacheError:
            if (path / "metrics.json").is_file():
                raise  # a run, but damaged: the message says which file and where
            why = ("no such file or folder" if not path.exists() else
                   "not a folder" if not path.is_dir() else "not a run directory (no metrics.json)")
            found.skipped.append((str(p), why))
            continue
        if _is_bench(run):
            raise FeatcacheError(
                f"{path} is a `featcache bench medmnist` folder: its metrics.json averages "
                "every data set × backbone × size cell, so one row of Many/Med/Few/Total would "
                "mean nothing. Read its table.md or summary.csv instead; `report` compares "
                "head runs (train-head, grid, finetune, predict).")
        pipeline = str(run["config"].get("pipeline", ""))
        if pipeline.startswith("reproduce"):
            found.skipped.append((str(p), f"a `{pipeline}` folder (a table of runs), not one run; "
                                          f"pass its rows ({path / 'rows'}/*) to compare them"))
            continue
        per_seed = run["metrics"].get("per_seed")
        if not per_seed or not all(isinstance(s, dict) for s in per_seed):
            found.skipped.append((str(p), "its metrics.json has no per-seed figures (not a head run)"))
            continue
        found.runs.append(run)
    if not found.runs:
        detail = "; ".join(found.notes()) or "no paths given"
        raise FeatcacheError(f"None of the {len(paths)} path(s) is a head run ({detail}). "
                             "Pass run directories written by train-head, grid, finetune or predict.")
    return found


def run_names(runs: list[dict]) -> list[str]:
    """A short unique name per run: its folder's name, or more of its path where two share one."""
    paths = [Path(r["run"]).resolve() for r in runs]
    depth = 1
    while True:
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth >= max(len(p.parts) for p in paths):
            return names
        depth += 1


def _interval(run: dict, key: str) -> tuple[float | None, float | None]:
    """The bootstrap interval of ``key`` in ``run``'s ``metrics.json`` (``None``s when absent)."""
    boot = run["metrics"].get("bootstrap")
    ci = boot.get(f"{key}_ci") if isinstance(boot, dict) else None
    if not isinstance(ci, list) or len(ci) != 2:
        return None, None
    lo, hi = (_runs._float(v) for v in ci)
    return (lo, hi) if lo is not None and hi is not None else (None, None)


def report_frame(runs: list[dict]) -> tuple[pl.DataFrame, list[str]]:
    """:func:`featcache.runs.runs_frame` with the knobs that differ between ``runs`` and a
    ``name`` column (:func:`run_names`); returns the frame and its knob columns.

    Columns only some runs can have are added when at least one run has them (``null`` in the
    others): ``sensitivity``/``specificity`` with ``_std`` (two-class runs, from
    ``metrics.json``), and for every figure with a bootstrap interval (``--bootstrap N``,
    :mod:`featcache.class_metrics`) ``<metric>_ci_lo``/``_ci_hi`` (of the mean over seeds)
    with ``bootstrap_n`` (replicates) and ``ci_level`` (0.95)."""
    from featcache.class_metrics import BINARY_METRICS, BOOTSTRAP_METRICS

    knobs = _runs.differing_knobs(runs)
    if "validation" not in knobs and any("validation" in _runs.run_knobs(r) for r in runs):
        knobs.append("validation")  # always shown: "realistic" (none) and "tuned" runs never mix unseen
    frame = _runs.runs_frame(runs, knobs=knobs).with_columns(pl.Series("name", run_names(runs)))
    extra: list[pl.Series] = []
    for key in BINARY_METRICS:
        if any(key in r["metrics"] for r in runs):
            extra += [pl.Series(k, [_runs._float(r["metrics"].get(k)) for r in runs], pl.Float64)
                      for k in (key, f"{key}_std")]
    boots = [r["metrics"].get("bootstrap") if isinstance(r["metrics"].get("bootstrap"), dict) else {}
             for r in runs]
    for key in BOOTSTRAP_METRICS + BINARY_METRICS:
        cis = [_interval(r, key) for r in runs]
        if any(lo is not None for lo, _ in cis):
            extra += [pl.Series(f"{key}_ci_lo", [lo for lo, _ in cis], pl.Float64),
                      pl.Series(f"{key}_ci_hi", [hi for _, hi in cis], pl.Float64)]
    if any(s.name.endswith("_ci_lo") for s in extra):
        extra += [pl.Series("bootstrap_n", [b.get("n") for b in boots], pl.Int64),
                  pl.Series("ci_level", [_runs._float(b.get("level")) for b in boots], pl.Float64)]
    return frame.with_columns(extra), [_runs.knob_column(k) for k in knobs]


# The metric columns of the report, (title, key) in order: the paper's and REPORT_COLUMNS
# (featcache.runs), with sensitivity and specificity before ECE when a run has them.
BINARY_COLUMNS = (("Sens.", "sensitivity"), ("Spec.", "specificity"))


def metric_columns(frame: pl.DataFrame) -> tuple[tuple[str, str], ...]:
    """``(title, key)`` of :data:`featcache.runs.REPORT_COLUMNS`, with Sens./Spec. before ECE
    when ``frame`` (:func:`report_frame`) has them (a two-class run is among its rows)."""
    cols = [c for c in _runs.REPORT_COLUMNS if c[1] != "ece"]
    cols += [c for c in BINARY_COLUMNS if c[1] in frame.columns]
    return (*cols, *(c for c in _runs.REPORT_COLUMNS if c[1] == "ece"))


def interval_columns(frame: pl.DataFrame) -> tuple[tuple[str, str], ...]:
    """``(title, key)`` of the report's metrics that have a bootstrap interval in ``frame``."""
    return tuple(c for c in metric_columns(frame) if f"{c[1]}_ci_lo" in frame.columns)


def fmt_interval(lo: float | None, hi: float | None, *, compact: bool = False) -> str:
    """A 95 % interval in percent: ``[79.10, 83.40]``, or ``79.10–83.40`` when ``compact``;
    ``–`` when the run has none."""
    if lo is None or hi is None:
        return "–"
    return f"{100 * lo:.2f}–{100 * hi:.2f}" if compact else f"[{100 * lo:.2f}, {100 * hi:.2f}]"


def interval_title(frame: pl.DataFrame) -> str:
    """What the intervals of ``frame`` are: level, replicates, of what."""
    levels = sorted({v for v in frame["ci_level"].to_list() if v is not None})
    ns = sorted({v for v in frame["bootstrap_n"].to_list() if v is not None})
    level = "/".join(f"{100 * v:g}" for v in levels) or "95"
    return (f"{level} % bootstrap intervals of the mean over seeds, % ({'/'.join(map(str, ns))} "
            "resamples of each seed's test rows)")


# --------------------------------------------------------------------------------------
# What a run holds, for the figures


@dataclass
class RunView:
    """One run's figures' inputs, read from its directory (and its cache, when reachable)."""

    name: str
    run: dict
    class_names: list[str]
    per_class_mean: np.ndarray | None = None  # [C] mean over seeds
    per_class_std: np.ndarray | None = None  # [C]
    train_counts: np.ndarray | None = None  # [C] mean over seeds
    groups: dict[str, list[int]] | None = None
    labels: np.ndarray | None = None  # [N] test rows over all seeds
    scores: np.ndarray | None = None  # [N, C]
    notes: list[str] = field(default_factory=list)

    @property
    def dir(self) -> Path:
        return Path(self.run["run"])


def _open_cache(config: dict, notes: list[str], memo: dict):  # noqa: ANN202
    """The cache named in ``config`` if it is still there with the recorded fingerprint."""
    path = config.get("cache")
    if not isinstance(path, str):
        return None
    if path not in memo:
        from featcache.cache import open_cache

        try:
            memo[path] = open_cache(path)
        except (FeatcacheError, OSError) as e:
            memo[path] = None
            log.info("cache %s not readable: %s", path, e)
    cache = memo[path]
    if cache is None:
        notes.append(f"its cache {path} is not readable here: class names and training counts unknown")
        return None
    want = config.get("cache_fingerprint")
    if want and cache.fingerprint != want:
        notes.append(f"{path} is not the cache the run was trained on (other fingerprint)")
        return None
    return cache


def _descriptor_names(dataset: object, num_classes: object) -> list[str] | None:
    """Class names of a shipped data set descriptor (a run without a cache, e.g. ``finetune``),
    when it has the run's number of classes."""
    if not isinstance(dataset, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", dataset):
        return None
    from featcache.datasets import load_descriptor

    desc = load_descriptor(dataset)
    if desc is None or not desc.class_names or desc.num_classes != num_classes:
        return None
    return list(desc.class_names)


def load_view(run: dict, name: str, memo: dict | None = None) -> RunView:
    """Read what the figures need from ``run``'s directory (see the module docstring)."""
    memo = {} if memo is None else memo
    config, metrics = run["config"], run["metrics"]
    notes: list[str] = []
    per_seed = metrics.get("per_seed") or []
    accs = [s.get("per_class_acc") for s in per_seed if isinstance(s.get("per_class_acc"), list)]
    num_classes = config.get("num_classes") or (len(accs[0]) if accs else None)
    cache = _open_cache(config, notes, memo)
    class_names = (list(config["class_names"]) if isinstance(config.get("class_names"), list)
                   else cache.class_names if cache is not None
                   else _descriptor_names(config.get("dataset"), num_classes)
                   or [str(c) for c in range(int(num_classes or 0))])
    view = RunView(name=name, run=run, class_names=class_names, notes=notes)
    if accs and len({len(a) for a in accs}) == 1:
        arr = np.array([[np.nan if v is None else v for v in a] for a in accs], dtype=float)
        with warnings.catch_warnings():  # a class missing from every seed: NaN, silently
            warnings.simplefilter("ignore", RuntimeWarning)
            view.per_class_mean, view.per_class_std = np.nanmean(arr, 0), np.nanstd(arr, 0)
    splits_path = view.dir / "splits.parquet"
    if cache is not None and cache.labels.ndim == 1 and splits_path.is_file():
        splits = pl.read_parquet(splits_path)
        C = len(class_names)
        counts = [np.bincount(cache.labels[part["row"].to_numpy()], minlength=C)
                  for _, part in splits.filter(pl.col("split") == "train").group_by("seed")]
        if counts:
            view.train_counts = np.mean(counts, axis=0)
            named = cache.descriptor.groups
            ids = list(cache.descriptor.class_ids)
            view.groups = ({g: [ids.index(c) for c in named.get(g, ()) if c in ids] for g in GROUPS}
                           if named else groups_from_counts(view.train_counts))
    pred_path = view.dir / "predictions.parquet"
    if pred_path.is_file():
        preds = pl.read_parquet(pred_path, columns=["label", "scores"])
        if preds["label"].dtype.is_integer() and preds.height:
            view.labels = preds["label"].to_numpy()
            view.scores = np.asarray(preds["scores"].to_list(), dtype=np.float64)
        else:
            notes.append("multi-label predictions: no confusion matrix or reliability diagram")
    return view


# --------------------------------------------------------------------------------------
# Figures (matplotlib, Agg), each returned as a data: URI


def _uri(fig) -> str:  # noqa: ANN001
    return "data:image/png;base64," + base64.b64encode(_plots.png_bytes(fig)).decode("ascii")


def _png_uri(path: Path) -> str | None:
    data = path.read_bytes()
    if not data.startswith(_PNG):
        log.warning("%s is not a PNG file; left out of the report", path)
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def groups_figure(frame: pl.DataFrame) -> str | None:
    """Grouped bars: Many / Medium / Few / Total / Balanced per run, mean ± std over seeds."""
    keys = [("Many", "many_acc"), ("Medium", "medium_acc"), ("Few", "few_acc"),
            ("Total", "acc"), ("Balanced", "balanced_acc")]
    keys = [(t, k) for t, k in keys if frame[k].is_not_null().any()]
    if not keys:
        return None
    rows = list(frame.iter_rows(named=True))
    mean = np.array([[np.nan if r[k] is None else r[k] for _, k in keys] for r in rows], dtype=float)
    std = np.array([[r[f"{k}_std"] or 0.0 for _, k in keys] for r in rows], dtype=float)
    return _uri(_plots.group_bars_figure([r["name"] for r in rows], [t for t, _ in keys], mean, std))




def per_class_figure(view: RunView) -> str | None:
    """Per-class test accuracy bars (mean ± std over seeds), classes ordered by training
    images (their mean count over seeds in brackets after each name), many/medium/few shaded
    (:func:`featcache.plots.per_class_figure`); the run's own ``per_class_acc.png`` when the
    per-seed figures or the training counts are not known here."""
    if view.per_class_mean is None or view.train_counts is None:
        own = view.dir / "per_class_acc.png"
        return _png_uri(own) if own.is_file() else None
    C = len(view.per_class_mean)
    names = view.class_names if len(view.class_names) == C else [str(c) for c in range(C)]
    names = [f"{n} ({view.train_counts[c]:.0f})" for c, n in enumerate(names)]
    seeds = len(view.run["metrics"].get("per_seed") or [])
    fig = _plots.per_class_figure(view.per_class_mean, view.per_class_std if seeds > 1 else None,
                                  names, title=f"{view.name}: per-class accuracy",
                                  train_counts=view.train_counts, groups=view.groups)
    return _uri(fig)


def confusion_figure(view: RunView) -> str | None:
    """Row-normalised confusion matrix over every seed's test rows, with a colorbar."""
    if view.labels is None or view.scores is None:
        own = view.dir / "confusion.png"
        return _png_uri(own) if own.is_file() else None
    C = view.scores.shape[1]
    _, norm = _plots.confusion_data(view.labels, view.scores.argmax(1), C)
    names = view.class_names if len(view.class_names) == C else [str(c) for c in range(C)]
    return _uri(_plots.confusion_figure(norm, names, title=f"{view.name}: confusion, % of the true "
                                                           "class (all seeds)"))


def reliability(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> dict:
    """Reliability of the top-1 softmax probability in ``bins`` equal-width bins: per bin the
    mean confidence, the accuracy and the count, and the expected calibration error
    (:func:`featcache.calibration.reliability_bins`, Guo et al. 2017 §2)."""
    from featcache.calibration import reliability_bins

    return reliability_bins(labels, softmax(scores), bins)


def reliability_figure(view: RunView) -> str | None:
    """The run's own reliability PNG if it wrote one; else a reliability diagram drawn from
    its predictions (softmax of the stored scores, all seeds' test rows)."""
    own = sorted(view.dir.glob("reliability*.png"))
    if own:
        return _png_uri(own[0])
    if view.labels is None or view.scores is None:
        return None
    r = reliability(view.labels, view.scores)
    return _uri(_plots.reliability_bars_figure(
        r, title=f"{view.name}: reliability, ECE {100 * r['ece']:.1f}%\n"
                 f"(10 bins, all seeds' test rows; numbers: rows per bin)"))


def shots_figure(runs: list[dict], names: list[str], knobs: list[str]) -> str | None:
    """Accuracy (and balanced accuracy) against a shots knob that differs between the runs,
    one line per combination of the other differing knobs; ``None`` when none differs."""
    shot = next((k for k in knobs if k in SHOT_KNOBS), None)
    if shot is None:
        return None
    others = [k for k in knobs if k != shot and k not in ("cache", "out")]
    lines: dict[str, list[tuple[float, dict]]] = {}
    for run in runs:
        shown = _runs.run_knobs(run)
        try:
            x = float(shown.get(shot, "nan"))
        except ValueError:
            continue
        if not math.isfinite(x):
            continue
        label = ", ".join(f"{k}={shown.get(k, '–')}" for k in others) or "runs"
        lines.setdefault(label, []).append((x, run["metrics"]))
    if not any(len(v) > 1 for v in lines.values()):
        return None
    return _uri(_plots.shots_knob_figure(lines, shot))


# --------------------------------------------------------------------------------------
# The page


_METRIC_TITLES = (("Many", "many_acc"), ("Med", "medium_acc"), ("Few", "few_acc"),
                  ("Total", "acc"), ("Bal.", "balanced_acc"), ("F1", "macro_f1"), ("AUC", "auc"))


def _table(frame: pl.DataFrame, knob_cols: list[str]) -> dict:
    """The metric table as data for the template: headers and cells (text, sort key, class).

    The metrics come right after the run, the settings that differ after them (a long
    setting such as a prompt template then never pushes the figures out of view), and the
    common start of the runs' default names (``isic2018-tiny-clip-random-tte-``) is shown
    once above the table (``prefix``) instead of in every row. Sens./Spec. are columns when a
    two-class run is among the rows; a figure with a bootstrap interval carries it on a
    line of its own under the ± std (``ci``; ``intervals`` says what they are)."""
    from featcache.tables import common_prefix

    names = frame["name"].to_list()
    prefix = common_prefix(names)
    binary = [c for c in BINARY_COLUMNS if c[1] in frame.columns]
    metrics = (*_METRIC_TITLES, *binary, ("ECE", "ece"))
    headers = ["Run", "Method", "Seeds", *(t for t, _ in metrics),
               *(k.removeprefix("config_") for k in knob_cols)]
    rows = []
    for row, name in zip(frame.iter_rows(named=True), names, strict=True):
        short = name[len(prefix):]
        cells = [{"text": short, "key": short, "cls": "text name", "title": name},
                 {"text": row["method"], "key": row["method"], "cls": "text"},
                 {"text": str(row["seeds"]), "key": row["seeds"], "cls": "num"}]
        for _, k in metrics:  # percent; the std and the interval on lines of their own keep columns narrow
            mean, std = row[k], row[f"{k}_std"]
            lo, hi = row.get(f"{k}_ci_lo"), row.get(f"{k}_ci_hi")
            cells.append({"text": _runs._pct(mean, None),
                          "sd": "" if mean is None or std is None else f"± {100 * std:.2f}",
                          "ci": "" if lo is None or hi is None else fmt_interval(lo, hi),
                          "key": "" if mean is None else f"{mean:.6f}", "cls": "num"})
        for k in knob_cols:
            try:
                key: object = float(row[k])
            except ValueError:
                key = row[k]
            cells.append({"text": row[k], "key": key, "cls": "knob"})
        rows.append(cells)
    intervals = interval_title(frame) if interval_columns(frame) else ""
    return {"headers": headers, "rows": rows, "prefix": prefix, "intervals": intervals}


def print_report(con, frame: pl.DataFrame, knobs: list[str]) -> None:  # noqa: ANN001
    """``featcache report``'s tables on the rich console ``con``, at its width, in the first layout that fits: the differing
    knobs as columns with mean ± std; the same compact (``81.23±0.40``, no box lines); the
    knobs as one line per run below; means only (said in the title); that with the run names
    wrapped over lines (never cut). Numbers are never cut, and each run is one line until
    its name is wrapped (:func:`featcache.tables.print_fitting`). Runs with bootstrap
    intervals get a second table of them, fitted the same way, with each interval on two
    lines as the last resort (six intervals of two-class runs do not fit 80 columns on one)."""
    import textwrap

    from featcache.runs import rich_table
    from featcache.tables import common_prefix, plain_table, print_fitting, table_width, wrap_name

    prefix = common_prefix(frame["name"].to_list())
    if prefix:  # shown once, not on every row (the files keep the whole names)
        con.out(textwrap.fill(f"Runs {prefix}* (the common start of their names is left out "
                              "below)", width=max(con.width, 40), break_on_hyphens=False), highlight=False)
        frame = frame.with_columns(pl.col("name").str.slice(len(prefix)))
    names = frame["name"].to_list()
    longest = max(len(n) for n in names)

    def wrapped(over: int) -> list[str] | None:
        """The names wrapped ``over`` columns narrower, or None when too little is left."""
        width = longest - over
        return [wrap_name(n, width) for n in names] if width >= 8 else None

    columns = metric_columns(frame)
    layouts = [(True, True, False), (True, True, True), (False, True, True), (False, False, True)]

    def main_table(with_knobs: bool, std: bool, compact: bool, shown: list[str] | None = None):  # noqa: ANN202
        shown_frame = frame if shown is None else frame.with_columns(pl.Series("name", shown))
        return rich_table(shown_frame, title="" if std else "means over seeds, %; ± std: widen the "
                          "terminal, or --out/--html", title_column="name", title_header="Run",
                          columns=columns, knobs=knobs if with_knobs else (), std=std,
                          compact=compact)

    def shrunk(over: int):  # noqa: ANN202
        shown = wrapped(over)
        return None if shown is None else main_table(*layouts[-1], shown)

    with_knobs = layouts[print_fitting(con, [main_table(*lay) for lay in layouts], shrink=shrunk)][0]
    if knobs and not with_knobs:
        con.out("Settings that differ:", highlight=False)
        for row in frame.iter_rows(named=True):
            shown = ", ".join(f"{k.removeprefix('config_')}={row[k]}" for k in knobs)
            con.out(textwrap.fill(f"{row['name']}: {shown}", width=max(con.width, 40),
                                  initial_indent="  ", subsequent_indent="      ",
                                  break_on_hyphens=False), highlight=False)
    ci_cols = interval_columns(frame)
    if not ci_cols:
        return
    with_ci = [i for i, row in enumerate(frame.iter_rows(named=True))
               if any(row[f"{k}_ci_lo"] is not None for _, k in ci_cols)]
    rows = list(frame.iter_rows(named=True))

    def ci_cell(row: dict, key: str, compact: bool, stacked: bool) -> str:
        lo, hi = row[f"{key}_ci_lo"], row[f"{key}_ci_hi"]
        text = fmt_interval(lo, hi, compact=compact)
        return text.replace("–", "–\n", 1) if stacked and lo is not None and hi is not None else text

    def ci_table(compact: bool, shown: list[str] | None = None, stacked: bool = False):  # noqa: ANN202
        cells = [[(shown or names)[i], *(ci_cell(rows[i], k, compact, stacked) for _, k in ci_cols)]
                 for i in with_ci]
        heads = ["Run", *(t for t, _ in ci_cols)]
        return plain_table(heads, cells, title=interval_title(frame.select("ci_level", "bootstrap_n")[with_ci]),
                           right=[i > 0 for i in range(len(heads))], compact=compact)

    def ci_shrunk(over: int):  # noqa: ANN202
        """The compact table with the names wrapped; where that is still too wide (two-class
        runs: six intervals), each interval on two lines (``60.00–`` over ``87.50``) too."""
        for stacked in (False, True):
            table = ci_table(True, stacked=stacked)
            excess = table_width(con, table) - con.width
            if excess <= 0:
                return table
            shown = wrapped(excess + longest - max(len(names[i]) for i in with_ci))
            if shown is not None and table_width(con, table := ci_table(True, shown, stacked)) <= con.width:
                return table
        return None

    print_fitting(con, [ci_table(False), ci_table(True)], shrink=ci_shrunk)


def render_html(collected: Collected, *, title: str = "featcache report") -> str:
    """The report page as a string (see :func:`write_html`)."""
    import jinja2

    runs = collected.runs
    frame, knob_cols = report_frame(runs)
    names = frame["name"].to_list()
    memo: dict = {}
    views = [load_view(r, n, memo) for r, n in zip(runs, names, strict=True)]
    figures = {
        "groups": groups_figure(frame),
        "shots": shots_figure(runs, names, _runs.differing_knobs(runs)),
    }
    per_run = []
    for v in views:
        heatmaps = [{"name": p.stem.removeprefix("heatmap_").replace("__", " × "), "src": _png_uri(p)}
                    for p in sorted(v.dir.glob("heatmap_*.png"))]
        per_run.append({
            "name": v.name,
            "path": v.run["run"],
            "method": v.run["metrics"].get("method") or "",
            "notes": v.notes,
            "per_class": per_class_figure(v),
            "confusion": confusion_figure(v),
            "reliability": reliability_figure(v),
            "loss": _png_uri(v.dir / "loss_curve.png") if (v.dir / "loss_curve.png").is_file() else None,
            "heatmaps": [h for h in heatmaps if h["src"]],
            "config": json.dumps(v.run["config"], indent=2, ensure_ascii=False),
            "metrics": json.dumps({k: x for k, x in v.run["metrics"].items() if k != "per_seed"},
                                  indent=2, ensure_ascii=False),
        })
    from featcache import __version__

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template(TEMPLATE).render(
        title=title,
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        version=__version__,
        table=_table(frame, knob_cols),
        knobs=[k.removeprefix("config_") for k in knob_cols],
        notes=collected.notes(),
        figures=figures,
        runs=per_run,
    )


def write_html(collected: Collected, out: str | Path, *, title: str = "featcache report") -> Path:
    """Write the self-contained report page of ``collected`` (:func:`collect_runs`) to ``out``:
    the sortable metric table, group bars, per-class accuracy against training count,
    confusion matrices, reliability diagrams, accuracy against shots and grid heatmaps when
    the runs have them, and each run's full configuration."""
    out = Path(out)
    if out.is_dir():
        raise FeatcacheError(f"--html {out} is a folder; give the page's file name, e.g. {out / 'report.html'}.")
    page = render_html(collected, title=title)
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(out)
    except OSError as e:
        raise FeatcacheError(f"Could not write the report {out} ({e.strerror or e}); choose another "
                             "--html path.") from None
    log.info("wrote report %s", out)
    return out
