"""The EDM objective: preconditioning formulas, the v-target, loss weighting, sigma draws, context levels."""

import math

import pytest
import torch
from conftest import tiny_recipe, tiny_toml

from hpdm_cli.config import DiffusionConfig
from hpdm_cli.diffusion import (c_in, c_noise, c_out, c_skip, denoise, draw_noise, edm_loss, input_scales,
                                sample_sigmas, v_target)
from hpdm_cli.model import HPDMNet, NetOutput
from hpdm_cli.pyramid import sample_nested_offsets


def test_preconditioning_gives_unit_variance_input_and_target():
    """EDM's design goals (Karras et al. 2022, app. B.6), for data of std sigma_d noised with sigma:
    the network input c_in x~ and the training target (y - c_skip x~) / c_out have unit variance,
    c_skip is the one that makes the target's variance smallest, and D -> x~ as sigma -> 0."""
    s, sd = torch.tensor([0.002, 0.3, 1.0, 80.0], dtype=torch.float64), 0.5
    for b in (1.0, 0.3):                                                   # per-level input scale: data std b sd
        assert torch.allclose(c_in(s, sd, b) ** 2 * ((b * sd) ** 2 + s ** 2), torch.ones_like(s))

    def target_var(skip):                                                  # Var(y - skip (y + s eps)), y ~ sd
        return (1 - skip) ** 2 * sd ** 2 + skip ** 2 * s ** 2
    k = c_skip(s, sd)
    assert torch.allclose(target_var(k) / c_out(s, sd) ** 2, torch.ones_like(s))
    assert torch.all(target_var(k) < target_var(k * 1.01)) and torch.all(target_var(k) < target_var(k * 0.99))
    tiny = torch.tensor([1e-9], dtype=torch.float64)
    assert c_skip(tiny, sd).item() == pytest.approx(1.0) and c_out(tiny, sd).item() < 1e-8
    # The noise conditioning is monotone in sigma and finite at sigma = 0 (the sampler's last step).
    assert torch.all(c_noise(s)[1:] > c_noise(s)[:-1]) and torch.isfinite(c_noise(torch.zeros(1))).all()


def test_v_target_is_minus_v_prediction_for_unit_data_std():
    """With sigma_d = 1, (y - c_skip x~) / c_out = -(alpha eps - sigma_vp y) of the VP view."""
    y, eps = torch.randn(3, 2, 4, dtype=torch.float64), torch.randn(3, 2, 4, dtype=torch.float64)
    sigma = torch.tensor([[0.1, 2.0], [1.0, 0.5], [10.0, 0.01]], dtype=torch.float64)
    noisy = y + sigma[..., None] * eps
    alpha, sigma_vp = 1 / torch.sqrt(1 + sigma ** 2), sigma / torch.sqrt(1 + sigma ** 2)
    v = alpha[..., None] * eps - sigma_vp[..., None] * y
    assert torch.allclose(v_target(y, noisy, sigma, 1.0), -v)
    # General sigma_d: (sigma y / sigma_d - sigma_d eps) / sqrt(sigma^2 + sigma_d^2).
    sd = 0.5
    want = (sigma[..., None] * y / sd - sd * eps) / torch.sqrt(sigma ** 2 + sd ** 2)[..., None]
    assert torch.allclose(v_target(y, noisy, sigma, sd), want)


class ConstNet(torch.nn.Module):
    """A stand-in network returning a fixed output and recording its inputs."""

    def __init__(self, out):
        super().__init__()
        self.out = out
        self.seen = []

    def forward(self, x, c_noise, offsets, cond=None, keep=None, **kw):
        self.seen.append((x, c_noise))
        return NetOutput(self.out)


