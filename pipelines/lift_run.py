"""A finished LIFT (``featcache finetune``) run, rebuilt for ``predict --images`` and ``export``.

Read top to bottom:

* :func:`is_finetune_run` -- does a run directory hold fine-tuned towers (not heads on features)?
* :func:`load_lift_run` -- its ``config.json`` and every ``checkpoints/seed-S.pt``
  (``weights_only=True``: the trained parameters, the resolved method).
* :meth:`LiftRun.backbone` -- the backbone as the run recorded it (model, weights checked by
  tag or SHA-256, QuickGELU), by :func:`featcache.images.backbone_for_cache`, the same check
  head runs get; the preprocessing constants are checked against the recorded ones.
* :meth:`LiftRun.seed_model` -- a fresh copy of the tower with the run's method injected
  (:func:`featcache.peft.apply_method`), the seed's trained parameters and cosine head loaded
  (:func:`featcache.pipelines.finetune.load_trainable_state`); ``merge=True`` folds LoRA into
  the attention weights (:func:`featcache.peft.merge_lora`).
* :class:`LiftEvalPreprocessing` -- extraction's :class:`~featcache.preprocess.Preprocessing`
  with LIFT's test transforms (:func:`featcache.lift_data.lift_eval_transforms`:
  ``Resize(S*8//7) + CenterCrop(S)``, bilinear; TTE: ``Resize(S + 24)`` then five crops), so
  ``predict --images`` decodes, batches and skips with extraction's own code
  (:func:`featcache.images.encode_images`) and sees each image as the run's evaluation did.
* :class:`LiftClassifier` -- uint8 views to (logits, probs), every seed's tower and head in one
  module, for ``featcache export``.

A seed's logits on an image are the mean over the evaluation views (the five TTE crops when
the run used ``--tte``, else LIFT's centre view) of ``sigma * cos(w, f)``, as
:func:`featcache.pipelines.finetune.evaluate_logits` computes them; no post-hoc adjustment.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from featcache import models
from featcache.errors import FeatcacheError
from featcache.preprocess import TTE_VIEWS, Preprocessing
from featcache.runs import load_checkpoint

log = logging.getLogger(__name__)


def _checkpoints(run_dir: Path) -> list[Path]:
    def key(p: Path) -> int:
        tail = p.stem.split("-")[-1]
        return int(tail) if tail.isdigit() else -1

    return sorted((run_dir / "checkpoints").glob("seed-*.pt"), key=key)


def is_finetune_run(run_dir: str | Path) -> bool:
    """True for a ``featcache finetune`` run with fine-tuned towers (its ``config.json`` says
    ``pipeline: finetune``, or its first checkpoint does). ``--method classifier --cache`` runs
    are train-head runs (heads on cached features) and are not."""
    run_dir = Path(run_dir)
    config = run_dir / "config.json"
    if config.exists():
        try:
            if json.loads(config.read_text()).get("pipeline") == "finetune":
                return True
        except json.JSONDecodeError:
            pass
    ckpts = _checkpoints(run_dir)
    return bool(ckpts) and load_checkpoint(ckpts[0]).get("pipeline") == "finetune"


@dataclass(frozen=True)
class LiftEvalPreprocessing(Preprocessing):
    """LIFT's test transforms in extraction's pipeline: only :meth:`pil_transforms` differs.

    Image files only (``predict --images`` reads files): the device-side resizing of arrays
    is open_clip's and is refused here."""

    def pil_transforms(self) -> tuple[Callable, Callable | None]:
        from featcache.lift_data import lift_eval_transforms

        return lift_eval_transforms(self.size, self.tte, self.tte_expand)

    def views_of_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise FeatcacheError("LIFT runs predict from image files (PIL, LIFT's test transforms), not "
                             "from arrays resized on the device.")


@dataclass
class LiftSeed:
    """One seed of a LIFT run: its checkpoint (trained parameters) and no temperature."""

    seed: int
    checkpoint: dict
    temperature: float | None = None


