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

The option checks it shares with the other generating commands are `drivers/options.py`, the
sampler and the sampling loop `drivers/generation.py`. Never imports Typer or Rich, and PyAV
only through `hpdm_cli.io.video` (lazily).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from ..assets import DEFAULT_MODEL, default_overlap, names_packaged, resolve_guide
from ..checkpoint import load_generator
from ..config import TILE_BATCH
from ..conditioning import request_condition
from ..device import world
from ..sampling import level_guidance
from .generation import Log, Progress, SampleOutput, sample_videos
from .options import (check_options, check_writable, guides, last_level, make_parent, output_paths, parse_guidance,
                      parse_seeds, parse_steps, rank_seeds, with_sample_options)

__all__ = ["SampleReport", "write_outputs", "generate"]


def _extra_paths(path: Path, gif: bool, png: bool) -> list[Path]:
    """The file(s) written for one video: the main path plus .gif / .png quick looks on request."""
    paths = [path]
    for flag, suffix in ((gif, ".gif"), (png, ".png")):
        if flag and path.suffix.lower() != suffix:
            paths.append(path.with_suffix(suffix))
    return paths


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
    guidance_interval: list = field(default_factory=list)   # [lo, hi]: guided only at lo < sigma <= hi; [] every sigma


def generate(ckpt: Optional[str | os.PathLike], out: str | os.PathLike = "clip.mp4", *, seeds: str | Sequence[int] = "0",
             prompt: Optional[str] = None, class_: Optional[str] = None, levels: Optional[int] = None,
             batch: Optional[int] = None, steps=None, guidance=None,
             overlap: Optional[str] = None, cache: bool = True, offload: bool = False, fps: Optional[float] = None,
             device: str = "auto", gif: bool = False, png: bool = False, tile_batch: int = TILE_BATCH, bf16: bool = False,
             compile: bool = False, progress: Optional[Progress] = None, warn: Optional[Log] = None,
             prompt_table: Optional[str | os.PathLike] = None,
             prompt_embedding: Optional[str | os.PathLike] = None,
             context_gib: Optional[float] = None, guidance_interval=None, guide_model=None, sigma_max=None,
             on_file: Optional[Callable[[Path, bool], None]] = None) -> SampleReport:
    """`hpdm sample`: checkpoint (None: the packaged model) + condition + seeds -> one video file per seed.

    Each batch's files are written as soon as it is sampled; `on_file(path, replaced)` hears each one.

    Everything that can fail on user input (seeds, numeric options, output paths, checkpoint,
    condition, levels, steps, overlap) is checked before sampling starts. `warn` hears about
    unusable checkpoints skipped in a run directory, and about prompts the packaged model cannot draw.
    """
    packaged = ckpt is None or names_packaged(ckpt)
    if packaged:                                          # the packaged default model
        ckpt = DEFAULT_MODEL             # its recipe carries its sampling defaults (steps, guidance per level)
    all_seeds = parse_seeds(seeds)
    check_options(batch=batch, tile_batch=tile_batch, guidance=guidance, fps=fps, levels=levels,
                  context_gib=context_gib, guidance_interval=guidance_interval, guide_model=guide_model,
                  sigma_max=sigma_max)
    rank, world_size, local = world()
    mine = rank_seeds(all_seeds, rank, world_size)
    paths = output_paths(out, all_seeds)
    check_writable([out] if os.path.isdir(out) else   # a folder: named itself, not as folder-seed0000
                   (p for s in all_seeds for p in _extra_paths(paths[s], gif, png)))
    net, recipe, info = load_generator(ckpt, device, local_rank=local, warn=warn)
    if packaged and overlap is None:                      # its tiling for the device it runs on
        overlap = default_overlap(info.device.type, prompt)
    L = recipe.pyramid.num_levels
    last = last_level(levels, L)
    nsteps = parse_steps(steps, L)
    guidance = parse_guidance(guidance, L)
    recipe = with_sample_options(recipe, guidance_interval=guidance_interval, guide_model=guide_model,
                                 sigma_max=sigma_max)
    cond = request_condition(recipe, info, prompt, class_, prompt_table=prompt_table,
                             prompt_embedding=prompt_embedding, device=info.device, guided=guides(guidance))
    short = recipe.data.short_caption_prob > 0             # trained on captions without their background too
    for note in cond.notes(packaged and bool(prompt), short_captions=short) if warn is not None else ():
        warn(note)
    full_fps = float(fps or recipe.sample.fps or recipe.data.fps)
    shape = recipe.pyramid.level_resolution(last)
    out_fps = full_fps * shape[0] / recipe.pyramid.resolution[0]
    report = SampleReport(files=[], seeds=mine, all_seeds=all_seeds, rank=rank, world_size=world_size, level=last,
                          shape=shape, fps=out_fps, condition=cond.describe(), weights=info.weights, step=info.step,
                          seconds=[], device=str(info.device), guidance_interval=list(recipe.sample.guidance_interval))
    w0 = level_guidance(recipe.sample.guidance if guidance is None else guidance, L)[0]
    if recipe.sample.guide_model and w0 != 1.0:
        report.guide = str(resolve_guide(recipe.sample.guide_model))
    if not mine:
        return report
    existed = {p for s in mine for p in _extra_paths(paths[s], gif, png) if p.exists()}

    def write_batch(batch_seeds: list, videos: list) -> None:
        """Write a batch's files as soon as it is sampled (and say each one)."""
        files = write_outputs(paths, SampleOutput(seeds=batch_seeds, videos=videos, levels=None, seconds=[],
                                                  level=last), out_fps, gif=gif, png=png)
        for f in files:
            report.files.append(f)
            if f in existed:
                report.replaced.append(f)
            if on_file is not None:
                on_file(f, f in existed)
    res = sample_videos(net, recipe, mine, cond, levels=last, steps=nsteps, guidance=guidance, overlap=overlap,
                        cache=cache, offload=offload, batch=batch, tile_batch=tile_batch, device=info.device,
                        bf16=bf16, compile=compile, progress=progress, context_gib=context_gib, on_batch=write_batch)
    report.seconds = res.seconds
    return report