def test_loss_is_weighted_denoising_error():
    """loss = mean over samples of sum over levels of lambda(sigma) ||D - b_l P||^2 / n, lambda = 1/c_out^2."""
    cfg = DiffusionConfig(context_prob=0.0, cond_dropout=0.0, input_scale=0.9, input_scale_decay=0.5)
    B, L = 4, 3
    P = torch.rand(B, L, 3, 2, 4, 4) * 2 - 1
    F = torch.randn(B, L, 3, 2, 4, 4)
    draw = draw_noise(cfg, P.shape, conditional=False, generator=torch.Generator().manual_seed(0))
    net = ConstNet(F)
    out = edm_loss(net, P, None, cfg, draw=draw)
    b = torch.tensor([0.9, 0.45, 0.225])
    y = P * b[None, :, None, None, None, None]
    noisy = y + draw.sigma[..., None, None, None, None] * draw.noise
    # The network sees c_in (b_l P + sigma eps) with unit variance for data of std b_l sigma_d, and ln(sigma)/4.
    x_seen, cn_seen = net.seen[0]
    s6 = draw.sigma[..., None, None, None, None]
    b6 = b[None, :, None, None, None, None]
    assert torch.allclose(x_seen, noisy / torch.sqrt(s6 ** 2 + (b6 * cfg.sigma_data) ** 2), atol=1e-6)
    assert torch.allclose(cn_seen, draw.sigma.log() / 4)
    D = denoise(ConstNet(F), noisy, draw.sigma, None, sigma_data=cfg.sigma_data).out
    lam = 1 / c_out(draw.sigma, cfg.sigma_data) ** 2
    want = (lam * (D - y).pow(2).flatten(2).mean(-1)).sum(1).mean()
    assert torch.allclose(out.loss, want, rtol=1e-4)
    assert torch.allclose(input_scales(cfg, range(L)), b)


def test_sigma_draws_and_context_levels():
    cfg = DiffusionConfig(context_prob=0.3, context_sigma=0.002)
    g = torch.Generator().manual_seed(0)
    sigma, weight = sample_sigmas(cfg, 20000, 3, generator=g)
    ctx = weight == 0
    # Context levels are a prefix of the hierarchy and never the last level; they sit at context_sigma.
    assert torch.all(ctx[:, 1] <= ctx[:, 0]) and not ctx[:, 2].any()
    assert torch.all(sigma[ctx] == 0.002)
    assert abs(ctx[:, 0].float().mean().item() - 0.3) < 0.02
    assert abs(ctx[:, 1].float().mean().item() - 0.15) < 0.02             # split m uniform in {1, 2}
    free = torch.log(sigma[~ctx])
    assert abs(free.mean().item() - cfg.p_mean) < 0.03 and abs(free.std().item() - cfg.p_std) < 0.03


def test_sigma_draws_take_one_mean_per_level():
    cfg = DiffusionConfig(p_mean=[0.8, -1.2, -2.0], context_prob=0.0)
    sigma, _ = sample_sigmas(cfg, 20000, 3, generator=torch.Generator().manual_seed(0))
    logs = torch.log(sigma)
    for level, mean in enumerate(cfg.p_mean):
        assert abs(logs[:, level].mean().item() - mean) < 0.03 and abs(logs[:, level].std().item() - cfg.p_std) < 0.03


def test_sigma_draws_take_one_std_per_level():
    cfg = DiffusionConfig(p_mean=[0.0, -1.2], p_std=[1.4, 0.5], context_prob=0.0)
    logs = torch.log(sample_sigmas(cfg, 20000, 2, generator=torch.Generator().manual_seed(0))[0])
    for level in range(2):
        assert abs(logs[:, level].mean().item() - cfg.p_mean[level]) < 0.03
        assert abs(logs[:, level].std().item() - cfg.p_std[level]) < 0.03


def test_the_log_sigma_mean_moves_from_its_start_to_p_mean():
    from hpdm_cli.diffusion.edm import p_mean_at
    ramp = DiffusionConfig(p_mean=-0.5, p_mean_start=1.5)
    assert [p_mean_at(ramp, u) for u in (0.0, 0.25, 1.0, 2.0)] == pytest.approx([1.5, 1.0, -0.5, -0.5])
    per_level = DiffusionConfig(p_mean=[-0.5, -1.2, -1.2], p_mean_start=[1.0, -1.2, -1.2])
    assert p_mean_at(per_level, 0.5) == pytest.approx([0.25, -1.2, -1.2])
    assert p_mean_at(DiffusionConfig(p_mean=[-0.5, -1.2], p_mean_start=0.5), 0.5) == pytest.approx([0.0, -0.35])
    assert p_mean_at(DiffusionConfig(p_mean=[-0.5, -1.2]), 0.3) == [-0.5, -1.2]      # no start: p_mean throughout


