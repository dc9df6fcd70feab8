"""``featcache compare``: every frozen-feature method on one cache, same splits, one table.

Read top to bottom:

1. :class:`CompareConfig` names the cache, the methods (registered heads, plus ``tfa-lt``),
   the seeds and the K-shot values (``None`` = all training rows), and the settings every
   method shares (protocol, validation, calibration, epochs). Every method's own run config
   (:class:`~featcache.pipelines.train_head.TrainHeadConfig` or
   :class:`~featcache.pipelines.tfa_lt.TfaLtConfig`) is built and validated before anything trains.
2. For every K and method, one ordinary run (``train-head`` / TFA-LT, every seed batched in
   one run) writes its own run directory under ``OUT/runs/`` (metrics with calibration,
   reliability diagram, predictions, splits, checkpoints). The splits are the same for every
   method: they depend only on the cache, the protocol, the seed, ``val_fraction`` and K
   (:mod:`featcache.splits`), never on the method.
3. The wall time of each run is measured around it (loading the features, training every
   seed, evaluating, writing), beside its training time alone.
4. ``compare.md``/``.parquet``/``.csv`` hold one row per (K, method): accuracy, balanced
   accuracy, many/medium/few, ECE, Brier, NLL (mean ± std over seeds), validation used,
   seconds, and a note; ``accuracy_vs_shots.png`` (one line per method, mean ± std over
   seeds) when several K are compared; ``config.json`` every setting.

Methods that adapt CLIP's text classifier (``needs_text``: tip-adapter, clip-adapter, lp++,
clap, taskres) refuse a cache without text features in ``train-head``; here they are
skipped with that reason in the table's note, and the other methods still run. A method
that refuses its setting (e.g. ``logreg`` with 1 shot, which cannot carve a validation
split for its C search unless ``--validation-free``) gets its error as the note.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl

from featcache import knobs
from featcache.cache import open_cache
from featcache.errors import FeatcacheError, unknown
from featcache.heads import HEADS
from featcache.knob_fields import knob_field
from featcache.pipelines import tfa_lt, train_head
from featcache.runs import refuse_existing_run, write_json

log = logging.getLogger(__name__)

DEFAULT_HEADS = knobs.COMPARE_HEADS
METHODS_EXTRA = ("tfa-lt",)  # not a head: the TFA-LT pipeline (two adapters + logit ensembler)
TABLE_FILES = ("compare.md", "compare.parquet", "compare.csv", "config.json", "accuracy_vs_shots.png")
# (column title, metric key) of the markdown and terminal tables, percent, mean ± std
COLUMNS = (("Total", "acc"), ("Bal.", "balanced_acc"), ("Many", "many_acc"), ("Med", "medium_acc"),
           ("Few", "few_acc"), ("ECE", "ece"))
FIGURES = ("acc", "balanced_acc", "many_acc", "medium_acc", "few_acc", "macro_f1", "ece",
           "brier", "nll")


@dataclass(frozen=True)
class CompareConfig:
    """A comparison: methods × K-shot values on one cache, every seed, the same splits.

    ``epochs``/``lr``/``batch_size`` are every SGD-trained method's (TFA-LT: stage I; its
    stage II keeps TFA-LT's 100 epochs); the methods' own knobs keep their defaults."""

    cache: str
    heads: tuple[str, ...] = knob_field("compare_heads")
    seeds: tuple[int, ...] = knob_field("seeds")
    shots: tuple[int | None, ...] = knob_field("compare_shots")  # None: every training row
    protocol: str | None = knob_field("protocol")
    epochs: int = knob_field("epochs")
    batch_size: int = knob_field("batch_size")
    lr: float = knob_field("lr")
    val_fraction: float = knob_field("val_fraction")
    validation_free: bool = knob_field("validation_free")
    calibrate: str = knob_field("calibrate")
    test_per_class: int | None = knob_field("test_per_class")
    text_source: str = knob_field("text_source")
    device: str = knob_field("device")
    precision: str = knob_field("precision")
    out: str | None = None

    def __post_init__(self) -> None:
        heads = tuple(h.strip() for h in self.heads)
        if not heads:
            raise FeatcacheError(f"--heads is empty; e.g. --heads {','.join(DEFAULT_HEADS)}.")
        for h in heads:
            if h not in METHODS_EXTRA and h not in HEADS:
                raise unknown("head", h, [*HEADS.names(), *METHODS_EXTRA])
        if len(set(heads)) != len(heads):
            raise FeatcacheError(f"--heads lists a method twice: {list(heads)}.")
        shots = tuple(None if s is None else int(s) for s in self.shots)
        if not shots or len(set(shots)) != len(shots):
            raise FeatcacheError(f"--shots must list distinct values, got {list(self.shots)}.")
        object.__setattr__(self, "heads", heads)
        object.__setattr__(self, "shots", shots)
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        for k in shots:  # every method's run config, validated now (before anything trains)
            for h in heads:
                self.method_config(h, k, out="-")

    def method_config(self, head: str, shots: int | None, *, out: str) -> object:
        """The run config of one method at one K (the shared settings, the method's defaults)."""
        shared = dict(cache=self.cache, seeds=self.seeds, protocol=self.protocol, epochs=self.epochs,
                      batch_size=self.batch_size, lr=self.lr, val_fraction=self.val_fraction,
                      validation_free=self.validation_free, calibrate=self.calibrate,
                      test_per_class=self.test_per_class, text_source=self.text_source,
                      device=self.device, precision=self.precision, shots=shots, out=out,
                      method=method_name(head))
        if head == "tfa-lt":
            return tfa_lt.TfaLtConfig(ensemble="logit", **shared)
        return train_head.TrainHeadConfig(head=head, **shared)


def method_name(head: str) -> str:
    """The name a method has in the table."""
    return "TFA-LT (logit)" if head == "tfa-lt" else head


def shots_label(shots: int | None) -> str:
    """``16`` -> ``"16"``; ``None`` -> ``"full"``."""
    return "full" if shots is None else str(shots)


@dataclass
class CompareResult:
    """What :func:`run` returns: the folder, the table (one row per K and method) and the files."""

    out_dir: Path
    table: pl.DataFrame
    config: dict
    files: list[Path]
    seconds: float


def run(cfg: CompareConfig, *, progress: Callable[[str], None] | None = None,
        overwrite: bool = False) -> CompareResult:
    """Run every method at every K (each one batched run over the seeds) and write the table."""
    t0 = time.perf_counter()
    say = progress or (lambda msg: log.info(msg))
    out_dir = Path(cfg.out) if cfg.out else Path("runs") / f"{Path(cfg.cache).stem}-compare"
    if not overwrite and any((out_dir / n).exists() for n in TABLE_FILES):
        raise FeatcacheError(f"{out_dir} already holds a comparison; choose another --out, or pass "
                             "--overwrite to replace it (nothing was changed).")
    cache = open_cache(cfg.cache)
    if cfg.calibrate != "none" and cfg.val_fraction == 0 and not (cache.splits == "val").any():
        raise FeatcacheError("--calibrate temperature fits T on a validation split (never on test) "
                             f"and {cfg.cache} has no val split: pass --val-fraction 0.2.")
    has_text = cache.text_features is not None and cfg.text_source != "class-mean"
    plan = [(k, h) for k in cfg.shots for h in cfg.heads]
    runs_dir = out_dir / "runs"
    for k, h in plan:  # refuse before any work, unless --overwrite
        refuse_existing_run(runs_dir / _run_name(h, k), overwrite=overwrite)
    rows = []
    for n, (k, head) in enumerate(plan, 1):
        name = _run_name(head, k)
        say(f"[{n}/{len(plan)}] {method_name(head)}, shots {shots_label(k)}")
        row = {"method": method_name(head), "head": head, "shots": k, "run": str(runs_dir / name)}
        if head != "tfa-lt" and HEADS.get(head).needs_text and not has_text:
            rows.append({**row, "note": "skipped: adapts CLIP's text classifier and the cache has "
                                        "no text features (or --text-source class-mean)"})
            continue
        mcfg = cfg.method_config(head, k, out=str(runs_dir / name))
        start = time.perf_counter()
        try:
            runner = tfa_lt.run if head == "tfa-lt" else train_head.run
            result = runner(mcfg, overwrite=overwrite)
        except FeatcacheError as e:  # the method refuses this setting: say why, go on
            log.warning("compare: %s at shots %s refused: %s", head, shots_label(k), e)
            rows.append({**row, "note": f"error: {e}"})
            continue
        seconds = time.perf_counter() - start
        m, c = result.metrics, result.config
        row.update({key: _num(m.get(key)) for key in FIGURES})
        row.update({f"{key}_std": _num(m.get(f"{key}_std")) for key in FIGURES})
        row.update(seconds=seconds, train_seconds=_num(m.get("train_seconds")),
                   validation=c.get("validation"), prototypes=c.get("prototypes"),
                   note=_note(c))
        rows.append(row)
        say(f"    {method_name(head)}: acc {100 * row['acc']:.2f}, ECE {100 * row['ece']:.2f} "
            f"({seconds:.1f} s)")
    table = _frame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "compare.parquet", out_dir / "compare.csv", out_dir / "compare.md"]
    table.write_parquet(files[0])
    table.write_csv(files[1])
    files[2].write_text(markdown(table))
    if len(cfg.shots) > 1:
        curve = [r for r in rows if r.get("acc") is not None and r["shots"] is not None]
        if curve:
            files.append(plot_shots_curve(curve, out_dir / "accuracy_vs_shots.png",
                                          title=f"{Path(cfg.cache).name}: accuracy vs shots"))
    seconds = time.perf_counter() - t0
    config = {**asdict(cfg), "pipeline": "compare", "seeds": list(cfg.seeds),
              "shots": [shots_label(k) for k in cfg.shots], "heads": list(cfg.heads),
              "runs": {f"{h}/{shots_label(k)}": str(runs_dir / _run_name(h, k)) for k, h in plan},
              "seconds": seconds}
    write_json(out_dir / "config.json", config)
    files.append(out_dir / "config.json")
    return CompareResult(out_dir, table, config, files, seconds)


