"""Commands on cached features: ``train-head``, ``predict``, ``reproduce tfa-lt``, ``report``.

Thin: each builds a frozen config from its options and calls one pipeline function. Long
option names are the knob names of the configs (``--weight-decay`` is ``weight_decay``), the
names ``featcache grid --param NAME=...`` uses.
"""

from __future__ import annotations

from pathlib import Path

import click

from featcache.cli import main
from featcache.cli.common import (
    GroupedCommand,
    console,
    knob_option,
    parse_seeds,
    plot_format_option,
)
from featcache.errors import FeatcacheError


def parse_head_options(items: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``("hidden=256", ...)`` -> ``(("hidden", "256"), ...)`` (typed later, by the head)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name or not value.strip():
            raise FeatcacheError(f"--head-option expects NAME=VALUE (e.g. hidden=256), got '{item}'.")
        if name in out:
            raise FeatcacheError(f"--head-option {name} is given twice.")
        out[name] = value.strip()
    return tuple(out.items())


def _show(out_dir: Path, metrics: dict, title: str) -> None:
    from featcache.runs import read_run, runs_frame
    from featcache.tables import print_runs

    print_runs(console(), runs_frame([read_run(out_dir)]), title=title)
    click.echo(f"Wrote run directory {out_dir} (config.json, metrics.json, metrics.parquet, "
               "predictions.parquet, splits.parquet, per_class.csv, checkpoints/, figures).")


TRAIN_HEAD_GROUPS = {
    "Data and splits": ["--cache", "--view", "--feature", "--protocol", "--test-per-class", "--shots",
                        "--val-fraction", "--validation-free", "--seeds"],
    "Head": ["--head", "--head-option", "--sigma", "--tau", "--init", "--text-source", "--template"],
    "Long tail: loss and sampling": ["--loss", "--gamma", "--la-tau", "--cb-beta", "--sampler"],
    "TFA-LT (--ensemble)": ["--ensemble", "--no-adapters", "--ensemble-loss", "--ensemble-epochs",
                            "--ensemble-lr", "--rus"],
    "Optimisation": ["--optimizer", "--epochs", "--batch-size", "--lr", "--weight-decay", "--momentum",
                     "--schedule", "--lr-decay", "--decay-every", "--precision"],
    "Evaluation": ["--tte", "--posthoc-tau", "--calibrate", "--bootstrap", "--bootstrap-seed"],
    "Output and device": ["--out", "--overwrite", "--method", "--plot-format", "--quiet", "--device"],
}
TRAIN_HEAD_EXAMPLES = (
    "featcache train-head --cache caches/isic2018.h5 --ensemble logit",
    "featcache train-head --cache caches/isic2018.h5 --head cosine --loss la --init text",
    "featcache train-head --cache caches/isic2018.h5 --head mlp --head-option hidden=256 --sampler wrs --tte",
)


@main.command("train-head", cls=GroupedCommand, groups=TRAIN_HEAD_GROUPS, examples=TRAIN_HEAD_EXAMPLES)
@click.option("--cache", required=True, help="Feature cache (.h5) to train from.")
@knob_option("head", unset=True)
@knob_option("ensemble", unset=True)
@click.option("--no-adapters", is_flag=True, help="TFA-LT ablation: ensembler on frozen features.")
@knob_option("loss", note="TFA-LT: stage I's loss.")
@knob_option("ensemble_loss")
@knob_option("rus")
@knob_option("sampler")
@knob_option("protocol", note="Default: official if the cache has a test split, else the descriptor's.")
@knob_option("seeds")
@knob_option("epochs", note="TFA-LT: stage I.")
@knob_option("ensemble_epochs")
@knob_option("batch_size")
@knob_option("lr", note="TFA-LT: stage I.")
@knob_option("ensemble_lr")
@knob_option("weight_decay")
@knob_option("momentum")
@knob_option("schedule")
@knob_option("lr_decay")
@knob_option("decay_every")
@knob_option("optimizer")
@knob_option("tau")
@knob_option("sigma")
@knob_option("gamma")
@knob_option("la_tau")
@knob_option("cb_beta")
@knob_option("init")
@click.option("--head-option", "head_option", multiple=True, metavar="NAME=VALUE",
              help="A knob the head declares itself (e.g. mlp hidden=256, knn k=20, tip-adapter "
                   "alpha=1); repeatable. See README 'Few-shot heads'.")
@knob_option("text_source")
@knob_option("template")
@knob_option("view")
@knob_option("feature")
@knob_option("tte")
@knob_option("posthoc_tau")
@knob_option("val_fraction")
@knob_option("test_per_class")
@knob_option("shots")
@knob_option("validation_free")
@knob_option("calibrate")
@knob_option("device")
@knob_option("precision")
@click.option("--out", default=None, help="Run directory (default runs/<cache>-<head>[-<loss>-<sampler>-tte...]: "
              "the settings that differ from the defaults); one holding a run is refused.")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out (its files are deleted once training succeeds).")
@knob_option("method_label")
@knob_option("bootstrap")
@knob_option("bootstrap_seed")
@plot_format_option
@click.option("--quiet", is_flag=True, help="No progress bars (epochs, loss, ETA on stderr).")
def train_head_cmd(**opts: object) -> None:
    """Train a head (or the TFA-LT method with --ensemble) on cached features."""
    from featcache.progress import quiet

    with quiet(opts.pop("quiet")):
        _train_head(opts)


def _train_head(opts: dict) -> None:
    opts["seeds"] = parse_seeds(opts["seeds"])
    ensemble, no_adapters = opts.pop("ensemble"), opts.pop("no_adapters")
    overwrite = opts.pop("overwrite")
    head_options = parse_head_options(opts.pop("head_option"))
    if head_options and ensemble is not None:
        raise FeatcacheError("--head-option sets a knob of --head; TFA-LT (--ensemble) has none.")
    if ensemble is None:
        opts["head_options"] = head_options
    if ensemble is None:
        from featcache.pipelines import train_head

        if no_adapters:
            raise FeatcacheError("--no-adapters is a TFA-LT option; add --ensemble logit|feature.")
        for key in ("ensemble_epochs", "ensemble_lr", "ensemble_loss", "rus"):
            opts.pop(key)
        if opts["head"] is None:
            opts.pop("head")  # TrainHeadConfig's default head
        cfg = train_head.TrainHeadConfig(**opts)
        result = train_head.run(cfg, overwrite=overwrite)
        title = f"{cfg.head} / {cfg.loss} / {cfg.sampler}"
    else:
        from featcache.pipelines import tfa_lt

        if opts["head"] not in (None, "adapter"):
            raise FeatcacheError("--ensemble runs TFA-LT, whose heads are adapters; drop --head.")
        for key in ("head", "sampler", "sigma", "init"):
            opts.pop(key)
        cfg = tfa_lt.TfaLtConfig(ensemble=ensemble, adapters=not no_adapters, **opts)
        result = tfa_lt.run(cfg, overwrite=overwrite)
        title = result.metrics.get("method", "TFA-LT")
    _show(result.out_dir, result.metrics, title)


@main.command("predict", cls=GroupedCommand, groups={
    "Input": ["--run", "--cache", "--images", "--split", "--pretrained", "--skip-bad"],
    "Output": ["--out", "--overwrite", "--per-seed"],
    "Speed and device": ["--batch-size", "--workers", "--device"],
}, examples=(
    "featcache predict --run runs/isic-tfa --cache caches/isic.h5",
    "featcache predict --run runs/isic-tfa --cache caches/other-site.h5 --split all --per-seed",
    "featcache predict --run runs/isic-tfa --images new_images/ --skip-bad",
    "featcache predict --run runs/isic-vitb16-adaptformer --images new_images/",
))
@click.option("--run", "run_dir", required=True,
              help="A train-head, TFA-LT or LIFT finetune run directory (finetune runs: --images only).")
@click.option("--cache", default=None,
              help="Cache to predict on (same model fingerprint). With --images: the run's cache, "
                   "whose metadata names the backbone (default: the one in the run's config.json).")
@click.option("--images", multiple=True,
              help="Image files, folders of images, or CSVs of paths (a 'path' column, else the first) "
                   "to predict from pixels; repeat for several.")
@knob_option("predict_split")
@click.option("--pretrained", default=None,
              help="With --images, for runs whose weights came from a file: that file (its SHA-256 must "
                   "be the one recorded).")
@click.option("--per-seed", is_flag=True, help="Also write each seed's prediction and probabilities.")
@click.option("--skip-bad", is_flag=True, help="With --images: skip (and list) unreadable files.")
@knob_option("predict_batch_size")
@knob_option("predict_workers")
@knob_option("device")
@click.option("--out", default=None,
              help="Output directory, outside the run (default <RUN>-predict-<cache> or <RUN>-predict-images).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier prediction in --out.")
def predict_cmd(run_dir: str, cache: str | None, images: tuple[str, ...], split: str, pretrained: str | None,
                per_seed: bool, skip_bad: bool, batch_size: int, workers: int, device: str, out: str | None,
                overwrite: bool) -> None:
    """Apply a run's trained heads to a cache, or (--images) to image files.

    One row per image: the predicted class, every class's probability (mean over seeds), and
    calibrated probabilities when the run fitted a temperature.
    """
    from featcache.pipelines.predict import predict_images, predict_run

    if images:
        if split != "auto":
            raise FeatcacheError("--split chooses rows of a cache; it does not apply to --images.")
        if batch_size < 1 or workers < 0:
            raise FeatcacheError("--batch-size must be >= 1 and --workers >= 0.")
        result = predict_images(run_dir, images, out=out, cache=cache, pretrained=pretrained, device=device,
                                batch_size=batch_size, workers=workers, skip_bad=skip_bad, per_seed=per_seed,
                                overwrite=overwrite)
        for source, why in result.skipped:
            click.echo(f"skipped {source}: {why}", err=True)
        click.echo(f"Predicted {result.table.height} image(s)"
                   f"{f', skipped {len(result.skipped)}' if result.skipped else ''}.")
    else:
        if cache is None:
            raise FeatcacheError("Pass --cache C (a cache to predict on) or --images PATH...")
        if pretrained or skip_bad:
            raise FeatcacheError("--pretrained and --skip-bad apply to --images only.")
        result = predict_run(run_dir, cache, out=out, device=device, split=split, per_seed=per_seed,
                             overwrite=overwrite)
        if result.metrics is not None:
            _show_metrics(result.out_dir, f"predict {Path(cache).name}")
    click.echo(f"Wrote {', '.join(str(f) for f in result.files)}.")


def _show_metrics(out_dir: Path, title: str) -> None:
    from featcache.runs import read_run, runs_frame
    from featcache.tables import print_runs

    print_runs(console(), runs_frame([read_run(out_dir)]), title=title)


@main.group("reproduce")
def reproduce_group() -> None:
    """Reproduce a paper's tables from a feature cache."""


@reproduce_group.command("tfa-lt", cls=GroupedCommand, groups={
    "Data and splits": ["--cache", "--protocol", "--feature", "--tte", "--text-source", "--seeds"],
    "Optimisation": ["--epochs", "--ensemble-epochs", "--baseline-epochs", "--batch-size", "--lr", "--rus",
                     "--tau", "--precision"],
    "Output and device": ["--out", "--overwrite", "--quiet", "--device"],
}, examples=(
    "featcache reproduce tfa-lt --cache caches/isic2018-ViT-B-16-openai.h5",
    "featcache reproduce tfa-lt --cache caches/aptos2019-ViT-B-16-openai.h5 --tte --seeds 0,1,2,3,4",
    "featcache reproduce tfa-lt --cache caches/isic2018.h5 --epochs 20 --ensemble-epochs 10 --baseline-epochs 30",
))
@click.option("--cache", required=True, help="Feature cache (.h5), e.g. ISIC 2018 or APTOS 2019.")
@knob_option("seeds")
@knob_option("epochs", note="TFA-LT stage I and the adapter-only ablation.")
@knob_option("ensemble_epochs")
@knob_option("baseline_epochs")
@knob_option("batch_size")
@knob_option("lr", note="Every row's SGD training.")
@knob_option("rus")
@knob_option("protocol", note="Default: official if the cache has a test split, else tfa-lt.")
@knob_option("tau")
@knob_option("text_source")
@knob_option("feature")
@knob_option("tte")
@knob_option("device")
@knob_option("precision")
@click.option("--out", default=None, help="Output directory (default runs/<cache>-reproduce-tfa-lt[-tte...]); one holding a reproduction is refused.")
@click.option("--overwrite", is_flag=True, help="Replace the reproduction already in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars or row names on stderr.")
def reproduce_tfa_lt_cmd(**opts: object) -> None:
    """TFA-LT's Table 1 (frozen-feature rows) and Table 2 (ablation), 3 seeds."""
    from featcache.pipelines.reproduce import ReproduceConfig, run
    from featcache.progress import quiet
    from featcache.tables import print_runs

    opts["seeds"] = parse_seeds(opts["seeds"])
    overwrite, silent = opts.pop("overwrite"), opts.pop("quiet")
    rows = None if silent else (lambda name: click.echo(f"… {name}", err=True))
    with quiet(silent):
        out, frame = run(ReproduceConfig(**opts), progress=rows, overwrite=overwrite)
    con = console()
    for table in ("Table 1", "Table 2"):
        print_runs(con, frame.filter(frame["table"] == table), title=table)
    click.echo(f"Wrote {out}/tables.md, results.parquet/.csv, metrics.parquet, config.json, "
               f"metrics.json; one run directory per row under {out}/rows.")


@main.command("report", cls=GroupedCommand, examples=(
    "featcache report runs/*",
    "featcache report runs/isic-* --out tables/isic --html report.html",
))
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", default=None, help="Also write the table as OUT.parquet, OUT.csv and OUT.md.")
@click.option("--html", "html", default=None, metavar="FILE.html",
              help="Also write one self-contained HTML page comparing the runs: sortable table, "
                   "group bars, per-class accuracy, confusion matrices, reliability diagrams, "
                   "shots curves and grid heatmaps when present, every run's configuration.")
def report_cmd(runs: tuple[str, ...], out: str | None, html: str | None) -> None:
    """Collect run directories into one table: Many, Med, Few, Total, balanced accuracy, F1,
    AUC, sensitivity and specificity (two-class runs), ECE, and the settings that differ
    between the runs; runs trained with --bootstrap N also get their 95 % intervals.

    Folders that are not head runs are skipped with a note; `bench medmnist` folders are
    refused (read their table.md).

    RUNS: run directories (e.g. runs/*; the rows of a reproduce run: RUN/rows/*).
    """
    from featcache.report import (
        collect_runs,
        metric_columns,
        print_report,
        report_frame,
        write_html,
    )
    from featcache.runs import markdown_table

    collected = collect_runs(runs)
    for note in collected.notes():
        click.echo(f"note: {note}", err=True)
    frame, knobs = report_frame(collected.runs)
    print_report(console(), frame, knobs)
    written = []
    if out:
        base = Path(out)
        base.parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(base.with_suffix(".parquet"))
        frame.write_csv(base.with_suffix(".csv"))
        base.with_suffix(".md").write_text(markdown_table(frame, title_column="name", title_header="Run",
                                                          columns=metric_columns(frame), knobs=knobs))
        written += [base.with_suffix(".parquet"), base.with_suffix(".csv"), base.with_suffix(".md")]
    if html:
        written.append(write_html(collected, html))
    n = len(collected.runs)
    if written:
        click.echo(f"Read {n} run(s); wrote {', '.join(map(str, written))}.")
    else:
        click.echo(f"Read {n} run(s); nothing written (pass --out or --html to save the table).")
