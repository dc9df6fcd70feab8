"""The flat public API: every advertised name resolves, and ``import featcache`` stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import featcache


@pytest.mark.parametrize("name", featcache.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(featcache, name) is not None


def test_run_entry_points_take_their_configs() -> None:
    import inspect
    for run, config in (("extract", "ExtractConfig"), ("train_head", "TrainHeadConfig"),
                        ("tfa_lt", "TfaLtConfig"), ("grid", "GridConfig"),
                        ("finetune", "FinetuneConfig"), ("bench_medmnist", "BenchConfig"),
                        ("reproduce", "ReproduceConfig"), ("import_features", "ImportConfig")):
        first = next(iter(inspect.signature(getattr(featcache, run)).parameters.values()))
        assert first.annotation in (config, getattr(featcache, config)), (run, first.annotation)


def test_import_featcache_pulls_in_no_torch() -> None:
    code = "import sys, featcache; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'trian_head'"):
        featcache.trian_head  # noqa: B018
