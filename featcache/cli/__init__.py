"""The ``featcache`` command line: thin click commands that build a config and call the library.

Each area keeps its commands in its own module here; this module only gathers them. Errors a
user caused (:class:`featcache.errors.FeatcacheError`) are printed to stderr without a
traceback and exit with status 2. Any other exception that escapes a command is a bug: one
line on stderr says so, names the command and the file the full traceback was written to
(``$FEATCACHE_LOG_DIR``, default ``<temp dir>/featcache-logs``), and the exit status is 1.
"""

from __future__ import annotations

import logging
import shlex
import sys

import click

from featcache.errors import FeatcacheError


class FeatcacheGroup(click.Group):
    """A click group that turns FeatcacheError into a clean message and exit status 2, and
    any other exception into one "this is a bug" line (traceback to a file) and status 1."""

    def main(self, args=None, *rest, **kw):  # noqa: ANN001, ANN002, ANN003, ANN201 - click's signature
        """Remember the command line, so a bug report can name the command."""
        self._argv = list(args) if args is not None else sys.argv[1:]
        return super().main(args, *rest, **kw)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except FeatcacheError as e:
            click.secho(f"Error: {e}", fg="red", err=True)
            sys.exit(2)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own: usage errors, --help, Ctrl-C
        except Exception as e:  # noqa: BLE001 - the last line of defence, reported as a bug
            command = " ".join(["featcache", *map(shlex.quote, getattr(self, "_argv", sys.argv[1:]))])
            where = _write_traceback(command)
            click.secho(
                f"Bug: featcache failed with {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                f"while running `{command}`. This is a bug in featcache, not in your input; the "
                f"full traceback is in {where} (please include it when reporting).",
                fg="red", err=True,
            )
            sys.exit(1)


def _write_traceback(command: str) -> str:
    """Write the current exception's traceback to a new file in the log folder; its path (or,
    if that folder cannot be written, the traceback itself after a note)."""
    import datetime
    import os
    import tempfile
    import traceback

    text = f"command: {command}\n\n{traceback.format_exc()}"
    folder = os.environ.get("FEATCACHE_LOG_DIR") or os.path.join(tempfile.gettempdir(), "featcache-logs")
    try:
        os.makedirs(folder, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        fd, path = tempfile.mkstemp(prefix=f"crash-{stamp}-", suffix=".txt", dir=folder)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path
    except OSError as e:
        sys.stderr.write(text)
        return f"(not written: {folder}: {e}; printed above)"


_EXAMPLES = """\b
Examples (each command's --help: its options by topic, and more examples):
  featcache demo
  featcache models --filter ViT-B
  featcache train-head --cache caches/isic2018.h5 --ensemble logit
"""


@click.group(cls=FeatcacheGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EXAMPLES)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="featcache")
def main(verbose: int) -> None:
    """featcache: run a frozen open_clip model once, cache its features in HDF5, then train
    long-tail heads (TFA-LT), grids, LIFT fine-tuning and MedMNIST benchmarks on top."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# Each module adds its commands to `main` when imported (click decorators); a new area's
# commands are one module here plus its name in this list.
COMMAND_MODULES = ("cache_cmds", "head_cmds", "grid_cmds", "finetune_cmds", "bench_cmds", "demo_cmds",
                   "export_cmds", "compare_cmds")


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"featcache.cli.{name}")


_register()
