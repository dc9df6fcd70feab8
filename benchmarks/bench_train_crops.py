"""LIFT training crops: the full image (default, LIFT) vs the 1.5 S canvas (``--train-canvas``).

Prints three things for ``--images`` synthetic 500 x 375 JPEG photos (ImageNet's typical size):

1. crop-box statistics at S = ``--size`` (default 224): torchvision's RandomResizedCrop boxes
   on the full image, and how many source pixels each box has when it is taken from the
   full image vs from the image shrunk into the canvas (longer side 1.5 S);
2. the data side alone (decode + crop, one process): images per second for both ways, at S;
3. one training epoch of ``featcache finetune`` with the tiny model (S = 32, canvas 48),
   both ways (data + model, ``--workers`` decoding processes).

    python benchmarks/bench_train_crops.py --images 256 --workers 0
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _photos(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    for k in range(n):
        c = ("a", "b")[k % 2]
        arr = np.stack([(xx + 7 * k) % 256, (yy * 2) % 256, (xx * yy // 97) % 256], -1)
        arr = np.clip(arr + rng.integers(-30, 30, arr.shape), 0, 255).astype(np.uint8)
        (folder / c).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / c / f"{k}.jpg", quality=90)


def box_stats(size: int, n: int = 20000) -> dict:
    from featcache.lift_data import rrc_box

    H, W = 375, 500
    canvas = round(1.5 * size)
    k = min(1.0, canvas / max(H, W))  # the canvas shrink factor (per side)
    rng = np.random.default_rng(0)
    boxes = np.array([rrc_box(H, W, rng) for _ in range(n)])
    area = boxes[:, 2] * boxes[:, 3]  # source pixels of the box in the full image
    full = np.minimum(area, size * size)  # pixels that can reach the S x S crop
    small = np.minimum(area * k * k, size * size)  # the same box cut from the canvas
    ratio = full / small
    return {
        "size": size, "canvas": canvas, "shrink_per_side": round(k, 3),
        "boxes_fewer_pixels_on_canvas": float((ratio > 1.0 + 1e-9).mean()),
        "boxes_1.5x_fewer_pixels": float((ratio >= 1.5).mean()),
        "median_ratio_full_over_canvas": float(np.median(ratio)),
        "boxes_enlarged_from_canvas_not_from_full": float(((area * k * k) < size * size).mean()
                                                          - (area < size * size).mean()),
    }


def data_speed(folder: Path, size: int, canvas: int | None, repeats: int = 2) -> float:
    import torch

    from featcache.datasets import build_manifest
    from featcache.lift_data import TrainImages, random_resized_crop

    manifest = build_manifest("folder", folder)
    data = TrainImages(manifest, np.arange(len(manifest)), size, canvas=canvas)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for r in range(repeats):
        for start in range(0, len(data), 32):
            items = [(k, r) for k in range(start, min(start + 32, len(data)))]
            x, hw, _ = data.__getitems__(items)
            if data.crops_on_device:
                random_resized_crop(x, hw, size, gen)
    return repeats * len(data) / (time.perf_counter() - t0)


def epoch_time(folder: Path, canvas: int | None, workers: int, out: Path) -> tuple[float, float]:
    from featcache.pipelines.finetune import FinetuneConfig, run

    cfg = FinetuneConfig(dataset="folder", root=str(folder), protocol="tfa-lt", test_per_class=2, epochs=1,
                         batch_size=32, train_canvas=canvas, workers=workers, progress=False, device="cpu",
                         out=str(out), init="random")
    res = run(cfg)
    seed = res.metrics["per_seed"][0]
    return seed["train_seconds"], seed["train_images_per_second"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    print("crop boxes:", box_stats(args.size))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        _photos(folder, args.images)
        for canvas in (None, round(1.5 * args.size)):
            print(f"data side, S={args.size}, canvas={canvas}: {data_speed(folder, args.size, canvas):.1f} img/s")
        for canvas in (None, 48):
            sec, ips = epoch_time(folder, canvas, args.workers, Path(tmp) / f"run-{canvas}")
            print(f"finetune tiny-clip (S=32), one epoch, canvas={canvas}: {sec:.2f} s, {ips:.1f} img/s")


if __name__ == "__main__":
    main()
