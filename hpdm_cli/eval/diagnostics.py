"""Does a trained model use its condition? Measurements that need the network, not the sampler.

`condition_loss_gap` evaluates the training loss (eq. 6) of a checkpoint on fixed clips, fixed
noise and fixed noise levels, once with the true conditions and once with shuffled ones (and
with the null condition). A network that ignores its condition scores the same three times; one
that uses it scores clearly better with the true condition. `condition_sensitivity` compares
samples: the same seed under different conditions against different seeds under one condition.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..config import Recipe
from ..diffusion.edm import draw_noise, edm_loss
from ..pyramid import extract_patches, sample_nested_offsets


@torch.no_grad()
def condition_loss_gap(net, recipe: Recipe, videos: torch.Tensor, cond: torch.Tensor, *, seed: int = 0,
                       batch: int = 32, null: Optional[torch.Tensor] = None) -> dict:
    """Loss of `net` on clips [N, 3, T, H, W] in [-1, 1] with true, shuffled and null conditions (same noise)."""
    dev = next(net.parameters()).device
    g = torch.Generator().manual_seed(int(seed))
    n = videos.shape[0]
    perm = torch.randperm(n, generator=g)
    perm = torch.where(perm == torch.arange(n), perm.roll(1), perm)          # no clip keeps its own condition
    L = recipe.pyramid.num_levels
    totals = {"true": 0.0, "shuffled": 0.0, "null": 0.0}
    for s in range(0, n, batch):
        idx = torch.arange(s, min(s + batch, n))
        offsets = sample_nested_offsets(recipe.pyramid, len(idx), generator=g)
        clips = videos[idx.to(videos.device)].float()
        patches = extract_patches(clips, recipe.pyramid, offsets.to(clips.device)).to(dev)
        draw = draw_noise(recipe.diffusion, patches.shape, conditional=False, generator=g)
        draw.sigma, draw.weight, draw.noise = draw.sigma.to(dev), draw.weight.to(dev), draw.noise.to(dev)
        keep_none = torch.zeros(len(idx), dtype=torch.bool, device=dev)
        ci = idx.to(cond.device)
        variants = {"true": (cond[ci], None), "shuffled": (cond[perm.to(cond.device)[ci]], None),
                    "null": (cond[ci], keep_none)}
        for name, (c, keep) in variants.items():
            draw.keep = keep
            out = edm_loss(net, patches, offsets.to(dev), recipe.diffusion, cond=c.to(dev), draw=draw)
            totals[name] += out.loss.item() * len(idx)
    res = {k: v / n for k, v in totals.items()}
    res["gap_shuffled"] = res["shuffled"] - res["true"]
    res["relative_gap"] = res["gap_shuffled"] / max(res["true"], 1e-12)
    res["levels"] = L
    return res


def condition_sensitivity(same_seed_other_cond: list[np.ndarray], reference: list[np.ndarray]) -> dict:
    """Mean |difference| (0..255) of the same seed under another condition vs of other seeds, one condition each."""
    a = np.stack(reference).astype(np.float32)
    b = np.stack(same_seed_other_cond).astype(np.float32)
    cond_diff = float(np.abs(a - b).mean())
    seed_diff = float(np.abs(a - np.roll(a, 1, axis=0)).mean())
    return {"same_seed_other_condition": cond_diff, "other_seed": seed_diff,
            "ratio": cond_diff / max(seed_diff, 1e-12)}
