"""Where does a shapes model lose the background stripes? One denoiser call on noised real clips, per noise level.

Real clips of held-out prompts (rendered at --render, 16x64x64 by default, so that models of
different pyramids see the same clips) are box-downsampled to level 0's size, noised at each sigma, and denoised
once by the model's level 0 (true prompt, no guidance); the stripe R^2 (hpdm_cli/eval/texture.py)
of D(x + sigma n) is printed beside that of the clean clip and of the noised input. A denoiser
that knows the texture keeps it at small sigma (its output is then near the clean clip); one that
does not replaces it with its own mottling. Runs on a CPU in a minute:
    python benchmarks/denoise_texture.py hpdm_cli/assets/shapes-t2v.safetensors --num 32
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main(argv=None) -> int:
    """Print one JSON line per sigma: stripe R^2 of the denoised, the noised and the clean level 0."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.diffusion.edm import denoise, input_scales
    from hpdm_cli.drivers.evaluate import condition_rows, render_real
    from hpdm_cli.text.tables import embed_prompts
    from hpdm_cli.drivers.generation import to_uint8
    from hpdm_cli.eval.texture import stripe_summary
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", help="run directory, checkpoint or .safetensors of a shapes text model")
    ap.add_argument("--num", type=int, default=32, help="held-out prompts (one clip each)")
    ap.add_argument("--sigmas", default="0.02,0.05,0.1,0.2,0.4,1.0")
    ap.add_argument("--render", default="16,64,64", help="T,H,W at which the real clips are rendered")
    ap.add_argument("--tables", default="out/gpu/shapes_prompts.safetensors,out/gpu/shapes_prompts_tokens.safetensors",
                    help="comma-separated prompt tables or folders holding them (a host without the text encoder)")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    net, recipe, info = load_generator(a.ckpt, a.device)
    dev = info.device
    real = render_real(a.num, 0, tuple(int(v) for v in a.render.split(",")), "heldout")
    cond = condition_rows(recipe, real, lambda caps: embed_prompts(recipe, caps, [p for p in a.tables.split(",") if p])).to(dev)
    clips = torch.from_numpy(np.stack(real.videos)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    x0 = F.adaptive_avg_pool3d(clips, tuple(recipe.pyramid.patch)).clamp(-1, 1).to(dev)   # level 0 [N, 3, f, h, w]
    b0 = input_scales(recipe.diffusion, [0], dev)                                   # level 0's b_0
    offsets = torch.zeros(a.num, 1, 3, device=dev)
    clean = stripe_summary(to_uint8(x0))["mean"]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g).to(dev)
    for s in (float(v) for v in a.sigmas.split(",")):
        sigma = torch.full((a.num, 1), s, device=dev)
        noisy = (x0 * b0 + s * noise)[:, None]                                      # scaled space
        with torch.no_grad():
            d = denoise(net, noisy, sigma, offsets, cond, None, sigma_data=recipe.diffusion.sigma_data,
                        input_scale=b0).out[:, 0] / b0
        print(json.dumps({"sigma": s, "denoised": round(stripe_summary(to_uint8(d.clamp(-1, 1)))["mean"], 3),
                          "noised_input": round(stripe_summary(to_uint8((noisy[:, 0] / b0).clamp(-1, 1)))["mean"], 3),
                          "clean": round(clean, 3),
                          "mse_x1000": round(1000 * float(((d - x0) ** 2).mean()), 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
