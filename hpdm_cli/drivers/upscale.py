"""The driver of `hpdm upscale`: a learned video super-resolution through a model's upper levels.

The input (any size, fps and length PyAV reads) is fitted to the model's aspect ratio
(`fit="crop"`: centre crop; `fit="pad"`: pad with black or edge pixels, the padding is cut off
the output again so the output keeps the input's aspect ratio; edge padding by default, black
bars darken the borders of the coarse levels), and its frames are taken as the model's
full-resolution frames (no temporal resampling: the output keeps the input's frame count and
fps). The video is cut into windows of the model's frame count R_f overlapping by
`window_overlap` (default 50%); for each window, levels 0..from_level are fixed to the window
resized to each level's resolution (spatially: area averaging when shrinking, bilinear when
enlarging; temporally: box averaging of R_f / F_l frames, as in training) and the model
generates the levels above. Windows are joined with a linear cross-fade over their overlap
(weights of consecutive windows sum to 1), so there are no jumps at window borders. A video
shorter than R_f is padded by repeating its last frame and trimmed back. Window j is sampled
with seed `seed + j`.

`upscale` is what the CLI calls; `upscale_frames` works on frames in memory; the fit and
window geometry (`fit_geometry`, `window_starts`, `crossfade_weights`, `blend_windows`, ...)
is pure and tested on its own.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..assets import names_packaged
from ..checkpoint import load_generator
from ..conditioning import Condition, GenerateError, request_condition
from ..config import MAX_FPS, MIN_FPS, Recipe, TILE_BATCH
from ..device import world
from ..pixels import uint8_from_unit, unit_from_uint8
from ..sampling import level_steps
from .generation import Log, Progress, make_sampler, sample_batches
from .options import (check_options, check_seed_range, check_writable, guides, make_parent, parse_guidance, parse_steps,
                      with_sample_options)

__all__ = [
    "FitGeometry", "UpscaleOutput", "UpscaleReport", "fit_geometry", "size_notes", "fit_frames", "resize_frames", "level_window",
    "window_starts", "crossfade_weights", "blend_windows", "upscale_frames", "upscale",
]


def _from_uint8(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] -> float [T, 3, H, W] in [-1, 1]."""
    return unit_from_uint8(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2))


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
    _check_fit(mode)
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


def size_notes(hw: Sequence[int], recipe, fit: str, from_level: int) -> list[str]:
    """What a user should hear about an input of size `hw` upscaled by the recipe's model: the output smaller than
    the input's pixels, the same size (nothing enlarged), a level taken from fewer pixels than it has, or with
    --fit pad an output that is only the part of the model's frame showing the input."""
    H, W = recipe.pyramid.resolution[1:]
    g = fit_geometry(int(hw[0]), int(hw[1]), (H, W), fit)
    used = (g.crop[1] - g.crop[0], g.crop[3] - g.crop[2])              # input pixels the output shows
    out = (g.keep[1] - g.keep[0], g.keep[3] - g.keep[2])               # the output's size
    notes = []
    if fit == "pad" and out != (H, W):
        notes.append(f"with --fit pad the output is the {out[0]}x{out[1]} part of the model's {H}x{W} frame that "
                     "shows the input")
    what = f"the input ({hw[0]}x{hw[1]})" if used == tuple(hw) else \
        f"the {used[0]}x{used[1]} centre of the input ({hw[0]}x{hw[1]}) that --fit crop keeps"
    if used[0] > out[0] or used[1] > out[1]:
        notes.append(f"{what} is larger than this model's videos: the output is {out[0]}x{out[1]}, smaller than "
                     "the input")
    elif used == out:
        kept = f"levels 0-{from_level}" if from_level else "level 0"
        notes.append(f"{what} is already the output's size ({out[0]}x{out[1]}): nothing is enlarged; levels "
                     f"{from_level + 1} and up are redrawn from its {kept}")
    lh, lw = recipe.pyramid.level_resolution(from_level)[1:]
    need = (max(1, round(out[0] * lh / H)), max(1, round(out[1] * lw / W)))   # level from_level's share of it
    if used[0] < need[0] or used[1] < need[1]:
        notes.append(f"{what} has fewer pixels than level {from_level} ({need[0]}x{need[1]}), which is taken from "
                     "it: that level itself is enlarged, and the output will look blocky")
    return notes


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
            _check_pad_mode(pad_mode)
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
    _check_window_overlap(overlap)
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


