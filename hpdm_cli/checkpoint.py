"""Load a trained generator from a checkpoint: build the network, load its EMA weights, find its class names.

The one place that turns a run directory, checkpoint directory or .safetensors file into a
network ready to sample (eval mode, on a device), used by `hpdm sample`, `hpdm upscale`,
`hpdm eval` and `hpdm eval-fvd`. A run directory gives its newest usable checkpoint's EMA
weights; the recipe comes from the weights' metadata, so a checkpoint alone is enough. Class
names come from the `dataset.json` at the recipe's `data.path` (looked up from the working
directory, then from the run directory and its parents); without it a class model is addressed
by ids only.

The on-disk format (writing, reading, resolving weight files) is `hpdm_cli.train.checkpoint`;
this module only builds a model from what it reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from .config import Recipe
from .device import resolve_device

__all__ = ["GeneratorInfo", "find_class_names", "load_generator"]

Log = Callable[[str], None]


@dataclass
class GeneratorInfo:
    """Where the weights came from and what the recipe says about conditioning."""

    weights: Path                                   # the .safetensors file loaded
    step: int                                       # training step of the weights
    run_dir: Optional[Path]                         # the run directory, when the weights sit in one
    class_names: list = field(default_factory=list)  # names of class ids (empty: ids only)
    class_names_source: Optional[Path] = None       # the dataset.json they came from
    device: torch.device = torch.device("cpu")


def _run_dir_of(ckpt: Path, weights: Path) -> Optional[Path]:
    """The run directory holding `weights` (run/checkpoints/ckpt-N/x.safetensors), or `ckpt` if it is one."""
    from .train.checkpoint import CKPT_RE
    if ckpt.is_dir() and (ckpt / "checkpoints").is_dir():
        return ckpt
    parent = weights.parent
    if CKPT_RE.match(parent.name) and parent.parent.name == "checkpoints":
        return parent.parent.parent
    return None


def find_class_names(recipe: Recipe, search: Iterable[Path] = ()) -> tuple[list, Optional[Path]]:
    """Class names from the dataset.json at the recipe's data.path, or ([], None) when none is found.

    A relative data.path is tried from the working directory, then from each directory in `search`.
    """
    import json
    p = Path(recipe.data.path)
    candidates = [p] if p.is_absolute() else [p] + [Path(d) / p for d in search]
    for d in candidates:
        top = d / "dataset.json"
        try:
            info = json.loads(top.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        names = info.get("class_names") if isinstance(info, dict) else None
        if isinstance(names, list):
            return [str(n) for n in names], top
    return [], None


def load_generator(ckpt: str | os.PathLike, device: str | torch.device = "auto", *,
                   local_rank: int = 0, warn: Optional[Log] = None) -> tuple[torch.nn.Module, Recipe, GeneratorInfo]:
    """Network (eval mode, on `device`), recipe and info from a run directory, checkpoint directory or file.

    A run directory gives its newest usable checkpoint's EMA weights: unreadable checkpoints, or
    ones holding NaN/inf, are skipped with `warn(message)` (as `hpdm train` does when resuming).
    Raises CheckpointError (missing, corrupt, foreign or mismatching weights) or DeviceError (bad device).
    """
    from .model.network import HPDMNet
    from .train.checkpoint import CheckpointError, load_sampling_weights
    dev = device if isinstance(device, torch.device) else resolve_device(device, local_rank)
    ckpt = Path(ckpt)
    weights_path, weights, recipe, step = load_sampling_weights(ckpt, device="cpu", warn=warn)
    with torch.random.fork_rng(devices=[]):                  # building the net must not move the global RNG
        net = HPDMNet(recipe.pyramid, recipe.model)
    # EMA files written before the EMA followed `state_dict` also hold non-persistent buffers (recomputed by the
    # net): not weights, dropped here so that those checkpoints still load.
    transient = {n for n, _ in net.named_buffers()} - set(net.state_dict())
    weights = {k: v for k, v in weights.items() if k not in transient}
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{weights_path}: weights do not fit the recipe stored with them "
                              f"({str(e).splitlines()[0]})") from None
    net.eval().requires_grad_(False).to(dev)
    run_dir = _run_dir_of(ckpt, weights_path)
    search = []
    for d in ([run_dir] if run_dir else []) + [weights_path.parent]:
        search += [d, *list(d.resolve().parents)[:3]]
    names, source = find_class_names(recipe, search) if recipe.model.cond == "class" else ([], None)
    info = GeneratorInfo(weights=weights_path, step=step, run_dir=run_dir, class_names=names,
                         class_names_source=source, device=dev)
    return net, recipe, info
