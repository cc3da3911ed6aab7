"""The HPDM network: a video RIN that denoises one patch per pyramid level jointly.

Each level of a sample is its own sequence: its interface tokens (the tokenised patch) and its
own latents followed by conditioning tokens (noise level, pyramid level, class or text).
Levels talk only through context fusion, and only coarse -> fine, so level l's output never
depends on levels > l. Adaptive computation: block b processes only the first n_b levels
(`model.load`); skipped levels keep their activations and latents.

The network is the raw function F of EDM; preconditioning (c_in, c_skip, c_out, c_noise) and
per-level input scaling live in `hpdm_cli.diffusion`. Inputs are level-major lists internally:
block b concatenates the processed levels into one dense [n_b * B, N, d] tensor.

`forward` also serves cascaded inference: it can run levels lo..hi only, reading the lower
levels' activations from a `LevelContext` (activation caching), and can `collect` the
activations that finer levels will read (`reading_blocks`: the one statement of what an
activation cache keeps). It always returns a `NetOutput`.

This module is also the one source of the network's token geometry (`token_grid`) and of its
number of conditioning tokens (`cond_token_count`), which the FLOP counts and the activation
cache size are computed from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
from einops import rearrange

from ..config import ModelConfig, PyramidConfig
from ..pyramid.geometry import edge_proximity, global_token_coords, level_scales
from .fusion import ContextFusion, gather_context, pair_weights, shallow_context
from .layers import init_linear
from .rin import RINBlock


def token_grid(pyramid: PyramidConfig, model: ModelConfig) -> tuple[int, int, int]:
    """Tokens per axis (f, h, w) of one patch: the patch size divided by the tokenizer's."""
    return tuple(p // t for p, t in zip(pyramid.patch, model.tokenizer))


def cond_token_count(model: ModelConfig) -> int:
    """Conditioning tokens appended to each level's latents: noise level, pyramid level, then the class or text."""
    return 2 + {"class": 1, "text": model.text_tokens, "none": 0}[model.cond]


def reading_blocks(model: ModelConfig, num_levels: int, level: int) -> list[int]:
    """Blocks whose deep fusion reads `level`'s activations: what an activation cache of `level` keeps.

    Block b fuses the levels it processes with all coarser ones (eq. 9), so it reads level k's
    input to block b when it also processes a finer level: n_b > k + 1. Shallow and no fusion
    read no activations.
    """
    if model.fusion != "deep":
        return []
    return [b for b, n in enumerate(model.resolved_load(num_levels)) if n > level + 1]


class NetOutput(NamedTuple):
    """What `HPDMNet.forward` returns; the optional parts are None unless requested."""

    out: torch.Tensor                               # F (or D, from `diffusion.denoise`) [B, n, C, f, h, w]
    latents: Optional[torch.Tensor] = None          # [B, n, M, d_z] with `return_latents`
    collected: Optional[dict] = None                # with `collect`: level -> {block: [B, N, d]}


@dataclass
class LevelContext:
    """Finished lower levels 0..lo-1 as seen by levels >= lo: what the activation cache provides.

    acts[b] is a list over lower levels k of [B, N, d] activations entering block b (after
    block b-1), present for the blocks that fuse context into level lo: `reading_blocks` of
    level lo-1 (they read every lower level); `pixels` is level lo-1's network input
    [B, C, f, h, w] (shallow fusion only). terms[b], when given, is level lo's context of eq. 7
    for block b, already sampled from acts and projected by the block's fusion (its share of
    eq. 9, `HPDMNet.context_terms`): a sampler that denoises the same tiles many times computes
    it once; it is used when the network runs level lo alone.
    """

    acts: dict = field(default_factory=dict)
    pixels: Optional[torch.Tensor] = None
    terms: dict = field(default_factory=dict)


def sincos_positions(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """Fixed sine-cosine features [f*h*w, dim] of each token's (frame, row, column) index in a patch.

    The channels are split over the three axes (an even share each, the remainder to the width
    axis). An axis of n tokens gets sin and cos of (index + 1/2) * w_k, the frequencies w_k falling
    geometrically from pi (neighbours in opposite phase) to pi / n (half a period over the patch),
    so every pair of tokens differs and near tokens are alike. Values are in [-1, 1]: the table
    starts at the scale of a unit-variance token, not at the 0.02 of the learned one.
    """
    share = [2 * (dim // 6)] * 2
    share.append(dim - sum(share))
    feats = []
    for n, c in zip(grid, share):
        half = c // 2
        idx = torch.arange(n, dtype=torch.float64) + 0.5
        k = torch.arange(half, dtype=torch.float64)
        freqs = math.pi * torch.exp2(-k * math.log2(max(n, 2)) / max(half - 1, 1))
        ang = idx[:, None] * freqs[None]
        axis = torch.cat([ang.sin(), ang.cos()], dim=1)
        if c % 2:
            axis = torch.cat([axis, torch.zeros(n, 1, dtype=axis.dtype)], dim=1)
        feats.append(axis)
    f, h, w = grid
    table = torch.cat([feats[0][:, None, None].expand(f, h, w, -1),
                       feats[1][None, :, None].expand(f, h, w, -1),
                       feats[2][None, None, :].expand(f, h, w, -1)], dim=-1)
    return table.reshape(f * h * w, dim).float()


def fourier_positions(grid: tuple[int, int, int], dim: int, length: float = 1.5, seed: int = 0) -> torch.Tensor:
    """Fixed random Fourier features [f*h*w, dim] of each token's joint (frame, row, column) index in a patch.

    sin and cos of w . (t, y, x) for dim // 2 frequency vectors w drawn once from N(0, I / length^2) (in tokens;
    a fixed seed, so every process builds the same table). Their dot products approximate a Gaussian kernel of
    the tokens' 3-D distance, a product over the axes (Rahimi and Recht, 2007), where `sincos_positions`' per-axis
    features give a sum of per-axis kernels: one linear key then picks out a line through space and time, such as a
    moving object's tokens in every frame, which no key over a sum of per-axis features can (docs/method.md,
    section 4). Values in [-1, 1], unit scale as `sincos_positions`.
    """
    gen = torch.Generator().manual_seed(seed)
    freqs = torch.randn(dim // 2, 3, generator=gen, dtype=torch.float64) / length
    coords = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in grid), indexing="ij"), -1)
    ang = coords.reshape(-1, 3) @ freqs.T
    table = torch.cat([ang.sin(), ang.cos()], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(len(table), 1, dtype=table.dtype)], dim=1)
    return table.float()


class FourierFeatures(nn.Module):
    """Random Fourier features of a scalar (fixed frequencies stored as a buffer)."""

    def __init__(self, channels: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map x [...] to [..., channels] = [cos(2 pi f x), sin(2 pi f x)]."""
        y = x[..., None].float() * (2 * math.pi) * self.freqs
        return torch.cat([y.cos(), y.sin()], dim=-1)


class HPDMNet(nn.Module):
    """Video RIN over a patch hierarchy with deep context fusion and adaptive computation."""

    # Learned tokens and lookup tables: trained without LAMB's trust ratio or weight decay.
    embedding_parameters = ("pos_embed", "pos_fixed", "level_embed", "latents", "level_token", "class_embed.weight",
                            "null_text")

    def __init__(self, pyramid: PyramidConfig, model: ModelConfig):
        super().__init__()
        self.pyramid, self.cfg = pyramid, model
        self.num_levels = L = pyramid.num_levels
        self.patch = tuple(pyramid.patch)
        self.tok = tuple(model.tokenizer)
        self.grid = token_grid(pyramid, model)
        self.num_tokens = math.prod(self.grid)
        self.load = model.resolved_load(L)
        self.readers = [set(reading_blocks(model, L, l)) for l in range(L)]   # level -> blocks that read it
        D, Dz, C = model.interface_dim, model.latent_dim, model.channels
        self.register_buffer("scales", level_scales(pyramid).clone(), persistent=False)   # not the shared constant

        in_ch = C * (2 if model.fusion == "shallow" else 1)
        self.tokenizer = init_linear(nn.Linear(in_ch * math.prod(self.tok), D))
        self.pos_embed = nn.Parameter(torch.randn(self.num_tokens, D) * 0.02)
        if model.pos_embed in ("sincos", "fourier"):   # fixed unit-scale positions under the learned table
            fixed = sincos_positions if model.pos_embed == "sincos" else fourier_positions   # (docs/method.md, 4)
            table = fixed(self.grid, D) * model.pos_fixed_scale
            if model.pos_fixed_trainable:    # initialised to the features, then trained (model.pos_fixed_trainable)
                self.pos_fixed = nn.Parameter(table)
            else:
                self.register_buffer("pos_fixed", table, persistent=False)
        else:
            self.pos_fixed = None
        self.level_embed = nn.Parameter(torch.randn(L, D) * 0.02)

        self.latents = nn.Parameter(torch.randn(model.num_latents, Dz) * 0.02)
        self.noise_fourier = FourierFeatures(256)
        self.noise_mlp = nn.Sequential(init_linear(nn.Linear(256, Dz)), nn.GELU(), init_linear(nn.Linear(Dz, Dz)))
        self.level_token = nn.Parameter(torch.randn(L, Dz) * 0.02)
        if model.cond == "class":
            self.class_embed = nn.Embedding(model.num_classes + 1, Dz)   # last row: the null class
            nn.init.normal_(self.class_embed.weight, std=0.02)
        elif model.cond == "text":
            self.text_proj = init_linear(nn.Linear(model.text_dim, Dz))
            self.null_text = nn.Parameter(torch.randn(model.text_tokens, Dz) * 0.02)
            if model.text_whitening:     # set from the training captions, kept with the weights (docs/method.md, 8)
                self.register_buffer("text_mean", torch.zeros(model.text_tokens, model.text_dim))
                self.register_buffer("text_whiten", torch.eye(model.text_dim))
        if model.self_condition:
            self.self_cond_norm = nn.LayerNorm(Dz)
            self.self_cond_proj = nn.Linear(Dz, Dz)
            nn.init.zeros_(self.self_cond_proj.weight)
            nn.init.zeros_(self.self_cond_proj.bias)

        self.blocks = nn.ModuleList(
            RINBlock(D, Dz, model.compute_layers, model.head_dim, model.mlp_ratio, model.adaptive_norm,
                     self.grid if model.interface_conv else None, model.adaptive_norm_interface,
                     model.qk_norm, read_pos_values=model.pos_fixed_into == "read")
            for _ in range(model.num_blocks))
        if model.fusion == "deep":
            # Block b fuses levels 1..n_b-1 with the coarser ones (eq. 9); a block that processes level 0
            # only (n_b = 1) fuses nothing, so it has no fusion weights (they could never be trained).
            self.fusions = nn.ModuleDict({str(b): ContextFusion(D, model.fusion_coords, model.fusion_edges)
                                          for b in range(model.num_blocks) if self.load[b] > 1})
            self.register_load_state_dict_pre_hook(_drop_unbuilt_fusions)
        self.out_norm = nn.LayerNorm(D)
        self.detokenizer = nn.Linear(D, C * math.prod(self.tok))
        nn.init.zeros_(self.detokenizer.weight)
        nn.init.zeros_(self.detokenizer.bias)

    def is_unbuilt_fusion(self, name: str) -> bool:
        """Whether `name` is a weight of the fusion of a level-0-only block, which this model does not build.

        Checkpoints of earlier versions hold such weights (never trained: no forward pass reads them);
        loading drops them.
        """
        parts = name.split(".")
        return (self.cfg.fusion == "deep" and len(parts) > 2 and parts[0] == "fusions" and parts[1].isdigit()
                and int(parts[1]) < len(self.load) and self.load[int(parts[1])] <= 1)

    # ----------------------------------------------------------------------------------------
    def tokenize(self, x: torch.Tensor, level: int, c_noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Patch pixels [B, C', f, h, w] of `level` -> interface tokens [B, N, d] (c_noise [B]: model.pos_fixed_sigma)."""
        tf, th, tw = self.tok
        t = rearrange(x, "b c (f pf) (h ph) (w pw) -> b (f h w) (c pf ph pw)", pf=tf, ph=th, pw=tw)
        return self.tokenizer(t) + self.positions(level, c_noise) + self.level_embed[level]

    def has_fixed(self, level: int) -> bool:
        """Whether level `level` is given the fixed position table (model.pos_embed, model.pos_fixed_levels)."""
        return self.pos_fixed is not None and (level == 0 or self.cfg.pos_fixed_levels == "all")

    def positions(self, level: int, c_noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Level `level`'s position embedding added to its tokens: the learned table [N, d], plus the fixed one
        where it applies to the tokens (model.pos_fixed_into = "tokens"), [B, N, d] if faded per sample."""
        fixed = self.fixed_positions(level, c_noise) if self.cfg.pos_fixed_into == "tokens" else None
        return self.pos_embed if fixed is None else self.pos_embed + fixed

    def attention_positions(self, level: int, c_noise: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """The fixed table that level `level`'s attention takes instead of its tokens (model.pos_fixed_into =
        "attention": the read's keys and write's queries; "read": the read's keys and values, the write's queries)."""
        return self.fixed_positions(level, c_noise) if self.cfg.pos_fixed_into != "tokens" else None

    def fixed_positions(self, level: int, c_noise: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Level `level`'s fixed table: [1, N, d] at weight 1, [B, N, d] at the weight model.pos_fixed_sigma gives
        each sample's c_noise [B], None where the level has none."""
        if not self.has_fixed(level):
            return None
        weight = self.fixed_weight(c_noise)
        return self.pos_fixed[None] if weight is None else weight[:, None, None] * self.pos_fixed

    def fixed_weight(self, c_noise: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The fixed table's weight [B] at EDM's c_noise = ln(sigma) / 4 under model.pos_fixed_sigma; None: weight 1."""
        if not self.cfg.pos_fixed_sigma or self.pos_fixed is None or c_noise is None:
            return None
        lo, hi = (math.log(v) for v in self.cfg.pos_fixed_sigma)
        return ((4 * c_noise.float() - lo) / (hi - lo)).clamp(0, 1)

    def detokenize(self, a: torch.Tensor) -> torch.Tensor:
        """Interface tokens [B, N, d] -> patch pixels [B, C, f, h, w]."""
        tf, th, tw = self.tok
        f, h, w = self.grid
        y = self.detokenizer(self.out_norm(a))
        return rearrange(y, "b (f h w) (c pf ph pw) -> b c (f pf) (h ph) (w pw)", f=f, h=h, w=w,
                         pf=tf, ph=th, pw=tw)

    def cond_tokens(self, c_noise: torch.Tensor, level: int, cond: Optional[torch.Tensor],
                    keep: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning of one level: tokens [B, C_tok, d_z] and their sum [B, d_z] (None without adaptive norm).

        The tokens are the noise level, the pyramid level and the class or text (C_tok = `cond_token_count`).
        """
        B = c_noise.shape[0]
        toks = [self.noise_mlp(self.noise_fourier(c_noise))[:, None],
                self.level_token[level].expand(B, 1, -1)]
        if self.cfg.cond == "class":
            labels = cond.long() if cond is not None else torch.full((B,), self.cfg.num_classes, device=c_noise.device)
            if keep is not None:
                labels = torch.where(keep, labels, torch.full_like(labels, self.cfg.num_classes))
            toks.append(self.class_embed(labels)[:, None])
        elif self.cfg.cond == "text":
            null = self.null_text.expand(B, -1, -1)
            if cond is None:
                toks.append(null)
            else:
                c = cond.to(self.null_text.dtype)
                if self.cfg.text_whitening:
                    c = (c - self.text_mean.to(c.dtype)) @ self.text_whiten.to(c.dtype)
                t = self.text_proj(c)
                toks.append(t if keep is None else torch.where(keep[:, None, None], t, null))
        vec = None                                       # only adaptive LayerNorm reads the summed condition
        if self.cfg.adaptive_norm:
            vec = toks[0][:, 0] + toks[1][:, 0] + (toks[2].mean(1) if len(toks) > 2 else 0)
        return torch.cat(toks, dim=1), vec

    def _level_inputs(self, x, c_noise, offsets, cond, keep, lo: int, context, self_cond, self_cond_gate=None):
        """Per present level l: interface tokens a[l], latents with conditioning tokens z[l], condition vector cv[l]."""
        B = x.shape[0]
        a, z, cv = {}, {}, {}
        for i, l in enumerate(range(lo, lo + x.shape[1])):
            inp = x[:, i]
            if self.cfg.fusion == "shallow":            # the lower level's pixels, resampled, as extra channels
                if l == 0:
                    low = torch.zeros_like(inp)
                else:
                    prev = x[:, i - 1] if i > 0 else context.pixels
                    low = shallow_context(prev, self.scales.to(offsets.device), offsets, l, self.patch)
                inp = torch.cat([inp, low], dim=1)
            a[l] = self.tokenize(inp, l, c_noise[:, i])
            lat = self.latents.expand(B, -1, -1)
            sc = self_cond if self_cond is None else (self_cond[i] if isinstance(self_cond, (list, tuple))
                                                      else self_cond[:, i])
            if sc is not None:
                read = self.self_cond_proj(self.self_cond_norm(sc))
                lat = lat + (read if self_cond_gate is None else read * self_cond_gate)
            toks, cv[l] = self.cond_tokens(c_noise[:, i], l, cond, keep)
            z[l] = torch.cat([lat, toks], dim=1)
        return a, z, cv

    # ----------------------------------------------------------------------------------------
    def context_terms(self, offsets: torch.Tensor, context: LevelContext, level: int) -> dict:
        """For `level` alone, {block: [B, N, d]}: eq. 7 sampled from context.acts, projected as eq. 9 takes it.

        What `forward` computes per call from the same inputs; offsets [B, level+1, 3] are the patch
        offsets of levels 0..level.
        """
        weights = pair_weights(self.scales.to(offsets.device), offsets, self.grid, level + 1)
        return {b: self.fusions[str(b)].context_term(gather_context(acts, level, level + 1, weights, self.grid)[0])
                for b, acts in context.acts.items()}

    # ----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, offsets: torch.Tensor,
                cond: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None, *,
                lo: int = 0, context: Optional[LevelContext] = None,
                self_cond: Optional[torch.Tensor] = None, self_cond_gate: Optional[torch.Tensor] = None,
                collect: bool = False, return_latents: bool = False) -> NetOutput:
        """Denoiser output F for levels lo..lo+n-1, as a `NetOutput`.

        x: network inputs [B, n, C, f, h, w] (already scaled by c_in); c_noise: [B, n];
        offsets: patch offsets [B, lo+n, 3] of levels 0..lo+n-1 (lower levels' too);
        cond: class ids [B] or text embeddings [B, T, E]; keep: bool [B], False = drop the
        condition (classifier-free guidance); context: lower levels' activations when lo > 0;
        self_cond: previous latents [B, n, M, d_z], or a list over the n levels of [B, M, d_z] or None
        (None: that level has no previous latents); self_cond_gate: a tensor that multiplies what is read
        from self_cond ([1]: 1 reads it, 0 is no self_cond, with zero gradients instead of none).
        Returns F [B, n, C, f, h, w] (`out`), the latents [B, n, M, d_z] if `return_latents`, and if
        `collect` the activations finer levels read (`collected`: level -> {block: [B, N, d]} for the
        blocks of `reading_blocks`).
        """
        B, n = x.shape[:2]
        hi = lo + n                                   # levels lo..hi-1 present
        if lo > 0 and context is None and self.cfg.fusion != "none":
            raise ValueError("levels above 0 need a LevelContext of the lower levels")
        M = self.cfg.num_latents
        scales = self.scales.to(offsets.device)
        fuse = self.cfg.fusion == "deep"
        if fuse and hi > 1:
            weights = pair_weights(scales, offsets, self.grid, hi)
            coords = edges = None
            if self.cfg.fusion_coords or self.cfg.fusion_edges:
                coords = global_token_coords(scales, offsets, self.grid)
            if self.cfg.fusion_edges:
                edges = edge_proximity(scales, coords, self.grid)

        a, z, cv = self._level_inputs(x, c_noise, offsets, cond, keep, lo, context, self_cond, self_cond_gate)
        pos = {l: self.attention_positions(l, c_noise[:, i]) for i, l in enumerate(range(lo, hi))}
        stacks = {}                                   # levels -> their stacked attention positions, once a forward
        dev = x.device.type
        if self.cfg.bf16_streams and torch.is_autocast_enabled(dev):
            # The residual streams in the autocast dtype: every element-wise pass over them (residual
            # adds, LayerNorm, modulation, fusion) moves half the bytes of float32 (docs/method.md, section 4).
            dt = torch.get_autocast_dtype(dev)
            a = {l: t.to(dt) for l, t in a.items()}
            z = {l: t.to(dt) for l, t in z.items()}
        collected = {l: {} for l in range(lo, hi)} if collect else None
        for b, block in enumerate(self.blocks):
            levels = [l for l in range(lo, min(self.load[b], hi))]
            if not levels:
                continue
            if collect:                                   # what block b's fusion of finer levels reads
                for l in range(lo, hi):
                    if b in self.readers[l]:
                        collected[l][b] = a[l]
            first, stop = max(lo, 1), levels[-1] + 1                    # fused levels: first..stop-1
            if fuse and first < stop:
                ctx = term = None
                if context is not None and b in context.terms and n == 1:
                    term = context.terms[b][None]                       # computed once for these tiles
                else:
                    lower = [context.acts[b][k] if k < lo else a[k] for k in range(stop - 1)]
                    ctx = gather_context(lower, first, stop, weights, self.grid, detach=self.cfg.context_detach)
                cds = coords[:, first:stop].transpose(0, 1) if coords is not None else None
                eds = edges[:, first:stop].transpose(0, 1) if edges is not None else None
                fused = self.fusions[str(b)](torch.stack([a[l] for l in range(first, stop)]), ctx, cds, term, eds)
                a.update({l: fused[j] for j, l in enumerate(range(first, stop))})
            xa = a[levels[0]] if len(levels) == 1 else torch.cat([a[l] for l in levels])
            xz = z[levels[0]] if len(levels) == 1 else torch.cat([z[l] for l in levels])
            xc = None
            if self.cfg.adaptive_norm:
                xc = cv[levels[0]] if len(levels) == 1 else torch.cat([cv[l] for l in levels])
            if tuple(levels) not in stacks:
                stacks[tuple(levels)] = stacked_positions(pos, levels, B)
            xa, xz = block(xa, xz, xc, stacks[tuple(levels)])
            for l, ya, yz in zip(levels, xa.chunk(len(levels)), xz.chunk(len(levels))):
                a[l], z[l] = ya, yz

        if self.cfg.pos_fixed_subtract:              # the readout sees the tokens without the fixed table
            for i, l in enumerate(range(lo, hi)):
                fixed = self.fixed_positions(l, c_noise[:, i])
                if fixed is not None:
                    a[l] = a[l] - fixed.to(a[l].dtype)
        out = torch.stack([self.detokenize(a[l]) for l in range(lo, hi)], dim=1)
        latents = torch.stack([z[l][:, :M] for l in range(lo, hi)], dim=1) if return_latents else None
        return NetOutput(out, latents, collected)


def stacked_positions(pos: dict, levels: list[int], batch: int) -> Optional[torch.Tensor]:
    """The attention positions of `levels` as one block sees them, levels stacked on the batch axis as the tokens
    are: pos[l] [1 or B, N, d] or None (zeros) -> [len(levels) * B, N, d], [1, N, d] for one level, or None."""
    if all(pos[l] is None for l in levels):
        return None
    if len(levels) == 1:
        return pos[levels[0]]
    ref = next(pos[l] for l in levels if pos[l] is not None)
    return torch.cat([(ref.new_zeros(()) if pos[l] is None else pos[l]).expand(batch, *ref.shape[1:])
                      for l in levels])


def _drop_unbuilt_fusions(module: HPDMNet, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: remove the weights of fusions the model does not build (see is_unbuilt_fusion)."""
    for key in [k for k in state_dict if k.startswith(prefix) and module.is_unbuilt_fusion(k[len(prefix):])]:
        del state_dict[key]
