"""Benchmark commands: ``featcache bench medmnist`` (DESIGN.md §3).

Thin: the options become a :class:`featcache.pipelines.bench_medmnist.BenchConfig` and
:func:`featcache.pipelines.bench_medmnist.run` does the work; this module only parses comma lists and
prints where the outputs went.
"""

from __future__ import annotations

import click

from featcache import knobs
from featcache.cli import main
from featcache.cli.common import GroupedCommand, parse_list
from featcache.device import DEVICES


@main.group("bench")
def bench() -> None:
    """Benchmarks that run many backbones and data sets from cached features."""


@bench.command("medmnist", cls=GroupedCommand, groups={
    "Data": ["--root", "--datasets", "--sizes", "--resize", "--input-size", "--interpolation", "--per-class",
             "--per-class-draw", "--download"],
    "Backbones and features": ["--backbones", "--feature", "--cache-dir"],
    "Recipe and optimisation": ["--methods", "--recipe", "--seeds", "--iterations", "--lrs", "--lr-decay",
                                "--decay-every", "--batch-size", "--val-checks", "--weight-decay", "--binary-head",
                                "--select-metric"],
    "Fine-tuning (--methods finetune)": ["--encoder-lrs", "--finetune-head-lr", "--finetune-iterations",
                                         "--finetune-batch-size"],
    "Output and device": ["--out", "--overwrite", "--device", "--no-progress"],
}, examples=(
    "featcache bench medmnist --root data/medmnist --datasets dermamnist,bloodmnist "
    "--backbones ViT-B-16:openai,timm:resnet18",
    "featcache bench medmnist --root data/medmnist --datasets pneumoniamnist --sizes 28,224 --recipe fast",
    "featcache bench medmnist --root data/medmnist --datasets retinamnist --per-class 1,10,50 --methods linear,finetune",
))
@click.option("--root", type=click.Path(), required=True, help="Folder of the MedMNIST npz files (<subset>.npz, <subset>_<size>.npz).")
@click.option("--datasets", required=True, help="Comma list of 2D MedMNIST sets, e.g. retinamnist,pneumoniamnist.")
@click.option("--backbones", default="tiny-clip", show_default=True, help="Comma list: MODEL[:WEIGHTS] (open_clip, e.g. ViT-B-16:openai) or timm:NAME[.TAG][:WEIGHTS] (e.g. timm:resnet18:random); WEIGHTS a tag, a FILE or 'random' (a local OpenAI checkpoint FILE needs the -quickgelu model: ViT-B-16-quickgelu:FILE).")
@click.option("--sizes", default="28", show_default=True, help="Comma list of MedMNIST image sizes (28,64,128,224).")
@click.option("--resize", "resize_modes", default="scale", show_default=True, help="Comma list of scale,pad,pad-norm: scale to the input size; zero-pad with black pixels before normalisation (featcache); or pad with the mean colour, zero after normalisation (MedMNIST+).")
@click.option("--input-size", default="paper", show_default=True, help="Encoder input size: paper (224 px, 518 for DINOv2, as FMMIC), model (the model's own config) or pixels.")
@click.option("--interpolation", default="bilinear", show_default=True, type=click.Choice(["bilinear", "bicubic", "model"]), help="Scaling kernel (FMMIC: bilinear; model: the model's own).")
@click.option("--seeds", default=knobs.seeds_text(knobs.MEDMNIST_SEEDS), show_default=True, help="Comma list of seeds.")
@click.option("--per-class", "per_class", default="", help="Comma list N1,N2,...: data-efficiency study with N training images per class.")
@click.option("--per-class-draw", default="random", show_default=True, type=click.Choice(["random", "first"]), help="random: a fresh seeded draw per seed; first: the first N rows of each class (FMMIC).")
@click.option("--methods", default="linear", show_default=True, help="Comma list of linear,finetune (finetune trains every encoder parameter, end to end).")
@click.option("--recipe", default="paper", show_default=True, type=click.Choice(["paper", "fast"]), help="paper: FMMIC's code (15,000 iterations, batch 64, head lr 1e-3 x0.9 every 200, best val ACC checkpoint); fast: 1,000 iterations, batch 128, head lr grid 1e-4,1e-3,1e-2 (not the paper's). Flags below override single values.")
@click.option("--iterations", type=int, default=None, help="Training iterations [default: the recipe's].")
@click.option("--lrs", default=None, help="Head learning-rate grid, selected on the official val split [default: the recipe's].")
@click.option("--lr-decay", type=float, default=knobs.MEDMNIST_LR_DECAY, show_default=True, help="Head lr factor applied every --decay-every iterations.")
@click.option("--decay-every", type=int, default=knobs.MEDMNIST_DECAY_EVERY, show_default=True, help="Iterations between --lr-decay steps.")
@click.option("--batch-size", type=int, default=None, help="Training images per step [default: the recipe's].")
@click.option("--val-checks", type=int, default=None, help="Validation ACC checks per run (FMMIC's rule); the best checkpoint is tested; 0 = the final weights [default: the recipe's, 10].")
@click.option("--weight-decay", type=float, default=knobs.MEDMNIST_WEIGHT_DECAY, show_default=True, help="AdamW weight decay.")
@click.option("--feature", type=click.Choice(["embed", "cls"]), default="cls", show_default=True, help="Cached feature to probe: cls = the pre-projection feature (768-d for ViT-B/16, where the paper's timm CLIP puts its head), embed = the projected embedding.")
@click.option("--binary-head", type=click.Choice(["softmax", "bce"]), default="softmax", show_default=True, help="Binary sets: two logits with softmax cross-entropy, or one logit with BCE (FMMIC).")
@click.option("--select-metric", type=click.Choice(["acc", "auc"]), default="acc", show_default=True, help="Validation figure that selects the learning rates.")
@click.option("--encoder-lrs", default="auto", show_default=True, help="Constant encoder lr(s) for --methods finetune: auto = 1e-6 for CNNs, 1e-7 for ViTs (FMMIC); a comma list runs the lr study as a grid selected on val.")
@click.option("--finetune-head-lr", type=float, default=knobs.MEDMNIST_FINETUNE_HEAD_LR, show_default=True, help="Head learning rate while fine-tuning (the encoder's: --encoder-lrs).")
@click.option("--finetune-iterations", type=int, default=None, help="Fine-tuning iterations [default: --iterations].")
@click.option("--finetune-batch-size", type=int, default=None, help="Fine-tuning images per step [default: --batch-size; 32 for DINOv2 under --recipe paper].")
@click.option("--out", type=click.Path(), default="runs/bench-medmnist", show_default=True, help="Run directory.")
@click.option("--cache-dir", type=click.Path(), default=None, help="Where the feature caches go (reused when present) [default: caches/].")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, help="auto = CUDA when present, else the CPU.")
@click.option("--download", is_flag=True, help="Fetch missing npz files with the medmnist package (needs network).")
@click.option("--no-progress", "--quiet", "no_progress", is_flag=True, help="No progress bar.")
@click.option("--overwrite", is_flag=True, help="Replace the benchmark already in --out (its files are deleted once the new one has finished).")
def medmnist_cmd(
    root: str, datasets: str, backbones: str, sizes: str, resize_modes: str, input_size: str,
    interpolation: str, seeds: str, per_class: str, per_class_draw: str, methods: str, recipe: str,
    iterations: int | None, lrs: str | None, lr_decay: float, decay_every: int, batch_size: int | None,
    val_checks: int | None, weight_decay: float, feature: str, binary_head: str, select_metric: str,
    encoder_lrs: str, finetune_head_lr: float, finetune_iterations: int | None,
    finetune_batch_size: int | None, out: str, cache_dir: str | None, device: str, download: bool,
    no_progress: bool, overwrite: bool,
) -> None:
    """Linear probes (and optional end-to-end fine-tuning) of many backbones on MedMNIST."""
    from featcache.pipelines.bench_medmnist import BenchConfig, run

    cfg = BenchConfig(
        datasets=parse_list("--datasets", datasets),
        root=root,
        backbones=parse_list("--backbones", backbones),
        sizes=parse_list("--sizes", sizes, int),
        resize=parse_list("--resize", resize_modes),
        input_size=input_size,
        interpolation=interpolation,
        seeds=parse_list("--seeds", seeds, int),
        per_class=parse_list("--per-class", per_class, int),
        per_class_draw=per_class_draw,
        methods=parse_list("--methods", methods),
        recipe=recipe,
        iterations=iterations,
        lrs=None if lrs is None else parse_list("--lrs", lrs, float),
        lr_decay=lr_decay,
        decay_every=decay_every,
        batch_size=batch_size,
        val_checks=val_checks,
        weight_decay=weight_decay,
        feature=feature,
        binary_head=binary_head,
        select_metric=select_metric,
        encoder_lrs=() if encoder_lrs.strip() == "auto" else parse_list("--encoder-lrs", encoder_lrs, float),
        finetune_head_lr=finetune_head_lr,
        finetune_iterations=finetune_iterations,
        finetune_batch_size=finetune_batch_size,
        out=out,
        cache_dir=cache_dir,
        device=device,
        download=download,
        progress=not no_progress,
    )
    click.echo(cfg.describe_recipe())
    result = run(cfg, overwrite=overwrite)
    click.echo(result.out.joinpath("table.md").read_text())
    click.echo(cfg.describe_recipe())
    click.echo(f"{len(result.caches)} caches in {cfg.resolved_cache_dir()}; finished in {result.seconds:.1f} s.")
    click.echo(f"Wrote {len(result.files)} files to {result.out}:")
    for path in result.files:
        click.echo(f"  {path}")
