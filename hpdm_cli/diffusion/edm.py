"""The EDM objective over a patch hierarchy: preconditioning, per-level input scaling, noise and loss.

Parametrisation (Karras et al. 2022) with data std sigma_d:
    c_skip = sigma_d^2 / (sigma^2 + sigma_d^2)     c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_d^2)        c_noise = ln(sigma) / 4
    D(x~; sigma) = c_skip x~ + c_out F(c_in x~; c_noise)
and the loss weight 1/c_out^2 makes the objective || F - (y - c_skip x~) / c_out ||^2, whose target
is (sigma y / sigma_d - sigma_d eps) / sqrt(sigma^2 + sigma_d^2) for x~ = y + sigma eps: minus the
v-prediction target of the variance-preserving view of y / sigma_d at noise sigma / sigma_d
(tests/test_edm.py).

Per-level input scaling (docs/method.md, section 5; Chen 2023): level l's clean patch P_l is multiplied by
b_l = b_0 gamma^l before noising; D estimates y_l = b_l P_l and pixels are D / b_l. A smaller
b_l means a lower signal-to-noise ratio at every sigma for the finer levels, whose pixels are
more correlated. As in Chen 2023, the network input is normalised to unit variance for the
scaled data: c_in = 1 / sqrt(sigma^2 + (b_l sigma_d)^2); c_skip and c_out keep sigma_d.

Every level draws its own sigma and its own noise (eq. 6 of the paper); the log-normal distribution of sigma is
EDM's, the paper gives none. Context levels at inference (an extension; the paper does not say how finished
levels are shown): finished lower levels are shown to the network at sigma = `diffusion.context_sigma`
(noised with that sigma). Training covers this case: with probability `diffusion.context_prob`
a sample picks a split m in 1..L-1 and levels < m get sigma = context_sigma; those levels are
context only and are left out of the loss (they still receive gradients through fusion).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Optional

import torch

from ..config import DiffusionConfig
from ..device import constant, randn_on, to_device


def c_skip(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM skip scaling sigma_d^2 / (sigma^2 + sigma_d^2)."""
    return sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)


