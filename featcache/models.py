"""Loading open_clip backbones, and the two features featcache takes from them.

Everything goes through open_clip's own factory and tokenizer. ``tiny-clip`` is a
random-weight model from ``model_configs/tiny-clip.json`` (shipped in the package) for the
offline demo and the tests. Real models need weights: an open_clip pretrained tag
(``openai``), a local checkpoint file, or ``hf-hub:ORG/REPO``. Where weights cannot be had the
error says which model and tag, where it looked, and how to pass a local file; a real model
never silently falls back to random weights (``--pretrained random`` asks for them openly,
e.g. for speed benchmarks).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
from torch import nn

from featcache.errors import FeatcacheError, did_you_mean

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
TINY_MODELS = ("tiny-clip",)
RANDOM = "random"
open_clip.add_model_config(CONFIG_DIR)


def list_models() -> list[dict[str, str]]:
    """Every model open_clip knows (plus featcache's tiny ones) with its pretrained tags, then
    every timm architecture as ``timm:NAME`` (see :mod:`featcache.timm_backbones`)."""
    from featcache import timm_backbones

    rows = []
    for name in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(name)
        rows.append({"model": name, "pretrained": ", ".join(tags) or "(none: file or random)"})
    return rows + timm_backbones.list_models()


def default_pretrained(model_name: str) -> str:
    """The weights used when ``--pretrained`` is omitted: random for tiny models, else openai/first tag."""
    from featcache import timm_backbones

    if timm_backbones.is_timm(model_name):
        return timm_backbones.default_pretrained(model_name)
    if model_name in TINY_MODELS:
        return RANDOM
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if "openai" in tags:
        return "openai"
    if tags:
        return tags[0]
    raise FeatcacheError(
        f"Model '{model_name}' has no pretrained tag in open_clip; pass --pretrained FILE "
        "(a local checkpoint) or --pretrained random."
    )


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file (identifies local checkpoint weights in cache metadata)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Backbone:
    """A loaded open_clip (or timm) model with what featcache needs to know about it.

    timm backbones (:mod:`featcache.timm_backbones`) have no text tower: ``tokenizer`` is
    ``None`` (:attr:`has_text` False) and :attr:`logit_scale` is ``None``.
    ``preprocess`` is open_clip's own preprocessing config (size, mean, std, interpolation,
    resize_mode); ``weights_id`` is the pretrained tag, ``sha256:<hash>`` for a file, the hub
    id, or ``random``.
    """

    model: nn.Module
    name: str
    pretrained: str
    weights_id: str
    tokenizer: object
    preprocess: dict = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        size = self.preprocess["size"]
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def logit_scale(self) -> float | None:
        scale = getattr(self.model, "logit_scale", None)
        return None if scale is None else float(scale.exp().item())

    @property
    def has_text(self) -> bool:
        """Whether the model has a text tower (open_clip) or only an image encoder (timm)."""
        return self.tokenizer is not None

    @property
    def embed_dim(self) -> int:
        return int(self.projection().shape[1])

    def projection(self) -> torch.Tensor:
        """The visual projection ``[W, E]`` (pre-projection width W to embedding E).

        Towers without a separate projection (ResNet attention pooling, timm heads) get the
        identity: their pre-projection feature is the embedding itself.
        """
        proj = getattr(self.visual, "proj", None)
        if isinstance(proj, torch.Tensor):
            return proj.detach()
        dim = int(self.visual.output_dim)
        return torch.eye(dim, device=next(self.model.parameters()).device)

    def preprocess_settings(self) -> dict:
        """Plain-JSON preprocessing settings (stored in cache metadata)."""
        out = {}
        for key, value in self.preprocess.items():
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Silence open_clip's root-logger "initialized randomly" warning (we log our own)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _weights_error(model_name: str, pretrained: str, err: Exception) -> FeatcacheError:
    hub_cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return FeatcacheError(
        f"Could not load weights '{pretrained}' for model '{model_name}': {type(err).__name__}: "
        f"{str(err).splitlines()[0] if str(err) else ''}\n"
        f"open_clip looked in the Hugging Face cache ({hub_cache}) and tried to download them. "
        "Without network access, download the checkpoint elsewhere and pass it as "
        f"--pretrained /path/to/checkpoint.bin (or .safetensors/.pt); or use "
        "--pretrained random for random weights (speed tests only)."
    )


def load_backbone(
    model_name: str,
    pretrained: str | None = None,
    device: torch.device | str = "cpu",
    cache_dir: str | None = None,
) -> Backbone:
    """Build an open_clip model with its weights, in eval mode, frozen, on ``device``.

    ``pretrained``: a tag open_clip knows for this model, a checkpoint file, ``hf-hub:ID``
    (also accepted as the model name), ``random``, or ``None`` for :func:`default_pretrained`.
    ``timm:NAME[.TAG]`` names load through :func:`featcache.timm_backbones.load_timm_backbone`.
    """
    from featcache import timm_backbones

    if timm_backbones.is_timm(model_name):
        return timm_backbones.load_timm_backbone(model_name, pretrained, device=device)
    if model_name.startswith("hf-hub:"):
        pretrained, model_name = model_name, model_name
    known = open_clip.list_models()
    if not model_name.startswith("hf-hub:") and model_name not in known:
        raise FeatcacheError(
            f"Unknown model '{model_name}'.{did_you_mean(model_name, known)} "
            "Run `featcache models` for the list."
        )
    if pretrained is None:
        pretrained = default_pretrained(model_name)

    create_name, create_pretrained, weights_id = model_name, None, RANDOM
    if pretrained == RANDOM:
        if model_name not in TINY_MODELS:
            log.warning("Model %s uses RANDOM weights (asked for with --pretrained random).", model_name)
    elif pretrained.startswith("hf-hub:"):
        create_name, weights_id = pretrained, pretrained
    elif Path(pretrained).expanduser().exists():
        path = Path(pretrained).expanduser().resolve()
        create_pretrained, weights_id = str(path), f"sha256:{file_sha256(path)}"
    elif any(sep in pretrained for sep in ("/", "\\")) or Path(pretrained).suffix:
        raise FeatcacheError(
            f"Weights file {pretrained} for model '{model_name}' does not exist. Pass an existing "
            "checkpoint file, an open_clip pretrained tag, or hf-hub:ORG/REPO."
        )
    else:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise FeatcacheError(
                f"Model '{model_name}' has no pretrained tag '{pretrained}'."
                f"{did_you_mean(pretrained, tags)} Known tags: {', '.join(tags) or 'none'}; "
                "or pass a checkpoint file, or 'random'."
            )
        create_pretrained, weights_id = pretrained, pretrained

    try:
        # Random weights are seeded, so "random" names one fixed model: a resumed or repeated
        # extraction with random weights gives the same features.
        with torch.random.fork_rng(devices=[]), _quiet_open_clip():
            torch.manual_seed(0)
            model = open_clip.create_model(
                create_name, pretrained=create_pretrained, device=device, cache_dir=cache_dir
            )
    except FeatcacheError:
        raise
    except Exception as e:  # open_clip / HF hub raise many kinds; all mean "no weights"
        if pretrained == RANDOM:
            raise
        raise _weights_error(model_name, pretrained, e) from e
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(create_name)
    return Backbone(
        model=model,
        name=model_name,
        pretrained=pretrained,
        weights_id=weights_id,
        tokenizer=tokenizer,
        preprocess=dict(open_clip.get_model_preprocess_cfg(model)),
    )


def image_features(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected embedding ``[B, E]`` and pre-projection CLS feature ``[B, W]`` of ``images``.

    For open_clip ViTs the pre-projection feature is the pooled ``ln_post`` output (768-d for
    ViT-B/16) and the embedding is that times ``visual.proj``. Other towers have no separate
    projection, so both outputs are the tower's output.
    """
    if all(hasattr(visual, a) for a in ("_embeds", "_pool")) and isinstance(
        getattr(visual, "proj", None), torch.Tensor
    ):
        tokens = visual.transformer(visual._embeds(images))  # [B, T, W]
        pre, _ = visual._pool(tokens)  # [B, W]
        return pre @ visual.proj, pre
    out = visual(images)
    if isinstance(out, tuple):
        out = out[0]
    return out, out


@torch.no_grad()
def text_features(backbone: Backbone, prompts: list[str], device: torch.device, batch: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings ``[len(prompts), E]``, float32, on the CPU."""
    out = []
    for i in range(0, len(prompts), batch):
        tokens = backbone.tokenizer(prompts[i : i + batch]).to(device)
        feats = backbone.model.encode_text(tokens).float()
        out.append(torch.nn.functional.normalize(feats, dim=-1).cpu())
    return torch.cat(out)
