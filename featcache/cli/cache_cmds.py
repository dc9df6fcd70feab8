"""Commands around the cache: ``datasets``, ``models``, ``extract``, ``import-features``, ``info``."""

from __future__ import annotations

import json

import click

from featcache.cli import main
from featcache.cli.common import GroupedCommand, console, knob_option, parse_pairs


@main.command("models", cls=GroupedCommand, examples=(
    "featcache models",
    "featcache models --filter ViT-B",
))
@click.option("--filter", "pattern", default="", help="Only models whose name contains this text.")
def models_cmd(pattern: str) -> None:
    """List the open_clip models (and featcache's tiny ones) with their pretrained tags."""
    from rich.table import Table

    from featcache.models import list_models

    table = Table("model", "pretrained tags")
    for row in list_models():
        if pattern.lower() in row["model"].lower():
            table.add_row(row["model"], row["pretrained"])
    console().print(table)


@main.command("datasets", cls=GroupedCommand, examples=("featcache datasets",))
def datasets_cmd() -> None:
    """List the data sets featcache reads, with their layout and options."""
    from rich.table import Table

    from featcache.datasets.catalog import describe_datasets

    table = Table("data set", "layout", "options")
    for row in describe_datasets():
        table.add_row(row["name"], row["layout"], row.get("options", ""))
    console().print(table)


@main.command("extract", cls=GroupedCommand, groups={
    "Data": ["--dataset", "--root", "--subset", "--size", "--csv", "--option", "--skip-bad"],
    "Model and preprocessing": ["--model", "--pretrained", "--resize", "--tte"],
    "Output": ["--out", "--overwrite"],
    "Speed and device": ["--device", "--precision", "--decoder", "--batch-size", "--workers", "--chunk-size",
                         "--compile"],
}, examples=(
    "featcache extract --dataset isic2018 --root data/ISIC2018 --model ViT-B-16 --pretrained openai --tte",
    "featcache extract --dataset medmnist --root data/medmnist --subset pneumoniamnist --size 224 "
    "--model ViT-B-16 --pretrained openai",
    "torchrun --nproc_per_node=8 -m featcache extract --dataset imagenet-lt --root data/ImageNet "
    "--model ViT-L-14 --pretrained openai",
))
@click.option("--dataset", required=True, help="Data set name (see `featcache datasets`).")
@click.option("--root", type=click.Path(), default=None, help="Folder holding the data set.")
@click.option("--subset", default=None, help="MedMNIST subset, e.g. pneumoniamnist.")
@click.option("--size", "image_size", type=int, default=None, help="MedMNIST image size (28/64/128/224).")
@click.option("--csv", "csv_path", type=click.Path(), default=None, help="CSV file for --dataset csv.")
@click.option("--option", "options", multiple=True, help="Other data set option KEY=VALUE (repeatable).")
@knob_option("model")
@knob_option("pretrained")
@knob_option("extract_tte")
@knob_option("resize")
@click.option("--out", type=click.Path(), default=None, help="Cache file [default: caches/<dataset>-<model>-<weights>.h5].")
@knob_option("device_choice")
@knob_option("encoder_precision")
@knob_option("decoder")
@knob_option("extract_batch_size")
@knob_option("workers")
@knob_option("chunk_size")
@click.option("--skip-bad", is_flag=True, help="Record unreadable images in the cache and go on.")
@click.option("--overwrite", is_flag=True, help="Replace a cache made with other arguments.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the image encoder.")
def extract_cmd(dataset, root, subset, image_size, csv_path, options, model, pretrained, tte, resize, out, device, precision, decoder, batch_size, workers, chunk_size, skip_bad, overwrite, compile_) -> None:  # noqa: ANN001
    """Run a frozen open_clip image encoder over a data set once and write the HDF5 cache.

    Resumable: if interrupted, run the same command again. Works under
    `torchrun --nproc_per_node=N -m featcache extract ...` (one shard of the data per rank).
    """
    from featcache.distributed import dist_info
    from featcache.pipelines.extract import ExtractConfig, run

    opts = parse_pairs(options, "--option")
    for key, value in (("subset", subset), ("size", image_size), ("csv", csv_path)):
        if value is not None:
            opts[key] = value
    cfg = ExtractConfig(
        dataset=dataset, root=root, dataset_options=opts, model=model, pretrained=pretrained,
        tte=tte, resize=resize, out=out, device=device, precision=precision, decoder=decoder, batch_size=batch_size,
        workers=workers, chunk_size=chunk_size, skip_bad=skip_bad, overwrite=overwrite, compile=compile_,
    )
    if model == "tiny-clip" and dataset != "synthetic-lt":
        click.secho(
            "Note: extracting with the built-in random-weight tiny-clip model (the default): the "
            "features test the pipeline, not a method. Pass --model ViT-B-16 --pretrained openai "
            "(or --pretrained /path/to/checkpoint) for real features.",
            fg="yellow", err=True,
        )
    result = run(cfg)
    if dist_info()[0] != 0:
        return
    if result.already_complete:
        click.echo(f"Cache {result.out} is already complete (same arguments); nothing to do.")
        return
    resumed = f", resumed after {result.resumed_chunks} finished chunk(s)" if result.resumed_chunks else ""
    click.echo(
        f"Encoded {result.num_encoded} of {result.num_images} images in {result.seconds:.1f} s "
        f"({result.images_per_second:,.0f} img/s{resumed}; {result.input_fraction:.0%} of it waiting "
        "for input)."
    )
    if result.num_encoded and result.input_fraction > 0.5:
        click.echo(
            "Extraction was input-bound: more --workers (if CPUs are idle) or --decoder device "
            "(JPEGs on a GPU) may help.", err=True,
        )
    if result.skipped:
        click.echo(f"Skipped {len(result.skipped)} unreadable image(s) (listed by `featcache info`).", err=True)
    click.echo(f"Wrote cache {result.out}")


