"""``auto`` precision is resolved only in featcache/device.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from featcache.device import precision_name, resolve_precision
from featcache.errors import FeatcacheError

REPO = Path(__file__).resolve().parents[1]


def test_auto_is_bf16_on_a_gpu_and_fp32_on_the_cpu() -> None:
    assert precision_name("auto", torch.device("cpu")) == "fp32"
    assert precision_name("auto", torch.device("cuda")) == "bf16"  # a device object needs no GPU
    assert precision_name("fp16", torch.device("cpu")) == "fp16"
    assert resolve_precision("auto", torch.device("cpu")) is torch.float32
    assert resolve_precision("auto", torch.device("cuda")) is torch.bfloat16
    with pytest.raises(FeatcacheError, match="fp32, bf16, fp16, or auto"):
        resolve_precision("fp8", torch.device("cpu"))


def test_no_hand_resolved_auto_outside_device_py() -> None:
    pattern = re.compile(r'(\"bf16\"|torch\.bfloat16) if [^\n]*cuda|!= "auto" else \(')
    found = []
    for folder in ("featcache", "heads", "pipelines"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name == "device.py" and path.parent.name == "featcache":
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not found, "auto precision resolved by hand (use featcache.device.precision_name):\n" + "\n".join(found)
