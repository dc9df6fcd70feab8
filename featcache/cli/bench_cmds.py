"""Benchmark commands: ``featcache bench medmnist`` (DESIGN.md §3).

Thin: the options become a :class:`pipelines.bench_medmnist.BenchConfig` and
:func:`pipelines.bench_medmnist.run` does the work; this module only parses comma lists and
prints where the outputs went.
"""

from __future__ import annotations

import click

from featcache.cli import main
from featcache.cli.common import parse_list
from featcache.device import DEVICES


@main.group("bench")
def bench() -> None:
    """Benchmarks that run many backbones and data sets from cached features."""


@bench.command("medmnist")
@click.option("--root", type=click.Path(), required=True, help="Folder of the MedMNIST npz files (<subset>.npz, <subset>_<size>.npz).")
@click.option("--datasets", required=True, help="Comma list of 2D MedMNIST sets, e.g. retinamnist,pneumoniamnist.")
@click.option("--backbones", default="tiny-clip", show_default=True, help="Comma list: MODEL[:WEIGHTS] (open_clip, e.g. ViT-B-16:openai) or timm:NAME[.TAG][:WEIGHTS] (e.g. timm:resnet18:random); WEIGHTS a tag, a FILE or 'random' (a local OpenAI checkpoint FILE needs the -quickgelu model: ViT-B-16-quickgelu:FILE).")
@click.option("--sizes", default="28", show_default=True, help="Comma list of image sizes (28,64,128,224).")
@click.option("--resize", "resize_modes", default="scale", show_default=True, help="Comma list of scale,pad: scale to the model's input, or zero-pad (black) in pixel space.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma list of seeds.")
@click.option("--per-class", "per_class", default="", help="Comma list N1,N2,...: data-efficiency study with N training images per class (fresh draw per seed).")
@click.option("--methods", default="linear", show_default=True, help="Comma list of linear,finetune (finetune trains the encoder end to end).")
@click.option("--iterations", type=int, default=1000, show_default=True, help="Training iterations of each linear probe.")
@click.option("--lrs", default="1e-4,1e-3,1e-2", show_default=True, help="Head learning-rate grid, selected on the official val split.")
@click.option("--lr-decay", type=float, default=0.9, show_default=True, help="Head lr factor applied every --decay-every iterations.")
@click.option("--decay-every", type=int, default=200, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--weight-decay", type=float, default=0.01, show_default=True, help="AdamW weight decay.")
@click.option("--feature", type=click.Choice(["embed", "cls"]), default="embed", show_default=True, help="Cached feature to probe: the encoder's output (embed) or the pre-projection CLS feature.")
@click.option("--select-metric", type=click.Choice(["acc", "auc"]), default="acc", show_default=True, help="Validation figure that selects the learning rate.")
@click.option("--encoder-lr", type=float, default=1e-5, show_default=True, help="Constant encoder lr for --methods finetune.")
@click.option("--finetune-head-lr", type=float, default=1e-3, show_default=True)
@click.option("--finetune-iterations", type=int, default=None, help="Fine-tuning iterations [default: --iterations].")
@click.option("--out", type=click.Path(), default="runs/bench-medmnist", show_default=True, help="Run directory.")
@click.option("--cache-dir", type=click.Path(), default=None, help="Where the feature caches go (reused when present) [default: caches/].")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--download", is_flag=True, help="Fetch missing npz files with the medmnist package (needs network).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def medmnist_cmd(
    root: str, datasets: str, backbones: str, sizes: str, resize_modes: str, seeds: str,
    per_class: str, methods: str, iterations: int, lrs: str, lr_decay: float, decay_every: int,
    batch_size: int, weight_decay: float, feature: str, select_metric: str, encoder_lr: float,
    finetune_head_lr: float, finetune_iterations: int | None, out: str, cache_dir: str | None,
    device: str, download: bool, no_progress: bool,
) -> None:
    """Linear probes (and optional end-to-end fine-tuning) of many backbones on MedMNIST."""
    from pipelines.bench_medmnist import BenchConfig, run

    cfg = BenchConfig(
        datasets=parse_list("--datasets", datasets),
        root=root,
        backbones=parse_list("--backbones", backbones),
        sizes=parse_list("--sizes", sizes, int),
        resize=parse_list("--resize", resize_modes),
        seeds=parse_list("--seeds", seeds, int),
        per_class=parse_list("--per-class", per_class, int),
        methods=parse_list("--methods", methods),
        iterations=iterations,
        lrs=parse_list("--lrs", lrs, float),
        lr_decay=lr_decay,
        decay_every=decay_every,
        batch_size=batch_size,
        weight_decay=weight_decay,
        feature=feature,
        select_metric=select_metric,
        encoder_lr=encoder_lr,
        finetune_head_lr=finetune_head_lr,
        finetune_iterations=finetune_iterations,
        out=out,
        cache_dir=cache_dir,
        device=device,
        download=download,
        progress=not no_progress,
    )
    result = run(cfg)
    click.echo(result.out.joinpath("table.md").read_text())
    click.echo(f"{len(result.caches)} caches in {cfg.resolved_cache_dir()}; finished in {result.seconds:.1f} s.")
    click.echo(f"Wrote {len(result.files)} files to {result.out}:")
    for path in result.files:
        click.echo(f"  {path}")
