"""Fine-tuning's images: LIFT's data sets and transforms, and augmentation on the device.

What :mod:`featcache.pipelines.finetune` feeds the backbone (DESIGN.md §2):

- :class:`TrainImages`: training rows as uint8 batches. Image files are decoded in the
  DataLoader workers and given LIFT's ``RandomResizedCrop(S)`` + flip (bilinear; the box from
  :func:`rrc_box`, drawn from a generator seeded by (seed, epoch, row)); pre-decoded arrays,
  and files under ``--train-canvas``, are cropped on the device on whole batches
  (:func:`random_resized_crop`, or :func:`centre_crop` without augmentation).
- :class:`EpochTagged`: a sampler wrapper that tells the workers the epoch;
  :func:`passthrough`: the collate for datasets that return whole batches.
- :class:`EvalImages` and :func:`lift_eval_transforms`: LIFT's test transforms,
  ``Resize(S·8//7) + CenterCrop(S)`` and the TTE resize.
- :func:`lift_preprocessing`: what ``config.json`` records about these choices.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler
from torchvision.ops import roi_align
from torchvision.transforms import functional as TF
from torchvision.transforms import transforms as T

from featcache.datasets.base import Manifest
from featcache.preprocess import TTE_EXPAND, Preprocessing, array_batch, five_crops, pil_to_uint8
from featcache.seeding import numpy_generator

__all__ = [
    "RRC_RATIO",
    "RRC_SCALE",
    "EpochTagged",
    "EvalImages",
    "TrainImages",
    "centre_crop",
    "lift_eval_transforms",
    "lift_preprocessing",
    "passthrough",
    "random_resized_crop",
    "rrc_box",
]

RRC_SCALE = (0.08, 1.0)  # torchvision RandomResizedCrop defaults, as LIFT uses them
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def lift_eval_transforms(size: int, tte: bool, expand: int = TTE_EXPAND) -> tuple[Callable, Callable | None]:
    """LIFT's test transforms (PIL -> PIL), bilinear as torchvision's default.

    - standard: ``Resize(S * 8 // 7) + CenterCrop(S)`` (shijxcs/LIFT trainer.py:142-144);
      for S = 224 the shorter side goes to 256. open_clip's own eval transform (which the
      cache's ``standard`` view keeps) is ``Resize(S) + CenterCrop(S)``, bicubic.
    - TTE: ``Resize(S + expand)`` (shorter side, aspect kept), then ``FiveCrop(S)`` is cut by
      :func:`five_crops` (trainer.py:117-123, ``expand`` = 24 in configs/model/clip_vit_b16.yaml:24).
    """
    bilinear = TF.InterpolationMode.BILINEAR
    standard = T.Compose([T.Resize(size * 8 // 7, interpolation=bilinear), T.CenterCrop(size)])
    return standard, (T.Resize(size + expand, interpolation=bilinear) if tte else None)


def lift_preprocessing(prep: Preprocessing, *, tte: bool, canvas: int | None, augment: bool) -> dict:
    """What ``config.json`` records about fine-tuning's image handling (each choice and its source)."""
    S = prep.size
    train = (f"shrink into a {canvas}x{canvas} canvas (longer side), then RandomResizedCrop({S}) + flip "
             "on the device (--train-canvas; not LIFT)" if canvas else
             f"RandomResizedCrop({S}, scale={RRC_SCALE}, bilinear) + horizontal flip of the full image "
             "(LIFT trainer.py:102-104)")
    if not augment:
        train = f"no augmentation: Resize({S}) + CenterCrop({S}), bilinear (LIFT's transform_plain, trainer.py:109-111)"
    return {
        "size": S, "mean": list(prep.mean), "std": list(prep.std),
        "train": train,
        "train_canvas": canvas,
        "eval": f"Resize({S * 8 // 7}, bilinear) + CenterCrop({S}) (LIFT trainer.py:142-144)",
        "eval_tte": (f"Resize({S + prep.tte_expand}, bilinear) + FiveCrop({S}), logits averaged "
                     "(LIFT trainer.py:117-123, 571-573)") if tte else None,
        "interpolation": "bilinear",
        "arrays": "pre-decoded arrays: training crops on the device (roi_align, bilinear); evaluation "
                  "through the same PIL transforms as files",
    }


def rrc_box(height: int, width: int, rng: np.random.Generator,
            scale: tuple[float, float] = RRC_SCALE, ratio: tuple[float, float] = RRC_RATIO) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a RandomResizedCrop box on a ``height x width`` image.

    torchvision's ``RandomResizedCrop.get_params`` step for step (ten tries of area
    ``U(scale)`` x image area and log-uniform aspect, the first that fits, else the centre
    clamped to ``ratio``), drawing from ``rng`` instead of torch's global generator.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _augment_rng(seed: int, epoch: int, row: int) -> np.random.Generator:
    """The generator of one image's augmentation in one epoch (independent of workers and ranks)."""
    return numpy_generator(seed, epoch, row, 0x11F7)  # featcache.seeding (numbers as before)


