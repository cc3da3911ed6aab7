"""The driver of `hpdm sample`: seeds, options and output paths checked, videos sampled and written.

`generate` is what the CLI calls (it only parses arguments and prints the report):
* The checkpoint is loaded by `hpdm_cli.checkpoint.load_generator` (None: the packaged default
  model in `hpdm_cli/assets`, with its CPU settings); `--prompt` / `--class` become the network's
  condition through `hpdm_cli.conditioning`.
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

The option checks, the sampler construction and the path helpers here are shared with the
other drivers (`upscale`, `evaluate`, `fvd`). Never imports Typer or Rich, and PyAV only
through `hpdm_cli.io.video` (lazily).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..checkpoint import load_generator
from ..conditioning import Condition, GenerateError, request_condition
from ..config import Recipe
from ..device import world
from ..io import unwritable
from ..sampling import HierarchicalSampler, check_guide, level_guidance, level_steps, parse_overlap

__all__ = [
    "SampleOutput", "SampleReport", "parse_seeds", "parse_steps", "parse_guidance", "parse_guidance_interval",
    "parse_guide_model", "with_sample_options", "check_options", "rank_seeds",
    "output_paths", "check_writable", "make_parent", "to_uint8", "check_finite", "make_sampler", "last_level",
    "sample_videos",
    "write_outputs", "generate",
]

Progress = Callable[[int, int, int], None]        # progress(level, done, total): steps over all batches
Log = Callable[[str], None]

_VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".gif", ".png")


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


def parse_guidance(text, num_levels: Optional[int] = None):
    """`--guidance 3` (every level) or one scale per level "1.5,1,1"; None = the recipe's. A float or a list."""
    from ..config import MAX_GUIDANCE
    if text is None:
        return None
    try:
        vals = ([float(v) for v in text.split(",")] if isinstance(text, str)
                else [float(v) for v in text] if isinstance(text, (list, tuple)) else [float(text)])
    except ValueError:
        vals = []
    if not vals or not all(math.isfinite(v) and 0 <= v <= MAX_GUIDANCE for v in vals):
        raise GenerateError(f"--guidance {text}: expected a number in [0, {MAX_GUIDANCE:g}] or a comma-separated "
                            "list of one per level (1 = no guidance, 0 = unconditional)")
    if len(vals) == 1:
        return vals[0]
    if num_levels is not None and len(vals) != num_levels:
        raise GenerateError(f"--guidance {text}: {len(vals)} values for a model with {num_levels} levels "
                            "(give one value, or one per level)")
    return vals


def parse_guidance_interval(text) -> Optional[list]:
    """`--guidance-interval LO,HI`: guide only at LO < sigma <= HI, as [lo, hi]; None = the recipe's."""
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.split(",")] if isinstance(text, str) else [float(v) for v in text]
    except (TypeError, ValueError):
        vals = []
    if len(vals) != 2 or not (math.isfinite(vals[0]) and 0 <= vals[0] < vals[1]) or math.isnan(vals[1]):
        raise GenerateError(f"--guidance-interval {text}: expected LO,HI with 0 <= LO < HI, the noise levels "
                            "(sigma) between which guidance applies, e.g. 0.28,5.42")
    return vals


def parse_guide_model(text) -> Optional[str]:
    """`--guide-model`: a base-level model for autoguidance of level 0 ("packaged": the packaged model's guide;
    "none": classifier-free guidance), as sample.guide_model; None = the recipe's."""
    if text is None:
        return None
    text = str(text)
    if text == "none":
        return ""
    if text != "packaged" and not Path(text).exists():
        raise GenerateError(f"--guide-model {text}: no such file or directory; give a model of level 0 alone (a "
                            "run directory, checkpoint or .safetensors file), packaged, or none (no autoguidance)")
    return text


def with_sample_options(recipe, *, guidance_interval=None, guide_model=None):
    """The recipe with `--guidance-interval` and `--guide-model` as its sample settings (None keeps the recipe's)."""
    edits = {}
    interval = parse_guidance_interval(guidance_interval)
    if interval is not None:
        edits["guidance_interval"] = interval
    guide = parse_guide_model(guide_model)
    if guide is not None:
        edits["guide_model"] = guide
    return dataclasses.replace(recipe, sample=dataclasses.replace(recipe.sample, **edits)) if edits else recipe


