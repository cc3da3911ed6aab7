"""Does a shapes model read each word of its prompt? One denoiser step at level 0, prompt words swapped.

For real held-out clips noised at sigma, the change of the level-0 denoiser output D when the
prompt's colour, shape or direction word is replaced by another one (same noise, mean squared
difference, background word kept). A word whose swap leaves D unchanged is ignored by the network,
whatever the sampler does afterwards (docs/results.md, section 5). Runs on a CPU in a minute:
    python benchmarks/prompt_word_swap.py hpdm_cli/assets/shapes-t2v.safetensors --num 64
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def swapped(caption: str, word: str) -> str:
    """The caption with its object `word` ("colour", "shape" or "direction") replaced by the next one of its list."""
    from hpdm_cli.data.shapes import COLOURS, DIRECTIONS, SHAPES
    from hpdm_cli.eval.faithfulness import parse_shapes_caption
    options = {"colour": list(COLOURS), "shape": SHAPES, "direction": DIRECTIONS}[word]
    old = parse_shapes_caption(caption)[word]
    new = options[(options.index(old) + 1) % len(options)]
    head, sep, tail = caption.partition(" on ")          # the background colour stays
    return head.replace(f" {old}", f" {new}", 1) + sep + tail


def main(argv=None) -> int:
    """Print one JSON line per sigma: the mean squared change of D per swapped word."""
    import numpy as np
    import torch
    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.diffusion.edm import denoise, input_scales
    from hpdm_cli.drivers.evaluate import render_real
    from hpdm_cli.text.tables import embed_prompts
    from hpdm_cli.pyramid import downsample_to_level
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", help="run directory, checkpoint or .safetensors of a shapes text model")
    ap.add_argument("--num", type=int, default=64, help="held-out clips")
    ap.add_argument("--sigmas", default="2,5")
    ap.add_argument("--tables", default="out/gpu/shapes_prompts.safetensors,"
                    "out/gpu/shapes_prompts_tokens.safetensors", help="prompt tables or folders holding them")
    a = ap.parse_args(argv)
    net, rec, info = load_generator(a.ckpt, "cpu")
    if rec.model.cond != "text":
        raise SystemExit("prompt_word_swap.py: the model is not text-conditional (model.cond = \"text\")")
    search = [p for p in a.tables.split(",") if p and Path(p).exists()]
    real = render_real(a.num, 0, tuple(rec.pyramid.resolution), "heldout")
    clips = torch.from_numpy(np.stack(real.videos)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    x0 = downsample_to_level(clips, rec.pyramid, 0).clamp(-1, 1)[:, None]
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    offsets = torch.zeros(len(x0), 1, 3)
    conds = {"true": embed_prompts(rec, real.captions, search)}
    for word in ("colour", "shape", "direction"):
        conds[word] = embed_prompts(rec, [swapped(c, word) for c in real.captions], search)
    for sigma in (float(s) for s in a.sigmas.split(",")):
        s = torch.full((len(x0), 1), sigma)
        with torch.no_grad():
            D = {k: denoise(net, x0 + sigma * eps, s, offsets, c, None, sigma_data=rec.diffusion.sigma_data,
                            input_scale=input_scales(rec.diffusion, [0])).out for k, c in conds.items()}
        print(json.dumps({"ckpt": str(a.ckpt), "sigma": sigma,
                          **{w: round(((D["true"] - D[w]) ** 2).mean().item(), 5) for w in ("colour", "shape", "direction")}}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