def c_out(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM output scaling sigma sigma_d / sqrt(sigma^2 + sigma_d^2)."""
    return sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()


def c_in(sigma: torch.Tensor, sigma_data: float, input_scale=1.0) -> torch.Tensor:
    """Input scaling 1 / sqrt(sigma^2 + (b sigma_d)^2): unit-variance network input for data scaled by b."""
    return 1.0 / (sigma ** 2 + (input_scale * sigma_data) ** 2).sqrt()


def c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """EDM noise conditioning ln(sigma) / 4 (sigma clamped to 1e-8 so that sigma = 0 stays finite)."""
    return sigma.clamp(min=1e-8).log() / 4


def input_scales(cfg: DiffusionConfig, levels: range | list, device=None) -> torch.Tensor:
    """Per-level input scaling b_l = b_0 gamma^l for the given levels, as a tensor [n]."""
    return constant(tuple(cfg.level_input_scale(l) for l in levels), device, torch.float32)


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape [B, n] to broadcast against [B, n, C, f, h, w]."""
    return t.reshape(*t.shape, *([1] * (like.ndim - t.ndim)))


def v_target(y: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """The regression target of F: (y - c_skip x~) / c_out, for y, x~ [B, n, ...] and sigma [B, n]."""
    s = _bcast(sigma, y)
    return (y - c_skip(s, sigma_data) * noisy) / c_out(s, sigma_data)


def denoise(net, noisy: torch.Tensor, sigma: torch.Tensor, offsets: torch.Tensor, cond=None, keep=None,
            *, sigma_data: float, input_scale: Optional[torch.Tensor] = None, **kwargs):
    """D(x~; sigma) for levels given by `noisy` [B, n, C, f, h, w] (scaled space); extra kwargs go to the net.

    `input_scale` [n] holds b_l of the levels in `noisy` (see `input_scales`; None = 1).
    Returns the network's `NetOutput` with D in place of F (its other parts as the network gave them).
    """
    s = _bcast(sigma, noisy)
    b = 1.0 if input_scale is None else _bcast(input_scale.to(noisy.device)[None].expand_as(sigma), noisy)
    res = net(c_in(s, sigma_data, b) * noisy, c_noise(sigma), offsets, cond, keep, **kwargs)
    D = c_skip(s, sigma_data) * noisy + c_out(s, sigma_data) * res.out.to(noisy.dtype)
    return res._replace(out=D)


@dataclass
class LossOutput:
    """Training loss and its per-level parts."""

    loss: torch.Tensor              # Scalar: batch mean of each sample's sum over its trained levels.
    per_level: torch.Tensor         # [L] mean loss of each level over the samples it was trained on.
    sigma: torch.Tensor             # [B, L] the sigmas drawn.
    weight: torch.Tensor            # [B, L] 1 where a level entered the loss, 0 for context levels.


def _staged(generator, device) -> bool:
    """Whether draws made on a CPU generator go to a GPU (then they are drawn into pinned host memory)."""
    return (generator is not None and generator.device.type == "cpu" and device is not None
            and torch.device(device).type == "cuda")


def _ramp_fraction(progress: float) -> float:
    """A run's progress clamped to [0, 1] and rounded to 1/1000: how far a linear ramp has moved."""
    return round(min(max(float(progress), 0.0), 1.0) * 1000) / 1000


def p_mean_at(cfg: DiffusionConfig, progress: float) -> float | list[float]:
    """The training log-sigma mean `progress` of the way through a run (0: first step, 1: last).

    `cfg.p_mean_start` moved linearly to `cfg.p_mean` (one value, or one per level when either is a list);
    `cfg.p_mean` itself when there is no start (`[]`). Progress is rounded to 1/1000, so a run draws from at
    most 1001 distinct means.
    """
    start, end = cfg.p_mean_start, cfg.p_mean
    if not cfg.ramped:
        return end
    u = _ramp_fraction(progress)
    if not isinstance(start, (list, tuple)) and not isinstance(end, (list, tuple)):
        return start + (end - start) * u
    n = len(start) if isinstance(start, (list, tuple)) else len(end)
    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else [v] * n
    return [a + (b - a) * u for a, b in zip(as_list(start), as_list(end))]


def context_prob_at(cfg: DiffusionConfig, progress: float) -> float:
    """The training share of samples with clean context `progress` of the way through a run (0: first step, 1: last).

    `cfg.context_prob_start` moved linearly to `cfg.context_prob`, progress rounded to 1/1000 as in `p_mean_at`;
    `cfg.context_prob` itself when there is no start (`[]`).
    """
    if not cfg.context_ramped:
        return cfg.context_prob
    return cfg.context_prob_start + (cfg.context_prob - cfg.context_prob_start) * _ramp_fraction(progress)


def diffusion_at_step(cfg: DiffusionConfig, step: int, steps: int) -> DiffusionConfig:
    """`cfg` as training step `step` of `steps` (0-based) draws its noise: its ramped values made constant."""
    progress = step / max(steps - 1, 1)
    if cfg.ramped:
        cfg = replace(cfg, p_mean=p_mean_at(cfg, progress), p_mean_start=[])
    if cfg.context_ramped:
        cfg = replace(cfg, context_prob=context_prob_at(cfg, progress), context_prob_start=[])
    return cfg


def sample_sigmas(cfg: DiffusionConfig, batch: int, levels: int, *, generator=None, device=None):
    """Per-level sigmas [B, L] from the log-normal, with context splits; returns (sigma, loss weight).

    `cfg.p_mean` and `cfg.p_std` are one value for every level, or one per level: a base level,
    which decides the global layout at high noise and its texture at low noise, can be trained over
    a wider range than the levels that add detail (docs/method.md, "The joint loss").
    """
    g_dev = generator.device if generator is not None else device
    per_level = lambda v: constant(tuple(v), g_dev) if isinstance(v, (list, tuple)) else v
    sigma = (torch.randn(batch, levels, generator=generator, device=g_dev) * per_level(cfg.p_std)
             + per_level(cfg.p_mean)).exp()
    weight = torch.ones(batch, levels, device=g_dev)
    if levels > 1 and cfg.context_prob > 0:
        use = torch.rand(batch, generator=generator, device=g_dev) < cfg.context_prob
        split = torch.randint(1, levels, (batch,), generator=generator, device=g_dev)
        ctx = use[:, None] & (torch.arange(levels, device=g_dev)[None] < split[:, None])
        sigma = torch.where(ctx, torch.full_like(sigma, cfg.context_sigma), sigma)
        weight = (~ctx).float()
    return to_device(sigma, device), to_device(weight, device)


@dataclass
class NoiseDraw:
    """The random choices of one training step: sigmas, loss weights, noise and condition dropout."""

    sigma: torch.Tensor             # [B, L]
    weight: torch.Tensor            # [B, L] 0 for context levels
    noise: torch.Tensor             # [B, L, C, f, h, w] standard normal
    keep: Optional[torch.Tensor]    # [B] False = condition dropped; None = no dropout
    self_cond: bool                 # whether this step runs a self-conditioning pass


def draw_noise(cfg: DiffusionConfig, shape: torch.Size, *, conditional: bool, self_condition: bool = False,
               generator: Optional[torch.Generator] = None, device=None, noise_on_device: bool = False) -> NoiseDraw:
    """Draw a step's randomness for patches of `shape` [B, L, C, f, h, w] from `generator`.

    With `noise_on_device` the noise (by far the largest draw) comes from a generator of `device`
    seeded from `generator`: no host work and no copy, the same values on every run on that kind
    of device, but other values on a CPU than on a GPU. Otherwise every value comes from
    `generator` itself, identical whichever device the step then runs on.
    """
    B, L = shape[:2]
    g_dev = generator.device if generator is not None else device
    staged = _staged(generator, device)
    sigma, weight = sample_sigmas(cfg, B, L, generator=generator, device=device)
    if noise_on_device and generator is not None:
        noise = randn_on(device if device is not None else g_dev, shape, generator)
    else:
        # The values of torch.randn(shape, generator=...), drawn straight into (pinned) host memory.
        noise = to_device(torch.empty(shape, device=g_dev, pin_memory=staged).normal_(generator=generator), device)
    keep = None
    if conditional and cfg.cond_dropout > 0:
        keep = to_device(torch.rand(B, generator=generator, device=g_dev) >= cfg.cond_dropout, device)
    use_sc = self_condition and bool(torch.rand((), generator=generator, device=g_dev) < cfg.self_cond_prob)
    return NoiseDraw(sigma, weight, noise, keep, use_sc)


def edm_loss(net, patches: torch.Tensor, offsets: torch.Tensor, cfg: DiffusionConfig, cond=None, *,
             generator: Optional[torch.Generator] = None, self_condition: bool = False,
             draw: Optional[NoiseDraw] = None, latent_shape: Optional[tuple[int, int]] = None,
             record_first_pass: bool = True) -> LossOutput:
    """Eq. 6: the joint denoising loss of a patch hierarchy [B, L, C, f, h, w] in [-1, 1].

    The step's randomness (sigma and noise per level, context split, condition dropout) comes
    from `draw` or is drawn from `generator`. The loss is the batch mean of the per-sample sum
    over trained levels, so that averaging it over data-parallel ranks equals the global batch.
    `latent_shape` (num_latents, latent_dim) of a self-conditioned network makes every step's
    denoiser call alike: a step without the self-conditioning pass passes zero latents gated off,
    the same loss as passing none, so that torch.compile builds one training graph instead of two
    and every parameter gets a gradient on every step. The first pass is then that same call (zero
    latents gated off) in the caller's gradient mode, its latents detached: the training graph serves
    it too, and no gradient-free graph is compiled. `record_first_pass=False` runs it gradient-free, as
    training does under DistributedDataParallel (whose reducer, given a forward whose backward never runs, is
    checked only on two CPU ranks: tests/test_distributed.py).
    """
    B, L = patches.shape[:2]
    dev = patches.device
    if draw is None:
        draw = draw_noise(cfg, patches.shape, conditional=cond is not None, self_condition=self_condition,
                          generator=generator, device=dev)
    b = _bcast(input_scales(cfg, range(L), dev)[None].expand(B, L), patches)
    y = patches * b
    sigma = draw.sigma
    noisy = y + _bcast(sigma, y) * draw.noise.to(y.dtype)
    x_in = c_in(_bcast(sigma, y), cfg.sigma_data, b) * noisy
    if latent_shape is None:
        prev = gate = None
        if draw.self_cond:
            with torch.no_grad():
                prev = net(x_in, c_noise(sigma), offsets, cond, draw.keep, return_latents=True).latents
    else:                                                # one graph: previous latents always, gated
        prev = torch.zeros(B, L, *latent_shape, device=dev)
        if draw.self_cond:
            with nullcontext() if record_first_pass else torch.no_grad():
                prev = net(x_in, c_noise(sigma), offsets, cond, draw.keep, self_cond=prev,
                           self_cond_gate=constant((0.0,), dev), return_latents=True).latents.detach().float()
        gate = constant((1.0 if draw.self_cond else 0.0,), dev)
    F = net(x_in, c_noise(sigma), offsets, cond, draw.keep, self_cond=prev, self_cond_gate=gate,
            return_latents=latent_shape is not None).out
    err = (F.float() - v_target(y, noisy, sigma, cfg.sigma_data).float()) ** 2
    per_sample = err.flatten(2).mean(-1) * draw.weight                    # [B, L]
    per_level = per_sample.detach().sum(0) / draw.weight.sum(0).clamp(min=1)
    return LossOutput(loss=per_sample.sum(1).mean(), per_level=per_level, sigma=sigma, weight=draw.weight)
