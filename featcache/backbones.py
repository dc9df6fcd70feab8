"""Backbone specs: one ``--backbones`` entry (``MODEL[:WEIGHTS]`` for open_clip, ``timm:NAME[:WEIGHTS]``
for timm) parsed and checked (:class:`BackboneSpec`), as ``featcache bench medmnist`` uses it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import open_clip

from featcache import models, timm_backbones
from featcache.errors import FeatcacheError, did_you_mean

__all__ = ["BackboneSpec"]


@dataclass(frozen=True)
class BackboneSpec:
    """One ``--backbones`` entry: ``MODEL[:WEIGHTS]`` (open_clip) or ``timm:NAME[.TAG][:WEIGHTS]``.

    ``WEIGHTS`` is a pretrained tag, a checkpoint file or ``random``; absent = the model's
    default (:func:`featcache.models.default_pretrained`).
    """

    spec: str
    model: str
    pretrained: str | None

    @classmethod
    def parse(cls, spec: str) -> BackboneSpec:
        spec = spec.strip()
        if not spec:
            raise FeatcacheError("Empty backbone in --backbones; write e.g. ViT-B-16:openai,timm:resnet18.")
        if spec.startswith("hf-hub:"):
            return cls(spec, spec, None)
        prefix = timm_backbones.PREFIX if timm_backbones.is_timm(spec) else ""
        name, _, weights = spec.removeprefix(prefix).partition(":")
        model = prefix + name
        if prefix:
            timm_backbones.check_model(model)
        elif model not in open_clip.list_models():
            raise FeatcacheError(
                f"Unknown backbone '{spec}': open_clip has no model '{model}'."
                f"{did_you_mean(model, open_clip.list_models())} Write MODEL[:WEIGHTS] for "
                "open_clip (ViT-B-16:openai) or timm:NAME[:WEIGHTS] for timm (timm:resnet18); "
                "`featcache models` lists both."
            )
        return cls(spec, model, weights or None)

    @property
    def is_timm(self) -> bool:
        return timm_backbones.is_timm(self.model)

    def weights(self) -> str:
        """The weights this spec resolves to (tag, file or ``random``)."""
        return self.pretrained or models.default_pretrained(self.model)

    def slug(self) -> str:
        """File-name-safe ``model-weights`` (a weights file adds a hash of its path)."""
        w = self.weights()
        if Path(w).suffix or "/" in w:
            digest = hashlib.sha1(str(Path(w).expanduser().resolve()).encode()).hexdigest()[:8]
            w = f"{Path(w).stem}-{digest}"
        return f"{self.model}-{w}".replace(":", "-").replace("/", "-")
