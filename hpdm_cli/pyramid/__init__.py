"""Patch pyramids: nested patch coordinates (geometry), crop-and-resize extraction (extract), and the tiles every
level is sampled in, which training on tiles draws too (tiles)."""

from .extract import downsample_to_level, extract_level, extract_patches, integer_crop
from .geometry import (global_token_coords, level_scales, patch_points, relative_coords,
                       sample_nested_offsets, to_grid_sample, token_centres)

__all__ = ["downsample_to_level", "extract_level", "extract_patches", "integer_crop", "global_token_coords",
           "level_scales", "patch_points", "relative_coords", "sample_nested_offsets", "to_grid_sample",
           "token_centres"]
