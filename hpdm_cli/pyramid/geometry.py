"""Patch geometry: the one coordinate convention shared by extraction, fusion, tokens and tiling.

The convention is stated in docs/method.md, section 1; this module is its one implementation.

Convention (used everywhere in hpdm):
* A video occupies the unit cube [0, 1]^3 along (t, y, x) = (frames, height, width).
* A patch of level l is the box [delta, delta + s] per axis, with scale s = patch / level
  resolution (s = 1 at level 0) and offset delta in [0, 1 - s].
* A grid of n samples over an extent [a, a + e] has its sample centres at a + e (i + 0.5) / n
  (pixel centres at half steps), which is what `grid_sample(..., align_corners=False)` assumes.

So the pixel j of a level-l patch sits at delta_l + s_l (j + 0.5) / r in video coordinates, and
the same point, seen from the lower level k's patch, sits at (eq. 8 of the paper)
    (delta_l - delta_k) / s_k + (s_l / s_k) (j + 0.5) / r.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch

from ..config import PyramidConfig
from ..device import constant
from .tiles import build_tiles, chain_offsets, shift_phases


def level_scales(pyr: PyramidConfig, device=None) -> torch.Tensor:
    """Per-level, per-axis patch scales s_l as a float tensor [L, 3]."""
    return constant(tuple(tuple(pyr.level_scale(l)) for l in range(pyr.num_levels)), device, torch.float32)


def sample_nested_offsets(pyr: PyramidConfig, batch: int, *, generator: Optional[torch.Generator] = None,
                          device=None) -> torch.Tensor:
    """Random nested patch offsets [B, L, 3]: patch l lies inside patch l-1; full-resolution axes on integer pixels.

    delta_0 = 0 (level 0 is the whole video). Level l's offset is uniform over the positions that
    keep it inside level l-1: delta_l ~ U[delta_{l-1}, delta_{l-1} + s_{l-1} - s_l] per axis.
    Along an axis where level l already has the full resolution (always the case at the last
    level; earlier for axes with a smaller full/patch ratio, e.g. time), the offset is snapped
    to the full-resolution pixel grid (an integer crop: docs/method.md, sections 2-3), choosing uniformly among
    the integer positions from the one nearest level l-1's start to the one nearest its last admissible start:
    inside level l-1 when that level sits on the same grid, else within half a pixel of it, so that a level
    snapped inside a continuous one still reaches the frame's first and last pixels (the integer positions
    strictly inside would never include them). With `pyr.offsets == "grid"` every level
    is snapped so to its own pixel grid, as the tiles of hierarchical sampling are (docs/method.md,
    section 3). With `pyr.offsets == "tiles"` the offsets are the sampler's own tile chains
    (`sample_tile_offsets`).
    """
    if pyr.offsets == "tiles":
        return sample_tile_offsets(pyr, batch, generator=generator, device=device)
    L = pyr.num_levels
    scales = level_scales(pyr, device).double()
    u = torch.rand(batch, L, 3, generator=generator, device=generator.device if generator else device)
    u = u.to(device, torch.float64)
    offsets = torch.zeros(batch, L, 3, device=device, dtype=torch.float64)
    on_grid = pyr.pixel_grid_offsets
    for l in range(1, L):
        room = scales[l - 1] - scales[l]                                  # [3]
        cont = offsets[:, l - 1] + u[:, l] * room
        res = pyr.level_resolution(l) if on_grid else pyr.resolution
        full = torch.tensor(res, dtype=torch.float64, device=device)
        lo = torch.floor(offsets[:, l - 1] * full + 0.5)                  # integer start nearest the parent's
        hi = torch.floor((offsets[:, l - 1] + room) * full + 0.5)         # ... and nearest its last admissible one
        snapped = (lo + torch.floor(u[:, l] * (hi - lo + 1)).clamp(max=hi - lo)) / full
        at_full = torch.tensor([on_grid or n == R for n, R in zip(pyr.level_resolution(l), pyr.resolution)],
                               device=device)
        offsets[:, l] = torch.where(at_full, snapped, cont)
    return offsets.float()


def sample_tile_offsets(pyr: PyramidConfig, batch: int, *, generator: Optional[torch.Generator] = None,
                        device=None) -> torch.Tensor:
    """Training offsets [B, L, 3] that are the sampler's: a last-level tile, as often as sampling evaluates it,
    with its ancestor tiles.

    The tiles are those of hierarchical sampling under `pyr.overlap` (`hpdm_cli.pyramid.tiles`),
    each level-l tile's context taken from the lower-level tiles that sampling takes it from. Nested
    uniform offsets put a patch at the frame's edge ever more rarely level after level (the last
    level of a 4-level pyramid: ~2 in 10^4 patches), while sampling tiles the edges as often as the
    middle (docs/method.md, section 3). A tiling without shifts evaluates every tile at every call, so
    the draw is uniform; with shifted tiles the two end tiles of a shifted axis belong to both of its
    phases (`shift_phases`) and are drawn twice as often along it (a corner tile of `shift-fhw` 8x an inner one).
    """
    chains, weights = _tile_chains(tuple(pyr.resolution), tuple(pyr.patch), pyr.overlap)  # [T, L, 3], [T]
    g_dev = generator.device if generator is not None else None
    if bool((weights == weights[0]).all()):
        idx = torch.randint(chains.shape[0], (batch,), generator=generator, device=g_dev)
    else:
        idx = torch.multinomial(weights.to(g_dev), batch, replacement=True, generator=generator)
    return chains[idx.cpu()].to(device)


@lru_cache(maxsize=8)
def _tile_chains(resolution: tuple, patch: tuple, overlap: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every last-level tile's offsets on levels 0..L-1 under the tiling `overlap`, as [T, L, 3] float32, and
    how many of sampling's phases evaluate each tile ([T] float64; all 1 without shifted tiles)."""
    pyr = PyramidConfig(resolution=resolution, patch=patch, overlap=overlap)
    tiles = build_tiles(pyr, overlap)
    last = tiles[-1]
    weights = torch.zeros(last.num_tiles, dtype=torch.float64)
    for index, _ in shift_phases(last, overlap):
        weights[index.cpu()] += 1
    return chain_offsets(tiles, pyr.num_levels - 1), weights


