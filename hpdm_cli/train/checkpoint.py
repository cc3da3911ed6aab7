"""Checkpoints: safetensors weights, EMA and optimiser state, written atomically, keep-last-N.

Layout of a run directory's `checkpoints/`:
    ckpt-00001000/model.safetensors   training weights (recipe and architecture in the metadata)
    ckpt-00001000/ema.safetensors     EMA weights (what `hpdm sample` loads; self-sufficient)
    ckpt-00001000/optim.safetensors   optimiser tensors and RNG states
    ckpt-00001000/state.json          step, counters, optimiser param groups, and each weights file's size and
                                      CRC-32 (`files`): a file missing or changed since the save is caught
A checkpoint is written into a hidden temporary directory, every file fsynced, and then
renamed into place in one step, so a crash mid-write leaves the previous checkpoint as the
latest loadable one (hidden `.tmp-*` directories are never read and are removed by the next
save). An unreadable checkpoint (e.g. a truncated file) is skipped with a warning and the
previous one is used. Non-finite weights (NaN/inf) are never written, and a checkpoint holding
them (damaged on disk) is unreadable like a truncated one. A write that fails (e.g. a full disk)
is a CheckpointError and leaves the previous checkpoints as they were.
No pickle is ever loaded: tensors come from safetensors, the rest is JSON.

Which weights a command means (a run, a checkpoint, a file, the packaged model) and the network
built from them: `hpdm_cli.checkpoint`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, safe_open, save_file

from ..config import Recipe
from ..errors import HPDMError
from ..io import atomic_write_text, fsync_dir
from .run_dir import CHECKPOINTS, CKPT_RE, EMA, MODEL, OPTIM, checkpoint_name



class CheckpointError(HPDMError, ValueError):
    """A checkpoint is missing, corrupt or of another architecture (message says what to do)."""


def architecture_of(recipe: Recipe) -> str:
    """A canonical JSON of everything that shapes the weights (pyramid and model sections)."""
    d = {"pyramid": asdict(recipe.pyramid), "model": asdict(recipe.model)}
    d["pyramid"].pop("overlap", None)                                     # an inference setting
    d["pyramid"].pop("offsets", None)                                     # a training setting: same weights
    return json.dumps(d, sort_keys=True, default=list)


def architecture_differences(stored: str, current: str, limit: int = 3) -> str:
    """Where two `architecture_of` strings differ, for a message: "model.latent_dim 64 there, 32 here" (a few keys)."""
    a, b = json.loads(stored), json.loads(current)
    keys = [(sec, k) for sec in sorted(set(a) | set(b)) for k in sorted(set(a.get(sec, {})) | set(b.get(sec, {})))
            if a.get(sec, {}).get(k) != b.get(sec, {}).get(k)]
    said = [f"{sec}.{k} {a.get(sec, {}).get(k)} there, {b.get(sec, {}).get(k)} here" for sec, k in keys[:limit]]
    return "; ".join(said) + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def _metadata(recipe: Recipe, step: int) -> dict:
    from ..recipe import recipe_to_toml
    return {"hpdm_recipe": recipe_to_toml(recipe), "hpdm_arch": architecture_of(recipe), "hpdm_step": str(step)}


def _save(tensors: dict, path: Path, metadata: dict) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_weights_file(tensors: dict, path: Path, recipe: Recipe, step: int) -> Path:
    """Write one safetensors file of `tensors` with the recipe and step in its metadata, as every checkpoint file.

    Written under a temporary name and renamed into place.
    """
    from ..io import atomic_path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        _save(tensors, Path(tmp), _metadata(recipe, step))
    return path


def first_nonfinite(tensors: dict) -> Optional[str]:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None when all are finite."""
    for k, v in tensors.items():
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return k
    return None


def _nonfinite_part(model: dict, ema: Optional[dict], optimizer_tensors: dict) -> Optional[str]:
    """Which tensor of a checkpoint's parts is not finite ('model.safetensors: blocks.0.w'), or None."""
    for name, tensors in ((MODEL, model), (EMA, ema or {}),
                          (OPTIM, optimizer_tensors)):
        bad = first_nonfinite(tensors)
        if bad is not None:
            return f"{name}: {bad}"
    return None


def flatten_optimizer(state: dict) -> tuple[dict, list]:
    """Split an optimizer state_dict into a flat tensor dict and JSON-able param groups."""
    tensors = {}
    for idx, st in state["state"].items():
        for k, v in st.items():
            tensors[f"state.{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, state["param_groups"]


def unflatten_optimizer(tensors: dict, groups: list) -> dict:
    """Inverse of `flatten_optimizer`."""
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": groups}


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    d = Path(run_dir) / CHECKPOINTS
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and CKPT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CKPT_RE.match(p.name).group(1)))


