"""Context fusion between pyramid levels: deep (eq. 7-9 of the paper) and shallow (the ablation).

The method is stated in docs/method.md, section 6.

Deep context fusion, before block b and for every processed level l > 0:
    ctx_l   = (1/l) sum_{k<l} grid_sample_3d(a_k^{b-1}, c_hat(c_l, c_k))        (eq. 7, 8)
    a_l    <- a_l + W' [a_l^{b-1}; ctx_l; coords_l] + bias           (eq. 9 with W = [I, 0, 0] + W')
where a_k^{b-1} is level k's interface token grid after block b-1, sampled trilinearly at the
centres of level l's tokens inside patch k, and coords_l are level l's global token coordinates.
All (l, k) pairs of a block are sampled together, as three batched 1-D interpolation matmuls
(the token positions form an axis-aligned grid, so trilinear sampling factorises).

Shallow fusion (the paper's baseline): the RGB input of level l-1, resampled at level l's pixel
centres, is concatenated to level l's input before tokenisation.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..pyramid.geometry import patch_points, relative_coords, to_grid_sample


def level_pairs(num_levels: int) -> list[tuple[int, int]]:
    """All (l, k) with k < l < num_levels, ordered by l then k (a prefix covers the first n levels)."""
    return [(l, k) for l in range(1, num_levels) for k in range(l)]


def axis_weights(rel_scale: torch.Tensor, rel_offset: torch.Tensor, n: int) -> torch.Tensor:
    """1-D linear-interpolation matrices [B, n, n] reading n samples of a patch at a finer patch's n centres.

    Output i sits at rel_offset + rel_scale (i + 0.5) / n in the source patch's [0, 1] frame,
    i.e. at source index u = that * n - 0.5 (pixel centres at half steps), clamped to the edge
    samples (border padding); W[i, j] = max(0, 1 - |u_i - j|). This is exactly what
    `grid_sample(mode="bilinear", padding_mode="border", align_corners=False)` does per axis.
    """
    i = (torch.arange(n, device=rel_offset.device, dtype=torch.float32) + 0.5) / n
    u = (rel_offset[:, None] + rel_scale * i[None]) * n - 0.5                   # [B, n]
    u = u.clamp(0, n - 1)
    j = torch.arange(n, device=rel_offset.device, dtype=torch.float32)
    return (1 - (u[:, :, None] - j[None, None]).abs()).clamp(min=0)


def pair_weights(scales: torch.Tensor, offsets: torch.Tensor, grid: tuple[int, int, int],
                 num_levels: int) -> list[torch.Tensor]:
    """Per axis (t, y, x), interpolation matrices [P, B, n, n] placing level l's tokens inside patch k, for every pair.

    The token positions of a patch form an axis-aligned grid, so trilinear sampling of a lower
    level's token grid (eq. 7) factorises into three 1-D interpolations: three small batched
    matmuls instead of a 3-D grid_sample (no atomics in the backward pass, fused-friendly).
    """
    per_axis = [[], [], []]
    for l, k in level_pairs(num_levels):
        rel_scale, rel_offset = relative_coords(scales, offsets, l, k)
        for a in range(3):
            per_axis[a].append(axis_weights(rel_scale[a], rel_offset[:, a], grid[a]))
    B = offsets.shape[0]
    return [torch.stack(w) if w else offsets.new_zeros(0, B, n, n) for w, n in zip(per_axis, grid)]


def sample_tokens(acts: torch.Tensor, weights: Sequence[torch.Tensor], grid: tuple[int, int, int]) -> torch.Tensor:
    """Trilinearly sample token grids acts [P, B, N, d] with per-axis matrices [P, B, n, n] -> [P, B, N, d].

    Under autocast the interpolation runs in the autocast dtype (fp32 accumulation in the GEMMs),
    since the fusion projection that reads the result takes it in that dtype anyway: three
    memory-bound passes over the activations at half the bytes of float32. The 2-tap weights are
    exact in bf16 on the sampler's pixel-grid tiles; for training's continuous offsets their
    rounding moves a sample by at most 2^-9 of a token. Without autocast: the activations' dtype.
    """
    P, B, N, d = acts.shape
    f, h, w = grid
    dev = acts.device.type
    dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else acts.dtype
    wf, wh, ww = (x.reshape(P * B, n, n).to(dt) for x, n in zip(weights, grid))
    with torch.autocast(dev, enabled=False):
        x = acts.reshape(P * B, f, h * w * d).to(dt)
        x = torch.bmm(wf, x).reshape(P * B, f, h, w * d)                                  # along t
        x = torch.matmul(wh[:, None], x).reshape(P * B, f, h, w, d)                       # along y
        x = torch.matmul(ww[:, None, None], x)                                            # along x
    return x.reshape(P, B, N, d)


def gather_context(acts: Sequence[torch.Tensor], first: int, stop: int, weights: Sequence[torch.Tensor],
                   grid: tuple[int, int, int], detach: bool = False) -> torch.Tensor:
    """Eq. 7: for each level l in first..stop-1, the mean over k < l of level k's activations sampled at l's tokens.

    `acts[k]` is level k's token grid [B, N, d]; `weights` holds the per-axis pair matrices in
    `level_pairs` order (the pairs of levels first..stop-1 are one contiguous slice); returns
    [stop-first, B, N, d].
    """
    pairs = [(l, k) for l in range(first, stop) for k in range(l)]
    src = torch.stack([acts[k] for _, k in pairs])
    if detach:
        src = src.detach()
    lo_p, hi_p = first * (first - 1) // 2, stop * (stop - 1) // 2
    sampled = sample_tokens(src, [w[lo_p:hi_p] for w in weights], grid)
    out, i = [], 0
    for l in range(first, stop):
        out.append(sampled[i:i + l].mean(0))
        i += l
    return torch.stack(out)


class ContextFusion(nn.Module):
    """Eq. 9: project concat[a_l, ctx_l, coords_l] (2d + 3 channels) back to d channels.

    Written as a residual, a_l + W' concat[...] + b (eq. 9 with W = [I, 0, 0] + W'), so that the
    activations keep their precision under bf16 autocast; the coordinate term runs in float32
    (bf16 would quantise positions to ~1/256 of the video).
    """

    def __init__(self, dim: int, coords: bool, edges: bool = False):
        super().__init__()
        self.dim = dim
        self.coords = coords
        self.proj = nn.Linear(2 * dim + (3 if coords else 0), dim)
        # W' starts at zero on a_l and small on the context and coordinates, so the block begins
        # as "a_l plus a small read of the context" and the lower levels get gradients at once.
        with torch.no_grad():
            nn.init.trunc_normal_(self.proj.weight, std=0.02, a=-0.04, b=0.04)
            self.proj.weight[:, :dim] = 0
            nn.init.zeros_(self.proj.bias)
        # The tokens' nearness to the frame's six faces (`edge_proximity`), a term of its own that
        # starts at zero: a model given it computes what it did without until trained.
        self.edge = nn.Linear(6, dim, bias=False) if edges else None
        if self.edge is not None:
            nn.init.zeros_(self.edge.weight)

    def context_term(self, ctx: torch.Tensor) -> torch.Tensor:
        """The context's share of eq. 9, W'_ctx ctx: fixed while a sampler denoises the same tiles."""
        return F.linear(ctx, self.proj.weight[:, self.dim:2 * self.dim])

    def forward(self, a: torch.Tensor, ctx: Optional[torch.Tensor], coords: Optional[torch.Tensor],
                term: Optional[torch.Tensor] = None, edges: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Fuse a [..., N, d] with ctx [..., N, d] (or its `context_term`), coords [..., N, 3] and edges [..., N, 6]."""
        w, d = self.proj.weight, self.dim
        y = F.linear(a, w[:, :d], self.proj.bias) + (self.context_term(ctx) if term is None else term)
        if self.coords or self.edge is not None:
            with torch.autocast(a.device.type, enabled=False):
                y = y.float()
                if self.coords:
                    y = y + F.linear(coords.float(), w[:, 2 * d:].float())
                if self.edge is not None:
                    y = y + F.linear(edges.float(), self.edge.weight.float())
        return a + y.to(a.dtype)


def shallow_context(pixels: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, level: int,
                    patch: tuple[int, int, int]) -> torch.Tensor:
    """Level `level-1`'s pixels [B, C, f, h, w] resampled at level `level`'s pixel centres (shallow fusion)."""
    rel_scale, rel_offset = relative_coords(scales, offsets, level, level - 1)
    g = to_grid_sample(patch_points(rel_scale, rel_offset, patch), patch).to(pixels.dtype)
    return F.grid_sample(pixels, g, mode="bilinear", padding_mode="border", align_corners=False)
