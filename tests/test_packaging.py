"""The package installs as the client's layout asks: data/ descriptors travel inside the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_wheel_carries_descriptors_and_finds_them_elsewhere(tmp_path: Path) -> None:
    pytest.importorskip("hatchling")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("featcache-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "featcache/data/datasets/isic2018.json" in names
    assert "featcache/model_configs/tiny-clip.json" in names
    assert any(n.startswith("heads/") for n in names) and any(n.startswith("pipelines/") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "from featcache.datasets import load_descriptor; from featcache.datasets.base import data_dir;"
        "d = load_descriptor('isic2018'); print(data_dir()); print(d.data_type)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         check=True, capture_output=True, text=True).stdout.split()
    assert out[0] == str(site / "featcache" / "data") and out[1] == "dermoscopy"
