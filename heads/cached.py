"""Runs on cached features: the machinery every head pipeline shares.

``train-head``, TFA-LT, ``grid``, ``reproduce`` and ``predict`` all read a cache the same way,
so it lives here once, read top to bottom:

1. settings every such run has (:class:`RunSettings`) and their validation
   (:func:`check_run_settings`);
2. the cache's features moved to the device once (:func:`load_data` -> :class:`CachedData`,
   which also resolves the cosine-logit temperature τ: :meth:`CachedData.tau_for`);
3. every seed's split and class prototypes (:func:`seed_setups` -> :class:`SeedSetup`);
4. evaluation of trained heads on a seed's test rows (:func:`evaluate`), TFA-LT's two
   branches + ensembler at inference (:func:`combine_branches`), and a saved model applied
   to any features (:class:`Predictor`);
5. what a run directory records (:func:`checkpoint_for`, :func:`resolved_config`,
   :func:`default_out`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from featcache.cache import FeatureCache, open_cache
from featcache.device import PRECISIONS, resolve_device, resolve_precision
from featcache.errors import FeatcacheError, number_problem
from featcache.heads.base import HEADS, SCHEDULES, load_head
from featcache.heads.losses import ClassPrior, posthoc_adjust
from featcache.heads.text import prototypes_for
from featcache.heads.training import predict_logits
from featcache.knob_fields import knob_field
from featcache.metrics import compute_metrics
from featcache.preprocess import TTE_VIEWS
from featcache.runs import run_name
from featcache.splits import PROTOCOLS, Split, draw_shots, make_split

log = logging.getLogger(__name__)

FEATURE_KINDS = ("embed", "cls")


TEXT_SOURCES = ("auto", "prompts", "class-mean")
CALIBRATIONS = ("none", "temperature")


def check_numbers(cfg: object) -> None:
    """Every float setting finite, every integer within int64 (the CLI, the grid and Python
    callers all land here): nan/inf would train to chance with exit 0, a huge integer ends
    in an OverflowError deep in torch."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        values = value if isinstance(value, tuple | list) else (value,)
        for v in values:
            problem = number_problem(v)
            if problem:
                raise FeatcacheError(f"--{f.name.replace('_', '-')} {problem}, got {v}.")