@dataclass
class LiftRun:
    """A finetune run directory, loaded (checkpoints on the CPU)."""

    run_dir: Path
    config: dict
    seeds: list[LiftSeed]
    class_names: list[str]
    class_ids: list[str]

    @property
    def views(self) -> tuple[str, ...]:
        """The views whose logits the run's evaluation averaged: the five TTE crops, or LIFT's centre view."""
        return TTE_VIEWS if self.config.get("tte") else ("standard",)

    @property
    def method(self):  # noqa: ANN201  (a featcache.peft.MethodConfig)
        """The resolved fine-tuning method (bottleneck / rank filled in), as the run trained it."""
        from featcache.peft import make_config

        m = dict(self.config.get("method_resolved") or self.seeds[0].checkpoint["method"])
        name = m.pop("name")
        if "targets" in m:
            m["targets"] = tuple(m["targets"])
        if "positions" in m:
            m["positions"] = tuple(m["positions"])
        return make_config(name, **m)

    def meta(self) -> dict:
        """The run's backbone in the shape of a cache's metadata (for :func:`backbone_for_cache`)."""
        cfg = self.config
        if "weights_id" not in cfg:
            raise FeatcacheError(
                f"Run {self.run_dir} was written before finetune recorded its backbone's weights "
                "(config.json has no weights_id), so predict cannot check that it rebuilds the same "
                "model. Re-run the fine-tuning with this version of featcache.")
        p = cfg["preprocessing"]
        return {"model": cfg["model"], "pretrained": cfg.get("pretrained"), "weights_id": cfg["weights_id"],
                "quick_gelu": bool(cfg.get("quick_gelu")), "precision": cfg.get("precision", "fp32"),
                "preprocessing": {"size": p["size"], "mean": p["mean"], "std": p["std"],
                                  "interpolation": "bilinear", "resize_mode": "shortest",
                                  "tte_expand": p.get("tte_expand", 24)}}

    def backbone(self, pretrained: str | None, device: torch.device) -> tuple[models.Backbone, LiftEvalPreprocessing, torch.dtype]:
        """The run's backbone (weights checked as for head runs), LIFT's eval preprocessing, the run's precision."""
        from featcache.images import backbone_for_cache

        meta = self.meta()
        try:
            backbone, prep, dtype = backbone_for_cache(meta, pretrained=pretrained, views=self.views, device=device)
        except FeatcacheError as e:
            text = str(e)  # the same checks as for head runs, worded for a fine-tuning run
            for theirs, ours in (("the cache was extracted", "the run was fine-tuned"),
                                 ("The cache was extracted", "The run was fine-tuned"),
                                 ("the cache was made from", "the run was fine-tuned from"),
                                 ("to the run's heads", "to the run's fine-tuned weights")):
                text = text.replace(theirs, ours)
            raise FeatcacheError(text) from None
        own = Preprocessing.from_open_clip(backbone.preprocess)
        p = meta["preprocessing"]
        if (own.size, list(own.mean), list(own.std)) != (int(p["size"]), list(p["mean"]), list(p["std"])):
            raise FeatcacheError(
                f"{meta['model']} now preprocesses at size {own.size}, mean {own.mean}, std {own.std}, but "
                f"run {self.run_dir} recorded size {p['size']}, mean {p['mean']}, std {p['std']}.")
        lift = LiftEvalPreprocessing(**{f.name: getattr(prep, f.name) for f in dataclasses.fields(Preprocessing)})
        return backbone, lift, dtype

    def seed_model(self, backbone: models.Backbone, k: int, device: torch.device, *, merge: bool = False,
                   frozen_dtype: torch.dtype | None = None) -> nn.Module:
        """Seed k's :class:`~featcache.pipelines.finetune.LiftModel` (eval, no grad) on a copy of
        ``backbone``'s tower; ``merge`` folds LoRA into the attention weights; ``frozen_dtype``
        stores the parameters that did not train in that dtype, as finetune's
        :func:`~featcache.pipelines.finetune.build_model` does on a GPU (trained ones stay fp32)."""
        from featcache.lift import CosineClassifier
        from featcache.peft import apply_method, merge_lora
        from featcache.pipelines.finetune import LiftModel, load_trainable_state

        visual = copy.deepcopy(backbone.visual).float()
        apply_method(visual, self.method, len(self.class_names))
        head = CosineClassifier(int(visual.transformer.width), len(self.class_names),
                                scale=float(self.config.get("sigma", 25.0)), device=device)
        model = LiftModel(visual, head).to(device)
        seed = self.seeds[k]
        load_trainable_state(model, seed.checkpoint["trainable"], f"{self.run_dir}/checkpoints/seed-{seed.seed}.pt")
        if merge:
            merge_lora(model.visual)
        if frozen_dtype is not None and frozen_dtype != torch.float32:
            for p in model.visual.parameters():
                if not p.requires_grad:
                    p.data = p.data.to(frozen_dtype)
        return model.eval().requires_grad_(False)


