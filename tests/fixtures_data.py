"""Tiny, fast writers of every real data set layout, for tests (import from any test file).

Each ``write_*`` function writes one layout under ``root`` (usually pytest's ``tmp_path``)
exactly as the real data set ships it, with a few tiny images per class, and returns what
a test needs to check the adapter (the root, and where useful the expected labels). Images
are small solid-colour squares (8x8 by default) so a fixture writes in milliseconds; every
class gets its own colour. ``write_truncated_jpeg`` and ``write_empty_file`` make broken
image files for error tests.

Usage::

    from fixtures_data import write_ham10000
    root = write_ham10000(tmp_path, {"nv": 5, "mel": 2})
    manifest = build_manifest("isic2018", root)
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

ISIC_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
HAM_DX = ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")  # same order as ISIC_CLASSES

_PALETTE = np.array(
    [[220, 30, 30], [30, 200, 60], [30, 60, 220], [230, 210, 30], [210, 30, 210], [30, 210, 210], [240, 130, 20]],
    dtype=np.uint8,
)


def colour(k: int) -> tuple[int, int, int]:
    """A distinct RGB colour for class ``k`` (cycles, shifted so repeats differ)."""
    rgb = _PALETTE[k % len(_PALETTE)].astype(int) - 40 * (k // len(_PALETTE))
    return tuple(int(v) for v in np.clip(rgb, 0, 255))


_ENCODED: dict[tuple, bytes] = {}


def image_bytes(k: int, fmt: str = "PNG", size: int = 8) -> bytes:
    """The encoded bytes of a ``size`` x ``size`` image of colour ``colour(k)`` (cached)."""
    key = (k, fmt.upper(), size)
    if key not in _ENCODED:
        buf = io.BytesIO()
        Image.new("RGB", (size, size), colour(k)).save(buf, format=fmt)
        _ENCODED[key] = buf.getvalue()
    return _ENCODED[key]


def write_image(path: Path, k: int = 0, size: int = 8) -> Path:
    """Write a small solid-colour image of class colour ``k``; the format follows the suffix."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}[
        path.suffix.lower()
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(k, fmt, size))
    return path


def write_truncated_jpeg(path: Path) -> Path:
    """Write a JPEG cut off half way (a real 64x64 image, so the cut lands in the scan data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_empty_file(path: Path) -> Path:
    """Write a zero-byte file (an image that failed to download)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _isic_ids(counts: dict[str, int], order: tuple[str, ...]) -> list[tuple[str, int]]:
    """``(ISIC_00xxxxx, class index)`` for each image, classes interleaved as in the real file."""
    labels = [order.index(c) for c in order for _ in range(counts.get(c, 0))]
    unknown = set(counts) - set(order)
    if unknown:
        raise ValueError(f"unknown classes {unknown}; expected {order}")
    return [(f"ISIC_{24306 + i:07d}", k) for i, k in enumerate(labels)]