def check_options(*, batch: Optional[int] = None, tile_batch: int = 64, guidance=None,
                  fps: Optional[float] = None, levels: Optional[int] = None,
                  context_gib: Optional[float] = None, guidance_interval=None, guide_model=None) -> None:
    """Raise GenerateError for a numeric option out of its range (before any checkpoint is loaded)."""
    if context_gib is not None and not (math.isfinite(context_gib) and context_gib >= 0):
        raise GenerateError(f"--context-gib {context_gib}: expected a number of GiB >= 0 (0 = recompute the "
                            "context at every step)")
    if batch is not None and batch < 1:
        raise GenerateError(f"--batch {batch}: expected at least 1 (seeds or windows per sampler call)")
    if tile_batch < 1:
        raise GenerateError(f"--tile-batch {tile_batch}: expected at least 1 (tiles per network forward)")
    parse_guidance(guidance)
    parse_guidance_interval(guidance_interval)
    parse_guide_model(guide_model)
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
    writable directory); nothing is created here (`make_parent` does that when writing).
    """
    for p in paths:
        p = Path(p)
        if p.suffix.lower() not in _VIDEO_SUFFIXES:
            raise GenerateError(f"cannot write {str(p)!r}: unknown video suffix {p.suffix or '(none)'!r}; "
                                f"use one of {', '.join(_VIDEO_SUFFIXES)}")
        why = unwritable(p)
        if why is not None:
            raise GenerateError(f"cannot write {str(p)!r}: {why}")


def make_parent(path: Path) -> None:
    """Create the output's directory (checked by `check_writable`) just before writing into it."""
    try:
        Path(path).absolute().parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GenerateError(f"cannot write {str(path)!r}: cannot create its directory ({e.strerror or e})") from None