def check_run_settings(cfg: object) -> None:
    """Validation shared by the train-head and TFA-LT configs."""
    check_numbers(cfg)
    seeds = cfg.seeds
    if not seeds or len(set(seeds)) != len(seeds):
        raise FeatcacheError(f"--seeds must be distinct integers, got {list(seeds)}.")
    if cfg.protocol is not None and cfg.protocol not in PROTOCOLS:
        from featcache.errors import unknown

        raise unknown("protocol", cfg.protocol, PROTOCOLS)
    if cfg.feature not in FEATURE_KINDS:
        raise FeatcacheError(f"--feature must be embed or cls, got '{cfg.feature}'.")
    if cfg.text_source not in TEXT_SOURCES:
        raise FeatcacheError(
            f"--text-source must be one of {', '.join(TEXT_SOURCES)}, got '{cfg.text_source}'."
        )
    if cfg.tau is not None and not cfg.tau > 0:
        raise FeatcacheError(f"--tau must be > 0, got {cfg.tau}.")
    if any(s < 0 for s in seeds):
        raise FeatcacheError(f"--seeds must be integers >= 0, got {list(seeds)}.")
    if cfg.test_per_class is not None and cfg.test_per_class < 1:
        raise FeatcacheError(f"--test-per-class must be an integer >= 1, got {cfg.test_per_class}.")
    if cfg.schedule not in SCHEDULES:
        raise FeatcacheError(f"--schedule must be one of {', '.join(SCHEDULES)}.")
    if cfg.bootstrap < 0 or cfg.bootstrap_seed < 0:
        raise FeatcacheError(f"--bootstrap and --bootstrap-seed must be integers >= 0 (0 = no intervals), "
                             f"got {cfg.bootstrap} and {cfg.bootstrap_seed}.")
    from featcache.plots import parse_formats

    parse_formats(cfg.plot_format)
    if cfg.tte and cfg.view != "standard":
        raise FeatcacheError("--tte evaluates on the five cached crops; it needs --view standard.")
    if cfg.precision not in PRECISIONS:
        from featcache.errors import unknown

        raise unknown("precision", cfg.precision, PRECISIONS)
    if cfg.device == "cpu":
        resolve_precision(cfg.precision, torch.device("cpu"))  # refuses fp16 on the CPU, now
    if cfg.calibrate not in CALIBRATIONS:
        from featcache.errors import unknown

        raise unknown("calibration", cfg.calibrate, CALIBRATIONS)
    if cfg.shots is not None and (isinstance(cfg.shots, bool) or cfg.shots < 1):
        raise FeatcacheError(f"--shots must be an integer >= 1 (training images per class), got {cfg.shots}.")
    if cfg.validation_free and cfg.val_fraction > 0:
        raise FeatcacheError("--validation-free uses no validation rows, but --val-fraction "
                             f"{cfg.val_fraction} carves some; drop one of the two.")
    if cfg.validation_free and cfg.calibrate != "none":
        raise FeatcacheError("--calibrate temperature fits T on a validation split, and "
                             "--validation-free has none; drop one of the two.")


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Settings every run on cached features shares: which features and text, how the split
    is drawn and scored, where and in which precision it trains, and where it goes.
    (Keyword-only, so subclasses can start with required fields such as ``cache``.)

    Protocols: ``shots`` = K draws K training images per class with the seed
    (:func:`featcache.splits.draw_shots`; classes with fewer keep all, with a warning and
    ``shots_short`` in config.json). ``validation_free``: the realistic setting, no
    validation rows at all (an official val split is left unused); heads that tune on
    validation use their documented fixed defaults (``logreg``: C = 1). ``calibrate``:
    ``temperature`` fits one temperature per seed on the validation split (never on test;
    refused without one) and reports ECE/Brier/NLL after it, with the figures before it.

    ``precision``: ``fp32`` (default), ``bf16``, or ``fp16`` (GPU only) for the heads' weight
    products while training; mixed precision with fp32 master weights, optimiser state and
    losses (:func:`featcache.heads.training.train_members`). Evaluation runs in fp32."""

    text_source: str = knob_field("text_source")
    template: str = knob_field("template")
    view: str = knob_field("view")
    feature: str = knob_field("feature")
    tte: bool = knob_field("tte")
    posthoc_tau: float = knob_field("posthoc_tau")
    val_fraction: float = knob_field("val_fraction")
    test_per_class: int | None = knob_field("test_per_class")
    device: str = knob_field("device")
    precision: str = knob_field("precision")
    out: str | None = None
    method: str = knob_field("method_label")
    bootstrap: int = knob_field("bootstrap")  # replicates of the test rows for 95 % CIs (0 = off): featcache.class_metrics
    bootstrap_seed: int = knob_field("bootstrap_seed")
    plot_format: str = knob_field("plot_format")  # figure formats, e.g. "png,pdf" (featcache.plots.parse_formats)
    shots: int | None = knob_field("shots")
    validation_free: bool = knob_field("validation_free")
    calibrate: str = knob_field("calibrate")

    @classmethod
    def knobs(cls) -> list[str]:
        """Every setting's name (the CLI's long options with underscores), the method's own first."""
        shared = [f.name for f in fields(RunSettings)]
        return [f.name for f in fields(cls) if f.name not in shared] + shared


@dataclass
class CachedData:
    """A cache's features for one view/kind, on the device, with labels."""

    cache: FeatureCache
    device: torch.device
    feats: torch.Tensor  # [N, D] training view
    eval_feats: list[torch.Tensor]  # views averaged at evaluation (the five crops with --tte)
    labels: torch.Tensor  # [N] int64 (or [N, C])
    tau: float  # the run's cosine-logit temperature, resolved (:meth:`tau_for`)

    @property
    def num_classes(self) -> int:
        """C, the number of classes."""
        return self.cache.num_classes

    def tau_for(self, tau: float | None) -> float:
        """A configuration's τ, resolved: as given, else the cache's ``default_tau``. The one
        place a ``tau=None`` knob becomes a number (runs, grids, config.json)."""
        return resolve_tau(tau, self.cache)


def resolve_tau(tau: float | None, cache: FeatureCache) -> float:
    """``tau`` as given, else the cache's ``default_tau`` (1/logit_scale): the one rule that
    turns a ``tau=None`` knob into a number (:meth:`CachedData.tau_for` and :func:`load_data`)."""
    return tau if tau is not None else cache.default_tau


