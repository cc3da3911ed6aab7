"""The interface convolution two ways (`hpdm_cli.model.layers.GridConv`): the layer, a training step, sampling.

`model.interface_conv` adds a depthwise 3x3x3 convolution over each patch's token grid to every
block's write. "conv3d" is torch's grouped Conv3d on the tokens transposed to channels-first (cuDNN's
grouped kernel on an H200); "shifts" computes the same convolution as 27 shifted, per-channel scaled
copies of the channels-last tokens (element-wise, fused by torch.compile). Timed per method,
on one GPU, in one run:
  * the layer alone, forward + backward under bf16 autocast, ROWS patches of the recipe's grid;
  * a training step of RECIPE (forward, backward, AdamW), eager and compiled: videos/s;
  * sampling BATCH clips of RECIPE (eager, bf16, no overlap, STEPS per level): seconds.
Random weights (speed does not depend on them). Prints a markdown table; `--rows N` also prints
the top CUDA kernels of one eager training step per method.

    python benchmarks/interface_conv.py recipes/shapes.toml --batch 256 [--no-compile] [--rows 15]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpdm_cli.diffusion.edm import draw_noise  # noqa: E402
from hpdm_cli.model import token_grid  # noqa: E402
from hpdm_cli.model.layers import GridConv  # noqa: E402
from hpdm_cli.pyramid import sample_nested_offsets  # noqa: E402
from hpdm_cli.recipe import default_recipe_path, load_recipe  # noqa: E402
from hpdm_cli.sampling import HierarchicalSampler  # noqa: E402
from hpdm_cli.train.step import build_model, forward_backward, set_precision  # noqa: E402

METHODS = ("conv3d", "shifts")


def cuda_seconds(fn, iters: int, dev: torch.device, warmup: int = 2) -> float:
    """Mean seconds of fn() on `dev` (CUDA events around `iters` calls after `warmup`; wall clock on a CPU)."""
    for _ in range(warmup):
        fn()
    if dev.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def layer_seconds(grid, dim: int, rows: int, dev, compiled: bool) -> float:
    """Forward + backward of one GridConv on [rows, f*h*w, dim] float32 tokens under bf16 autocast."""
    conv = GridConv(dim, grid).to(dev)
    torch.nn.init.normal_(conv.weight, std=0.1)
    x = torch.randn(rows, grid[0] * grid[1] * grid[2], dim, device=dev, requires_grad=True)
    fn = torch.compile(conv) if compiled else conv

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            y = fn(x)
        y.float().sum().backward()
    return cuda_seconds(step, 20, dev, warmup=3)


def condition(rec, batch: int, dev):
    """A zero condition of the recipe's kind for `batch` rows."""
    if rec.model.cond == "text":
        return torch.zeros(batch, rec.model.text_tokens, rec.model.text_dim, device=dev)
    if rec.model.cond == "class":
        return torch.zeros(batch, dtype=torch.long, device=dev)
    return None


def train_step_fn(rec, batch: int, dev, compiled: bool):
    """A closure running one training step (forward, backward, AdamW) of a fresh model of `rec`."""
    torch.manual_seed(0)
    net = build_model(rec).to(dev)
    model = torch.compile(net) if compiled else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    L = rec.pyramid.num_levels
    g = torch.Generator().manual_seed(0)
    videos = torch.rand(batch, 3, *rec.pyramid.resolution, device=dev) * 2 - 1
    cond = condition(rec, batch, dev)

    def step():
        off = sample_nested_offsets(rec.pyramid, batch, generator=g).to(dev)
        draw = draw_noise(rec.diffusion, (batch, L, 3, *rec.pyramid.patch), conditional=True, generator=g, device=dev)
        forward_backward(model, videos, cond, rec, off, draw, 1.0, "bf16")
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*", help="recipe overrides")
    ap.add_argument("--batch", type=int, default=256, help="videos per training step, clips per sampling call")
    ap.add_argument("--layer-rows", type=int, default=1024, help="patches in the layer-alone timing")
    ap.add_argument("--steps", default="4", help="sampler steps per level (one number or one per level)")
    ap.add_argument("--iters", type=int, default=20, help="timed training steps")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled timings")
    ap.add_argument("--rows", type=int, default=0, help="top CUDA kernels of one eager step per method (0: none)")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a check of the script")
    a = ap.parse_args(argv)
    rec = load_recipe(default_recipe_path(a.recipe), a.overrides)
    if not rec.model.interface_conv:
        raise SystemExit(f"{a.recipe}: model.interface_conv is off; nothing to compare")
    dev = torch.device(a.device)
    set_precision("bf16")
    grid = token_grid(rec.pyramid, rec.model)
    L = rec.pyramid.num_levels
    steps = [int(s) for s in a.steps.split(",")]
    steps = steps * L if len(steps) == 1 else steps
    modes = (False,) if a.no_compile else (False, True)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"{a.recipe} on {name}, torch {torch.__version__}: token grid {grid}, "
          f"interface {rec.model.interface_dim}, batch {a.batch}, layer rows {a.layer_rows}")
    rows = []
    for method in METHODS:
        GridConv.method = method
        row = {"method": method}
        for compiled in modes:
            torch._dynamo.reset()
            tag = "compiled" if compiled else "eager"
            row[f"layer {tag} ms"] = 1e3 * layer_seconds(grid, rec.model.interface_dim, a.layer_rows, dev, compiled)
            t0 = time.perf_counter()
            step = train_step_fn(rec, a.batch, dev, compiled)
            row[f"train {tag} videos/s"] = a.batch / cuda_seconds(step, a.iters, dev, warmup=3)
            print(f"  {method} {tag}: {time.perf_counter() - t0:.0f} s with warm-up", flush=True)
            if a.rows and not compiled:
                from torch.profiler import ProfilerActivity, profile
                kind = ProfilerActivity.CUDA if dev.type == "cuda" else ProfilerActivity.CPU
                with profile(activities=[kind]) as prof:
                    step()
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
                print(prof.key_averages().table(sort_by=key, row_limit=a.rows, max_name_column_width=60))
        torch._dynamo.reset()
        torch.manual_seed(0)
        net = build_model(rec).to(dev).eval()
        sampler = HierarchicalSampler(net, rec.diffusion, rec.sample, dev, overlap="none", tile_batch=1024,
                                      autocast=torch.bfloat16 if dev.type == "cuda" else None)
        cond = condition(rec, a.batch, dev)
        sampler.sample(list(range(a.batch)), cond, steps=[1] * L, guidance=1.0)           # warm-up
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        sampler.sample(list(range(a.batch)), cond, steps=steps, guidance=1.0)
        sync()
        row["sample s"] = time.perf_counter() - t0
        rows.append(row)
        print(f"  {method}: {row}", flush=True)
    GridConv.method = "auto"
    keys = [k for k in rows[0] if k != "method"]
    print("\n| method | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for r in rows:
        print(f"| {r['method']} | " + " | ".join(f"{r[k]:.1f}" if r[k] >= 10 else f"{r[k]:.3f}" for k in keys) + " |")
    base = rows[0]
    print("\nshifts / conv3d: " + ", ".join(
        f"{k} {rows[1][k] / base[k]:.2f}x" for k in keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
