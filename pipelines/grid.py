"""``featcache grid``: every combination of some knobs × seeds, trained together, chosen on val.

Read top to bottom:

1. **Parse** ``--param NAME=V1,V2`` against the pipeline's own config dataclass
   (:class:`~featcache.pipelines.train_head.TrainHeadConfig` or :class:`~featcache.pipelines.tfa_lt.TfaLtConfig`):
   knob names are its field names (``knobs()``), value types come from its type hints, and
   every combination is built as a real config, so every bad name, type or value fails
   before anything trains (:class:`GridConfig`).
2. **Group**: configurations that differ only in per-member knobs (the fields of
   :class:`~featcache.heads.base.MemberSpec`: lr, weight decay, momentum, epochs, batch size, schedule,
   loss and its knobs, sampler, tau, sigma, init) are members of ONE batched head; knobs that
   change what the head is, what it reads or how it computes (``head``, ``view``, ``feature``,
   ``tte``, ``text_source``, ``template``, ``precision``) make separate groups, each trained
   in its own precision (so ``--param precision=fp32,bf16`` compares the two side by side).
   Members with other epochs or batch sizes stay in the group: the trainer pads batches to
   the widest and members that finish earlier sit out (their parameters and momentum are
   left untouched).
3. **Train** (dinov2 linear-eval style): members that draw the same batches (same seed,
   random stream, sampler and batch size — e.g. configurations that differ only in lr or
   weight decay) share one gather of the cached rows, ``x`` ``[B, D]``, and heads whose
   logits are a linear map of the input (``linear``, ``cosine``) compute every member in one
   matrix product ``[B, D] @ [D, G·C]`` (:meth:`featcache.heads.base.Head.forward_shared`); both come
   from :func:`featcache.heads.training.train_members` with ``share_batches=True``. Other heads
   (adapters, ensemblers) get one gather per member there. TFA-LT (:func:`featcache.heads.tfa_lt_stages.train_tfa_lt`, the
   stages ``train-head --ensemble`` trains too): stage-I adapters that are the same for
   several configurations (a grid over stage-II knobs) are trained once.
   Every member keeps its own random streams, so each configuration gets the result it gets
   when trained alone with ``train-head`` and the same seed (up to float rounding of the
   batched products; a test checks it).
4. **Evaluate** every configuration and seed on the validation rows (carved from training
   data by :mod:`featcache.splits`, ``--val-fraction``) and on the test rows. The configuration
   with the best mean validation ``select`` metric is chosen; test labels are never read
   before that choice. Test figures are reported for it (``metrics.json``) and for every
   configuration in the table, for inspection only.
5. **Write** (DESIGN.md §5): ``config.json``; ``metrics.json`` (the selected configuration,
   means over seeds, ``_std``, ``per_seed``, plus ``selected`` and its validation figures);
   ``metrics.parquet``/``.csv`` (one row per configuration and seed: every knob, ``val_*``
   and ``test_*`` metrics); ``summary.parquet``/``.csv`` (one row per configuration, mean and
   std over seeds, ranked by validation); ``heatmap_<a>__<b>.png`` for every pair of gridded
   knobs (cells show the best mean validation figure over the other gridded knobs, with the
   test figure of that same best cell below it); predictions, splits and checkpoints of the
   selected configuration (loadable by ``featcache predict``).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch

from featcache.errors import FeatcacheError, did_you_mean
from featcache.heads import HEADS, ClassPrior, Head, HeadContext, MemberSpec, build_head
from featcache.heads.cached import (
    CachedData,
    SeedSetup,
    checkpoint_for,
    load_data,
    resolved_config,
    seed_setups,
)
from featcache.heads.cached import (
    default_out as default_run_out,
)
from featcache.heads.losses import posthoc_adjust
from featcache.heads.tfa_lt_stages import train_tfa_lt
from featcache.heads.training import predict_logits, rows_per_chunk, stream_key, train_members
from featcache.knob_fields import knob_field
from featcache.metrics import METRIC_KEYS, compute_metrics, summarize
from featcache.pipelines import tfa_lt, train_head
from featcache.plots import parse_formats
from featcache.runs import RunWriter, clear_run, refuse_existing_run, write_json

log = logging.getLogger(__name__)

PipelineConfig = train_head.TrainHeadConfig | tfa_lt.TfaLtConfig

# Settings shared by the whole grid (they define the data, the split, the selection and
# where results go), so they are set once, never gridded.
RUN_LEVEL = {
    "cache": "the cache is set once with --cache",
    "seeds": "seeds are set once with --seeds",
    "device": "the device is set once with --device",
    "out": "the run directory is set once with --out",
    "method": "the method name is set once",
    "protocol": "every configuration must be compared on the same split (--protocol)",
    "val_fraction": "every configuration must be selected on the same validation rows",
    "test_per_class": "every configuration must be tested on the same rows",
    "ensemble": "a grid runs one TFA-LT variant (--ensemble)",
    "adapters": "a grid runs one TFA-LT variant (--no-adapters)",
    "plot_format": "figure formats are a setting of the whole run (--plot-format)",
    "bootstrap": "confidence intervals are a setting of the whole run (--bootstrap)",
    "bootstrap_seed": "confidence intervals are a setting of the whole run (--bootstrap-seed)",
    "validation_free": "a grid selects its configuration on validation rows",
    "calibrate": "calibrate the selected configuration with train-head --calibrate temperature",
}
# per-member knobs; the optimizer is not one (one batched run has one optimizer state:
# train_members), so configurations that differ in it train as separate heads
MEMBER_KNOBS = frozenset(f.name for f in fields(MemberSpec)) - {"optimizer"}
EVAL_ONLY = frozenset({"posthoc_tau"})
SELECT_METRICS = METRIC_KEYS


# --------------------------------------------------------------------------------------
# 1. The grid: names, types, combinations


def grid_knobs(cls: type) -> list[str]:
    """Knobs ``cls`` lets a grid vary: its ``knobs()`` less the run-level settings."""
    return [k for k in cls.knobs() if k not in RUN_LEVEL]


def _knob_type(cls: type, name: str) -> tuple[type, bool]:
    """``(base type, accepts None)`` of knob ``name`` from the config's type hints."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        base = [a for a in args if a is not type(None)]
        return base[0], type(None) in args
    return hint, False


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def parse_value(cls: type, name: str, value: object) -> object:
    """Convert one value (a CLI string or a Python value) to knob ``name``'s type, or fail.

    The error names the knob, the value and the expected type.
    """
    base, nullable = _knob_type(cls, name)
    expected = _TYPE_WORDS.get(base, base.__name__) + (" or none" if nullable else "")
    bad = FeatcacheError(f"Knob '{name}' expects {expected}, got {value!r}.")
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        if nullable:
            return None
        raise bad
    if isinstance(value, str):
        text = value.strip()
        try:
            if base is bool:
                words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
                return words[text.lower()]
            if base is int:
                return int(text)
            if base is float:
                out = float(text)
                if not math.isfinite(out):
                    raise ValueError
                return out
        except (ValueError, KeyError):
            raise bad from None
        if base is str:
            if not text:
                raise bad
            return text
        raise bad
    if base is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, base):
        return value
    raise bad