def to_uint8(videos: torch.Tensor) -> list[np.ndarray]:
    """Videos [B, C, F, H, W] in [-1, 1] -> list of B uint8 arrays [F, H, W, C]."""
    x = ((videos.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [v.permute(1, 2, 3, 0).contiguous().cpu().numpy() for v in x]


# ============================================================================ sampling


@dataclass
class SampleOutput:
    """Generated videos of some seeds."""

    seeds: list                                   # the seeds, in order
    videos: list                                  # per seed: uint8 [T, H, W, 3] of the last level generated
    levels: Optional[list] = None                 # per seed: list of every level's uint8 video (keep_levels)
    seconds: list = field(default_factory=list)   # per level: wall time summed over batches
    level: int = 0                                # index of the last level generated


def last_level(levels: Optional[int], num_levels: int) -> int:
    """The index of the last level to generate: `levels`, or the model's last (GenerateError if out of range)."""
    last = num_levels - 1 if levels is None else int(levels)
    if not 0 <= last < num_levels:
        raise GenerateError(f"--levels {levels}: this model has levels 0..{num_levels - 1} (0 = only the coarsest)")
    return last


def sample_videos(net, recipe: Recipe, seeds: Sequence[int], condition: Optional[Condition] = None, *,
                  levels: Optional[int] = None, steps: Optional[Sequence[int]] = None,
                  guidance=None, overlap: Optional[str] = None, cache: bool = True,
                  offload: bool = False, batch: Optional[int] = None, tile_batch: int = 64, device=None,
                  bf16: bool = False, keep_levels: bool = False, compile: bool = False,
                  progress: Optional[Progress] = None, context_gib: Optional[float] = None) -> SampleOutput:
    """Generate one video per seed, `batch` seeds per sampler call; `levels` = index of the last level.

    Each video depends only on its seed. Returns uint8 videos [T, H, W, 3] of level `levels`
    (default: the last level), and every level's video with `keep_levels`.
    """
    L = recipe.pyramid.num_levels
    last = last_level(levels, L)
    check_options(batch=batch, tile_batch=tile_batch, guidance=guidance, context_gib=context_gib)
    guidance = parse_guidance(guidance, L)
    nsteps = level_steps(recipe.sample, L, steps)
    batch = int(recipe.sample.batch_size if batch is None else batch)
    seeds = [int(s) for s in seeds]
    condition = condition or Condition()
    sampler = make_sampler(net, recipe, device, overlap, tile_batch, cache, offload, bf16, compile=compile,
                           context_gib=context_gib)
    chunks = [seeds[i:i + batch] for i in range(0, len(seeds), batch)]
    out = SampleOutput(seeds=seeds, videos=[], levels=[] if keep_levels else None, seconds=[0.0] * (last + 1),
                       level=last)
    for c, chunk in enumerate(chunks):
        cb = None
        if progress is not None:
            cb = (lambda l, i, n, _c=c: progress(l, _c * nsteps[l] + i, len(chunks) * nsteps[l]))
        res = sampler.sample(chunk, condition.batch(len(chunk), sampler.device), guidance=guidance,
                             levels=last + 1, steps=nsteps, progress=cb)
        check_finite(res.videos[last], f"seeds {chunk[0]}..{chunk[-1]}")
        out.videos += to_uint8(res.videos[last])
        if keep_levels:
            per_level = [to_uint8(v) for v in res.videos]
            out.levels += [[lv[b] for lv in per_level] for b in range(len(chunk))]
        out.seconds = [a + b for a, b in zip(out.seconds, res.seconds)]
    return out


def check_finite(videos: torch.Tensor, what: str) -> None:
    """Refuse to write videos with NaN/inf values (they would come out black) with a GenerateError."""
    if not bool(torch.isfinite(videos).all()):
        raise GenerateError(f"sampling {what} produced non-finite values (NaN or inf): lower --guidance, or check "
                            "the checkpoint (was its training stable?); nothing was written")


def make_sampler(net, recipe, device, overlap, tile_batch, cache, offload, bf16,
                 compile: bool = False, context_gib: Optional[float] = None) -> HierarchicalSampler:
    """The hierarchical sampler for `net` with these options (GenerateError for a bad --overlap or tiling).

    `context_gib` replaces the recipe's sample.context_cache_gib.
    """
    sample_cfg = recipe.sample
    if context_gib is not None:
        sample_cfg = dataclasses.replace(sample_cfg, context_cache_gib=float(context_gib))
    if overlap is not None:
        try:
            overlap = parse_overlap(overlap, "--overlap") or "none"
        except ValueError as e:
            raise GenerateError(str(e)) from None
    if device is None:
        p = next(iter(net.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    guide = load_guide(recipe, device) if recipe.sample.guide_model else None
    if guide is not None:
        try:
            check_guide(net, guide)
        except ValueError as e:
            raise GenerateError(f"sample.guide_model = {recipe.sample.guide_model}: {e}") from None
    try:
        return HierarchicalSampler(net, recipe.diffusion, sample_cfg, device, overlap=overlap, tile_batch=tile_batch,
                                   cache=cache, offload=offload, autocast=torch.bfloat16 if bf16 else None,
                                   compile=compile, guide=guide)
    except ValueError as e:
        raise GenerateError(f"cannot tile this model's levels with --overlap {overlap}: {e}") from None


def load_guide(recipe, device) -> torch.nn.Module:
    """The network of `recipe.sample.guide_model` (autoguidance of level 0), on `device`; GenerateError if unusable."""
    from ..train.checkpoint import CheckpointError
    from ..assets import resolve_guide
    path = resolve_guide(recipe.sample.guide_model)
    try:
        guide, g_recipe, _ = load_generator(path, device)
    except CheckpointError as e:
        raise GenerateError(f"sample.guide_model: {e}") from None
    d, g = recipe.diffusion, g_recipe.diffusion
    if (d.sigma_data, d.input_scale) != (g.sigma_data, g.input_scale):
        raise GenerateError(f"sample.guide_model = {recipe.sample.guide_model}: trained with sigma_data "
                            f"{g.sigma_data} and input_scale {g.input_scale}, the model with {d.sigma_data} and "
                            f"{d.input_scale}; a guide must be trained with the model's noise scaling")
    return guide


def write_outputs(paths: Mapping[int, Path], output: SampleOutput, fps: float, *, gif: bool = False,
                  png: bool = False) -> list[Path]:
    """Write each seed's video to its path (atomically), plus .gif / .png strips on request; returns the files."""
    from ..io.video import write_video
    written = []
    for seed, video in zip(output.seeds, output.videos):
        for p in _extra_paths(Path(paths[seed]), gif, png):
            make_parent(p)
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
    replaced: list = field(default_factory=list)  # files written that replaced an earlier one
    guide: str = ""                               # the model that guided level 0 (autoguidance), "" if none


def generate(ckpt: Optional[str | os.PathLike], out: str | os.PathLike = "clip.mp4", *, seeds: str | Sequence[int] = "0",
             prompt: Optional[str] = None, class_: Optional[str] = None, levels: Optional[int] = None,
             batch: Optional[int] = None, steps=None, guidance=None,
             overlap: Optional[str] = None, cache: bool = True, offload: bool = False, fps: Optional[float] = None,
             device: str = "auto", gif: bool = False, png: bool = False, tile_batch: int = 64, bf16: bool = False,
             compile: bool = False, progress: Optional[Progress] = None, warn: Optional[Log] = None,
             prompt_table: Optional[str | os.PathLike] = None,
             prompt_embedding: Optional[str | os.PathLike] = None,
             context_gib: Optional[float] = None, guidance_interval=None, guide_model=None) -> SampleReport:
    """`hpdm sample`: checkpoint (None: the packaged model) + condition + seeds -> one video file per seed.

    Everything that can fail on user input (seeds, numeric options, output paths, checkpoint,
    condition, levels, steps, overlap) is checked before sampling starts. `warn` hears about
    unusable checkpoints skipped in a run directory, and about prompts the packaged model cannot draw.
    """
    packaged = ckpt is None
    if packaged:                                          # the packaged default model
        from ..assets import DEFAULT_MODEL
        ckpt = DEFAULT_MODEL             # its recipe carries its sampling defaults (steps, guidance per level)
    all_seeds = parse_seeds(seeds)
    check_options(batch=batch, tile_batch=tile_batch, guidance=guidance, fps=fps, levels=levels,
                  context_gib=context_gib, guidance_interval=guidance_interval, guide_model=guide_model)
    rank, world_size, local = world()
    mine = rank_seeds(all_seeds, rank, world_size)
    paths = output_paths(out, all_seeds)
    check_writable(p for s in all_seeds for p in _extra_paths(paths[s], gif, png))
    net, recipe, info = load_generator(ckpt, device, local_rank=local, warn=warn)
    if packaged and overlap is None:                      # its tiling for the device it runs on
        from ..assets import default_overlap
        overlap = default_overlap(info.device.type)
    L = recipe.pyramid.num_levels
    last = last_level(levels, L)
    nsteps = parse_steps(steps, L)
    guidance = parse_guidance(guidance, L)
    recipe = with_sample_options(recipe, guidance_interval=guidance_interval, guide_model=guide_model)
    cond = request_condition(recipe, info, prompt, class_, prompt_table=prompt_table,
                             prompt_embedding=prompt_embedding, device=info.device, guided=guidance is not None)
    if packaged and prompt and warn is not None:
        from ..data.shapes import unseen_pairing
        note = unseen_pairing(prompt)
        if note:
            warn(note)
    full_fps = float(fps or recipe.sample.fps or recipe.data.fps)
    shape = recipe.pyramid.level_resolution(last)
    out_fps = full_fps * shape[0] / recipe.pyramid.resolution[0]
    report = SampleReport(files=[], seeds=mine, all_seeds=all_seeds, rank=rank, world_size=world_size, level=last,
                          shape=shape, fps=out_fps, condition=cond.describe(), weights=info.weights, step=info.step,
                          seconds=[], device=str(info.device))
    w0 = level_guidance(recipe.sample.guidance if guidance is None else guidance, L)[0]
    if recipe.sample.guide_model and w0 != 1.0:
        from ..assets import resolve_guide
        report.guide = str(resolve_guide(recipe.sample.guide_model))
    if not mine:
        return report
    res = sample_videos(net, recipe, mine, cond, levels=last, steps=nsteps, guidance=guidance, overlap=overlap,
                        cache=cache, offload=offload, batch=batch, tile_batch=tile_batch, device=info.device,
                        bf16=bf16, compile=compile, progress=progress, context_gib=context_gib)
    existed = {p for s in mine for p in _extra_paths(paths[s], gif, png) if p.exists()}
    report.files = write_outputs(paths, res, out_fps, gif=gif, png=png)
    report.replaced = [p for p in report.files if p in existed]
    report.seconds = res.seconds
    return report

