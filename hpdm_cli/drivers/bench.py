"""The driver of `hpdm bench`: training throughput, peak memory, counted FLOPs and MFU, or sampling time.

Inputs are synthetic full-resolution videos already on the device, so the numbers measure the
model (patch extraction, forward, backward, then the step as training takes it: gradient clipping, the
recipe's optimiser, the EMA update), not the data loader. FLOPs come from
`model.flops` (checked against torch's FlopCounterMode in the tests); MFU divides the achieved
FLOP rate by the card's dense peak for the precision used. `run_bench` is what the command
calls: it checks the options of the chosen mode, times it and writes `--json`.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..config import (BENCH_SAMPLING_BATCH, BENCH_SAMPLING_PRECISION, BENCH_STEPS, BENCH_WARMUP, ConfigError, Recipe,
                      TILE_BATCH)
from ..diffusion.edm import draw_noise
from ..io import atomic_write_json, holds_other_than, make_folder, unwritable
from ..model.flops import train_step_flops
from ..pyramid import sample_nested_offsets

__all__ = ["PEAK_FLOPS", "PRECISIONS", "peak_flops", "bench_training", "bench_sampling", "write_json", "run_bench",
           "check_memory_chart_options"]

# Dense peak FLOP/s by (card, precision): vendor datasheets (SXM parts, no sparsity).
PEAK_FLOPS = {
    "H100": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H200": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
}


PRECISIONS = ("fp32", "tf32", "bf16")


# ============================================================================ the command



def run_bench(recipe: str, overrides: Sequence[str] = (), *, sampling: bool = False, steps: Optional[int] = None,
              warmup: Optional[int] = None, batch: Optional[int] = None, ablations: bool = False,
              precision: Optional[str] = None, overlap: Optional[str] = None, compare_cache: bool = True,
              sample_steps: Optional[str] = None, compile: bool = False, tile_batch: Optional[str] = None,
              json_out: Optional[Path] = None, warn: Optional[Callable[[str], None]] = None,
              log: Optional[Callable[[str], None]] = None) -> list[dict]:
    """`hpdm bench`: time training (or, with `sampling`, generation) of a recipe; one row per variant.

    `precision`, `overlap`, `sample_steps` and `tile_batch` are the comma-separated option values; options left
    as None take the defaults of `bench_training` / `bench_sampling`. Options of the other mode
    are refused, not ignored. The rows are also written to `json_out`. `warn` hears, before any timing,
    that bf16 would run on a CPU that only emulates it (`hpdm_cli.device.emulated_bf16_warning`); `log` hears
    each row in one line as soon as it is timed (a bench can run for minutes).
    """
    _check_mode(sampling, steps=steps, warmup=warmup, ablations=ablations, overlap=overlap,
                compare_cache=compare_cache, sample_steps=sample_steps, compile=compile, tile_batch=tile_batch)
    if json_out is not None:
        _check_json_target(json_out)
    precisions = _csv(precision, "--precision", "fp32,bf16") if precision is not None else None
    from ..recipe import default_recipe_path, load_recipe
    rec = load_recipe(default_recipe_path(recipe), list(overrides))
    if sampling:
        if precisions is not None and len(precisions) != 1:
            raise ConfigError(f"--precision {precision!r}: --sampling times one precision, e.g. --precision bf16")
        given = dict(batch=batch, precision=precisions[0] if precisions else None,
                     overlaps=_csv(overlap, "--overlap", "fhw,hw,none") if overlap is not None else None,
                     steps=_sample_steps(sample_steps) if sample_steps is not None else None,
                     tile_batches=_ints(tile_batch, "--tile-batch", "64,256,1024") if tile_batch is not None else None)
        rows = bench_sampling(rec, compare_cache=compare_cache, compile=compile, warn=warn, log=log,
                              **{k: v for k, v in given.items() if v is not None})
    else:
        given = dict(steps=steps, warmup=warmup)
        rows = bench_training(rec, batch=batch, ablations=ablations, precisions=precisions, warn=warn, log=log,
                              **{k: v for k, v in given.items() if v is not None})
    if json_out is not None:
        write_json(json_out, rows)
    return rows


def _warn_emulated_bf16(warn: Optional[Callable[[str], None]], device: torch.device, precisions: Sequence[str]) -> None:
    """Tell `warn`, before any timing, that bf16 would run on a CPU that only emulates it (~5x slower)."""
    if warn is None or "bf16" not in precisions:
        return
    from ..device import emulated_bf16_warning
    message = emulated_bf16_warning(device, "bf16", "time --precision fp32 on a CPU")
    if message:
        warn(message)


def _check_mode(sampling: bool, *, steps, warmup, ablations: bool, overlap, compare_cache: bool,
                sample_steps, compile: bool = False, tile_batch=None) -> None:
    """Refuse options of the other mode: they would be ignored without a word."""
    if sampling:
        given = [o for o, v in (("--steps", steps), ("--warmup", warmup), ("--ablations", ablations or None))
                 if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} only {'apply' if len(given) > 1 else 'applies'} to timing "
                              f"training, not --sampling: drop {'them' if len(given) > 1 else 'it'} "
                              "(--sample-steps sets the sampler's steps)")
    else:
        given = [o for o, v in (("--overlap", overlap), ("--sample-steps", sample_steps),
                                ("--cache-only", None if compare_cache else True), ("--compile", compile or None),
                                ("--tile-batch", tile_batch)) if v is not None]
        if given:
            hint = " (training compiles with train.compile=true)" if compile else ""
            raise ConfigError(f"{', '.join(given)} only {'apply' if len(given) > 1 else 'applies'} with --sampling: "
                              f"add --sampling or drop {'them' if len(given) > 1 else 'it'}{hint}")


def check_memory_chart_options(memory_chart: bool, *, resolutions, baseline: bool, steps, warmup, batch,
                               ablations: bool, precision, sampling: bool, overlap, compare_cache: bool, sample_steps,
                               compile: bool, tile_batch) -> None:
    """Refuse the timing options with --memory-chart, and the memory chart's options without it (ConfigError)."""
    if memory_chart:
        given = [o for o, v in (("--steps", steps), ("--warmup", warmup), ("--batch", batch),
                                ("--ablations", ablations or None), ("--precision", precision),
                                ("--sampling", sampling or None), ("--overlap", overlap),
                                ("--cache-only", None if compare_cache else True), ("--sample-steps", sample_steps),
                                ("--compile", compile or None), ("--tile-batch", tile_batch)) if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: not used by --memory-chart (one bf16 step at batch 1 per "
                              f"resolution); drop {'it' if len(given) == 1 else 'them'}")
    elif resolutions is not None or not baseline:
        raise ConfigError(f"{'--resolutions' if resolutions is not None else '--no-baseline'} only applies with "
                          "--memory-chart PNG: add it or drop the option")


def _csv(value: str, option: str, example: str) -> list:
    """Split a comma-separated option value; an empty item is an error naming the option."""
    items = [v.strip() for v in value.split(",")]
    if not all(items):
        raise ConfigError(f"{option} {value!r}: expected comma-separated values without empty items, e.g. {example}")
    return items


def _ints(value: str, option: str, example: str) -> list[int]:
    """A comma-separated integer option, e.g. --sample-steps 8,4,2 -> [8, 4, 2] (ranges checked by the caller)."""
    try:
        return [int(v) for v in _csv(value, option, example)]
    except ValueError:
        raise ConfigError(f"{option} {value!r}: expected comma-separated positive integers, e.g. {example}") from None


def _sample_steps(value: str) -> list[int]:
    """--sample-steps 8,4,2 -> [8, 4, 2] (one count per level, or one for level 0; checked by bench_sampling)."""
    return _ints(value, "--sample-steps", "8,4,2")


def _check_json_target(path: Path) -> None:
    """Refuse a --json path that cannot be written, before anything is timed."""
    why = unwritable(path, suffix=".json")                    # missing folders are made, as sample --out's
    if why is not None:
        raise ConfigError(f"--json {path}: {why}")
    if holds_other_than(path, is_bench_report):
        raise ConfigError(f"--json {path} already holds a file that is not an `hpdm bench` report: choose another "
                          "path (or delete it)")


def is_bench_report(value) -> bool:
    """Whether JSON `value` is what `hpdm bench --json` writes: a list of rows, each naming its device."""
    return isinstance(value, list) and all(isinstance(r, dict) and "device" in r for r in value)


def write_json(path: str | Path, rows: list[dict]) -> None:
    """Write benchmark rows as JSON (atomically; missing folders are created)."""
    make_folder(Path(path).parent, "--json")
    atomic_write_json(path, rows)


# ============================================================================ checks and hardware

def _check_count(option: str, value, low: int) -> None:
    """Refuse a count that is not an integer >= low (ConfigError naming the `hpdm bench` option)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{option} {value!r}: expected an integer >= {low}")


def _check_precisions(precisions) -> None:
    """Refuse an empty list or an unknown precision (ConfigError)."""
    if not precisions:
        raise ConfigError(f"precision: expected one or more of {', '.join(PRECISIONS)}")
    for p in precisions:
        if p not in PRECISIONS:
            raise ConfigError(f"precision {p!r}: expected one of {', '.join(PRECISIONS)} "
                              "(--precision fp32,bf16 times both)")


def peak_flops(device: torch.device, precision: str) -> Optional[float]:
    """The dense peak FLOP/s of the card for `precision`, or None if unknown (e.g. CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_FLOPS.items():
        if key in name:
            return peaks[precision]
    return None


def _device_name(device: torch.device) -> str:
    """The card's name, or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _peak_mem_gib(device: torch.device) -> float:
    """Peak memory allocated on the card since the last reset, in GiB (NaN on the CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")


def _mark(device: torch.device):
    """A point in the device's work: a recorded CUDA event (no host sync), else the host's clock."""
    if device.type != "cuda":
        return time.perf_counter()
    ev = torch.cuda.Event(enable_timing=True)
    ev.record(torch.cuda.current_stream(device))
    return ev


def _elapsed(a, b) -> float:
    """Seconds between two `_mark`s (events must have completed: read after a sync)."""
    return b - a if isinstance(a, float) else a.elapsed_time(b) / 1e3


def stand_in_condition(m, batch: int, device: torch.device):
    """A condition of the model's kind (`model.cond`) for timing: class 0, all-zero text states, or None."""
    if m.cond == "class":
        return torch.zeros(batch, dtype=torch.long, device=device)
    if m.cond == "text":
        return torch.zeros(batch, m.text_tokens, m.text_dim, device=device)
    return None


def _sync(device: torch.device) -> None:
    """Wait for the card (no-op on the CPU), so that wall-clock times cover the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ============================================================================ training

ABLATIONS = (("no adaptive computation", "load", "none"), ("shallow fusion", "fusion", "shallow"),
             ("context detach", "context_detach", True), ("no coordinates", "fusion_coords", False))
"""The paper's Table 2 rows that `--ablations` times beside the recipe: (name, model key, value)."""


def _variants(recipe: Recipe, ablations: bool) -> list[tuple[str, Recipe]]:
    """The recipe, and with `ablations` the same under each of the paper's Table 2 changes (ABLATIONS)."""
    out = [("default", recipe)]
    for name, key, value in ABLATIONS if ablations else ():
        rec = copy.deepcopy(recipe)
        setattr(rec.model, key, value)
        out.append((name, rec))
    return out


def bench_training(recipe: Recipe, *, steps: int = BENCH_STEPS, warmup: int = BENCH_WARMUP, batch: Optional[int] = None,
                   ablations: bool = False, precisions: Optional[list[str]] = None,
                   warn: Optional[Callable[[str], None]] = None,
                   log: Optional[Callable[[str], None]] = None) -> list[dict]:
    """Time training steps of the recipe (and optionally its ablations / precisions); one row per variant.
    `warn` hears of bf16 emulated on a CPU, once the options are checked; `log` each row as it is timed."""
    from ..device import resolve_device
    _check_count("--steps", steps, 1)
    _check_count("--warmup", warmup, 0)
    if batch is not None:
        _check_count("--batch", batch, 1)
    elif recipe.train.batch_size % recipe.train.grad_accum:         # the micro-batch is what a step times
        raise ConfigError(f"train.batch_size = {recipe.train.batch_size} is not divisible by train.grad_accum = "
                          f"{recipe.train.grad_accum} (hpdm train refuses it too): fix the recipe, or pass --batch")
    if precisions is not None:
        _check_precisions(precisions)
    device = resolve_device(recipe.train.device, 0, option="train.device")
    _warn_emulated_bf16(warn, device, precisions or [recipe.train.precision])
    rows = []
    for name, rec in _variants(recipe, ablations):
        for precision in precisions or [rec.train.precision]:
            rows.append(_time_training(name, rec, precision, device, steps=steps, warmup=warmup, batch=batch))
            if log is not None:
                r = rows[-1]
                mem = f", {r['peak_mem_GiB']:.1f} GiB" if r["peak_mem_GiB"] == r["peak_mem_GiB"] else ""   # not NaN
                first = f", first step {r['first_step_s']:.1f} s" if r["first_step_s"] is not None else ""
                log(f"{name}, {precision}, batch {r['batch']}: {r['videos_per_s']:.1f} videos/s, "
                    f"{r['step_s'] * 1000:.1f} ms/step{mem}{first}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _time_training(name: str, rec: Recipe, precision: str, device: torch.device, *, steps: int, warmup: int,
                   batch: Optional[int]) -> dict:
    """The row of one variant and precision: mean step time over `steps` back-to-back steps after `warmup`.

    `first_step_s` is the first warm-up step alone, torch.compile's compilation included (None without warm-up).

    The timed steps run as training runs them, one after the other with no wait in between; the
    device is synchronised only at the two ends of the window, so the host's launch time of a step
    overlaps the previous step's kernels instead of being counted as idle device time. The update
    (clipping, the optimiser step, the EMA, skippable on the device as training applies them:
    `apply_update`) is timed apart between two device events per step, which
    record without a host sync: `update_s` is its mean, `update_%` its share of the step.
    """
    from ..train.step import apply_update, build_model, compile_model, forward_backward, set_precision
    from ..train.optim import clip_gradients, make_ema, make_optimizer, param_groups
    set_precision(precision)
    B = batch or rec.train.batch_size // rec.train.grad_accum
    net = build_model(rec).to(device)
    model = compile_model(net, rec.train.compile, rec.train.compile_scope)
    opt = make_optimizer(param_groups(net, rec.train.weight_decay), rec.train)
    ema = make_ema(net, rec.train)
    params = list(net.parameters())
    L = rec.pyramid.num_levels
    g = torch.Generator().manual_seed(0)
    videos = torch.rand(B, rec.model.channels, *rec.pyramid.resolution, generator=g).to(device) * 2 - 1
    cond = stand_in_condition(rec.model, B, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0, marks, first = None, [], None
    if warmup:
        _sync(device)
        t_first = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        offsets = sample_nested_offsets(rec.pyramid, B, generator=g).to(device)
        draw = draw_noise(rec.diffusion, (B, L, rec.model.channels, *rec.pyramid.patch),
                          conditional=cond is not None, self_condition=rec.model.self_condition, generator=g,
                          device=device, noise_on_device=rec.train.noise_on == "device")
        out = forward_backward(model, videos, cond, rec, offsets, draw, 1.0, precision)
        timed = i >= warmup
        if timed:
            marks.append([_mark(device)])
        grad_norm = clip_gradients(params, rec.train)                     # as a training step: clip, update, EMA,
        bad = (~torch.isfinite(out.loss) | ~torch.isfinite(grad_norm)).float()   # skipped on the device if non-finite
        apply_update(opt, ema, net, bad)
        if timed:
            marks[-1].append(_mark(device))
        if i == 0 and warmup:                  # the first step alone, compilation included (train.compile)
            _sync(device)
            first = time.perf_counter() - t_first
    _sync(device)
    sec = (time.perf_counter() - t0) / steps                     # mean step time, back to back
    update = sum(_elapsed(a, b) for a, b in marks) / steps
    flops = train_step_flops(rec.pyramid, rec.model, self_cond_prob=rec.diffusion.self_cond_prob) * B
    peak = peak_flops(device, precision)
    return {
        "variant": name, "precision": precision, "compile": rec.train.compile,
        "compile_scope": rec.train.compile_scope, "noise_on": rec.train.noise_on, "batch": B,
        "first_step_s": first,
        "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
        "step_s": sec, "update_s": update, "update_%": 100 * update / sec,
        "videos_per_s": B / sec, "peak_mem_GiB": _peak_mem_gib(device),
        "TFLOP_per_video": flops / B / 1e12, "TFLOPs": flops / sec / 1e12,
        "MFU_%": 100 * flops / sec / peak if peak else float("nan"), "device": _device_name(device),
    }


# ============================================================================ sampling

def _check_sampling(recipe: Recipe, batch: int, tile_batch: int, precision: str, overlaps: Optional[list[str]],
                    steps: Optional[list[int]]) -> None:
    """Refuse bad counts, an unknown precision or overlap, and per-level steps that do not fit the recipe."""
    from ..pyramid.tiles import parse_overlap
    _check_count("--batch", batch, 1)
    _check_count("--tile-batch", tile_batch, 1)
    _check_precisions([precision])
    if overlaps is not None:
        if not overlaps:
            raise ConfigError("overlap: expected one or more settings, e.g. fhw,hw,none")
        for ov in overlaps:
            try:
                parse_overlap(ov)
            except ValueError as e:
                raise ConfigError(str(e)) from None
    L = recipe.pyramid.num_levels
    if steps is not None:
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in steps):
            raise ConfigError(f"sample steps = {list(steps)}: every level needs at least one step, "
                              "e.g. --sample-steps 8,4,2")
        if len(steps) not in (1, L):
            raise ConfigError(f"sample steps = {list(steps)}: expected {L} per-level step counts "
                              f"(one per pyramid level), e.g. {','.join(str(max(1, 8 >> l)) for l in range(L))}, "
                              "or one for level 0, halved per level")


def bench_sampling(recipe: Recipe, *, batch: int = BENCH_SAMPLING_BATCH, overlaps: Optional[list[str]] = None,
                   compare_cache: bool = True, steps: Optional[list[int]] = None,
                   precision: str = BENCH_SAMPLING_PRECISION, tile_batches: Sequence[int] = (TILE_BATCH,),
                   compile: bool = False, warn: Optional[Callable[[str], None]] = None,
                   log: Optional[Callable[[str], None]] = None) -> list[dict]:
    """Time hierarchical sampling of `batch` videos per overlap setting and tile batch (tiles per forward), with
    (and unless `compare_cache` is off, without) caching.

    Uses a randomly initialised network (speed does not depend on the weights). `steps` gives the
    per-level sampler steps actually run, or one count for level 0 halved per level (default: the recipe's);
    the row also extrapolates the generation time to the recipe's full step counts in proportion to the tiles
    the denoiser evaluations denoise (`HierarchicalSampler.evaluations`: Heun's 2 per step where it corrects;
    with shifted tiles successive evaluations denoise different numbers of tiles; cache building does not scale).
    With `compile` the network runs through torch.compile: one untimed pass per setting, of enough
    steps that every level's evaluations go through each of its tile subsets with and without
    self-conditioning latents, compiles every graph first (its seconds are the row's `compile_s`).
    `warn` hears of bf16 emulated on a CPU, once the options are checked; `log` each row as it is timed.
    """
    from ..device import resolve_device
    from ..sampling.hierarchical import HierarchicalSampler, halved_steps, level_steps
    from ..train.step import build_model, set_precision
    _check_sampling(recipe, batch, min(tile_batches, default=0), precision, overlaps, steps)   # the smallest decides
    L = recipe.pyramid.num_levels
    if steps is not None and len(steps) == 1:                 # one count: level 0's, halved per level (sample --steps)
        steps = halved_steps(steps[0], L)
    device = resolve_device(recipe.train.device, 0, option="train.device")
    _warn_emulated_bf16(warn, device, [precision])
    set_precision(precision)
    net = build_model(recipe).to(device).eval()
    full = level_steps(recipe.sample, L)
    run_steps = list(steps) if steps else full
    cond = stand_in_condition(recipe.model, batch, device)
    autocast = torch.bfloat16 if precision == "bf16" else None
    warm = HierarchicalSampler(net, recipe.diffusion, recipe.sample, device, overlap="none",
                               tile_batch=tile_batches[0], autocast=autocast)
    warm.sample([0], None if cond is None else cond[:1], steps=[1] * L, guidance=1.0)   # kernels, allocator
    rows = []
    settings = [(ov, cache, tb) for ov in overlaps or [recipe.pyramid.overlap]
                for cache in ((True, False) if compare_cache else (True,)) for tb in tile_batches]
    for ov, cache, tb in settings:
        sampler = HierarchicalSampler(net, recipe.diffusion, recipe.sample, device, overlap=ov, cache=cache,
                                      tile_batch=tb, autocast=autocast, compile=compile)
        t0 = time.perf_counter()
        if compile:                                     # every graph (each level, its cache) compiled here
            sampler.sample(list(range(batch)), cond, steps=[len(p) + 1 for p in sampler.phases], guidance=1.0)
        compile_s = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        res = sampler.sample(list(range(batch)), cond, steps=run_steps, guidance=1.0)
        sizes = [[t.numel() for t, _ in p] for p in sampler.phases]
        evals = [(sampler.evaluations(l, f), sampler.evaluations(l, r))
                 for l, (f, r) in enumerate(zip(full, run_steps))]
        rows.append(_sampling_row(res, ov, cache, batch, run_steps, full, device, sizes, evals))
        rows[-1]["tile_batch"] = tb
        if compile:
            rows[-1].update(compiled=True, compile_s=compile_s)
        if log is not None:
            log(f"overlap {ov}, cache {'on' if cache else 'off'}, tile batch {tb}: {rows[-1]['s_per_video']:.3f} "
                f"s/video at {rows[-1]['steps']} steps (est. {rows[-1]['s_per_video_full_steps_est']:.2f} at "
                f"{rows[-1]['full_steps']})")
    return rows


def tiles_denoised(sizes: Sequence[int], evaluations: int) -> int:
    """Tiles a level denoises per video in `evaluations` denoiser calls, cycling through subsets of `sizes`."""
    return sum(sizes[k % len(sizes)] for k in range(evaluations))


def _sampling_row(res, ov: str, cache: bool, batch: int, run_steps: list[int], full: list[int],
                  device: torch.device, sizes: Sequence[Sequence[int]], evals: Sequence[tuple[int, int]]) -> dict:
    """The row of one overlap and cache setting: seconds per video (per level, and extrapolated to full steps).

    `sizes`: per level, the tiles of each of its evaluations' subsets (`HierarchicalSampler.phases`); `evals`: per
    level, its denoiser calls at full steps and at the run's steps (`HierarchicalSampler.evaluations`).
    """
    gen = [s - c for s, c in zip(res.seconds, res.cache_seconds)]
    ratio = [tiles_denoised(z, f) / tiles_denoised(z, r) for z, (f, r) in zip(sizes, evals)]
    est = [g * e + c for g, e, c in zip(gen, ratio, res.cache_seconds)]
    row = {"overlap": ov, "cache": cache, "batch": batch, "steps": "/".join(map(str, run_steps)),
           "s_per_video": sum(res.seconds) / batch}
    for l in range(len(full)):
        row[f"level{l}_s_per_video"] = res.seconds[l] / batch
    row["full_steps"] = "/".join(map(str, full))
    row["s_per_video_full_steps_est"] = sum(est) / batch
    row["cache_GiB"] = sum(res.cache_bytes) / 2 ** 30 if res.cache_bytes else 0.0
    row["context_GiB"] = max(res.context_bytes, default=0) / 2 ** 30
    row["peak_mem_GiB"] = _peak_mem_gib(device)
    row["device"] = _device_name(device)
    return row
