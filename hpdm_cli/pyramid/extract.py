"""Patch extraction (eq. 5): p_l = resize(crop(x; s_l, delta_l); r), batched on the device.

Level l is read from the video at that level's resolution (R_l = min(r 2^l, R) per axis, r the
patch size and R the full resolution: `PyramidConfig.level_resolution`): the video is first
box-filtered to that resolution (an area average over the 2^k pixels each level pixel covers;
for a factor of two this is exactly trilinear interpolation of the 8 neighbouring pixels, and it
stays alias-free for larger factors), then the patch is
resampled trilinearly at its sample centres (`align_corners=False`, the convention of
`geometry`). The last level is an integer crop of the full-resolution video (no resampling;
docs/method.md, section 2), and so is every level with `pyramid.offsets = "grid"` or `"tiles"` (a crop of the
level's box-filtered video). A linear ramp video is reproduced exactly at every level
(docs/method.md, invariants "coordinates reproduce a linear ramp" and "the last level is an
exact integer crop"; tests/test_pyramid.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import PyramidConfig
from ..device import constant
from .geometry import level_scales, patch_points, to_grid_sample


def downsample_to_level(video: torch.Tensor, pyr: PyramidConfig, level: int) -> torch.Tensor:
    """Box-filter a full-resolution video [B, C, F, H, W] to `level`'s whole-video resolution."""
    factor = tuple(R // n for R, n in zip(pyr.resolution, pyr.level_resolution(level)))
    if factor == (1, 1, 1):
        return video
    return F.avg_pool3d(video, kernel_size=factor, stride=factor)


def integer_crop(video: torch.Tensor, starts: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Crop [B, C, F, H, W] at integer starts [B, 3] to `size` without any interpolation."""
    B = video.shape[0]
    starts = starts.long()
    idx = [starts[:, a, None] + torch.arange(size[a], device=video.device)[None] for a in range(3)]
    b = torch.arange(B, device=video.device)[:, None, None, None]
    out = video[b, :, idx[0][:, :, None, None], idx[1][:, None, :, None], idx[2][:, None, None, :]]
    return out.permute(0, 4, 1, 2, 3)                                     # [B, C, f, h, w]


def extract_level(video: torch.Tensor, pyr: PyramidConfig, level: int, offsets: torch.Tensor) -> torch.Tensor:
    """Extract one level's patches [B, C, r_f, r_h, r_w] at offsets [B, 3] from full-resolution video."""
    r = tuple(pyr.patch)
    src = downsample_to_level(video, pyr, level)
    if level == 0:                                                        # the whole video, s = 1
        return src
    if level == pyr.num_levels - 1 or pyr.pixel_grid_offsets:
        grid = constant(tuple(pyr.level_resolution(level)), offsets.device, torch.float64)
        starts = torch.round(offsets.double() * grid)
        off_grid = (starts - offsets.double() * grid).abs().max() > 1e-3
        msg = f"level {level}'s patches must sit on integer pixel offsets of its grid"
        if offsets.device.type != "cpu":
            torch._assert_async(~off_grid, msg)                           # checked on the device: no host wait
        elif off_grid:
            raise ValueError(msg)
        return integer_crop(src, starts, r)
    scale = level_scales(pyr, offsets.device)[level]
    grid = to_grid_sample(patch_points(scale, offsets, r), r).to(src.dtype)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)


def extract_patches(video: torch.Tensor, pyr: PyramidConfig, offsets: torch.Tensor) -> torch.Tensor:
    """Extract the patch hierarchy [B, L, C, r_f, r_h, r_w] of videos [B, C, F, H, W] at offsets [B, L, 3]."""
    if tuple(video.shape[2:]) != tuple(pyr.resolution):
        raise ValueError(f"video size {tuple(video.shape[2:])} != pyramid.resolution {tuple(pyr.resolution)}")
    return torch.stack([extract_level(video, pyr, l, offsets[:, l]) for l in range(offsets.shape[1])], dim=1)
