"""Image preprocessing for extraction: the ``standard`` view and the five TTE crops.

Images are turned into uint8 tensors on the CPU (workers) and normalised on the device, so
the host only ever moves bytes. Two ways in:

* PIL images (JPEG/PNG files) go through open_clip's own eval transform (minus ToTensor and
  Normalize, which happen on the device), so the ``standard`` view is exactly the model's own
  preprocessing. For TTE the image is resized (shorter side, aspect kept) to S + e and the
  five crops are cut from it with torchvision's FiveCrop geometry, as LIFT does: by the
  decoding worker for files (images differ in shape), on the device for arrays. Each image
  is decoded once.
* Pre-decoded arrays (MedMNIST, synthetic) are resized on the device with antialiased bicubic
  interpolation (PIL's kernel), rounded to uint8 as PIL would.

``resize="pad"`` instead centres a smaller image on a black canvas in pixel space, before
normalisation (the MedMNIST benchmark's size study); images larger than the canvas are
scaled down first. ``resize="pad-norm"`` pads with the normalisation mean colour instead
(``round(255 · mean)`` per channel), so the border is zero after normalisation, as
MedMNIST+ pads (within 0.5/255/std, |x| < 0.008 for CLIP's std, from the uint8 rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF
from torchvision.transforms import transforms as T

from featcache.errors import FeatcacheError

TTE_VIEWS = ("tte_c", "tte_tl", "tte_tr", "tte_bl", "tte_br")
RESIZE_MODES = ("scale", "pad", "pad-norm")
TTE_EXPAND = 24


def five_crop_boxes(height: int, width: int, size: int) -> dict[str, tuple[int, int]]:
    """(top, left) of the five size×size TTE crops of a height×width image, by view name.

    torchvision's ``FiveCrop`` geometry, as LIFT uses it: corners flush with the image's
    edges, the centre crop at ``round((H - S) / 2), round((W - S) / 2)``. For a square
    (S + 24)² image that is (12, 12), (0, 0), (0, 24), (24, 0), (24, 24).
    """
    if not 1 <= size <= min(height, width):
        raise FeatcacheError(
            f"Cannot cut {size}x{size} crops from a {height}x{width} image; resize the shorter "
            f"side to at least {size} (TTE resizes it to {size} + {TTE_EXPAND})."
        )
    return {
        "tte_c": (int(round((height - size) / 2.0)), int(round((width - size) / 2.0))),
        "tte_tl": (0, 0),
        "tte_tr": (0, width - size),
        "tte_bl": (height - size, 0),
        "tte_br": (height - size, width - size),
    }


def five_crops(x: torch.Tensor, size: int) -> torch.Tensor:
    """Cut the five TTE crops from ``x`` [B, C, H, W]; returns [B, 5, C, S, S] in TTE_VIEWS order."""
    boxes = five_crop_boxes(x.shape[-2], x.shape[-1], size)
    return torch.stack([x[..., t : t + size, left : left + size] for t, left in boxes.values()], dim=1)


@dataclass(frozen=True)
class Preprocessing:
    """Every preprocessing setting of one cache (all of it goes into the fingerprint)."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # open_clip's own (for the standard view)
    resize: str = "scale"  # scale | pad | pad-norm: how images are brought to the model's size
    tte: bool = False
    tte_expand: int = TTE_EXPAND

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise FeatcacheError(
                f"Unknown --resize '{self.resize}'. Choose from: {', '.join(RESIZE_MODES)}."
            )

    @classmethod
    def from_open_clip(cls, cfg: dict, resize: str = "scale", tte: bool = False) -> Preprocessing:
        size = cfg["size"]
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        return cls(
            size=size,
            mean=tuple(float(m) for m in cfg["mean"]),
            std=tuple(float(s) for s in cfg["std"]),
            interpolation=str(cfg.get("interpolation", "bicubic")),
            resize_mode=str(cfg.get("resize_mode", "shortest")),
            resize=resize,
            tte=tte,
        )

    @property
    def views(self) -> list[str]:
        return ["standard", *TTE_VIEWS] if self.tte else ["standard"]

    def to_dict(self) -> dict:
        return {
            "size": self.size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
            "resize": self.resize,
            "tte": self.tte,
            "tte_expand": self.tte_expand,
            "views": self.views,
        }

    # ---- CPU side: PIL image -> uint8 tensors -------------------------------------------
    def pil_transforms(self) -> tuple[Callable, Callable | None]:
        """(standard, tte) PIL -> PIL transforms; standard is open_clip's eval transform."""
        if self.resize == "pad-norm":
            raise FeatcacheError(
                "--resize pad-norm is implemented for pre-decoded arrays (MedMNIST) only; use "
                "scale or pad for image files."
            )
        if self.resize == "pad":
            return (lambda im: _pad(im, self.size)), (
                (lambda im: _pad(im, self.size + self.tte_expand)) if self.tte else None
            )  # padded: square (S + e)², so the crops are the square boxes
        full = open_clip.image_transform(
            self.size,
            is_train=False,
            mean=self.mean,
            std=self.std,
            resize_mode=self.resize_mode,
            interpolation=self.interpolation,
        )
        steps = [t for t in full.transforms if not isinstance(t, (T.ToTensor, T.Normalize))]
        standard = T.Compose(steps)
        tte = None
        if self.tte:
            mode = TF.InterpolationMode(self.interpolation)
            big = self.size + self.tte_expand
            tte = T.Resize(big, interpolation=mode)  # shorter side to S + e, aspect kept
        return standard, tte

    # ---- device side ------------------------------------------------------------------
    def resize_arrays(self, x: torch.Tensor, size: int, crop: bool = True) -> torch.Tensor:
        """Bring uint8 [B, 3, H, W] to uint8 [B, 3, size, size] (on x's device).

        ``crop=False`` (TTE) stops after resizing the shorter side to ``size``: the five
        crops are then cut from the whole resized image.
        """
        h, w = x.shape[-2:]
        pad = self.resize in ("pad", "pad-norm")
        if pad and h <= size and w <= size:
            out = x.new_zeros((x.shape[0], 3, size, size))
            if self.resize == "pad-norm":  # the mean colour: zero after normalisation
                fill = torch.tensor([round(255 * m) for m in self.mean], dtype=x.dtype, device=x.device)
                out[:] = fill.view(3, 1, 1)
            top, left = (size - h) // 2, (size - w) // 2
            out[..., top : top + h, left : left + w] = x
            return out
        if min(h, w) == size and (not crop or h == w):
            return x
        # shorter side to `size`, then centre crop: open_clip's "shortest" mode, with
        # torchvision's geometry (the longer side truncated, the crop offset rounded)
        nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        if pad:  # larger than the canvas: scale down to fit, then pad
            scale = size / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        y = F.interpolate(x.float(), size=(nh, nw), mode=self.interpolation, antialias=True)
        y = y.round_().clamp_(0, 255).to(torch.uint8)
        if pad:
            return self.resize_arrays(y, size)
        if not crop:
            return y
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        return y[..., top : top + size, left : left + size]

    def views_of_images(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decoded uint8 [3, H_i, W_i] images of any sizes -> (standard [B, 3, S, S], TTE
        crops [B, 5, 3, S, S] or None), on the images' device.

        Images of one size are resized together (a data set's images usually share a few
        sizes), so a batch costs a handful of kernels rather than one per image.
        """
        s = self.size
        device = images[0].device
        std = torch.empty((len(images), 3, s, s), dtype=torch.uint8, device=device)
        tte = torch.empty((len(images), 5, 3, s, s), dtype=torch.uint8, device=device) if self.tte else None
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for k, im in enumerate(images):
            by_shape.setdefault(tuple(im.shape), []).append(k)
        for rows in by_shape.values():
            index = torch.tensor(rows, device=device)
            std[index], crops = self.views_of_batch(torch.stack([images[k] for k in rows]))
            if tte is not None:
                tte[index] = crops
        return std, tte

    def views_of_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 [B, 3, H, W] -> (standard [B, 3, S, S], TTE crops [B, 5, 3, S, S] or None).

        TTE: the shorter side to S + e (aspect kept), then the five crops of the whole image.
        """
        std = self.resize_arrays(x, self.size)
        if not self.tte:
            return std, None
        return std, five_crops(self.resize_arrays(x, self.size + self.tte_expand, crop=False), self.size)

    def normalize(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """uint8 [..., 3, H, W] -> normalised float tensor of ``dtype`` (same device)."""
        mean = torch.tensor(self.mean, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(3, 1, 1)
        return ((x.float() / 255.0 - mean) / std).to(dtype)


def as_rgb(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] with C = 1 (grey) or 3 -> [B, 3, H, W]; grey is broadcast (a view)."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def array_batch(arrays: np.ndarray, rows: np.ndarray | list[int], device: torch.device | None = None) -> torch.Tensor:
    """Rows of pre-decoded [N, H, W, C] uint8 arrays -> uint8 [B, 3, H, W] on ``device``.

    Grey rows travel as one channel and are broadcast to three only there.
    """
    x = torch.from_numpy(np.ascontiguousarray(arrays[rows]))
    if device is not None:
        x = x.to(device, non_blocking=True)
    return as_rgb(x.permute(0, 3, 1, 2))


def _pad(im: Image.Image, size: int) -> Image.Image:
    """Centre ``im`` on a black size×size canvas (scaling it down first if it is larger)."""
    w, h = im.size
    if w > size or h > size:
        scale = size / max(w, h)
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
        w, h = im.size
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(im, ((size - w) // 2, (size - h) // 2))
    return canvas


def pil_to_uint8(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor [3, H, W] (no scaling: that happens on the device)."""
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