@main.command("import-features", cls=GroupedCommand, examples=(
    "featcache import-features feats.npz --dataset isic2018 --out caches/isic2018-mine.h5",
    "featcache import-features feats.parquet",
))
@click.argument("source", type=click.Path())
@click.option("--dataset", default=None, help="Attach this data set's descriptor (classes, protocol).")
@click.option("--out", type=click.Path(), default=None, help="Cache file [default: SOURCE with .h5].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out cache.")
def import_cmd(source: str, dataset: str | None, out: str | None, overwrite: bool) -> None:
    """Build a cache from features computed elsewhere (.npz or .parquet).

    SOURCE: the .npz or .parquet file of features (with labels and splits) to import.
    """
    from featcache.pipelines.import_features import ImportConfig, run

    path = run(ImportConfig(source=source, out=out, dataset=dataset, overwrite=overwrite))
    click.echo(f"Wrote cache {path}")


@main.command("info", cls=GroupedCommand, examples=(
    "featcache info caches/isic2018-ViT-B-16-openai.h5",
    "featcache info caches/isic2018-ViT-B-16-openai.h5 --json",
))
@click.argument("cache", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info_cmd(cache: str, as_json: bool) -> None:
    """Show what a cache holds: model, weights, preprocessing, views, counts, fingerprint.

    CACHE: a feature cache (.h5) written by `extract` or `import-features`.
    """
    import numpy as np

    from featcache.cache import open_cache

    c = open_cache(cache)
    splits = sorted(set(c.splits.tolist()))
    labels = c.labels if c.labels.ndim == 1 else None
    counts = {}
    for split in splits:
        sel = c.splits == split
        per = np.bincount(labels[sel], minlength=c.num_classes) if labels is not None else c.labels[sel].sum(0)
        counts[split or "(none)"] = [int(x) for x in per]
    info = {
        "path": str(c.path),
        "complete": True,
        "dataset": c.descriptor.name,
        "model": c.meta.get("model"),
        "weights": c.meta.get("weights_id"),
        "preprocessing": c.meta.get("preprocessing"),
        "precision": c.meta.get("precision"),
        "views": c.views,
        "images": len(c),
        "embed_dim": c.embed_dim,
        "cls_dim": c.cls_dim,
        "templates": c.templates,
        "logit_scale": c.logit_scale,
        "fingerprint": c.fingerprint,
        "model_fingerprint": c.model_fingerprint,
        "manifest_sha256": c.meta.get("manifest_sha256"),
        "versions": c.meta.get("versions"),
        "counts": counts,
        "split_totals": {s: int((c.splits == (s if s != "(none)" else "")).sum()) for s in counts},
        "skipped": c.skipped,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    con = console()
    # soft_wrap: a long line (a fingerprint, a path) stays one line at any width, never folded
    con.print(f"{c.path} — complete", style="bold", soft_wrap=True)
    for key in ("dataset", "model", "weights", "precision", "views", "images", "embed_dim", "cls_dim", "logit_scale", "fingerprint", "manifest_sha256"):
        con.print(f"  {key:16s} {info[key]}", soft_wrap=True)
    con.print(f"  {'preprocessing':16s} {json.dumps(info['preprocessing'])}", soft_wrap=True)
    con.print(f"  {'templates':16s} {len(c.templates)}: {c.templates[:2]}{' …' if len(c.templates) > 2 else ''}", soft_wrap=True)
    totals = info["split_totals"]
    con.print(f"  {'splits':16s} " + ", ".join(f"{s} {n:,}" for s, n in totals.items())
              + f" (total {len(c):,})", soft_wrap=True)
    from featcache.tables import plain_table, print_fitting

    heads = ["class", *counts.keys(), "total"]
    rows = []
    for j, name in enumerate(c.descriptor.class_ids):
        row = [counts[s][j] for s in counts]
        rows.append([name, *map(str, row), str(sum(row))])
    rows.append(["total" if labels is not None else "total (labels)",
                 *(str(sum(counts[s])) for s in counts), str(sum(sum(v) for v in counts.values()))])
    right = [i > 0 for i in range(len(heads))]
    print_fitting(con, [plain_table(heads, rows, right=right),
                        plain_table(heads, rows, right=right, compact=True)])
    if c.skipped:
        con.print(f"{len(c.skipped)} skipped image(s):", style="yellow")
        for s in c.skipped:
            con.print(f"  {s['id']}  {s['source']}: {s['reason']}")
    else:
        con.print("  no skipped images")
