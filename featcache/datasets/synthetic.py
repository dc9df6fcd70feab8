"""A deterministic, long-tailed synthetic image set: the embedded default for demos and tests.

Class ``c`` is a coloured stripe pattern: its own base colour, stripe orientation and
stripe frequency, with per-image random phase, colour jitter and pixel noise, so even a
tiny random-weight CLIP separates the classes partly (mostly by colour). Training counts
follow the exponential long-tail profile ``n_c = max_per_class * imbalance^(-c / (C - 1))``
(class 0 is the head); ``test_per_class`` further images per class form a class-balanced
``test`` split, so both the ``official`` protocol (source splits) and a carved-out
balanced test set work.

Class groups: LIFT's thresholds (many > 100, medium 20-100, few < 20 training images)
do not suit a few dozen images per class, so the groups are the thirds of the class
order, head to tail (``np.array_split`` of the class indices into three parts).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featcache.datasets._io import ArrayLoader
from featcache.datasets.base import DATASETS, Descriptor, Manifest
from featcache.errors import DataError

# (name, RGB in [0, 1]) — distinct hues first, so small class counts stay easy to tell apart
COLOURS = (
    ("red", (0.9, 0.1, 0.1)),
    ("green", (0.1, 0.8, 0.2)),
    ("blue", (0.1, 0.2, 0.9)),
    ("yellow", (0.9, 0.85, 0.1)),
    ("magenta", (0.85, 0.1, 0.85)),
    ("cyan", (0.1, 0.85, 0.85)),
    ("orange", (0.95, 0.5, 0.05)),
    ("purple", (0.45, 0.1, 0.7)),
    ("white", (0.9, 0.9, 0.9)),
    ("brown", (0.5, 0.3, 0.1)),
)
# (name, angle of the stripes' normal): 0 degrees varies along x, i.e. vertical stripes
ORIENTATIONS = (("vertical", 0.0), ("horizontal", 90.0), ("diagonal", 45.0), ("anti-diagonal", 135.0))


def class_counts_lt(num_classes: int, max_per_class: int, imbalance: float) -> list[int]:
    """Training images per class: ``int(max * imbalance^(-c / (C - 1)))``, at least 1."""
    if num_classes == 1:
        return [max_per_class]
    return [
        max(1, int(max_per_class * imbalance ** (-c / (num_classes - 1)))) for c in range(num_classes)
    ]


def _pattern(c: int) -> tuple[str, np.ndarray, float, float]:
    """Class ``c``'s (description, base colour [3], stripe angle in radians, stripes per image)."""
    colour_name, rgb = COLOURS[c % len(COLOURS)]
    orient_name, degrees = ORIENTATIONS[(c // len(COLOURS) + c) % len(ORIENTATIONS)]
    frequency = 2.0 + (c % 3) * 1.5
    return f"{colour_name} {orient_name} stripes", np.array(rgb), np.deg2rad(degrees), frequency


def _render(rng: np.random.Generator, c: int, n: int, size: int) -> np.ndarray:
    """``n`` images of class ``c``: [n, size, size, 3] uint8."""
    _, rgb, angle, frequency = _pattern(c)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # [S, S] in [0, 1)
    angles = angle + rng.normal(0.0, 0.15, n)  # [n] orientation jitter
    phases = rng.uniform(0.0, 2 * np.pi, n)
    freqs = frequency * rng.uniform(0.85, 1.15, n)
    proj = np.cos(angles)[:, None, None] * xx + np.sin(angles)[:, None, None] * yy  # [n, S, S]
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freqs[:, None, None] * proj + phases[:, None, None])
    colours = np.clip(rgb + rng.normal(0.0, 0.06, (n, 3)), 0.0, 1.0)  # [n, 3]
    img = (0.35 + 0.65 * stripes[..., None]) * colours[:, None, None, :]  # [n, S, S, 3]
    img += rng.normal(0.0, 0.08, img.shape)
    return (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)


@DATASETS.register("synthetic-lt")
def synthetic_lt(
    root: Path | None = None,
    *,
    num_classes: int = 6,
    imbalance: float = 20.0,
    max_per_class: int = 100,
    size: int = 32,
    seed: int = 0,
    test_per_class: int = 10,
) -> Manifest:
    """Synthetic long-tailed stripes (no files; root ignored): n_c = max_per_class * imbalance^(-c/(C-1)) train + test_per_class test images per class.

    Deterministic for a given set of options; the images are generated in memory
    (``Manifest.arrays``), ~300 images at 32x32 in a few milliseconds.
    """
    del root  # generated in memory; --root is accepted and ignored
    if int(num_classes) < 2:
        raise DataError(f"synthetic-lt num_classes must be at least 2, got {num_classes}.")
    if float(imbalance) < 1:
        raise DataError(f"synthetic-lt imbalance is max/min images per class and must be >= 1, got {imbalance}.")
    if int(max_per_class) < 1 or int(test_per_class) < 0:
        raise DataError(
            f"synthetic-lt needs max_per_class >= 1 and test_per_class >= 0, got {max_per_class} and {test_per_class}."
        )
    if int(size) < 8:
        raise DataError(f"synthetic-lt size must be at least 8 pixels, got {size}.")
    num_classes, max_per_class, size, test_per_class = map(int, (num_classes, max_per_class, size, test_per_class))
    counts = class_counts_lt(num_classes, max_per_class, float(imbalance))
    rng = np.random.default_rng(seed)

    blocks: list[np.ndarray] = []
    labels: list[int] = []
    ids: list[str] = []
    splits: list[str] = []
    for split, per_class in (("train", counts), ("test", [test_per_class] * num_classes)):
        for c, n in enumerate(per_class):
            if n == 0:
                continue
            blocks.append(_render(rng, c, n, size))
            labels += [c] * n
            ids += [f"{split}-c{c}-{k}" for k in range(n)]
            splits += [split] * n
    arrays = np.concatenate(blocks)  # [N, S, S, 3] uint8

    class_ids = tuple(str(c) for c in range(num_classes))
    thirds = np.array_split(np.arange(num_classes), 3)
    descriptor = Descriptor(
        name="synthetic-lt",
        class_ids=class_ids,
        class_names=tuple(f"class {c} ({_pattern(c)[0]})" for c in range(num_classes)),
        data_type="synthetic",
        protocol="official",
        test_per_class=test_per_class,
        groups={g: tuple(class_ids[c] for c in idx) for g, idx in zip(("many", "medium", "few"), thirds, strict=True)},
        source=f"featcache synthetic-lt: training counts {counts}",
    )
    return Manifest(
        descriptor=descriptor,
        ids=ids,
        sources=[f"synthetic-lt#{i}" for i in ids],
        labels=np.array(labels, dtype=np.int64),
        splits=splits,
        loader=ArrayLoader(arrays),
        arrays=arrays,
        options={
            "num_classes": num_classes,
            "imbalance": float(imbalance),
            "max_per_class": max_per_class,
            "size": size,
            "seed": int(seed),
            "test_per_class": test_per_class,
        },
    )
