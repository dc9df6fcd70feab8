"""timm image encoders as featcache backbones (``timm:NAME[.TAG]``), for extraction.

A timm model is built with ``num_classes=0``, so its forward returns the pooled feature of
the image encoder (global average pool for CNNs, the CLS token or pooled tokens for ViTs,
as the model defines it); that feature is the cache's ``embed`` and ``cls`` at once (the
projection is the identity; there is no text tower, no tokenizer and no logit scale).

Weights (``pretrained``):

- ``None``: timm's default weights for the model (the tag in the name, ``resnet18.a1_in1k``,
  or the architecture's first tag); downloaded by timm from the Hugging Face hub, so they
  need network access or a filled HF cache;
- a tag timm knows for the architecture (``a1_in1k``), likewise downloaded;
- a local checkpoint file (``.pth``, ``.bin``, ``.safetensors``: a timm state dict; a
  classifier in it is dropped because the model has ``num_classes=0``);
- ``random``: seeded random weights (tests, speed runs).

Preprocessing follows the model's own data config (``timm.data.resolve_data_config``):
input size, mean, std and interpolation. Pre-decoded arrays (MedMNIST) are square and are
resized as a whole to the input size (or padded, ``resize="pad"``); timm's ``crop_pct``
centre crop is not applied (it is recorded in ``Backbone.preprocess`` for reference only).

Tiny models for tests: timm registers ``test_vit``, ``test_convnext``, ``test_resnet``, ...
(0.1–1 M parameters, 160 px input); ``timm:test_vit`` with ``random`` weights encodes 64
images in about 0.3 s on 2 CPU cores.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from featcache.errors import FeatcacheError, did_you_mean
from featcache.models import RANDOM, Backbone, file_sha256

log = logging.getLogger(__name__)

PREFIX = "timm:"


def is_timm(model_name: str) -> bool:
    """True for ``timm:NAME[.TAG]`` model names."""
    return model_name.startswith(PREFIX)


def split_name(model_name: str) -> tuple[str, str | None]:
    """``timm:resnet18.a1_in1k`` -> (``resnet18``, ``a1_in1k``); the tag may be absent."""
    import timm

    name = model_name.removeprefix(PREFIX)
    if not name:
        raise FeatcacheError("Empty timm model name: write timm:NAME, e.g. timm:resnet18.")
    arch, tag = timm.models.split_model_name_tag(name)
    return arch, (tag or None)


def check_model(model_name: str) -> str:
    """Return the architecture of ``timm:NAME[.TAG]`` after checking timm has it (did-you-mean)."""
    import timm

    arch, _ = split_name(model_name)
    if not timm.is_model(arch):
        raise FeatcacheError(
            f"Unknown timm model '{arch}'.{did_you_mean(arch, timm.list_models())} "
            "Run `featcache models --filter timm:` for the list."
        )
    return arch


def pretrained_tags(arch: str) -> list[str]:
    """The weight tags timm knows for ``arch`` (e.g. ``a1_in1k`` for resnet18), default first."""
    import timm

    return [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*") if "." in n]


def default_pretrained(model_name: str) -> str:
    """The tag in the name, else the architecture's default tag; ``random`` when timm has none."""
    arch, tag = split_name(model_name)
    if tag:
        return tag
    tags = pretrained_tags(arch)
    return tags[0] if tags else RANDOM


def list_models() -> list[dict[str, str]]:
    """One row per timm architecture, as ``timm:NAME`` with its pretrained tags."""
    import timm

    tags: dict[str, list[str]] = {}
    for full in timm.list_pretrained():
        arch, _, tag = full.partition(".")
        tags.setdefault(arch, []).append(tag)
    return [
        {"model": f"{PREFIX}{arch}", "pretrained": ", ".join(tags.get(arch, [])) or "(none: file or random)"}
        for arch in timm.list_models()
    ]


class TimmImageTower(nn.Module):
    """A timm model with ``num_classes=0``: ``forward`` maps images ``[B, 3, S, S]`` to the
    pooled feature ``[B, D]``; ``output_dim`` is D (read by :meth:`Backbone.projection`)."""

    def __init__(self, trunk: nn.Module, output_dim: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.output_dim = output_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)