def _check_fit(fit: str) -> None:
    """GenerateError unless `fit` is crop or pad."""
    if fit not in ("crop", "pad"):
        raise GenerateError(f"--fit {fit!r}: expected crop or pad")


def _check_pad_mode(pad_mode: str) -> None:
    """GenerateError unless `pad_mode` is black or edge."""
    if pad_mode not in ("black", "edge"):
        raise GenerateError(f"--pad-mode {pad_mode!r}: expected black or edge")


def _check_window_overlap(overlap: float) -> None:
    """GenerateError unless the window overlap is a fraction in [0, 1)."""
    if not 0.0 <= overlap < 1.0:
        raise GenerateError(f"--window-overlap {overlap}: expected a fraction in [0, 1)")


def _check_from_level(from_level: int, num_levels: int) -> None:
    """GenerateError unless levels 0..from_level can be fixed with at least the last level left to generate."""
    if not 0 <= from_level < num_levels - 1:
        raise GenerateError(f"--from-level {from_level}: expected 0..{num_levels - 2} (this model has levels "
                            f"0..{num_levels - 1}; at least the last one is generated)")


def _check_frames(frames) -> np.ndarray:
    """The input frames as an array, GenerateError unless they are uint8 [T, H, W, 3] with T >= 1."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise GenerateError(f"input frames of shape {list(frames.shape)} ({frames.dtype}): expected uint8 "
                            "[T, H, W, 3]")
    return frames


def _hierarchical_sample_fn(net, recipe: Recipe, condition: Condition, nsteps: list, seed: int, *, guidance,
                            overlap, tile_batch, cache, offload, bf16, device, compile=False, context_gib=None):
    """The default `sample_fn(seeds, fixed, progress)` of `upscale_frames`: the hierarchical sampler's last level."""
    sampler = make_sampler(net, recipe, device=device, overlap=overlap, tile_batch=tile_batch, cache=cache,
                           offload=offload, bf16=bf16, compile=compile, context_gib=context_gib)
    w_guidance = 1.0 if condition.kind == "none" else guidance

    def sample_fn(seeds, fixed, _cb=None):
        [(_, res)] = sample_batches(sampler, seeds, condition, batch=len(seeds), steps=nsteps, guidance=w_guidance,
                                    fixed=fixed, progress=_cb,
                                    describe=lambda chunk: f"windows {chunk[0] - seed}..{chunk[-1] - seed}")
        return res.videos[-1]
    return sample_fn


def _window_outputs(frames: np.ndarray, recipe: Recipe, geom: FitGeometry, pad_mode: str, starts: Sequence[int],
                    groups: Sequence[list], from_level: int, seed: int, call) -> Iterable[np.ndarray]:
    """Per window, in order: the generated last level cut to `geom.keep`, float [R_f, H, W, 3] in [-1, 1].

    `call(group_index, seeds, fixed)` samples one group of windows from their fixed levels.
    """
    T = frames.shape[0]
    R_f, R_h, R_w = recipe.pyramid.resolution
    for g, group in enumerate(groups):
        wins = []
        for j in group:
            idx = np.minimum(np.arange(starts[j], starts[j] + R_f), T - 1)   # short videos: repeat the last frame
            wins.append(fit_frames(_from_uint8(frames[idx]), geom, pad_mode))
        fixed = {k: torch.stack([level_window(x, recipe, k) for x in wins]) for k in range(from_level + 1)}
        top = call(g, [int(seed) + j for j in group], fixed)
        if tuple(top.shape[1:]) != (3, R_f, R_h, R_w):
            raise ValueError(f"sample_fn returned {tuple(top.shape)}, expected [B, 3, {R_f}, {R_h}, {R_w}]")
        y0, y1, x0, x1 = geom.keep
        top = top[..., y0:y1, x0:x1].detach().float().cpu()
        for b in range(top.shape[0]):
            yield top[b].permute(1, 2, 3, 0).numpy()            # [R_f, H, W, 3]


