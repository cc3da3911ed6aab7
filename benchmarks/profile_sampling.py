"""Where hierarchical sampling spends its time: FLOPs, seconds and achieved TFLOP/s per level, top kernels.

The FLOPs of one denoiser evaluation at level l are counted by torch's FlopCounterMode: a run
with one extra step at level l minus a run with one step everywhere, divided by the evaluations the
extra step adds (matrix products and attention, the conventions of `hpdm_cli.model.flops`). A run of
s steps makes up to 2s-1 evaluations per level (`HierarchicalSampler.evaluations`), so the timed run's generation
seconds per level (cache building excluded) give achieved TFLOP/s and MFU against the card's
bf16 peak. A randomly initialised network: speed does not depend on weights.

    python benchmarks/profile_sampling.py ucf --batch 16 --steps 2,2,2 --overlap hw [--compile] \
        [sample.context_cache_gib=64 ...]       # recipe overrides
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpdm_cli.device import resolve_device  # noqa: E402
from hpdm_cli.drivers.bench import peak_flops  # noqa: E402
from hpdm_cli.recipe import default_recipe_path, load_recipe  # noqa: E402
from hpdm_cli.sampling import HierarchicalSampler  # noqa: E402
from hpdm_cli.train.step import build_model, set_precision  # noqa: E402


def counted_flops(sampler: HierarchicalSampler, batch: int, cond, steps: list[int]) -> int:
    """FLOPs of one `sample` call at per-level `steps` (FlopCounterMode; not timed)."""
    with FlopCounterMode(display=False) as fc:
        sampler.sample(list(range(batch)), cond, steps=steps, guidance=1.0)
    return fc.get_total_flops()


def main(argv=None) -> int:
    """Count, time and profile one sampling run; print one row per level and the top kernels."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. sample.context_cache_gib=64")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", default="2,2,2", help="per-level steps of the timed run")
    ap.add_argument("--overlap", default=None, help="tile overlap (default: the recipe's)")
    ap.add_argument("--tile-batch", type=int, default=64)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--rows", type=int, default=25, help="kernels listed (0: no profile)")
    a = ap.parse_intermixed_args(argv)
    rec = load_recipe(default_recipe_path(a.recipe), a.overrides)
    dev = resolve_device("auto", 0)
    set_precision("bf16")
    net = build_model(rec).to(dev).eval()
    L = rec.pyramid.num_levels
    steps = [int(s) for s in a.steps.split(",")]
    cond = {"class": lambda: torch.zeros(a.batch, dtype=torch.long, device=dev),
            "text": lambda: torch.zeros(a.batch, rec.model.text_tokens, rec.model.text_dim, device=dev),
            "none": lambda: None}[rec.model.cond]()
    def make(compile: bool) -> HierarchicalSampler:
        return HierarchicalSampler(net, rec.diffusion, rec.sample, dev, overlap=a.overlap, tile_batch=a.tile_batch,
                                   autocast=torch.bfloat16 if dev.type == "cuda" else None, compile=compile)
    # FLOPs are counted eagerly: under FlopCounterMode a compiled network recompiles for the mode until
    # dynamo's recompile limit, after which it runs eagerly, also in the timed and profiled runs below.
    sampler, counter = make(a.compile), make(False)
    ones = [1] * L
    base = counted_flops(counter, a.batch, cond, ones)
    per_eval = [(counted_flops(counter, a.batch, cond, ones[:l] + [2] + ones[l + 1:]) - base)
                / (counter.evaluations(l, 2) - counter.evaluations(l, 1)) for l in range(L)]
    t0 = time.perf_counter()
    sampler.sample(list(range(a.batch)), cond, steps=steps, guidance=1.0)         # warm-up (and compilation)
    warm_s = time.perf_counter() - t0
    res = sampler.sample(list(range(a.batch)), cond, steps=steps, guidance=1.0)
    peak = peak_flops(dev, "bf16")
    print(f"{a.recipe}: batch {a.batch}, overlap {sampler.overlap or 'none'}, "
          f"tile batch {a.tile_batch}, steps {steps}, {'compiled' if a.compile else 'eager'} "
          f"(warm-up {warm_s:.1f} s), context held {[round(b / 2 ** 30, 1) for b in res.context_bytes]} GiB, "
          f"device {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else dev}")
    print("| level | GFLOP per evaluation (batch) | evaluations | gen s | cache s | achieved TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|")
    for l in range(L):
        gen = res.seconds[l] - res.cache_seconds[l]
        n = sampler.evaluations(l, steps[l])
        tf = per_eval[l] * n / max(gen, 1e-9) / 1e12
        mfu = f"{100 * tf * 1e12 / peak:.1f}%" if peak else "n/a"
        print(f"| {l} | {per_eval[l] / 1e9:.1f} | {n} | {gen:.3f} | {res.cache_seconds[l]:.3f} | {tf:.2f} | {mfu} |")
    if a.rows > 0:
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            sampler.sample(list(range(a.batch)), cond, steps=steps, guidance=1.0)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
        key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=a.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
