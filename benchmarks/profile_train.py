"""Profile a few training steps of a recipe on the GPU and print the top CUDA kernels by time.

    python benchmarks/profile_train.py ucf --batch 8 [--precision bf16] [--compile]
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from hpdm_cli.diffusion.edm import draw_noise
from hpdm_cli.pyramid import sample_nested_offsets
from hpdm_cli.recipe import default_recipe_path, load_recipe
from hpdm_cli.train.step import build_model, forward_backward, set_precision
from hpdm_cli.train.optim import Lamb, param_groups


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--rows", type=int, default=30)
    a = ap.parse_args()
    rec = load_recipe(default_recipe_path(a.recipe))
    dev = torch.device("cuda")
    set_precision(a.precision)
    net = build_model(rec).to(dev)
    model = torch.compile(net) if a.compile else net
    opt = Lamb(param_groups(net, 0.01), lr=1e-4)
    B, L = a.batch, rec.pyramid.num_levels
    g = torch.Generator().manual_seed(0)
    videos = torch.rand(B, 3, *rec.pyramid.resolution, device=dev) * 2 - 1
    cond = torch.zeros(B, dtype=torch.long, device=dev)

    def step():
        off = sample_nested_offsets(rec.pyramid, B, generator=g).to(dev)
        draw = draw_noise(rec.diffusion, (B, L, 3, *rec.pyramid.patch), conditional=True, generator=g, device=dev)
        forward_backward(model, videos, cond, rec, off, draw, 1.0, a.precision)
        opt.step()
        opt.zero_grad(set_to_none=True)

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
