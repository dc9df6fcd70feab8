"""Tables at 80 columns (a small terminal, or a log file): numbers and headers are never cut
(no ``…``), every data row is one line, 5e-4 reads as 5e-4, and ``grid`` uses one numbering
for its table, its message and its files."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from fixtures_cache import make_feature_cache
from rich.console import Console

from featcache.cli import main
from featcache.runs import REPORT_COLUMNS, read_run, runs_frame
from featcache.tables import fmt_number, mean_std, print_fitting, print_runs

NARROW = {"COLUMNS": "80", "LINES": "40"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("layout")
    cache = make_feature_cache(root / "cache.h5", num_classes=5, dim=8)
    runner = CliRunner()
    lin = root / "a-linear-run-with-a-longish-name"
    res = runner.invoke(main, ["train-head", "--cache", str(cache), "--epochs", "2", "--seeds", "0,1",
                               "--device", "cpu", "--out", str(lin)], env=NARROW)
    assert res.exit_code == 0, res.output
    cos = root / "cosine-la"
    res2 = runner.invoke(main, ["train-head", "--cache", str(cache), "--head", "cosine", "--loss", "la",
                                "--epochs", "2", "--seeds", "0,1", "--device", "cpu", "--out", str(cos)],
                         env=NARROW)
    assert res2.exit_code == 0, res2.output
    grid = root / "grid"
    res3 = runner.invoke(main, ["grid", "--cache", str(cache), "--param", "lr=0.01,0.1",
                                "--param", "weight_decay=0,5e-4", "--epochs", "2", "--seeds", "0,1",
                                "--device", "cpu", "--out", str(grid)], env=NARROW)
    assert res3.exit_code == 0, res3.output
    return {"cache": cache, "linear": lin, "cosine": cos, "grid": grid, "train_out": res.output,
            "grid_out": res3.output}


def _lines_with(text: str, needle: str) -> list[str]:
    return [ln for ln in text.splitlines() if needle in ln]


def _render(tables_or_frame, **kwargs) -> str:  # noqa: ANN001
    buf = io.StringIO()
    con = Console(width=80, file=buf, markup=False)
    if isinstance(tables_or_frame, pl.DataFrame):
        print_runs(con, tables_or_frame, **kwargs)
    else:
        print_fitting(con, tables_or_frame)
    return buf.getvalue()


def test_number_formats() -> None:
    assert fmt_number(5e-4) == "5e-4" and fmt_number(0.001) == "0.001" and fmt_number(0.1) == "0.1"
    assert fmt_number(1e-5) == "1e-5" and fmt_number(2.5e-4) == "2.5e-4" and fmt_number(0.0) == "0"
    assert fmt_number(3) == "3" and fmt_number(None) == "–" and fmt_number(1e7) == "1e+7"
    assert mean_std(0.81234, 0.004, compact=True) == "81.23±0.40"
    assert mean_std(0.81234, 0.004) == "81.23 ± 0.40" and mean_std(None, 0.1) == "–"


def test_run_table_at_80_columns(setup: dict) -> None:
    runs = [read_run(setup[k]) for k in ("linear", "cosine", "grid")]
    frame = runs_frame(runs)
    out = _render(frame, title="three runs", columns=REPORT_COLUMNS)
    assert "…" not in out
    for r in frame.iter_rows(named=True):
        lines = _lines_with(out, r["method"])
        assert len(lines) == 1, out  # one line per run, with all its numbers
        for key in ("many_acc", "acc", "balanced_acc", "auc"):
            assert f"{100 * r[key]:.2f}" in lines[0], (key, lines[0])
    # runs with short names fit 80 columns in a compact layout, with every number
    short = _render(runs_frame(runs[:2]), columns=REPORT_COLUMNS)
    assert max(len(ln) for ln in short.splitlines()) <= 80 and "…" not in short, short
    assert "±" in short
    # the train-head command itself, in an 80-column log
    assert "…" not in setup["train_out"]


def test_grid_table_one_numbering_and_knob_values(setup: dict) -> None:
    out = setup["grid_out"]
    assert "…" not in out
    doc = json.loads((setup["grid"] / "metrics.json").read_text())
    selected, chosen = doc["selected"], doc["selected_config"]
    summary = pl.read_parquet(setup["grid"] / "summary.parquet")
    # headers whole, 5e-4 as 5e-4
    assert _lines_with(out, "weight_decay") and _lines_with(out, "val Bal.")
    assert "5e-4" in out and "0.0005" not in out
    # one row line per configuration, the selected one marked with its number
    for row in summary.iter_rows(named=True):
        mark = f"{row['config']}{'*' if row['selected'] else ''}"
        lines = [ln for ln in out.splitlines() if ln.split() and ln.split()[0] == mark]
        assert len(lines) == 1, (mark, out)
        assert f"{100 * row['test_acc']:.2f}" in lines[0]
    starred = [ln.split()[0] for ln in out.splitlines() if re.match(r"^\s*\d+\*\s", ln)]
    assert starred == [f"{selected}*"]
    message = next(ln for ln in out.splitlines() if ln.startswith("Selected configuration"))
    assert message.startswith(f"Selected configuration {selected}* ")
    assert f"lr={fmt_number(chosen['lr'])}" in message
    assert f"weight_decay={fmt_number(chosen['weight_decay'])}" in message


def test_report_at_80_columns(setup: dict) -> None:
    res = CliRunner().invoke(main, ["report", str(setup["linear"]), str(setup["cosine"]),
                                    str(setup["grid"]), str(setup["cache"].parent / "nothing")],
                             env=NARROW)
    assert res.exit_code == 0, res.output
    out = res.output
    assert "…" not in out and "skipped" in out
    assert "Bal." in out and "AUC" in out
    # 80 columns, even with a long run name: it is wrapped over lines in the Run column (after
    # its hyphens), whole, beside its row's numbers
    assert max(len(ln) for ln in res.stdout.splitlines()) <= 80, out  # (stderr: the note's path)
    assert "cosine-la" in [ln.split()[0] for ln in out.splitlines() if re.search(r"\d+\.\d\d", ln)]
    long = setup["linear"].name
    first = next(i for i, ln in enumerate(out.splitlines()) if ln.startswith(long[:10]))
    lines = out.splitlines()[first:first + 3]
    assert re.search(r"\d+\.\d\d", lines[0]) and not re.search(r"\d\.\d", lines[1])
    assert lines[0].split()[0] + lines[1].strip() == long


def test_info_at_80_columns(setup: dict) -> None:
    from featcache.cache import open_cache

    c = open_cache(setup["cache"])
    res = CliRunner().invoke(main, ["info", str(setup["cache"])], env=NARROW)
    assert res.exit_code == 0, res.output
    out = res.output
    assert "…" not in out
    assert len(_lines_with(out, c.fingerprint)) == 1  # the whole fingerprint on one line
    split_line = _lines_with(out, "splits")[0]
    for split in sorted(set(c.splits.tolist())):
        name = split or "(none)"
        assert f"{name} {int((c.splits == split).sum()):,}" in split_line
    cells = [re.findall(r"[^\s│┃]+", ln) for ln in out.splitlines()]
    total = [row for row in cells if row and row[0] == "total"]
    assert len(total) == 1 and total[0][-1] == str(len(c))
    data = json.loads(CliRunner().invoke(main, ["info", str(setup["cache"]), "--json"]).output)
    assert sum(data["split_totals"].values()) == len(c)


def test_a_table_too_wide_for_any_layout_is_printed_whole(setup: dict) -> None:
    from featcache.tables import plain_table

    cells = [[f"{1000 + i}.{j:02d}" for j in range(14)] for i in range(3)]
    wide = plain_table([f"column_{j}" for j in range(14)], cells, compact=True)
    out = _render([wide])
    assert "…" not in out
    for row in cells:
        assert len([ln for ln in out.splitlines() if row[0] in ln and row[-1] in ln]) == 1


def test_report_shows_the_common_start_of_run_names_once(setup: dict, tmp_path: Path) -> None:
    from featcache.tables import common_prefix

    assert common_prefix(["ham-tiny-tte-linear", "ham-tiny-tte-cosine-la"]) == "ham-tiny-tte-"
    assert common_prefix(["ham-tiny-tte-linear", "ham-tiny-tte-linear-la"]) == "ham-tiny-tte-"
    assert common_prefix(["ab-c", "ab-d"]) == ""  # too short to be worth it
    assert common_prefix(["only-one-run-name"]) == ""
    runs = []
    for name in ("isic2018-tiny-clip-random-tte-linear", "isic2018-tiny-clip-random-tte-cosine-la"):
        shutil.copytree(setup["linear" if name.endswith("linear") else "cosine"], tmp_path / name)
        runs.append(str(tmp_path / name))
    res = CliRunner().invoke(main, ["report", *runs], env=NARROW)
    assert res.exit_code == 0, res.output
    assert "Runs isic2018-tiny-clip-random-tte-* " in res.output
    rows = [ln for ln in res.output.splitlines() if re.search(r"\d+\.\d\d", ln)]
    assert [r.split()[0] for r in rows] == ["linear", "cosine-la"]
    assert all(len(line) <= 80 for line in res.output.splitlines()), res.output


def test_wrap_name_keeps_every_character_within_the_width() -> None:
    from featcache.tables import wrap_name

    name = "linear-la-wrs-bootstrap_200/seeds=0,1-averyveryverylongword"
    for width in (3, 8, 12, 30, 80):
        lines = wrap_name(name, width).split("\n")
        assert "".join(lines) == name and max(map(len, lines)) <= width
    assert wrap_name(name, 12).split("\n")[:2] == ["linear-la-", "wrs-"]  # broken after a hyphen
    assert wrap_name("tte linear", 6) == "tte\nlinear"  # the space broken at is dropped
    with pytest.raises(ValueError):
        wrap_name(name, 0)
