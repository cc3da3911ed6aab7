"""The options every generating command shares (`sample`, `upscale`, `eval`, `eval-fvd`), parsed and checked.

Seeds ("0-7", "1,5,9", "3" or mixes), per-level steps and guidance, the guidance interval and
guide model, numeric ranges, the last level, this process's share of the seeds under torchrun,
and output paths: every check raises `GenerateError` (one line, exit code 2) before any model is
loaded or anything sampled. A missing output directory is fine when it can be created
(`make_parent` creates it just before writing). Never imports Typer, Rich or PyAV.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..assets import PACKAGED
from ..conditioning import GenerateError
from ..config import MAX_FPS, MAX_SEED, MAX_STEPS, MAX_VIDEOS, MIN_FPS, TILE_BATCH
from ..io import NAME_MAX, unwritable
from ..io.video import VIDEO_SUFFIXES

__all__ = [
    "parse_seeds", "check_seed_range", "parse_steps", "parse_guidance", "parse_guidance_interval", "parse_guide_model",
    "parse_sigma_max",
    "with_sample_options", "check_options", "rank_seeds", "output_paths", "check_writable", "make_parent",
    "last_level",
]


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
            if b - a >= MAX_VIDEOS:
                raise GenerateError(f"--seeds {text!r}: the range {p} holds more than {MAX_VIDEOS:,} seeds")
            seeds += range(a, b + 1)
    seen = set()
    for s in seeds:
        check_seed_range(s, option="seed")
        if s in seen:
            raise GenerateError(f"--seeds {text!r}: seed {s} is given twice")
        seen.add(s)
    if not seeds:
        raise GenerateError("--seeds: no seeds given")
    return seeds


def check_seed_range(first: int, count: int = 1, option: str = "--seed") -> None:
    """Refuse seeds first .. first + count - 1 outside 0 .. MAX_SEED (the sampler takes a seed modulo 2**64)."""
    last = first + count - 1
    if first < 0 or last > MAX_SEED:
        span = f" (its {count} seeds run up to {last})" if count > 1 else ""
        raise GenerateError(f"{option} {first}{span}: seeds run from 0 to 2**64 - 1 ({MAX_SEED})")


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
    if any(v > MAX_STEPS for v in vals):
        raise GenerateError(f"--steps {text!r}: at most {MAX_STEPS} steps a level")
    if len(vals) == 1:
        from ..sampling.hierarchical import halved_steps
        return halved_steps(vals[0], num_levels)
    if len(vals) != num_levels:
        raise GenerateError(f"--steps {text!r}: {len(vals)} values for a model with {num_levels} levels "
                            "(give one value, or one per level)")
    return vals


def parse_guidance(text, num_levels: Optional[int] = None):
    """`--guidance 3` (every level) or one scale per level "1.5,1,1"; None = the recipe's. A float or a list."""
    from ..config import MAX_GUIDANCE
    return _per_level("--guidance", text, num_levels, lambda v: 0 <= v <= MAX_GUIDANCE,
                      f"a number in [0, {MAX_GUIDANCE:g}] or a comma-separated list of one per level (1 = no "
                      "guidance, 0 = unconditional)")


def _per_level(option: str, text, num_levels: Optional[int], ok, expected: str):
    """One number for every level or one per level, from "a,b,c", a number or a list: a float or a list; a
    GenerateError naming `option` for a value that is not finite or fails `ok` (`expected` says what is wanted), or
    for a list of another length than `num_levels` (None: not checked). None stays None (the recipe's)."""
    if text is None:
        return None
    try:
        vals = ([float(v) for v in text.split(",")] if isinstance(text, str)
                else [float(v) for v in text] if isinstance(text, (list, tuple)) else [float(text)])
    except (TypeError, ValueError):
        vals = []
    if not vals or not all(math.isfinite(v) and ok(v) for v in vals):
        raise GenerateError(f"{option} {text}: expected {expected}")
    if len(vals) == 1:
        return vals[0]
    if num_levels is not None and len(vals) != num_levels:
        raise GenerateError(f"{option} {text}: {len(vals)} values for a model with {num_levels} levels "
                            "(give one value, or one per level)")
    return vals


def guides(guidance) -> bool:
    """Whether a parsed --guidance (None, a scale or one per level) guides at all: some scale other than 1."""
    if guidance is None:
        return False
    return any(float(g) != 1.0 for g in (guidance if isinstance(guidance, (list, tuple)) else [guidance]))


def parse_guidance_interval(text) -> Optional[list]:
    """`--guidance-interval LO,HI` (guide only at LO < sigma <= HI) as [lo, hi].

    "none" gives [] (guide at every sigma); None stays None (the recipe's).
    """
    if text is None:
        return None
    if isinstance(text, str) and text.strip().lower() == "none":
        return []
    try:
        vals = [float(v) for v in text.split(",")] if isinstance(text, str) else [float(v) for v in text]
    except (TypeError, ValueError):
        vals = []
    if len(vals) != 2 or not (math.isfinite(vals[0]) and 0 <= vals[0] < vals[1]) or math.isnan(vals[1]):
        raise GenerateError(f"--guidance-interval {text}: expected LO,HI with 0 <= LO < HI, the noise levels "
                            "(sigma) between which guidance applies, e.g. 0.28,5.42, or none (every sigma)")
    return vals


