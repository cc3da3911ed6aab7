"""Does the network use its class label? One-level shapes model (4x16x16, class-conditional), variants side by side.

Each variant trains from the same initial seed on the same rendered clips, then reports the
training loss (eq. 6) on 512 held-back clips with fixed noise, with true / shuffled / null labels
(`hpdm_cli.eval.diagnostics.condition_loss_gap`). A network that ignores its label scores the same.
Usage: python benchmarks/cond_ablation.py [steps] [variant ...]
"""
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from hpdm_cli.config import DiffusionConfig, ModelConfig, PyramidConfig, Recipe
from hpdm_cli.data.shapes import render_shapes_video
from hpdm_cli.diffusion.edm import edm_loss
from hpdm_cli.eval.diagnostics import condition_loss_gap
from hpdm_cli.model import HPDMNet
from hpdm_cli.pyramid import extract_patches, sample_nested_offsets
from hpdm_cli.train.optim import Lamb, lr_at, param_groups

T, H, W = 4, 16, 16
VARIANTS = {
    "baseline": {},
    "embed-no-trust": dict(notrust=True),
    "adaln": dict(adaln=True),
    "adaln+embed-no-trust": dict(adaln=True, notrust=True),
    "embed-std-1": dict(emb_std=1.0),
    "adamw": dict(adamw=True),
}


def render(i):
    v, _, lab, _ = render_shapes_video(i, frames=T, height=H, width=W)
    return v, lab


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    names = sys.argv[2:] or list(VARIANTS)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_train, n_eval = (64, 32) if dev.type == "cpu" else (4096, 512)
    with ProcessPoolExecutor(16, mp_context=multiprocessing.get_context("spawn")) as pool:
        out = list(pool.map(render, range(n_train + n_eval), chunksize=64))
    x = torch.from_numpy(np.stack([v for v, _ in out])).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1).to(dev)
    y = torch.tensor([lab for _, lab in out], device=dev)
    rows = []
    for name in names:
        v = VARIANTS[name]
        rec = Recipe(pyramid=PyramidConfig(resolution=(T, H, W), patch=(T, H, W)),
                     model=ModelConfig(tokenizer=(1, 2, 2), interface_dim=256, latent_dim=384, num_latents=128,
                                       num_blocks=6, compute_layers=2, head_dim=64, load="none", cond="class",
                                       num_classes=16, adaptive_norm=v.get("adaln", False)),
                     diffusion=DiffusionConfig()).validate()
        torch.manual_seed(0)
        net = HPDMNet(rec.pyramid, rec.model).to(dev)
        if "emb_std" in v:
            torch.nn.init.normal_(net.class_embed.weight, std=v["emb_std"])
        lr = 0.003
        if v.get("adamw"):
            lr = 3e-4
            opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
        else:
            groups = param_groups(net, 0.01)
            if v.get("notrust"):
                emb = {"class_embed.weight", "level_token", "latents", "pos_embed", "level_embed"}
                keep = [(p, n) for p, n in zip(groups[0]["params"], groups[0]["names"]) if n not in emb]
                move = [(p, n) for p, n in zip(groups[0]["params"], groups[0]["names"]) if n in emb]
                groups[0]["params"], groups[0]["names"] = [p for p, _ in keep], [n for _, n in keep]
                groups[1]["params"] += [p for p, _ in move]
                groups[1]["names"] += [n for _, n in move]
            opt = Lamb(groups, lr=lr)
        g = torch.Generator(device=dev).manual_seed(1)
        t0 = time.time()
        for s in range(steps):
            for gr in opt.param_groups:
                gr["lr"] = lr_at(s, lr=lr, warmup_steps=100, total_steps=steps)
            idx = torch.randint(0, n_train, (128,), device=dev, generator=g)
            off = sample_nested_offsets(rec.pyramid, 128, device=dev)
            with torch.autocast("cuda", torch.bfloat16, enabled=dev.type == "cuda"):
                loss = edm_loss(net, extract_patches(x[idx], rec.pyramid, off), off, rec.diffusion, cond=y[idx],
                                generator=g).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        secs = time.time() - t0
        net.eval()
        gap = condition_loss_gap(net, rec, x[n_train:], y[n_train:], batch=128)
        net.train()
        row = dict(variant=name, steps=steps, secs=round(secs, 1), loss_true=round(gap["true"], 4),
                   loss_shuffled=round(gap["shuffled"], 4), loss_null=round(gap["null"], 4),
                   rel_gap_pct=round(100 * gap["relative_gap"], 2),
                   class_emb_std=round(net.class_embed.weight[:16].std().item(), 4))
        print(json.dumps(row), flush=True)  # noqa: T201
        rows.append(row)
    print(f"\n{'variant':24s} {'true':>7s} {'shuffled':>8s} {'null':>7s} {'gap %':>6s} {'emb std':>7s}")
    for r in rows:
        print(f"{r['variant']:24s} {r['loss_true']:7.4f} {r['loss_shuffled']:8.4f} {r['loss_null']:7.4f} "
              f"{r['rel_gap_pct']:6.2f} {r['class_emb_std']:7.4f}")


if __name__ == "__main__":
    main()
