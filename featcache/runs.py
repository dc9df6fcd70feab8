"""The run directory (DESIGN.md §5) and the tables that summarise runs.

A run directory holds::

    config.json          every setting, resolved
    metrics.json         acc, balanced_acc, macro_f1, auc, many_acc, medium_acc, few_acc
                         (means over seeds, fractions in [0, 1]), the same with _std, per_seed
    metrics.parquet/.csv one row per seed
    predictions.parquet  seed, row, id, label, pred, scores (one list per row)
    splits.parquet       seed, row, id, split: the chosen indices, so a run can be repeated
    per_class.parquet/.csv  precision, recall, F1, AUC, support per class (mean, std over
                         seeds; per_class_seeds.parquet per seed): :mod:`featcache.class_metrics`
    checkpoints/seed-S.pt  trained heads with their config, loadable for prediction
                         (tensors and plain data only, loaded with ``weights_only=True``:
                         see :func:`save_checkpoint`, :func:`load_checkpoint`)
    confusion.png        confusion matrix summed over seeds, row-normalised
    per_class_acc.png    per-class accuracy (mean ± std over seeds), many/medium/few shaded
    loss_curve.png       training loss per epoch (runs that record ``epoch_loss``)
                         (figures: :mod:`featcache.plots`; also .pdf/.svg with --plot-format)
    reliability.png      reliability diagram (15 bins, all seeds' test rows; the calibrated
                         curve beside the raw one after temperature scaling)

``metrics.json`` also carries the calibration figures ``ece``, ``brier``, ``nll`` (with
``_std``; :mod:`featcache.calibration`) and, with ``--calibrate temperature``, per seed the
fitted ``temperature`` and ``ece_before``/``brier_before``/``nll_before``.

:class:`RunWriter` is shared by every pipeline (train-head, TFA-LT, LIFT's classifier runs):
``add_seed`` per seed, then ``finish``. NaN figures are written as JSON ``null``.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from featcache.errors import FeatcacheError
from featcache.metrics import CALIBRATED_EXTRA, SUMMARY_KEYS, confusion_matrix, summarize

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Checkpoints: tensors and plain data only, never arbitrary pickled objects
#
# A checkpoint is shared between labs and loaded by ``predict`` and ``finetune --resume``; a
# pickle can run any code when loaded. So a checkpoint holds only what torch's weights-only
# unpickler admits (dicts, lists, tuples, str, bytes, int, float, bool, None, tensors), it is
# loaded with ``weights_only=True`` (which TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot override
# when passed explicitly), and anything else is refused before any of it runs.

_PLAIN_SCALARS = (str, bytes, bool, int, float, type(None))


def plain_state(obj: object, where: str = "checkpoint") -> object:
    """A copy of ``obj`` made of plain data and tensors, or ``TypeError`` naming the bad entry.

    Numpy scalars and arrays become Python numbers and tensors, paths become strings,
    parameters become detached tensors; dataclasses and other objects are refused (a bug in
    the code that builds the checkpoint: convert them with ``asdict``/``to_dict`` first).
    """
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; checkpoints take str or int keys.")
            out[k] = plain_state(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, list | tuple):
        items = [plain_state(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, torch.Tensor):
        return obj.detach() if isinstance(obj, torch.nn.Parameter) else obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if type(obj) in _PLAIN_SCALARS:
        return obj
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a checkpoint "
                    "holds only tensors and plain data (dict, list, str, int, float, bool, None).")


def save_checkpoint(path: str | Path, ckpt: dict) -> None:
    """Write ``ckpt`` (checked by :func:`plain_state`) atomically: a temporary file, then a rename,
    so a killed write never leaves half a checkpoint behind."""
    path = Path(path)
    state = plain_state(ckpt)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``; refuse (``FeatcacheError``) anything else.

    A file whose pickle names any other class or function (which could run code) is refused
    before anything in it is called; so are unreadable or truncated files and non-dict files.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((ln.strip() for ln in first if "Unsupported" in ln or "global" in ln.lower()), "")
        raise FeatcacheError(
            f"Refusing checkpoint {path}: it holds objects other than tensors and plain data, "
            f"which could run code when loaded{f' ({detail})' if detail else ''}. featcache "
            "writes checkpoints of tensors and plain data only; only load checkpoints from a "
            "featcache run, and retrain if this one came from elsewhere."
        ) from None
    except (OSError, EOFError, RuntimeError, ValueError) as e:
        raise FeatcacheError(f"Checkpoint {path} could not be read ({type(e).__name__}: {e}); "
                             "it is truncated or not a featcache checkpoint.") from None
    if not isinstance(ckpt, dict):
        raise FeatcacheError(f"Checkpoint {path} holds a {type(ckpt).__name__}, not a featcache "
                             "checkpoint (a dict).")
    return ckpt


def _clean(obj: object) -> object:
    """JSON-safe copy: NaN/inf -> None, numpy scalars/arrays -> Python, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, obj: object) -> None:
    """Write ``obj`` as indented, strictly valid JSON (no NaN)."""
    path.write_text(json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")


# --------------------------------------------------------------------------------------
# Writing into a folder that already holds a run: one rule for every command
#
# Every command that writes a run directory (train-head, TFA-LT, grid, reproduce, finetune,
# bench medmnist, predict) refuses a folder that already holds a run unless --overwrite is
# given (refuse_existing_run), and deletes only that run's files (clear_run) once it is
# about to write the new one. Default folder names say what the run is (run_name), so two
# runs that differ in head, loss, sampler, TTE ... land in different folders.

RUN_FILES = ("config.json", "metrics.json", "metrics.parquet", "metrics.csv", "predictions.parquet",
             "splits.parquet", "per_class.parquet", "per_class.csv", "per_class_seeds.parquet",
             *(f"{fig}.{fmt}" for fig in ("confusion", "per_class_acc", "loss_curve")
               for fmt in ("png", "pdf", "svg")),
             # grid, reproduce and bench outputs
             "summary.parquet", "summary.csv", "tables.md", "table.md", "table.parquet", "table.csv",
             "results.parquet", "results.csv", "size_resize.png", "data_efficiency.png",
             "reliability.png")
RUN_GLOBS = ("heatmap_*.png", "heatmap_*.pdf", "heatmap_*.svg")


def run_files(out_dir: Path) -> list[Path]:
    """The files of an earlier run in ``out_dir`` (the names featcache's run writers use and
    ``checkpoints/``); other files are not a run's and are never touched."""
    out_dir = Path(out_dir)
    ckpts = out_dir / "checkpoints"
    found = sorted(ckpts.glob("seed-*.pt*")) if ckpts.is_dir() else []
    found += [out_dir / n for n in RUN_FILES if (out_dir / n).exists()]
    for pattern in RUN_GLOBS:
        found += sorted(out_dir.glob(pattern))
    return found


def refuse_existing_run(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse an ``out_dir`` that holds an earlier run, unless ``overwrite``: the new run would
    replace its results, and its checkpoints would stay beside the new ones (``predict``
    loads every ``seed-*.pt``) and mix two runs."""
    found = run_files(out_dir)
    if found and not overwrite:
        shown = ", ".join(str(p.relative_to(out_dir)) for p in found[:4])
        more = f" and {len(found) - 4} more" if len(found) > 4 else ""
        raise FeatcacheError(
            f"{out_dir} already holds a run ({shown}{more}); writing into it would replace or mix "
            "with that run. Choose another --out, or pass --overwrite to replace that run "
            "(nothing was changed)."
        )


def clear_run(out_dir: Path) -> None:
    """Delete the files of an earlier run in ``out_dir`` (see :func:`run_files`), nothing else."""
    for path in run_files(out_dir):
        if path.is_dir():
            raise FeatcacheError(f"{path} is a folder where a run file was expected; remove it by hand.")
        path.unlink()
        log.info("removed %s of the earlier run", path)
    ckpts = Path(out_dir) / "checkpoints"
    if ckpts.is_dir() and not any(ckpts.iterdir()):
        ckpts.rmdir()


def run_name(*parts: object) -> str:
    """A default run-folder name from the parts that tell runs apart (empty parts dropped):
    ``run_name("isic", "linear", "la", "wrs", "tte")`` -> ``isic-linear-la-wrs-tte``. Characters
    other than letters, digits, ``.``, ``_``, ``=`` and ``-`` become ``-``."""
    words = []
    for part in parts:
        text = "" if part is None or part is False else str(part)
        text = "".join(ch if ch.isalnum() or ch in "._=-" else "-" for ch in text).strip("-")
        while "--" in text:
            text = text.replace("--", "-")
        if text:
            words.append(text)
    return "-".join(words)


# --------------------------------------------------------------------------------------
# Provenance: which featcache, which command line, when (never a knob: see NOT_KNOBS)

PROVENANCE_KEYS = ("featcache_version", "command_line", "created_at")


def provenance() -> dict:
    """``featcache_version``, ``command_line`` (``sys.argv`` as a list) and ``created_at`` (UTC,
    ISO 8601, seconds): recorded in every run's ``config.json``."""
    from featcache import __version__

    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return {"featcache_version": __version__, "command_line": list(sys.argv),
            "created_at": now.isoformat()}


def with_provenance(config: dict) -> dict:
    """``config`` with :func:`provenance` added (entries already there are kept)."""
    return {**config, **{k: v for k, v in provenance().items() if k not in config}}


@dataclass
class RunWriter:
    """Collects one run's seeds and writes the run directory."""

    out_dir: Path
    config: dict
    class_names: list[str]
    method: str = ""
    per_seed: list[dict] = field(default_factory=list)
    predictions: list[pl.DataFrame] = field(default_factory=list)
    splits: list[pl.DataFrame] = field(default_factory=list)
    confusion: np.ndarray | None = None
    train_counts: list[np.ndarray] = field(default_factory=list)
    evals: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)  # (seed, labels, scores)
    groups: dict[str, list[int]] | None = None  # many/medium/few of the first seed that gave them

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.config = with_provenance(self.config)
        write_json(self.out_dir / "config.json", self.config)

    def add_seed(
        self,
        seed: int,
        metrics: dict,
        *,
        labels: np.ndarray,
        scores: np.ndarray,
        rows: np.ndarray,
        ids: list[str] | None = None,
        split: pl.DataFrame | None = None,
        train_counts: np.ndarray | None = None,
        checkpoint: dict | None = None,
        groups: dict[str, list[int]] | None = None,
    ) -> None:
        """Record one seed: its metrics, test predictions (scores [n, C]), split, checkpoint
        and class groups (for the per-class figure's shading)."""
        from featcache.class_metrics import seed_extras

        scores = np.asarray(scores, dtype=np.float32)
        self.per_seed.append({"seed": seed, **metrics, **seed_extras(labels, scores)})
        self.evals.append((seed, np.asarray(labels), scores))
        C = scores.shape[1]
        pred = scores.argmax(1)
        frame = {
            "seed": np.full(len(rows), seed, dtype=np.int64),
            "row": np.asarray(rows, dtype=np.int64),
            "pred": pred.astype(np.int64),
            "scores": scores.tolist(),
        }
        if ids is not None:
            frame["id"] = [ids[i] for i in rows]
        if labels.ndim == 1:
            frame["label"] = labels.astype(np.int64)
            cm = confusion_matrix(labels, pred, C)
            self.confusion = cm if self.confusion is None else self.confusion + cm
        else:
            frame["label"] = labels.astype(np.int64).tolist()
        self.predictions.append(pl.DataFrame(frame))
        if split is not None:
            self.splits.append(split)
        if train_counts is not None:
            self.train_counts.append(np.asarray(train_counts))
        if groups and self.groups is None:
            self.groups = {g: [int(c) for c in cs] for g, cs in groups.items()}
        if checkpoint is not None:
            save_checkpoint(self.out_dir / "checkpoints" / f"seed-{seed}.pt", checkpoint)

    def finish(self) -> dict:
        """Write metrics, predictions, splits and plots; return the summary (metrics.json)."""
        from featcache.class_metrics import write_extras

        summary = summarize(self.per_seed)
        # per_class.parquet/.csv; sensitivity/specificity (two classes); --bootstrap intervals
        summary.update(write_extras(self.out_dir, self.evals, self.class_names, self.per_seed,
                                    bootstrap=int(self.config.get("bootstrap") or 0),
                                    bootstrap_seed=int(self.config.get("bootstrap_seed") or 0)))
        doc = {**summary, "method": self.method, "per_seed": self.per_seed}
        write_json(self.out_dir / "metrics.json", doc)
        table = metrics_frame(self.per_seed, method=self.method)
        table.write_parquet(self.out_dir / "metrics.parquet")
        table.write_csv(self.out_dir / "metrics.csv")
        if self.predictions:
            pl.concat(self.predictions, how="diagonal").write_parquet(self.out_dir / "predictions.parquet")
        if self.splits:
            pl.concat(self.splits, how="diagonal").write_parquet(self.out_dir / "splits.parquet")
        self._plots()
        log.info("wrote run directory %s", self.out_dir)
        return doc

    def _plots(self) -> None:
        """confusion, per_class_acc and loss_curve figures (:func:`featcache.plots.write_run_plots`)
        in the formats of ``config["plot_format"]`` (PNG by default)."""
        from featcache.plots import parse_formats, write_run_plots

        name = self.out_dir.name
        title = name if self.method in ("", name) else f"{name} — {self.method}"
        write_run_plots(self.out_dir, title=title, class_names=self.class_names,
                        confusion=self.confusion, per_seed=self.per_seed,
                        train_counts=self.train_counts, groups=self.groups,
                        formats=parse_formats(self.config.get("plot_format") or "png"))
        self._reliability()

    def _reliability(self) -> None:
        """reliability.png from every single-label seed's test rows (seeds pooled); with a
        fitted temperature per seed (``--calibrate temperature``) the calibrated curve too."""
        from featcache.plots import reliability_figure, save

        evals = [(s, y, z) for s, y, z in self.evals if y.ndim == 1]
        if not evals:
            return
        temps = {m["seed"]: m.get("temperature") for m in self.per_seed}
        labels = np.concatenate([y for _, y, _ in evals])
        logits = np.concatenate([z for _, _, z in evals])
        cal = None
        if all(temps.get(s) is not None for s, _, _ in evals):  # each seed's own T
            cal = np.concatenate([z.astype(np.float64) / temps[s] for s, _, z in evals])
        fig = reliability_figure(labels, logits, calibrated=cal,
                                 title=f"{self.method or self.out_dir.name}: reliability "
                                       "(15 bins, seeds pooled)")
        save(fig, self.out_dir / "reliability")


def metrics_frame(per_seed: list[dict], *, method: str = "") -> pl.DataFrame:
    """One row per seed with ``method``, ``seed`` and every key of :data:`SUMMARY_KEYS`
    (and the temperature-scaling figures when the seeds have them)."""
    keys = [*SUMMARY_KEYS, *(k for k in CALIBRATED_EXTRA if any(k in m for m in per_seed))]
    return pl.DataFrame(
        {
            "method": [method] * len(per_seed),
            "seed": [int(m["seed"]) for m in per_seed],
            **{k: [_float(m.get(k)) for m in per_seed] for k in keys},
        },
        schema={"method": pl.String, "seed": pl.Int64, **{k: pl.Float64 for k in keys}},
    )


def _float(v: object) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def write_run(
    out_dir: str | Path,
    config: dict,
    per_seed_metrics: list[dict],
    predictions: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    class_names: list[str],
    method: str = "",
    splits: list[pl.DataFrame] | None = None,
    train_counts: list[np.ndarray] | None = None,
    checkpoints: list[dict] | None = None,
    ids: list[str] | None = None,
) -> dict:
    """Write a whole run at once. ``predictions[i]`` is ``(rows, labels, scores)`` of seed i."""
    writer = RunWriter(Path(out_dir), config, class_names, method=method)
    for i, metrics in enumerate(per_seed_metrics):
        rows, labels, scores = predictions[i]
        seed = int(metrics.get("seed", i))
        writer.add_seed(
            seed,
            {k: v for k, v in metrics.items() if k != "seed"},
            labels=labels,
            scores=scores,
            rows=rows,
            ids=ids,
            split=splits[i] if splits else None,
            train_counts=train_counts[i] if train_counts else None,
            checkpoint=checkpoints[i] if checkpoints else None,
        )
    return writer.finish()


# --------------------------------------------------------------------------------------
# Tables


PAPER_COLUMNS = (("Many", "many_acc"), ("Med", "medium_acc"), ("Few", "few_acc"),
                 ("Total", "acc"), ("F1", "macro_f1"))


def read_run(run_dir: str | Path) -> dict:
    """``metrics.json`` and ``config.json`` of a run directory, with its path."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise FeatcacheError(f"{run_dir} is not a run directory (it has no metrics.json).")
    metrics = _read_json_object(path)
    cfg_path = run_dir / "config.json"
    config = _read_json_object(cfg_path) if cfg_path.is_file() else {}
    return {"run": str(run_dir), "metrics": metrics, "config": config}


def _read_json_object(path: Path) -> dict:
    """A JSON object from ``path``; ``FeatcacheError`` naming the file, line and column otherwise."""
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise FeatcacheError(f"{path} is not UTF-8 text (byte {e.start}); it is not a featcache "
                             "run file. Rerun the run, or leave it out.") from None
    except json.JSONDecodeError as e:
        raise FeatcacheError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                             "the run is damaged. Rerun it, or leave it out of the report.") from None
    if not isinstance(obj, dict):
        raise FeatcacheError(f"{path} holds a JSON {type(obj).__name__}, not the object a run writes.")
    if path.name == "metrics.json" and not isinstance(obj.get("per_seed", []), list):
        raise FeatcacheError(f"{path}: 'per_seed' is not a list; the run is damaged.")
    return obj


# Entries of config.json that say where, when or on what a run was made rather than what it
# is: never shown as knobs (the cache is shown by file name; a grid's search space and
# bookkeeping are summarised by the knobs of its selected configuration).
NOT_KNOBS = frozenset({
    "out", "method", "device", "device_requested", "torch_version", "featcache_version",
    "version", "command", "command_line", "argv", "cwd", "timestamp", "created", "created_at",
    "started", "finished", "host", "hostname", "user", "grouping", "notes", "grid",
    "n_configurations", "selected", "selected_config", "select", "seconds", "train_seconds",
    # per-seed records of a run, not settings: fitted temperatures, classes short of --shots,
    # what a validation split was used for (``validation`` itself IS shown: realistic vs tuned)
    "temperature", "shots_short", "validation_use", "compare",
}) | frozenset(PROVENANCE_KEYS)


def _knob_text(key: str, value: object) -> str | None:
    """A config value as a table cell (``None``: not a knob, e.g. a nested dict). Floats in
    :func:`featcache.tables.fmt_number` so 5e-4 reads as such and is never rounded to 0.00."""
    if isinstance(value, dict):
        return None
    if key == "cache" and isinstance(value, str):
        return Path(value).name
    if isinstance(value, list | tuple):
        parts = [_knob_text(key, v) for v in value]
        return None if any(p is None for p in parts) else ",".join(parts)
    if value is None:
        return "–"
    if isinstance(value, float):
        from featcache.tables import fmt_number

        return fmt_number(value)
    return str(value)


def run_knobs(run: dict) -> dict[str, str]:
    """The settings of a run (:func:`read_run`'s dict) as table cells: the scalar entries of
    its ``config.json``, a grid's selected configuration over its base settings, without the
    entries of :data:`NOT_KNOBS` and without fingerprints."""
    config = run.get("config") or {}
    merged = dict(config)
    if isinstance(config.get("selected_config"), dict):
        merged.update(config["selected_config"])
    out = {}
    for k, v in merged.items():
        if k in NOT_KNOBS or k.endswith(("_fingerprint", "_version")):
            continue
        text = _knob_text(k, v)
        if text is not None:
            out[k] = text
    return out


def differing_knobs(runs: list[dict]) -> list[str]:
    """The knobs whose shown value is not the same in every run that has them, in the order
    the first run that has each one lists them. A knob only some runs have (a TFA-LT run's
    ``ensemble_lr`` beside a linear head) is not a difference by itself; ``pipeline`` is, so
    runs of different commands are always told apart."""
    knobs = [run_knobs(r) for r in runs]
    order: list[str] = []
    for k in knobs:
        order += [name for name in k if name not in order]
    if len(runs) < 2:
        return []
    out = []
    for name in order:
        values = [k.get(name) for k in knobs]
        present = {v for v in values if v is not None}
        if len(present) > 1 or (name == "pipeline" and None in values):
            out.append(name)
    return out


def runs_frame(runs: list[dict], *, knobs: list[str] | tuple[str, ...] = ()) -> pl.DataFrame:
    """One row per run: run, method, seeds, every metric with its std, then the config
    entries named in ``knobs`` as text (e.g. :func:`differing_knobs`; a knob whose name is
    taken by a column above is called ``config_<name>``)."""
    rows = []
    for r in runs:
        m = r["metrics"]
        row = {"run": r["run"], "method": m.get("method") or Path(r["run"]).name,
               "seeds": len(m.get("per_seed", []))}
        for k in SUMMARY_KEYS:
            row[k] = _float(m.get(k))
            row[f"{k}_std"] = _float(m.get(f"{k}_std"))
        shown = run_knobs(r) if knobs else {}
        for k in knobs:
            row[knob_column(k)] = shown.get(k, "–")
        rows.append(row)
    return pl.DataFrame(rows)


_FRAME_COLUMNS = frozenset({"run", "method", "seeds", *SUMMARY_KEYS, *(f"{k}_std" for k in SUMMARY_KEYS)})


def knob_column(knob: str) -> str:
    """The column :func:`runs_frame` gives ``knob``: its name, or ``config_<name>`` when a
    metric or bookkeeping column already has that name (e.g. ``seeds``, the seed count)."""
    return f"config_{knob}" if knob in _FRAME_COLUMNS else knob


def _pct(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


# Columns of ``featcache report``: the paper's, then balanced accuracy, AUC and the expected
# calibration error (featcache.calibration; percent like the others, lower is better).
REPORT_COLUMNS = PAPER_COLUMNS + (("Bal.", "balanced_acc"), ("AUC", "auc"), ("ECE", "ece"))


def markdown_table(frame: pl.DataFrame, *, title_column: str = "method", title_header: str = "Method",
                   columns: tuple[tuple[str, str], ...] = PAPER_COLUMNS,
                   knobs: list[str] | tuple[str, ...] = ()) -> str:
    """The paper's layout (Method | Many | Med | Few | Total | F1), percent, mean ± std;
    ``columns`` (title, metric key) replace the metric columns, ``knobs`` (columns of
    ``frame``) follow the title column (``title_column``, headed ``title_header``). A figure
    whose interval ``frame`` holds (``<key>_ci_lo``/``_ci_hi``, :func:`featcache.report.report_frame`)
    is followed by it in brackets: ``75.00 ± 5.00 [60.00, 87.50]``."""
    def cell(row: dict, key: str) -> str:
        text = _pct(row[key], row.get(f"{key}_std"))
        lo, hi = row.get(f"{key}_ci_lo"), row.get(f"{key}_ci_hi")
        return text if lo is None or hi is None else f"{text} [{100 * lo:.2f}, {100 * hi:.2f}]"

    titles = [title_header, *(k.removeprefix("config_") for k in knobs), *(c for c, _ in columns)]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for row in frame.iter_rows(named=True):
        cells = [str(row[title_column]), *(str(row[k]) for k in knobs),
                 *(cell(row, k) for _, k in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rich_table(frame: pl.DataFrame, *, title: str = "", title_column: str = "method",  # noqa: ANN201
               title_header: str = "Method",
               columns: tuple[tuple[str, str], ...] = PAPER_COLUMNS,
               knobs: list[str] | tuple[str, ...] = (), std: bool = True, compact: bool = False):
    """A rich Table in the paper's layout for the terminal (the CLI prints it); ``columns``
    and ``knobs`` as in :func:`markdown_table`; ``std=False`` shows means only, ``compact``
    writes ``81.23±0.40`` without box lines (for narrow terminals and log files). No cell ever
    wraps or shrinks: :func:`featcache.tables.print_runs` picks the layout that fits."""
    from featcache.tables import mean_std, plain_table

    rows = [[str(row[title_column]), *(str(row[k]) for k in knobs),
             *(mean_std(row[k], row.get(f"{k}_std") if std else None, compact=compact)
               for _, k in columns)]
            for row in frame.iter_rows(named=True)]
    heads = [title_header, *(k.removeprefix("config_") for k in knobs), *(c for c, _ in columns)]
    right = [i > len(knobs) for i in range(len(heads))]
    return plain_table(heads, rows, title=title, right=right, compact=compact)


@dataclass
class RunResult:
    """What a pipeline returns: the summary written to metrics.json and where it went."""

    out_dir: Path
    metrics: dict
    config: dict