def parse_guide_model(text) -> Optional[str]:
    """`--guide-model` checked and returned as sample.guide_model: the base-level model that autoguides level 0.

    "packaged" is the packaged model's guide (a folder of that name: ./packaged), "none" classifier-free guidance;
    None stays None (the recipe's).
    """
    if text is None:
        return None
    text = str(text)
    if text == "none":
        return ""
    if text != PACKAGED and not Path(text).exists():
        raise GenerateError(f"--guide-model {text}: no such file or directory; give a model of level 0 alone (a "
                            "run directory, checkpoint or .safetensors file), packaged, or none (no autoguidance)")
    return text


def parse_sigma_max(text, num_levels: Optional[int] = None, sigma_min: float = 0.0):
    """`--sigma-max 80` (every level) or one per level "80,10,10": where each level's schedule starts; None = the
    recipe's. A float or a list, every value above `sigma_min` (where the schedules end)."""
    floor = f"above sample.sigma_min = {sigma_min:g}" if sigma_min > 0 else "> 0"
    return _per_level("--sigma-max", text, num_levels, lambda v: v > sigma_min,
                      f"a noise level {floor}, or a comma-separated list of one per level, e.g. 80,10,10 (where each "
                      "level's sampling starts)")


def with_sample_options(recipe, *, guidance_interval=None, guide_model=None, sigma_max=None):
    """The recipe with `--guidance-interval`, `--guide-model` and `--sigma-max` as its sample settings (None keeps
    the recipe's)."""
    edits = {}
    start = parse_sigma_max(sigma_max, recipe.pyramid.num_levels, recipe.sample.sigma_min)
    if start is not None:
        edits["sigma_max"] = start
    interval = parse_guidance_interval(guidance_interval)
    if interval is not None:
        edits["guidance_interval"] = interval
    guide = parse_guide_model(guide_model)
    if guide is not None:
        edits["guide_model"] = guide
    return dataclasses.replace(recipe, sample=dataclasses.replace(recipe.sample, **edits)) if edits else recipe


def check_options(*, batch: Optional[int] = None, tile_batch: int = TILE_BATCH, guidance=None,
                  fps: Optional[float] = None, levels: Optional[int] = None,
                  context_gib: Optional[float] = None, guidance_interval=None, guide_model=None,
                  sigma_max=None) -> None:
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
    parse_sigma_max(sigma_max)
    if fps is not None and not (math.isfinite(fps) and MIN_FPS <= fps <= MAX_FPS):
        raise GenerateError(f"--fps {fps}: expected a number from {MIN_FPS} to {MAX_FPS:g} (frames per second)")
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


def check_writable(paths: Iterable[str | os.PathLike]) -> None:
    """Raise GenerateError unless every path can be written (video suffix, not a directory, writable place).

    A missing output directory is fine when it can be created (the nearest existing ancestor is a
    writable directory); nothing is created here (`make_parent` does that when writing).
    """
    for p in paths:
        p = Path(p)
        if any(len(os.fsencode(part)) > NAME_MAX for part in p.parts):   # before any stat (it would fail)
            raise GenerateError(f"cannot write {str(p)!r}: {unwritable(p)}")
        if str(p) == "-" or (p.exists() and not (p.is_file() or p.is_dir())) or p.absolute().parent == Path("/dev"):
            raise GenerateError(f"cannot write {str(p)!r}: videos are written to files (an atomic rename into "
                                "place), not to a stream or device: give a file name, e.g. clip.mp4")
        if os.path.isdir(p):
            raise GenerateError(f"cannot write {str(p)!r}: it is a directory: give a video file name, e.g. "
                                f"{str(p / 'clip.mp4')!r}")
        if p.suffix.lower() not in VIDEO_SUFFIXES:
            hidden = " (a name that starts with a dot has no suffix: give one before it, e.g. clip.mp4)" \
                if p.name.startswith(".") and not p.suffix else ""
            raise GenerateError(f"cannot write {str(p)!r}: unknown video suffix {p.suffix or '(none)'!r}{hidden}; "
                                f"use one of {', '.join(VIDEO_SUFFIXES)}")
        why = unwritable(p)
        if why is not None:
            raise GenerateError(f"cannot write {str(p)!r}: {why}")


def make_parent(path: Path) -> None:
    """Create the output's directory (checked by `check_writable`) just before writing into it."""
    try:
        Path(path).absolute().parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GenerateError(f"cannot write {str(path)!r}: cannot create its directory ({e.strerror or e})") from None


def last_level(levels: Optional[int], num_levels: int) -> int:
    """The index of the last level to generate: `levels`, or the model's last (GenerateError if out of range)."""
    last = num_levels - 1 if levels is None else int(levels)
    if not 0 <= last < num_levels:
        raise GenerateError(f"--levels {levels}: this model has levels 0..{num_levels - 1} (0 = only the coarsest)")
    return last
