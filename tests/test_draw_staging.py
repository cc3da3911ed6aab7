"""A training step's random draw: the same values whichever way they reach the device (pinned staging or not)."""

import pytest
import torch

from hpdm_cli.config import DiffusionConfig
from hpdm_cli.device import to_device
from hpdm_cli.diffusion.edm import _staged, draw_noise


def _reference_draw(cfg, shape, seed):
    """The draw as plain generator calls in the documented order: sigmas, context split, noise, dropout."""
    B, L = shape[:2]
    g = torch.Generator().manual_seed(seed)
    sigma = (torch.randn(B, L, generator=g) * cfg.p_std + cfg.p_mean).exp()
    use = torch.rand(B, generator=g) < cfg.context_prob
    split = torch.randint(1, L, (B,), generator=g)
    ctx = use[:, None] & (torch.arange(L)[None] < split[:, None])
    sigma = torch.where(ctx, torch.full_like(sigma, cfg.context_sigma), sigma)
    noise = torch.randn(shape, generator=g)
    keep = torch.rand(B, generator=g) >= cfg.cond_dropout
    return sigma, (~ctx).float(), noise, keep


def test_draw_noise_gives_the_reference_values():
    cfg = DiffusionConfig(context_prob=0.5, cond_dropout=0.3)
    shape = (6, 3, 3, 2, 4, 4)
    d = draw_noise(cfg, shape, conditional=True, generator=torch.Generator().manual_seed(7), device="cpu")
    sigma, weight, noise, keep = _reference_draw(cfg, shape, 7)
    assert torch.equal(d.sigma, sigma) and torch.equal(d.weight, weight)
    assert torch.equal(d.noise, noise) and torch.equal(d.keep, keep)
    assert (d.weight == 0).any() and (~d.keep).any()                     # both branches were drawn


def test_only_cpu_draws_sent_to_a_gpu_are_staged():
    g = torch.Generator()
    assert _staged(g, "cuda") and _staged(g, torch.device("cuda", 0))
    assert not _staged(g, "cpu") and not _staged(g, None) and not _staged(None, "cuda")
    t = torch.arange(4.0)
    assert to_device(t, "cpu") is t


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: pinned staging")
def test_a_staged_draw_on_the_gpu_equals_the_cpu_draw():
    cfg = DiffusionConfig(context_prob=0.5, cond_dropout=0.3)
    shape = (6, 3, 3, 2, 4, 4)
    cpu = draw_noise(cfg, shape, conditional=True, generator=torch.Generator().manual_seed(7), device="cpu")
    gpu = draw_noise(cfg, shape, conditional=True, generator=torch.Generator().manual_seed(7), device="cuda")
    for a, b in ((cpu.sigma, gpu.sigma), (cpu.weight, gpu.weight), (cpu.noise, gpu.noise), (cpu.keep, gpu.keep)):
        assert b.device.type == "cuda" and torch.equal(a, b.cpu())


def test_noise_on_device_keeps_the_small_draws_and_is_reproducible():
    """train.noise_on = "device": sigmas and splits as on the host; noise from a seeded device generator."""
    cfg = DiffusionConfig(context_prob=0.5, cond_dropout=0.3)
    shape = (64, 3, 3, 2, 4, 4)

    def draw(seed):
        return draw_noise(cfg, shape, conditional=True, generator=torch.Generator().manual_seed(seed), device="cpu",
                          noise_on_device=True)
    a, b, other = draw(7), draw(7), draw(8)
    sigma, weight, host_noise, _ = _reference_draw(cfg, shape, 7)
    assert torch.equal(a.sigma, sigma) and torch.equal(a.weight, weight)          # drawn before the noise
    assert torch.equal(a.noise, b.noise) and torch.equal(a.keep, b.keep)          # same step, same values
    assert not torch.equal(a.noise, other.noise) and not torch.equal(a.noise, host_noise)
    assert abs(a.noise.mean()) < 0.05 and abs(a.noise.std() - 1) < 0.05          # standard normal
    assert a.keep.dtype == torch.bool and a.noise.shape == shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_noise_on_device_is_drawn_on_the_gpu_and_reproducible():
    cfg = DiffusionConfig(context_prob=0.5, cond_dropout=0.3)
    shape = (6, 3, 3, 2, 4, 4)
    a, b = (draw_noise(cfg, shape, conditional=True, generator=torch.Generator().manual_seed(7), device="cuda",
                       noise_on_device=True) for _ in range(2))
    assert a.noise.device.type == "cuda" and torch.equal(a.noise, b.noise)
