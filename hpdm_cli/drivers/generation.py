"""A loaded generator's videos: the hierarchical sampler built from the commands' options, run per seed.

Every command that samples goes through here:

* `make_sampler` turns the options (tiling, tile batch, caching, bf16, compilation, held context,
  the autoguidance model of level 0) into a `hpdm_cli.sampling.HierarchicalSampler`;
* `sample_batches` runs a built sampler over seeds, `batch` seeds per call, each batch with its
  rows of the condition (one `Condition` for every seed, or one row per seed) and of any levels
  given instead of generated, and refuses non-finite videos; it yields batch by batch, so that
  `hpdm eval-fvd` streams its clips and `hpdm upscale` runs its windows through one sampler;
* `sample_videos` checks the options, builds the sampler once and collects every batch as uint8
  videos (`to_uint8`): `hpdm sample` and `hpdm eval`.

Each video depends only on its seed (and its condition row), not on the batch it is drawn in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..checkpoint import load_generator
from ..conditioning import Condition, GenerateError
from ..config import Recipe, TILE_BATCH
from ..pixels import uint8_from_unit
from ..sampling import HierarchicalSampler, SampleResult, check_guide, level_steps, parse_overlap
from .options import check_options, last_level, parse_guidance

__all__ = ["Progress", "Log", "SampleOutput", "Conditions", "sample_videos", "sample_batches", "make_sampler",
           "load_guide", "check_finite", "to_uint8"]

Progress = Callable[[int, int, int], None]        # progress(level, done, total): steps over all batches
Log = Callable[[str], None]
# One condition for every seed, one row per seed ([N] class ids or [N, tokens, dim] embeddings), or none.
Conditions = Union[Condition, torch.Tensor, None]


def to_uint8(videos: torch.Tensor) -> list[np.ndarray]:
    """Videos [B, C, F, H, W] in [-1, 1] -> list of B uint8 arrays [F, H, W, C]."""
    x = uint8_from_unit(videos)
    return [v.permute(1, 2, 3, 0).contiguous().cpu().numpy() for v in x]


@dataclass
class SampleOutput:
    """Generated videos of some seeds."""

    seeds: list                                   # the seeds, in order
    videos: list                                  # per seed: uint8 [T, H, W, 3] of the last level generated
    levels: Optional[list] = None                 # per seed: list of every level's uint8 video (keep_levels)
    seconds: list = field(default_factory=list)   # per level: wall time summed over batches
    level: int = 0                                # index of the last level generated


def _condition_rows(condition: Conditions, lo: int, hi: int, device) -> Optional[torch.Tensor]:
    """The condition of seeds lo..hi-1 on `device`: a Condition repeated, rows of a per-seed tensor, or None."""
    if condition is None:
        return None
    if isinstance(condition, torch.Tensor):
        if len(condition) < hi:
            raise ValueError(f"a per-seed condition of {len(condition)} rows for seeds {lo}..{hi - 1}")
        return condition[lo:hi].to(device)
    return condition.batch(hi - lo, device)


def sample_batches(sampler: HierarchicalSampler, seeds: Sequence[int], condition: Conditions = None, *,
                   batch: int, steps: Sequence[int], guidance=None, last: Optional[int] = None,
                   fixed: Optional[Mapping[int, torch.Tensor]] = None,
                   progress: Optional[Progress] = None,
                   describe: Callable[[list], str] = lambda chunk: f"seeds {chunk[0]}..{chunk[-1]}",
                   ) -> Iterator[tuple[list, SampleResult]]:
    """Run `sampler` over `seeds`, `batch` at a time: yield each batch's (seeds, result) up to level `last`.

    `condition` is one Condition for every seed or one row per seed; `fixed` maps levels taken as
    given to one row per seed ([N, C, F_l, H_l, W_l] in [-1, 1]). `progress(level, done, total)`
    counts a level's steps over all batches. The last level of each batch is checked finite
    (GenerateError naming the batch by `describe(its seeds)`: nothing is written from NaN videos).
    """
    seeds = [int(s) for s in seeds]
    last = sampler.num_levels - 1 if last is None else int(last)
    starts = range(0, len(seeds), batch)
    for c, lo in enumerate(starts):
        chunk = seeds[lo:lo + batch]
        hi = lo + len(chunk)
        cb = None
        if progress is not None:
            cb = (lambda l, i, n, _c=c: progress(l, _c * steps[l] + i, len(starts) * steps[l]))
        given = None if fixed is None else {k: v[lo:hi] for k, v in fixed.items()}
        res = sampler.sample(chunk, _condition_rows(condition, lo, hi, sampler.device), guidance=guidance,
                             levels=last + 1, steps=steps, fixed=given, progress=cb)
        check_finite(res.videos[last], describe(chunk))
        yield chunk, res


def sample_videos(net, recipe: Recipe, seeds: Sequence[int], condition: Conditions = None, *,
                  levels: Optional[int] = None, steps: Optional[Sequence[int]] = None,
                  guidance=None, overlap: Optional[str] = None, cache: bool = True,
                  offload: bool = False, batch: Optional[int] = None, tile_batch: int = TILE_BATCH, device=None,
                  bf16: bool = False, keep_levels: bool = False, compile: bool = False,
                  progress: Optional[Progress] = None, context_gib: Optional[float] = None,
                  fixed: Optional[Mapping[int, torch.Tensor]] = None, log: Optional[Log] = None,
                  on_batch: Optional[Callable[[list, list], None]] = None) -> SampleOutput:
    """Generate one video per seed, `batch` seeds per sampler call; `levels` = index of the last level.

    Each video depends only on its seed (and its condition row) for a given `batch` and `tile_batch` (a
    forward's floating-point sums depend on its rows). Returns uint8 videos [T, H, W, 3]
    of level `levels` (default: the last level), and every level's video with `keep_levels`;
    `fixed` levels (one row per seed) are taken as given; `log` hears the clips done after each batch.
    `on_batch(seeds, videos)` receives each batch's videos as soon as they are made, and they are then not
    kept (a long run holds one batch in memory, and what is done survives an interruption).
    """
    L = recipe.pyramid.num_levels
    last = last_level(levels, L)
    check_options(batch=batch, tile_batch=tile_batch, guidance=guidance, context_gib=context_gib)
    guidance = parse_guidance(guidance, L)
    nsteps = level_steps(recipe.sample, L, steps)
    batch = int(recipe.sample.batch_size if batch is None else batch)
    seeds = [int(s) for s in seeds]
    sampler = make_sampler(net, recipe, device=device, overlap=overlap, tile_batch=tile_batch, cache=cache,
                           offload=offload, bf16=bf16, compile=compile, context_gib=context_gib)
    out = SampleOutput(seeds=seeds, videos=[], levels=[] if keep_levels else None, seconds=[0.0] * (last + 1),
                       level=last)
    done = 0
    for chunk, res in sample_batches(sampler, seeds, condition,
                                     batch=batch, steps=nsteps, guidance=guidance, last=last, fixed=fixed,
                                     progress=progress):
        videos = to_uint8(res.videos[last])
        done += len(videos)
        if on_batch is not None:
            on_batch(list(chunk), videos)
        else:
            out.videos += videos
        if keep_levels:
            per_level = [to_uint8(v) for v in res.videos]
            out.levels += [[lv[b] for lv in per_level] for b in range(len(chunk))]
        out.seconds = [a + b for a, b in zip(out.seconds, res.seconds)]
        if log is not None:
            log(f"  generated {done}/{len(seeds)} clips ({sum(out.seconds):.0f} s)")
    return out


def check_finite(videos: torch.Tensor, what: str) -> None:
    """Refuse to write videos with NaN/inf values (they would come out black) with a GenerateError."""
    if not bool(torch.isfinite(videos).all()):
        raise GenerateError(f"sampling {what} produced non-finite values (NaN or inf): lower --guidance, or check "
                            "the checkpoint (was its training stable?); nothing was written")


def make_sampler(net, recipe: Recipe, *, device=None, overlap: Optional[str] = None, tile_batch: int = TILE_BATCH,
                 cache: bool = True, offload: bool = False, bf16: bool = False, compile: bool = False,
                 context_gib: Optional[float] = None) -> HierarchicalSampler:
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
        given = f"--overlap {overlap}" if overlap is not None else f"its pyramid.overlap = {recipe.pyramid.overlap!r}"
        raise GenerateError(f"cannot tile this model's levels with {given}: {e}; pass an --overlap that leaves "
                            "out that axis") from None


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
