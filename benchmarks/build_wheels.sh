#!/usr/bin/env bash
# Build the folder the GPU suite carries to the device machine (issue 15):
#
#     benchmarks/build_wheels.sh [SHARED] [JPEGS]
#
#   SHARED  the shared folder with anchors/ and data/ham10000 [../shared, else /work/shared]
#   JPEGS   HAM10000 images to carry [4000]
#
# Run it in the repository root of the checkout the device tool sends (the lead's), on a
# machine with PyPI; it writes the git-ignored folder .gpu/:
#
#   .gpu/wheels/     wheels for CPython 3.12, manylinux x86_64, of what the GPU image lacks:
#                    open_clip_torch, ftfy, wcwidth, polars (+ polars-runtime-32, see below),
#                    at the versions installed here (what the tests ran with). Never torch:
#                    the image has torch 2.11 with CUDA, and everything else featcache needs
#                    (h5py, click, regex, rich, tqdm, timm, pyarrow, pillow, scikit-learn,
#                    matplotlib, safetensors, huggingface_hub) is in the image (see
#                    /work/.library/device/KINDS.md's package list).
#   .gpu/anchors/    gpu_anchor.py and head_anchor.py (../shared does not travel)
#   .gpu/ham10000/   every k-th HAM10000 image (~JPEGS of them, the class mix kept) with the
#                    matching rows of HAM10000_metadata.csv
#
# The device tool carries at most 64 MiB (tree + carried folders). polars-runtime-32's wheel
# alone is ~54 MB; its unpacked tree xz-compressed is ~31 MB, so it travels as
# .gpu/wheels/polars_runtime_32-VERSION.tar.xz and gpu_suite.py unpacks it beside the wheels
# (Python's tarfile reads xz; no tool is needed there). The script stops if the total would
# pass 60 MiB. Carry it with `"carry": [".gpu"]`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SHARED=${1:-}
if [[ -z "$SHARED" ]]; then
    for cand in ../shared /work/shared; do [[ -d $cand/anchors ]] && SHARED=$cand && break; done
fi
JPEGS=${2:-4000}
[[ -d "$SHARED/anchors" && -d "$SHARED/data/ham10000" ]] || {
    echo "build_wheels.sh: no anchors/ and data/ham10000 under '$SHARED'; pass the shared folder as the first argument" >&2; exit 2; }
grep -qx '/.gpu/' .gitignore || { echo "build_wheels.sh: .gitignore lacks /.gpu/ (the folder must stay untracked)" >&2; exit 2; }

version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
PKGS=()
for name in open_clip_torch ftfy wcwidth polars polars-runtime-32; do
    PKGS+=("$name==$(version "$name")")
done
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/anchors
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .gpu/wheels "${PKGS[@]}"
# polars-runtime-32: unpack its wheel and xz the tree (see above)
for whl in .gpu/wheels/polars_runtime_32-*.whl; do
    base=$(basename "$whl" | cut -d- -f1-2)
    tmp=$(mktemp -d)
    (cd "$tmp" && unzip -q "$OLDPWD/$whl")
    tar -C "$tmp" -cf - . | xz -9 -T0 > ".gpu/wheels/$base.tar.xz"
    rm -rf "$tmp" "$whl"
done
cp "$SHARED/anchors/gpu_anchor.py" "$SHARED/anchors/head_anchor.py" .gpu/anchors/
"$PY" benchmarks/gpu_suite.py --ham-subset "$SHARED/data/ham10000" .gpu/ham10000 "$JPEGS"

carried=$(du -sb .gpu | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
total=$((carried + tree))
ls -la .gpu/wheels
echo "carried .gpu: $((carried / 1048576)) MiB; tracked tree: $((tree / 1048576)) MiB; total $((total / 1048576)) MiB of the 64 MiB the device tool carries"
if (( total > 60 * 1048576 )); then
    echo "build_wheels.sh: over 60 MiB; pass fewer JPEGS (second argument)" >&2; exit 1
fi
