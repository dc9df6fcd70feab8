"""A finished head run, loaded for inference: every seed's model, its post-hoc adjustment,
its temperature, and the backbone and preprocessing its cache was extracted with.

``featcache predict`` and ``featcache export`` both start here (:func:`load_saved_run`), so
the two apply a run the same way its own evaluation did (:func:`featcache.heads.cached.evaluate`):
logits averaged over the evaluation views (the five TTE crops with ``--tte``, else the run's
view), then the post-hoc logit adjustment with the seed's training counts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from featcache.cache import FeatureCache, open_cache
from featcache.errors import FeatcacheError
from featcache.heads.cached import Predictor
from featcache.heads.losses import ClassPrior, posthoc_adjust
from featcache.preprocess import TTE_VIEWS
from featcache.runs import load_checkpoint

log = logging.getLogger(__name__)


@dataclass
class SeedModel:
    """One seed's saved model: logits from features, then its post-hoc adjustment."""

    seed: int
    checkpoint: dict
    predictor: Predictor
    log_prior: torch.Tensor  # [C] log training-class prior (for the post-hoc adjustment)
    posthoc_tau: float
    temperature: float | None  # a fitted calibration temperature, when the run has one

    def logits(self, views: list[torch.Tensor]) -> torch.Tensor:
        """``views``: [N, D] features per evaluation view -> adjusted logits [N, C]."""
        logits = torch.stack([self.predictor(v) for v in views]).mean(0)  # [N, C]
        return posthoc_adjust(logits, self.log_prior.to(logits.device), self.posthoc_tau)


@dataclass
class SavedRun:
    """A train-head / TFA-LT run directory, loaded."""

    run_dir: Path
    config: dict
    seeds: list[SeedModel]
    class_ids: list[str]

    @property
    def first(self) -> dict:
        return self.seeds[0].checkpoint

    @property
    def feature(self) -> str:
        """``embed`` or ``cls``: which feature the heads read."""
        return str(self.first["feature"])

    @property
    def views(self) -> tuple[str, ...]:
        """The views averaged at evaluation: the five TTE crops, or the run's one view."""
        return TTE_VIEWS if self.first["config"].get("tte") else (str(self.first["view"]),)

    def logits(self, views: list[torch.Tensor]) -> torch.Tensor:
        """[N, D] features per view (in :attr:`views` order) -> [S, N, C] logits, every seed."""
        return torch.stack([s.logits(views) for s in self.seeds])

    def source_cache(self, path: str | Path | None = None) -> FeatureCache:
        """The cache the run was trained on (``path``, else the one its config.json names),
        checked to hold the same model and preprocessing (model fingerprint)."""
        path = path or self.config.get("cache")
        if not path or not Path(path).exists():
            raise FeatcacheError(
                f"Run {self.run_dir} was trained on the cache {path or '(not recorded)'}, which is "
                "not there; its metadata names the backbone, weights and preprocessing to encode "
                "images with. Pass --cache PATH to the run's cache (or one extracted with the same "
                "model and preprocessing)."
            )
        cache = open_cache(path)
        if cache.model_fingerprint != self.first["model_fingerprint"]:
            raise FeatcacheError(
                f"Cache {cache.path} was made with a different model or preprocessing than run "
                f"{self.run_dir} (model fingerprint {cache.model_fingerprint[:12]} vs "
                f"{self.first['model_fingerprint'][:12]}); pass the run's own cache with --cache."
            )
        return cache


def _temperature(ck: dict, config: dict) -> float | None:
    """The fitted calibration temperature of a seed (checkpoint first, then config.json)."""
    for where in (ck, ck.get("model") or {}, config):
        t = where.get("temperature") if isinstance(where, dict) else None
        if isinstance(t, dict):  # per seed
            t = t.get(str(ck.get("seed"))) or t.get(ck.get("seed"))
        if isinstance(t, int | float) and t > 0:
            return float(t)
    return None