def _run_name(head: str, shots: int | None) -> str:
    return head.replace("+", "p") + ("" if shots is None else f"-{shots}shot")


def _num(v: object) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _note(config: dict) -> str:
    notes = []
    if config.get("prototypes") == "class-mean":
        notes.append("class-mean prototypes (no text features)")
    short = config.get("shots_short") or {}
    if short:
        _, classes = next(iter(short.items()))
        notes.append("fewer than K images: " + ", ".join(f"{c} ({n})" for c, n in classes.items()))
    return "; ".join(notes)


def _frame(rows: list[dict]) -> pl.DataFrame:
    schema = {"method": pl.String, "head": pl.String, "shots": pl.Int64, "validation": pl.String,
              **{k: pl.Float64 for k in FIGURES}, **{f"{k}_std": pl.Float64 for k in FIGURES},
              "seconds": pl.Float64, "train_seconds": pl.Float64, "prototypes": pl.String,
              "note": pl.String, "run": pl.String}
    return pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema)


def _pct(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.2f}" + ("" if std is False else f" ± {100 * (std or 0.0):.2f}")


def table_rows(table: pl.DataFrame, *, std: bool = True) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the comparison table (shared by the markdown file and the CLI;
    ``std=False``: means only, for the terminal)."""
    heads = ["Method", "Shots", "Validation", *(t for t, _ in COLUMNS), "NLL", "Time (s)", "Note"]
    cells = []
    for r in table.iter_rows(named=True):
        cells.append([r["method"], shots_label(r["shots"]), r["validation"] or "–",
                      *(_pct(r[k], r[f"{k}_std"] if std else False) for _, k in COLUMNS),
                      "–" if r["nll"] is None else f"{r['nll']:.3f}",
                      "–" if r["seconds"] is None else f"{r['seconds']:.1f}", r["note"] or ""])
    return heads, cells


def markdown(table: pl.DataFrame) -> str:
    """The comparison as a markdown table (percent, mean ± std over seeds)."""
    heads, cells = table_rows(table)
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def plot_shots_curve(rows: list[dict], path: str | Path, *, title: str = "") -> Path:
    """``path`` (a .png): accuracy and balanced accuracy against K, one line per method,
    mean ± std over seeds (:func:`featcache.plots.shots_curve_figure`)."""
    from featcache.plots import save, shots_curve_figure

    path = Path(path)
    save(shots_curve_figure(rows, title=title), path.with_suffix(""))
    return path
