"""Does a shapes model's base level know which way its prompt says to move? The noise-averaged denoiser.

At a high noise level the best denoiser output is the data's mean clip given the prompt: for "moving
right" the object's colour mass starts left of centre and ends right of it (the track is a first-order
statistic of the data, worth as much loss as the object's colour). For each direction this prints
the displacement from the first to the last frame of the object-colour centroid of E_noise[D(sigma
eps)] at level 0, averaged over prompts of that direction, beside the data's mean displacement of
the same prompts (from the rendered ground truth). A model that ignores the direction word shows
the same (near-zero) displacement for all four (docs/results.md, section 6). Each checkpoint ends
with one number, its `track`: the share of the data's displacement the model reproduces, projected on
it and averaged over the directions (1: the data's mean track; 0: no motion, or as much the wrong way
as the right; negative: the wrong way), and the same per axis (`track_h`: left and right, `track_v`: up and down). Several checkpoints in one call give a learning curve of the motion, which a short run
learns late (docs/results.md, section 63). Text or class models; a minute per checkpoint on a CPU, ~2 s on a GPU (docs/results.md, section 64):
    python benchmarks/mean_motion.py hpdm_cli/assets/shapes-t2v.safetensors --sigma 20
    python benchmarks/mean_motion.py RUN/checkpoints/ckpt-* --every 500 --device cuda --tables out/gpu/shapes_prompts_tokens.safetensors
"""

from __future__ import annotations

import argparse
import json
import re
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


def track_share(moved, truth) -> float:
    """Mean over directions of the model's displacement projected on the data's, as a share of the data's."""
    import numpy as np
    m, t = np.asarray(moved, dtype=float), np.asarray(truth, dtype=float)
    return float(np.mean((m * t).sum(-1) / (t * t).sum(-1)))


def axis_directions(directions) -> dict:
    """{"h": indices of left and right, "v": of up and down} in `directions`: a run can learn one axis first
    (docs/results.md, section 68), so each checkpoint's track is also given per axis (track_h, track_v)."""
    return {"h": [i for i, d in enumerate(directions) if d in ("left", "right")],
            "v": [i for i, d in enumerate(directions) if d in ("up", "down")]}


def every_steps(paths: list[str], every: int) -> list[str]:
    """The checkpoints `RUN/checkpoints/ckpt-<step>` whose step is a multiple of `every`, and the last given; others kept."""
    if every <= 0 or not paths:
        return list(paths)
    steps = [re.fullmatch(r"ckpt-(\d+)", Path(p).name) for p in paths]
    return [p for i, (p, m) in enumerate(zip(paths, steps))
            if m is None or int(m.group(1)) % every == 0 or i == len(paths) - 1]


def main(argv=None) -> int:
    """Print, per checkpoint, one JSON line per direction (the model's and the data's displacement) and its track share."""
    from hpdm_cli.checkpoint import load_generator
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", nargs="+", help="run directories, checkpoints or .safetensors of shapes text or class "
                    "models (all of one recipe's prompts)")
    ap.add_argument("--sigma", type=float, default=20.0)
    ap.add_argument("--prompts", type=int, default=8, help="prompts (videos of the training split) per direction")
    ap.add_argument("--noise", type=int, default=64, help="noise draws averaged per prompt")
    ap.add_argument("--tables", default="out/gpu/shapes_prompts.safetensors,"
                    "out/gpu/shapes_prompts_tokens.safetensors", help="prompt tables or folders holding them")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ... (the denoiser's device)")
    ap.add_argument("--every", type=int, default=0, help="of a run's checkpoints (ckpt-<step>), read only those "
                    "every this many steps and the last (0: all)")
    a = ap.parse_args(argv)
    for path in every_steps(a.ckpt, a.every):
        net, rec, info = load_generator(path, a.device)
        motion_of(net, rec, a, label={"ckpt": str(path), "step": info.step})
    return 0


def motion_of(net, rec, a, label: dict) -> float:
    """The JSON lines of one model (see main); returns its track share."""
    import numpy as np
    import torch
    from hpdm_cli.data.shapes import DIRECTIONS, SHAPES_CLASSES, shapes_attributes, shapes_caption
    from hpdm_cli.diffusion.edm import denoise, input_scales
    from hpdm_cli.text.tables import embed_prompts
    dev = next(net.parameters()).device
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
    scale = input_scales(rec.diffusion, [0], dev)
    means, truths = [], []
    for d in DIRECTIONS:
        moved, truth = [], []
        for at in picked[d]:
            if rec.model.cond == "text":
                caption = shapes_caption(at["colour"], at["shape"], d, at["background"])
                cond = embed_prompts(rec, [caption], search).expand(a.noise, -1, -1).to(dev)
            else:
                cond = torch.full((a.noise,), SHAPES_CLASSES.index(f"{at['shape']} moving {d}"), device=dev)
            eps = torch.randn(a.noise, 1, 3, f0, h0, w0, generator=torch.Generator().manual_seed(1)).to(dev)
            with torch.no_grad():
                D = denoise(net, a.sigma * eps, torch.full((a.noise, 1), a.sigma, device=dev),
                            torch.zeros(a.noise, 1, 3, device=dev), cond, None, sigma_data=rec.diffusion.sigma_data,
                            input_scale=scale).out.mean(0)[0].float().cpu()
            c = colour_centroids(D, at["colour_rgb"], at["background_rgb"])
            moved.append((c[-1] - c[0]).tolist())
            cen = np.asarray(at["centres"])
            truth.append((cen[-1] - cen[0]).tolist())
        means.append(np.mean(moved, 0))
        truths.append(np.mean(truth, 0))
        print(json.dumps({**label, "direction": d, "sigma": a.sigma,
                          "model_dx_dy": np.round(means[-1], 2).tolist(),
                          "data_dx_dy": np.round(truths[-1], 2).tolist()}), flush=True)
    share = track_share(means, truths)
    axes = {f"track_{axis}": round(track_share([means[i] for i in idx], [truths[i] for i in idx]), 3)
            for axis, idx in axis_directions(DIRECTIONS).items()}
    print(json.dumps({**label, "sigma": a.sigma, "track": round(share, 3), **axes}), flush=True)
    return share


if __name__ == "__main__":
    sys.exit(main())
