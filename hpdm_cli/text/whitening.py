"""Whitened text-encoder states: every direction in which the training captions differ gets the same variance.

A frozen encoder holds some words of a caption much closer than others: in MiniLM's token states of the
`shapes` captions, swapping "left" for "right" moves a caption a third as far as swapping its colour or
shape, and a short run learns that difference last (docs/results.md, sections 63 and 68). Centring the
states per token position and whitening them with the captions' covariance (shrunk, so that directions
in which they hardly differ are not blown up to noise) gives every such difference a comparable size
before the network's text projection sees it. The map is linear, so it is a reparametrisation of that
projection, not a new function class: it changes how fast the projection learns, not what it can learn
(docs/method.md, section 8).
"""

from __future__ import annotations

import torch

__all__ = ["whitening_stats", "DEFAULT_SHRINK"]

DEFAULT_SHRINK = 0.01      # ridge added to the covariance, as a fraction of its mean eigenvalue


def whitening_stats(emb: torch.Tensor, shrink: float = DEFAULT_SHRINK) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [K, D], matrix [D, D]) that whiten caption states [N, K, D] as (x - mean) @ matrix.

    `mean` is each token position's mean over the N captions; `matrix` the symmetric inverse square root of
    the covariance of the centred states pooled over positions, plus `shrink` times its mean eigenvalue,
    scaled by the square root of that mean eigenvalue: the whitened states keep about the total variance
    of the centred ones, spread evenly over the directions in which the captions differ. Computed in
    float64, returned in float32. Raises ValueError when the captions do not differ at all.
    """
    if emb.ndim != 3:
        raise ValueError(f"caption states of shape [captions, tokens, dim] expected, got {tuple(emb.shape)}")
    x = emb.detach().to("cpu", torch.float64)
    mean = x.mean(0)
    centred = (x - mean).reshape(-1, x.shape[-1])
    cov = centred.T @ centred / centred.shape[0]
    eig, vec = torch.linalg.eigh(cov)
    eig = eig.clamp(min=0)
    scale = float(eig.mean())
    if not scale > 0:
        raise ValueError(f"the {x.shape[0]} captions' states do not differ: nothing to whiten")
    gain = (scale / (eig + shrink * scale)).sqrt()
    matrix = (vec * gain) @ vec.T
    return mean.float(), matrix.float()
