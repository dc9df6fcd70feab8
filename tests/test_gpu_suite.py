"""The GPU suite (benchmarks/gpu_suite.py): argument parsing, the plan, the step runner's
failure isolation, the JSON and summary it writes; and the CUDA-graphs flag of the trainer,
whose CPU fallback must give exactly the default path's results."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from featcache.heads import HeadContext, MemberSpec, build_head
from featcache.heads.training import train_members

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_suite  # noqa: E402


def test_rehearsal_arguments_and_plan(tmp_path: Path) -> None:
    args = gpu_suite.parse_args([str(tmp_path / "o"), "--device", "cpu", "--tiny",
                                 "--jpeg-root", "J", "--anchors", "A"])
    assert (args.device, args.tiny, args.total_budget) == ("cpu", True, 1200.0)
    steps = gpu_suite.plan(args)
    assert [s.name for s in steps] == list(gpu_suite.STEPS)
    by = {s.name: s for s in steps}
    assert by["extract"].argv[by["extract"].argv.index("--model") + 1] == "tiny-clip"
    assert by["extract"].argv[by["extract"].argv.index("--jpeg-root") + 1] == "J"
    assert "--anchor" not in by["extract"].argv  # the GPU anchor needs a GPU
    assert by["finetune"].argv[by["finetune"].argv.index("--model") + 1] == "tiny-clip"
    for s in steps[1:-1]:
        assert s.json_path == str(tmp_path / "o" / f"{s.name}.json")
        assert s.argv[s.argv.index("--device") + 1] == "cpu"


def test_gpu_plan_fits_the_eight_minutes(tmp_path: Path) -> None:
    args = gpu_suite.parse_args([str(tmp_path), "--anchors", "A", "--jpeg-root", "J"])
    steps = gpu_suite.plan(args)
    assert args.device == "cuda" and args.total_budget <= 480
    assert sum(s.budget_s for s in steps) <= 480
    by = {s.name: s.argv for s in steps}
    assert by["extract"][by["extract"].index("--model") + 1] == "ViT-B-16"
    assert by["extract"][by["extract"].index("--anchor-path") + 1] == str(Path("A") / "gpu_anchor.py")
    assert by["heads"][by["heads"].index("--anchor-path") + 1] == str(Path("A") / "head_anchor.py")
    assert by["finetune"][by["finetune"].index("--batch-size") + 1] == "128"
    assert "bf16+graphs" in by["heads"][by["heads"].index("--precision") + 1]
    only = gpu_suite.plan(gpu_suite.parse_args([str(tmp_path), "--only", "grid,heads"]))
    assert [s.name for s in only] == ["heads", "grid"]
    with pytest.raises(SystemExit):
        gpu_suite.parse_args([str(tmp_path), "--only", "extract,bogus"])


def test_a_failing_or_slow_step_is_recorded_and_the_next_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    py = sys.executable
    grid_json = {"ratio_vs_grid_one": 2.0, "grid_64_s": 8.0, "one_config_grid_s": 4.0,
                 "ratio_vs_train_head": 2.5}
    steps = [
        gpu_suite.Step("extract", [py, "-c", "import sys; print('boom'); sys.exit(3)"], 30,
                       str(out / "extract.json")),
        gpu_suite.Step("heads", [py, "-c", "import time; print('start', flush=True); time.sleep(60)"],
                       1.5, str(out / "heads.json")),
        gpu_suite.Step("grid", [py, "-c", f"open({str(out / 'grid.json')!r}, 'w').write("
                                          f"{json.dumps(json.dumps(grid_json))})"], 30, str(out / "grid.json")),
        gpu_suite.Step("finetune", [py, "-c", "pass"], 30, str(out / "finetune.json")),
    ]
    with open(out / "suite.log", "w") as log:
        records = [gpu_suite.run_step(s, gpu_suite.step_env(None), log, s.budget_s) for s in steps]
    assert [r.status for r in records] == ["failed", "timeout", "ok", "failed"]
    assert "exit status 3" in records[0].error and "boom" in records[0].error
    assert "budget" in records[1].error and "start" in records[1].error
    assert records[1].seconds < 30
    assert "wrote no" in records[3].error
    args = gpu_suite.parse_args([str(out)])
    rows = {g.goal: g for g in gpu_suite.write_summary(out, records, args)}
    grid = rows["grid of 64 head configurations vs one"]
    assert grid.measured == "2.00×" and grid.ratio == pytest.approx(2.0)
    assert all(g.ratio is None for name, g in rows.items() if not name.startswith("grid"))
    md = (out / "summary.md").read_text()
    assert md.count("| unmeasured |") == len(rows) - 1
    assert "| extract | failed |" in md and "| heads | timeout |" in md
    doc = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in doc["steps"]] == ["failed", "timeout", "ok", "failed"]
    log_text = (out / "suite.log").read_text()
    assert "===== heads: timeout" in log_text and "boom" in log_text


def test_dry_run_writes_an_unmeasured_summary(tmp_path: Path) -> None:
    out = tmp_path / "dry"
    assert gpu_suite.main([str(out), "--dry-run"]) == 0
    doc = json.loads((out / "summary.json").read_text())
    assert {s["status"] for s in doc["steps"]} == {"dry-run"}
    assert all(g["measured"] == "unmeasured" for g in doc["goals"])
    assert len(doc["goals"]) == 12
    assert sorted(p.name for p in out.iterdir()) == ["suite.log", "summary.json", "summary.md"]


def test_ham_subset_keeps_every_class_and_matching_rows(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    rows = []
    # sorted by class, as HAM10000_metadata.csv is grouped: a prefix would lose the last ones
    for i, dx in enumerate(["nv"] * 40 + ["mel"] * 12 + ["df"] * 3):
        (src / "images" / f"ISIC_{i:07d}.jpg").write_bytes(b"x" * i)
        rows.append(f"HAM_{i},ISIC_{i:07d},{dx},histo")
    (src / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx,dx_type\n" + "\n".join(rows) + "\n")
    assert gpu_suite.ham_subset(src, tmp_path / "dst", 11) == 8 + 2 + 2
    kept = (tmp_path / "dst" / "HAM10000_metadata.csv").read_text().splitlines()
    assert kept[0] == "lesion_id,image_id,dx,dx_type" and len(kept) == 13
    assert [r.split(",")[2] for r in kept[1:]].count("df") == 2
    ids = sorted(p.stem for p in (tmp_path / "dst" / "images").iterdir())
    assert ids == sorted(r.split(",")[1] for r in kept[1:])
    for r in kept[1:]:  # the images are the same files
        i = int(r.split(",")[1][5:])
        assert (tmp_path / "dst" / "images" / f"ISIC_{i:07d}.jpg").read_bytes() == b"x" * i


@pytest.mark.slow
def test_rehearsal_grid_and_finetune_write_their_json(tmp_path: Path) -> None:
    """Two real steps of the rehearsal end to end (tiny sizes): their JSON feeds the summary."""
    out = tmp_path / "out"
    assert gpu_suite.main([str(out), "--device", "cpu", "--tiny", "--only", "grid,finetune",
                           "--carry", str(tmp_path / "none")]) == 0
    doc = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in doc["steps"]] == ["ok", "ok"], doc["steps"]
    goals = {g["goal"]: g for g in doc["goals"]}
    assert goals["grid of 64 head configurations vs one"]["ratio"] is not None
    assert goals["LIFT AdaptFormer training step, batch 128"]["ratio"] is not None
    assert "rehearsal" in goals["LIFT AdaptFormer training step, batch 128"]["note"]
    assert goals["extraction from arrays, ViT-B/16, one GPU"]["measured"] == "unmeasured"


# ---------------------------------------------------------------- cuda_graphs


def _data(n: int = 300, d: int = 16, c: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.full((k,), i) for i, k in enumerate((150, 70, 40, 25, 15))])[:n]
    x = torch.randn(c, d, generator=gen)[labels] + 0.5 * torch.randn(labels.numel(), d, generator=gen)
    return x, labels


def _members(optimizer: str = "sgd") -> list[MemberSpec]:
    # different epochs and samplers: the RUS member and the 2-epoch one sit out late steps,
    # so both captured step kinds (all members active / some inactive) run; AdamW reads its
    # bias corrections by the step's device-side index
    if optimizer != "sgd":
        return [m.with_(optimizer=optimizer, lr=m.lr / 10) for m in _members()]
    return [
        MemberSpec(seed=0, stream="wrs", sampler="wrs", epochs=3, batch_size=64, tau=0.1),
        MemberSpec(seed=0, stream="rus", sampler="rus", epochs=4, batch_size=64, tau=0.1,
                   lr=0.03, weight_decay=1e-3, loss="focal", gamma=1.0),
        MemberSpec(seed=7, stream="x", sampler="instance", epochs=2, batch_size=48, tau=0.05,
                   loss="la", momentum=0.5),
    ]


@pytest.mark.parametrize(("name", "share", "optimizer"),
                         [("adapter", False, "sgd"), ("linear", True, "sgd"), ("adapter", False, "adamw")])
def test_cuda_graphs_fallback_equals_the_default_path(name: str, share: bool, optimizer: str, caplog) -> None:  # noqa: ANN001
    x, labels = _data()
    pool = torch.arange(labels.numel())
    ctx = HeadContext(x.shape[1], 5, prototypes=F.normalize(torch.randn(5, x.shape[1]), dim=-1))
    members = _members(optimizer) if not share else [
        MemberSpec(seed=0, epochs=3, batch_size=64, lr=lr, weight_decay=wd, sigma=5.0)
        for lr, wd in ((0.1, 5e-4), (0.03, 0.0))] + [MemberSpec(seed=1, epochs=2, batch_size=64)]
    heads = [build_head(name, ctx, members) for _ in range(2)]
    with caplog.at_level(logging.INFO, logger="featcache.heads.training"):
        res = [train_members(h, x, labels, [pool] * len(members), share_batches=share,
                             cuda_graphs=flag, chunk_steps=5)
               for h, flag in zip(heads, (False, True), strict=True)]
    assert "cuda_graphs: the device is cpu, not CUDA" in caplog.text
    for a, b in zip(heads[0].parameters(), heads[1].parameters(), strict=True):
        assert torch.equal(a, b)
    assert res[0].epoch_loss == res[1].epoch_loss and res[0].steps == res[1].steps


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_cuda_graphs_replay_matches_eager_on_the_gpu(optimizer: str, caplog) -> None:  # noqa: ANN001
    x, labels = (t.cuda() for t in _data())
    pool = torch.arange(labels.numel(), device="cuda")
    ctx = HeadContext(x.shape[1], 5, prototypes=F.normalize(torch.randn(5, x.shape[1]), dim=-1).cuda())
    heads = [build_head("adapter", ctx, _members(optimizer)).cuda() for _ in range(2)]
    with caplog.at_level(logging.INFO, logger="featcache.heads.training"):
        for h, flag in zip(heads, (False, True), strict=True):
            train_members(h, x, labels, [pool] * 3, cuda_graphs=flag)
    assert "CUDA graphs: 2 captured" in caplog.text, caplog.text
    for a, b in zip(heads[0].parameters(), heads[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- LIFT's frozen tower


@pytest.mark.parametrize(("method", "tower_tracked"), [("classifier", False), ("adaptformer", True)])
def test_classifier_only_runs_the_frozen_tower_without_autograd(method: str, tower_tracked: bool) -> None:
    """The LIFT step's classifier-only path (what bench_finetune times) keeps no autograd
    graph through the frozen tower; a method that trains inside the tower does."""
    from featcache.models import load_backbone
    from featcache.peft import make_config
    from featcache.pipelines.finetune import build_model

    torch.manual_seed(0)
    backbone = load_backbone("tiny-clip", "random")
    model, _ = build_model(backbone, make_config(method), ["a", "b", "c"], init="random",
                           device=torch.device("cpu"))
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size)
    feats = model.features(images)
    assert (feats.grad_fn is not None) == tower_tracked
    assert model(images).requires_grad  # the head trains either way
