"""``featcache compare``: every frozen-feature method on one cache, same splits, one table.

Thin: builds a :class:`featcache.pipelines.compare.CompareConfig` from the options and calls
:func:`featcache.pipelines.compare.run`; prints the table and where it went.
"""

from __future__ import annotations

import click

from featcache import knobs
from featcache.cli import main
from featcache.cli.choices import NameChoice
from featcache.cli.common import GroupedCommand, console, parse_list, parse_seeds
from featcache.device import DEVICES, PRECISIONS
from featcache.errors import FeatcacheError


def _parse_shots(text: str | None) -> tuple[int | None, ...]:
    """``"1,4,full"`` -> ``(1, 4, None)`` (None: every training row)."""
    if not text:
        return (None,)
    out = []
    for t in parse_list("--shots", text, str):
        if t.lower() in ("full", "all"):
            out.append(None)
            continue
        try:
            out.append(int(t))
        except ValueError:
            raise FeatcacheError(f"--shots expects integers or 'full' (e.g. 1,2,4,8,16,full), got "
                                 f"'{t}'.") from None
    return tuple(out)


@main.command("compare", cls=GroupedCommand, groups={
    "Data and splits": ["--cache", "--protocol", "--test-per-class", "--shots", "--val-fraction", "--validation-free",
                        "--seeds", "--text-source"],
    "Methods and optimisation": ["--heads", "--epochs", "--batch-size", "--lr", "--precision"],
    "Evaluation": ["--calibrate"],
    "Output and device": ["--out", "--overwrite", "--device"],
}, examples=(
    "featcache compare --cache caches/isic2018.h5",
    "featcache compare --cache caches/isic2018.h5 --seeds 0,1,2 --shots 1,2,4,8,16 --validation-free",
    "featcache compare --cache caches/isic2018.h5 --heads linear,cosine,tfa-lt --val-fraction 0.2 "
    "--calibrate temperature",
))
@click.option("--cache", required=True, help="Feature cache (.h5).")
@click.option("--heads", default=",".join(knobs.COMPARE_HEADS),
              show_default=True, help="Comma-separated methods: registered heads and tfa-lt.")
@click.option("--seeds", default=knobs.seeds_text(knobs.SEEDS), show_default=True, help="Comma-separated seeds; mean ± std.")
@click.option("--shots", default=None,
              help="Comma-separated K-shot values (K training images per class), 'full' for all "
                   "rows, e.g. 1,2,4,8,16,full (default: full).")
@click.option("--protocol", default=None, type=NameChoice("protocol"), help="Train/test split (default as train-head: official if the cache has a test split, else the descriptor's).")
@click.option("--epochs", type=int, default=knobs.EPOCHS, show_default=True, help="Epochs of the trained heads (TFA-LT: stage I).")
@click.option("--batch-size", type=int, default=knobs.BATCH_SIZE, show_default=True, help="Training rows per SGD step (trained heads).")
@click.option("--lr", type=float, default=knobs.LR, show_default=True, help="Learning rate of the SGD-trained heads (TFA-LT: stage I).")
@click.option("--val-fraction", type=float, default=knobs.VAL_FRACTION, show_default=True,
              help="Training fraction held out for validation (temperature scaling).")
@click.option("--validation-free", is_flag=True,
              help="Realistic setting: no validation rows; logreg uses C = 1 (see README).")
@click.option("--calibrate", type=click.Choice(["none", "temperature"]), default=knobs.CALIBRATE, show_default=True,
              help="Temperature scaling on the validation split for every method.")
@click.option("--test-per-class", type=int, default=None, help="tfa-lt test images per class.")
@click.option("--text-source", type=click.Choice(["auto", "prompts", "class-mean"]), default=knobs.TEXT_SOURCE,
              show_default=True, help="Class prototypes of the text heads: prompts = the cache's text embeddings of the class prompts, class-mean = each class's mean training feature, auto = prompts when the cache has text features, else class-mean.")
@click.option("--device", default=knobs.DEVICE, show_default=True, help=", ".join(DEVICES) + " or cuda:N (auto: CUDA when present).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=knobs.PRECISION, show_default=True, help="Training precision of the heads' weight products (bf16, or fp16 on a GPU: mixed precision; evaluation is fp32).")
@click.option("--out", default=None, help="Output folder (default runs/<cache>-compare).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier comparison in --out.")
def compare_cmd(heads: str, seeds: str, shots: str | None, overwrite: bool, **opts: object) -> None:
    """Train every method on the same split(s) and write one table (markdown, parquet, CSV)
    with accuracy, balanced accuracy, many/medium/few, ECE and each method's time.
    """
    from featcache.pipelines import compare

    cfg = compare.CompareConfig(heads=parse_list("--heads", heads), seeds=parse_seeds(seeds),
                                shots=_parse_shots(shots), **opts)
    result = compare.run(cfg, progress=lambda msg: click.echo(msg, err=True), overwrite=overwrite)
    from featcache.tables import plain_table, print_fitting

    title = (f"compare: {len(cfg.heads)} method(s) × {len(cfg.shots)} shot setting(s), "
             f"{len(cfg.seeds)} seed(s), %")
    layouts = []  # widest first: mean ± std boxed, means boxed, means compact (never cut)
    for std, compact in ((True, False), (False, False), (False, True)):
        header, cells = compare.table_rows(result.table, std=std)
        right = [2 < i < len(header) - 1 for i in range(len(header))]
        layouts.append(plain_table(header, cells, right=right, compact=compact,
                                   title=title + ("; mean ± std" if std else "; means (± std in compare.md)")))
    print_fitting(console(), layouts)
    click.echo(f"Wrote {', '.join(str(f) for f in result.files)} and one run directory per row "
               f"under {result.out_dir / 'runs'} in {result.seconds:.1f} s.")
