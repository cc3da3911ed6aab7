"""Benchmarks behind `hpdm bench`: training throughput, peak memory, counted FLOPs and MFU.

Inputs are synthetic full-resolution videos already on the device, so the numbers measure the
model (patch extraction, forward, backward, LAMB step), not the data loader. FLOPs come from
`model.flops` (checked against torch's FlopCounterMode in the tests); MFU divides the achieved
FLOP rate by the card's dense peak for the precision used.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Optional

import torch

from .config import ConfigError, Recipe
from .diffusion.edm import draw_noise
from .io import atomic_write_text
from .model.flops import train_step_flops
from .pyramid import sample_nested_offsets

# Dense peak FLOP/s by (card, precision): vendor datasheets (SXM parts, no sparsity).
PEAK_FLOPS = {
    "H100": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H200": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
}


PRECISIONS = ("fp32", "tf32", "bf16")


def _check_count(name: str, value, low: int, option: str) -> None:
    """Refuse a count that is not an integer >= low (ConfigError naming it and the `hpdm bench` option)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} = {value!r}: expected an integer >= {low} ({option} {low} or more)")


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


def _variants(recipe: Recipe, ablations: bool) -> list[tuple[str, Recipe]]:
    out = [("default", recipe)]
    if ablations:
        no_ac = copy.deepcopy(recipe)
        no_ac.model.load = "none"
        shallow = copy.deepcopy(recipe)
        shallow.model.fusion = "shallow"
        out += [("no adaptive computation", no_ac), ("shallow fusion", shallow)]
    return out


def bench_training(recipe: Recipe, *, steps: int = 10, warmup: int = 3, batch: Optional[int] = None,
                   ablations: bool = False, precisions: Optional[list[str]] = None) -> list[dict]:
    """Time training steps of the recipe (and optionally its ablations / precisions); one row per variant."""
    from .device import resolve_device
    from .train.loop import build_model, forward_backward, set_precision
    from .train.optim import Lamb, param_groups
    _check_count("steps", steps, 1, "--steps")
    _check_count("warmup", warmup, 0, "--warmup")
    if batch is not None:
        _check_count("batch", batch, 1, "--batch")
    if precisions is not None:
        _check_precisions(precisions)
    device = resolve_device(recipe.train.device, 0, option="train.device")
    rows = []
    for name, rec in _variants(recipe, ablations):
        for precision in precisions or [rec.train.precision]:
            set_precision(precision)
            B = batch or rec.train.batch_size // rec.train.grad_accum
            net = build_model(rec).to(device)
            model = torch.compile(net) if rec.train.compile else net
            opt = Lamb(param_groups(net, rec.train.weight_decay), lr=1e-4)
            L = rec.pyramid.num_levels
            g = torch.Generator().manual_seed(0)
            videos = torch.rand(B, rec.model.channels, *rec.pyramid.resolution, generator=g).to(device) * 2 - 1
            cond = {"class": lambda: torch.randint(0, rec.model.num_classes, (B,), device=device),
                    "text": lambda: torch.randn(B, rec.model.text_tokens, rec.model.text_dim, device=device),
                    "none": lambda: None}[rec.model.cond]()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times = []
            for i in range(warmup + steps):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                offsets = sample_nested_offsets(rec.pyramid, B, generator=g).to(device)
                draw = draw_noise(rec.diffusion, (B, L, rec.model.channels, *rec.pyramid.patch),
                                  conditional=cond is not None, generator=g, device=device)
                forward_backward(model, videos, cond, rec, offsets, draw, 1.0, precision)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            sec = sorted(times)[len(times) // 2]                          # median step time
            flops = train_step_flops(rec.pyramid, rec.model) * B
            peak = peak_flops(device, precision)
            rows.append({
                "variant": name, "precision": precision, "compile": rec.train.compile, "batch": B,
                "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
                "step_s": sec, "videos_per_s": B / sec,
                "peak_mem_GiB": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan"),
                "TFLOP_per_video": flops / B / 1e12, "TFLOPs": flops / sec / 1e12,
                "MFU_%": 100 * flops / sec / peak if peak else float("nan"),
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            })
            del net, model, opt, videos
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def write_json(path: str | Path, rows: list[dict]) -> None:
    """Write benchmark rows as JSON (atomically)."""
    atomic_write_text(path, json.dumps(rows, indent=1))


def bench_sampling(recipe: Recipe, *, batch: int = 16, overlaps: Optional[list[str]] = None,
                   caches: tuple = (True, False), steps: Optional[list[int]] = None,
                   precision: str = "bf16", tile_batch: int = 64) -> list[dict]:
    """Time hierarchical sampling of `batch` videos per overlap setting, with and without caching.

    Uses a randomly initialised network (speed does not depend on the weights). `steps` gives the
    per-level sampler steps actually run (default: the recipe's); the row also extrapolates the
    generation time linearly to the recipe's full step counts (cache building does not scale).
    """
    from .sampling.hierarchical import HierarchicalSampler, level_steps
    from .sampling.tiles import parse_overlap
    from .device import resolve_device
    from .train.loop import build_model, set_precision
    _check_count("batch", batch, 1, "--batch")
    _check_count("tile_batch", tile_batch, 1, "tile_batch")
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
        if len(steps) != L:
            raise ConfigError(f"sample steps = {list(steps)}: expected {L} per-level step counts "
                              f"(one per pyramid level), e.g. {','.join(str(max(1, 8 >> l)) for l in range(L))}")
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in steps):
            raise ConfigError(f"sample steps = {list(steps)}: every level needs at least one step, "
                              "e.g. --sample-steps 8,4,2")
    device = resolve_device(recipe.train.device, 0, option="train.device")
    set_precision(precision)
    net = build_model(recipe).to(device).eval()
    full = level_steps(recipe.sample, L)
    run_steps = list(steps) if steps else full
    cond = {"class": lambda: torch.zeros(batch, dtype=torch.long, device=device),
            "text": lambda: torch.zeros(batch, recipe.model.text_tokens, recipe.model.text_dim, device=device),
            "none": lambda: None}[recipe.model.cond]()
    rows = []
    warm = HierarchicalSampler(net, recipe, device, overlap="none", tile_batch=tile_batch,
                               autocast=torch.bfloat16 if precision == "bf16" else None)
    warm.sample([0], None if cond is None else cond[:1], steps=[1] * L, guidance=1.0)   # kernels, allocator
    for ov in overlaps or [recipe.pyramid.overlap]:
        for cache in caches:
            sampler = HierarchicalSampler(net, recipe, device, overlap=ov, cache=cache, tile_batch=tile_batch,
                                          autocast=torch.bfloat16 if precision == "bf16" else None)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            res = sampler.sample(list(range(batch)), cond, steps=run_steps, guidance=1.0)
            gen = [s - c for s, c in zip(res.seconds, res.cache_seconds)]
            est = [g * f / r + c for g, f, r, c in zip(gen, full, run_steps, res.cache_seconds)]
            row = {"overlap": ov, "cache": cache, "batch": batch, "steps": "/".join(map(str, run_steps)),
                   "s_per_video": sum(res.seconds) / batch}
            for l in range(L):
                row[f"level{l}_s_per_video"] = res.seconds[l] / batch
            row["full_steps"] = "/".join(map(str, full))
            row["s_per_video_full_steps_est"] = sum(est) / batch
            row["cache_GiB"] = sum(res.cache_bytes) / 2 ** 30 if res.cache_bytes else 0.0
            row["peak_mem_GiB"] = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
            row["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
            rows.append(row)
    return rows
