"""Benchmark commands: ``featcache bench medmnist`` (DESIGN.md §3).

Thin: the options become a :class:`featcache.pipelines.bench_medmnist.BenchConfig` and
:func:`featcache.pipelines.bench_medmnist.run` does the work; this module only parses comma lists and
prints where the outputs went.
"""

from __future__ import annotations

import click

from featcache.cli import main
from featcache.cli.common import GroupedCommand, knob_option, parse_list, plot_format_option


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
    "Output and device": ["--out", "--overwrite", "--plot-format", "--device", "--no-progress"],
}, examples=(
    "featcache bench medmnist --root data/medmnist --datasets dermamnist,bloodmnist "
    "--backbones ViT-B-16:openai,timm:resnet18",
    "featcache bench medmnist --root data/medmnist --datasets pneumoniamnist --sizes 28,224 --recipe fast",
    "featcache bench medmnist --root data/medmnist --datasets retinamnist --per-class 1,10,50 --methods linear,finetune",
))
@click.option("--root", type=click.Path(), required=True, help="Folder of the MedMNIST npz files (<subset>.npz, <subset>_<size>.npz).")
@click.option("--datasets", required=True, help="Comma list of 2D MedMNIST sets, e.g. retinamnist,pneumoniamnist.")
@knob_option("medmnist_backbones")
@knob_option("medmnist_sizes")
@knob_option("medmnist_resize")
@knob_option("medmnist_input_size")
@knob_option("medmnist_interpolation")
@knob_option("medmnist_seeds")
@knob_option("medmnist_per_class")
@knob_option("medmnist_per_class_draw")
@knob_option("medmnist_methods")
@knob_option("medmnist_recipe")
@knob_option("medmnist_iterations")
@knob_option("medmnist_lrs")
@knob_option("lr_decay")
@knob_option("decay_every")
@knob_option("medmnist_batch_size")
@knob_option("medmnist_val_checks")
@knob_option("medmnist_weight_decay")
@knob_option("medmnist_feature")
@knob_option("medmnist_binary_head")
@knob_option("medmnist_select_metric")
@knob_option("medmnist_encoder_lrs")
@knob_option("medmnist_finetune_head_lr")
@knob_option("medmnist_finetune_iterations")
@knob_option("medmnist_finetune_batch_size")
@knob_option("medmnist_out")
@plot_format_option
@click.option("--cache-dir", type=click.Path(), default=None, help="Where the feature caches go (reused when present) [default: caches/].")
@knob_option("device_choice")
@click.option("--download", is_flag=True, help="Fetch missing npz files with the medmnist package (needs network).")
@click.option("--no-progress", "--quiet", "no_progress", is_flag=True, help="No progress bar.")
@click.option("--overwrite", is_flag=True, help="Replace the benchmark already in --out (its files are deleted once the new one has finished).")
def medmnist_cmd(
    root: str, datasets: str, backbones: str, sizes: str, resize: str, input_size: str,
    interpolation: str, seeds: str, per_class: str, per_class_draw: str, methods: str, recipe: str,
    iterations: int | None, lrs: str | None, lr_decay: float, decay_every: int, batch_size: int | None,
    val_checks: int | None, weight_decay: float, feature: str, binary_head: str, select_metric: str,
    encoder_lrs: str, finetune_head_lr: float, finetune_iterations: int | None,
    finetune_batch_size: int | None, out: str, plot_format: str, cache_dir: str | None, device: str,
    download: bool, no_progress: bool, overwrite: bool,
) -> None:
    """Linear probes (and optional end-to-end fine-tuning) of many backbones on MedMNIST."""
    from featcache.pipelines.bench_medmnist import BenchConfig, run

    cfg = BenchConfig(
        datasets=parse_list("--datasets", datasets),
        root=root,
        backbones=parse_list("--backbones", backbones),
        sizes=parse_list("--sizes", sizes, int),
        resize=parse_list("--resize", resize),
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
        plot_format=plot_format,
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
