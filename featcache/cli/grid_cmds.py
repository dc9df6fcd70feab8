"""``featcache grid``: every combination of ``--param`` knobs × seeds, selected on validation.

Thin: builds the base config (train-head's or TFA-LT's) from the fixed options, a
:class:`featcache.pipelines.grid.GridConfig` from ``--param``, and calls :func:`featcache.pipelines.grid.run`.
The fixed options ARE train-head's: the option objects of ``featcache train-head`` are reused
(not copied), so both commands always accept the same knobs with the same defaults. Only
``--val-fraction`` differs (default 0.2 here: a grid needs validation rows to select on).
"""

from __future__ import annotations

from dataclasses import fields

import click
from click.core import ParameterSource

from featcache.cli import main
from featcache.cli.common import GroupedCommand, console, knob_option, parse_seeds
from featcache.cli.head_cmds import TRAIN_HEAD_GROUPS, train_head_cmd
from featcache.errors import FeatcacheError

_OWN = {"val_fraction", "method", "out"}  # options the grid defines itself
_TRAIN_HEAD_OPTIONS = [p for p in train_head_cmd.params if p.name not in _OWN]
GRID_GROUPS = {
    "Grid": ["--param", "--select", "--top"],
    **{heading: [f for f in flags if f != "--method"] for heading, flags in TRAIN_HEAD_GROUPS.items()},
}
GRID_EXAMPLES = (
    "featcache grid --cache caches/isic2018.h5 --head linear --param lr=0.01,0.1 --param weight_decay=0,5e-4",
    "featcache grid --cache caches/isic2018.h5 --ensemble logit --param tau=0.01,0.05 --select macro_f1",
    "featcache grid --cache caches/isic2018.h5 --head mlp --param hidden=128,512 --param lr=0.01,0.1 --top 4",
)


def _grid_command(f):  # noqa: ANN001, ANN202 - a decorator
    """Attach train-head's options (shared objects) after the grid's own ones."""
    f = main.command("grid", cls=GroupedCommand, groups=GRID_GROUPS, examples=GRID_EXAMPLES)(f)
    f.params.extend(_TRAIN_HEAD_OPTIONS)
    return f


@_grid_command
@click.option("--param", "params", multiple=True,
              help="NAME=V1,V2,... a knob to vary (train-head's long option name with "
                   "underscores: lr, weight_decay, tau, gamma, epochs, batch_size, ...), or a "
                   "knob the --head declares (mlp: hidden; knn: k, temperature; tip-adapter: "
                   "alpha, beta; ...). Repeatable.")
@knob_option("select")
@knob_option("grid_top")
@knob_option("grid_val_fraction")
@click.option("--out", default=None, help="Run directory (default runs/<cache>-grid-<head>-<gridded knobs>); one holding a run is refused.")
def grid_cmd(params: tuple[str, ...], select: str, top: int, **opts: object) -> None:
    """Train every combination of --param values (× --seeds) together; select on validation."""
    from featcache.pipelines import grid, tfa_lt, train_head

    ctx = click.get_current_context()
    given = {k for k in opts if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    opts["seeds"] = parse_seeds(opts["seeds"])
    overwrite, silent = opts.pop("overwrite"), opts.pop("quiet")
    given -= {"overwrite", "quiet"}
    from featcache.cli.head_cmds import parse_head_options

    head_options = parse_head_options(opts.pop("head_option"))
    given.discard("head_option")
    if head_options:
        opts["head_options"] = head_options
    ensemble, no_adapters = opts.pop("ensemble"), opts.pop("no_adapters")
    if ensemble is None:
        cls = train_head.TrainHeadConfig
        if opts["head"] is None:
            opts.pop("head")  # TrainHeadConfig's default head
        if no_adapters:
            raise FeatcacheError("--no-adapters is a TFA-LT option; add --ensemble logit|feature.")
    else:
        cls = tfa_lt.TfaLtConfig
        if opts["head"] not in (None, "adapter"):
            raise FeatcacheError("--ensemble runs TFA-LT, whose heads are adapters; drop --head.")
        opts.update(ensemble=ensemble, adapters=not no_adapters)
        opts.pop("head")
    names = {f.name for f in fields(cls)}
    if ensemble is not None and head_options:
        raise FeatcacheError("--head-option sets a knob of --head; TFA-LT (--ensemble) has none.")
    for key in sorted(given - names - {"head", "ensemble", "no_adapters"}):
        raise FeatcacheError(f"--{key.replace('_', '-')} is not an option of "
                             f"{'TFA-LT' if ensemble else 'train-head'}; drop it.")
    parsed = [grid.parse_param(p) for p in params]
    for name, _ in parsed:
        if name in given:
            raise FeatcacheError(f"Knob '{name}' is given both as --{name.replace('_', '-')} and "
                                 f"as --param {name}=...; keep one.")
    base = cls(**{k: v for k, v in opts.items() if k in names})
    spec = grid.GridConfig(base, tuple((n, tuple(v)) for n, v in parsed), select=select, top=top,
                           out=opts.get("out"))
    from featcache.progress import quiet
    from featcache.tables import print_fitting

    say = None if silent else (lambda msg: click.echo(msg, err=True))
    if say:
        say(f"training {len(spec.configs)} configuration(s) × {len(base.seeds)} seed(s)")
    with quiet(silent):
        result = grid.run(spec, progress=say, overwrite=overwrite)
    print_fitting(console(), grid.top_tables(result, spec))
    click.echo(grid.selected_text(result, spec))
    click.echo(f"Wrote run directory {result.out_dir} (config.json, metrics.json, "
               f"metrics.parquet/.csv: one row per configuration and seed, summary.parquet/.csv, "
               f"{len(result.heatmaps)} heatmap PNG(s), the selected configuration's "
               "predictions, splits and checkpoints) in "
               f"{result.seconds:.1f} s.")
