"""Trained weights for use: which file a checkpoint argument means, the network built from it, its class names.

The one place that turns a run directory, checkpoint directory, .safetensors file or the word
`packaged` into weights (`resolve_sampling_weights`, `load_sampling_weights`) and into a network
ready to sample (`load_generator`: eval mode, on a device), used by `hpdm sample`, `hpdm
upscale`, `hpdm eval`, `hpdm eval-fvd` and `train.init_from`. A run directory gives its newest
usable checkpoint's EMA weights; the recipe comes from the weights' metadata, so a checkpoint
alone is enough. Class names come from the run's `class_names.json` (training writes it), else
from the `dataset.json` at the recipe's `data.path` (looked up from the working directory, then
from the run directory and its parents); without either a class model is addressed by ids only.
`export_weights` writes a checkpoint's sampling weights as one compact file (how the packaged
model is made).

The on-disk format (writing and reading checkpoints and weight files) is `hpdm_cli.train.checkpoint`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from .assets import DEFAULT_MODEL, PACKAGED, names_packaged
from .config import Recipe
from .device import resolve_device
from .train.checkpoint import (CheckpointError, architecture_of, check_files, first_nonfinite, list_checkpoints,
                               read_weights_file, write_weights_file)
from .train.run_dir import CHECKPOINTS, CKPT_RE, CLASS_NAMES, EMA, MODEL, RECIPE, is_checkpoint_dir

__all__ = ["GeneratorInfo", "edited_sampling", "find_class_names", "load_generator", "resolve_sampling_weights",
           "load_sampling_weights", "export_weights"]

Log = Callable[[str], None]



def resolve_sampling_weights(ckpt: str | os.PathLike) -> Path:
    """The weights file a checkpoint argument means.

    A run directory gives its latest checkpoint's EMA weights, a checkpoint directory its EMA
    weights, a .safetensors file itself, and "packaged" the packaged model (unless a file or
    folder of that name exists here).
    """
    p = Path(ckpt)
    if names_packaged(ckpt):
        return DEFAULT_MODEL
    if p.is_file():
        return p
    if p.is_dir():
        if is_checkpoint_dir(p):
            return _weights_of(p)
        ckpts = _run_checkpoints(p)
        if ckpts:
            return _weights_of(ckpts[-1])
        if CKPT_RE.match(p.name):                                     # named as a checkpoint, without its weights
            raise CheckpointError(f"{p}: this checkpoint has no {MODEL} (an interrupted save?); pass its run "
                                  "directory to use the newest complete checkpoint")
        hides = " (this folder hides the packaged model: run elsewhere, or rename it)" if str(ckpt) == PACKAGED else ""
        from .data.shards import is_dataset
        if is_dataset(p):
            raise CheckpointError(f"{p}: this is a prepared dataset, not a run directory: give a run directory (hpdm "
                                  "train --run-dir), a checkpoint or a weights file")
        raise CheckpointError(f"{p}: no checkpoints in this run directory; train first (hpdm train ...){hides}")
    if p.resolve() == DEFAULT_MODEL:
        raise CheckpointError(f"{p}: the packaged model is missing from this installation: reinstall hpdm (bash "
                              "scripts/setup.sh) or restore the file (git checkout hpdm_cli/assets)")
    raise CheckpointError(f"{p}: no such checkpoint file or run directory")


def _run_checkpoints(p: Path) -> list[Path]:
    """A run directory's checkpoints, oldest first; `p` may also be the run's checkpoints/ folder itself."""
    ckpts = list_checkpoints(p)
    if not ckpts and p.name == CHECKPOINTS:
        ckpts = list_checkpoints(p.parent)
    return ckpts


def _weights_of(checkpoint_dir: Path) -> Path:
    """The file a checkpoint directory is sampled from: its EMA weights, else its training weights."""
    ema = checkpoint_dir / EMA
    return ema if ema.exists() else checkpoint_dir / MODEL


def load_sampling_weights(ckpt: str | os.PathLike, device="cpu", warn=None) -> tuple[Path, dict, Recipe, int]:
    """(file, weights, recipe, step) to sample from: a file, a checkpoint directory, or a run's newest usable one.

    For a run directory, checkpoints that are unreadable or hold non-finite values are skipped
    (newest first), each with `warn(message)`, followed by one naming the checkpoint used; when
    none is usable the newest one's CheckpointError is raised. A file or checkpoint directory
    given explicitly is used as is (CheckpointError if it is unusable).
    """
    p = Path(ckpt)
    if p.is_dir() and not is_checkpoint_dir(p):
        ckpts = _run_checkpoints(p)
        if not ckpts:                              # none yet (or one landed since: it is read as a checkpoint below)
            w = resolve_sampling_weights(p)
            return (w, *_read_checked(w, device))
        skipped = []
        for c in reversed(ckpts):
            w = _weights_of(c)
            try:
                weights, recipe, step = _read_checked(w, device)
            except CheckpointError as e:
                skipped.append(e)
                continue
            if skipped and warn is not None:
                for e in skipped:
                    warn(f"skipping {str(getattr(e, 'what', e)).splitlines()[0]}")
                warn(f"using the newest usable checkpoint instead: {c} (step {step})")
            return w, weights, recipe, step
        first = str(skipped[0]).splitlines()[0]
        raise CheckpointError(first + ("" if len(ckpts) == 1 else
                                       f"; none of the {len(ckpts) - 1} older checkpoints of {p} is usable either"))
    w = resolve_sampling_weights(p)
    weights, recipe, step = _read_checked(w, device)
    return w, weights, recipe, step


def _read_checked(w: Path, device) -> tuple[dict, Recipe, int]:
    """`read_weights_file`, then the file checked against its checkpoint's record of it (when it has one)."""
    out = read_weights_file(w, device)
    if CKPT_RE.match(w.parent.name):
        check_files(w.parent, [w.name])
    return out


