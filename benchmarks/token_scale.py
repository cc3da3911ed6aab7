"""How much of level 0's interface tokens is content and how much position, and how well level 0 denoises.

For each model: the real level 0 of held-out `shapes` clips, noised at each sigma (the same noise for every
model), tokenized as the network does (docs/method.md, section 4); prints the root-mean-square of the tokenizer's
output (the content) against that of the position and level embeddings added to it (the fixed table at its
weight at that sigma, `model.pos_fixed_sigma`), and the denoising error of
level 0 alone (MSE of D against the clean level 0), in float32 and under bf16 autocast with bf16 residual streams
(`model.bf16_streams`), and the two's difference (docs/results.md, section 73). On a CPU, ~1 minute a model:

    python benchmarks/token_scale.py out/fastW/ema-8448.safetensors hpdm_cli/assets/shapes-t2v.safetensors
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def token_parts(net, x: torch.Tensor, sigma: float) -> tuple[float, float]:
    """(content rms, position + level rms) of level 0's interface tokens for network inputs x [B, C, f, h, w] at
    `sigma` (the fixed table at the weight model.pos_fixed_sigma gives it there)."""
    from einops import rearrange
    from hpdm_cli.diffusion.edm import c_noise
    tf, th, tw = net.tok
    t = rearrange(x, "b c (f pf) (h ph) (w pw) -> b (f h w) (c pf ph pw)", pf=tf, ph=th, pw=tw)
    content = net.tokenizer(t)
    pos = net.positions(0, c_noise(torch.full((x.shape[0],), float(sigma)))) + net.level_embed[0]
    return content.pow(2).mean().sqrt().item(), pos.pow(2).mean().sqrt().item()


def measure(net, recipe, x0: torch.Tensor, cond, sigmas, noise: torch.Tensor) -> list[dict]:
    """Per sigma: token parts and level 0's denoising error in float32 and bf16 for clean level 0 x0 [B, C, f, h, w]."""
    from hpdm_cli.diffusion.edm import c_in, denoise, input_scales
    B = x0.shape[0]
    b = input_scales(recipe.diffusion, [0])
    sd = recipe.diffusion.sigma_data
    clean = (x0 * b[0])[:, None]
    off = torch.zeros(B, 1, 3)
    rows = []
    for s in sigmas:
        noisy = clean + s * noise[:, None]
        content, position = token_parts(net, c_in(torch.tensor(s), sd, b[0]) * noisy[:, 0], s)
        sig = torch.full((B, 1), float(s))
        streams = net.cfg.bf16_streams
        with torch.no_grad():
            d32 = denoise(net, noisy, sig, off, cond, sigma_data=sd, input_scale=b).out
            net.cfg.bf16_streams = True
            try:
                with torch.autocast(noisy.device.type, dtype=torch.bfloat16):
                    d16 = denoise(net, noisy, sig, off, cond, sigma_data=sd, input_scale=b).out.float()
            finally:
                net.cfg.bf16_streams = streams
        rows.append(dict(sigma=s, content=content, position=position,
                         mse_fp32=(d32 - clean).pow(2).mean().item(), mse_bf16=(d16 - clean).pow(2).mean().item(),
                         bf16_change=(d16 - d32).pow(2).mean().item()))
    return rows


def main(argv=None) -> int:
    """Print one table per model."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", nargs="+", help="run directories, checkpoints or .safetensors of shapes text models")
    ap.add_argument("--num", type=int, default=32, help="held-out clips")
    ap.add_argument("--sigmas", default="0.1,0.3,1,3")
    ap.add_argument("--tables", default="out/gpu/shapes_prompts_tokens.safetensors,out/gpu/shapes_prompts_heldout.safetensors",
                    help="prompt tables holding the held-out captions' encoder states")
    a = ap.parse_args(argv)
    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.drivers.evaluate import condition_rows, real_level0, render_real
    from hpdm_cli.text.tables import embed_prompts
    sigmas = [float(s) for s in a.sigmas.split(",")]
    search = [p for p in a.tables.split(",") if p]
    noise = None
    for ckpt in a.ckpt:
        net, recipe, _ = load_generator(ckpt, "cpu")
        real = render_real(a.num, 0, tuple(recipe.pyramid.resolution), "heldout")
        cond = condition_rows(recipe, real, lambda caps: embed_prompts(recipe, caps, search))
        x0 = real_level0(real.videos, recipe.pyramid)
        if noise is None or noise.shape != x0.shape:
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
        print(f"{ckpt}: {a.num} held-out clips, level 0 {tuple(x0.shape[2:])}")
        print("| sigma | content rms | position + level rms | MSE fp32 | MSE bf16 streams | bf16 change |")
        print("|---|---|---|---|---|---|")
        for r in measure(net, recipe, x0, cond, sigmas, noise):
            print(f"| {r['sigma']:g} | {r['content']:.3f} | {r['position']:.3f} | {r['mse_fp32']:.5f} | "
                  f"{r['mse_bf16']:.5f} | {r['bf16_change']:.2e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