def save_checkpoint(run_dir: Path, recipe: Recipe, step: int, *, model: dict, ema: Optional[dict],
                    optimizer: dict, extra_tensors: dict, state: dict, keep_last: int = 3) -> Path:
    """Write checkpoint `step` atomically (temp dir + fsync + rename) and prune to the newest `keep_last`.

    Raises CheckpointError, leaving every existing checkpoint as it was, when a tensor is not finite
    (nothing is written) or when writing fails (disk full, permissions; the partial copy is removed).
    """
    root = Path(run_dir) / CHECKPOINTS
    final = root / checkpoint_name(step)
    opt_tensors, groups = flatten_optimizer(optimizer)
    bad = _nonfinite_part(model, ema, opt_tensors)
    if bad is not None:
        kept = list_checkpoints(run_dir)
        then = (f"the newest good checkpoint is {kept[-1].name}; lower train.lr or set train.grad_clip and resume "
                "from it") if kept else "no checkpoint was saved before; lower train.lr or set train.grad_clip and " \
                                        "start again"
        raise CheckpointError(f"not saving checkpoint {step}: the weights are no longer finite ({bad}); {then}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{final.name}-{secrets.token_hex(4)}"
        tmp.mkdir()
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {final} ({e.strerror or e}); "
                              "make the run directory writable and re-run to resume") from e
    try:
        meta = _metadata(recipe, step)
        _save(model, tmp / MODEL, meta)
        if ema is not None:
            _save(ema, tmp / EMA, meta)
        opt_tensors.update({f"extra.{k}": v for k, v in extra_tensors.items()})
        _save(opt_tensors, tmp / OPTIM, {"hpdm_step": str(step)})
        files = {n: _fingerprint(tmp / n) for n in (MODEL, EMA, OPTIM) if (tmp / n).exists()}
        atomic_write_text(tmp / "state.json", json.dumps({**state, "step": step, "param_groups": groups,
                                                          "files": files}, indent=1, default=str))
        fsync_dir(tmp)
        if final.exists():                                                # re-saving the same step:
            old = root / f".tmp-old-{final.name}-{secrets.token_hex(4)}"  # move the old one aside first,
            os.rename(final, old)                                         # so a complete one always exists
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        fsync_dir(root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            kept = list_checkpoints(run_dir)
            raise CheckpointError(f"cannot write checkpoint {final} ({e.strerror or e}); nothing was lost, the newest "
                                  f"checkpoint is {kept[-1].name if kept else '(none)'}: free space (or fix "
                                  "permissions) and re-run the same command to resume") from e
        raise
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):                                     # left by a crashed writer
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def _fingerprint(path: Path) -> dict:
    """A file's size and CRC-32 (read in 16 MiB blocks), as state.json records them."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            crc = zlib.crc32(block, crc)
    return {"bytes": path.stat().st_size, "crc32": f"{crc & 0xFFFFFFFF:08x}"}


def check_files(ckpt_dir: Path, names=None) -> None:
    """CheckpointError unless the weights files state.json records (all, or `names`) match their size and CRC-32.

    Checkpoints written before the record pass; an unreadable record is left to `load_checkpoint` to judge.
    """
    try:
        files = json.loads((Path(ckpt_dir) / "state.json").read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return
    _check_record(ckpt_dir, files, names)


def _check_record(ckpt_dir: Path, files, names=None) -> None:
    """`check_files` against a record already read from state.json (None: written before the record)."""
    if files is not None and not isinstance(files, dict):
        raise CheckpointError(f"{ckpt_dir}: state.json's record of its files is damaged (not a table)")
    for name, want in (files or {}).items():
        if names is not None and name not in names:
            continue
        f = Path(ckpt_dir) / name
        if not f.is_file():
            raise CheckpointError(f"{ckpt_dir}: {name} is missing (its save recorded it)")
        try:
            got = _fingerprint(f)
        except OSError as e:
            raise CheckpointError(f"{ckpt_dir}: {name} is unreadable ({e.strerror or e})") from None
        if got != want:
            raise CheckpointError(f"{ckpt_dir}: {name} changed since it was saved (size or CRC-32 differs: damaged "
                                  "on disk?)")


def load_checkpoint(path: Path, device="cpu") -> dict:
    """Read a checkpoint directory: model, ema, optimizer state dict, extra tensors, state JSON and metadata.

    Returns a dict with keys model, ema (None if absent), optimizer, extra, state and meta (the
    string metadata of model.safetensors: hpdm_recipe, hpdm_arch, hpdm_step). Raises
    CheckpointError for anything missing or unreadable. Never unpickles anything.
    """
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        files = state.pop("files", None)
        groups = state.pop("param_groups")
        step = int(state["step"])
        with safe_open(str(path / MODEL), framework="pt") as f:
            meta = f.metadata() or {}
        model = load_file(str(path / MODEL), device=str(device))
        ema = load_file(str(path / EMA), device=str(device)) if (path / EMA).exists() else None
        opt = load_file(str(path / OPTIM), device="cpu")
    except Exception as e:                                                # OSError, JSON, KeyError, safetensors' own
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e
    m = CKPT_RE.match(path.name)
    if m and int(m.group(1)) != step:
        raise CheckpointError(f"{path}: state.json says step {step}, the directory name another")
    bad = _nonfinite_part(model, ema, opt)
    if bad is not None:
        raise CheckpointError(f"{path}: non-finite values (NaN or inf) in {bad}; not a usable checkpoint")
    _check_record(path, files)                          # damage that leaves finite values, or a file gone
    extra = {k[len("extra."):]: v for k, v in opt.items() if k.startswith("extra.")}
    optimizer = unflatten_optimizer({k: v for k, v in opt.items() if not k.startswith("extra.")}, groups)
    return {"model": model, "ema": ema, "optimizer": optimizer, "extra": extra, "state": state, "meta": meta}


def _set_aside(path: Path) -> Optional[Path]:
    """Rename an unreadable checkpoint to `<name>.corrupt[-N]` so that no reader takes it for complete."""
    for i in range(100):
        target = path.with_name(path.name + (".corrupt" if i == 0 else f".corrupt-{i}"))
        if not target.exists():
            try:
                os.rename(path, target)
                return target
            except OSError:
                return None
    return None


def latest_checkpoint(run_dir: Path, device="cpu", warn=None, *, set_aside: bool = False) -> Optional[dict]:
    """Load the newest readable checkpoint of a run (falling back past corrupt ones), or None.

    `set_aside`: rename the unreadable ones that were skipped (the training loop does, so that
    `hpdm sample` and later resumes never pick them up again); `warn(message)` hears about each.
    """
    for path in reversed(list_checkpoints(run_dir)):
        try:
            ck = load_checkpoint(path, device)
            ck["path"] = path
            return ck
        except CheckpointError as e:
            moved = _set_aside(path) if set_aside else None
            if warn:
                warn(f"skipping {getattr(e, 'what', e)}" + (f"; renamed to {moved.name}" if moved else ""))
    return None


# What to do about a weights file that safetensors cannot read (truncated by a full disk, copied in part, or not
# weights at all): every place that opens one says the same.
UNREADABLE_FIX = ("damaged or not weights: give a run directory, a checkpoint folder (ckpt-NNNNNNNN), a .safetensors "
                  "that hpdm exported, or `packaged`")


class UnreadableWeightsError(CheckpointError):
    """A weights file that safetensors cannot read; `what` says so without the fix (for a warning that skips it)."""

    def __init__(self, what: str):
        super().__init__(f"{what}; {UNREADABLE_FIX}")
        self.what = what


def read_metadata(path: Path) -> dict:
    """The string metadata of a weights file (its header only: cheap); CheckpointError when it is unreadable."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:                                                # OSError, safetensors' own
        if Path(path).suffix.lower() == ".toml":
            raise CheckpointError(f"{path} is a TOML recipe, not weights: give a run directory, a checkpoint folder "
                                  "or a .safetensors file") from None
        raise UnreadableWeightsError(f"{path}: not a readable safetensors checkpoint ({type(e).__name__}: {e})") from e


def recipe_in_metadata(meta: dict, source) -> Recipe:
    """The recipe a checkpoint's metadata holds (`hpdm_recipe`); CheckpointError when it has none."""
    from ..recipe import recipe_from_toml
    if "hpdm_recipe" not in meta:
        raise CheckpointError(f"{source}: no hpdm recipe in its metadata; is it an hpdm checkpoint?")
    return recipe_from_toml(meta["hpdm_recipe"], source=str(source))


def read_weights_file(path: Path, device="cpu") -> tuple[dict, Recipe, int]:
    """Weights, the recipe stored in their metadata, and the step, from one safetensors file."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        weights = load_file(str(path), device=str(device))
    except Exception as e:
        raise UnreadableWeightsError(f"{path}: not a readable safetensors checkpoint ({type(e).__name__}: {e})") from e
    recipe = recipe_in_metadata(meta, path)
    bad = first_nonfinite(weights)
    if bad is not None:
        raise CheckpointError(f"{path}: non-finite values (NaN or inf) in {bad}; not usable weights")
    return weights, recipe, int(meta.get("hpdm_step", 0))
