"""Can RIN blocks find a faint stripe that spans the whole patch? Plain, with position mixing, with gated MLPs.

A toy of the shapes base level's texture problem (docs/results.md, sections 9-11), small enough for
a CPU: 16x16 single-frame images that are one oriented sinusoid (2-5 cycles per side, any angle and
phase, amplitude --amp) plus Gaussian noise of --sigma; a network of the project's RIN blocks
(hpdm_cli/model/rin.py: 2x2-pixel tokens, learned positions, interface convolution) is trained to
output the clean image, and scored on fixed held-out images by

  mse ratio   the output's squared error over that of predicting zero (1: found nothing; 0: perfect)
  R^2         how much of the clean stripe the output explains

beside a blur (the best local smoother), the best linear filter (Wiener: a band-pass by the
stripes' mean power spectrum) and the matched filter that knows the stripe family (what the data
allows). At the default amplitude 0.15 and sigma 0.3 a blur finds nothing, the linear filter
explains 27% of the stripe and the matched filter 84%: beating the linear filter takes a
nonlinear detection of the one sinusoid present. With the raw input and a residual output no
variant gets there; inside EDM's preconditioning (--edm, as the model denoises) the RIN does, after
a plateau at the linear filter that is longer the smaller the stripes are against sigma_data
(docs/results.md, section 12).
    python benchmarks/stripe_toy.py --steps 1500 --variants plain,mixing,glu
    python benchmarks/stripe_toy.py --edm --sigma-data 0.5 --amp 0.07 --sigma 0.14 --lr 1e-3 --steps 8000 --evals 8
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

S = 16          # image side
TOK = 2         # token side


def stripes(n: int, amp: float, gen: torch.Generator) -> torch.Tensor:
    """n clean images [n, 1, S, S]: amp * sin(2 pi f (cos a u + sin a v) + phase), u, v in [0, 1), on gen's device."""
    dev = gen.device
    a = torch.rand(n, 1, 1, generator=gen, device=dev) * math.pi
    f = 2.0 + 3.0 * torch.rand(n, 1, 1, generator=gen, device=dev)
    ph = torch.rand(n, 1, 1, generator=gen, device=dev) * 2 * math.pi
    c = (torch.arange(S, device=dev) + 0.5) / S
    v, u = torch.meshgrid(c, c, indexing="ij")
    return (amp * torch.sin(2 * math.pi * f * (torch.cos(a) * u + torch.sin(a) * v) + ph))[:, None]