def load_saved_run(run_dir: str | Path, device: torch.device) -> SavedRun:
    """Load every ``checkpoints/seed-S.pt`` of ``run_dir`` (``weights_only=True``) onto ``device``."""
    run_dir = Path(run_dir)
    ckpts = sorted((run_dir / "checkpoints").glob("seed-*.pt"), key=lambda p: int(p.stem.split("-")[1])
                   if p.stem.split("-")[1].isdigit() else -1)
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    if not ckpts:
        if "caches" in config and "recipe" in config:  # featcache bench medmnist
            raise FeatcacheError(
                f"{run_dir} is a MedMNIST benchmark run (featcache bench medmnist): it keeps metrics and "
                "tables only -- each cell's probes (every learning rate and seed) are trained, the "
                "best-on-val one scored and then discarded, so there are no weights to predict with. "
                "Train the cell you want as a run from its cache (listed in the run's config.json, "
                "'caches'): featcache train-head --cache CACHE --out RUN, then predict/export RUN.")
        raise FeatcacheError(f"{run_dir} holds no checkpoints/seed-*.pt; is it a train-head run?")
    seeds, class_ids = [], None
    for path in ckpts:
        ck = load_checkpoint(path)  # a crafted pickle is refused, not run
        if "model" not in ck or "class_ids" not in ck:  # e.g. a finetune checkpoint (trainable tower weights)
            raise FeatcacheError(
                f"Checkpoint {path} comes from '{ck.get('pipeline', 'an unknown pipeline')}', not from "
                "train-head or TFA-LT, so it has no head on cached features. A LIFT fine-tuned run "
                "changes the image tower, so no cache's features fit it: predict it from pixels "
                "(featcache predict --run RUN --images PATH...) or export it (featcache export).")
        try:
            seed = int(path.stem.split("-")[1])
        except ValueError:
            raise FeatcacheError(f"Checkpoint {path} is not named seed-<integer>.pt.") from None
        if class_ids is None:
            class_ids = list(ck["class_ids"])
        elif list(ck["class_ids"]) != class_ids:
            raise FeatcacheError(f"Checkpoint {path} names other classes than {ckpts[0]}.")
        counts = torch.as_tensor(ck["train_counts"], device=device)
        seeds.append(SeedModel(seed, ck, Predictor(ck["model"], device),
                               ClassPrior.from_counts(counts).log_prior[0], float(ck["posthoc_tau"]),
                               _temperature(ck, config)))
    return SavedRun(run_dir, config, seeds, class_ids)


class RunClassifier(torch.nn.Module):
    """Pixels to a run's prediction in one module (for ``featcache export``).

    ``forward(views)``: ``views`` uint8 ``[B, V, 3, S, S]`` -- the preprocessed image(s), V = 1
    (the standard view: shorter side resized to S, centre crop) or V = 5 (the TTE crops in
    :data:`featcache.preprocess.TTE_VIEWS` order) -- to ``(logits [B, C], probs [B, C])``:
    the mean over seeds of each seed's adjusted logits, and of its softmax (``predict``'s
    ``logits`` and ``prob_<class>`` columns). Normalisation (``x/255``, mean, std) and the
    image encoder (:func:`featcache.models.image_features`) are inside; every seed's head is
    applied as :meth:`SeedModel.logits` applies it, written out without ``predict_logits``'s
    Python batching loop so that ``torch.export`` traces it with a symbolic batch size.
    """

    def __init__(self, visual: torch.nn.Module, run: SavedRun, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        super().__init__()
        self.visual = visual
        self.kind = run.first["model"]["kind"]
        self.combine = run.first["model"].get("combine")
        self.feature = run.feature
        self.heads = torch.nn.ModuleList()
        for s in run.seeds:
            p = s.predictor
            parts = {"head": p.head} if p.kind == "head" else {"branches": p.branches}
            if p.kind == "tfa-lt" and p.ensembler is not None:
                parts["ensembler"] = p.ensembler
            for m in parts.values():
                m.eval()
            self.heads.append(torch.nn.ModuleDict(parts))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("log_prior", torch.stack([s.log_prior.float().cpu() for s in run.seeds]))  # [S, C]
        self.posthoc = [s.posthoc_tau for s in run.seeds]

    def _seed_logits(self, parts: torch.nn.ModuleDict, f: torch.Tensor) -> torch.Tensor:  # [N, D] -> [N, C]
        if self.kind == "head":
            return parts["head"](f[None])[0]
        # TFA-LT inference as heads/cached.py combine_branches: two branches, then the ensembler
        x = f[None].expand(2, *f.shape)  # [2, N, D]
        if self.combine == "mean":
            return parts["branches"](x).mean(0)
        z = parts["branches"](x) if self.combine == "logit" else parts["branches"].features(x)
        return parts["ensembler"](torch.cat([z[0], z[1]], -1)[None])[0]

    def forward(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from featcache.models import image_features

        B, V = views.shape[0], views.shape[1]
        x = (views.flatten(0, 1).float() / 255.0 - self.mean) / self.std  # [B*V, 3, S, S]
        emb, cls = image_features(self.visual, x)
        f = (emb if self.feature == "embed" else cls).float().reshape(B, V, -1)  # [B, V, D]
        per_seed = []
        for k, parts in enumerate(self.heads):
            logits = torch.stack([self._seed_logits(parts, f[:, v]) for v in range(V)]).mean(0)  # [B, C]
            if self.posthoc[k] != 0:
                logits = logits - self.posthoc[k] * self.log_prior[k]
            per_seed.append(logits)
        z = torch.stack(per_seed)  # [S, B, C]
        return z.mean(0), torch.softmax(z, -1).mean(0)
