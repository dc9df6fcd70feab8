"""Nothing lost, nothing mixed up (issue 16): default run folders say what differs, a finished
run is never replaced without ``--overwrite``, and every ``config.json`` records which
featcache, which command line and when (provenance that ``report`` never shows as a knob)."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures_cache import make_feature_cache

from featcache.cli import main
from featcache.runs import NOT_KNOBS, PROVENANCE_KEYS, differing_knobs, read_run, run_knobs

FAST = ["--epochs", "2", "--seeds", "0", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_feature_cache(tmp_path_factory.mktemp("lost") / "syn.h5", num_classes=4, dim=8)


def _invoke(args: list[str], cwd: Path):  # noqa: ANN202
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, args, catch_exceptions=False)
    finally:
        os.chdir(old)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_losses_land_in_two_folders_and_a_rerun_is_refused(cache: Path, tmp_path: Path) -> None:
    ce = _invoke(["train-head", "--cache", str(cache), *FAST], tmp_path)
    assert ce.exit_code == 0, ce.output
    la = _invoke(["train-head", "--cache", str(cache), "--loss", "la", "--sampler", "wrs", *FAST], tmp_path)
    assert la.exit_code == 0, la.output
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["syn-linear", "syn-linear-la-wrs"]
    assert read_run(runs / "syn-linear")["config"]["loss"] == "ce"
    assert read_run(runs / "syn-linear-la-wrs")["config"]["loss"] == "la"

    before = _snapshot(runs / "syn-linear")
    again = _invoke(["train-head", "--cache", str(cache), "--lr", "0.5", *FAST], tmp_path)
    assert again.exit_code == 2
    assert "already holds a run" in again.output and "--overwrite" in again.output
    assert _snapshot(runs / "syn-linear") == before  # refused before any work: every file kept

    replaced = _invoke(["train-head", "--cache", str(cache), "--lr", "0.5", "--overwrite", *FAST], tmp_path)
    assert replaced.exit_code == 0, replaced.output
    assert read_run(runs / "syn-linear")["config"]["lr"] == 0.5


def test_tfa_lt_grid_and_reproduce_refuse_a_finished_folder(cache: Path, tmp_path: Path) -> None:
    tfa = ["train-head", "--cache", str(cache), "--ensemble", "logit", "--ensemble-epochs", "1", *FAST]
    assert _invoke(tfa, tmp_path).exit_code == 0
    assert (tmp_path / "runs" / "syn-tfa-lt-logit" / "metrics.json").is_file()
    assert _invoke(tfa, tmp_path).exit_code == 2

    grid = ["grid", "--cache", str(cache), "--param", "lr=0.1,0.2", *FAST]
    first = _invoke(grid, tmp_path)
    assert first.exit_code == 0, first.output
    folder = tmp_path / "runs" / "syn-grid-linear-lr"
    before = _snapshot(folder)
    second = _invoke(grid, tmp_path)
    assert second.exit_code == 2 and "already holds a run" in second.output
    assert _snapshot(folder) == before
    assert _invoke([*grid, "--overwrite"], tmp_path).exit_code == 0

    out = tmp_path / "repro"
    (out).mkdir()
    (out / "tables.md").write_text("an earlier reproduction\n")
    refused = _invoke(["reproduce", "tfa-lt", "--cache", str(cache), "--out", str(out), "--seeds", "0",
                       "--epochs", "1", "--ensemble-epochs", "1", "--baseline-epochs", "1", "--device", "cpu"],
                      tmp_path)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert (out / "tables.md").read_text() == "an earlier reproduction\n"


def test_config_records_version_command_line_and_utc_time(cache: Path, tmp_path: Path) -> None:
    import sys

    import featcache

    args = ["train-head", "--cache", str(cache), "--out", str(tmp_path / "run"), *FAST]
    saved = sys.argv
    sys.argv = ["featcache", *args]  # what the console script sees
    try:
        assert _invoke(args, tmp_path).exit_code == 0
    finally:
        sys.argv = saved
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["featcache_version"] == featcache.__version__
    assert config["command_line"] == ["featcache", *args]
    stamp = datetime.datetime.fromisoformat(config["created_at"])
    assert stamp.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - stamp).total_seconds()) < 3600
    # provenance is never a knob: two runs made at different times, by different command
    # lines, differ in no knob
    assert set(PROVENANCE_KEYS) <= NOT_KNOBS
    run = read_run(tmp_path / "run")
    assert not set(PROVENANCE_KEYS) & set(run_knobs(run))
    other = {**run, "config": {**run["config"], "created_at": "2000-01-01T00:00:00+00:00",
                               "command_line": ["featcache", "something", "else"]}}
    assert differing_knobs([run, other]) == []


# --------------------------------------------------------------------------------------
# Progress on long work


def test_training_writes_progress_lines_and_quiet_writes_none(cache: Path, tmp_path: Path) -> None:
    common = ["--cache", str(cache), "--epochs", "3", "--seeds", "0,1", "--device", "cpu"]
    loud = CliRunner().invoke(main, ["train-head", *common, "--out", str(tmp_path / "a")],
                              catch_exceptions=False)
    assert loud.exit_code == 0, loud.output
    lines = [ln for ln in loud.stderr.splitlines() if ln.startswith("linear")]
    assert lines, loud.stderr
    assert "\r" not in loud.stderr  # not a terminal: whole lines, no redraws
    assert "3/3" in lines[-1] and "epoch" in lines[-1] and "loss" in lines[-1]

    tfa = CliRunner().invoke(main, ["train-head", *common, "--ensemble", "feature", "--ensemble-epochs", "2",
                                    "--out", str(tmp_path / "t")], catch_exceptions=False)
    assert "stage I" in tfa.stderr and "stage II" in tfa.stderr and "2/2" in tfa.stderr

    silent = CliRunner().invoke(main, ["train-head", *common, "--out", str(tmp_path / "b"), "--quiet"],
                                catch_exceptions=False)
    assert silent.exit_code == 0, silent.output
    assert silent.stderr == ""


def test_grid_progress_and_quiet(cache: Path, tmp_path: Path) -> None:
    common = ["grid", "--cache", str(cache), "--param", "lr=0.1,0.2", "--epochs", "2", "--seeds", "0",
              "--device", "cpu"]
    loud = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "a")], catch_exceptions=False)
    assert loud.exit_code == 0, loud.output
    assert "grid linear (2 heads)" in loud.stderr and "2/2" in loud.stderr
    silent = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "b"), "--quiet"],
                                catch_exceptions=False)
    assert silent.exit_code == 0 and silent.stderr == ""


def test_progress_flag_reaches_the_library_without_the_cli() -> None:
    import io

    from featcache import progress

    stream = io.StringIO()
    bar = progress.bar(4, "work", file=stream)
    for _ in range(4):
        bar.update(1)
    bar.close()
    assert stream.getvalue().splitlines()[-1].startswith("work: 100%")
    with progress.quiet():
        assert not progress.enabled()
        quiet_stream = io.StringIO()
        progress.bar(4, "work", file=quiet_stream).close()
        assert progress.enabled(True)  # an explicit flag wins over the block
    assert quiet_stream.getvalue() == "" and progress.enabled()


def test_finetune_from_a_cache_refuses_a_finished_run(tmp_path: Path) -> None:
    cache = make_feature_cache(tmp_path / "cls.h5", num_classes=3, dim=8, cls_dim=12)
    args = ["finetune", "--method", "classifier", "--cache", str(cache), "--epochs", "1", "--seeds", "0",
            "--init", "random", "--device", "cpu", "--out", str(tmp_path / "ft"), "--no-progress"]
    first = CliRunner().invoke(main, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert first.stderr == ""  # --no-progress silences the head-training bars too
    before = _snapshot(tmp_path / "ft")
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert _snapshot(tmp_path / "ft") == before
    assert CliRunner().invoke(main, [*args, "--overwrite"], catch_exceptions=False).exit_code == 0


def test_extract_progress_in_a_log_is_whole_lines(tmp_path: Path) -> None:
    """extract's bar comes from featcache.progress: in a log (stderr not a terminal) it writes
    whole lines, never carriage-return redraws, ending at 100 %."""
    out = tmp_path / "c.h5"
    res = CliRunner().invoke(main, ["extract", "--dataset", "synthetic-lt", "--workers", "0",
                                    "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("extract:")]
    assert lines and "\r" not in res.stderr
    assert "100%" in lines[-1]
