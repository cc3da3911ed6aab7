"""Profile a few training steps of a recipe on the GPU and print the top CUDA kernels by time.

    python benchmarks/profile_train.py ucf --batch 8 [--precision bf16] [--compile] [--override model.bf16_streams=true]

Each step is training's: forward and backward, gradient clipping, then the recipe's optimiser and EMA
applied (or skipped) on the device (`apply_update`); `--compile` compiles the network and LAMB's step,
as `train.compile = true` does.
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from hpdm_cli.diffusion.edm import draw_noise
from hpdm_cli.pyramid import sample_nested_offsets
from hpdm_cli.recipe import default_recipe_path, load_recipe
from hpdm_cli.train.optim import clip_gradients, make_ema, make_optimizer, param_groups
from hpdm_cli.train.step import apply_update, build_model, compile_model, forward_backward, set_precision


def main():
    ap = argparse.ArgumentParser()
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
    model = compile_model(net, rec.train.compile)
    opt, ema = make_optimizer(param_groups(net, rec.train.weight_decay), rec.train), make_ema(net, rec.train)
    params = list(net.parameters())
    B, L = a.batch, rec.pyramid.num_levels
    g = torch.Generator().manual_seed(0)
    videos = torch.rand(B, 3, *rec.pyramid.resolution, device=dev) * 2 - 1
    cond = torch.zeros(B, dtype=torch.long, device=dev)

    def step():
        off = sample_nested_offsets(rec.pyramid, B, generator=g).to(dev)
        draw = draw_noise(rec.diffusion, (B, L, 3, *rec.pyramid.patch), conditional=True, generator=g, device=dev)
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
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=a.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
