"""Decoding image files on the extraction device (``featcache extract --decoder device``).

DataLoader workers only read each file's bytes; JPEGs are decoded where the model runs —
with nvJPEG on a GPU, one batched call per batch — and resized and cropped there
(:meth:`featcache.preprocess.Preprocessing.views_of_images`). Other formats (PNG, TIFF, …)
are decoded by PIL in the workers and resized on the device the same way.

The JPEG decoder is TorchCodec's when it is installed (the successor of torchvision's image
decoders, which torchvision 0.29 deprecates), else ``torchvision.io``'s. On the CPU both run
libjpeg-turbo and give PIL's pixels exactly; nvJPEG's may differ by a level.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from featcache.datasets.base import Manifest, check_image_size, decode_rgb
from featcache.errors import DataError, FeatcacheError
from featcache.preprocess import pil_to_uint8

JPEG_MAGIC = b"\xff\xd8\xff"
JpegDecoder = Callable[[list[torch.Tensor] | torch.Tensor, torch.device], list[torch.Tensor] | torch.Tensor]


def jpeg_decoder(device: torch.device, prefer: str | None = None) -> tuple[str, JpegDecoder]:
    """(library name, decode(bytes tensor(s), device) -> RGB uint8 [3, H, W] tensor(s)).

    Each candidate is first tried on a small JPEG on ``device`` — a TorchCodec built without
    CUDA, say, is passed over for torchvision's — and a clear error says when neither can
    decode there. ``prefer="torchvision"`` skips TorchCodec (tests use it to cover both).
    """
    probe = _probe_jpeg()
    failures = []
    for name, make in _CANDIDATES.items():
        if prefer == "torchvision" and name == "torchcodec":
            continue
        try:
            decode = make()
            decode(probe, device)
        except Exception as e:  # absent, built for another torch (an ABI error) or no CUDA decoder
            failures.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        return name, decode
    raise FeatcacheError(
        f"--decoder device found no JPEG decoder that runs on {device} ({'; '.join(failures)}). "
        "Use --decoder pil, or install torchcodec / a torchvision built for this device."
    )


def _torchcodec() -> JpegDecoder:
    from torchcodec.decoders import decode_jpeg

    return lambda data, device: decode_jpeg(data, mode="RGB", device=device)


def _torchvision() -> JpegDecoder:
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(data: list[torch.Tensor] | torch.Tensor, device: torch.device) -> list[torch.Tensor] | torch.Tensor:
        with warnings.catch_warnings():  # deprecated since torchvision 0.29, still correct
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    return decode


_CANDIDATES: dict[str, Callable[[], JpegDecoder]] = {"torchcodec": _torchcodec, "torchvision": _torchvision}


def _probe_jpeg() -> torch.Tensor:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buf, "JPEG")
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


class FileBytes(Dataset):
    """Row i -> (i, payload, is_jpeg, error text).

    JPEG files travel as their bytes (1-D uint8); other formats are decoded here by PIL to
    uint8 [3, H, W]. A missing, empty or (non-JPEG) unreadable file gives its error text.
    """

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, bool, str]:
        try:
            data = self.manifest.read_bytes(i)
            if data.startswith(JPEG_MAGIC):
                check_image_size(data, self.manifest.sources[i])  # PIL's pixel limit, from the header
                return i, torch.frombuffer(bytearray(data), dtype=torch.uint8), True, ""
            return i, pil_to_uint8(decode_rgb(data, self.manifest.sources[i])), False, ""
        except DataError as e:
            return i, torch.empty(0, dtype=torch.uint8), False, str(e)


def collate_file_bytes(batch: list) -> tuple[torch.Tensor, list[torch.Tensor], list[bool], list[str]]:
    """Rows as a tensor; payloads (of different lengths and shapes) stay a list."""
    rows, payloads, is_jpeg, errs = zip(*batch, strict=True)
    return torch.tensor(rows), list(payloads), list(is_jpeg), list(errs)


def decode_on_device(
    decode: JpegDecoder,
    payloads: list[torch.Tensor],
    is_jpeg: list[bool],
    sources: list[str],
    errs: list[str],
    device: torch.device,
) -> list[torch.Tensor]:
    """A batch of :class:`FileBytes` payloads -> uint8 [3, H, W] images on ``device``.

    The JPEGs are decoded in one call; when that call fails (one bad file fails it all) they
    are decoded one by one, and an image the device decoder rejects is retried with PIL, so
    only files PIL cannot read either become errors (written into ``errs``, naming the file).
    Failed rows get a small blank image: they are recorded as skipped, or stop the run.
    """
    images: list[torch.Tensor | None] = [None] * len(payloads)
    jpegs = [k for k, j in enumerate(is_jpeg) if j and not errs[k]]
    if jpegs:
        try:
            decoded = list(decode([payloads[k] for k in jpegs], device))
        except RuntimeError:
            decoded = [_decode_one(decode, payloads[k], sources[k], device) for k in jpegs]
        for k, im in zip(jpegs, decoded, strict=True):
            if isinstance(im, str):
                errs[k] = im
            else:
                images[k] = im
    blank = torch.zeros(3, 8, 8, dtype=torch.uint8, device=device)
    out = []
    for k, payload in enumerate(payloads):
        if images[k] is None and not errs[k]:  # decoded by PIL in the worker
            images[k] = payload.to(device, non_blocking=True)
        out.append(blank if images[k] is None else images[k])
    return out


def _decode_one(decode: JpegDecoder, data: torch.Tensor, source: str, device: torch.device) -> torch.Tensor | str:
    """One JPEG on the device, else with PIL; the error text when neither can read it."""
    try:
        return decode(data, device)
    except RuntimeError:
        try:
            return pil_to_uint8(decode_rgb(data.numpy().tobytes(), source)).to(device)
        except DataError as e:
            return str(e)