def load_data(cache_path: str, *, view: str, feature: str, tte: bool, device: str,
              tau: float | None) -> CachedData:
    """Open the cache and move the features of ``view`` (and the TTE crops) to the device."""
    cache = open_cache(cache_path)
    dev = resolve_device(device)
    feats = cache.features(view, feature).to(dev)  # [N, D]
    eval_feats = [cache.features(v, feature).to(dev) for v in TTE_VIEWS] if tte else [feats]
    labels = torch.as_tensor(cache.labels).to(dev)
    if labels.dim() == 1:
        labels = labels.long()
    return CachedData(cache, dev, feats, eval_feats, labels, resolve_tau(tau, cache))


@dataclass
class SeedSetup:
    """One seed's split, its training rows on the device and its class prototypes."""

    seed: int
    split: Split
    pool: torch.Tensor  # [n_train] rows
    prototypes: torch.Tensor | None  # [C, D]
    prototypes_from: str
    class_means: torch.Tensor  # [C, D]
    short: dict[int, int] = field(default_factory=dict)  # --shots: classes with fewer rows


def seed_setups(data: CachedData, cfg: object, *, need_prototypes: bool) -> list[SeedSetup]:
    """Draw every seed's split and prototypes (text features or training class means)."""
    from featcache.heads.text import class_means

    cache = data.cache
    if data.num_classes < 2:
        raise FeatcacheError(
            f"Cache {cache.path} has {data.num_classes} class; a classifier needs at least two "
            "(with one, every prediction is right and accuracy is 100 %)."
        )
    out = []
    for seed in cfg.seeds:
        split = make_split(cache.labels, cache.splits, cache.descriptor, cfg.protocol, seed,
                           val_fraction=cfg.val_fraction, test_per_class=cfg.test_per_class,
                           where=str(cache.path))
        if getattr(cfg, "validation_free", False) and split.val.size:  # an official val split: unused
            split = replace(split, val=np.zeros(0, dtype=np.int64))
        if getattr(cfg, "calibrate", "none") != "none" and split.val.size == 0:
            raise FeatcacheError(
                "--calibrate temperature fits the temperature on a validation split (never on "
                f"test), and seed {seed}'s split of {cache.path} has none: pass --val-fraction "
                "0.2 (rows carved from each class's training data) or use a cache with an "
                "official val split.")
        short: dict[int, int] = {}
        if getattr(cfg, "shots", None) is not None:
            split, short = draw_shots(split, cache.labels, cfg.shots)
            if short:
                names = ", ".join(f"{cache.descriptor.class_ids[c]} ({n})" for c, n in short.items())
                log.warning("--shots %d, seed %d: class(es) %s have fewer training images; "
                            "they keep all of them", cfg.shots, seed, names)
        empty = np.flatnonzero(np.asarray(split.train_counts) == 0)
        if empty.size:
            names = ", ".join(str(cache.descriptor.class_ids[c]) for c in empty[:10])
            raise FeatcacheError(
                f"Seed {seed}, protocol {split.protocol}: class(es) {names} of {cache.path} have "
                "no training rows, so they cannot be learned (do train/ and test/ name the same "
                "classes?). Use another --protocol or a cache in which every class has "
                "training images."
            )
        pool = torch.as_tensor(split.train, device=data.device)
        train_x, train_y = data.feats[pool], data.labels[pool]
        protos, used = None, ""
        if need_prototypes:
            protos, used = prototypes_for(
                cfg.text_source, text_features=cache.text_features, templates=cache.templates,
                template=cfg.template, projection=cache.projection, kind=cfg.feature,
                train_feats=train_x, train_labels=train_y, num_classes=data.num_classes)
            protos = protos.to(data.device)
            if protos.shape[-1] != data.feats.shape[-1]:
                raise FeatcacheError(
                    f"Prototypes are {protos.shape[-1]}-d but the {cfg.feature} features are "
                    f"{data.feats.shape[-1]}-d; use --feature embed or --text-source class-mean."
                )
        means = class_means(train_x, train_y, data.num_classes).to(data.device)
        out.append(SeedSetup(seed, split, pool, protos, used, means, short))
    return out


