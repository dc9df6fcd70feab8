#!/usr/bin/env python3
"""LIFT training-step throughput and peak memory: featcache's step, as the public LIFT code was measured.

For each method (default ``adaptformer``, ``classifier``, ``full``) this builds the model the
way ``featcache finetune`` does (:func:`featcache.pipelines.finetune.build_model`: method injected, cosine
head, frozen weights stored in the compute dtype on a GPU) and times
:func:`featcache.finetuning.train_step` — forward under autocast, logit-adjusted loss, backward,
SGD with momentum — on one resident synthetic batch: no data loading and no augmentation,
like the DESIGN.md §6 anchor of the public LIFT code (ViT-B/16, batch 128, one H100, fp32
weights + fp16 autocast + GradScaler): AdaptFormer 1,223 img/s at 11.9 GiB peak, classifier
only 2,990 img/s at 1.8 GiB, full fine-tuning 1,190 img/s at 15.3 GiB. The goal (§6) is
≥ 3,000 img/s for AdaptFormer at no more than half the anchor's memory.

Examples::

    python benchmarks/bench_finetune.py --model tiny-clip --device cpu --batch-size 32 --steps 5
    python benchmarks/bench_finetune.py --model ViT-B-16 --pretrained random --device cuda \
        --precision bf16 --batch-size 128 --json bench_finetune.json

Peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps (model, optimiser
state, activations); on the CPU it is not measured (reported as null).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from featcache.device import resolve_device, resolve_precision, synchronize
from featcache.finetuning import train_step
from featcache.models import load_backbone
from featcache.peft import count_parameters, make_config
from featcache.pipelines.finetune import FinetuneConfig, build_model, make_loss

# DESIGN.md §6: the public LIFT code on one H100 (img/s, peak GiB)
PUBLIC_LIFT_H100 = {"adaptformer": (1223.0, 11.9), "classifier": (2990.0, 1.8), "full": (1190.0, 15.3)}


def bench_method(method: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """Images/s and peak memory of ``train_step`` for one method on a resident synthetic batch."""
    torch.manual_seed(0)
    backbone = load_backbone(args.model, args.pretrained, device=device)
    classes = [f"class {c}" for c in range(args.num_classes)]
    model, resolved = build_model(backbone, make_config(method), classes, init="random", device=device,
                                  frozen_dtype=dtype if device.type == "cuda" else None)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    cfg = FinetuneConfig(dataset="synthetic-lt", method=method, batch_size=args.batch_size)
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    counts = np.maximum(1, (1000 * np.exp(-np.arange(args.num_classes) / 20))).astype(np.int64)
    loss_fn = make_loss(cfg, counts, device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    size = backbone.image_size
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(args.batch_size, 3, size, size, device=device, generator=gen)  # normalised batch
    labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device, generator=gen)
    for _ in range(args.warmup):
        train_step(model, optimizer, loss_fn, images, labels, device, dtype, scaler)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = train_step(model, optimizer, loss_fn, images, labels, device, dtype, scaler)
    synchronize(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    trainable, total = count_parameters(model)
    row = {
        "method": method,
        "resolved": {"name": resolved.name, **{k: v for k, v in vars(resolved).items()}},
        "images_per_second": args.batch_size * args.steps / seconds,
        "step_ms": 1000 * seconds / args.steps,
        "peak_gib": peak,
        "trainable_params": trainable,
        "total_params": total,
        "final_loss": float(loss),
    }
    anchor = PUBLIC_LIFT_H100.get(method)
    if anchor and args.model == "ViT-B-16" and device.type == "cuda" and args.batch_size == 128:
        row["public_lift_h100"] = {"images_per_second": anchor[0], "peak_gib": anchor[1]}
        row["speedup_vs_public"] = row["images_per_second"] / anchor[0]
        row["memory_ratio_vs_public"] = peak / anchor[1] if peak is not None else None
    del model, optimizer, backbone
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    """Parse arguments, benchmark every method, print a table and optionally write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--pretrained", default="random", help="random weights suffice for speed")
    ap.add_argument("--methods", default="adaptformer,classifier,full")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--num-classes", type=int, default=1000, help="1000 = ImageNet-LT (bottleneck 32)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="auto = bf16 on GPU, fp32 on CPU")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    device = resolve_device(args.device)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    dtype = resolve_precision(precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = [bench_method(m.strip(), args, device, dtype) for m in args.methods.split(",") if m.strip()]
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"LIFT training step: {args.model} ({args.pretrained}), batch {args.batch_size}, {precision}, "
          f"{args.num_classes} classes, {args.steps} timed steps on {machine}")
    print(f"{'method':12s} {'img/s':>10s} {'ms/step':>9s} {'peak GiB':>9s} {'trainable':>12s}  vs public LIFT (H100)")
    for r in rows:
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        versus = (f"{r['speedup_vs_public']:.2f}x speed, {r['memory_ratio_vs_public']:.2f}x memory"
                  if "speedup_vs_public" in r else "n/a (not ViT-B-16 / batch 128 / CUDA)")
        speed = r["images_per_second"]
        speed_text = f"{speed:,.0f}" if speed >= 100 else f"{speed:.2f}"
        print(f"{r['method']:12s} {speed_text:>10s} {r['step_ms']:9.1f} {peak:>9s} "
              f"{r['trainable_params']:12,d}  {versus}")
    if args.json:
        doc = {"model": args.model, "pretrained": args.pretrained, "batch_size": args.batch_size,
               "precision": precision, "num_classes": args.num_classes, "steps": args.steps,
               "machine": machine, "torch": torch.__version__, "results": rows}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"Wrote {args.json}")


if __name__ == "__main__":
    main()