def test_training_draws_follow_the_ramped_log_sigma_mean():
    """The loop's own draws (`step_draws`): log-sigma centred at p_mean_start on the first step, at p_mean on the last."""
    from hpdm_cli.train.loop import step_draws
    rec = tiny_toml("train.steps=101", "diffusion.context_prob=0.0", "diffusion.p_std=0.1",
                      "diffusion.p_mean=[-2.0,-1.0,-1.0]", "diffusion.p_mean_start=[2.0,-1.0,-1.0]")

    def centre(step):
        return torch.log(step_draws(rec, 0, step, 4000, False, torch.device("cpu"))[0][1].sigma).mean(0)
    for step, level0 in ((0, 2.0), (50, 0.0), (100, -2.0)):
        assert centre(step).tolist() == pytest.approx([level0, -1.0, -1.0], abs=0.01), step
    fixed = tiny_toml("train.steps=101", "diffusion.context_prob=0.0", "diffusion.p_std=0.1", "diffusion.p_mean=-1.0")
    assert torch.log(step_draws(fixed, 0, 0, 4000, False, torch.device("cpu"))[0][1].sigma).mean().item() == \
        pytest.approx(-1.0, abs=0.01)


def test_training_draws_follow_the_ramped_context_share():
    """The loop's own draws: no sample with clean context at the first step when the ramp starts at 0, the share
    `diffusion.context_prob` at the last, half way between at the middle (level 0 is context in exactly those samples)."""
    from hpdm_cli.diffusion.edm import context_prob_at
    from hpdm_cli.train.loop import step_draws
    assert context_prob_at(DiffusionConfig(context_prob=0.8, context_prob_start=0.2), 0.5) == pytest.approx(0.5)
    assert context_prob_at(DiffusionConfig(context_prob=0.8), 0.0) == 0.8            # no start: context_prob throughout
    rec = tiny_toml("train.steps=101", "diffusion.context_prob=0.8", "diffusion.context_prob_start=0.0")

    def share(step):
        return (step_draws(rec, 0, step, 8000, False, torch.device("cpu"))[0][1].weight[:, 0] == 0).float().mean().item()
    for step, expected in ((0, 0.0), (50, 0.4), (100, 0.8)):
        assert share(step) == pytest.approx(expected, abs=0.02), step


def test_condition_dropout_rate():
    cfg = DiffusionConfig(cond_dropout=0.1)
    d = draw_noise(cfg, (50000, 1, 1, 1, 1, 1), conditional=True, generator=torch.Generator().manual_seed(1))
    assert abs((~d.keep).float().mean().item() - 0.1) < 0.01


def test_context_levels_are_excluded_from_the_loss():
    """Levels drawn as context (weight 0) add nothing to the loss or its per-level means (docs/method.md, section 5):
    the loss equals the weighted denoising error summed over the trained levels alone."""
    cfg = DiffusionConfig(context_prob=1.0, cond_dropout=0.0)
    P = torch.rand(64, 3, 3, 1, 2, 2)
    F = torch.randn_like(P)
    draw = draw_noise(cfg, P.shape, conditional=False, generator=torch.Generator().manual_seed(2))
    out = edm_loss(ConstNet(F), P, None, cfg, draw=draw)
    assert torch.all(out.weight[:, 2] == 1) and torch.all(out.weight[:, 0] == 0)
    trained = out.weight.bool()
    assert 0 < trained[:, 1].sum() < len(P)                 # level 1 is context in some samples, trained in others
    b = input_scales(cfg, range(3))[None, :, None, None, None, None]
    y = P * b
    noisy = y + draw.sigma[..., None, None, None, None] * draw.noise
    D = denoise(ConstNet(F), noisy, draw.sigma, None, sigma_data=cfg.sigma_data).out
    err = (1 / c_out(draw.sigma, cfg.sigma_data) ** 2) * (D - y).pow(2).flatten(2).mean(-1)       # [B, L]
    assert torch.allclose(out.loss, (err * trained).sum(1).mean(), rtol=1e-4)
    assert not torch.allclose(out.loss, err.sum(1).mean(), rtol=1e-2)   # the context levels' error is not small
    for level in range(3):
        rows = trained[:, level]
        want = err[rows, level].mean() if rows.any() else torch.tensor(0.0)
        assert torch.allclose(out.per_level[level], want, rtol=1e-4), level