class Predictor:
    """Logits from a saved model description (``checkpoint['model']``), for any features.

    Kinds: ``{"kind": "head", "head": ckpt}`` and ``{"kind": "tfa-lt", "branches": ckpt,
    "combine": "logit"|"feature"|"mean", "ensembler": ckpt | None}`` (the two stage-I
    branches as one head with two members, then the ensembler or the mean of their logits).
    """

    def __init__(self, model: dict, device: torch.device) -> None:
        self.kind = model["kind"]
        if self.kind == "head":
            self.head = load_head(model["head"], device=device)
            self.in_dim = self.head.in_dim
        elif self.kind == "tfa-lt":
            self.branches = load_head(model["branches"], device=device)
            self.combine = model["combine"]
            self.ensembler = (
                load_head(model["ensembler"], device=device) if model.get("ensembler") else None
            )
            self.in_dim = self.branches.in_dim
        else:
            raise FeatcacheError(f"Unknown model kind '{self.kind}' in checkpoint.")

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [N, D] -> [N, C]
        if x.shape[-1] != self.in_dim:
            raise FeatcacheError(
                f"The trained head expects {self.in_dim}-d features but the cache gives "
                f"{x.shape[-1]}-d ones (a different model, or --feature embed vs cls)."
            )
        if self.kind == "head":
            return predict_logits(self.head, x)[0]
        return combine_branches(self.branches, self.combine, self.ensembler, x)


