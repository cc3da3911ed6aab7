"""Benchmark-only peer packages installed from wheels carried in the checkout, and shared helpers.

The GPU host has no internet, so the peers the benchmarks time (`rin-pytorch`,
`video-diffusion-pytorch`) and their few missing dependencies travel as wheels in a gitignored
folder of the checkout (default `out/gpu/whl`, staged by `bash benchmarks/stage_wheels.sh`).
`ensure_wheels` installs only the wheels of modules that cannot be imported yet, with
`pip --no-index --no-deps --target` into a scratch folder (never into the environment itself), and
puts that folder on `sys.path` and on `PYTHONPATH` for worker processes.

`import_peer_module` imports a peer's model module. Both peers' modules import `torchvision` at
the top for their trainers' image transforms only (the model classes never touch it); where
`torchvision` cannot be imported (a CPU development machine whose torch does not match the
CUDA build of the torchvision wheel), an inert stand-in takes its place and the result says so.
The GPU host has a matching torchvision, so there nothing is stood in for.

Neither these packages nor this file are used by `hpdm_cli`; they are no runtime dependencies.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path

DEFAULT_WHEELS = "out/gpu/whl"

# Module imported by a peer -> the distribution whose wheel provides it.
RIN_MODULES = {"rin_pytorch": "rin-pytorch", "beartype": "beartype", "ema_pytorch": "ema-pytorch",
               "accelerate": "accelerate", "PIL": "pillow", "tqdm": "tqdm", "einops": "einops",
               "packaging": "packaging"}
VDP_MODULES = {"video_diffusion_pytorch": "video-diffusion-pytorch", "einops_exts": "einops-exts",
               "rotary_embedding_torch": "rotary-embedding-torch", "PIL": "pillow", "tqdm": "tqdm",
               "einops": "einops"}
# Imported by the peers' modules for their trainers only.
TRAINER_ONLY = ("torchvision",)


class CarriedError(RuntimeError):
    """A peer package is missing and no carried wheel provides it."""


def _norm(name: str) -> str:
    """A distribution name in PEP 503 normal form with underscores (the form wheel file names use)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def site_dir() -> Path:
    """The scratch folder carried wheels are installed into (HPDM_BENCH_SITE, else a folder in the temp dir)."""
    return Path(os.environ.get("HPDM_BENCH_SITE") or Path(tempfile.gettempdir()) / "hpdm-bench-site")


def _use_site(site: Path) -> None:
    """Put `site` first on sys.path and on PYTHONPATH (for worker processes), once."""
    s = str(site)
    if s not in sys.path:
        sys.path.insert(0, s)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if s not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([s, *parts])
    importlib.invalidate_caches()


def wheels_for(dists, wheel_dir: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """The wheels in `wheel_dir` providing `dists`, and the distributions none provides."""
    folder = Path(wheel_dir)
    found = {}
    for w in sorted(folder.glob("*.whl")) if folder.is_dir() else []:
        found.setdefault(_norm(w.name.split("-")[0]), w)
    wheels, missing = [], []
    for d in dict.fromkeys(dists):
        (wheels.append(found[_norm(d)]) if _norm(d) in found else missing.append(d))
    return wheels, missing


def ensure_wheels(modules: dict, wheel_dir: str | os.PathLike = DEFAULT_WHEELS) -> list[str]:
    """Make `modules` importable, installing carried wheels of the missing ones; returns the wheels installed."""
    site = site_dir()
    if site.is_dir():
        _use_site(site)
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if not absent:
        return []
    wheels, missing = wheels_for([modules[m] for m in absent], wheel_dir)
    if missing:
        raise CarriedError(f"{', '.join(missing)} not installed and no wheel of it in {wheel_dir}: stage the "
                           "wheels with `bash benchmarks/stage_wheels.sh` (or pass --wheels DIR)")
    site.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
                    *map(str, wheels)], check=True)
    _use_site(site)
    still = [m for m in absent if importlib.util.find_spec(m) is None]
    if still:
        raise CarriedError(f"installed {[w.name for w in wheels]} into {site} but {', '.join(still)} still "
                           "cannot be found")
    return [w.name for w in wheels]


class _StandIn(types.ModuleType):
    """An inert stand-in for a package a peer imports but whose model classes never use."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StandIn(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        return _StandIn(f"{self.__name__}()")


def import_peer_module(name: str, trainer_only=TRAINER_ONLY) -> tuple[types.ModuleType, list[str]]:
    """Import a peer's model module; returns it and the trainer-only packages replaced by stand-ins."""
    stood_in = []
    for pkg in trainer_only:
        if pkg in sys.modules and not isinstance(sys.modules[pkg], _StandIn):
            continue
        try:
            importlib.import_module(pkg)
        except Exception:                                                  # absent, or built for another torch
            for key in [k for k in sys.modules if k == pkg or k.startswith(pkg + ".")]:
                del sys.modules[key]
            sys.modules[pkg] = _StandIn(pkg)
            stood_in.append(pkg)
    return importlib.import_module(name), stood_in


def step_flops(counts: dict) -> int:
    """Total FLOPs of FlopCounterMode's per-op counts, with grouped-convolution backward counted correctly.

    torch's counter prices `convolution_backward`'s weight gradient as a dense convolution, ignoring
    `groups` (a depthwise 3x3 convolution over 1024 channels is counted 1024x too high). Its input
    and weight gradients each cost what the forward convolution costs, so the backward is counted
    here as twice the counted forward convolutions (every convolution in the models timed here has
    both gradients).
    """
    fwd_conv = ("convolution", "_convolution", "cudnn_convolution", "convolution_overrideable",
                "_slow_conv2d_forward")
    names = {op: str(op).rsplit(".", 1)[-1] for op in counts}
    total = sum(n for op, n in counts.items() if names[op] != "convolution_backward")
    if "convolution_backward" in names.values():
        total += 2 * sum(n for op, n in counts.items() if names[op] in fwd_conv)
    return total


def count_step_flops(fn) -> int:
    """FLOPs of one call of `fn` (a training step) counted by torch's FlopCounterMode (see `step_flops`)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        fn()
    return step_flops(fc.get_flop_counts()["Global"])
