"""Time the command-line invocations that need no model: how fast ``featcache`` answers.

Each invocation runs in a fresh interpreter (``python -m featcache ...``, as the console
script does), several times; the table shows the median and the fastest wall time, beside
two references on the same machine: a bare interpreter (``python -c pass``) and ``import
torch``, which every invocation paid before the CLI imported heavy libraries lazily. The
load average before and after is printed and written too (the machine is shared).

    PYTHONPATH=$PWD python benchmarks/bench_cli.py [--repeats 5] [--out bench_cli.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cache(folder: Path) -> Path:
    """A tiny synthetic cache for ``featcache info`` (the tests' fixture)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures_cache import make_feature_cache

    return make_feature_cache(folder / "bench.h5", num_classes=5, dim=16)


def _time(argv: list[str], repeats: int, env: dict) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="bench_cli.json", help="JSON file for the figures.")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        cache = _cache(Path(tmp))
        cases = {
            "python -c pass (reference)": [py, "-c", "pass"],
            "python -c 'import torch' (reference)": [py, "-c", "import torch"],
            "featcache --help": [py, "-m", "featcache", "--help"],
            "featcache train-head --help": [py, "-m", "featcache", "train-head", "--help"],
            "featcache grid --help": [py, "-m", "featcache", "grid", "--help"],
            "featcache train-head --cach x (mistyped)": [py, "-m", "featcache", "train-head", "--cach", "x"],
            "featcache datasets": [py, "-m", "featcache", "datasets"],
            "featcache info CACHE": [py, "-m", "featcache", "info", str(cache)],
        }
        load_before = os.getloadavg()
        rows = []
        for name, argv in cases.items():
            times = _time(argv, args.repeats, env)
            rows.append({"invocation": name, "median_s": statistics.median(times), "min_s": min(times),
                         "times_s": times})
        load_after = os.getloadavg()
    width = max(len(r["invocation"]) for r in rows)
    print(f"{'invocation':{width}}  median s  fastest s   ({args.repeats} runs each, {os.cpu_count()} CPUs)")
    for r in rows:
        print(f"{r['invocation']:{width}}  {r['median_s']:8.3f}  {r['min_s']:9.3f}")
    print(f"load average (1, 5, 15 min) before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    doc = {"repeats": args.repeats, "cpus": os.cpu_count(), "python": sys.version.split()[0],
           "load_before": load_before, "load_after": load_after, "rows": rows}
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