@torch.no_grad()
def combine_branches(branches, combine: str, ensembler, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """TFA-LT inference: two branches (members 0, 1 of ``branches``) then the ensembler."""
    from featcache.heads.training import head_features

    if combine == "mean":
        return predict_logits(branches, x).mean(0)  # [N, C]
    outputs = predict_logits if combine == "logit" else head_features
    z = outputs(branches, x)  # [2, N, C] logits or [2, N, D] adapted features
    z = torch.cat([z[0], z[1]], -1)  # [N, 2C] or [N, 2D]
    return predict_logits(ensembler, z)[0]


def evaluate(logits_of, data: CachedData, setup: SeedSetup, posthoc_tau: float,  # noqa: ANN001
             calibrate: str = "none") -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics of one seed on its test rows; logits averaged over the evaluation views.

    ``calibrate="temperature"``: T is fitted on the seed's validation rows (the same logits:
    views averaged, post-hoc adjusted) and never sees test; ``ece``/``brier``/``nll`` are then
    those of softmax(logits / T), with ``temperature`` and the figures before it
    (``ece_before``, ...). Accuracy figures do not depend on T (argmax is unchanged).

    Returns ``(metrics, labels [n], scores [n, C])`` (the raw logits, before any T).
    """
    from featcache.calibration import CALIBRATION_KEYS, calibration_metrics, fit_temperature

    counts = torch.as_tensor(setup.split.train_counts, device=data.device)
    log_prior = ClassPrior.from_counts(counts).log_prior[0]

    def scored(rows: np.ndarray) -> np.ndarray:  # [n, C] logits of cache rows
        r = torch.as_tensor(rows, device=data.device)
        z = torch.stack([logits_of(v[r]) for v in data.eval_feats]).mean(0)
        return posthoc_adjust(z, log_prior, posthoc_tau).float().cpu().numpy()

    scores = scored(setup.split.test)
    labels = data.cache.labels[setup.split.test]
    metrics = compute_metrics(labels, scores, num_classes=data.num_classes,
                              train_counts=setup.split.train_counts, groups=setup.split.groups)
    if calibrate == "temperature":
        if labels.ndim != 1:
            raise FeatcacheError("--calibrate temperature is for single-label caches (softmax).")
        val_labels = data.cache.labels[setup.split.val]
        t = fit_temperature(val_labels, scored(setup.split.val))
        metrics.update({f"{k}_before": metrics[k] for k in CALIBRATION_KEYS})
        metrics.update(calibration_metrics(labels, scores, temperature=t), temperature=t)
    return metrics, labels, scores


def checkpoint_for(pipeline: str, model: dict, cfg: object, data: CachedData, setup: SeedSetup) -> dict:
    """What ``checkpoints/seed-S.pt`` holds: the model, the config and what it needs to match."""
    return {
        "pipeline": pipeline,
        "model": model,
        "config": asdict(cfg),
        "feature": cfg.feature,
        "view": cfg.view,
        "model_fingerprint": data.cache.model_fingerprint,
        "cache_fingerprint": data.cache.fingerprint,
        "class_ids": list(data.cache.descriptor.class_ids),
        "train_counts": setup.split.train_counts.tolist(),
        "posthoc_tau": cfg.posthoc_tau,
        "seed": setup.seed,
        # the many/medium/few classes this seed was scored with (``predict`` scores the same way)
        "groups": {g: [int(c) for c in v] for g, v in setup.split.groups.items()},
    }


def resolved_config(cfg: object, data: CachedData, setups: list[SeedSetup], pipeline: str) -> dict:
    """config.json: every setting, resolved (protocol, tau, device, prototypes, cache)."""
    d = asdict(cfg)
    d.update(
        pipeline=pipeline,
        protocol=setups[0].split.protocol,
        tau=data.tau_for(cfg.tau),
        device=str(data.device),
        seeds=list(cfg.seeds),
        prototypes=setups[0].prototypes_from or None,
        cache_fingerprint=data.cache.fingerprint,
        model_fingerprint=data.cache.model_fingerprint,
        dataset=data.cache.descriptor.name,
        num_classes=data.num_classes,
        in_dim=int(data.feats.shape[-1]),
        torch_version=torch.__version__,
    )
    if getattr(cfg, "head", None) and hasattr(cfg, "head_options"):  # the head's knobs, resolved
        d["head_options"] = asdict(HEADS.get(cfg.head).resolve_knobs(cfg.head_options))
    d["validation"], d["validation_use"] = validation_record(cfg, data, setups)
    if getattr(cfg, "shots", None) is not None:
        d["shots_short"] = {str(s.seed): {str(data.cache.descriptor.class_ids[c]): n
                                          for c, n in s.short.items()} for s in setups if s.short}
    return d


def validation_record(cfg: object, data: CachedData, setups: list[SeedSetup]) -> tuple[str, list[str]]:
    """What config.json says about validation: ``"none"`` (no validation rows used, the
    realistic setting), ``"official"`` (the cache's val split) or ``"carved"`` (rows carved
    from the training data: ``--val-fraction``, or ``logreg``'s own C search), and what used
    it (``temperature``, ``logreg C search on rows carved from training`` (its own split,
    whatever the run's validation rows); a grid adds ``grid selection``)."""
    uses = []
    if getattr(cfg, "calibrate", "none") != "none":
        uses.append(cfg.calibrate)
    val = setups[0].split.val
    if val.size:
        official = np.asarray(data.cache.splits[val], dtype=object)
        kind = "official" if np.all(official == "val") else "carved"
    else:
        kind = "none"
    if getattr(cfg, "head", None) == "logreg" and not getattr(cfg, "validation_free", False):
        uses.append("logreg C search on rows carved from training")  # its own split, per seed
        kind = "carved" if kind == "none" else kind
    return kind, uses


def default_out(cfg: object, *parts: object) -> Path:
    """``runs/<cache stem>-<parts>-<shared parts>`` when ``--out`` is not given: the parts say
    what the run is (head, loss, sampler ...), :func:`shared_name_parts` the shared settings
    that differ from their defaults (view, feature, TTE, post-hoc τ, validation, protocol)."""
    return Path("runs") / run_name(Path(cfg.cache).stem, *parts, *shared_name_parts(cfg))


def shared_name_parts(cfg: object) -> list[str]:
    """The :class:`RunSettings` (and ``shots``, where a config has it) that differ from their
    defaults, as short words for a run folder's name."""
    parts = []
    if getattr(cfg, "view", "standard") != "standard":
        parts.append(cfg.view)
    if getattr(cfg, "feature", "embed") != "embed":
        parts.append(cfg.feature)
    if getattr(cfg, "text_source", "auto") == "class-mean":
        parts.append("class-mean")
    if getattr(cfg, "tte", False):
        parts.append("tte")
    if getattr(cfg, "posthoc_tau", 0.0):
        parts.append(f"posthoc{cfg.posthoc_tau:g}")
    if getattr(cfg, "protocol", None):
        parts.append(cfg.protocol)
    if getattr(cfg, "shots", None):
        parts.append(f"{cfg.shots}shot")
    if getattr(cfg, "validation_free", False):
        parts.append("valfree")
    if getattr(cfg, "calibrate", "none") != "none":
        parts.append(f"cal-{cfg.calibrate}")
    if getattr(cfg, "precision", "fp32") != "fp32":
        parts.append(cfg.precision)
    return parts
