"""Device and precision, resolved in one place.

``--device auto|cpu|cuda`` and ``--precision fp32|bf16|fp16`` become a ``torch.device``
and an autocast context. Nothing else in featcache calls ``.cuda()``.

torch is imported on first use, so the CLI can name the choices (``DEVICES``,
``PRECISIONS``) in its options without loading torch (``featcache --help`` stays fast).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from featcache.errors import FeatcacheError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")


def __getattr__(name: str) -> Any:  # noqa: ANN401 - DTYPES, built when first asked for
    if name == "DTYPES":
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    raise AttributeError(f"module 'featcache.device' has no attribute {name!r}")


def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a device; ``auto`` picks CUDA when present.

    Under torchrun (``LOCAL_RANK`` set), ``cuda`` and ``auto`` pick this rank's GPU.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FeatcacheError(
                f"--device {device} was asked for, but torch sees no CUDA GPU "
                f"(torch {torch.__version__}). Use --device cpu or --device auto."
            )
        if device == "cuda" and "LOCAL_RANK" in os.environ:
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        return torch.device(device)
    if device != "cpu":
        raise FeatcacheError(f"Unknown device '{device}'. Choose from: {', '.join(DEVICES)}.")
    return torch.device("cpu")


def precision_name(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on a GPU, ``fp32`` on the CPU; any other name is returned as is.

    The one place ``auto`` is resolved (extraction, ``finetune`` and the MedMNIST benchmark's
    fine-tuning all ask here)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """Map ``auto|fp32|bf16|fp16`` to a dtype (``auto``: :func:`precision_name`); half
    precisions need a GPU (fp16 on CPU is refused)."""
    precision = precision_name(precision, device)
    if precision not in PRECISIONS:
        raise FeatcacheError(
            f"Unknown precision '{precision}'. Choose from: {', '.join(PRECISIONS)}, or auto "
            "(bf16 on a GPU, fp32 on the CPU)."
        )
    if precision == "fp16" and device.type == "cpu":
        raise FeatcacheError("--precision fp16 needs a GPU; use fp32 or bf16 on the CPU.")
    return __getattr__("DTYPES")[precision]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Autocast to ``dtype`` when it is a half type, a no-op for fp32."""
    import torch

    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (for honest timings); a no-op on the CPU."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
