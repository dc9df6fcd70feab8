#!/usr/bin/env python3
"""Extraction throughput: featcache against the plain open_clip + DataLoader loop, one run.

Measures, for the same model and the same images:

* ``plain``      — PIL + open_clip preprocess + DataLoader (N workers), fp32 model: how most
                   papers' code extracts features (DESIGN.md §6 anchor: 956 img/s on an H100);
* ``model-only`` — the encoder alone on a resident random batch, in the precision asked for
                   (the ceiling for end-to-end extraction);
* ``featcache``  — ``featcache extract`` end to end (decoding, preprocessing, encoding, writing
                   the HDF5 cache), from (a) pre-decoded arrays (synthetic-lt at the model's size)
                   and/or (b) real JPEGs (``--jpeg-root``, e.g. ../shared/data/ham10000) with
                   each ``--decoders`` (pil: PIL in the workers; device: JPEGs decoded on the
                   device), each with and without the five TTE crops (TTE counts images, not
                   crops), with the share of the time the encoder waited for input;
* ``input only`` — the same JPEG input side with no encoder: how fast it can feed one;
* ``anchor``     — with ``--anchor`` on a GPU, ../shared/anchors/gpu_anchor.py in the same run.

Examples::

    python benchmarks/bench_extract.py --model tiny-clip --device cpu --images 2048
    python benchmarks/bench_extract.py --model ViT-B-16 --pretrained random --device cuda \
        --precision bf16 --images 16384 --jpeg-root ../shared/data/ham10000 --anchor --json out.json

With ``--device cuda`` GPU utilisation (``nvidia-smi``'s, sampled every 100 ms) is reported
per phase.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featcache.datasets import build_manifest
from featcache.decode import jpeg_decoder
from featcache.device import autocast, resolve_device, resolve_precision, synchronize
from featcache.distributed import default_workers
from featcache.models import image_features, load_backbone
from featcache.pipelines.extract import ExtractConfig, image_batches, run
from featcache.preprocess import Preprocessing

ANCHOR = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "gpu_anchor.py"


class GpuSampler:
    """Samples nvidia-smi GPU utilisation in a thread while a phase runs."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.samples, self._stop = enabled, [], threading.Event()

    def __enter__(self) -> GpuSampler:
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=2,
                )
                self.samples.append(float(out.stdout.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def plain_loop(model_name: str, pretrained: str, n: int, batch: int, workers: int, device: torch.device) -> float:
    """img/s of the plain way: PIL images + open_clip preprocess + DataLoader, fp32."""
    backbone = load_backbone(model_name, pretrained, device=device)
    import open_clip

    cfg = backbone.preprocess
    preprocess = open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"])
    rng = np.random.default_rng(0)
    side = backbone.image_size + 32
    pool = rng.integers(0, 255, (64, side, side, 3), dtype=np.uint8)

    class DS(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> torch.Tensor:
            return preprocess(Image.fromarray(pool[i % len(pool)]))

    loader = torch.utils.data.DataLoader(DS(), batch_size=batch, num_workers=workers)
    synchronize(device)
    t = time.perf_counter()
    with torch.no_grad():
        for x in loader:
            backbone.model.encode_image(x.to(device))
    synchronize(device)
    return n / (time.perf_counter() - t)


def model_only(model_name: str, pretrained: str, n: int, batch: int, device: torch.device, precision: str) -> float:
    """img/s of the encoder alone on a resident batch (half weights for bf16/fp16 on GPU)."""
    backbone = load_backbone(model_name, pretrained, device=device)
    dtype = resolve_precision(precision, device)
    visual = backbone.visual.to(dtype) if device.type == "cuda" else backbone.visual
    x = torch.randn(batch, 3, backbone.image_size, backbone.image_size, device=device, dtype=dtype if device.type == "cuda" else torch.float32)
    with torch.inference_mode(), autocast(device, dtype):
        image_features(visual, x)
        synchronize(device)
        t = time.perf_counter()
        for _ in range(max(1, n // batch)):
            image_features(visual, x)
        synchronize(device)
    return max(1, n // batch) * batch / (time.perf_counter() - t)


def featcache_run(cfg: ExtractConfig) -> tuple[float, float]:
    """(img/s, share of the time spent waiting for input) of ``featcache extract``."""
    result = run(cfg)
    return result.images_per_second, result.input_fraction


def input_only(root: str, model_name: str, pretrained: str, tte: bool, decoder: str, batch: int,
               workers: int, device: torch.device, limit: int | None) -> float:
    """img/s of extraction's input side alone (read, decode, resize, crop; no encoder): the
    ceiling the encoder can be fed at."""
    backbone = load_backbone(model_name, pretrained)
    manifest = build_manifest("isic2018", root)
    prep = Preprocessing.from_open_clip(backbone.preprocess, tte=tte)
    n = min(limit or len(manifest), len(manifest))
    batches = [list(range(i, min(i + batch, n))) for i in range(0, n, batch)]
    decode = jpeg_decoder(device)[1] if decoder == "device" else None
    synchronize(device)
    t = time.perf_counter()
    for _, std, crops, _ in image_batches(manifest, prep, batches, workers, device, decode):
        std.to(device, non_blocking=True)
        if crops is not None:
            crops.to(device, non_blocking=True)
    synchronize(device)
    return n / (time.perf_counter() - t)


def run_anchor(n: int, anchor: Path = ANCHOR) -> dict[str, float]:
    """../shared/anchors/gpu_anchor.py in a subprocess (GPU only): its lines as {name: img/s}."""
    proc = subprocess.run([sys.executable, str(anchor), str(n)], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        print(f"anchor failed: {proc.stderr[-2000:]}", flush=True)
        return {}
    figures = {}
    for line in proc.stdout.splitlines():
        name, _, value = line.partition(":")
        try:
            figures[name.strip()] = float(value.split()[0])
        except (ValueError, IndexError):
            continue
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-clip")
    ap.add_argument("--pretrained", default=None, help="default: random (weights do not change speed)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--images", type=int, default=4096, help="images per array / plain phase")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=None, help="decoding processes [default: featcache's]")
    ap.add_argument("--jpeg-root", default=None, help="HAM10000 folder for the real-JPEG phases")
    ap.add_argument("--jpeg-limit", type=int, default=None, help="input-only phases: use the first N JPEGs")
    ap.add_argument("--decoders", default="pil,device", help="JPEG decoders to compare (pil, device)")
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument("--anchor", action="store_true", help="also run ../shared/anchors/gpu_anchor.py (GPU)")
    ap.add_argument("--anchor-path", default=str(ANCHOR), help="gpu_anchor.py [%(default)s]")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    device = resolve_device(args.device)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    pretrained = args.pretrained or "random"
    workers = args.workers if args.workers is not None else default_workers()
    backbone = load_backbone(args.model, pretrained)
    size = backbone.image_size
    results: dict[str, dict] = {}
    gpu = device.type == "cuda"

    def phase(name: str, fn) -> None:  # noqa: ANN001
        with GpuSampler(gpu) as s:
            out = fn()
        ips, waiting = out if isinstance(out, tuple) else (out, None)
        results[name] = {"img_per_s": round(ips, 1), "gpu_util_mean": s.mean, "input_wait": waiting}
        util = f", GPU util {s.mean:3.0f}%" if s.mean is not None else ""
        wait = f", waiting for input {waiting:4.0%}" if waiting is not None else ""
        print(f"{name:38s} {ips:10,.0f} img/s{util}{wait}", flush=True)

    print(f"model {args.model} ({pretrained}), device {device}, precision {precision}, batch {args.batch_size}, "
          f"workers {workers}, CPUs {os.cpu_count()}")
    anchor = Path(args.anchor_path)
    if args.anchor and gpu and anchor.exists():
        results["anchor"] = run_anchor(args.images, anchor)
        print(f"anchor ({anchor}): {results['anchor']}", flush=True)
    elif args.anchor:
        print(f"anchor not run: {'no GPU' if not gpu else f'no {anchor}'}", flush=True)
    if not args.skip_plain:
        phase("plain DataLoader+PIL fp32", lambda: plain_loop(args.model, pretrained, args.images, args.batch_size, workers, device))
    phase(f"model-only {precision}", lambda: model_only(args.model, pretrained, args.images, args.batch_size, device, precision))
    common = dict(model=args.model, pretrained=pretrained, device=args.device, precision=precision,
                  batch_size=args.batch_size, workers=workers, compile=args.compile, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        # synthetic-lt at the model's size with ~args.images images: pre-decoded arrays
        per_class = max(1, args.images // 6)
        options = {"num_classes": 6, "imbalance": 1.0, "max_per_class": per_class, "size": size, "test_per_class": 0}
        for tte in (False, True):
            cfg = ExtractConfig(dataset="synthetic-lt", dataset_options=options, tte=tte, out=f"{tmp}/arr{tte}.h5", **common)
            phase(f"featcache arrays{' +TTE' if tte else ''}", lambda cfg=cfg: featcache_run(cfg))
        if args.jpeg_root:
            for decoder in args.decoders.split(","):
                for tte in (False, True):
                    label = f"JPEG {decoder}{' +TTE' if tte else ''}"
                    phase(f"input only, {label}", lambda tte=tte, decoder=decoder: input_only(
                        args.jpeg_root, args.model, pretrained, tte, decoder, args.batch_size, workers, device, args.jpeg_limit))
                    cfg = ExtractConfig(dataset="isic2018", root=args.jpeg_root, tte=tte, decoder=decoder,
                                        out=f"{tmp}/jpg{decoder}{tte}.h5", **common)
                    phase(f"featcache {label}", lambda cfg=cfg: featcache_run(cfg))
    if "plain DataLoader+PIL fp32" in results:
        base = results["plain DataLoader+PIL fp32"]["img_per_s"]
        for name, r in results.items():
            if name != "anchor":
                r["x_plain"] = round(r["img_per_s"] / base, 2)
    ceiling = results[f"model-only {precision}"]["img_per_s"]
    for name, r in results.items():
        if name != "anchor":
            r["frac_model_only"] = round(r["img_per_s"] / ceiling, 3)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": str(device), "results": results}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