class TimmImageModel(nn.Module):
    """Holds the tower as ``.visual`` (the attribute featcache reads), with no text tower."""

    def __init__(self, visual: TimmImageTower) -> None:
        super().__init__()
        self.visual = visual


def _weights_error(model_name: str, pretrained: str, err: Exception) -> FeatcacheError:
    first = str(err).splitlines()[0] if str(err) else ""
    return FeatcacheError(
        f"Could not load timm weights '{pretrained}' for model '{model_name}': "
        f"{type(err).__name__}: {first}\n"
        "timm downloads its weights from the Hugging Face hub. Without network access, download "
        "the checkpoint elsewhere (e.g. model.safetensors of timm/<name>.<tag>) and pass it as "
        "--pretrained /path/to/model.safetensors (or .pth/.bin); or use --pretrained random "
        "for random weights (tests and speed runs only)."
    )


def load_timm_backbone(
    model_name: str,
    pretrained: str | None = None,
    device: torch.device | str = "cpu",
) -> Backbone:
    """Build ``timm:NAME[.TAG]`` with ``num_classes=0``, in eval mode, frozen, on ``device``."""
    import timm

    arch = check_model(model_name)
    _, name_tag = split_name(model_name)
    if pretrained is None:
        pretrained = default_pretrained(model_name)

    kwargs: dict = {"pretrained": False}
    if pretrained == RANDOM:
        weights_id = RANDOM
        if not arch.startswith("test_"):
            log.warning("Model %s uses RANDOM weights (asked for with --pretrained random).", model_name)
    elif Path(pretrained).expanduser().is_file():
        path = Path(pretrained).expanduser().resolve()
        kwargs = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}
        weights_id = f"sha256:{file_sha256(path)}"
    elif any(sep in pretrained for sep in ("/", "\\")) or Path(pretrained).suffix:
        raise FeatcacheError(
            f"Weights file {pretrained} for model '{model_name}' does not exist. Pass an existing "
            "checkpoint file, a timm pretrained tag, or 'random'."
        )
    else:
        if name_tag and pretrained != name_tag:
            raise FeatcacheError(
                f"Model '{model_name}' names the tag '{name_tag}' but --pretrained asks for "
                f"'{pretrained}'; give the tag in one place only."
            )
        tags = pretrained_tags(arch)
        if pretrained not in tags:
            raise FeatcacheError(
                f"timm model '{arch}' has no pretrained tag '{pretrained}'."
                f"{did_you_mean(pretrained, tags)} Known tags: {', '.join(tags) or 'none'}; "
                "or pass a checkpoint file, or 'random'."
            )
        arch = f"{arch}.{pretrained}"
        kwargs = {"pretrained": True}
        weights_id = f"timm:{arch}"

    try:
        # Random weights are seeded, so "random" names one fixed model (as for open_clip).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            trunk = timm.create_model(arch, num_classes=0, **kwargs)
    except FeatcacheError:
        raise
    except Exception as e:  # hub / file errors come in many kinds; all mean "no weights"
        if pretrained == RANDOM:
            raise
        raise _weights_error(model_name, pretrained, e) from e

    data_cfg = timm.data.resolve_data_config({}, model=trunk)
    _, height, width = data_cfg["input_size"]
    if height != width:
        raise FeatcacheError(
            f"timm model '{model_name}' expects {height}x{width} inputs; featcache caches square "
            "images only."
        )
    dim = int(getattr(trunk, "head_hidden_size", None) or trunk.num_features)
    tower = TimmImageTower(trunk, dim)
    model = TimmImageModel(tower).to(device).eval().requires_grad_(False)
    preprocess = {
        "size": int(height),
        "mean": tuple(float(m) for m in data_cfg["mean"]),
        "std": tuple(float(s) for s in data_cfg["std"]),
        "interpolation": str(data_cfg.get("interpolation", "bicubic")),
        "resize_mode": "shortest",
        "crop_pct": float(data_cfg.get("crop_pct", 1.0)),
    }
    return Backbone(
        model=model,
        name=model_name,
        pretrained=pretrained,
        weights_id=weights_id,
        tokenizer=None,
        preprocess=preprocess,
    )
