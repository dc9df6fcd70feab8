"""A fast command line (issue 16): ``import featcache.cli`` and the commands that need no model
(``--help``, option errors, ``datasets``, ``info``) never import torch, open_clip, polars or
matplotlib. Timings are measured by ``benchmarks/bench_cli.py``, not here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fixtures_cache import make_feature_cache

HEAVY = ("torch", "open_clip", "polars", "matplotlib")
ROOT = Path(__file__).resolve().parents[1]


def _heavy_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_cli_imports_no_torch() -> None:
    assert _heavy_after("import featcache.cli") == []
    assert _heavy_after("import featcache; featcache.__version__") == []


def _invoke(args: list[str]) -> str:
    return (f"from click.testing import CliRunner\nfrom featcache.cli import main\n"
            f"r = CliRunner().invoke(main, {args!r})\nassert r.exit_code in (0, 2), r.output")


def test_help_option_errors_datasets_and_info_need_no_torch(tmp_path: Path) -> None:
    cache = make_feature_cache(tmp_path / "c.h5", num_classes=3, dim=4)
    for args in (["--help"], ["train-head", "--help"], ["grid", "--help"], ["train-head", "--cach", "x"],
                 ["extract", "--help"], ["datasets"], ["info", str(cache)], ["info", str(cache), "--json"]):
        assert _heavy_after(_invoke(args)) == [], args


def test_head_names_in_the_help_are_the_registry() -> None:
    from featcache.cli.common import HEAD_NAMES
    from featcache.heads import HEADS

    assert tuple(HEADS.names()) == HEAD_NAMES