@pytest.mark.usefixtures("one_thread")
def test_tiny_model_overfits_one_video():
    """Learning, not just running: the loss on fixed noise falls by a large factor within a few hundred steps."""
    torch.manual_seed(0)
    recipe = tiny_recipe(resolution=(4, 16, 16), patch=(2, 4, 4), tokenizer=(1, 2, 2), interface_dim=48,
                         latent_dim=48, num_latents=8, num_blocks=3, compute_layers=1, cond="none", load="none")
    cfg = recipe.diffusion
    net = HPDMNet(recipe.pyramid, recipe.model)
    t = torch.linspace(0, 1, 16)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    video = torch.stack([torch.stack([torch.sin(6 * xx + f), torch.cos(5 * yy - f), torch.sin(4 * (xx + yy))])
                         for f in range(4)], 1)[None]
    from hpdm_cli.pyramid import extract_patches
    B = 16
    eval_gen = torch.Generator().manual_seed(123)
    eval_off = sample_nested_offsets(recipe.pyramid, 64, generator=eval_gen)
    eval_P = extract_patches(video.expand(64, -1, -1, -1, -1), recipe.pyramid, eval_off)
    eval_draw = draw_noise(cfg, eval_P.shape, conditional=False, generator=eval_gen)
    eval_draw.sigma = torch.full_like(eval_draw.sigma, 0.5)              # a mid noise level, all levels

    def eval_loss():
        with torch.no_grad():
            return edm_loss(net, eval_P, eval_off, cfg, draw=eval_draw).loss.item()

    before = eval_loss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        off = sample_nested_offsets(recipe.pyramid, B, generator=g)
        P = extract_patches(video.expand(B, -1, -1, -1, -1), recipe.pyramid, off)
        loss = edm_loss(net, P, off, cfg, generator=g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    # One thread: the same trajectory on every machine (Adam at lr 1e-2 amplifies the order of float
    # reductions: 2.54 -> 0.50 on one thread, -> 0.31 on two).
    assert math.isfinite(after) and after < before / 4, (before, after)


@pytest.mark.parametrize("self_cond", [False, True])
def test_gated_self_conditioning_gives_the_loss_and_gradients_of_the_plain_step(self_cond):
    """Gated self-conditioning latents give the plain step's loss and gradients.

    With `latent_shape` a step passes previous latents always (zeros gated off without the pass), so a compiled
    network has one training graph; the self-conditioning weights get a zero gradient where the plain step gives
    them none."""
    recipe = tiny_recipe(cond="text", text_dim=12, text_tokens=3, self_condition=True)
    m = recipe.model
    torch.manual_seed(0)
    net = HPDMNet(recipe.pyramid, m)
    with torch.no_grad():       # zero-initialised tensors (the self-conditioning projection among them) made random:
        for p in net.parameters():  # a gate that let zero latents through would then change the loss
            if torch.all(p == 0):
                p.normal_(0, 0.2)
    B, L = 2, recipe.pyramid.num_levels
    P = torch.rand(B, L, m.channels, *recipe.pyramid.patch) * 2 - 1
    off = sample_nested_offsets(recipe.pyramid, B, generator=torch.Generator().manual_seed(1))
    cond = torch.randn(B, m.text_tokens, m.text_dim)
    draw = draw_noise(recipe.diffusion, P.shape, conditional=True, generator=torch.Generator().manual_seed(2))
    draw.self_cond = self_cond

    def run(**kw):
        net.zero_grad(set_to_none=True)
        loss = edm_loss(net, P, off, recipe.diffusion, cond, draw=draw, **kw).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in net.named_parameters()}

    plain, plain_grads = run()
    gated, gated_grads = run(latent_shape=(m.num_latents, m.latent_dim))
    assert torch.equal(gated, plain)
    for n, g in gated_grads.items():
        if plain_grads[n] is None:
            assert n.startswith("self_cond_") and not self_cond and torch.all(g == 0), n
        else:
            assert torch.allclose(g, plain_grads[n], rtol=1e-5, atol=1e-7), n
    assert all(g is not None for g in gated_grads.values())
    if self_cond:
        assert gated_grads["self_cond_proj.weight"].abs().sum() > 0
