#!/usr/bin/env python3
"""One prepared run that measures every DESIGN.md §6 speed goal (issue 15).

    python benchmarks/gpu_suite.py OUT [--device cuda|cpu] [--tiny] [--carry .gpu]
        [--only extract,heads,grid,finetune] [--total-budget S] [--dry-run]

Steps, each a subprocess with its own time budget (a failure or a timeout in one is recorded
and the next one runs):

1. ``install``  — the wheels carried in ``CARRY/wheels`` (built here by
   ``benchmarks/build_wheels.sh``) installed with ``pip install --no-index --no-deps
   --target CARRY_SITE``, plus the xz-packed polars runtime unpacked there; every later
   step runs with that folder on ``PYTHONPATH``. Skipped when ``CARRY/wheels`` is absent
   (then the packages must already be importable).
2. ``extract``  — ``bench_extract.py`` beside ``CARRY/anchors/gpu_anchor.py``: ViT-B/16 random
   weights, pre-decoded arrays and the real HAM10000 JPEGs (``CARRY/ham10000``), each with
   and without TTE, both decoders, GPU utilisation and input-wait share.
3. ``heads``    — ``bench_heads.py`` beside ``CARRY/anchors/head_anchor.py``: the TFA-LT
   protocol in fp32 and bf16, time and peak GPU memory.
4. ``grid``     — ``bench_grid.py``: the 64-configuration grid against one configuration.
5. ``finetune`` — ``bench_finetune.py``: the LIFT training step for adaptformer, classifier
   and full (img/s, peak memory), bf16 on the GPU.
6. ``graphs``   — ``pytest tests/test_gpu_suite.py -k cuda_graphs``: on a GPU, training with
   ``cuda_graphs=True`` (captured and replayed) equals eager training.

Writes, in OUT: ``<step>.json`` (each benchmark's own JSON), ``suite.log`` (every step's
output, in order), ``summary.json`` (each step's status, seconds and error; each goal's
figure) and ``summary.md`` (the table of DESIGN.md §6 goals with measured ratio or
"unmeasured", then the steps). Seven files: the device tool returns at most eight.

``--device cpu --tiny`` is the rehearsal: the same steps with the tiny model and small sizes,
a couple of minutes on a 2-core machine; its figures are no goal figures (the summary says so).
``--dry-run`` writes the plan and an all-"unmeasured" summary without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
STEPS = ("install", "extract", "heads", "grid", "finetune", "graphs")
# total budget of the whole GPU run: issue 15 asks for under 8 minutes
GPU_TOTAL_BUDGET_S = 470
TINY_JPEGS = 96  # JPEGs the rehearsal reads


@dataclass
class Step:
    """One step of the suite: a command, its time budget and the JSON it writes."""

    name: str
    argv: list[str]
    budget_s: float
    json_path: str | None = None


@dataclass
class StepRecord:
    """What running a step gave: ``status`` is ok, failed, timeout, skipped or dry-run."""

    name: str
    status: str
    seconds: float = 0.0
    returncode: int | None = None
    error: str | None = None
    json_path: str | None = None
    command: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The suite's command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("out", help="output folder (created); one JSON per benchmark and summary.md")
    ap.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (rehearsal)")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny model and small sizes (the rehearsal; figures are no goal figures)")
    ap.add_argument("--carry", default=str(ROOT / ".gpu"),
                    help="the folder build_wheels.sh filled: wheels/, ham10000/, anchors/ [%(default)s]")
    ap.add_argument("--site", default=None,
                    help="where the carried wheels are installed [/tmp/featcache-gpu-site]")
    ap.add_argument("--jpeg-root", default=None,
                    help="HAM10000 folder [default: CARRY/ham10000, else ../shared/data/ham10000]")
    ap.add_argument("--anchors", default=None,
                    help="folder with gpu_anchor.py and head_anchor.py [default: CARRY/anchors, "
                         "else ../shared/anchors]")
    ap.add_argument("--only", default=",".join(STEPS), help="comma-separated steps to run [all]")
    ap.add_argument("--total-budget", type=float, default=None,
                    help=f"seconds for the whole suite [GPU: {GPU_TOTAL_BUDGET_S}; tiny: 1200]")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the steps")
    ap.add_argument("--dry-run", action="store_true", help="write the plan and summary, run nothing")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.only.split(",")) - set(STEPS))
    if unknown:
        ap.error(f"--only: unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    if args.site is None:
        args.site = "/tmp/featcache-gpu-site"
    if args.total_budget is None:
        args.total_budget = 1200.0 if args.tiny else float(GPU_TOTAL_BUDGET_S)
    return args


def _first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def plan(args: argparse.Namespace) -> list[Step]:
    """The steps to run, with their commands and budgets (GPU sizes, or tiny ones)."""
    out, carry, py = Path(args.out), Path(args.carry), args.python
    shared = ROOT.parent / "shared"
    jpeg_root = Path(args.jpeg_root) if args.jpeg_root else _first_existing(
        carry / "ham10000", shared / "data" / "ham10000")
    anchors = Path(args.anchors) if args.anchors else _first_existing(
        carry / "anchors", shared / "anchors")
    tiny, dev = args.tiny, args.device
    steps: list[Step] = []
    site = Path(args.site)
    steps.append(Step("install", [py, str(Path(__file__).resolve()), "--install-into", str(site),
                                  str(carry)], 30 if not tiny else 180))

    def js(name: str) -> str:
        return str(out / f"{name}.json")

    ex = [py, str(BENCH / "bench_extract.py"), "--device", dev, "--json", js("extract")]
    if tiny:
        ex += ["--model", "tiny-clip", "--images", "192", "--batch-size", "64", "--workers", "1"]
    else:
        ex += ["--model", "ViT-B-16", "--pretrained", "random", "--precision", "bf16",
               "--images", "8192", "--batch-size", "256"]
    if jpeg_root is not None:
        ex += ["--jpeg-root", str(jpeg_root), "--decoders", "pil,device"]
    if anchors is not None and not tiny:
        ex += ["--anchor", "--anchor-path", str(anchors / "gpu_anchor.py")]
    steps.append(Step("extract", ex, 180 if tiny else 195, js("extract")))

    hd = [py, str(BENCH / "bench_heads.py"), "--device", dev, "--json", js("heads"),
          "--precision", "fp32,bf16+graphs" if tiny else "fp32,bf16,fp32+graphs,bf16+graphs"]
    if tiny:
        hd += ["--epochs", "1", "--ensemble-epochs", "1"]
    elif anchors is not None:
        hd += ["--anchor-path", str(anchors / "head_anchor.py")]
    steps.append(Step("heads", hd, 240 if tiny else 135, js("heads")))

    gr = [py, str(BENCH / "bench_grid.py"), "--device", dev, "--json", js("grid"),
          "--epochs", "1" if tiny else "200"]
    steps.append(Step("grid", gr, 120 if tiny else 50, js("grid")))

    ft = [py, str(BENCH / "bench_finetune.py"), "--device", dev, "--json", js("finetune")]
    if tiny:
        ft += ["--model", "tiny-clip", "--batch-size", "8", "--steps", "2", "--warmup", "1",
               "--num-classes", "10"]
    else:
        ft += ["--model", "ViT-B-16", "--pretrained", "random", "--precision", "bf16",
               "--batch-size", "128", "--steps", "20", "--warmup", "3"]
    steps.append(Step("finetune", ft, 120 if tiny else 40, js("finetune")))
    # the CUDA-graph replay against eager training (tests/test_gpu_suite.py; on the CPU only
    # the fallback test runs, the GPU one is skipped)
    steps.append(Step("graphs", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 str(ROOT / "tests" / "test_gpu_suite.py"), "-k", "cuda_graphs"],
                      120 if tiny else 20))
    only = set(args.only.split(","))
    return [s for s in steps if s.name in only]


def run_step(step: Step, env: dict[str, str], log, budget_s: float) -> StepRecord:  # noqa: ANN001
    """Run one step as a subprocess (its own process group) under ``budget_s`` seconds.

    Its output goes to ``log``; a non-zero exit or a timeout is recorded with the output's
    last lines, never raised, so that the next step still runs.
    """
    log.write(f"\n===== {step.name}: {' '.join(step.argv)} (budget {budget_s:.0f} s)\n")
    log.flush()
    t0 = time.perf_counter()
    proc = subprocess.Popen(step.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, cwd=ROOT, start_new_session=True, text=True)
    status = "ok"
    try:
        output, _ = proc.communicate(timeout=budget_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        status = "timeout"
    seconds = time.perf_counter() - t0
    log.write(output)
    log.flush()
    tail = "\n".join(output.strip().splitlines()[-8:])
    error = None
    if status == "timeout":
        error = f"killed after its budget of {budget_s:.0f} s; last output:\n{tail}"
    elif proc.returncode != 0:
        status, error = "failed", f"exit status {proc.returncode}; last output:\n{tail}"
    elif step.json_path and not Path(step.json_path).exists():
        status, error = "failed", f"exited 0 but wrote no {step.json_path}; last output:\n{tail}"
    log.write(f"===== {step.name}: {status} in {seconds:.1f} s\n")
    log.flush()
    return StepRecord(step.name, status, round(seconds, 1), proc.returncode, error,
                      step.json_path if status == "ok" else None, step.argv)


def step_env(site: Path | None) -> dict[str, str]:
    """The steps' environment: the install site and the repository root first on the path."""
    env = dict(os.environ)
    parts = ([str(site)] if site else []) + [str(ROOT)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def install_carried(carry: Path, site: Path) -> None:
    """Install ``carry/wheels/*.whl`` (no index, no deps) and unpack ``*.tar.xz`` into ``site``."""
    wheels = sorted((carry / "wheels").glob("*.whl"))
    packed = sorted((carry / "wheels").glob("*.tar.xz"))
    if not wheels and not packed:
        raise SystemExit(f"{carry}/wheels holds no .whl or .tar.xz: run benchmarks/build_wheels.sh "
                         "here and carry the folder")
    site.mkdir(parents=True, exist_ok=True)
    (site / ".installed").unlink(missing_ok=True)  # marks a complete install: later steps use it
    t0 = time.perf_counter()
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site),
                        *map(str, wheels)], check=True)
    for archive in packed:  # a wheel's unpacked tree, xz-compressed (build_wheels.sh says why)
        with tarfile.open(archive, "r:xz") as tar:
            tar.extractall(site, filter="data")
    print(f"installed {len(wheels)} wheel(s) and {len(packed)} packed tree(s) into {site} in "
          f"{time.perf_counter() - t0:.1f} s")
    check = ("import open_clip, polars, ftfy, h5py, featcache, pipelines, heads; "
             "print('open_clip', open_clip.__version__, '| polars', polars.__version__, "
             "'| featcache from', featcache.__file__)")
    subprocess.run([sys.executable, "-c", check], check=True, env=step_env(site))
    (site / ".installed").write_text(f"{len(wheels)} wheels, {len(packed)} packed\n")