def parse_param(spec: str) -> tuple[str, list[str]]:
    """``"lr=0.01,0.1"`` -> ``("lr", ["0.01", "0.1"])`` (values still strings)."""
    name, sep, values = spec.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name:
        raise FeatcacheError(f"--param expects NAME=V1,V2,... (e.g. lr=0.01,0.1), got '{spec}'.")
    items = [v.strip() for v in values.split(",")]
    if not values.strip() or any(not v for v in items):
        raise FeatcacheError(f"--param {name} has an empty value in '{spec}'; list values like "
                             f"{name}=V1,V2.")
    return name, items


@dataclass(frozen=True)
class GridConfig:
    """A grid: a base pipeline config (fixed knobs) and the knobs to vary, with their values.

    ``params`` is ``((name, (v1, v2, ...)), ...)``; values may be CLI strings or Python
    values, and are converted to each knob's type. ``select`` is the validation metric that
    chooses the configuration; ``top`` how many configurations the summary shows first.
    Everything is validated here, including every combination, before anything runs.
    """

    base: PipelineConfig
    params: tuple[tuple[str, tuple], ...]
    select: str = knob_field("select")
    top: int = knob_field("grid_top")
    out: str | None = None
    configs: tuple[PipelineConfig, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        cls = type(self.base)
        # a head's own knobs are gridded by their names (--param hidden=...), never as a tuple
        allowed = [k for k in grid_knobs(cls) if k != "head_options"]
        if not self.params:
            raise FeatcacheError("The grid is empty: give at least one --param NAME=V1,V2,... "
                                 f"(knobs: {', '.join(allowed)}).")
        seen: set[str] = set()
        parsed = []
        head_knobs = ({f.name: f for f in HEADS.get(self.base.head).knob_fields()}
                      if hasattr(self.base, "head") else {})
        for name, values in self.params:
            if name == "head_options":
                raise FeatcacheError("Grid a head's own knob by its name, e.g. --param hidden=64,256"
                                     f" (knobs of head '{self.base.head}': "
                                     f"{', '.join(head_knobs) or 'none'}).")
            if name in head_knobs and name not in allowed:  # a knob the head declares
                values = tuple(values)
                if name in seen or not values:
                    raise FeatcacheError(f"--param {name}: give its values once, non-empty.")
                seen.add(name)
                typed = tuple(dict(HEADS.get(self.base.head).parse_options({name: v}))[name]
                              for v in values)
                if len(set(typed)) != len(typed):
                    raise FeatcacheError(f"--param {name} lists a value twice: {list(values)}.")
                parsed.append((name, typed))
                continue
            if name in RUN_LEVEL and name in cls.knobs():
                raise FeatcacheError(f"Knob '{name}' cannot be gridded: {RUN_LEVEL[name]}.")
            if name not in allowed:
                own = (f" Knobs of head '{self.base.head}': {', '.join(head_knobs)}."
                       if head_knobs else "")
                raise FeatcacheError(
                    f"Unknown knob '{name}'.{did_you_mean(name, [*allowed, *head_knobs])} Knobs of "
                    f"{'TFA-LT' if cls is tfa_lt.TfaLtConfig else 'train-head'}: "
                    f"{', '.join(allowed)}.{own}"
                )
            if name in seen:
                raise FeatcacheError(f"Knob '{name}' is given twice; list all its values in one "
                                     f"--param {name}=V1,V2,...")
            seen.add(name)
            values = tuple(values)
            if not values:
                raise FeatcacheError(f"--param {name} has no values; the grid would be empty.")
            typed = tuple(parse_value(cls, name, v) for v in values)
            if len(set(typed)) != len(typed):
                raise FeatcacheError(f"--param {name} lists a value twice: {list(values)}.")
            parsed.append((name, typed))
        if getattr(self.base, "validation_free", False) or getattr(self.base, "calibrate", "none") != "none":
            raise FeatcacheError(
                "A grid selects its configuration on validation rows: --validation-free does not "
                "apply, and --calibrate temperature is for the selected configuration "
                "(train-head --calibrate temperature with its knobs).")
        if self.select not in SELECT_METRICS:
            from featcache.errors import unknown

            raise unknown("selection metric", self.select, SELECT_METRICS)
        if self.top < 1:
            raise FeatcacheError(f"--top must be >= 1, got {self.top}.")
        object.__setattr__(self, "params", tuple(parsed))
        configs = []
        for combo in itertools.product(*(v for _, v in parsed)):
            changes = dict(zip((n for n, _ in parsed), combo, strict=True))
            heads_given = {n: changes.pop(n) for n in list(changes) if n in head_knobs
                           and n not in allowed}
            if heads_given:
                changes["head_options"] = tuple({**dict(self.base.head_options),
                                                 **heads_given}.items())
            try:
                configs.append(replace(self.base, **changes))
            except FeatcacheError as e:
                shown = ", ".join(f"{k}={v}" for k, v in changes.items())
                raise FeatcacheError(f"Grid configuration ({shown}) is invalid: {e}") from None
        for cfg in configs:
            if getattr(cfg, "head", None) == "logreg":
                raise FeatcacheError(
                    "--head logreg chooses its own C on a validation split carved from the "
                    "training rows (CLIP's protocol) and trains by L-BFGS, not in a grid; run "
                    "it with train-head --head logreg.")
        object.__setattr__(self, "configs", tuple(configs))

    @property
    def names(self) -> list[str]:
        """The gridded knobs, in the order given."""
        return [n for n, _ in self.params]

    @property
    def pipeline(self) -> str:
        """``train-head`` or ``tfa-lt``."""
        return "tfa-lt" if isinstance(self.base, tfa_lt.TfaLtConfig) else "train-head"


# --------------------------------------------------------------------------------------
# 2-3. Training: groups, shared batches, one matmul for all members


@dataclass
class Trained:
    """One group's trained members: ``logits(x)`` gives ``[G, n, C]`` for rows ``x`` ``[n, D]``;
    ``owner[g] = (config index, seed index)``; ``model(g)`` the checkpointable model of g."""

    logits: Callable[[torch.Tensor], torch.Tensor]
    owner: list[tuple[int, int]]
    model: Callable[[int], dict]
    train_loss: list[float]
    seconds: float
    epoch_loss: list[dict[str, list[float]]] | None = None  # per member: per_seed loss-curve keys


def _train_head_group(cfgs: list[tuple[int, train_head.TrainHeadConfig]], data: CachedData,
                      setups: list[SeedSetup]) -> Trained:
    """Train every (configuration, seed) of one head shape as members of one head."""
    head_name = cfgs[0][1].head
    need = HEADS.get(head_name).needs_prototypes or any(c.init == "text" for _, c in cfgs)
    # members: one per (configuration, seed), ordered by batch stream (contiguous streams)
    entries = [(i, j, c.member(s.seed, tau=data.tau_for(c.tau)))
               for i, c in cfgs for j, s in enumerate(setups)]
    entries.sort(key=lambda e: (*stream_key(e[2]), e[1]))
    members = [m for _, _, m in entries]
    ctx = HeadContext(
        in_dim=int(data.feats.shape[-1]), num_classes=data.num_classes,
        prototypes=torch.stack([setups[j].prototypes for _, j, _ in entries]) if need else None,
        class_means=torch.stack([setups[j].class_means for _, j, _ in entries]),
    )
    head = build_head(head_name, ctx, members, device=data.device)
    pools = [setups[j].pool for _, j, _ in entries]
    result = train_members(head, data.feats, data.labels, pools, share_batches=True,
                           precision=cfgs[0][1].precision,  # one precision per group
                           desc=f"grid {cfgs[0][1].head} ({len(members)} heads)")
    shares = type(head).forward_shared is not Head.forward_shared
    G = len(members)
    chunk = rows_per_chunk(G, max(head.in_dim, head.out_dim()))

    @torch.no_grad()
    def logits(x: torch.Tensor) -> torch.Tensor:  # [n, D] -> [G, n, C]
        if not shares:
            return predict_logits(head, x, batch=chunk)
        head.eval()  # the shared product: no [G, n, D] copy of the rows
        return torch.cat([head.forward_shared(x[r : r + 16384])
                          for r in range(0, x.shape[0], 16384)], 1)

    def model(g: int) -> dict:
        return {"kind": "head", "head": head.member(g).checkpoint()}

    return Trained(logits, [(i, j) for i, j, _ in entries], model,
                   [loss[-1] if loss else math.nan for loss in result.epoch_loss], result.seconds,
                   [{"epoch_loss": list(loss)} for loss in result.epoch_loss])


def _train_tfa_group(cfgs: list[tuple[int, tfa_lt.TfaLtConfig]], data: CachedData,
                     setups: list[SeedSetup]) -> Trained:
    """TFA-LT for every (configuration, seed) (:func:`featcache.heads.tfa_lt_stages.train_tfa_lt`:
    stage I once per distinct adapter, stage II one ensembler per pair)."""
    t = train_tfa_lt([c for _, c in cfgs], data, setups, desc="grid TFA-LT")
    owner = [(cfgs[k][0], j) for k, j, _, _ in t.pairs]
    return Trained(t.logits, owner, t.model, [t.final_loss(p) for p in range(len(owner))],
                   t.seconds, [t.curves(p) for p in range(len(owner))])


# --------------------------------------------------------------------------------------
# 4. Evaluation and selection


def _evaluate(logits: np.ndarray, labels: np.ndarray, setup: SeedSetup, num_classes: int) -> dict:
    """Metrics of logits ``[n, C]`` against ``labels`` ``[n]`` with the seed's class groups."""
    m = compute_metrics(labels, logits, num_classes=num_classes,
                        train_counts=setup.split.train_counts, groups=setup.split.groups)
    m.pop("per_class_acc", None)
    return m


def _adjust(logits: torch.Tensor, setup: SeedSetup, tau: float) -> torch.Tensor:
    counts = torch.as_tensor(setup.split.train_counts, device=logits.device)
    return posthoc_adjust(logits, ClassPrior.from_counts(counts).log_prior[0], tau)


def _group_key(cfg: PipelineConfig) -> tuple:
    """Configurations with equal keys train as members of one batched run: every knob that
    is not per-member (MemberSpec fields, TFA-LT's ``ensemble_*`` stage-II knobs), not
    evaluation-only and not run-level, e.g. ``head`` (a new setting lands here, safely)."""
    key = tuple((k, getattr(cfg, k)) for k in cfg.knobs()
                if k not in MEMBER_KNOBS and k not in EVAL_ONLY and k not in RUN_LEVEL
                and not k.startswith("ensemble_"))
    if hasattr(cfg, "head"):  # a head's own knobs are per member, unless they change shapes
        key += (("head_shape", HEADS.get(cfg.head).shape_knobs(cfg.head_options)),)
    return key


def _data_key(cfg: PipelineConfig) -> tuple:
    """What the features, prototypes and training rows depend on: view, feature kind, TTE,
    text source, and the K-shot draw (``shots``)."""
    return (cfg.view, cfg.feature, cfg.tte, cfg.text_source, cfg.template, cfg.shots)


def _knob_row(cfg: PipelineConfig, data: CachedData) -> dict:
    """Every knob of ``cfg`` (run-level settings left out; ``tau`` resolved)."""
    d = {k: v for k, v in asdict(cfg).items() if k not in RUN_LEVEL and k != "head_options"}
    d["tau"] = data.tau_for(cfg.tau)
    if hasattr(cfg, "head_options"):  # one column per knob the head declares, resolved
        d.update(asdict(HEADS.get(cfg.head).resolve_knobs(cfg.head_options)))
    return d


@dataclass
class GridResult:
    """What :func:`run` returns: the run directory, the tables and the selected configuration."""

    out_dir: Path
    metrics: dict  # metrics.json
    table: pl.DataFrame  # one row per configuration and seed
    summary: pl.DataFrame  # one row per configuration, ranked by validation
    selected: int  # index into GridConfig.configs
    config: dict
    heatmaps: list[Path]
    seconds: float


def default_out(grid: GridConfig) -> Path:
    """``runs/<cache>-grid-<base run's parts>-<gridded knobs>`` (e.g. ``runs/isic-grid-linear-la-lr-weight_decay``)."""
    base = grid.base
    parts = tfa_lt.name_parts(base) if grid.pipeline == "tfa-lt" else train_head.name_parts(base)
    return default_run_out(base, "grid", *parts, *grid.names)


def run(grid: GridConfig, *, progress: Callable[[str], None] | None = None,
        overwrite: bool = False) -> GridResult:
    """Train every configuration × seed, select on validation, write the run directory.

    An output directory that holds a run is refused before any work unless ``overwrite``
    (then that run's files are deleted once training has succeeded)."""
    t0 = time.perf_counter()
    out_dir = Path(grid.out) if grid.out else default_out(grid)
    refuse_existing_run(out_dir, overwrite=overwrite)
    say = progress or (lambda msg: log.info(msg))
    configs = grid.configs
    # data and splits, once per distinct input (view, feature, prototypes)
    loaded: dict[tuple, tuple[CachedData, list[SeedSetup]]] = {}
    for cfg in configs:
        key = _data_key(cfg)
        if key in loaded:
            continue
        data = next((d for k, (d, _) in loaded.items() if k[:3] == key[:3]), None)
        # tau=None: data.tau is the cache's default; each member resolves its own tau
        data = data or load_data(cfg.cache, view=cfg.view, feature=cfg.feature, tte=cfg.tte,
                                 device=cfg.device, tau=None)
        need = grid.pipeline == "tfa-lt" or any(
            HEADS.get(c.head).needs_prototypes or c.init == "text"
            for c in configs if _data_key(c) == key)
        setups = seed_setups(data, cfg, need_prototypes=need)
        for c in configs:
            if _data_key(c) == key and hasattr(c, "head"):
                train_head.refuse_without_text(HEADS.get(c.head), setups[0].prototypes_from)
        for s in setups:
            if s.split.val.size == 0:
                raise FeatcacheError(
                    f"A grid selects on validation rows, but seed {s.seed}'s split has none: "
                    "pass --val-fraction > 0 (rows carved from training data) or use a cache "
                    "with an official val split.")
        loaded[key] = (data, setups)
    data0, setups0 = next(iter(loaded.values()))
    n_seeds = len(setups0)
    # train: one batched run per group
    groups: dict[tuple, list[tuple[int, PipelineConfig]]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault((_data_key(cfg), _group_key(cfg)), []).append((i, cfg))
    val_rows: list[dict] = [{} for _ in range(len(configs) * n_seeds)]
    test_logits: dict[tuple[int, int], torch.Tensor] = {}
    trained_of: dict[int, Trained] = {}
    losses: dict[tuple[int, int], float] = {}
    train_seconds = 0.0
    for n_group, ((dkey, _), members) in enumerate(groups.items(), 1):
        data, setups = loaded[dkey]
        say(f"group {n_group}/{len(groups)}: {len(members)} configuration(s) × {n_seeds} seed(s)")
        trainer = _train_tfa_group if grid.pipeline == "tfa-lt" else _train_head_group
        trained = trainer(members, data, setups)
        train_seconds += trained.seconds
        # Every member's logits on the val and test rows of its seed, averaged over the
        # evaluation views (the five crops with --tte); test logits are kept, not scored.
        for j, setup in enumerate(setups):
            rows = np.concatenate([setup.split.val, setup.split.test])
            r = torch.as_tensor(rows, device=data.device)
            logits = torch.stack([trained.logits(v[r]) for v in data.eval_feats]).mean(0)
            n_val = setup.split.val.size
            for g, (i, jj) in enumerate(trained.owner):
                if jj != j:
                    continue
                z = _adjust(logits[g], setup, configs[i].posthoc_tau)  # [n_val + n_test, C]
                val_rows[i * n_seeds + j] = _evaluate(z[:n_val].float().cpu().numpy(),
                                                      data.cache.labels[setup.split.val],
                                                      setup, data.num_classes)
                test_logits[(i, j)] = z[n_val:].float().cpu()
                losses[(i, j)] = trained.train_loss[g]
        for i, _ in members:
            trained_of[i] = trained
    # Selection: mean validation metric over seeds; test labels are not read until chosen.
    val_mean = np.array([np.nanmean([val_rows[i * n_seeds + j][grid.select] for j in range(n_seeds)])
                         if any(math.isfinite(val_rows[i * n_seeds + j][grid.select])
                                for j in range(n_seeds)) else -np.inf
                         for i in range(len(configs))])
    selected = int(np.argmax(val_mean))  # ties: the first configuration listed
    say(f"selected configuration {selected}: val {grid.select} {val_mean[selected]:.4f}")
    # Test figures, for the selected configuration and (for inspection) every other one.
    test_rows: list[dict] = []
    for i, cfg in enumerate(configs):
        data, setups = loaded[_data_key(cfg)]
        for j, setup in enumerate(setups):
            test_rows.append(_evaluate(test_logits[(i, j)].numpy(),
                                       data.cache.labels[setup.split.test], setup,
                                       data.num_classes))
    table = _table(grid, loaded, val_rows, test_rows, losses, selected)
    summary = _summary(grid, table)
    if overwrite:
        clear_run(out_dir)
    config = _resolved(grid, data0, setups0, selected)
    doc, heatmaps = _write(grid, out_dir, config, loaded, trained_of, test_logits, table,
                           summary, selected, val_rows)
    if len(dict(grid.params).get("shots", ())) > 1:
        doc["shots_curve"] = _shots_curve(grid, val_mean, test_rows, n_seeds, out_dir)
    seconds = time.perf_counter() - t0
    doc["train_seconds"], doc["seconds"] = train_seconds, seconds
    write_json(out_dir / "metrics.json", doc)
    return GridResult(out_dir, doc, table, summary, selected, config, heatmaps, seconds)


# --------------------------------------------------------------------------------------
# 5. Tables, plots and the run directory


def _table(grid: GridConfig, loaded: dict, val_rows: list[dict], test_rows: list[dict],
           losses: dict, selected: int) -> pl.DataFrame:
    """One row per configuration and seed: config, seed, every knob, val_* and test_*."""
    rows = []
    for i, cfg in enumerate(grid.configs):
        data, setups = loaded[_data_key(cfg)]
        for j, setup in enumerate(setups):
            k = i * len(setups) + j
            row = {"config": i, "seed": setup.seed, "selected": i == selected,
                   **_knob_row(cfg, data),
                   "protocol": setup.split.protocol, "n_train": int(setup.split.train.size),
                   "n_val": int(setup.split.val.size), "n_test": int(setup.split.test.size),
                   "train_loss": losses.get((i, j), math.nan)}
            row.update({f"val_{m}": val_rows[k].get(m, math.nan) for m in METRIC_KEYS})
            row.update({f"test_{m}": test_rows[k].get(m, math.nan) for m in METRIC_KEYS})
            rows.append(row)
    frame = pl.DataFrame(rows, infer_schema_length=None)
    metric_cols = [c for c in frame.columns if c.startswith(("val_", "test_")) or c == "train_loss"]
    return frame.with_columns(pl.col(metric_cols).cast(pl.Float64).fill_nan(None))


def _summary(grid: GridConfig, table: pl.DataFrame) -> pl.DataFrame:
    """One row per configuration: gridded knobs, mean and std over seeds, ranked by val."""
    metrics = [f"{p}_{m}" for p in ("val", "test") for m in METRIC_KEYS]
    aggs = [pl.col(c).mean().alias(c) for c in metrics] + [
        pl.col(c).std(ddof=0).alias(f"{c}_std") for c in metrics]
    out = (table.group_by("config", maintain_order=True)
           .agg([pl.col(n).first() for n in grid.names] + [pl.col("selected").first()] + aggs))
    key = f"val_{grid.select}"
    return (out.sort([key, "config"], descending=[True, False], nulls_last=True)
            .with_row_index("rank", offset=1))


def _resolved(grid: GridConfig, data: CachedData, setups: list[SeedSetup], selected: int) -> dict:
    d = resolved_config(grid.base, data, setups, f"grid/{grid.pipeline}")
    d["validation_use"] = [*d["validation_use"], "grid selection"]
    d.update(
        grid={n: list(v) for n, v in grid.params},
        n_configurations=len(grid.configs),
        select=f"val_{grid.select}",
        selected=selected,
        selected_config=_knob_row(grid.configs[selected], data),
        grouping="configurations that differ only in per-member knobs train as members of "
                 "one batched head; members with equal batch streams share one gather",
        out=grid.out,
    )
    return d


def _write(grid: GridConfig, out_dir: Path, config: dict, loaded: dict,
           trained_of: dict[int, Trained], test_logits: dict, table: pl.DataFrame,
           summary: pl.DataFrame, selected: int, val_rows: list[dict]) -> tuple[dict, list[Path]]:
    """The run directory. The selected configuration goes through :class:`RunWriter`
    (predictions, splits, checkpoints, PNGs), then the grid's tables replace its one-row-per-
    seed ``metrics.parquet``/``.csv``."""
    cfg = grid.configs[selected]
    data, setups = loaded[_data_key(cfg)]
    trained = trained_of[selected]
    from featcache.tables import fmt_number

    shown = ", ".join(f"{n}={fmt_number(getattr(cfg, n, dict(getattr(cfg, 'head_options', ())).get(n)))}"
                      for n in grid.names)
    writer = RunWriter(out_dir, config, data.cache.class_names, method=f"grid best ({shown})")
    pipeline = "tfa-lt" if grid.pipeline == "tfa-lt" else "train-head"
    for j, setup in enumerate(setups):
        g = trained.owner.index((selected, j))
        metrics = compute_metrics(data.cache.labels[setup.split.test],
                                  test_logits[(selected, j)].numpy(),
                                  num_classes=data.num_classes,
                                  train_counts=setup.split.train_counts, groups=setup.split.groups)
        ckpt = checkpoint_for(pipeline, trained.model(g), cfg, data, setup)
        metrics.update(trained.epoch_loss[g] if trained.epoch_loss else {})  # loss curves
        writer.add_seed(setup.seed, metrics, labels=data.cache.labels[setup.split.test],
                        scores=test_logits[(selected, j)].numpy(), rows=setup.split.test,
                        ids=data.cache.ids, split=setup.split.to_frame(data.cache.ids),
                        train_counts=setup.split.train_counts, checkpoint=ckpt,
                        groups=setup.split.groups)
    doc = writer.finish()
    vals = [val_rows[selected * len(setups) + j] for j in range(len(setups))]
    doc.update(
        selected=selected,
        selected_config=config["selected_config"],
        select=f"val_{grid.select}",
        val={k: v for k, v in summarize(vals).items()},
        n_configurations=len(grid.configs),
        seeds=[s.seed for s in setups],
    )
    write_json(out_dir / "metrics.json", doc)
    table.write_parquet(out_dir / "metrics.parquet")
    table.write_csv(out_dir / "metrics.csv")
    summary.write_parquet(out_dir / "summary.parquet")
    summary.write_csv(out_dir / "summary.csv")
    heatmaps = []
    varied = [n for n, v in grid.params if len(v) > 1]
    for a, b in itertools.combinations(varied, 2):
        path = out_dir / f"heatmap_{a}__{b}.png"
        plot_heatmap(table, a, b, path, select=grid.select,
                     formats=parse_formats(grid.base.plot_format))
        heatmaps.append(path)
    return doc, heatmaps


def _shots_curve(grid: GridConfig, val_mean: np.ndarray, test_rows: list[dict], n_seeds: int,
                 out_dir: Path) -> list[dict]:
    """The accuracy-vs-shots curve of a grid over ``shots``: for every method (the head, or
    TFA-LT) and K, the configuration with the best mean validation ``select`` figure among
    that method's K-shot configurations (chosen on validation, as the grid's own selection),
    and its test figures, mean ± std over seeds. Writes ``shots.parquet``/``.csv`` and
    ``accuracy_vs_shots.png`` (and the other ``--plot-format`` formats)."""
    from featcache.plots import save, shots_curve_figure

    best: dict[tuple[str, int], int] = {}
    for i, cfg in enumerate(grid.configs):
        key = (getattr(cfg, "head", None) or "tfa-lt", cfg.shots)
        if key not in best or val_mean[i] > val_mean[best[key]]:
            best[key] = i
    rows = []
    for (method, shots), i in sorted(best.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        seeds = [test_rows[i * n_seeds + j] for j in range(n_seeds)]
        row = {"method": method, "shots": shots, "config": i,
               f"val_{grid.select}": float(val_mean[i])}
        row.update({k: v for k, v in summarize(seeds).items()})
        rows.append(row)
    frame = pl.DataFrame(rows).with_columns(pl.col(pl.Float64).fill_nan(None))
    frame.write_parquet(out_dir / "shots.parquet")
    frame.write_csv(out_dir / "shots.csv")
    save(shots_curve_figure(rows, title=f"grid: best configuration per K on val {grid.select}"),
         out_dir / "accuracy_vs_shots", parse_formats(grid.base.plot_format))
    return rows


def plot_heatmap(table: pl.DataFrame, x: str, y: str, path: str | Path, *,
                 select: str = "balanced_acc", formats: Sequence[str] = ("png",)) -> Path:
    """Heatmap of the mean (over seeds) validation ``select`` metric over knobs ``x`` × ``y``.

    With more than two gridded knobs each cell is the best configuration over the others
    (maximum of the mean validation figure); the cell also shows that configuration's mean
    test figure below, for inspection. Any two columns of ``table`` (the grid's
    ``metrics.parquet``) can be plotted.
    """
    from featcache.plots import heatmap_figure, save

    for k in (x, y):
        if k not in table.columns:
            raise FeatcacheError(f"Knob '{k}' is not a column of the grid table."
                                 f"{did_you_mean(k, table.columns)}")
    vkey, tkey = f"val_{select}", f"test_{select}"
    per_config = table.group_by("config").agg(pl.col(x).first(), pl.col(y).first(),
                                              pl.col(vkey).mean(), pl.col(tkey).mean())
    best = (per_config.sort(vkey, descending=True, nulls_last=True)
            .group_by([x, y], maintain_order=True).first())
    xs = sorted(per_config[x].unique().to_list(), key=_sort_key)
    ys = sorted(per_config[y].unique().to_list(), key=_sort_key)
    val = np.full((len(ys), len(xs)), np.nan)
    test = np.full((len(ys), len(xs)), np.nan)
    for row in best.iter_rows(named=True):
        r, c = ys.index(row[y]), xs.index(row[x])
        val[r, c] = np.nan if row[vkey] is None else row[vkey]
        test[r, c] = np.nan if row[tkey] is None else row[tkey]
    fig = heatmap_figure(val, test, xs, ys, x=x, y=y, select=select)
    save(fig, Path(path).with_suffix(""), formats)
    return Path(path)


def _sort_key(v: object) -> tuple:
    return (0, v, "") if isinstance(v, int | float) and not isinstance(v, bool) else (1, 0, str(v))


_TOP_COLUMNS = (("Total", "test_acc"), ("Bal.", "test_balanced_acc"), ("F1", "test_macro_f1"),
                ("Many", "test_many_acc"), ("Med", "test_medium_acc"), ("Few", "test_few_acc"))


def top_tables(result: GridResult, grid: GridConfig, n: int | None = None) -> list:
    """The ``n`` best configurations (mean ± std over seeds, percent), ranked by validation,
    in three layouts for :func:`featcache.tables.print_fitting`: boxed with ``81.23 ± 0.40``,
    compact ``81.23±0.40``, and means only. Column ``#`` is the configuration's number, the
    one ``metrics.parquet`` (``config``), ``metrics.json`` (``selected``) and the closing
    message use; ``*`` marks the selected one."""
    from featcache.tables import fmt_number, mean_std, plain_table

    short = {"acc": "Total", "balanced_acc": "Bal.", "macro_f1": "F1", "auc": "AUC",
             "many_acc": "Many", "medium_acc": "Med", "few_acc": "Few"}
    heads = ["#", *grid.names, f"val {short.get(grid.select, grid.select)}",
             *(t for t, _ in _TOP_COLUMNS)]
    keys = [f"val_{grid.select}", *(k for _, k in _TOP_COLUMNS)]
    right = [True] * len(heads)
    title = (f"grid: {len(grid.configs)} configurations ranked by val {grid.select}, "
             "* selected; test %")
    rows = list(result.summary.head(n or grid.top).iter_rows(named=True))
    tables = []
    for std, compact in ((True, False), (True, True), (False, True)):
        cells = [[f"{row['config']}{'*' if row['selected'] else ''}",
                  *(fmt_number(row[k]) for k in grid.names),
                  *(mean_std(row.get(k), row.get(f"{k}_std") if std else None, compact=compact)
                    for k in keys)] for row in rows]
        shown = title if std else title + " (means, %; ± std in summary.csv)"
        tables.append(plain_table(heads, cells, title=shown, right=right, compact=compact))
    return tables


def top_table(result: GridResult, grid: GridConfig, n: int | None = None):  # noqa: ANN201
    """The widest layout of :func:`top_tables`."""
    return top_tables(result, grid, n)[0]


def selected_text(result: GridResult, grid: GridConfig) -> str:
    """The closing message: the selected configuration's number (as in the table), its knob
    values, its validation figure and its test figures."""
    from featcache.tables import fmt_number

    m = result.metrics
    row = result.summary.filter(pl.col("config") == result.selected).row(0, named=True)
    knobs = ", ".join(f"{k}={fmt_number(row[k])}" for k in grid.names)
    return (f"Selected configuration {result.selected}* ({knobs}) on val {grid.select} "
            f"{100 * m['val'][grid.select]:.2f}; its test acc {100 * m['acc']:.2f} ± "
            f"{100 * m['acc_std']:.2f}, balanced acc {100 * m['balanced_acc']:.2f} ± "
            f"{100 * m['balanced_acc_std']:.2f}.")


def make_grid(base: PipelineConfig, params: Sequence[str], **kwargs: object) -> GridConfig:
    """A :class:`GridConfig` from CLI-style ``--param`` strings (``["lr=0.01,0.1", ...]``)."""
    parsed = [parse_param(p) for p in params]
    return GridConfig(base, tuple((n, tuple(v)) for n, v in parsed), **kwargs)