def export_weights(ckpt: str | os.PathLike, out: str | os.PathLike, dtype: torch.dtype = torch.float16,
                   overrides: Iterable[str] = ()) -> Path:
    """Write a checkpoint's sampling weights (EMA) with its recipe as one compact safetensors file (e.g. fp16).

    `overrides` ("train.init_from=''", ...) edit the stored recipe, e.g. to clear paths of the training
    host; ones that would change the architecture are refused (the weights would no longer fit it).
    """
    from .recipe import recipe_from_toml, recipe_to_toml
    _, weights, recipe, step = load_sampling_weights(ckpt)
    overrides = list(overrides)
    if overrides:
        edited = recipe_from_toml(recipe_to_toml(recipe), overrides, source=f"{ckpt} with {' '.join(overrides)}")
        if architecture_of(edited) != architecture_of(recipe):
            raise CheckpointError(f"overrides {' '.join(overrides)} change the architecture of {ckpt}; "
                                  "export can only edit settings that leave the weights' shapes alone")
        recipe = edited
    small = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in weights.items()}
    bad = first_nonfinite(small)
    if bad is not None:
        raise CheckpointError(f"{ckpt}: {bad} overflows {dtype} (values out of range); export in float32")
    return write_weights_file(small, Path(out), recipe, step)


@dataclass
class GeneratorInfo:
    """Where the weights came from and what the recipe says about conditioning."""

    weights: Path                                   # the .safetensors file loaded
    step: int                                       # training step of the weights
    run_dir: Optional[Path]                         # the run directory, when the weights sit in one
    class_names: list = field(default_factory=list)  # names of class ids (empty: ids only)
    class_names_source: Optional[Path] = None       # the file they came from (the run's, or a dataset.json)
    device: torch.device = torch.device("cpu")

    @property
    def folders(self) -> list[Path]:
        """The checkpoint's own folders: its run directory (when it sits in one), then the weights file's folder."""
        return [d for d in (self.run_dir, self.weights.parent) if d is not None]

    @property
    def search_dirs(self) -> list[Path]:
        """Where its recipe's relative paths (`data.path`) are looked up: its folders and three parents of each."""
        return [x for d in self.folders for x in (d, *list(Path(d).resolve().parents)[:3])]


def _run_dir_of(ckpt: Path, weights: Path) -> Optional[Path]:
    """The run directory holding `weights` (run/checkpoints/ckpt-N/x.safetensors), or `ckpt` if it is one."""
    if ckpt.is_dir() and (ckpt / CHECKPOINTS).is_dir():
        return ckpt
    parent = weights.parent
    if CKPT_RE.match(parent.name) and parent.parent.name == CHECKPOINTS:
        return parent.parent.parent
    return None


def edited_sampling(run_dir: Path, recipe: Recipe, step: int) -> Optional[str]:
    """Why RUN/recipe.toml's [sample] settings are not the ones sampling uses, in words, or None.

    Sampling takes the recipe stored in the weights of checkpoint `step`; RUN/recipe.toml is what the run's
    last start wrote, or a hand edit of it, either of which would otherwise be ignored without a word.
    """
    from .recipe import recipe_from_toml
    path = Path(run_dir) / RECIPE
    if not path.is_file():
        return None
    try:
        stored = recipe_from_toml(path.read_text(encoding="utf-8").removeprefix("\ufeff"), source=str(path))
    except Exception as e:                                                # ConfigError, OSError, UnicodeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"{path} is unreadable ({first}); sampling uses the recipe stored in checkpoint {step}"
    if stored.sample != recipe.sample:
        return (f"{path} has other [sample] settings than checkpoint {step}'s recipe, which sampling uses: give "
                "them as options to sample with them (--guidance, --steps, --overlap, ...)")
    return None


def find_class_names(recipe: Recipe, search: Iterable[Path] = (), run_dir: Optional[Path] = None
                     ) -> tuple[list, Optional[Path]]:
    """Class names from the run's class_names.json (training records them), else from the dataset.json at the
    recipe's data.path; ([], None) when neither is found.

    A relative data.path is tried from the working directory, then from each directory in `search`.
    """
    import json
    p = Path(recipe.data.path)
    candidates = [p] if p.is_absolute() else [p] + [Path(d) / p for d in search]
    files = ([Path(run_dir) / CLASS_NAMES] if run_dir is not None else []) + [d / "dataset.json" for d in candidates]
    for top in files:
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
    info = GeneratorInfo(weights=weights_path, step=step, run_dir=_run_dir_of(ckpt, weights_path), device=dev)
    edited = edited_sampling(info.run_dir, recipe, step) if info.run_dir is not None and warn is not None else None
    if edited:
        warn(edited)
    if recipe.model.cond == "class":
        info.class_names, info.class_names_source = find_class_names(recipe, info.search_dirs, info.run_dir)
    return net, recipe, info
