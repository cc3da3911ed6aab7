"""How fast does a small RIN learn the base level of `shapes`? A CPU-sized study, variants in turn.

One level, 4x16x16 (the 16x64x64 shapes clips box-filtered, as level 0 of recipes/shapes.toml sees
them), class-conditional, 4 RIN blocks; each variant trains from the same seed on the same 1280
clips, then reports the one-step denoising error mean((D(x + sigma eps; sigma) - x)^2) of 256
held-out clips at sigma 0.5, 1, 2, 5 (docs/results.md, section 4), and in the background texture's
band (sigma 0.1, 0.2, 0.4) the stripe R^2 of the denoised clips (hpdm_cli/eval/texture.py; the clean
clips' and the noised inputs' beside it: docs/results.md, sections 9-12).
    python benchmarks/base_level_toy.py STEPS NAME:key=val,key=val ...
keys: M (latents), Dz (latent width), D (interface width), opt (adamw|lamb), lr, pmean, pstd, batch,
pos (initial std of the learned position embedding), pe (model.pos_embed: learned|sincos),
conv (model.interface_conv: 0|1), qk (model.qk_norm: 0|1), seed.
"""
import json
import sys
import time

import numpy as np
import torch

from hpdm_cli.config import DiffusionConfig, ModelConfig, PyramidConfig, Recipe
from hpdm_cli.data.shapes import render_shapes_video
from hpdm_cli.drivers.generation import to_uint8
from hpdm_cli.diffusion.edm import edm_loss, denoise, input_scales
from hpdm_cli.eval.texture import stripe_summary
from hpdm_cli.model import HPDMNet
from hpdm_cli.pyramid import extract_patches, sample_nested_offsets
from hpdm_cli.train.optim import Lamb, lr_at, param_groups
T, H, W = 4, 16, 16
steps = int(sys.argv[1])
vids = [render_shapes_video(i, frames=16, height=64, width=64, split="train") for i in range(1536)]
x = torch.from_numpy(np.stack([v[0] for v in vids])).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)
x = torch.nn.functional.avg_pool3d(x, 4)
y = torch.tensor([v[2] for v in vids]) % 128
xtr, ytr, xte, yte = x[:1280], y[:1280], x[1280:], y[1280:]
for spec in sys.argv[2:]:
    name, _, kv = spec.partition(":")
    o = dict(M=16, Dz=64, D=64, opt="adamw", lr=2e-3, pmean=-1.2, pstd=1.2, batch=32, pos=0.02, pe="learned", conv=0, qk=0,
             seed=0)
    for item in filter(None, kv.split(",")):
        k, v = item.split("=")
        o[k] = type(o[k])(v) if not isinstance(o[k], str) else v
    rec = Recipe(pyramid=PyramidConfig(resolution=(T, H, W), patch=(T, H, W)),
                 model=ModelConfig(tokenizer=(1, 2, 2), interface_dim=o["D"], latent_dim=o["Dz"], num_latents=o["M"],
                                   num_blocks=4, compute_layers=1, head_dim=32, mlp_ratio=3.0, load="none",
                                   cond="class", num_classes=128, adaptive_norm=True,
                                   pos_embed=o["pe"], interface_conv=bool(o["conv"]), qk_norm=bool(o["qk"])),
                 diffusion=DiffusionConfig(p_mean=o["pmean"], p_std=o["pstd"])).validate()
    torch.manual_seed(o["seed"])
    net = HPDMNet(rec.pyramid, rec.model)
    with torch.no_grad():
        net.pos_embed.normal_(0, o["pos"])
    opt = (torch.optim.AdamW(net.parameters(), lr=o["lr"], weight_decay=0.01) if o["opt"] == "adamw"
           else Lamb(param_groups(net, 0.01), lr=o["lr"]))
    g = torch.Generator().manual_seed(1 + o["seed"])
    t0 = time.time()
    B = o["batch"]
    for s in range(steps):
        for gr in opt.param_groups:
            gr["lr"] = lr_at(s, lr=o["lr"], warmup_steps=50, total_steps=steps)
        idx = torch.randint(0, len(xtr), (B,), generator=g)
        off = sample_nested_offsets(rec.pyramid, B, generator=g)
        loss = edm_loss(net, extract_patches(xtr[idx], rec.pyramid, off), off, rec.diffusion, cond=ytr[idx],
                        generator=g).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    net.eval()
    eps = torch.randn(xte.shape, generator=torch.Generator().manual_seed(5))[:, None]
    res, stripes = {}, {"clean": round(stripe_summary(to_uint8(xte))["mean"], 3)}
    with torch.no_grad():
        for sig in (0.1, 0.2, 0.4, 0.5, 1.0, 2.0, 5.0):          # texture band (stripes), then error by sigma
            noisy = xte[:, None] + sig * eps
            D_ = denoise(net, noisy, torch.full((len(xte), 1), sig), torch.zeros(len(xte), 1, 3), yte, None,
                         sigma_data=0.5, input_scale=input_scales(rec.diffusion, [0])).out[:, 0]
            if sig < 0.5:
                stripes[sig] = (round(stripe_summary(to_uint8(D_.clamp(-1, 1)))["mean"], 3),
                                round(stripe_summary(to_uint8(noisy[:, 0].clamp(-1, 1)))["mean"], 3))
            else:
                res[sig] = round(((D_ - xte) ** 2).mean().item(), 4)
    row = {"variant": name, **o, "steps": steps, "secs": round(time.time() - t0), "mse_by_sigma": res,
           "stripes_denoised_noised_by_sigma": stripes}
    print(json.dumps(row), flush=True)
