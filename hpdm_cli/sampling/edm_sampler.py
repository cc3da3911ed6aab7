"""The EDM sampler (Karras et al. 2022, Algorithm 2): time steps, churn and Heun's correction.

The step loop works on any tensor and takes any denoiser `denoise(x, sigma) -> D(x; sigma)` and a
noise source `noise() -> standard normal tensor shaped like x`, so it runs equally on the
MultiDiffusion canvas of a pyramid level and on an analytic denoiser in tests (tests/test_sampling.py
checks the distribution it draws for Gaussian data: docs/method.md, invariant "the sampler draws the right Gaussian").

Time steps: t_i = (sigma_max^(1/rho) + i / (N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for
i < N, and t_N = 0. Step i: with gamma_i = min(S_churn / N, sqrt(2) - 1) when S_tmin <= t_i <= S_tmax
(else 0), raise the noise to t^ = t_i (1 + gamma_i) with fresh noise of std S_noise sqrt(t^2 - t_i^2),
take an Euler step to t_{i+1} and correct it with the trapezoidal (Heun) rule, unless t_{i+1} = 0 or the step
lowers the noise more than `max_drop`-fold (`sample.heun_max_drop`, default 5). The rule averages the slope
(x - D(x; t)) / t at both ends; at an end t_{i+1} far below t^ it divides the denoiser's error on the Euler
estimate by that small t and multiplies it by the step's length t^ - t_{i+1}: with the packaged model, 2-3 steps
from sigma 80 gave pure noise and 4-12 steps visible grain, which the Euler step alone does not (docs/method.md,
section 9). Schedules of 16 steps and more never drop that far (from sigma 80 to 0.002 with rho 7: 16 steps drop
at most 4.4-fold, 12 steps 7.1-fold, 8 steps 17.6-fold). `max_drop` 0 (or inf) is Algorithm 2 as published.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..config import SampleConfig

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


def edm_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM time steps [steps + 1] (float64), from sigma_max down to sigma_min, then 0."""
    if steps < 1:
        raise ValueError(f"steps = {steps}: need at least one sampler step")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    i = torch.arange(steps, dtype=torch.float64)
    frac = i / (steps - 1) if steps > 1 else i
    t = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, t.new_zeros(1)])


# Heun's correction is skipped on a step that lowers the noise more than this many times (see above).
HEUN_MAX_DROP = SampleConfig.heun_max_drop


def churn_gamma(churn: float, steps: int) -> float:
    """The churn increment gamma = min(S_churn / N, sqrt(2) - 1) (0 when S_churn = 0)."""
    return min(churn / steps, math.sqrt(2.0) - 1.0) if churn > 0 else 0.0


def sampler_steps(sigmas: torch.Tensor, churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                  heun: bool = True, max_drop: float = HEUN_MAX_DROP) -> list[tuple[float, float, float, bool]]:
    """Each step of `edm_sample` as (t_i, t^, t_{i+1}, whether Heun corrects it); `max_drop` 0 sets no limit."""
    limit = max_drop or math.inf
    ts = [float(t) for t in sigmas]
    gamma = churn_gamma(churn, len(ts) - 1)
    steps = []
    for t_cur, t_next in zip(ts[:-1], ts[1:]):
        t_hat = t_cur * (1.0 + (gamma if s_tmin <= t_cur <= s_tmax else 0.0))
        steps.append((t_cur, t_hat, t_next, heun and t_next > 0 and t_hat <= limit * t_next))
    return steps


def network_evaluations(sigmas: torch.Tensor, churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                        heun: bool = True, max_drop: float = HEUN_MAX_DROP) -> int:
    """Denoiser calls of `edm_sample` over `sigmas`: one per step, and one more per Heun correction."""
    return sum(1 + corrects for *_, corrects in sampler_steps(sigmas, churn, s_tmin, s_tmax, heun, max_drop))


@torch.no_grad()
def edm_sample(denoise: Denoiser, noise: Callable[[], torch.Tensor], sigmas: torch.Tensor, *,
               churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
               heun: bool = True, max_drop: float = HEUN_MAX_DROP, x: Optional[torch.Tensor] = None,
               callback: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Run Algorithm 2 over `sigmas` (from `edm_sigmas`); returns x_N, the sample at sigma 0.

    The start is x_0 = sigmas[0] * noise() unless `x` is given. `noise` is also called once per
    stochastic step (churn > 0 and t_i in [s_tmin, s_tmax]); `callback(step, total)` runs after
    each step (step counts from 1).
    """
    steps = sampler_steps(sigmas, churn, s_tmin, s_tmax, heun, max_drop)
    if x is None:
        x = float(sigmas[0]) * noise()
    for i, (t_cur, t_hat, t_next, corrects) in enumerate(steps):
        if t_hat > t_cur:
            x = x + math.sqrt(t_hat ** 2 - t_cur ** 2) * s_noise * noise()
        d = (x - denoise(x, t_hat)) / t_hat
        x_next = x + (t_next - t_hat) * d
        if corrects:
            d2 = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x + (t_next - t_hat) * (0.5 * d + 0.5 * d2)
        x = x_next
        if callback is not None:
            callback(i + 1, len(steps))
    return x
