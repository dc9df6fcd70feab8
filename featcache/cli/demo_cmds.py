"""``featcache demo``: the main job end to end on the embedded default, offline.

Extracts the built-in long-tailed ``synthetic-lt`` image set with the built-in random-weight
``tiny-clip`` model (with the five TTE crops), then reproduces TFA-LT's frozen-feature tables
(zero-shot, linear probe, CE, focal, TFA-LT logit/feature, and the ablation) from the cache.
With random weights the accuracies say nothing about the method; the demo shows the whole
path and its outputs.
"""

from __future__ import annotations

from pathlib import Path

import click

from featcache.cli import main
from featcache.cli.common import GroupedCommand, console, knob_option, parse_seeds


@main.command("demo", cls=GroupedCommand, examples=(
    "featcache demo",
    "featcache demo --seeds 0 --epochs 20 --ensemble-epochs 10 --out runs/demo-quick",
))
@click.option("--out", default="runs/demo", show_default=True, help="Folder for the cache and the runs.")
@knob_option("seeds")
@knob_option("epochs", note="TFA-LT stage I and the single heads.")
@knob_option("ensemble_epochs")
@knob_option("device")
@click.option("--overwrite", is_flag=True, help="Replace the reproduction of an earlier demo in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo_cmd(out: str, seeds: str, epochs: int, ensemble_epochs: int, device: str, overwrite: bool,
             quiet: bool) -> None:
    """Extract synthetic-lt with tiny-clip, then reproduce TFA-LT's tables from the cache."""
    from featcache.pipelines.extract import ExtractConfig
    from featcache.pipelines.extract import run as extract
    from featcache.pipelines.reproduce import ReproduceConfig
    from featcache.pipelines.reproduce import run as reproduce
    from featcache.tables import print_runs

    root = Path(out)
    cache = root / "synthetic-lt-tiny-clip-tte.h5"
    click.echo(f"1/2 extract synthetic-lt with tiny-clip (+ five TTE crops) -> {cache}")
    result = extract(ExtractConfig(dataset="synthetic-lt", model="tiny-clip", tte=True, out=str(cache), device=device))
    if not result.already_complete:
        click.echo(f"    {result.num_encoded} images, {result.images_per_second:,.0f} img/s")
    click.echo("2/2 reproduce tfa-lt from the cache (Table 1 frozen-feature rows, Table 2 ablation)")
    from featcache.progress import quiet as no_bars

    with no_bars(quiet):
        run_dir, frame = reproduce(
            ReproduceConfig(
                cache=str(cache), seeds=parse_seeds(seeds), epochs=epochs,
                ensemble_epochs=ensemble_epochs, device=device, out=str(root / "reproduce-tfa-lt"),
            ),
            progress=None if quiet else (lambda name: click.echo(f"    … {name}", err=True)),
            overwrite=overwrite,
        )
    for table in ("Table 1", "Table 2"):
        print_runs(console(), frame.filter(frame["table"] == table), title=f"{table} (random-weight tiny-clip)")
    click.echo(f"Wrote cache {cache}")
    click.echo(f"Wrote {run_dir}/tables.md, results.parquet/.csv and one run directory per row under {run_dir}/rows")
