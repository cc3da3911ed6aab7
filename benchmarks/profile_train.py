"""Profile a few training steps of a recipe on the GPU: the top CUDA kernels by time, and the time by kind of kernel.

    python benchmarks/profile_train.py ucf --batch 8 [--precision bf16] [--compile] [--override model.bf16_streams=true]
    python benchmarks/profile_train.py shapes --batch 256 --compile

Each step is training's: forward and backward (with the self-conditioning pass as often as training draws it, and
the recipe's kind of condition), gradient clipping, then the recipe's optimiser and EMA applied (or skipped) on the
device (`apply_update`); `--compile` compiles the network and LAMB's step, as `train.compile = true` does. The
last table sums the CUDA time by kind of kernel (matrix products, attention, fused element-wise and
normalisation kernels that torch.compile generates, eager element-wise, copies, the optimiser's multi-tensor
kernels): where matrix products hold a small share, the step is bound by memory traffic, not by arithmetic.
"""

import argparse
import re
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpdm_cli.diffusion.edm import draw_noise  # noqa: E402
from hpdm_cli.drivers.bench import stand_in_condition  # noqa: E402
from hpdm_cli.pyramid import sample_nested_offsets  # noqa: E402
from hpdm_cli.recipe import default_recipe_path, load_recipe  # noqa: E402
from hpdm_cli.train.optim import clip_gradients, make_ema, make_optimizer, param_groups  # noqa: E402
from hpdm_cli.train.step import apply_update, build_model, compile_model, forward_backward, set_precision  # noqa: E402

# Kinds of CUDA kernels, by name, first match wins.
KINDS = [
    ("attention", re.compile(r"flash|fmha|attention|sdpa", re.I)),
    ("matrix products", re.compile(r"gemm|cutlass|sm\d\d_xmma|cublas|nvjet|wgmma|matmul|dot_|^triton_tem_", re.I)),
    # the compiled LAMB step's multi-tensor kernels are inductor's combo kernels, triton_for_*
    ("optimiser (multi-tensor)", re.compile(r"multi_tensor|foreach|adam|lamb|^triton_for_", re.I)),
    ("fused by torch.compile", re.compile(r"^triton_|^triton", re.I)),
    ("normalisation (eager)", re.compile(r"norm", re.I)),
    ("reductions (eager)", re.compile(r"reduce", re.I)),
    ("copies and casts", re.compile(r"copy|memcpy|memset|cast|fill", re.I)),
    ("element-wise (eager)", re.compile(r"elementwise|vectorized|unrolled", re.I)),
]


def kind_of(name: str) -> str:
    """The kind of a CUDA kernel from its name (`KINDS`), or "other"."""
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return "other"


def by_kind(events) -> list[tuple[str, float, int]]:
    """(kind, share of the CUDA time, kernels) for profiler events with `key`, `device_time_total` and `count`."""
    total, time_of, count_of = 0.0, {}, {}
    for e in events:
        t = float(getattr(e, "device_time_total", 0.0) or 0.0)
        if t <= 0:
            continue
        k = kind_of(e.key)
        time_of[k] = time_of.get(k, 0.0) + t
        count_of[k] = count_of.get(k, 0) + int(e.count)
        total += t
    return sorted(((k, t / total, count_of[k]) for k, t in time_of.items()), key=lambda r: -r[1]) if total else []


def main():
    """Profile three steps after three of warm-up; print the kernels and the kinds table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--override", action="append", default=[], help="section.key=value for the recipe")
    a = ap.parse_args()
    rec = load_recipe(default_recipe_path(a.recipe), a.override + [f"train.compile={str(a.compile).lower()}"])
    dev = torch.device("cuda")
    set_precision(a.precision)
    net = build_model(rec).to(dev)
    model = compile_model(net, rec.train.compile, rec.train.compile_scope)
    opt, ema = make_optimizer(param_groups(net, rec.train.weight_decay), rec.train), make_ema(net, rec.train)
    params = list(net.parameters())
    B, L = a.batch, rec.pyramid.num_levels
    g = torch.Generator().manual_seed(0)
    videos = torch.rand(B, rec.model.channels, *rec.pyramid.resolution, device=dev) * 2 - 1
    cond = stand_in_condition(rec.model, B, dev)

    def step():
        off = sample_nested_offsets(rec.pyramid, B, generator=g).to(dev)
        draw = draw_noise(rec.diffusion, (B, L, rec.model.channels, *rec.pyramid.patch),
                          conditional=cond is not None, self_condition=rec.model.self_condition, generator=g,
                          device=dev, noise_on_device=rec.train.noise_on == "device")
        out = forward_backward(model, videos, cond, rec, off, draw, 1.0, a.precision)
        grad_norm = clip_gradients(params, rec.train)
        apply_update(opt, ema, net, (~torch.isfinite(out.loss) | ~torch.isfinite(grad_norm)).float())

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    print(events.table(sort_by="cuda_time_total", row_limit=a.rows, max_name_column_width=60))
    kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    print(f"{'kind of kernel':>26} | {'CUDA time':>9} | {'kernels':>7}")
    for kind, share, n in by_kind(kernels):
        print(f"{kind:>26} | {share:>8.1%} | {n:>7}")


if __name__ == "__main__":
    main()
