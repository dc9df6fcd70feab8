#!/usr/bin/env bash
# The GPU suite in one call (issue 15): see benchmarks/gpu_suite.py and BENCHMARKS.md.
#
#     benchmarks/gpu_suite.sh OUT [gpu_suite.py options]      # on the GPU machine
#     benchmarks/gpu_suite.sh OUT --device cpu --tiny         # the rehearsal, here
#
# Step 1 installs the wheels carried in .gpu/wheels (built here by benchmarks/build_wheels.sh)
# with pip --no-index into /tmp/featcache-gpu-site; the benchmarks follow, each under its own
# time budget, and OUT receives one JSON per benchmark, suite.log and summary.md.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/gpu_suite.py "$@"
