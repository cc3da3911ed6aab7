"""Generation drivers: sample videos from a checkpoint, and upscale an existing video with the upper levels.

This is the engine behind `hpdm sample` and `hpdm upscale` (the CLI only parses arguments and
calls `generate` / `upscale`); it never imports Typer or Rich, and PyAV only through
`hpdm_cli.io.video` (lazily).

Sampling (`generate`):
* `load_generator` reads a run directory (newest checkpoint, EMA weights), a checkpoint directory
  or a .safetensors file; the recipe comes from the weights' metadata, so a checkpoint alone
  is enough. Class names come from the `dataset.json` at the recipe's `data.path` (looked up
  from the working directory, then from the run directory and its parents); without it a
  class model is addressed by ids only.
* `resolve_condition` turns `--prompt` / `--class` into the network's condition: class ids for
  class models (a name, an id, or a prompt that names a class), MiniLM/T5 embeddings for text
  models, nothing (the null condition) when neither is given.
* Seeds ("0-7", "1,5,9", "3", or a mix "0-3,8") each give one video that depends only on its
  seed (per-seed generators in the sampler), so batching and the number of processes never
  change a sample. Under torchrun (WORLD_SIZE > 1) rank r takes seeds[r::WORLD_SIZE] and writes
  its own files. Several seeds give one file per seed: clip.mp4 -> clip-seed0003.mp4.
* `levels = K` stops after level K (K is the last level *index*: 0 = only the coarsest level),
  a preview at level K's resolution. A preview keeps the clip's duration: its frame rate is
  the full video's scaled by its frame ratio (frames_K / frames_full).
* Every output path is checked (video suffix, not a directory, a writable directory or one that
  can be created) before anything is sampled; missing directories are created when writing;
  every file is written atomically (`hpdm_cli.io.video.write_video`).

Upscaling (`upscale`): a learned video super-resolution. The input (any size, fps and length
PyAV reads) is fitted to the model's aspect ratio (`fit="crop"`: centre crop; `fit="pad"`: pad
with black or edge pixels, the padding is cut off the output again so the output keeps the
input's aspect ratio; edge padding by default, black bars darken the borders of the coarse
levels), and its frames are taken as the model's full-resolution frames (no
temporal resampling: the output keeps the input's frame count and fps). The video is cut into
windows of the model's frame count R_f overlapping by `window_overlap` (default 50%); for each
window, levels 0..from_level are fixed to the window resized to each level's resolution
(spatially: area averaging when shrinking, bilinear when enlarging; temporally: box averaging
of R_f / F_l frames, as in training) and the model generates the levels above. Windows are
joined with a linear cross-fade over their overlap (weights of consecutive windows sum to 1),
so there are no jumps at window borders. A video shorter than R_f is padded by repeating its
last frame and trimmed back. Window j is sampled with seed `seed + j`.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import Recipe
from .device import resolve_device, world
from .errors import HPDMError
from .sampling import HierarchicalSampler, level_steps, parse_overlap

__all__ = [
    "GenerateError", "GeneratorInfo", "Condition", "SampleOutput", "SampleReport", "FitGeometry", "UpscaleOutput",
    "UpscaleReport", "load_generator", "find_class_names", "resolve_condition", "parse_seeds",
    "precomputed_condition",
    "parse_steps", "check_options", "rank_seeds", "output_paths", "check_writable", "to_uint8", "sample_videos",
    "write_outputs", "generate", "fit_geometry", "fit_frames", "resize_frames", "level_window", "window_starts",
    "crossfade_weights", "blend_windows", "upscale_frames", "upscale",
]

Progress = Callable[[int, int, int], None]        # progress(level, done, total): steps over all batches
Log = Callable[[str], None]

_VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".gif", ".png")


class GenerateError(HPDMError, ValueError):
    """A user-fixable problem with a sampling or upscaling request (message says what to do)."""


# ============================================================================ loading


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
    # EMA files also hold non-persistent buffers (recomputed by the net, e.g. `scales`): not weights.
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


# ============================================================================ conditioning


@dataclass
class Condition:
    """What the network is conditioned on: nothing (null condition), a class id or a text embedding."""

    kind: str = "none"                          # "none", "class" or "text"
    label: Optional[int] = None                 # class id
    name: str = ""                              # class name or prompt
    embedding: Optional[torch.Tensor] = None    # text embedding [1, tokens, dim]

    def batch(self, n: int, device=None) -> Optional[torch.Tensor]:
        """The condition of `n` samples ([n] ids or [n, tokens, dim] embeddings), or None."""
        if self.kind == "class":
            return torch.full((n,), int(self.label), dtype=torch.long, device=device)
        if self.kind == "text":
            return self.embedding.to(device).expand(n, *self.embedding.shape[1:])
        return None

    def describe(self) -> str:
        if self.kind == "class":
            return f"class {self.label}" + (f" ({self.name})" if self.name else "")
        if self.kind == "text":
            return f"prompt {self.name!r}"
        return "unconditional"


def _norm_name(text: str) -> str:
    """Comparable form of a class name or prompt: CamelCase split, lower case, no punctuation or articles."""
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", str(text))
    words = re.sub(r"[^0-9a-z]+", " ", text.lower()).split()
    while words and words[0] in ("a", "an", "the"):
        words = words[1:]
    return "".join(words)


def _class_list(names: Sequence[str], num_classes: int, source) -> str:
    if names:
        return "classes: " + ", ".join(f"{i}={n}" for i, n in enumerate(names))
    where = f" (no dataset.json found at data.path = {source!r})" if source else ""
    return f"this model has class ids 0..{num_classes - 1} and no class names{where}"


def resolve_condition(recipe: Recipe, prompt: Optional[str] = None, class_: Optional[str | int] = None, *,
                      class_names: Sequence[str] = (), device="cpu", encoder=None) -> Condition:
    """The condition for `--prompt` / `--class` on this recipe's model (GenerateError if it does not fit).

    Class models take a class name or id, or a prompt that names a class (case, punctuation,
    CamelCase and a leading article are ignored); text models take a prompt (encoded with the
    recipe's text encoder, or `encoder`); neither given = the null condition.
    """
    m = recipe.model
    if prompt is not None and class_ is not None:
        raise GenerateError("give either --prompt or --class, not both")
    if prompt is None and class_ is None:
        return Condition()
    if m.cond == "none":
        raise GenerateError("this model is unconditional (model.cond = \"none\"): drop --prompt/--class")
    if m.cond == "text":
        if class_ is not None:
            raise GenerateError("this model is text-conditioned: describe the video with --prompt TEXT instead of "
                                "--class")
        if not str(prompt).strip():
            return Condition()
        if encoder is None:
            from .text.encoders import load_text_encoder
            encoder = load_text_encoder(m.text_encoder, device=device, tokens=m.text_tokens)
        if encoder.dim != m.text_dim or encoder.tokens != m.text_tokens:
            raise GenerateError(f"text encoder {encoder.name} gives {encoder.tokens}x{encoder.dim} embeddings but "
                                f"the model expects {m.text_tokens}x{m.text_dim}")
        emb = encoder.encode([str(prompt)]).float().cpu()
        return Condition(kind="text", name=str(prompt), embedding=emb)
    # Class-conditional model.
    names = [str(n) for n in class_names]
    src = recipe.data.path
    if class_ is not None:
        text = str(class_).strip()
        exact = [i for i, n in enumerate(names) if n == text]
        if exact:
            return Condition(kind="class", label=exact[0], name=names[exact[0]])
        if re.fullmatch(r"[+-]?\d+", text):
            i = int(text)
            if not 0 <= i < m.num_classes:
                raise GenerateError(f"--class {i}: class ids run from 0 to {m.num_classes - 1}; "
                                    + _class_list(names, m.num_classes, src))
            return Condition(kind="class", label=i, name=names[i] if i < len(names) else "")
        what = f"unknown class {text!r}"
    else:
        text = str(prompt)
        what = f"prompt {text!r} does not name a class of this class-conditional model (use --class NAME_OR_ID)"
    key = _norm_name(text)
    hits = [i for i, n in enumerate(names) if key and _norm_name(n) == key]
    if hits:
        return Condition(kind="class", label=hits[0], name=names[hits[0]])
    raise GenerateError(f"{what}; " + _class_list(names, m.num_classes, src))


def _table_dirs(recipe: Recipe, info: GeneratorInfo) -> list:
    """Folders that may hold prompt tables for this checkpoint: its run, its folder, its datasets (if found)."""
    near = [d for d in (info.run_dir, info.weights.parent) if d is not None]
    search = [x for d in near for x in (d, *list(Path(d).resolve().parents)[:3])]
    dirs = list(near)
    for rel in (recipe.data.path, recipe.data.image_path):
        if rel:
            p = Path(rel)
            dirs += [d for d in ([p] if p.is_absolute() else [p] + [s / p for s in search])
                     if (d / "dataset.json").is_file()]
    return dirs


def precomputed_condition(recipe: Recipe, info: GeneratorInfo, prompt: Optional[str] = None,
                          class_: Optional[str] = None, *, prompt_table=None, prompt_embedding=None,
                          device="cpu") -> Optional[Condition]:
    """A text model's condition from precomputed embeddings; None leaves it to `resolve_condition`.

    `prompt_embedding` (a safetensors file of one embedding) is the condition itself. A `prompt`
    is looked up in `prompt_table` (a table file, or a folder of tables), then in the tables next
    to the checkpoint (RUN_DIR/prompt_embeddings.safetensors, written by training) and those stored
    with its datasets; only a prompt no table has is encoded, with the recipe's text encoder.
    """
    from .text.encoders import TextEncoderError
    from .text.tables import PromptLookup, load_encoder, read_prompt_embedding
    m = recipe.model
    if prompt_table is None and prompt_embedding is None and (m.cond != "text" or prompt is None):
        return None
    if m.cond != "text":
        raise GenerateError(f"--prompt-table / --prompt-embedding need a text-conditioned model; this one has "
                            f"model.cond = \"{m.cond}\"")
    try:
        if prompt_embedding is not None:
            if prompt is not None or class_ is not None:
                raise GenerateError("give either --prompt-embedding or --prompt, not both")
            emb, name = read_prompt_embedding(prompt_embedding, m.text_tokens, m.text_dim)
            return Condition(kind="text", name=name, embedding=emb)
        if prompt is None:
            raise GenerateError("--prompt-table needs --prompt TEXT (the prompt to look up)")
        if class_ is not None or not str(prompt).strip():
            return None                                   # resolve_condition: an error / the null condition
        lookup = PromptLookup(m.text_encoder, m.text_tokens, m.text_dim)
        if prompt_table is not None:
            lookup.add(prompt_table, explicit=True)
        for d in _table_dirs(recipe, info):
            lookup.add(d)
        emb, _ = lookup.lookup(str(prompt))
        if emb is not None:
            return Condition(kind="text", name=str(prompt), embedding=emb)
        try:
            encoder = load_encoder(m.text_encoder, device=device, tokens=m.text_tokens)
        except TextEncoderError as e:
            raise GenerateError(f"cannot embed --prompt {str(prompt)!r}: {lookup.describe_miss(str(prompt))}, and "
                                f"{str(e).splitlines()[0]}; or pass --prompt-table FILE_OR_DATASET_DIR or "
                                "--prompt-embedding FILE") from None
    except TextEncoderError as e:
        raise GenerateError(str(e).splitlines()[0]) from None
    return resolve_condition(recipe, prompt, None, device=device, encoder=encoder)


# ============================================================================ arguments and paths


def parse_seeds(text: str | int | Sequence[int]) -> list[int]:
    """Seeds from "0-7", "1,5,9", "3" or mixes like "0-3,8" (in the given order; no duplicates, >= 0)."""
    if isinstance(text, int):
        text = str(text)
    if not isinstance(text, str):
        seeds = [int(s) for s in text]
    else:
        seeds = []
        parts = [p.strip() for p in text.split(",")]
        if not text.strip() or any(not p for p in parts):
            raise GenerateError(f"--seeds {text!r}: expected seeds like 0-7, 1,5,9 or 3")
        for p in parts:
            m = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", p)
            if not m:
                raise GenerateError(f"--seeds {text!r}: {p!r} is not a seed (N) or a range (A-B) of seeds >= 0")
            a = int(m.group(1))
            b = int(m.group(2)) if m.group(2) is not None else a
            if b < a:
                raise GenerateError(f"--seeds {text!r}: the range {p} runs backwards (write {b}-{a})")
            if b - a >= 1_000_000:
                raise GenerateError(f"--seeds {text!r}: the range {p} holds more than a million seeds")
            seeds += range(a, b + 1)
    seen = set()
    for s in seeds:
        if s < 0:
            raise GenerateError(f"seed {s}: seeds must be >= 0")
        if s in seen:
            raise GenerateError(f"--seeds {text!r}: seed {s} is given twice")
        seen.add(s)
    if not seeds:
        raise GenerateError("--seeds: no seeds given")
    return seeds


def parse_steps(text: str | int | Sequence[int] | None, num_levels: int) -> Optional[list[int]]:
    """`--steps N` (level 0; halved per level, at least 1) or a per-level list "16,8,4"; None = the recipe's."""
    if text is None:
        return None
    if isinstance(text, int):
        vals = [text]
    elif isinstance(text, str):
        try:
            vals = [int(v) for v in text.split(",")]
        except ValueError:
            raise GenerateError(f"--steps {text!r}: expected an integer or a comma-separated list per level") from None
    else:
        vals = [int(v) for v in text]
    if any(v < 1 for v in vals):
        raise GenerateError(f"--steps {text!r}: every level needs at least one step")
    if len(vals) == 1:
        return [max(1, vals[0] >> l) for l in range(num_levels)]
    if len(vals) != num_levels:
        raise GenerateError(f"--steps {text!r}: {len(vals)} values for a model with {num_levels} levels "
                            "(give one value, or one per level)")
    return vals


def check_options(*, batch: Optional[int] = None, tile_batch: int = 64, guidance: Optional[float] = None,
                  fps: Optional[float] = None, levels: Optional[int] = None) -> None:
    """Raise GenerateError for a numeric option out of its range (before any checkpoint is loaded)."""
    from .config import MAX_GUIDANCE
    if batch is not None and batch < 1:
        raise GenerateError(f"--batch {batch}: expected at least 1 (seeds or windows per sampler call)")
    if tile_batch < 1:
        raise GenerateError(f"--tile-batch {tile_batch}: expected at least 1 (tiles per network forward)")
    if guidance is not None and not (math.isfinite(guidance) and 0 <= guidance <= MAX_GUIDANCE):
        raise GenerateError(f"--guidance {guidance}: expected a number in [0, {MAX_GUIDANCE:g}] "
                            "(1 = no guidance, 0 = unconditional)")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise GenerateError(f"--fps {fps}: expected a positive number")
    if levels is not None and levels < 0:
        raise GenerateError(f"--levels {levels}: expected a level index >= 0 (0 = only the coarsest level)")


def rank_seeds(seeds: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This process's share of the seeds: every world_size-th seed starting at rank."""
    return list(seeds)[rank::max(1, world_size)]


def output_paths(out: str | os.PathLike, seeds: Sequence[int], several: Optional[bool] = None) -> dict:
    """seed -> output path: `out` itself for one seed, out-seed0003.mp4 style names for several."""
    out = Path(out)
    several = len(seeds) > 1 if several is None else several
    if not several:
        return {int(s): out for s in seeds}
    return {int(s): out.with_name(f"{out.stem}-seed{int(s):04d}{out.suffix}") for s in seeds}


def _extra_paths(path: Path, gif: bool, png: bool) -> list[Path]:
    """The file(s) written for one video: the main path plus .gif / .png quick looks on request."""
    paths = [path]
    for flag, suffix in ((gif, ".gif"), (png, ".png")):
        if flag and path.suffix.lower() != suffix:
            paths.append(path.with_suffix(suffix))
    return paths


def check_writable(paths: Iterable[str | os.PathLike]) -> None:
    """Raise GenerateError unless every path can be written (video suffix, not a directory, writable place).

    A missing output directory is fine when it can be created (the nearest existing ancestor is a
    writable directory); nothing is created here (`_make_parent` does that when writing).
    """
    checked = set()
    for p in paths:
        p = Path(p)
        if p.suffix.lower() not in _VIDEO_SUFFIXES:
            raise GenerateError(f"cannot write {str(p)!r}: unknown video suffix {p.suffix or '(none)'!r}; "
                                f"use one of {', '.join(_VIDEO_SUFFIXES)}")
        if p.is_dir():
            raise GenerateError(f"cannot write {str(p)!r}: it is a directory")
        d = p.absolute().parent
        while not d.exists() and d != d.parent:
            d = d.parent
        if not d.is_dir():
            raise GenerateError(f"cannot write {str(p)!r}: {str(d)!r} is not a directory")
        if d in checked:
            continue
        probe = d / f".hpdm-write-test-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            with open(probe, "xb"):
                pass
        except OSError as e:
            raise GenerateError(f"cannot write {str(p)!r}: directory {str(d)!r} is not writable "
                                f"({e.strerror or e})") from None
        finally:
            try:
                probe.unlink()
            except OSError:
                pass
        checked.add(d)


def _make_parent(path: Path) -> None:
    """Create the output's directory (checked by `check_writable`) just before writing into it."""
    try:
        Path(path).absolute().parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GenerateError(f"cannot write {str(path)!r}: cannot create its directory ({e.strerror or e})") from None


def to_uint8(videos: torch.Tensor) -> list[np.ndarray]:
    """Videos [B, C, F, H, W] in [-1, 1] -> list of B uint8 arrays [F, H, W, C]."""
    x = ((videos.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [v.permute(1, 2, 3, 0).contiguous().cpu().numpy() for v in x]


def _from_uint8(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] -> float [T, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ============================================================================ sampling


@dataclass
class SampleOutput:
    """Generated videos of some seeds."""

    seeds: list                                   # the seeds, in order
    videos: list                                  # per seed: uint8 [T, H, W, 3] of the last level generated
    levels: Optional[list] = None                 # per seed: list of every level's uint8 video (keep_levels)
    seconds: list = field(default_factory=list)   # per level: wall time summed over batches
    level: int = 0                                # index of the last level generated


def sample_videos(net, recipe: Recipe, seeds: Sequence[int], condition: Optional[Condition] = None, *,
                  levels: Optional[int] = None, steps: Optional[Sequence[int]] = None,
                  guidance: Optional[float] = None, overlap: Optional[str] = None, cache: bool = True,
                  offload: bool = False, batch: Optional[int] = None, tile_batch: int = 64, device=None,
                  bf16: bool = False, keep_levels: bool = False,
                  progress: Optional[Progress] = None) -> SampleOutput:
    """Generate one video per seed, `batch` seeds per sampler call; `levels` = index of the last level.

    Each video depends only on its seed. Returns uint8 videos [T, H, W, 3] of level `levels`
    (default: the last level), and every level's video with `keep_levels`.
    """
    L = recipe.pyramid.num_levels
    last = L - 1 if levels is None else int(levels)
    if not 0 <= last < L:
        raise GenerateError(f"--levels {levels}: this model has levels 0..{L - 1} (0 = only the coarsest)")
    check_options(batch=batch, tile_batch=tile_batch, guidance=guidance)
    nsteps = level_steps(recipe.sample, L, steps)
    batch = int(recipe.sample.batch_size if batch is None else batch)
    seeds = [int(s) for s in seeds]
    condition = condition or Condition()
    sampler = _make_sampler(net, recipe, device, overlap, tile_batch, cache, offload, bf16)
    chunks = [seeds[i:i + batch] for i in range(0, len(seeds), batch)]
    out = SampleOutput(seeds=seeds, videos=[], levels=[] if keep_levels else None, seconds=[0.0] * (last + 1),
                       level=last)
    for c, chunk in enumerate(chunks):
        cb = None
        if progress is not None:
            cb = (lambda l, i, n, _c=c: progress(l, _c * nsteps[l] + i, len(chunks) * nsteps[l]))
        res = sampler.sample(chunk, condition.batch(len(chunk), sampler.device), guidance=guidance,
                             levels=last + 1, steps=nsteps, progress=cb)
        _check_finite(res.videos[last], f"seeds {chunk[0]}..{chunk[-1]}")
        out.videos += to_uint8(res.videos[last])
        if keep_levels:
            per_level = [to_uint8(v) for v in res.videos]
            out.levels += [[lv[b] for lv in per_level] for b in range(len(chunk))]
        out.seconds = [a + b for a, b in zip(out.seconds, res.seconds)]
    return out


def _check_finite(videos: torch.Tensor, what: str) -> None:
    """Refuse to write videos with NaN/inf values (they would come out black) with a GenerateError."""
    if not bool(torch.isfinite(videos).all()):
        raise GenerateError(f"sampling {what} produced non-finite values (NaN or inf): lower --guidance, or check "
                            "the checkpoint (was its training stable?); nothing was written")


def _make_sampler(net, recipe, device, overlap, tile_batch, cache, offload, bf16) -> HierarchicalSampler:
    if overlap is not None:
        try:
            overlap = parse_overlap(overlap) or "none"
        except ValueError:
            raise GenerateError(f"--overlap {overlap!r}: expected fhw, fh, fw, hw, f, h, w or none") from None
    if device is None:
        p = next(iter(net.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    try:
        return HierarchicalSampler(net, recipe, device, overlap=overlap, tile_batch=tile_batch, cache=cache,
                                   offload=offload, autocast=torch.bfloat16 if bf16 else None)
    except ValueError as e:
        raise GenerateError(f"cannot tile this model's levels with --overlap {overlap}: {e}") from None


def write_outputs(paths: Mapping[int, Path], output: SampleOutput, fps: float, *, gif: bool = False,
                  png: bool = False) -> list[Path]:
    """Write each seed's video to its path (atomically), plus .gif / .png strips on request; returns the files."""
    from .io.video import write_video
    written = []
    for seed, video in zip(output.seeds, output.videos):
        for p in _extra_paths(Path(paths[seed]), gif, png):
            _make_parent(p)
            write_video(p, video, fps)
            written.append(p)
    return written


@dataclass
class SampleReport:
    """What `generate` did."""

    files: list                                   # files written by this process
    seeds: list                                   # this process's seeds
    all_seeds: list
    rank: int
    world_size: int
    level: int                                    # last level generated
    shape: tuple                                  # (frames, height, width) of every video
    fps: float
    condition: str
    weights: Path
    step: int
    seconds: list                                 # per level
    device: str
    messages: list = field(default_factory=list)


def _world() -> tuple[int, int, int]:
    return world()                                # (rank, world size, local rank): hpdm_cli/device.py


def generate(ckpt: Optional[str | os.PathLike], out: str | os.PathLike = "clip.mp4", *, seeds: str | Sequence[int] = "0",
             prompt: Optional[str] = None, class_: Optional[str] = None, levels: Optional[int] = None,
             batch: Optional[int] = None, steps=None, guidance: Optional[float] = None,
             overlap: Optional[str] = None, cache: bool = True, offload: bool = False, fps: Optional[float] = None,
             device: str = "auto", gif: bool = False, png: bool = False, tile_batch: int = 64, bf16: bool = False,
             progress: Optional[Progress] = None, warn: Optional[Log] = None,
             prompt_table: Optional[str | os.PathLike] = None,
             prompt_embedding: Optional[str | os.PathLike] = None) -> SampleReport:
    """`hpdm sample`: checkpoint (None: the packaged model) + condition + seeds -> one video file per seed.

    Everything that can fail on user input (seeds, numeric options, output paths, checkpoint,
    condition, levels, steps, overlap) is checked before sampling starts. `warn` hears about
    unusable checkpoints skipped in a run directory.
    """
    if ckpt is None:                                      # the packaged default model, with its CPU settings
        from .assets import DEFAULT_MODEL, DEFAULT_OVERLAP, DEFAULT_STEPS
        ckpt = DEFAULT_MODEL
        steps = DEFAULT_STEPS if steps is None else steps
        overlap = DEFAULT_OVERLAP if overlap is None else overlap
    all_seeds = parse_seeds(seeds)
    check_options(batch=batch, tile_batch=tile_batch, guidance=guidance, fps=fps, levels=levels)
    rank, world, local = _world()
    mine = rank_seeds(all_seeds, rank, world)
    paths = output_paths(out, all_seeds)
    check_writable(p for s in all_seeds for p in _extra_paths(paths[s], gif, png))
    net, recipe, info = load_generator(ckpt, device, local_rank=local, warn=warn)
    L = recipe.pyramid.num_levels
    last = L - 1 if levels is None else int(levels)
    if not 0 <= last < L:
        raise GenerateError(f"--levels {levels}: this model has levels 0..{L - 1} (0 = only the coarsest)")
    nsteps = parse_steps(steps, L)
    cond = precomputed_condition(recipe, info, prompt, class_, prompt_table=prompt_table,
                                 prompt_embedding=prompt_embedding, device=info.device)
    if cond is None:
        cond = resolve_condition(recipe, prompt, class_, class_names=info.class_names, device=info.device)
    full_fps = float(fps or recipe.sample.fps or recipe.data.fps)
    shape = recipe.pyramid.level_resolution(last)
    out_fps = full_fps * shape[0] / recipe.pyramid.resolution[0]
    report = SampleReport(files=[], seeds=mine, all_seeds=all_seeds, rank=rank, world_size=world, level=last,
                          shape=shape, fps=out_fps, condition=cond.describe(), weights=info.weights, step=info.step,
                          seconds=[], device=str(info.device))
    if not mine:
        return report
    res = sample_videos(net, recipe, mine, cond, levels=last, steps=nsteps, guidance=guidance, overlap=overlap,
                        cache=cache, offload=offload, batch=batch, tile_batch=tile_batch, device=info.device,
                        bf16=bf16, progress=progress)
    report.files = write_outputs(paths, res, out_fps, gif=gif, png=png)
    report.seconds = res.seconds
    return report


# ============================================================================ upscaling: geometry


@dataclass
class FitGeometry:
    """How an input frame of size (h, w) is fitted to the model's aspect ratio, and what part of the output is kept.

    crop = (y0, y1, x0, x1): the input region used (fit="crop"); pad = (top, bottom, left, right):
    pixels added around the input (fit="pad"); canvas = (h, w) after fitting; keep = (y0, y1, x0, x1):
    the region of the model's full-resolution output that shows the input (the whole frame for crop).
    """

    mode: str
    crop: tuple
    pad: tuple
    canvas: tuple
    keep: tuple


def fit_geometry(h: int, w: int, model_hw: Sequence[int], mode: str = "crop") -> FitGeometry:
    """Centre-crop ("crop") or pad ("pad") an (h, w) frame to the aspect ratio of `model_hw` = (H, W)."""
    H, W = int(model_hw[0]), int(model_hw[1])
    if mode not in ("crop", "pad"):
        raise GenerateError(f"--fit {mode!r}: expected crop or pad")
    wider = w * H > W * h                                     # input wider than the model's frame
    if mode == "crop":
        if wider:
            cw = max(1, min(w, round(h * W / H)))
            x0 = (w - cw) // 2
            crop = (0, h, x0, x0 + cw)
        else:
            ch = max(1, min(h, round(w * H / W)))
            y0 = (h - ch) // 2
            crop = (y0, y0 + ch, 0, w)
        return FitGeometry(mode, crop, (0, 0, 0, 0), (crop[1] - crop[0], crop[3] - crop[2]), (0, H, 0, W))
    if wider:
        ch = max(h, round(w * H / W))
        top = (ch - h) // 2
        pad, canvas = (top, ch - h - top, 0, 0), (ch, w)
    else:
        cw = max(w, round(h * W / H))
        left = (cw - w) // 2
        pad, canvas = (0, 0, left, cw - w - left), (h, cw)
    y0, y1 = round(pad[0] * H / canvas[0]), round((pad[0] + h) * H / canvas[0])
    x0, x1 = round(pad[2] * W / canvas[1]), round((pad[2] + w) * W / canvas[1])
    keep = (y0, max(y1, y0 + 1), x0, max(x1, x0 + 1))
    return FitGeometry(mode, (0, h, 0, w), pad, canvas, keep)


def fit_frames(x: torch.Tensor, geom: FitGeometry, pad_mode: str = "edge") -> torch.Tensor:
    """Apply a FitGeometry to frames [T, C, h, w] in [-1, 1]: crop, or pad with edge pixels or black (-1).

    Edge padding is the default: black bars bleed into the border rows of the coarse levels (a
    level-0 pixel averages many input pixels) and darken the kept part of the output there.
    """
    y0, y1, x0, x1 = geom.crop
    x = x[..., y0:y1, x0:x1]
    top, bottom, left, right = geom.pad
    if top or bottom or left or right:
        if pad_mode == "black":
            x = F.pad(x, (left, right, top, bottom), value=-1.0)
        elif pad_mode == "edge":
            x = F.pad(x, (left, right, top, bottom), mode="replicate")
        else:
            raise GenerateError(f"--pad-mode {pad_mode!r}: expected black or edge")
    return x


def resize_frames(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize frames [T, C, h, w] to `size` = (H, W): area averaging when shrinking, bilinear when enlarging."""
    h, w = x.shape[-2:]
    H, W = int(size[0]), int(size[1])
    if (h, w) == (H, W):
        return x
    if H <= h and W <= w:
        return F.interpolate(x, size=(H, W), mode="area")
    if H >= h and W >= w:
        return F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
    return F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False, antialias=True)


def level_window(window: torch.Tensor, recipe: Recipe, level: int) -> torch.Tensor:
    """A fitted window of R_f frames [R_f, C, h, w] -> level `level`'s whole video [C, F_l, H_l, W_l].

    Spatially `resize_frames` to the level's size; temporally a box average of R_f / F_l frames
    (the training pyramid's filter).
    """
    R_f = recipe.pyramid.resolution[0]
    F_l, H_l, W_l = recipe.pyramid.level_resolution(level)
    if window.shape[0] != R_f:
        raise ValueError(f"a window has {window.shape[0]} frames, the model needs {R_f}")
    x = resize_frames(window, (H_l, W_l))
    x = x.reshape(F_l, R_f // F_l, *x.shape[1:]).mean(1)          # [F_l, C, H_l, W_l]
    return x.permute(1, 0, 2, 3).contiguous()


def window_starts(num_frames: int, window: int, overlap: float = 0.5) -> list[int]:
    """Starts of windows of `window` frames covering `num_frames` frames, overlapping by at least `overlap`.

    The windows are spread evenly from 0 to num_frames - window, so every overlap is at least
    round(overlap * window) frames (a video of at most `window` frames is one window at 0).
    """
    if not 0.0 <= overlap < 1.0:
        raise GenerateError(f"--window-overlap {overlap}: expected a fraction in [0, 1)")
    if num_frames <= window:
        return [0]
    stride = max(1, window - int(round(overlap * window)))
    n = math.ceil((num_frames - window) / stride) + 1
    span = num_frames - window
    return [round(j * span / (n - 1)) for j in range(n)]


def crossfade_weights(starts: Sequence[int], window: int) -> list[np.ndarray]:
    """Per window, weights [window] that ramp linearly over the overlaps with its neighbours.

    Over an overlap of o frames the outgoing window has weights o/(o+1) .. 1/(o+1) and the
    incoming one 1/(o+1) .. o/(o+1): where two windows overlap the weights sum to 1, elsewhere a
    frame has weight 1 (blending divides by the sum anyway, so three-way overlaps also work).
    """
    out = []
    n = len(starts)
    i = np.arange(window, dtype=np.float64)
    for j, s in enumerate(starts):
        w = np.ones(window)
        if j > 0:
            o = max(0, starts[j - 1] + window - s)
            if o:
                w = np.minimum(w, np.where(i < o, (i + 1) / (o + 1), 1.0))
        if j < n - 1:
            o = max(0, s + window - starts[j + 1])
            if o:
                w = np.minimum(w, np.where(i >= window - o, (window - i) / (o + 1), 1.0))
        out.append(w)
    return out


def blend_windows(num_frames: int, starts: Sequence[int], window: int,
                  windows: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    """Cross-fade window outputs (float [window, ...] each, in `starts` order) into frames 0..num_frames-1.

    A generator: a frame is yielded as soon as no later window covers it, so at most about two
    windows of float frames are held at a time. Frames past num_frames (padding) are dropped.
    """
    weights = crossfade_weights(starts, window)
    acc: dict = {}
    wsum: dict = {}
    nxt = 0
    for j, (s, frames) in enumerate(zip(starts, windows)):
        frames = np.asarray(frames, dtype=np.float32)
        if frames.shape[0] != window:
            raise ValueError(f"window {j} has {frames.shape[0]} frames, expected {window}")
        for i in range(window):
            t = s + i
            wt = np.float32(weights[j][i])
            if t in acc:
                acc[t] += wt * frames[i]
                wsum[t] += wt
            else:
                acc[t] = wt * frames[i]
                wsum[t] = wt
        done = starts[j + 1] if j + 1 < len(starts) else s + window
        while nxt < min(done, num_frames):
            yield acc.pop(nxt) / wsum.pop(nxt)
            nxt += 1
    if nxt < num_frames:
        raise ValueError(f"the windows cover frames 0..{nxt - 1} of {num_frames}")


# ============================================================================ upscaling: driver


@dataclass
class UpscaleOutput:
    """An upscaled video and how it was cut."""

    frames: np.ndarray                 # uint8 [T, H, W, 3], T = the input's frame count
    starts: list                       # window starts (input frames)
    window: int                        # frames per window (the model's R_f)
    geometry: FitGeometry
    from_level: int


SampleFn = Callable[[list, dict], torch.Tensor]


def upscale_frames(frames: np.ndarray, net, recipe: Recipe, *, from_level: int = 0, fit: str = "crop",
                   pad_mode: str = "edge", window_overlap: float = 0.5, seed: int = 0,
                   condition: Optional[Condition] = None, steps: Optional[Sequence[int]] = None,
                   guidance: Optional[float] = None, overlap: Optional[str] = None, cache: bool = True,
                   offload: bool = False, batch: Optional[int] = None, tile_batch: int = 64, device=None,
                   bf16: bool = False, progress: Optional[Progress] = None,
                   sample_fn: Optional[SampleFn] = None) -> UpscaleOutput:
    """Upscale uint8 frames [T, h, w, 3]: levels 0..from_level fixed from the input, the others generated.

    `sample_fn(seeds, fixed)` (default: the hierarchical sampler) maps window seeds and the fixed
    levels {level: [B, C, F_l, H_l, W_l]} to the last level [B, C, R_f, R_h, R_w] in [-1, 1];
    tests pass stand-ins. Windows are sampled `batch` at a time (window j with seed `seed + j`).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise GenerateError(f"input frames of shape {list(frames.shape)} ({frames.dtype}): expected uint8 "
                            "[T, H, W, 3]")
    pyr = recipe.pyramid
    L = pyr.num_levels
    if not 0 <= from_level < L - 1:
        raise GenerateError(f"--from-level {from_level}: expected 0..{L - 2} (this model has levels 0..{L - 1}; "
                            "at least the last one is generated)")
    R_f, R_h, R_w = pyr.resolution
    T, h, w, _ = frames.shape
    geom = fit_geometry(h, w, (R_h, R_w), fit)
    if pad_mode not in ("black", "edge"):
        raise GenerateError(f"--pad-mode {pad_mode!r}: expected black or edge")
    starts = window_starts(T, R_f, window_overlap)
    padded_T = max(T, R_f)
    check_options(batch=batch, tile_batch=tile_batch, guidance=guidance)
    batch = int(recipe.sample.batch_size if batch is None else batch)
    condition = condition or Condition()
    nsteps = level_steps(recipe.sample, L, steps)
    groups = [list(range(i, min(i + batch, len(starts)))) for i in range(0, len(starts), batch)]

    if sample_fn is None:
        sampler = _make_sampler(net, recipe, device, overlap, tile_batch, cache, offload, bf16)
        w_guidance = 1.0 if condition.kind == "none" else guidance

        def sample_fn(seeds, fixed, _cb=None):
            res = sampler.sample(seeds, condition.batch(len(seeds), sampler.device), guidance=w_guidance,
                                 steps=nsteps, fixed=fixed, progress=_cb)
            _check_finite(res.videos[-1], f"windows {seeds[0] - seed}..{seeds[-1] - seed}")
            return res.videos[-1]
        takes_progress = True
    else:
        takes_progress = False

    def window_tensor(s: int) -> torch.Tensor:
        idx = np.minimum(np.arange(s, s + R_f), T - 1)           # short videos: repeat the last frame
        return fit_frames(_from_uint8(frames[idx]), geom, pad_mode)

    def outputs():
        for g, group in enumerate(groups):
            wins = [window_tensor(starts[j]) for j in group]
            fixed = {k: torch.stack([level_window(x, recipe, k) for x in wins]) for k in range(from_level + 1)}
            seeds = [int(seed) + j for j in group]
            if takes_progress:
                cb = None
                if progress is not None:
                    cb = (lambda l, i, n, _g=g: progress(l, _g * nsteps[l] + i, len(groups) * nsteps[l]))
                top = sample_fn(seeds, fixed, cb)
            else:
                top = sample_fn(seeds, fixed)
            if tuple(top.shape[1:]) != (3, R_f, R_h, R_w):
                raise ValueError(f"sample_fn returned {tuple(top.shape)}, expected [B, 3, {R_f}, {R_h}, {R_w}]")
            y0, y1, x0, x1 = geom.keep
            top = top[..., y0:y1, x0:x1].detach().float().cpu()
            for b in range(top.shape[0]):
                yield top[b].permute(1, 2, 3, 0).numpy()            # [R_f, H, W, 3]

    out = []
    for frame in blend_windows(padded_T, starts, R_f, outputs()):
        if len(out) < T:
            out.append(((np.clip(frame, -1, 1) + 1) * 127.5).round().astype(np.uint8))
    return UpscaleOutput(frames=np.stack(out[:T]), starts=starts, window=R_f, geometry=geom, from_level=from_level)


@dataclass
class UpscaleReport:
    """What `upscale` did."""

    file: Optional[Path]
    input_shape: tuple                 # (frames, height, width) of the input
    output_shape: tuple                # (frames, height, width) written
    fps: float
    windows: int
    from_level: int
    condition: str
    weights: Path
    step: int
    device: str


def upscale(input: str | os.PathLike, ckpt: str | os.PathLike, out: str | os.PathLike, *, from_level: int = 0,
            fit: str = "crop", pad_mode: str = "edge", window_overlap: float = 0.5, seed: int = 0,
            prompt: Optional[str] = None, class_: Optional[str] = None, steps=None,
            guidance: Optional[float] = None, overlap: Optional[str] = None, cache: bool = True,
            offload: bool = False, batch: Optional[int] = None, tile_batch: int = 64, device: str = "auto",
            bf16: bool = False, progress: Optional[Progress] = None, warn: Optional[Log] = None) -> UpscaleReport:
    """`hpdm upscale`: an existing video -> the model's resolution, through its learned upper levels.

    Checks the output path, checkpoint, options and input video before sampling; writes `out`
    atomically with the input's fps and frame count. Under torchrun only rank 0 works. `warn`
    hears about unusable checkpoints skipped in a run directory.
    """
    from .io.video import read_video, write_video
    if fit not in ("crop", "pad"):
        raise GenerateError(f"--fit {fit!r}: expected crop or pad")
    if pad_mode not in ("black", "edge"):
        raise GenerateError(f"--pad-mode {pad_mode!r}: expected black or edge")
    if not 0.0 <= window_overlap < 1.0:
        raise GenerateError(f"--window-overlap {window_overlap}: expected a fraction in [0, 1)")
    if seed < 0:
        raise GenerateError(f"--seed {seed}: expected a seed >= 0")
    if from_level < 0:
        raise GenerateError(f"--from-level {from_level}: expected a level index >= 0")
    check_options(batch=batch, tile_batch=tile_batch, guidance=guidance)
    check_writable([out])
    if not Path(input).is_file():
        raise GenerateError(f"input video {str(input)!r} not found")
    if Path(out).exists() and Path(out).resolve() == Path(input).resolve():
        raise GenerateError(f"--out {str(out)!r} is the input video: choose another output path")
    rank, world, local = _world()
    net, recipe, info = load_generator(ckpt, device, local_rank=local, warn=warn)
    L = recipe.pyramid.num_levels
    if not 0 <= from_level < L - 1:
        raise GenerateError(f"--from-level {from_level}: expected 0..{L - 2} (this model has levels 0..{L - 1}; "
                            "at least the last one is generated)")
    nsteps = parse_steps(steps, L)
    cond = precomputed_condition(recipe, info, prompt, class_, device=info.device)
    if cond is None:
        cond = resolve_condition(recipe, prompt, class_, class_names=info.class_names, device=info.device)
    report = UpscaleReport(file=None, input_shape=(), output_shape=(), fps=0.0, windows=0, from_level=from_level,
                           condition=cond.describe(), weights=info.weights, step=info.step, device=str(info.device))
    if rank != 0:                                       # one process does the work; the others only checked
        return report
    frames, fps = read_video(input)
    if not fps > 0:
        fps = float(recipe.sample.fps or recipe.data.fps)
    report.input_shape, report.fps = tuple(frames.shape[:3]), fps
    res = upscale_frames(frames, net, recipe, from_level=from_level, fit=fit, pad_mode=pad_mode,
                         window_overlap=window_overlap, seed=seed, condition=cond, steps=nsteps, guidance=guidance,
                         overlap=overlap, cache=cache, offload=offload, batch=batch, tile_batch=tile_batch,
                         device=info.device, bf16=bf16, progress=progress)
    _make_parent(Path(out))
    write_video(out, res.frames, fps)
    report.file, report.output_shape, report.windows = Path(out), tuple(res.frames.shape[:3]), len(res.starts)
    return report
