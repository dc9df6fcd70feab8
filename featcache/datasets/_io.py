"""Small helpers shared by the adapters: picklable image loaders, CSV reading, file indexes.

Loaders are small classes rather than closures so a manifest can be sent to DataLoader
worker processes (they pickle under both ``fork`` and ``spawn``).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from featcache.datasets.base import open_rgb, read_image_bytes
from featcache.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class PathLoader:
    """``loader(i)`` opens ``paths[i]`` fully as RGB (errors name the file, see ``open_rgb``);
    ``loader.read_bytes(i)`` returns its bytes undecoded."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __call__(self, i: int) -> Image.Image:
        return open_rgb(self.paths[i])

    def read_bytes(self, i: int) -> bytes:
        """The undecoded bytes of ``paths[i]`` (for decoding on the device)."""
        return read_image_bytes(self.paths[i])


class ArrayLoader:
    """``loader(i)`` wraps row ``i`` of a ``[N, H, W, C]`` uint8 array (C = 1 grey or 3) as an
    RGB PIL image."""

    def __init__(self, arrays: np.ndarray) -> None:
        self.arrays = arrays

    def __call__(self, i: int) -> Image.Image:
        image = np.ascontiguousarray(self.arrays[i])
        return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file; otherwise a ``DataError`` saying what was expected there."""
    if not path.is_file():
        raise DataError(f"{what} not found: expected the file {path}.")
    return path


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder; otherwise a ``DataError`` saying what was expected there."""
    if not path.is_dir():
        raise DataError(f"{what} not found: expected the folder {path}.")
    return path


def read_csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line_number, row)`` for each data row of a CSV (header = line 1).

    Column names are matched after stripping spaces and a UTF-8 BOM; a missing required
    column, or a row with more cells than the header, raises ``DataError`` naming the file.
    Blank lines are skipped. The file must be UTF-8 (another encoding, such as a Latin-1
    export, is refused naming the line and byte rather than guessed).
    """
    text = read_text_utf8(path, "CSV file")
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"CSV file {path} is empty; expected a header with {', '.join(required)}.") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(
                f"CSV file {path} has no column(s) {', '.join(missing)} "
                f"(header: {', '.join(header)}); expected {', '.join(required)}."
            )
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(header):
                raise DataError(
                    f"{path}, line {reader.line_num}: {len(cells)} cells but the header has "
                    f"{len(header)} columns ({cells!r})."
                )
            cells = cells + [""] * (len(header) - len(cells))
            yield reader.line_num, {h: c.strip() for h, c in zip(header, cells, strict=True)}


def read_text_utf8(path: Path, what: str) -> str:
    """The text of ``path`` decoded as UTF-8 (a BOM dropped); ``DataError`` naming the line and
    the byte when it is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{what} {path} is not UTF-8 text: line {line} has the byte 0x{raw[e.start]:02x} "
            f"({e.reason}). Save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > "
            f"{path.stem}.utf8{path.suffix}` if it is Latin-1."
        ) from None


def check_utf8_names(where: str, **names: list[str]) -> None:
    """Refuse names (``file=[...]``, ``image_id=[...]``, ``class=[...]``) that are not valid
    Unicode: a file name in another encoding decodes to surrogates, which cannot be written
    to the cache's UTF-8 strings."""
    for kind, values in names.items():
        kind = kind.replace("_", " ")
        for k, value in enumerate(values):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise DataError(
                    f"{where}: the {kind} name {value.encode('utf-8', 'surrogateescape')!r} (row {k}) "
                    "is not valid UTF-8; rename the file (for example with `convmv -f latin1 "
                    "-t utf-8`)."
                ) from None


def index_images(root: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> dict[str, list[Path]]:
    """Walk ``root`` once and map each image file's stem to the paths having it (hidden files skipped)."""
    index: dict[str, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            stem, ext = os.path.splitext(name)
            if ext.lower() in extensions:
                index.setdefault(stem, []).append(Path(dirpath) / name)
    return index


def list_images(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder`` (hidden files and folders skipped), sorted by path."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(
            Path(dirpath) / n
            for n in filenames
            if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
        )
    return sorted(found)


def missing_files_error(what: str, missing: list[tuple[str, str]], total: int) -> DataError:
    """A ``DataError`` listing the first few ``(where, path)`` pairs of missing image files."""
    shown = "; ".join(f"{where}: {path}" for where, path in missing[:5])
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    return DataError(
        f"{len(missing)} of {total} images listed in {what} have no image file: {shown}{more}."
    )


def readable(class_id: str) -> str:
    """A folder or label name made readable for prompts: ``basal_cell_carcinoma`` -> ``basal cell carcinoma``."""
    return class_id.replace("_", " ").strip()


def as_bool(value: object, option: str) -> bool:
    """An option given as ``True``/``False`` or as text from the command line (``false``, ``0``, ``no``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise DataError(f"Option {option} must be true or false, got '{value}'.")


def lift_groups(train_counts: np.ndarray, class_ids: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """LIFT's class groups from training counts: many > 100, medium 20-100, few < 20 images."""
    counts = np.asarray(train_counts)
    return {
        "many": tuple(c for c, n in zip(class_ids, counts, strict=True) if n > 100),
        "medium": tuple(c for c, n in zip(class_ids, counts, strict=True) if 20 <= n <= 100),
        "few": tuple(c for c, n in zip(class_ids, counts, strict=True) if n < 20),
    }
