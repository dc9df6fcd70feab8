"""Time how fast the command line answers when it has nothing heavy to do (issue 16).

Runs each command line below in a fresh interpreter ``--repeat`` times and prints the median
and the fastest wall time, and whether torch was imported: ``featcache --help``, the two
biggest commands' ``--help``, a misspelt option and a wrong ``--loss`` (both refused by click
before any pipeline is imported). With ``--json FILE`` it also writes the figures there.

    PYTHONPATH=$PWD python benchmarks/bench_cli_help.py [--repeat 5] [--json cli_help.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CASES = {
    "featcache --help": ["--help"],
    "train-head --help": ["train-head", "--help"],
    "grid --help": ["grid", "--help"],
    "misspelt option": ["train-head", "--cach", "c.h5"],
    "wrong --loss": ["train-head", "--cache", "c.h5", "--loss", "focl"],
}

# Runs the CLI in-process, then reports whether torch got imported (on stderr's last line).
_PROBE = ("import sys\nfrom featcache.cli import main\ntry:\n    main(sys.argv[1:])\n"
          "except SystemExit:\n    pass\nsys.stderr.write(f\"\\nTORCH {'torch' in sys.modules}\\n\")\n")


def main() -> None:
    """Time every case and print a table (and write JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    rows = {}
    for name, argv in CASES.items():
        times, torch_loaded = [], None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True,
                                 env={**os.environ, "COLUMNS": "80"})
            times.append(time.perf_counter() - t0)
            torch_loaded = res.stderr.rstrip().endswith("TORCH True")
        rows[name] = {"median_s": statistics.median(times), "min_s": min(times), "torch_imported": torch_loaded}
        print(f"{name:20s} median {rows[name]['median_s']:6.3f} s  min {rows[name]['min_s']:6.3f} s  "
              f"torch imported: {torch_loaded}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"load average (1 min): {load}, CPUs: {os.cpu_count()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cases": rows, "repeat": args.repeat, "load_avg_1min": load, "cpus": os.cpu_count(),
                       "python": sys.version.split()[0]}, f, indent=2)
        print(f"Wrote {args.json}")


if __name__ == "__main__":
    main()