class GLU(nn.Module):
    """A gated MLP, fc2(gelu(a) * b) with [a, b] = fc1(x): products of linear features (energies)."""

    def __init__(self, dim: int, ratio: float):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the gated MLP."""
        a, b = self.fc1(x).chunk(2, -1)
        return self.fc2(F.gelu(a, approximate="tanh") * b)


class PositionMixing(nn.Module):
    """Signed token<->latent maps per head: z_m += (1/N) sum_n R_h[m, n] (LN(x_n) W_r)_h, and the transpose kind back.

    What softmax attention lacks: pooling tokens with weights of either sign set by their position
    (a Fourier coefficient), and painting a latent back with such weights. R, W start at zero.
    """

    def __init__(self, n_tok: int, n_lat: int, dim: int, latent_dim: int, head_dim: int):
        super().__init__()
        self.read_norm, self.read_proj = nn.LayerNorm(dim), nn.Linear(dim, latent_dim, bias=False)
        self.read = nn.Parameter(torch.zeros(latent_dim // head_dim, n_lat, n_tok))
        self.write_norm, self.write_proj = nn.LayerNorm(latent_dim), nn.Linear(latent_dim, dim, bias=False)
        self.write = nn.Parameter(torch.zeros(dim // head_dim, n_tok, n_lat))

    @staticmethod
    def _mix(maps: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """maps [H, out, in] applied to h [B, in, H * c] head by head -> [B, out, H * c], divided by `in`."""
        H, _, n_in = maps.shape
        h = h.view(h.shape[0], n_in, H, -1).transpose(1, 2)                   # [B, H, in, c]
        return torch.matmul(maps, h).transpose(1, 2).flatten(2) / n_in

    def forward_read(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Latents z [B, M, d_z] plus the mixed read of the tokens x [B, N, d]."""
        return z + self._mix(self.read, self.read_proj(self.read_norm(x)))

    def forward_write(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Tokens x [B, N, d] plus the mixed write of the latents z [B, M, d_z]."""
        return x + self._mix(self.write, self.write_proj(self.write_norm(z)))


class ToyRIN(nn.Module):
    """Tokens of 2x2 pixels, learned positions, RIN blocks (read, compute, write), pixels out."""

    def __init__(self, blocks: int, mixing: bool, dim: int = 64, latent_dim: int = 64, latents: int = 16,
                 glu: bool = False, conv_kernel: int = 3, pos_std: float = 0.02, input_scale: float = 1.0,
                 residual: bool = True, qk_norm: bool = False):
        super().__init__()
        self.residual = residual                           # output = input + the network's; else the network's
        self.input_scale = input_scale                     # the tokens are made from the input times this
        from hpdm_cli.model.layers import GridConv
        from hpdm_cli.model.rin import RINBlock
        n = (S // TOK) ** 2
        self.inp = nn.Linear(TOK * TOK, dim)
        self.pos = nn.Parameter(torch.randn(n, dim) * pos_std)
        self.latents = nn.Parameter(torch.randn(latents, latent_dim) * 0.02)
        self.blocks = nn.ModuleList(RINBlock(dim, latent_dim, 1, 16, 2.0, conv_grid=(1, S // TOK, S // TOK),
                                             qk_norm=qk_norm) for _ in range(blocks))
        # Position mixing: each block's latents also read the tokens through the maps before the
        # block, and the tokens are painted by them after it.
        self.mixing = nn.ModuleList(PositionMixing(n, latents, dim, latent_dim, 16) for _ in range(blocks)) \
            if mixing else None
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, TOK * TOK)
        if conv_kernel != 3:                               # a wider depthwise interface convolution
            for blk in self.blocks:
                blk.conv = GridConv(dim, blk.conv.grid, (1, conv_kernel, conv_kernel))
        if glu:                                            # every latent and interface MLP gated
            for blk in self.blocks:
                blk.read_mlp, blk.write_mlp = GLU(latent_dim, 2.0), GLU(dim, 2.0)
                for layer in blk.compute:
                    layer.mlp = GLU(latent_dim, 2.0)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Noisy images [B, 1, S, S] -> denoised [B, 1, S, S] (a residual on the input)."""
        B = y.shape[0]
        t = F.unfold(self.input_scale * y, TOK, stride=TOK).transpose(1, 2)    # [B, n, 4]
        x = self.inp(t) + self.pos
        z = self.latents.expand(B, -1, -1)
        for i, blk in enumerate(self.blocks):
            if self.mixing is not None:
                z = self.mixing[i].forward_read(x, z)
            x, z = blk(x, z)
            if self.mixing is not None:
                x = self.mixing[i].forward_write(x, z)
        out = self.out(self.norm(x)).transpose(1, 2)
        out = F.fold(out, (S, S), TOK, stride=TOK)
        return y + out if self.residual else out


class EDM(nn.Module):
    """EDM's preconditioning around a network F at a known sigma: c_skip y + c_out F(c_in y), as the model denoises."""

    def __init__(self, net: nn.Module, sigma_data: float, sigma: float = 0.3):
        super().__init__()
        self.net, self.sigma_data, self.sigma = net, sigma_data, sigma

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Noisy images at self.sigma -> denoised."""
        s2, d2 = self.sigma ** 2, self.sigma_data ** 2
        c_in, c_skip, c_out = 1 / math.sqrt(s2 + d2), d2 / (s2 + d2), self.sigma * self.sigma_data / math.sqrt(s2 + d2)
        return c_skip * y + c_out * self.net(c_in * y)


class PixelMLP(nn.Module):
    """A reference denoiser with no tokens: a two-layer MLP over all S*S pixels (global projections, GELU)."""

    def __init__(self, hidden: int = 1024, input_scale: float = 1.0):
        super().__init__()
        self.input_scale = input_scale                 # the input times this (EDM's c_in makes it unit variance)
        self.f = nn.Sequential(nn.Linear(S * S, hidden), nn.GELU(), nn.Linear(hidden, S * S))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Noisy images [B, 1, S, S] -> denoised (predicted directly, not as a residual)."""
        return self.f(self.input_scale * y.flatten(1)).view_as(y)


def build(variant: str, blocks: int, latents: int, hidden: int = 1024,
          input_scale: float = 1.0, residual: bool = True, qk_norm: bool = False) -> tuple[nn.Module, str]:
    """The network of a variant name (plain, mixing, glu, wideconv, wideconv-glu, bigpos, mlp) and its table label."""
    if variant == "mlp":
        return PixelMLP(hidden, input_scale), f"MLP over all pixels (256 -> {hidden} -> 256)" + \
            (f", input x{input_scale:g}" if input_scale != 1.0 else "")
    known = {"plain", "mixing", "glu", "wideconv", "wideconv-glu", "bigpos"}
    if variant not in known:
        raise SystemExit(f"error: unknown variant {variant!r}; choose from {sorted(known | {'mlp'})}")
    mixing, glu, wide = variant == "mixing", variant.endswith("glu"), variant.startswith("wideconv")
    # bigpos: positions at unit scale, so that each token's LayerNorm is set by its position more
    # than by its noisy pixels (nearly linear in them) instead of dividing by their own noise.
    net = ToyRIN(blocks, mixing, latents=latents, glu=glu, conv_kernel=15 if wide else 3,
                 pos_std=1.0 if variant == "bigpos" else 0.02, input_scale=input_scale, residual=residual,
                 qk_norm=qk_norm)
    name = f"RIN x{blocks}, {latents} latents" + (" + position mixing" if mixing else "") \
        + (", 15x15 depthwise interface conv" if wide else "") + (", gated MLPs" if glu else "") \
        + (", positions at unit scale" if variant == "bigpos" else "") \
        + (f", input x{input_scale:g}" if input_scale != 1.0 else "") + (", qk-norm" if qk_norm else "")
    return net, name


def matched_filter(y: torch.Tensor) -> torch.Tensor:
    """Least-squares fit of the best sinusoid of the family (48 angles x 31 frequencies, free phase) to each image."""
    c = (torch.arange(S) + 0.5) / S
    v, u = torch.meshgrid(c, c, indexing="ij")
    a = torch.arange(48) * math.pi / 48
    f = torch.linspace(2.0, 5.0, 31)
    ca, sa = torch.cos(a)[:, None, None, None], torch.sin(a)[:, None, None, None]
    arg = 2 * math.pi * f[None, :, None, None] * (ca * u + sa * v)
    basis = torch.stack([torch.sin(arg), torch.cos(arg)], 2).reshape(-1, 2, S * S)      # [K, 2, P]
    yy = y.reshape(y.shape[0], S * S)
    coef = torch.einsum("kjp,bp->bkj", basis, yy) / (basis ** 2).sum(-1)[None]          # near-orthogonal pair
    fit = torch.einsum("bkj,kjp->bkp", coef, basis)
    best = ((fit - yy[:, None]) ** 2).sum(-1).argmin(1)
    return fit[torch.arange(y.shape[0]), best].reshape(y.shape)


def wiener(y: torch.Tensor, amp: float, sigma: float) -> torch.Tensor:
    """The best linear denoiser: each spatial frequency scaled by S / (S + N), S the stripes' mean power there."""
    power = (torch.fft.fft2(stripes(20000, amp, torch.Generator().manual_seed(99))[:, 0]).abs() ** 2).mean(0)
    gain = power / (power + sigma ** 2 * S * S)
    return torch.fft.ifft2(torch.fft.fft2(y[:, 0]) * gain).real[:, None]


def scores(pred: torch.Tensor, clean: torch.Tensor) -> dict:
    """mse ratio (to predicting zero) and R^2 of the clean stripe explained by the prediction."""
    err = ((pred - clean) ** 2).mean()
    zero = (clean ** 2).mean()
    return {"mse_ratio": round(float(err / zero), 4), "r2": round(float(1 - err / zero), 4)}


def main(argv=None) -> int:
    """Train the toy in each variant; print one JSON line per model (after the references), then a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--latents", type=int, default=16)
    ap.add_argument("--variants", default="plain,mixing",
                    help="comma-separated: plain, mixing, glu, wideconv, wideconv-glu, bigpos, mlp")
    ap.add_argument("--amp", type=float, default=0.15)
    ap.add_argument("--sigma", type=float, default=0.3, help="noise of the scored images (and of training)")
    ap.add_argument("--train-sigma", default=None,
                    help="lo,hi: train at sigma log-uniform in [lo, hi] (as diffusion does) instead of --sigma")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu",
                    help="cpu or cuda (training data is drawn there; the scored images on the CPU)")
    ap.add_argument("--evals", type=int, default=1, help="score this many times during training (curve)")
    ap.add_argument("--hidden", type=int, default=1024, help="mlp: hidden width")
    ap.add_argument("--edm", action="store_true",
                    help="wrap the network in EDM's preconditioning at --sigma "
                         "(unit-variance input, mostly direct output)")
    ap.add_argument("--sigma-data", type=float, default=None,
                    help="--edm: EDM's sigma_d (default: the stripes' std, amp/sqrt(2)); 0.5 with --amp 0.07 "
                         "--sigma 0.14 is the shapes base level's regime, where the stripes are a small part "
                         "of the image")
    ap.add_argument("--input-scale", type=float, default=1.0,
                    help="multiply the noisy input by this before the network (the RIN's residual stays on the input)")
    ap.add_argument("--qk-norm", action="store_true", help="RIN variants: queries and keys RMS-normalised per head")
    ap.add_argument("--clip", type=float, default=0.0, help="clip the gradient norm to this (0: no clipping)")
    a = ap.parse_args(argv)
    if a.edm and a.train_sigma:
        ap.error("--edm preconditions for the one --sigma; drop --train-sigma")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    g = torch.Generator().manual_seed(a.seed + 1)
    clean_te = stripes(512, a.amp, g)
    noisy_te = clean_te + a.sigma * torch.randn(clean_te.shape, generator=g)
    rows = [("noisy input (identity)", scores(noisy_te, clean_te), 0.0),
            ("blur (best Gaussian)", min((scores(_blur(noisy_te, s), clean_te) for s in (0.5, 1, 1.5, 2, 3)),
                                         key=lambda r: r["mse_ratio"]), 0.0),
            ("best linear filter (Wiener)", scores(wiener(noisy_te, a.amp, a.sigma), clean_te), 0.0),
            ("matched filter (knows the family)", scores(matched_filter(noisy_te), clean_te), 0.0)]
    for name, sc, _ in rows:
        print(json.dumps({"model": name, **sc}), flush=True)
    for variant in [v for v in a.variants.split(",") if v]:
        torch.manual_seed(a.seed)
        net, name = build(variant, a.blocks, a.latents, a.hidden, a.input_scale, residual=not a.edm,
                          qk_norm=a.qk_norm)
        if a.edm:                                      # sigma_data: the stripes' own std unless given
            sd = a.sigma_data if a.sigma_data is not None else a.amp / math.sqrt(2)
            net, name = EDM(net, sd, a.sigma), name + f", EDM preconditioning (sigma_data {sd:.3g})"
        if a.clip > 0:
            name += f", grad clip {a.clip:g}"
        net = net.to(a.device)
        opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=0.0)
        gen = torch.Generator(a.device).manual_seed(a.seed + 2)       # training data drawn where it is used
        t0 = time.time()
        for step in range(a.steps):
            clean = stripes(a.batch, a.amp, gen)
            sig = a.sigma
            if a.train_sigma:
                lo, hi = (math.log(float(v)) for v in a.train_sigma.split(","))
                sig = torch.exp(lo + (hi - lo) * torch.rand(a.batch, 1, 1, 1, generator=gen, device=gen.device))
            noisy = clean + sig * torch.randn(clean.shape, generator=gen, device=gen.device)
            loss = F.mse_loss(net(noisy.to(a.device)), clean.to(a.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), a.clip if a.clip > 0 else float("inf"))
            for grp in opt.param_groups:
                grp["lr"] = a.lr * 0.5 * (1 + math.cos(math.pi * step / a.steps))
            opt.step()
            if a.evals > 1 and (step + 1) % max(1, a.steps // a.evals) == 0 and step + 1 < a.steps:
                with torch.no_grad():
                    sc = scores(net(noisy_te.to(a.device)).cpu(), clean_te)
                print(json.dumps({"model": name, "step": step + 1, **sc, "grad_norm": round(float(gnorm), 4)}),
                      flush=True)
        with torch.no_grad():
            sc = scores(net(noisy_te.to(a.device)).cpu(), clean_te)
        rows.append((name, sc, time.time() - t0))
        print(json.dumps({"model": name, **sc, "params": sum(p.numel() for p in net.parameters()),
                          "seconds": round(time.time() - t0, 1)}), flush=True)
    trained = f"trained at sigma {a.train_sigma} log-uniform" if a.train_sigma else "trained there"
    print(f"\n16x16 stripes, amplitude {a.amp}, noise sigma {a.sigma} ({trained}), {a.steps} steps of {a.batch}")
    print("| denoiser | MSE / MSE of zero | R^2 |\n|---|---|---|")
    for name, sc, _ in rows:
        print(f"| {name} | {sc['mse_ratio']:.3f} | {sc['r2']:.3f} |")
    return 0


def _blur(y: torch.Tensor, s: float) -> torch.Tensor:
    """Gaussian blur of std s pixels (reflect padding)."""
    r = int(math.ceil(3 * s))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1) / s) ** 2)
    k = (k / k.sum()).to(y.dtype)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


if __name__ == "__main__":
    sys.exit(main())
