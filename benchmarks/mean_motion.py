"""Does a shapes model's base level know which way its prompt says to move? The noise-averaged denoiser.

At a high noise level the best denoiser output is the data's mean clip given the prompt: for "moving
right" the object's colour mass starts left of centre and ends right of it (the track is a first-order
statistic of the data, worth as much loss as the object's colour). For each direction this prints
the displacement from the first to the last frame of the object-colour centroid of E_noise[D(sigma
eps)] at level 0, averaged over prompts of that direction, beside the data's mean displacement of
the same prompts (from the rendered ground truth). A model that ignores the direction word shows
the same (near-zero) displacement for all four (docs/results.md, section 6). Text or class models;
runs on a CPU in a minute:
    python benchmarks/mean_motion.py hpdm_cli/assets/shapes-t2v.safetensors --sigma 20
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def colour_centroids(clip, obj_rgb, bg_rgb):
    """Per-frame (x, y) centroid of the object-colour mass of a clip [3, T, H, W] in [-1, 1]."""
    import torch
    obj = torch.tensor(obj_rgb, dtype=clip.dtype) / 127.5 - 1
    bg = torch.tensor(bg_rgb, dtype=clip.dtype) / 127.5 - 1
    axis = obj - bg
    mass = (torch.einsum("cthw,c->thw", clip - bg[:, None, None, None], axis) / axis.dot(axis)).clamp(0, 1)
    mass = (mass - mass.flatten(1).median(1).values[:, None, None]).clamp(min=0)
    T, H, W = mass.shape
    ys, xs = torch.meshgrid(torch.arange(H, dtype=clip.dtype), torch.arange(W, dtype=clip.dtype), indexing="ij")
    tot = mass.flatten(1).sum(1).clamp(min=1e-8)
    return torch.stack([(mass * xs).flatten(1).sum(1) / tot, (mass * ys).flatten(1).sum(1) / tot], dim=1)


def main(argv=None) -> int:
    """Print one JSON line per direction: the model's and the data's first-to-last-frame displacement."""
    import numpy as np
    import torch
    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.data.shapes import DIRECTIONS, SHAPES_CLASSES, shapes_attributes, shapes_caption
    from hpdm_cli.diffusion.edm import denoise, input_scales
    from hpdm_cli.text.tables import embed_prompts
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", help="run directory, checkpoint or .safetensors of a shapes text or class model")
    ap.add_argument("--sigma", type=float, default=20.0)
    ap.add_argument("--prompts", type=int, default=8, help="prompts (videos of the training split) per direction")
    ap.add_argument("--noise", type=int, default=64, help="noise draws averaged per prompt")
    ap.add_argument("--tables", default="out/gpu/shapes_prompts.safetensors,"
                    "out/gpu/shapes_prompts_tokens.safetensors", help="prompt tables or folders holding them")
    a = ap.parse_args(argv)
    net, rec, _ = load_generator(a.ckpt, "cpu")
    if rec.model.cond not in ("text", "class"):
        raise SystemExit("mean_motion.py: the model has no condition (model.cond = \"none\")")
    f, h, w = (int(v) for v in rec.pyramid.resolution)
    f0, h0, w0 = (int(v) for v in rec.pyramid.patch)              # level 0 covers the whole clip
    search = [p for p in a.tables.split(",") if p and Path(p).exists()]
    picked = {d: [] for d in DIRECTIONS}
    index = 0
    while min(len(v) for v in picked.values()) < a.prompts:
        at = shapes_attributes(index, frames=f0, height=h0, width=w0, split="train")
        if len(picked[at["direction"]]) < a.prompts:
            picked[at["direction"]].append(at)
        index += 1
    scale = input_scales(rec.diffusion, [0])
    for d in DIRECTIONS:
        moved, truth = [], []
        for at in picked[d]:
            if rec.model.cond == "text":
                caption = shapes_caption(at["colour"], at["shape"], d, at["background"])
                cond = embed_prompts(rec, [caption], search).expand(a.noise, -1, -1)
            else:
                cond = torch.full((a.noise,), SHAPES_CLASSES.index(f"{at['shape']} moving {d}"))
            eps = torch.randn(a.noise, 1, 3, f0, h0, w0, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                D = denoise(net, a.sigma * eps, torch.full((a.noise, 1), a.sigma), torch.zeros(a.noise, 1, 3), cond,
                            None, sigma_data=rec.diffusion.sigma_data, input_scale=scale).out.mean(0)[0]
            c = colour_centroids(D, at["colour_rgb"], at["background_rgb"])
            moved.append((c[-1] - c[0]).tolist())
            cen = np.asarray(at["centres"])
            truth.append((cen[-1] - cen[0]).tolist())
        print(json.dumps({"direction": d, "sigma": a.sigma,
                          "model_dx_dy": np.round(np.mean(moved, 0), 2).tolist(),
                          "data_dx_dy": np.round(np.mean(truth, 0), 2).tolist()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