def write_isic_official(root: Path, counts: dict[str, int] | None = None) -> Path:
    """ISIC2018 Task 3 official layout: Input/*.jpg + GroundTruth CSV (one-hot floats).

    ``counts`` maps class ids (``MEL``...) to images; default 3 NV, 2 MEL and 1 of every other.
    Returns ``root``.
    """
    counts = counts or {"NV": 3, "MEL": 2, "BCC": 1, "AKIEC": 1, "BKL": 1, "DF": 1, "VASC": 1}
    images = root / "ISIC2018_Task3_Training_Input"
    truth = root / "ISIC2018_Task3_Training_GroundTruth"
    truth.mkdir(parents=True, exist_ok=True)
    lines = ["image," + ",".join(ISIC_CLASSES)]
    for image_id, k in _isic_ids(counts, ISIC_CLASSES):
        write_image(images / f"{image_id}.jpg", k)
        lines.append(image_id + "," + ",".join("1.0" if j == k else "0.0" for j in range(7)))
    (images / "LICENSE.txt").write_text("CC BY-NC 4.0\n")  # the real folder has non-image files
    (truth / "ISIC2018_Task3_Training_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    return root


def write_ham10000(
    root: Path,
    counts: dict[str, int] | None = None,
    parts: tuple[str, ...] = ("HAM10000_images_part_1", "HAM10000_images_part_2"),
) -> Path:
    """HAM10000 layout: ``HAM10000_metadata.csv`` + ``<image_id>.jpg`` spread over ``parts`` folders.

    ``counts`` maps lowercase ``dx`` values to images (default 3 nv, 2 mel, 1 of every other).
    Returns ``root``.
    """
    counts = counts or {"nv": 3, "mel": 2, "bcc": 1, "akiec": 1, "bkl": 1, "df": 1, "vasc": 1}
    root.mkdir(parents=True, exist_ok=True)
    lines = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    for i, (image_id, k) in enumerate(_isic_ids(counts, HAM_DX)):
        write_image(root / parts[i % len(parts)] / f"{image_id}.jpg", k)
        lines.append(f"HAM_{i:07d},{image_id},{HAM_DX[k]},histo,50.0,male,back")
    (root / "HAM10000_metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def write_aptos(root: Path, counts: tuple[int, ...] = (4, 2, 3, 1, 1)) -> Path:
    """APTOS 2019 layout: ``train.csv`` (id_code,diagnosis) + ``train_images/<id_code>.png``.

    ``counts[g]`` images of grade ``g``. Returns ``root``.
    """
    lines = ["id_code,diagnosis"]
    i = 0
    for grade, n in enumerate(counts):
        for _ in range(n):
            id_code = f"{i:012x}"
            write_image(root / "train_images" / f"{id_code}.png", grade)
            lines.append(f"{id_code},{grade}")
            i += 1
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def write_medmnist(
    root: Path,
    subset: str = "pneumoniamnist",
    *,
    num_classes: int = 2,
    sizes: tuple[int, int, int] = (6, 3, 4),
    size: int = 28,
    rgb: bool = False,
    multi_label: bool = False,
    flat_labels: bool = False,
    filename: str | None = None,
    seed: int = 0,
) -> tuple[Path, dict[str, np.ndarray]]:
    """A MedMNIST npz: ``{train,val,test}_{images,labels}`` with ``sizes`` images per split.

    Images are ``[N, size, size]`` grey (or ``[N, size, size, 3]`` with ``rgb``), uint8;
    labels ``[N, 1]`` (``[N]`` with ``flat_labels``; ``[N, num_classes]`` 0/1 with
    ``multi_label``), every class present in train. The file is ``<subset>.npz`` for size 28,
    else ``<subset>_<size>.npz`` (or ``filename``). Returns the path and the arrays written.
    """
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        shape = (n, size, size, 3) if rgb else (n, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        if multi_label:
            labels = (rng.random((n, num_classes)) < 0.3).astype(np.uint8)
        else:
            labels = (np.arange(n) % num_classes).astype(np.uint8)
            labels = labels if flat_labels else labels[:, None]
        arrays[f"{split}_labels"] = labels
    name = filename or (f"{subset}.npz" if size == 28 else f"{subset}_{size}.npz")
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    np.savez_compressed(path, **arrays)
    return path, arrays


def write_folder(
    root: Path,
    counts: dict[str, int] | None = None,
    *,
    splits: dict[str, dict[str, int]] | None = None,
    ext: str = ".png",
) -> Path:
    """ImageFolder layout ``root/<class>/<k>.png``, or ``root/<split>/<class>/`` with ``splits``.

    ``counts`` maps class folder names to images (default three classes, 3/2/1 images);
    ``splits`` maps split folder names to such counts. Returns ``root``.
    """
    layout = splits or {"": counts or {"benign_lesion": 3, "malignant": 2, "normal": 1}}
    for split, per_class in layout.items():
        for k, (name, n) in enumerate(sorted(per_class.items())):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write_image(folder / f"{name}_{i}{ext}", k)
    return root


def write_csv_list(root: Path, rows: list[dict[str, str]] | None = None, name: str = "labels.csv") -> Path:
    """A CSV list (``path,label[,split][,id]``) plus the images it names, under ``root``.

    ``rows`` default to six images in ``images/`` over three classes with a train/test
    split; image files are written for every row's ``path`` (relative to ``root``) unless
    the row has ``"_no_file": "1"``. Returns the CSV's path.
    """
    rows = rows or [
        {"path": f"images/{i}.png", "label": label, "split": split}
        for i, (label, split) in enumerate(
            [("cyst", "train"), ("cyst", "train"), ("tumour", "train"), ("normal", "train"), ("cyst", "test"), ("tumour", "test")]
        )
    ]
    columns = [c for c in ("path", "label", "split", "id") if any(c in r for r in rows)]
    labels = sorted({r.get("label", "") for r in rows})
    lines = [",".join(columns)]
    for r in rows:
        if r.get("path") and not r.get("_no_file"):
            write_image(root / r["path"], labels.index(r.get("label", "")))
        cells = [r.get(c, "") for c in columns]
        lines.append(",".join(f'"{c}"' if "," in c else c for c in cells))
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


def write_cifar100(root: Path, train_per_class: int = 30, test_per_class: int = 2, seed: int = 0) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` pickles in the official format (latin1 dicts).

    ``train_per_class`` random 32x32 images per fine class (the real set has 500), shuffled
    class order as in the real file. Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(100), per_class))
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        entry = {
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
            "batch_label": f"{name} batch",
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            "data": data,
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    meta = {"fine_label_names": [f"fine_{c:02d}" for c in range(100)], "coarse_label_names": [f"coarse_{c}" for c in range(20)]}
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f)
    return root


def write_lt_lists(
    root: Path,
    prefix: str = "ImageNet_LT",
    counts: dict[str, tuple[int, ...]] | None = None,
    *,
    classnames: list[str] | None = None,
) -> Path:
    """ImageNet-LT / Places-LT layout: ``<prefix>_{split}.txt`` ('path label' lines) + images.

    ``counts[split][c]`` images of class ``c`` (default train (5, 3, 1), val (1, 1, 1),
    test (2, 2, 2)); images go to ``root/<split>/c<c>/<k>.jpg``. ``classnames`` writes a
    LIFT-style ``classnames.txt`` (``n0000000c <name>``). Returns ``root``.
    """
    counts = counts or {"train": (5, 3, 1), "val": (1, 1, 1), "test": (2, 2, 2)}
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in counts.items():
        lines = []
        for c, n in enumerate(per_class):
            for k in range(n):
                rel = f"{split}/c{c}/{k}.jpg"
                write_image(root / rel, c)
                lines.append(f"{rel} {c}")
        (root / f"{prefix}_{split}.txt").write_text("\n".join(lines) + "\n")
    if classnames is not None:
        (root / "classnames.txt").write_text("".join(f"n{c:08d} {n}\n" for c, n in enumerate(classnames)))
    return root


def write_inat2018(
    root: Path, train: tuple[int, ...] = (4, 2, 1), val: tuple[int, ...] = (1, 1, 1), first_category: int = 10
) -> Path:
    """iNaturalist 2018 layout: ``train2018.json`` / ``val2018.json`` (COCO style) + images.

    Category ids start at ``first_category`` (so tests see ids remapped to 0..C-1); images go
    to ``root/train_val2018/<category>/<k>.jpg``. Returns ``root``.
    """
    categories = [{"id": first_category + c, "name": f"Species {c}", "supercategory": "Plantae"} for c in range(len(train))]
    image_id = 1000
    for filename, per_class in (("train2018.json", train), ("val2018.json", val)):
        images, annotations = [], []
        for c, n in enumerate(per_class):
            for _ in range(n):
                rel = f"train_val2018/Plantae/{first_category + c}/{image_id}.jpg"
                write_image(root / rel, c)
                images.append({"id": image_id, "file_name": rel, "width": 8, "height": 8})
                annotations.append({"id": image_id, "image_id": image_id, "category_id": first_category + c})
                image_id += 1
        (root / filename).write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root
