"""Everyday command-line slips (issue 16): weights that need a download fail fast offline with
one message, a CSV's default cache name is its stem, and case slips get suggestions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from featcache.cli import main
from featcache.errors import FeatcacheError, closest, did_you_mean

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a fresh interpreter imports torch; check_weights' refusal is checked fast below
def test_a_tag_that_needs_a_download_fails_offline_before_the_data_is_read(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    missing = tmp_path / "no-such-data"  # were the data set scanned first, this would be the error
    res = subprocess.run([sys.executable, "-m", "featcache", "extract", "--dataset", "folder", "--root",
                          str(missing), "--model", "ViT-B-16", "--pretrained", "openai",
                          "--out", str(tmp_path / "c.h5")], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr  # one message, no retry warnings
    msg = lines[0]
    assert "Weights 'openai' for model 'ViT-B-16'" in msg and "HF_HUB_OFFLINE" in msg
    assert "HF_HUB_OFFLINE=1" in msg and "--pretrained /path/to/" in msg
    assert str(tmp_path / "hf") in msg  # where it looked
    assert "nothing was read from the data set" in msg
    assert not (tmp_path / "c.h5").exists() and not missing.exists()


def test_weights_in_the_hub_cache_or_random_pass_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from featcache.models import check_weights

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    check_weights("tiny-clip")  # random weights: nothing to download
    check_weights("ViT-B-16", "random")
    with pytest.raises(FeatcacheError, match="HF_HUB_OFFLINE"):
        check_weights("ViT-B-16", "openai")
    repo = tmp_path / "models--timm--vit_base_patch16_clip_224.openai"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "open_clip_model.safetensors").write_bytes(b"x")
    check_weights("ViT-B-16", "openai")  # in the cache: open_clip loads it without network


def test_csv_default_cache_name_uses_the_file_stem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fixtures_data import write_image

    from featcache.pipelines.extract import ExtractConfig, default_out

    cfg = ExtractConfig(dataset="csv", dataset_options={"csv": "/abs/dir/labels.csv"}, model="tiny-clip")
    assert default_out(cfg) == Path("caches/csv-labels-tiny-clip-random.h5")
    data = tmp_path / "data"
    rows = ["path,label"]
    for i in range(6):
        write_image(data / f"{i}.png", k=i % 2)
        rows.append(f"{i}.png,{'ab'[i % 2]}")
    (data / "my list.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["extract", "--dataset", "csv", "--csv", str((data / "my list.csv").resolve()),
                                    "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "caches").iterdir()] == ["csv-my list-tiny-clip-random.h5"]


def test_case_slips_get_suggestions() -> None:
    assert closest("ISIC2018", ["aptos2019", "isic2018"]) == "isic2018"
    assert closest("vit-b-16", ["ViT-S-16", "ViT-B-16", "ViT-B-32"]) == "ViT-B-16"
    assert closest("vit-b-61", ["ViT-S-16", "ViT-B-16"]) == "ViT-B-16"
    assert did_you_mean("zzzz", ["linear", "cosine"]) == ""
    res = CliRunner().invoke(main, ["extract", "--dataset", "ISIC2018", "--root", "."])
    assert res.exit_code == 2 and "Did you mean 'isic2018'?" in res.output
    from featcache.models import load_backbone

    with pytest.raises(FeatcacheError, match="Did you mean 'ViT-B-16'"):
        load_backbone("vit-b-16")
