"""The ``featcache`` command line: thin click commands that build a config and call the library.

Each area keeps its commands in its own module here; this module only gathers them. Errors a
user caused (:class:`featcache.errors.FeatcacheError`) are printed to stderr without a
traceback and exit with status 2.
"""

from __future__ import annotations

import logging
import sys

import click

from featcache.errors import FeatcacheError


class FeatcacheGroup(click.Group):
    """A click group that turns FeatcacheError into a clean message and exit status 2."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except FeatcacheError as e:
            click.secho(f"Error: {e}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=FeatcacheGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="featcache")
def main(verbose: int) -> None:
    """featcache: run a frozen open_clip model once, cache its features in HDF5, then train
    long-tail heads (TFA-LT), grids, LIFT fine-tuning and MedMNIST benchmarks on top."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# Each module adds its commands to `main` when imported (click decorators); a new area's
# commands are one module here plus its name in this list.
COMMAND_MODULES = ("cache_cmds", "head_cmds", "grid_cmds", "finetune_cmds", "bench_cmds", "demo_cmds")


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"featcache.cli.{name}")


_register()