def upscale_frames(frames: np.ndarray, net, recipe: Recipe, *, from_level: int = 0, fit: str = "crop",
                   pad_mode: str = "edge", window_overlap: float = 0.5, seed: int = 0,
                   condition: Optional[Condition] = None, steps: Optional[Sequence[int]] = None,
                   guidance=None, overlap: Optional[str] = None, cache: bool = True,
                   offload: bool = False, batch: Optional[int] = None, tile_batch: int = TILE_BATCH, device=None,
                   bf16: bool = False, compile: bool = False, context_gib: Optional[float] = None,
                   progress: Optional[Progress] = None, sample_fn: Optional[SampleFn] = None) -> UpscaleOutput:
    """Upscale uint8 frames [T, h, w, 3]: levels 0..from_level fixed from the input, the others generated.

    `sample_fn(seeds, fixed)` (default: the hierarchical sampler) maps window seeds and the fixed
    levels {level: [B, C, F_l, H_l, W_l]} to the last level [B, C, R_f, R_h, R_w] in [-1, 1];
    tests pass stand-ins. Windows are sampled `batch` at a time (window j with seed `seed + j`).
    """
    frames = _check_frames(frames)
    L = recipe.pyramid.num_levels
    _check_from_level(from_level, L)
    R_f, R_h, R_w = recipe.pyramid.resolution
    T, h, w, _ = frames.shape
    geom = fit_geometry(h, w, (R_h, R_w), fit)
    _check_pad_mode(pad_mode)
    starts = window_starts(T, R_f, window_overlap)
    check_options(batch=batch, tile_batch=tile_batch, guidance=guidance, context_gib=context_gib)
    guidance = parse_guidance(guidance, L)
    batch = int(recipe.sample.batch_size if batch is None else batch)
    condition = condition or Condition()
    nsteps = level_steps(recipe.sample, L, steps)
    groups = [list(range(i, min(i + batch, len(starts)))) for i in range(0, len(starts), batch)]
    if sample_fn is None:
        sampled = _hierarchical_sample_fn(net, recipe, condition, nsteps, seed, guidance=guidance, overlap=overlap,
                                          tile_batch=tile_batch, cache=cache, offload=offload, bf16=bf16,
                                          device=device, compile=compile, context_gib=context_gib)

        def call(g, seeds, fixed):
            cb = None
            if progress is not None:
                cb = (lambda l, i, n: progress(l, g * nsteps[l] + i, len(groups) * nsteps[l]))
            return sampled(seeds, fixed, cb)
    else:
        def call(g, seeds, fixed):
            return sample_fn(seeds, fixed)
    windows = _window_outputs(frames, recipe, geom, pad_mode, starts, groups, from_level, seed, call)
    out = []
    for frame in blend_windows(max(T, R_f), starts, R_f, windows):
        if len(out) < T:
            out.append(uint8_from_unit(frame))
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
    replaced: bool = False             # the output replaced an earlier file