def load_lift_run(run_dir: str | Path, *, cache: str | None = None) -> LiftRun:
    """Load a finetune run's ``config.json`` and every finished ``checkpoints/seed-S.pt``
    (``weights_only=True``). ``cache`` is what the user passed as ``--cache`` to ``predict`` or
    ``export``: a LIFT run has none (its backbone is its own), so one given is refused."""
    run_dir = Path(run_dir)
    if cache is not None:
        raise FeatcacheError(f"Run {run_dir} is a LIFT fine-tuning run: its backbone is rebuilt from its own "
                             "config.json, not from a cache; drop --cache.")
    config_path = run_dir / "config.json"
    if not (run_dir / "metrics.json").exists() or not config_path.exists():
        raise FeatcacheError(f"{run_dir} is not a finished finetune run (no metrics.json/config.json); "
                             "finish it with `featcache finetune ... --resume` first.")
    config = json.loads(config_path.read_text())
    seeds = []
    for path in _checkpoints(run_dir):
        ck = load_checkpoint(path)  # a crafted pickle is refused, not run
        if "trainable" not in ck:
            raise FeatcacheError(f"Checkpoint {path} holds no trained parameters; is it a finetune run?")
        if int(ck.get("epoch", -1)) != int(config["epochs"]):
            raise FeatcacheError(f"Checkpoint {path} stopped after epoch {ck.get('epoch')} of "
                                 f"{config['epochs']}; finish the run with --resume first.")
        seeds.append(LiftSeed(int(path.stem.split("-")[-1]), ck))
    if not seeds:
        raise FeatcacheError(f"{run_dir} holds no checkpoints/seed-*.pt.")
    names = config.get("class_names")
    if not names:
        raise FeatcacheError(f"Run {run_dir} does not record its class names (config.json); re-run the "
                             "fine-tuning with this version of featcache.")
    return LiftRun(run_dir, config, seeds, list(names), list(config.get("class_ids") or names))


def seed_logits_of_images(run: LiftRun, backbone: models.Backbone, k: int, encode: Callable, device: torch.device,
                          dtype: torch.dtype = torch.float32) -> tuple[list[int], torch.Tensor, list]:
    """Seed k on the images: ``encode(visual)`` -> (rows, per-view pre-projection features, skipped)
    (:func:`featcache.images.encode_images` with the seed's tower); returns (rows, logits [N, C]
    averaged over the views, skipped). On a GPU the frozen weights are stored in the run's
    precision ``dtype`` and the trained ones in fp32, as finetune evaluated."""
    model = run.seed_model(backbone, k, device, frozen_dtype=dtype if device.type == "cuda" else None)
    rows, feats, skipped = encode(SimpleNamespace(visual=model.visual))  # encode_images reads .visual only
    with torch.no_grad():
        logits = torch.stack([model.head(f) for f in feats]).mean(0)  # [N, C]
    return rows, logits, skipped


class LiftClassifier(nn.Module):
    """Pixels to a LIFT run's prediction (``featcache export``).

    ``forward(views)``: uint8 ``[B, V, 3, S, S]`` (V = 1: LIFT's ``Resize(S*8//7) +
    CenterCrop(S)``, bilinear; V = 5: the TTE crops of the image resized to S + 24, in
    :data:`TTE_VIEWS` order) to ``(logits [B, C], probs [B, C])``: the mean over seeds of each
    seed's view-averaged logits, and of its softmax. Normalisation, every seed's fine-tuned
    tower (PEFT modules, LoRA merged) and cosine head are inside.
    """

    def __init__(self, models_: list[nn.Module], mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.seeds = nn.ModuleList(models_)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, V = views.shape[0], views.shape[1]
        from featcache.lift import pre_projection_features

        x = (views.flatten(0, 1).float() / 255.0 - self.mean) / self.std  # [B*V, 3, S, S]
        z = torch.stack([m.head(pre_projection_features(m.visual, x)).reshape(B, V, -1).mean(1)
                         for m in self.seeds])  # [S, B, C]
        return z.mean(0), torch.softmax(z, -1).mean(0)
