"""``featcache compare``: every frozen-feature method on one cache, same splits, one table.

Thin: builds a :class:`featcache.pipelines.compare.CompareConfig` from the options and calls
:func:`featcache.pipelines.compare.run`; prints the table and where it went.
"""

from __future__ import annotations

import click

from featcache.cli import main
from featcache.cli.common import GroupedCommand, console, knob_option, parse_list, parse_seeds
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
@knob_option("compare_heads")
@knob_option("seeds")
@knob_option("compare_shots")
@knob_option("protocol", note="Default as train-head: official if the cache has a test split, else the descriptor's.")
@knob_option("epochs", note="SGD-trained heads only; TFA-LT: stage I.")
@knob_option("batch_size", note="SGD-trained heads only.")
@knob_option("lr", note="SGD-trained heads only; TFA-LT: stage I.")
@knob_option("val_fraction", note="Those rows fit the temperature of --calibrate.")
@knob_option("validation_free")
@knob_option("calibrate", note="For every method.")
@knob_option("test_per_class")
@knob_option("text_source")
@knob_option("device")
@knob_option("precision")
@click.option("--out", default=None, help="Output folder (default runs/<cache>-compare).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier comparison in --out.")
def compare_cmd(heads: str, seeds: str, shots: str, overwrite: bool, **opts: object) -> None:
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
