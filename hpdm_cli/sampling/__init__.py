"""Inference: the EDM sampler (edm_sampler) and hierarchical sampling (hierarchical), tile by tile; the tilings
themselves are `hpdm_cli.pyramid.tiles` (re-exported here)."""

from .edm_sampler import HEUN_MAX_DROP, churn_gamma, edm_sample, edm_sigmas, network_evaluations, sampler_steps
from .hierarchical import (HierarchicalSampler, SampleResult, cache_bytes, check_guide, level_guidance, level_steps,
                           seed_generator)
from ..pyramid.tiles import (LevelTiles, axis_starts, build_tiles, chain_offsets, grid_axes, parse_overlap,
                             shift_phases, tile_counts)

__all__ = ["HEUN_MAX_DROP", "HierarchicalSampler", "LevelTiles", "SampleResult", "axis_starts", "build_tiles",
           "cache_bytes", "chain_offsets", "check_guide", "churn_gamma", "edm_sample", "edm_sigmas", "grid_axes",
           "level_guidance", "level_steps", "network_evaluations", "parse_overlap", "sampler_steps", "seed_generator",
           "shift_phases", "tile_counts"]