def upscale(input: str | os.PathLike, ckpt: str | os.PathLike, out: str | os.PathLike, *, from_level: int = 0,
            fit: str = "crop", pad_mode: str = "edge", window_overlap: float = 0.5, seed: int = 0,
            prompt: Optional[str] = None, class_: Optional[str] = None, steps=None,
            guidance=None, overlap: Optional[str] = None, cache: bool = True,
            offload: bool = False, batch: Optional[int] = None, tile_batch: int = TILE_BATCH, device: str = "auto",
            bf16: bool = False, progress: Optional[Progress] = None, warn: Optional[Log] = None,
            guidance_interval=None, guide_model=None, prompt_table: Optional[str | os.PathLike] = None,
            prompt_embedding: Optional[str | os.PathLike] = None, compile: bool = False,
            context_gib: Optional[float] = None, sigma_max=None) -> UpscaleReport:
    """`hpdm upscale`: an existing video -> the model's resolution, through its learned upper levels.

    Checks the output path, checkpoint, options and input video before sampling; writes `out`
    atomically with the input's fps and frame count. Under torchrun only rank 0 works. `warn`
    hears about unusable checkpoints skipped in a run directory, and about an input larger than the output
    or already at its size.
    """
    from ..io.video import read_upright, write_video
    _check_request(input, out, fit=fit, pad_mode=pad_mode, window_overlap=window_overlap, seed=seed,
                   from_level=from_level, batch=batch, tile_batch=tile_batch, guidance=guidance,
                   guidance_interval=guidance_interval, guide_model=guide_model, context_gib=context_gib,
                   sigma_max=sigma_max)
    rank, _, local = world()
    net, recipe, info = load_generator(ckpt, device, local_rank=local, warn=warn)
    recipe = with_sample_options(recipe, guidance_interval=guidance_interval, guide_model=guide_model,
                                 sigma_max=sigma_max)
    _check_from_level(from_level, recipe.pyramid.num_levels)
    nsteps = parse_steps(steps, recipe.pyramid.num_levels)
    guidance = parse_guidance(guidance, recipe.pyramid.num_levels)
    cond = request_condition(recipe, info, prompt, class_, prompt_table=prompt_table,
                             prompt_embedding=prompt_embedding, device=info.device, guided=guides(guidance))
    for note in cond.notes(names_packaged(ckpt) and bool(prompt),
                            short_captions=recipe.data.short_caption_prob > 0) if warn is not None else ():
        warn(note)
    report = UpscaleReport(file=None, input_shape=(), output_shape=(), fps=0.0, windows=0, from_level=from_level,
                           condition=cond.describe(), weights=info.weights, step=info.step, device=str(info.device))
    if rank != 0:                                       # one process does the work; the others only checked
        return report
    frames, fps = read_upright(input)
    if not MIN_FPS <= fps <= MAX_FPS:                    # unknown, or a rate no output container can store
        if warn is not None and fps > 0:
            warn(f"the input's frame rate {fps:g} is outside {MIN_FPS}-{MAX_FPS:g}: the output is written at "
                 "the model's rate")
        fps = float(recipe.sample.fps or recipe.data.fps)
    windows = len(window_starts(frames.shape[0], recipe.pyramid.resolution[0], window_overlap))
    check_seed_range(seed, windows)                     # window j is sampled with seed + j
    report.input_shape, report.fps = tuple(frames.shape[:3]), fps
    for note in size_notes(frames.shape[1:3], recipe, fit, from_level) if warn is not None else ():
        warn(note)
    res = upscale_frames(frames, net, recipe, from_level=from_level, fit=fit, pad_mode=pad_mode,
                         window_overlap=window_overlap, seed=seed, condition=cond, steps=nsteps, guidance=guidance,
                         overlap=overlap, cache=cache, offload=offload, batch=batch, tile_batch=tile_batch,
                         device=info.device, bf16=bf16, compile=compile, context_gib=context_gib,
                         progress=progress)
    make_parent(Path(out))
    report.replaced = Path(out).exists()
    write_video(out, res.frames, fps)
    report.file, report.output_shape, report.windows = Path(out), tuple(res.frames.shape[:3]), len(res.starts)
    return report


def _check_request(input, out, *, fit: str, pad_mode: str, window_overlap: float, seed: int, from_level: int,
                   batch: Optional[int], tile_batch: int, guidance, guidance_interval=None,
                   guide_model=None, context_gib: Optional[float] = None, sigma_max=None) -> None:
    """Everything `upscale` can check before loading the checkpoint (options, output path, input file)."""
    _check_fit(fit)
    _check_pad_mode(pad_mode)
    _check_window_overlap(window_overlap)
    check_seed_range(seed)
    if from_level < 0:
        raise GenerateError(f"--from-level {from_level}: expected a level index >= 0")
    check_options(batch=batch, tile_batch=tile_batch, guidance=guidance, guidance_interval=guidance_interval,
                  guide_model=guide_model, context_gib=context_gib, sigma_max=sigma_max)
    check_writable([out])
    if Path(input).is_dir():
        raise GenerateError(f"input video {str(input)!r} is a folder: give one video file (mp4, gif, png, ...)")
    if not Path(input).is_file():
        raise GenerateError(f"input video {str(input)!r} not found")
    if Path(out).exists() and Path(out).resolve() == Path(input).resolve():
        raise GenerateError(f"--out {str(out)!r} is the input video: choose another output path")