def ham_subset(src: Path, dst: Path, n: int, min_per_class: int = 2) -> int:
    """Copy about ``n`` HAM10000 images, evenly spaced within each class (``dx``) so the class
    mix stays the data set's and every class keeps at least ``min_per_class``, with the
    matching rows of ``HAM10000_metadata.csv``, into ``dst``; return the images copied.

    The whole folder is 55 MB and the device tool carries 64 MiB with the wheels, so the GPU
    run reads a subset (build_wheels.sh); the tiny rehearsal reads a small one.
    """
    lines = (src / "HAM10000_metadata.csv").read_text().splitlines()
    header, rows = lines[0], [r for r in lines[1:] if r.strip()]
    cols = header.split(",")
    col, dx = cols.index("image_id"), cols.index("dx")
    by_class: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_class.setdefault(row.split(",")[dx], []).append(i)
    keep: list[int] = []
    for members in by_class.values():
        k = min(len(members), max(min_per_class, round(n * len(members) / len(rows))))
        keep += [members[(j * len(members)) // k] for j in range(k)]
    kept = [rows[i] for i in sorted(keep)]
    (dst / "images").mkdir(parents=True, exist_ok=True)
    for row in kept:
        name = row.split(",")[col] + ".jpg"
        shutil.copyfile(src / "images" / name, dst / "images" / name)
    (dst / "HAM10000_metadata.csv").write_text("\n".join([header, *kept]) + "\n")
    return len(kept)


# ---------------------------------------------------------------- the §6 goals


@dataclass
class Goal:
    """One DESIGN.md §6 goal: ``ratio`` ≥ 1 means met (None: unmeasured)."""

    goal: str
    target: str
    measured: str = "unmeasured"
    ratio: float | None = None
    note: str = ""


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def goals(out: Path) -> list[Goal]:
    """Every §6 goal with its figure from the JSON files in ``out`` (ratio ≥ 1: met)."""
    ex, hd, gr, ft = (_load(out / f"{n}.json") for n in ("extract", "heads", "grid", "finetune"))
    rows: list[Goal] = []
    res = (ex or {}).get("results", {})
    arrays = res.get("featcache arrays")
    g = Goal("extraction from arrays, ViT-B/16, one GPU", "≥ 8,000 img/s")
    if arrays:
        g.measured, g.ratio = f"{arrays['img_per_s']:,.0f} img/s", arrays["img_per_s"] / 8000
        g.note = (f"input wait {arrays['input_wait']:.0%}" if arrays.get("input_wait") is not None else "")
    rows.append(g)
    g = Goal("extraction from arrays vs model alone (same run)", "≥ 80 %")
    if arrays and "frac_model_only" in arrays:
        g.measured, g.ratio = f"{arrays['frac_model_only']:.0%}", arrays["frac_model_only"] / 0.8
    rows.append(g)
    g = Goal("extraction from arrays vs the plain way (same run)", "≥ 8×")
    if arrays and "x_plain" in arrays:
        g.measured, g.ratio = f"{arrays['x_plain']:.2f}×", arrays["x_plain"] / 8
    rows.append(g)
    jpeg = {k: v for k, v in res.items() if k.startswith("featcache JPEG") and "TTE" not in k}
    g = Goal("extraction from the HAM10000 JPEGs", "≥ 4,000 img/s")
    if jpeg:
        best = max(jpeg, key=lambda k: jpeg[k]["img_per_s"])
        g.measured = f"{jpeg[best]['img_per_s']:,.0f} img/s ({best.removeprefix('featcache JPEG ')})"
        g.ratio = jpeg[best]["img_per_s"] / 4000
        g.note = "; ".join(f"{k.removeprefix('featcache JPEG ')} {v['img_per_s']:,.0f}" for k, v in jpeg.items())
    rows.append(g)
    r0 = (hd or {}).get("rounds", [{}])[0] if hd else {}
    runs = {r["precision"]: r for r in r0.get("featcache", [])}
    anchor = r0.get("straightforward")
    best_p = min(runs, key=lambda p: runs[p]["train_s"]) if runs else None
    g = Goal("TFA-LT full protocol, one GPU (training, as the anchor is timed)", "≤ 5 s")
    if best_p:
        t = runs[best_p]["train_s"]
        g.measured = f"{t:.2f} s ({best_p}; end to end {runs[best_p]['wall_s']:.2f} s)"
        g.ratio = 5 / t
        g.note = "; ".join(f"{p}: {r['train_s']:.2f} s" for p, r in runs.items())
    rows.append(g)
    gpu = bool(hd and hd.get("machine", {}).get("gpu"))
    target_x = 10 if gpu or not hd else 2
    g = Goal("TFA-LT vs the straightforward loop (same run)",
             f"≥ {target_x}×" + ("" if hd else " (GPU; ≥ 2× on 2 CPU cores)"))
    if best_p and anchor and "speedup_train" in runs[best_p]:
        s = runs[best_p]["speedup_train"]
        g.measured, g.ratio = f"{s:.2f}× ({best_p}, training)", s / target_x
        g.note = f"anchor {anchor['train_s']:.2f} s [{Path(str(anchor['source'])).name}]"
    rows.append(g)
    g = Goal("TFA-LT peak GPU memory", "≤ 300 MB")
    if best_p and runs[best_p].get("peak_gpu_mib") is not None:
        mb = runs[best_p]["peak_gpu_mib"] * 2**20 / 1e6
        g.measured, g.ratio = f"{mb:.0f} MB ({best_p})", 300 / max(mb, 1e-9)
    elif best_p:
        g.note = "no GPU in this run"
    rows.append(g)
    g = Goal("grid of 64 head configurations vs one", "≤ 4×")
    if gr:
        g.measured, g.ratio = f"{gr['ratio_vs_grid_one']:.2f}×", 4 / gr["ratio_vs_grid_one"]
        g.note = f"{gr['grid_64_s']:.1f} s vs {gr['one_config_grid_s']:.1f} s; vs train-head {gr['ratio_vs_train_head']:.2f}×"
    rows.append(g)
    ftr = {r["method"]: r for r in (ft or {}).get("results", [])}
    af = ftr.get("adaptformer")
    g = Goal("LIFT AdaptFormer training step, batch 128", "≥ 3,000 img/s")
    if af:
        g.measured, g.ratio = f"{af['images_per_second']:,.0f} img/s", af["images_per_second"] / 3000
    rows.append(g)
    g = Goal("LIFT AdaptFormer vs the public code", "≥ 2.5× (1,223 img/s, §6 H100 figure)")
    if af and "speedup_vs_public" in af:
        g.measured, g.ratio = f"{af['speedup_vs_public']:.2f}×", af["speedup_vs_public"] / 2.5
        g.note = "anchor is §6's H100 figure, not a run of the public code here"
    rows.append(g)
    g = Goal("LIFT AdaptFormer peak memory vs the public code", "≤ ½ × 11.9 GiB")
    if af and af.get("peak_gib") is not None:
        g.measured, g.ratio = f"{af['peak_gib']:.2f} GiB", (11.9 / 2) / af["peak_gib"]
    rows.append(g)
    cl = ftr.get("classifier")
    g = Goal("LIFT classifier-only step (public code: 2,990 img/s)", "from the cache; seconds")
    if cl:
        g.measured = f"{cl['images_per_second']:,.0f} img/s per step"
        g.note = "per-step figure of the frozen-tower path; the cache path is the heads pipeline"
    rows.append(g)
    tiny = (ft or {}).get("model") == "tiny-clip" or (ex or {}).get("args", {}).get("model") == "tiny-clip"
    if tiny or not gpu:
        for row in rows:
            if row.measured != "unmeasured":
                row.note = ("rehearsal (CPU/tiny): no goal figure. " + row.note).strip()
    return rows


def write_summary(out: Path, records: list[StepRecord], args: argparse.Namespace) -> list[Goal]:
    """Write ``summary.json`` and ``summary.md`` (goals table, then the steps) into ``out``."""
    rows = goals(out)
    machine = {"platform": platform.platform(), "python": platform.python_version(),
               "cpus": os.cpu_count(), "device": args.device, "tiny": args.tiny}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        machine["gpu"] = smi.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        machine["gpu"] = None
    doc = {"machine": machine, "steps": [asdict(r) for r in records], "goals": [asdict(g) for g in rows]}
    (out / "summary.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# featcache GPU suite — {'rehearsal (' + args.device + ', tiny)' if args.tiny else args.device}",
             "", f"Machine: {machine['gpu'] or 'no GPU'}; {machine['cpus']} CPUs; Python {machine['python']}.",
             "", "| DESIGN.md §6 goal | target | measured | ratio (≥ 1 met) | note |",
             "| --- | --- | --- | --- | --- |"]
    for g in rows:
        ratio = f"{g.ratio:.2f}" if g.ratio is not None else "unmeasured"
        lines.append(f"| {g.goal} | {g.target} | {g.measured} | {ratio} | {g.note} |")
    lines += ["", "| step | status | seconds | error |", "| --- | --- | --- | --- |"]
    for r in records:
        err = (r.error or "").replace("\n", " ⏎ ").replace("|", "\\|")
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.1f} | {err[:600]} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the planned steps in order under their budgets; write the summary. Exit 0 unless
    nothing ran (a failed step is recorded in the summary, not in the exit status)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--install-into"]:  # the install step, run as a subprocess of the suite
        install_carried(Path(argv[2]), Path(argv[1]))
        return 0
    if argv[:1] == ["--ham-subset"]:  # build_wheels.sh: --ham-subset SRC DST N
        print(f"copied {ham_subset(Path(argv[1]), Path(argv[2]), int(argv[3]))} images to {argv[2]}")
        return 0
    args = parse_args(argv)
    args.argv = argv
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny and not args.dry_run:  # the rehearsal reads a small JPEG subset
            src = Path(args.jpeg_root) if args.jpeg_root else _first_existing(
                Path(args.carry) / "ham10000", ROOT.parent / "shared" / "data" / "ham10000")
            if src is not None:
                ham_subset(src, Path(tmp) / "ham10000", TINY_JPEGS)
                args.jpeg_root = str(Path(tmp) / "ham10000")
        return _run(args, out)


def _run(args: argparse.Namespace, out: Path) -> int:
    steps = plan(args)
    carry_wheels = Path(args.carry) / "wheels"
    site = Path(args.site)
    records: list[StepRecord] = []
    # the steps use the install site when this run installed it, or when the install step is
    # not in the plan (--only) and an earlier run on this machine left a complete one
    site_ok = "install" not in {s.name for s in steps} and (site / ".installed").exists()
    argv = args.argv
    deadline = time.perf_counter() + args.total_budget
    with open(out / "suite.log", "a") as log:
        log.write(f"featcache GPU suite {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n")
        for step in steps:
            left = deadline - time.perf_counter()
            if args.dry_run:
                records.append(StepRecord(step.name, "dry-run", command=step.argv))
                log.write(f"dry run: {step.name} (budget {step.budget_s:.0f} s): {' '.join(step.argv)}\n")
                continue
            if step.name == "install" and not carry_wheels.exists():
                records.append(StepRecord(step.name, "skipped", error=f"no {carry_wheels}: "
                                          "using the packages already importable", command=step.argv))
                site_ok = False
                continue
            if left < 5:
                records.append(StepRecord(step.name, "skipped", error=f"the suite's total budget of "
                                          f"{args.total_budget:.0f} s was spent", command=step.argv))
                continue
            use_site = site if step.name != "install" and site_ok else None
            rec = run_step(step, step_env(use_site), log, min(step.budget_s, left))
            records.append(rec)
            if step.name == "install":
                site_ok = rec.status == "ok"
            print(f"{step.name:9s} {rec.status:8s} {rec.seconds:7.1f} s"
                  + (f"  {rec.error.splitlines()[0]}" if rec.error else ""), flush=True)
    rows = write_summary(out, records, args)
    print((out / "summary.md").read_text())
    print(f"wrote {out}/summary.md ({sum(g.ratio is not None for g in rows)} of {len(rows)} goals measured)")
    return 0 if records else 1


if __name__ == "__main__":
    sys.exit(main())
