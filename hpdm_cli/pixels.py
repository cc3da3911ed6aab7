"""The one pixel convention: uint8 values 0-255 on disk, in datasets and in written videos; floats in [-1, 1] in
the model (the EDM data range, scaled per level by the input scales of docs/method.md).

`unit_from_uint8` and `uint8_from_unit` convert elementwise (x / 127.5 - 1, and back clamped and rounded);
callers lay the axes out as they need them.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["unit_from_uint8", "uint8_from_unit"]


def unit_from_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixel values as float32 in [-1, 1] (x / 127.5 - 1), a new tensor of x's shape and device."""
    return x.to(torch.float32, copy=True).div_(127.5).sub_(1.0)


def uint8_from_unit(x):
    """Floats in [-1, 1] (a tensor or an array) as uint8 pixel values: clamped, (x + 1) * 127.5, rounded."""
    if isinstance(x, np.ndarray):
        return ((np.clip(x, -1, 1) + 1) * 127.5).round().astype(np.uint8)
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
