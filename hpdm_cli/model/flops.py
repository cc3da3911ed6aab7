"""Exact matmul/attention FLOP counts of HPDMNet (the conventions of torch.utils.flop_counter).

Counts 2*m*n*k per matrix product and 4*S_q*S_k*d per attention (QK^T and AV), per sample.
Element-wise work, norms and biases are not counted (as in FlopCounterMode); deep fusion's sampling of lower
levels is, as the three 1-D interpolation matmuls it runs.
`tests/test_flops.py` checks these formulas against FlopCounterMode on real forward passes,
so the MFU of `hpdm bench` rests on counted, not guessed, FLOPs. A training step costs about
three forward passes (backward = 2x forward), plus the self-conditioning pass where a step runs one.
"""

from __future__ import annotations

import math
from typing import Optional

from ..config import ModelConfig, PyramidConfig
from .network import cond_token_count, token_grid


def block_level_flops(pyr: PyramidConfig, m: ModelConfig) -> int:
    """FLOPs of one RIN block on one level of one sample."""
    N = math.prod(token_grid(pyr, m))
    D, Dz = m.interface_dim, m.latent_dim
    S = m.num_latents + cond_token_count(m)
    hz, hd = int(Dz * m.mlp_ratio), int(D * m.mlp_ratio)
    read = 2 * S * Dz * Dz + 2 * N * D * 2 * Dz + 4 * S * N * Dz + 2 * S * Dz * Dz + 4 * S * Dz * hz
    compute = m.compute_layers * (2 * S * Dz * 3 * Dz + 4 * S * S * Dz + 2 * S * Dz * Dz + 4 * S * Dz * hz)
    write = 2 * N * D * D + 2 * S * Dz * 2 * D + 4 * N * S * D + 2 * N * D * D + 4 * N * D * hd
    write += 2 * N * D * 27 if m.interface_conv else 0                  # depthwise 3x3x3 convolution
    return read + compute + write


def fusion_level_flops(pyr: PyramidConfig, m: ModelConfig) -> int:
    """FLOPs of one deep-context-fusion projection on one level of one sample."""
    N = math.prod(token_grid(pyr, m))
    D = m.interface_dim
    return 2 * N * D * D * 2 + (2 * N * 3 * D if m.fusion_coords else 0) + (2 * N * 6 * D if m.fusion_edges else 0)


def fusion_pair_flops(pyr: PyramidConfig, m: ModelConfig) -> int:
    """FLOPs of sampling one lower level's token grid at a finer level's tokens (three 1-D interpolations)."""
    grid = token_grid(pyr, m)
    return 2 * math.prod(grid) * m.interface_dim * sum(grid)


def fusion_block_flops(pyr: PyramidConfig, m: ModelConfig, levels: int) -> int:
    """Deep-fusion FLOPs of a block processing `levels` levels (levels-1 projections, all lower-level pairs)."""
    n = max(levels, 1)
    return fusion_level_flops(pyr, m) * (n - 1) + fusion_pair_flops(pyr, m) * n * (n - 1) // 2


def forward_flops(pyr: PyramidConfig, m: ModelConfig, *, load: Optional[list[int]] = None,
                  self_cond: bool = False) -> dict:
    """Per-sample forward FLOPs of a training pass over all levels, with a breakdown by part."""
    L = pyr.num_levels
    load = m.resolved_load(L) if load is None else load
    N = math.prod(token_grid(pyr, m))
    D, Dz, C = m.interface_dim, m.latent_dim, m.channels
    tok = math.prod(m.tokenizer)
    in_ch = C * (2 if m.fusion == "shallow" else 1)
    per_level = {
        "tokenizer": 2 * N * in_ch * tok * D,
        "detokenizer": 2 * N * D * C * tok,
        "conditioning": 2 * 256 * Dz + 2 * Dz * Dz + (2 * m.text_tokens * m.text_dim * Dz if m.cond == "text" else 0)
        + (2 * m.text_tokens * m.text_dim * m.text_dim if m.cond == "text" and m.text_whitening else 0)
        + (2 * m.num_latents * Dz * Dz if self_cond else 0),
    }
    out = {k: v * L for k, v in per_level.items()}
    out["blocks"] = block_level_flops(pyr, m) * sum(min(n, L) for n in load)
    out["fusion"] = sum(fusion_block_flops(pyr, m, min(n, L)) for n in load) if m.fusion == "deep" else 0
    out["total"] = sum(out.values())
    return out


def train_step_flops(pyr: PyramidConfig, m: ModelConfig, *, self_cond_prob: float = 0.0, **kwargs) -> int:
    """Per-sample FLOPs of one training step, expected over its random draws: forward + backward (2x forward).

    With `model.self_condition`, a step runs a forward-only pass first with probability `self_cond_prob`
    (`diffusion.self_cond_prob`), and its trained pass then reads those latents back (one more projection).
    """
    plain = forward_flops(pyr, m, **kwargs)["total"]
    if not (m.self_condition and self_cond_prob > 0):
        return 3 * plain
    reading = forward_flops(pyr, m, self_cond=True, **kwargs)["total"]
    return round(3 * plain + self_cond_prob * (3 * (reading - plain) + plain))