class EpochTagged(torch.utils.data.Sampler):
    """Yields ``(index, epoch)`` from a (distributed) sampler, so workers know the epoch."""

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):  # noqa: ANN204
        return ((int(k), self.epoch) for k in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class TrainImages(Dataset):
    """Training rows as uint8 batches ``[B, 3, H, W]``, each image's valid size ``[B, 2]``, labels.

    Items are ``(k, epoch)`` pairs (:class:`EpochTagged`); ``__getitems__`` returns a whole
    batch, so DataLoader workers fetch batches, not items.

    - Files, ``canvas=None`` (default, LIFT): the worker decodes the full image and applies
      LIFT's training transform, ``RandomResizedCrop(S)`` + ``RandomHorizontalFlip()``
      (shijxcs/LIFT trainer.py:102-104): the box is drawn on the full image (:func:`rrc_box`,
      from a generator seeded by (seed, epoch, row)) and cut and resized to ``S x S`` by
      torchvision's ``resized_crop`` (bilinear). With ``augment=False``: ``Resize(S) +
      CenterCrop(S)`` (LIFT's ``transform_plain``). The batch is final (``crops_on_device``
      is False).
    - Files with ``canvas`` (``--train-canvas N``, a speed option, not LIFT): each image is
      shrunk (never enlarged) so its longer side fits ``canvas``, into the top-left corner of a
      ``canvas x canvas`` square (edge pixels replicated into the rest); the device then crops
      inside the valid ``(h, w)`` (:func:`random_resized_crop`).
    - Arrays: slices of the pre-decoded ``[N, H, W, 3]`` array (the full image), cropped on
      the device.
    """

    def __init__(self, manifest: Manifest, rows: np.ndarray, size: int, *, canvas: int | None = None,
                 augment: bool = True, seed: int = 0) -> None:
        self.manifest, self.rows = manifest, np.asarray(rows, dtype=np.int64)
        self.size, self.canvas, self.augment, self.seed = size, canvas, augment, seed
        self.labels = torch.as_tensor(manifest.labels[self.rows], dtype=torch.long)
        self.crops_on_device = manifest.arrays is not None or canvas is not None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.__getitems__([item])

    def __getitems__(self, items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pairs = [it if isinstance(it, tuple) else (int(it), 0) for it in items]
        ks = [k for k, _ in pairs]
        rows = self.rows[ks]
        labels = self.labels[ks]
        arrays = self.manifest.arrays
        if arrays is not None:
            x = array_batch(arrays, rows)  # [B, 3, H, W]
            hw = torch.tensor([x.shape[-2], x.shape[-1]]).expand(len(rows), 2).contiguous()
            return x.contiguous(), hw, labels
        if self.canvas is None:
            return self._lift_crops(rows, [e for _, e in pairs]), torch.full((len(rows), 2), self.size), labels
        c = self.canvas
        out = torch.zeros(len(rows), 3, c, c, dtype=torch.uint8)
        hw = torch.zeros(len(rows), 2, dtype=torch.long)
        for b, row in enumerate(rows):
            im = self.manifest.load(int(row))  # DataError names the file
            w, h = im.size
            if max(w, h) > c:
                scale = c / max(w, h)
                w, h = max(1, round(w * scale)), max(1, round(h * scale))
                im = im.resize((w, h), resample=3, reducing_gap=None)  # 3 = bicubic (antialiased)
            out[b, :, :h, :w] = pil_to_uint8(im)
            # replicate the last row / column into the padding: bilinear samples at the valid
            # region's edge then see the edge pixel (as a resize would), never black padding
            out[b, :, h:, :w] = out[b, :, h - 1 : h, :w]
            out[b, :, :, w:] = out[b, :, :, w - 1 : w]
            hw[b, 0], hw[b, 1] = h, w
        return out, hw, labels

    def _lift_crops(self, rows: np.ndarray, epochs: list[int]) -> torch.Tensor:
        """LIFT's training transform on the full decoded images -> uint8 ``[B, 3, S, S]``."""
        S, bilinear = self.size, TF.InterpolationMode.BILINEAR
        out = torch.empty(len(rows), 3, S, S, dtype=torch.uint8)
        for b, (row, epoch) in enumerate(zip(rows, epochs, strict=True)):
            im = self.manifest.load(int(row))  # DataError names the file
            if self.augment:
                rng = _augment_rng(self.seed, epoch, int(row))
                top, left, h, w = rrc_box(im.size[1], im.size[0], rng)
                im = TF.resized_crop(im, top, left, h, w, [S, S], interpolation=bilinear)
                if rng.random() < 0.5:
                    im = TF.hflip(im)
            else:
                im = TF.center_crop(TF.resize(im, S, interpolation=bilinear), [S, S])
            out[b] = pil_to_uint8(im)
        return out


class EvalImages(Dataset):
    """Test rows for evaluation: ``(rows [B], standard uint8 [B,3,S,S], TTE crops [B,5,3,S,S] | None)``.

    Every image (file or pre-decoded array, as LIFT's data sets hand PIL images to their
    transforms) goes through LIFT's test transforms (:func:`lift_eval_transforms`) in the worker.
    """

    def __init__(self, manifest: Manifest, rows: np.ndarray, prep: Preprocessing) -> None:
        self.manifest, self.rows, self.prep = manifest, np.asarray(rows, dtype=np.int64), prep
        self.standard, self.tte = lift_eval_transforms(prep.size, prep.tte, prep.tte_expand)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> tuple:
        return self.__getitems__([k])

    def __getitems__(self, ks: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        rows = self.rows[ks]
        std, crops = [], []
        for row in rows:
            im = self.manifest.load(int(row))
            std.append(pil_to_uint8(self.standard(im)))
            if self.tte is not None:
                crops.append(five_crops(pil_to_uint8(self.tte(im))[None], self.prep.size)[0])  # [5, 3, S, S]
        return torch.as_tensor(ks), torch.stack(std), (torch.stack(crops) if crops else None)


def passthrough(batch: object) -> object:
    """Collate for datasets whose ``__getitems__`` already returns a batch."""
    return batch


def random_resized_crop(
    images: torch.Tensor,
    valid_hw: torch.Tensor,
    size: int,
    gen: torch.Generator,
    *,
    flip: bool = True,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
) -> torch.Tensor:
    """torchvision's RandomResizedCrop (+ horizontal flip) for a whole batch, on its device.

    ``images`` uint8 (or float) ``[B, C, H, W]``; ``valid_hw`` ``[B, 2]`` the image's own height
    and width inside the (zero-padded) tensor. Box sampling follows torchvision: ten tries of
    area ``U(scale)`` x image area and log-uniform aspect ``ratio``, the first that fits wins,
    else a centre crop clamped to ``ratio``. Crops are resized to ``size x size`` with
    ``roi_align`` (bilinear, averaging ``ceil(box / size)`` samples per output pixel when
    shrinking). Returns float ``[B, C, S, S]`` in the input's 0-255 range.
    """
    B, dev = images.shape[0], images.device
    hw = valid_hw.to(dev, torch.float32)
    height, width = hw[:, 0:1], hw[:, 1:2]  # [B, 1]
    area = height * width
    tries = 10
    u = torch.rand(B, tries, 4, device=dev, generator=gen)  # area, ratio, top, left draws
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])  # [B, 10]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # [B, 10]
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.zeros(B, dtype=torch.long, device=dev))
    pick = first[:, None]
    w, h = w.gather(1, pick), h.gather(1, pick)  # [B, 1]
    top = torch.floor(u[..., 2].gather(1, pick) * (height - h + 1))
    left = torch.floor(u[..., 3].gather(1, pick) * (width - w + 1))
    # fallback (no try fitted): the whole image, or its centre clamped to the ratio range
    in_ratio = width / height
    fw = torch.where(in_ratio < ratio[0], width, torch.where(in_ratio > ratio[1], torch.round(height * ratio[1]), width))
    fh = torch.where(in_ratio < ratio[0], torch.round(width / ratio[0]), height)
    none = ~fits.any(1, keepdim=True)
    w, h = torch.where(none, fw, w), torch.where(none, fh, h)
    top = torch.where(none, torch.floor((height - h) / 2), top)
    left = torch.where(none, torch.floor((width - w) / 2), left)
    boxes = torch.cat([torch.arange(B, device=dev, dtype=torch.float32)[:, None], left, top, left + w, top + h], 1)
    crops = roi_align(images.float(), boxes, output_size=(size, size), spatial_scale=1.0,
                      sampling_ratio=-1, aligned=True)  # [B, C, S, S]
    if flip:
        mirrored = torch.rand(B, device=dev, generator=gen) < 0.5
        crops = torch.where(mirrored[:, None, None, None], crops.flip(-1), crops)
    return crops


def centre_crop(images: torch.Tensor, valid_hw: torch.Tensor, size: int) -> torch.Tensor:
    """The largest centred square of each image's valid region, resized to ``size`` (no augmentation).

    ``images`` ``[B, C, H, W]``, ``valid_hw`` ``[B, 2]`` -> float ``[B, C, S, S]`` (0-255).
    """
    B, dev = images.shape[0], images.device
    hw = valid_hw.to(dev, torch.float32)
    side = hw.min(1, keepdim=True).values  # [B, 1]
    top, left = torch.floor((hw[:, 0:1] - side) / 2), torch.floor((hw[:, 1:2] - side) / 2)
    boxes = torch.cat([torch.arange(B, device=dev, dtype=torch.float32)[:, None], left, top,
                       left + side, top + side], 1)
    return roi_align(images.float(), boxes, output_size=(size, size), spatial_scale=1.0,
                     sampling_ratio=-1, aligned=True)
