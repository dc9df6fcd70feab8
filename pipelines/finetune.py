"""``featcache finetune``: LIFT (ICML 2024) — lightweight fine-tuning of the CLIP image encoder.

``run(FinetuneConfig(...))`` reads top to bottom (DESIGN.md §2 gives every default):

1. ``--method classifier --cache C.h5``: nothing in the backbone trains, so the cached ``cls``
   features are all it needs — hand over to the heads pipeline (:mod:`featcache.pipelines.train_head`,
   a cosine head σ = 25 with text init on the pre-projection features, logit-adjusted loss).
   These features are *not augmented* (one fixed view per image), so the run is labelled
   ``classifier-cached``; LIFT's augmented classifier baseline is ``--method classifier``
   without ``--cache``.
2. Otherwise, for every seed: build the manifest's split (:func:`featcache.splits.make_split`;
   protocol ``lift`` — official splits, groups by training count — when the data set has a
   test split); load the backbone, inject the method (:mod:`featcache.peft`), put LIFT's
   cosine classifier with semantic-aware init on the pre-projection feature
   (:class:`featcache.lift.CosineClassifier`).
3. Train: SGD (lr 0.01, momentum 0.9, wd 5e-4), cosine schedule per epoch, logit-adjusted
   loss τ = 1 (the heads' ``LOSSES``), computed with the head on fp32 logits. Image files:
   workers decode the full image and apply LIFT's RandomResizedCrop(S) + flip (bilinear,
   :class:`featcache.lift_data.TrainImages`); pre-decoded arrays (and files under ``--train-canvas``) are cropped on
   the device on whole batches (:func:`featcache.lift_data.random_resized_crop`). bf16 autocast on a GPU with the
   frozen weights stored in bf16; a frozen backbone runs without autograd; attention is
   PyTorch's fused SDPA.
4. After every epoch rank 0 writes ``checkpoints/seed-S.pt``: only the parameters that train
   (plus their momentum while the run is unfinished) and the config; ``resume`` continues
   from it. Data order and augmentation draw from generators seeded by (seed, epoch) (and
   the image row, for crops made in the workers), so a resumed run ends with the same
   weights as an uninterrupted one (on the CPU).
5. Evaluate on the test rows with LIFT's test transforms (:func:`featcache.lift_data.lift_eval_transforms`):
   ``Resize(S·8//7) + CenterCrop(S)`` and (``tte``) test-time ensembling — five crops of the
   (S + 24)-resized image, bilinear, logits averaged (:func:`featcache.lift.tte_logits`) — and
   write the run directory with the shared :class:`featcache.runs.RunWriter`; ``config.json``
   records each image-handling choice (``preprocessing``).

Under ``torchrun`` every rank trains on its share of each batch (DistributedDataParallel,
DistributedSampler; NCCL on GPUs, gloo on the CPU); rank 0 evaluates and writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from featcache import knobs, models
from featcache.datasets import build_manifest
from featcache.datasets.base import Manifest
from featcache.datasets.lt_lists import has_placeholder_names
from featcache.device import autocast, precision_name, resolve_device, resolve_precision
from featcache.distributed import barrier, default_workers, dist_info, init_distributed
from featcache.errors import FeatcacheError
from featcache.finetuning import train_step
from featcache.heads.losses import LOSS_KNOBS, LOSSES, MULTI_LABEL_LOSSES, ClassPrior
from featcache.knob_fields import knob_field
from featcache.lift import CosineClassifier, pre_projection_features, tte_logits
from featcache.lift_data import (
    EpochTagged,
    EvalImages,
    TrainImages,
    centre_crop,
    lift_preprocessing,
    passthrough,
    random_resized_crop,
)
from featcache.metrics import compute_metrics, summarize
from featcache.peft import MethodConfig, apply_method, count_parameters, make_config
from featcache.preprocess import Preprocessing
from featcache.progress import bar as progress_bar
from featcache.prompts import LIFT
from featcache.runs import RunResult, RunWriter, clear_run, refuse_existing_run, write_json
from featcache.schedules import EPOCH_SCHEDULES, epoch_lr
from featcache.seeding import mixed_seed, seed_global, torch_generator
from featcache.splits import PROTOCOLS, Split, make_split, resolve_protocol

log = logging.getLogger(__name__)

INITS = ("text", "random")
SCHEDULES = EPOCH_SCHEDULES
# Settings that may change between an interrupted run and its resumption (they do not change
# what is trained); every other setting must match the checkpoint's.
RUNTIME_KNOBS = ("out", "resume", "device", "workers", "progress", "eval_batch_size", "plot_format")
LIFT_EPOCHS = 10  # shijxcs/LIFT configs/model/clip_vit_b16.yaml:13 (num_epochs: 10)


@dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of a LIFT run; defaults are LIFT's (DESIGN.md §2).

    ``batch_size`` is the global batch: under torchrun each of N processes takes
    ``batch_size / N`` images per step. ``train_canvas`` ``None`` (default) is LIFT's
    training transform: RandomResizedCrop + flip of the full decoded image, in the workers;
    a number N is a speed option (not LIFT): file images are shrunk so the longer side fits N
    pixels (aspect kept, edge padding) and the device crops them. ``epochs`` ``None`` takes
    the data set's LIFT recipe (descriptor ``finetune_epochs``: 20 for iNat2018), else 10.
    ``method_options`` go to
    :func:`featcache.peft.make_config` (e.g. ``{"bottleneck": 16}``).
    """

    dataset: str | None = None
    root: str | None = None
    dataset_options: dict = field(default_factory=dict)
    method: str = knob_field("finetune_method")
    method_options: dict = field(default_factory=dict)
    cache: str | None = None  # --method classifier only: train the head on cached features
    model: str = knob_field("finetune_model")
    pretrained: str | None = knob_field("pretrained")
    protocol: str | None = knob_field("finetune_protocol")  # None: lift when the data set has a test split
    test_per_class: int | None = knob_field("test_per_class")
    seeds: tuple[int, ...] = knob_field("finetune_seeds")
    epochs: int | None = knob_field("finetune_epochs")  # None: the data set's LIFT recipe (descriptor.finetune_epochs), else 10
    batch_size: int = knob_field("batch_size")
    lr: float = knob_field("finetune_lr")
    momentum: float = knob_field("momentum")
    weight_decay: float = knob_field("weight_decay")
    schedule: str = knob_field("finetune_schedule")
    loss: str = knob_field("finetune_loss")
    la_tau: float = knob_field("la_tau")
    gamma: float = knob_field("gamma")
    cb_beta: float = knob_field("cb_beta")
    sigma: float = knob_field("sigma")
    init: str = knob_field("finetune_init")
    template: str = LIFT
    augment: bool = True
    train_canvas: int | None = knob_field("train_canvas")
    tte: bool = knob_field("tte")
    precision: str = knob_field("encoder_precision")  # auto = bf16 on a GPU, fp32 on the CPU
    device: str = knob_field("device_choice")
    workers: int | None = knob_field("workers")  # decoding processes for file data sets; None = min(8, CPUs)
    eval_batch_size: int | None = None  # None = batch_size
    out: str | None = None
    resume: bool = False
    progress: bool = True
    plot_format: str = knob_field("plot_format")  # figure formats (featcache.plots.parse_formats), e.g. "png,pdf"

    def __post_init__(self) -> None:
        from featcache.plots import parse_formats

        parse_formats(self.plot_format)
        method_cfg = make_config(self.method, **self.method_options)  # unknown names: did-you-mean
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "dataset_options", dict(self.dataset_options))
        object.__setattr__(self, "method_options", dict(self.method_options))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise FeatcacheError(f"--seeds must be distinct integers, got {list(self.seeds)}.")
        if self.cache is not None and method_cfg.name != "classifier":
            raise FeatcacheError(
                f"--cache trains from cached features, which only --method classifier can do "
                f"(method '{self.method}' changes the backbone, so it must read images). Drop "
                "--cache and pass --dataset/--root."
            )
        if self.cache is None and not self.dataset:
            raise FeatcacheError("Pass --dataset NAME (and --root DIR), or --method classifier --cache C.h5.")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            from featcache.errors import unknown

            raise unknown("protocol", self.protocol, PROTOCOLS)
        LOSSES.get(self.loss)
        if self.loss in MULTI_LABEL_LOSSES:
            raise FeatcacheError(f"--loss {self.loss} is for multi-label data; LIFT fine-tuning is single-label.")
        checks = (
            ("epochs", self.epochs is None or self.epochs >= 1, "None or an integer >= 1"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("lr", math.isfinite(self.lr) and self.lr >= 0, "a finite number >= 0"),
            ("momentum", 0 <= self.momentum < 1, "0 <= momentum < 1"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("sigma", self.sigma > 0, "a scale > 0"),
            ("la_tau", math.isfinite(self.la_tau), "a finite number"),
            ("schedule", self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
            ("init", self.init in INITS, f"one of {', '.join(INITS)}"),
            ("train_canvas", self.train_canvas is None or self.train_canvas >= 8, "None or >= 8 pixels"),
            ("workers", self.workers is None or self.workers >= 0, "None or >= 0"),
            ("eval_batch_size", self.eval_batch_size is None or self.eval_batch_size >= 1, "None or >= 1"),
            ("precision", self.precision in ("auto", "fp32", "bf16", "fp16"), "auto, fp32, bf16 or fp16"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise FeatcacheError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is invalid: expected {expected}.")
        if "{}" not in self.template:
            raise FeatcacheError(f"--template must contain '{{}}' for the class name, got {self.template!r}.")

    def method_config(self) -> MethodConfig:
        """The (unresolved) config of the fine-tuning method."""
        return make_config(self.method, **self.method_options)


# --------------------------------------------------------------------------------------
# The model: backbone with the method injected, LIFT's cosine classifier on top


class LiftModel(nn.Module):
    """``logits = σ · cos(w_k, f)`` with ``f`` the pre-projection CLS feature of the (adapted) tower.

    When no parameter of the tower trains (``classifier``), the tower runs without autograd:
    no activations are kept for a backward pass that would stop at the head anyway.
    """

    def __init__(self, visual: nn.Module, head: CosineClassifier) -> None:
        super().__init__()
        self.visual = visual
        self.head = head
        self.backbone_trains = any(p.requires_grad for p in visual.parameters())

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images ``[B, 3, S, S]`` -> pre-projection features ``[B, W]``."""
        with torch.set_grad_enabled(self.backbone_trains and torch.is_grad_enabled()):
            return pre_projection_features(self.visual, images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images ``[B, 3, S, S]`` -> logits ``[B, C]``."""
        return self.head(self.features(images))


def build_model(
    backbone: models.Backbone,
    method: MethodConfig,
    class_names: list[str],
    *,
    init: str = knobs.FINETUNE_INIT,
    template: str = LIFT,
    sigma: float = knobs.SIGMA,
    device: torch.device,
    frozen_dtype: torch.dtype | None = None,
) -> tuple[LiftModel, MethodConfig]:
    """Inject ``method`` into the backbone's tower and add the cosine head; returns the resolved method.

    ``init="text"`` is LIFT's semantic-aware initialisation: text features of ``template``
    for every class, mapped through ``proj^T`` and normalised. ``frozen_dtype`` (bf16 on a GPU)
    stores the parameters that do not train in that dtype: autocast would cast them on every
    step anyway, and they need no fp32 master copy. Random state is drawn from the global
    generator (seed it first).
    """
    visual = backbone.visual
    num_classes = len(class_names)
    resolved = apply_method(visual, method, num_classes)  # inject + mark trainable
    dims_width = int(visual.transformer.width)
    head = CosineClassifier(dims_width, num_classes, scale=sigma, device=device)
    if init == "text":
        prompts = lift_prompts(template, class_names)
        text = models.text_features(backbone, prompts, device)  # [C, E]
        head.init_from_text(text.to(device), backbone.projection().to(device))
    if frozen_dtype is not None and frozen_dtype != torch.float32:
        for p in visual.parameters():
            if not p.requires_grad:
                p.data = p.data.to(frozen_dtype)
    model = LiftModel(visual, head).to(device)
    return model, resolved


def lift_prompts(template: str, class_names: list[str]) -> list[str]:
    """LIFT's prompts: ``template`` with each name, underscores as spaces.

    shijxcs/LIFT trainer.py:306: ``template.format(c.replace("_", " "))`` for every data set
    (165 of Places-LT's 365 names carry underscores: ``airplane_cabin``).
    """
    from featcache.prompts import fill_prompt  # class names stay literal (no str.format)

    return [fill_prompt(template, name.replace("_", " ")) for name in class_names]


def check_class_names(class_names: list[str], init: str, where: str) -> None:
    """Refuse LIFT's text initialisation on placeholder names (``class 0 .. class C-1``)."""
    if init == "text" and has_placeholder_names(class_names):
        raise FeatcacheError(
            f"{where} has no class names (they are 'class 0' .. 'class {len(class_names) - 1}': no "
            "classnames.txt was found), so the text-initialised head (--init text, LIFT's default) "
            "would encode meaningless prompts. Put LIFT's classnames.txt (github.com/shijxcs/LIFT, "
            "datasets/ImageNet_LT/ or datasets/Places_LT/) next to the list files or pass "
            "--option classnames=FILE; or train with --init random."
        )


def trainable_state(model: LiftModel) -> dict[str, torch.Tensor]:
    """Every parameter that trains (tower and head), by name, on the CPU: what a checkpoint holds."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: LiftModel, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy a checkpoint's trained parameters into ``model``; names must match exactly."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise FeatcacheError(
            f"Checkpoint {where} does not fit this model: missing {missing[:5]}, unexpected "
            f"{extra[:5]}. Was it written with another --method or --model?"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name].to(p.device, p.dtype))


# --------------------------------------------------------------------------------------
# Data: featcache.lift_data (TrainImages, EvalImages, crops on the device); the augmentation generator


def _generator(seed: int, purpose: str, epoch: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded by (seed, purpose, epoch): resumable at epoch granularity."""
    return torch_generator(mixed_seed(seed, purpose, epoch), device)  # featcache.seeding


# --------------------------------------------------------------------------------------
# Distributed helpers


# --------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_path(out_dir: Path, seed: int) -> Path:
    """``<run>/checkpoints/seed-S.pt``."""
    return out_dir / "checkpoints" / f"seed-{seed}.pt"


def save_checkpoint(path: Path, ckpt: dict) -> None:
    """Write ``ckpt`` atomically (a killed write never leaves a half checkpoint behind), tensors
    and plain data only (:func:`featcache.runs.plain_state`), so it loads with ``weights_only=True``."""
    from featcache.runs import plain_state

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(plain_state(ckpt), tmp)
    os.replace(tmp, path)


def _training_settings(cfg: FinetuneConfig) -> dict:
    """The settings a checkpoint must share with the run that resumes it."""
    return {k: v for k, v in asdict(cfg).items() if k not in RUNTIME_KNOBS}


def _load_for_resume(path: Path, cfg: FinetuneConfig) -> dict | None:
    """The checkpoint at ``path`` when resuming (``None`` if absent); refuse other settings."""
    if not path.exists():
        return None
    if not cfg.resume:
        raise FeatcacheError(
            f"{path} already exists. Pass --resume to continue that run, or choose another --out "
            "(nothing was overwritten)."
        )
    from featcache.runs import load_checkpoint

    ckpt = load_checkpoint(path)  # weights_only=True: a crafted pickle is refused, not run
    if not isinstance(ckpt.get("config"), dict):
        raise FeatcacheError(f"Cannot resume {path}: it has no config (not a finetune checkpoint).")
    theirs = {k: v for k, v in ckpt["config"].items() if k not in RUNTIME_KNOBS}
    ours = _training_settings(cfg)
    theirs["seeds"], ours["seeds"] = list(theirs.get("seeds", [])), list(ours["seeds"])
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        detail = ", ".join(f"{k}: {theirs.get(k)!r} -> {ours.get(k)!r}" for k in differ[:6])
        raise FeatcacheError(
            f"Cannot resume {path}: it was written with other settings ({detail}). Resume with the "
            "original arguments, or start a new run with another --out."
        )
    return ckpt


# --------------------------------------------------------------------------------------
# Training and evaluation


def lr_at_epoch(cfg: FinetuneConfig, epoch: int) -> float:
    """Learning rate during ``epoch`` (0-based): ``lr (1 + cos(π e / E)) / 2`` (CosineAnnealingLR per epoch)."""
    return epoch_lr(cfg.schedule, cfg.lr, epoch, cfg.epochs)  # featcache.schedules


def make_loss(cfg: FinetuneConfig, train_counts: np.ndarray, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Mean loss over a batch, from the heads' registry (``la``: CE(z + τ log π), τ = 1)."""
    fn = LOSSES.get(cfg.loss)
    knobs = {k: torch.tensor([float(getattr(cfg, k))], device=device) for k in LOSS_KNOBS}
    prior = ClassPrior.from_counts(torch.as_tensor(train_counts, device=device))

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # [B, C], [B] -> []
        return fn(logits.float()[None], labels[None], knobs, prior)[0].mean()

    return loss


@torch.no_grad()
def evaluate_logits(
    model: LiftModel,
    manifest: Manifest,
    rows: np.ndarray,
    prep: Preprocessing,
    *,
    batch_size: int,
    workers: int,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits of ``rows``: LIFT's plain view ``[n, C]`` and, when ``prep.tte``, the TTE mean ``[n, C]``.

    Plain: ``Resize(S * 8 // 7) + CenterCrop(S)``, bilinear (:func:`featcache.lift_data.lift_eval_transforms`).
    TTE (LIFT): each image resized bilinearly so its shorter side is S + 24, the five S x S
    crops (centre and corners) through the model in one call, their logits averaged
    (:func:`tte_logits`). ``prep`` gives the size and the normalisation.
    """
    model.eval()
    data = EvalImages(manifest, rows, prep)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=passthrough, pin_memory=device.type == "cuda")
    n, C = len(rows), model.head.num_classes
    standard = torch.zeros(n, C)
    tte = torch.zeros(n, C) if prep.tte else None

    def logits_of(x_uint8: torch.Tensor) -> torch.Tensor:  # [N, 3, S, S] uint8 -> [N, C] float
        with autocast(device, dtype):
            return model(prep.normalize(x_uint8, torch.float32)).float()

    for ks, std, crops in progress_bar(None, "evaluate", unit="batch", progress=progress, iterable=loader, leave=False):
        standard[ks] = logits_of(std.to(device, non_blocking=True)).cpu()
        if tte is not None:
            tte[ks] = tte_logits(logits_of, crops.to(device)).cpu()  # [B, 5, 3, S, S] -> [B, C]
    return standard.numpy(), (tte.numpy() if tte is not None else None)


@dataclass
class SeedOutcome:
    """One seed's trained model and what its training did."""

    model: LiftModel
    method: MethodConfig  # resolved (bottleneck / rank filled in)
    preprocess: dict  # open_clip's preprocessing config of the backbone
    epoch_loss: list[float]
    seconds: float
    images_per_second: float
    resumed_from_epoch: int
    weights_id: str = ""  # the backbone's weights (tag, hub id, sha256:<hash>, random), for predict/export
    quick_gelu: bool = False


def train_seed(
    cfg: FinetuneConfig,
    seed: int,
    manifest: Manifest,
    split: Split,
    out_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
) -> SeedOutcome:
    """Build, train (or resume) and checkpoint one seed's model; returns it in eval mode."""
    rank, world = dist_info()
    seed_global(seed)  # adapters' and random heads' initial values
    backbone = models.load_backbone(cfg.model, cfg.pretrained, device=device)
    frozen_dtype = dtype if device.type == "cuda" else None
    class_names = list(manifest.descriptor.class_names)
    model, resolved = build_model(backbone, cfg.method_config(), class_names, init=cfg.init,
                                  template=cfg.template, sigma=cfg.sigma, device=device,
                                  frozen_dtype=frozen_dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    path = checkpoint_path(out_dir, seed)
    ckpt = _load_for_resume(path, cfg)
    start, epoch_loss = 0, []
    if ckpt is not None:
        load_trainable_state(model, ckpt["trainable"], str(path))
        start, epoch_loss = int(ckpt["epoch"]), list(ckpt["epoch_loss"])
        if start < cfg.epochs:
            optimizer.load_state_dict(ckpt["optimizer"])
        log.info("seed %d: resuming %s after epoch %d of %d", seed, path, start, cfg.epochs)
    barrier()  # every rank has read the checkpoint before rank 0 may write the next one

    size = backbone.image_size
    prep = Preprocessing.from_open_clip(backbone.preprocess)
    if cfg.batch_size % world:
        raise FeatcacheError(f"--batch-size {cfg.batch_size} must be divisible by the {world} processes.")
    local_batch = cfg.batch_size // world
    data = TrainImages(manifest, split.train, size, canvas=cfg.train_canvas, augment=cfg.augment, seed=seed)
    sampler = EpochTagged(DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                              drop_last=False))
    workers = 0 if manifest.arrays is not None else (cfg.workers if cfg.workers is not None else default_workers())
    loader = DataLoader(data, batch_size=local_batch, sampler=sampler, num_workers=workers,
                        collate_fn=passthrough, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    loss_fn = make_loss(cfg, split.train_counts, device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    t0, seen = time.perf_counter(), 0
    for epoch in range(start, cfg.epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr_at_epoch(cfg, epoch)
        sampler.set_epoch(epoch)
        gen = _generator(seed * world + rank, "augment", epoch, device)
        net.train()
        losses = []
        bar = progress_bar(None, f"seed {seed} epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                           progress=cfg.progress and rank == 0, iterable=loader, leave=False)
        for images, hw, labels in bar:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if not data.crops_on_device:
                x = images  # [B, 3, S, S] uint8, LIFT's transform already applied by the worker
            elif cfg.augment:
                x = random_resized_crop(images, hw, size, gen)  # [B, 3, S, S] float 0-255
            else:
                x = centre_crop(images, hw, size)
            x = prep.normalize(x, torch.float32)  # autocast casts for the matmuls
            losses.append(train_step(net, optimizer, loss_fn, x, labels, device, dtype, scaler))
            seen += len(labels)
        mean_loss = torch.stack(losses).mean()
        if world > 1:
            torch.distributed.all_reduce(mean_loss)
            mean_loss /= world
        epoch_loss.append(float(mean_loss))
        log.info("seed %d epoch %d/%d: loss %.4f", seed, epoch + 1, cfg.epochs, epoch_loss[-1])
        if rank == 0:
            done = epoch + 1 == cfg.epochs
            save_checkpoint(path, _checkpoint(cfg, model, resolved, split, epoch + 1, epoch_loss,
                                              None if done else optimizer.state_dict()))
        barrier()
    seconds = time.perf_counter() - t0
    model.eval()
    speed = seen * world / seconds if seconds > 0 and seen else math.nan
    return SeedOutcome(model, resolved, dict(backbone.preprocess), epoch_loss, seconds, speed, start,
                       backbone.weights_id, bool(backbone.quick_gelu))


def _checkpoint(cfg: FinetuneConfig, model: LiftModel, resolved: MethodConfig, split: Split, epoch: int,
                epoch_loss: list[float], optimizer_state: dict | None) -> dict:
    """What ``checkpoints/seed-S.pt`` holds: the trained parameters, config and progress."""
    return {
        "pipeline": "finetune",
        "config": asdict(cfg),
        "method": {"name": resolved.name, **asdict(resolved)},
        "epoch": epoch,
        "epoch_loss": epoch_loss,
        "trainable": trainable_state(model),
        "optimizer": optimizer_state,  # momentum of what trains; dropped once the run is done
        "train_counts": split.train_counts.tolist(),
    }


# --------------------------------------------------------------------------------------
# The pipeline


def default_protocol(cfg_protocol: str | None, source_splits: np.ndarray, descriptor: object) -> str:
    """``lift`` (official splits, groups by training count) when the data has a test split."""
    if cfg_protocol is not None:
        return cfg_protocol
    if np.any(np.asarray(source_splits, dtype=object) == "test"):
        return "lift"
    return resolve_protocol(None, np.asarray(source_splits, dtype=object), descriptor)


def resolve_epochs(cfg: FinetuneConfig, descriptor: object) -> FinetuneConfig:
    """``cfg`` with ``epochs`` filled from the data set's descriptor when not given (iNat2018: 20)."""
    if cfg.epochs is not None:
        return cfg
    epochs = getattr(descriptor, "finetune_epochs", None) or LIFT_EPOCHS
    return dataclasses.replace(cfg, epochs=int(epochs))


def default_out(cfg: FinetuneConfig) -> Path:
    """``runs/<dataset>-<model>-<method>`` when ``--out`` is not given."""
    name = cfg.dataset or Path(cfg.cache or "cache").stem
    return Path("runs") / f"{name}-{cfg.model}-{cfg.method}"


CACHED_CLASSIFIER = "classifier-cached"
CACHED_FEATURES_NOTE = (
    "un-augmented cached features: the cache's fixed 'standard' view (or its five TTE crops with --tte), "
    "extracted with open_clip's own preprocessing; LIFT's classifier baseline instead augments every "
    "image every epoch (RandomResizedCrop + flip) -- run --method classifier without --cache for that"
)


def run_from_cache(cfg: FinetuneConfig, *, overwrite: bool = False) -> RunResult:
    """``--method classifier --cache``: LIFT's head on the cached ``cls`` features, by the heads pipeline.

    What trains is LIFT's head (cosine σ = 25, text init, logit-adjusted loss) on *un-augmented*
    features: every epoch sees the same cached view of each image, where LIFT's classifier
    baseline sees a fresh random crop. The run is labelled ``classifier-cached`` and its
    ``config.json`` says so (``features``); ``--method classifier`` without ``--cache`` is the
    augmented path (the frozen tower runs on fresh crops every step, without autograd).
    """
    from featcache.cache import open_cache
    from featcache.pipelines import train_head

    cache = open_cache(cfg.cache)
    check_class_names(list(cache.descriptor.class_names), cfg.init, f"Cache {cfg.cache}")
    cfg = resolve_epochs(cfg, cache.descriptor)
    protocol = default_protocol(cfg.protocol, cache.splits, cache.descriptor)
    head_cfg = train_head.TrainHeadConfig(
        cache=cfg.cache, head="cosine", loss=cfg.loss, sampler="instance", protocol=protocol,
        seeds=cfg.seeds, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        weight_decay=cfg.weight_decay, momentum=cfg.momentum, schedule=cfg.schedule,
        sigma=cfg.sigma, gamma=cfg.gamma, la_tau=cfg.la_tau, cb_beta=cfg.cb_beta,
        init="text" if cfg.init == "text" else "random", text_source="prompts",
        template=cfg.template, feature="cls", tte=cfg.tte, test_per_class=cfg.test_per_class,
        device=cfg.device, out=str(cfg.out or default_out(cfg)), method=CACHED_CLASSIFIER,
    )
    result = train_head.run(head_cfg, overwrite=overwrite)
    # name it for what it is in config.json: LIFT's classifier baseline sees a fresh
    # RandomResizedCrop + flip of every image each epoch; the cache holds one fixed view
    extra = {"features": CACHED_FEATURES_NOTE,
             "cache_preprocessing": dict(cache.meta.get("preprocessing") or {})}
    config_path = result.out_dir / "config.json"
    write_json(config_path, {**json.loads(config_path.read_text()), **extra})
    result.config.update(extra)
    return result


def run(cfg: FinetuneConfig, *, overwrite: bool = False) -> RunResult:
    """Fine-tune for every seed and write the run directory (rank 0); returns the summary.

    An ``out`` that holds a run is refused unless ``cfg.resume`` (continue it from its
    checkpoints) or ``overwrite`` (its files are deleted before training starts, because
    fine-tuning writes its checkpoints as it goes)."""
    if cfg.cache is not None:
        return run_from_cache(cfg, overwrite=overwrite)
    device = resolve_device(cfg.device)
    precision = precision_name(cfg.precision, device)  # featcache.device: auto -> bf16 on a GPU
    dtype = resolve_precision(precision, device)
    joined = init_distributed(device)
    try:
        return _run(cfg, device, precision, dtype, overwrite=overwrite)
    finally:
        if joined:
            torch.distributed.destroy_process_group()


def _run(cfg: FinetuneConfig, device: torch.device, precision: str, dtype: torch.dtype, *,
         overwrite: bool = False) -> RunResult:
    rank, world = dist_info()
    manifest = build_manifest(cfg.dataset, cfg.root, **cfg.dataset_options)
    if manifest.labels.ndim != 1:
        raise FeatcacheError(f"LIFT fine-tuning needs single-label data; {cfg.dataset} is multi-label.")
    desc = manifest.descriptor
    cfg = resolve_epochs(cfg, desc)
    check_class_names(list(desc.class_names), cfg.init, f"Data set {cfg.dataset} at {cfg.root}")
    protocol = default_protocol(cfg.protocol, np.asarray(manifest.splits, dtype=object), desc)
    out_dir = Path(cfg.out) if cfg.out else default_out(cfg)
    if cfg.resume and overwrite:
        raise FeatcacheError("--resume continues the run in --out and --overwrite replaces it; pass one of them.")
    if not cfg.resume:
        if overwrite and rank == 0:
            clear_run(out_dir)
        elif (out_dir / "metrics.json").exists():  # finished (an interrupted one: --resume, below)
            refuse_existing_run(out_dir, overwrite=False)
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()  # every rank sees the cleared folder
    workers = cfg.workers if cfg.workers is not None else default_workers()
    eval_batch = cfg.eval_batch_size or cfg.batch_size

    per_seed, outcomes = [], []
    writer_rows: list[tuple] = []
    counts: dict[str, int] = {}
    for seed in cfg.seeds:
        split = make_split(manifest.labels, np.asarray(manifest.splits, dtype=object), desc, protocol, seed,
                           test_per_class=cfg.test_per_class, where=f"data set {desc.name}")
        outcome = train_seed(cfg, seed, manifest, split, out_dir, device, dtype)
        outcomes.append(outcome)
        backbone_trainable, backbone_total = count_parameters(outcome.model.visual)
        head_params = outcome.model.head.weight.numel()
        counts = {"trainable_params": backbone_trainable + head_params, "backbone_trainable_params": backbone_trainable,
                  "head_params": head_params, "total_params": backbone_total + head_params}
        if rank != 0:
            continue
        prep = Preprocessing.from_open_clip(outcome.preprocess, tte=cfg.tte)
        standard, tte = evaluate_logits(outcome.model, manifest, split.test, prep, batch_size=eval_batch,
                                        workers=workers, device=device, dtype=dtype, progress=cfg.progress)
        labels = manifest.labels[split.test]
        plain = compute_metrics(labels, standard, num_classes=desc.num_classes,
                                train_counts=split.train_counts, groups=split.groups)
        main = compute_metrics(labels, tte, num_classes=desc.num_classes, train_counts=split.train_counts,
                               groups=split.groups) if tte is not None else plain
        metrics = {**main, "tte": tte is not None, "train_loss": outcome.epoch_loss[-1],
                   "epoch_loss": outcome.epoch_loss, "train_seconds": outcome.seconds,
                   "train_images_per_second": outcome.images_per_second, **counts}
        if tte is not None:
            metrics["no_tte"] = {k: v for k, v in plain.items() if k != "per_class_acc"}
        per_seed.append(metrics)
        writer_rows.append((seed, metrics, labels, tte if tte is not None else standard, split))

    config = {**asdict(cfg), "pipeline": "finetune", "protocol": protocol, "device": str(device),
              "precision": precision, "world_size": world, "out": str(out_dir),
              "method_resolved": {"name": outcomes[-1].method.name, **asdict(outcomes[-1].method)},
              "preprocessing": lift_preprocessing(Preprocessing.from_open_clip(outcomes[-1].preprocess, tte=cfg.tte),
                                                  tte=cfg.tte, canvas=cfg.train_canvas, augment=cfg.augment),
              "num_classes": desc.num_classes, "torch_version": torch.__version__, **counts,
              # what predict/export need to rebuild the model (featcache.pipelines.lift_run)
              "weights_id": outcomes[-1].weights_id, "quick_gelu": outcomes[-1].quick_gelu,
              "class_names": list(desc.class_names), "class_ids": list(desc.class_ids)}
    if rank != 0:
        return RunResult(out_dir, {}, config)
    writer = RunWriter(out_dir, config, list(desc.class_names), method=cfg.method)
    for seed, metrics, labels, scores, split in writer_rows:
        writer.add_seed(seed, metrics, labels=labels, scores=scores, rows=split.test, ids=manifest.ids,
                        split=split.to_frame(manifest.ids), train_counts=split.train_counts)
    summary = writer.finish()
    summary.update(counts)
    if cfg.tte:
        summary["no_tte"] = summarize([m["no_tte"] for m in per_seed])
    write_json(out_dir / "metrics.json", summary)
    return RunResult(out_dir, summary, config)