def relative_coords(scales: torch.Tensor, offsets: torch.Tensor, level: int, context: int):
    """Eq. 8: level `level`'s patch expressed in level `context`'s patch frame, as (scale [3], offset [B, 3])."""
    s_l, s_k = scales[level], scales[context]
    return s_l / s_k, (offsets[:, level] - offsets[:, context]) / s_k


def token_centres(grid: tuple[int, int, int], device=None) -> torch.Tensor:
    """Patch-local centres (i + 0.5) / n of an (f, h, w) token grid, as [f*h*w, 3] in (t, y, x) order."""
    axes = [(torch.arange(n, dtype=torch.float32, device=device) + 0.5) / n for n in grid]
    t, y, x = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([t, y, x], dim=-1).reshape(-1, 3)


def patch_points(scale: torch.Tensor, offset: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Positions [B, f*h*w, 3] of a grid's sample centres for patches (scale [3] or [B,3], offset [B,3])."""
    local = token_centres(grid, offset.device)                            # [N, 3]
    scale = scale.expand_as(offset)
    return offset[:, None, :] + scale[:, None, :] * local[None]


def global_token_coords(scales: torch.Tensor, offsets: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Global (t, y, x) video coordinates of every token of every level: [B, L, N, 3]."""
    return torch.stack([patch_points(scales[l], offsets[:, l], grid) for l in range(offsets.shape[1])], dim=1)


def edge_proximity(scales: torch.Tensor, coords: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """How near every token lies to the video's six faces, exp(1/2 - d) per face at d tokens of its level: [B, L, N, 6].

    `coords` are `global_token_coords` [B, L, N, 3]; d is the distance from a token's centre to the
    face (t = 0, t = 1, y = 0, ... in that order) in units of the level's token size, so the outermost
    token reads 1, the next e^-1, the third e^-2. Unlike the coordinates themselves (linear in eq. 9)
    it tells a tile's edge at the frame's border from one inside the frame (docs/method.md, section 6).
    """
    L = coords.shape[1]                                                     # levels 0..L-1 (a sampler's prefix)
    size = (scales[:L].to(coords.dtype) / torch.tensor(grid, dtype=coords.dtype, device=coords.device))[None, :, None]
    d = torch.cat([coords / size, (1 - coords) / size], dim=-1)             # [B, L, N, 6]: lower faces, upper
    d = d[..., [0, 3, 1, 4, 2, 5]]                                          # (t0, t1, y0, y1, x0, x1)
    return torch.exp(0.5 - d.clamp(min=0.5))


def to_grid_sample(points: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Map [B, N, 3] (t, y, x) positions in a patch's [0,1] frame to a grid_sample grid [B, f, h, w, 3] (x, y, t in [-1, 1])."""
    g = points.flip(-1) * 2.0 - 1.0
    return g.reshape(points.shape[0], *grid, 3)
