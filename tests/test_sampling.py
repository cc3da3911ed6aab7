"""Inference: tiling, the EDM sampler and hierarchical sampling.

docs/method.md, the invariants from "the overlapped merge is exact" to "the sampler draws the right Gaussian".
"""

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_recipe
from test_model import randomize

from hpdm_cli.diffusion import c_in, c_out, c_skip
from hpdm_cli.model import HPDMNet, NetOutput
from hpdm_cli.pyramid import patch_points, token_centres
from hpdm_cli.sampling import (HierarchicalSampler, axis_starts, build_tiles, cache_bytes, chain_offsets, churn_gamma,
                               edm_sample, edm_sigmas, grid_axes, level_steps, network_evaluations, parse_overlap,
                               sampler_steps, shift_phases, tile_counts)

OVERLAPS = ["fhw", "fh", "fw", "hw", "f", "h", "w", "none", "shift-hw", "f+shift-hw", "shift-fhw"]


pytestmark = pytest.mark.usefixtures("one_thread")


def field(pos: torch.Tensor) -> torch.Tensor:
    """A smooth 2-channel field of (t, y, x) positions [..., 3] -> [..., 2], values inside (-1, 1)."""
    t, y, x = pos.unbind(-1)
    return torch.stack([0.5 * torch.sin(3 * x + 2 * y) + 0.3 * t, 0.4 * torch.cos(5 * y - x + t) - 0.2 * x], -1)


def sample(net, recipe, seeds, cond=None, *, overlap=None, tile_batch=64, cache=True, dtype=torch.float32, **kw):
    """Sample through the product's sampler: `HierarchicalSampler(...).sample(...)`."""
    sampler = HierarchicalSampler(net, recipe.diffusion, recipe.sample, overlap=overlap, tile_batch=tile_batch,
                                  cache=cache, dtype=dtype)
    return sampler.sample(seeds, cond, **kw)


def video_recipe(**model):
    """A 3-level pyramid with a frame axis that can overlap: 2x8x8 -> 4x16x16 -> 8x32x32 (patch 2x8x8)."""
    return tiny_recipe(resolution=(8, 32, 32), patch=(2, 8, 8), **model)


# ---------------------------------------------------------------------------------------------
# Tiles (docs/method.md, invariant "the overlapped merge is exact")

@pytest.mark.parametrize("overlap", OVERLAPS)
def test_gather_crops_each_rows_tile_of_its_own_sample(overlap):
    """Row i of a gather is tile tiles[i] of sample samples[i]: the canvas sliced at that tile's start."""
    for lt in build_tiles(video_recipe().pyramid, overlap):
        canvas = torch.randn(3, 2, *lt.resolution)
        samples = torch.tensor([2, 0, 1, 2, 1])
        tiles = torch.tensor([0, lt.num_tiles - 1, lt.num_tiles // 2, (lt.num_tiles - 1) // 3, 0])
        got = lt.gather(canvas, samples, tiles)
        for i, (b, t) in enumerate(zip(samples.tolist(), tiles.tolist())):
            (f, h, w), (rf, rh, rw) = lt.starts[t].tolist(), lt.patch
            assert torch.equal(got[i], canvas[b, :, f:f + rf, h:h + rh, w:w + rw]), (overlap, lt.level, i)


@pytest.mark.parametrize("overlap", OVERLAPS)
def test_tiles_count_merge_and_ancestors(overlap):
    """Merging tiles holding a field reproduces the field; counts are 2R/r-1 (overlapped or shifted) or R/r;
    ancestors contain."""
    pyr = video_recipe().pyramid
    tiles = build_tiles(pyr, overlap)
    ov = grid_axes(overlap)
    assert len(tiles) == pyr.num_levels == 3
    for l, lt in enumerate(tiles):
        R = pyr.level_resolution(l)
        want = tuple((2 * n // r - 1) if a in ov else n // r for a, n, r in zip("fhw", R, pyr.patch))
        assert lt.counts == want == tile_counts(pyr, l, overlap)
        assert lt.num_tiles == math.prod(want)
        scale = torch.tensor(lt.scale, dtype=torch.float64)
        # Tiles hold the field at their own pixel centres (global positions from the normalised offsets).
        pos = patch_points(scale, lt.offsets, pyr.patch)                            # [T, r3, 3]
        vals = field(pos).permute(0, 2, 1).reshape(1, lt.num_tiles, 2, *pyr.patch)
        merged = lt.merge(vals)[0]
        canvas = field(token_centres(R).double()).T.reshape(2, *R)
        assert (merged - canvas).abs().max() < 1e-12, overlap
        assert lt.coverage.min() >= 1
        assert torch.equal(lt.crop(canvas[None])[0], vals[0])                     # crop is the inverse
        # Every tile lies inside its parent and all its ancestors (normalised box arithmetic).
        if l == 0:
            assert lt.num_tiles == 1 and torch.all(lt.offsets == 0)
            continue
        assert torch.equal(lt.parent, lt.ancestors[:, -1])
        for k in range(l):
            anc = tiles[k].offsets[lt.ancestors[:, k]]
            s_k = torch.tensor(tiles[k].scale, dtype=torch.float64)
            assert torch.all(anc <= lt.offsets + 1e-12)
            assert torch.all(lt.offsets + scale <= anc + s_k + 1e-12)
        co = chain_offsets(tiles, l)
        assert co.shape == (lt.num_tiles, l + 1, 3)
        assert torch.allclose(co[:, l].double(), lt.offsets)


def test_tiling_errors_and_single_frame_videos():
    assert axis_starts(32, 8, True) == [0, 4, 8, 12, 16, 20, 24]
    assert axis_starts(32, 8, False) == [0, 8, 16, 24]
    assert axis_starts(3, 3, True) == [0]                                          # one tile: no overlap needed
    with pytest.raises(ValueError):
        axis_starts(6, 3, True)                                                   # odd patch along an overlapped axis
    with pytest.raises(ValueError):
        parse_overlap("fx")
    assert parse_overlap("wf") == "fw" and parse_overlap("none") == ""
    assert parse_overlap("SHIFT-WH") == "shift-hw" and parse_overlap("f+shift-wh") == "f+shift-hw"
    assert grid_axes("shift-hw") == "hw" and grid_axes("f+shift-w") == "fw"                # not "f" of "shift"
    for bad in ("h+shift-hw", "shift-", "fshift-hw", "shift-hx", "f+"):
        with pytest.raises(ValueError):
            parse_overlap(bad)
    pyr = tiny_recipe(resolution=(1, 32, 32), patch=(1, 8, 8)).pyramid              # images: f never tiles
    assert [t.counts for t in build_tiles(pyr, "fhw")] == [(1, 1, 1), (1, 3, 3), (1, 7, 7)]


@pytest.mark.parametrize("overlap", ["shift-hw", "f+shift-hw", "shift-fhw", "shift-w"])
def test_shifted_tiles_cover_every_pixel_in_every_phase(overlap):
    """Shifted tiles: each call's subset covers every pixel and merges a field exactly; phase 0 is the plain
    tiling; the next phase moves every inner border by half a tile; all the phases together use every tile.

    docs/method.md, "Shifted tiles".
    """
    pyr = video_recipe().pyramid
    tiles = build_tiles(pyr, overlap)
    over, shift = overlap.split("shift-")
    plain = build_tiles(pyr, over.rstrip("+") or "none")
    for l, lt in enumerate(tiles):
        phases = shift_phases(lt, overlap)
        shifting = [a for a, n in zip("fhw", lt.counts) if a in shift and n > 1]
        assert len(phases) == 2 ** len(shift)
        used = torch.zeros(lt.num_tiles, dtype=torch.bool)
        scale = torch.tensor(lt.scale, dtype=torch.float64)
        canvas = field(token_centres(lt.resolution).double()).T.reshape(2, *lt.resolution)
        for tiles_k, cover in phases:
            used[tiles_k] = True
            acc = torch.zeros(1, 1, lt.num_pixels, dtype=torch.float64)
            lt.scatter_add(acc, torch.zeros_like(tiles_k), tiles_k, torch.ones(len(tiles_k), 1, *lt.patch))
            assert torch.equal(acc[0, 0].long(), cover) and cover.min() >= 1
            pos = patch_points(scale, lt.offsets[tiles_k], pyr.patch)
            vals = field(pos).permute(0, 2, 1).reshape(len(tiles_k), 2, *pyr.patch)
            acc = torch.zeros(1, 2, lt.num_pixels, dtype=torch.float64)
            lt.scatter_add(acc, torch.zeros_like(tiles_k), tiles_k, vals)
            assert (lt.finish(acc, cover)[0] - canvas).abs().max() < 1e-12
        assert used.all()
        assert torch.equal(lt.starts[phases[0][0]], plain[l].starts)              # phase 0: the plain tiling
        for i, a in enumerate("fhw"):
            if a not in shifting:
                continue
            R, r = lt.resolution[i], lt.patch[i]
            inner0 = {int(s) for s in lt.starts[phases[0][0], i]} - {0}
            inner1 = {int(s) for s in lt.starts[phases[1][0], i]} - {0, R - r}
            assert inner1 and not inner0 & inner1 and all(s % r == r // 2 for s in inner1), (l, a)


class FieldNet(torch.nn.Module):
    """A stand-in network whose denoiser output D is b_l * field(global pixel positions of the patch)."""

    def __init__(self, recipe):
        super().__init__()
        self.recipe, self.pyramid, self.cfg = recipe, recipe.pyramid, recipe.model   # what the sampler reads
        self.scales = torch.tensor([recipe.pyramid.level_scale(l) for l in range(recipe.pyramid.num_levels)])

    def forward(self, x, c_noise, offsets, cond=None, keep=None, *, lo=0, context=None, collect=False):
        d, patch = self.recipe.diffusion, self.recipe.pyramid.patch
        sigma = (4 * c_noise).exp()[..., None, None, None, None]
        b = torch.tensor([d.level_input_scale(lo + i) for i in range(x.shape[1])])[None, :, None, None, None, None]
        noisy = x / c_in(sigma, d.sigma_data, b)
        outs = []
        for i in range(x.shape[1]):
            l = lo + i
            pos = patch_points(self.scales[l], offsets[:, l], patch)
            D = d.level_input_scale(l) * field(pos).permute(0, 2, 1).reshape(x.shape[0], 2, *patch)
            outs.append(D)
        D = torch.stack(outs, 1)
        return NetOutput((D - c_skip(sigma, d.sigma_data) * noisy) / c_out(sigma, d.sigma_data))


@pytest.mark.parametrize("overlap", OVERLAPS)
def test_sampler_merge_has_no_seams(overlap):
    """Through the hierarchical sampler (the last step is Euler to 0: x = D), every level is the field, seam-free
    (3 steps: 5 calls, so shifted tiles go through all their phases)."""
    recipe = video_recipe(fusion="none", channels=2)
    res = sample(FieldNet(recipe), recipe, [0, 1], overlap=overlap, steps=[3, 3, 3], tile_batch=13)
    for l, v in enumerate(res.videos):
        R = recipe.pyramid.level_resolution(l)
        want = field(token_centres(R)).T.reshape(2, *R)
        assert (v - want).abs().max() < 2e-4, (overlap, l)


# ---------------------------------------------------------------------------------------------
# EDM sampler (docs/method.md, invariant "the sampler draws the right Gaussian")

def test_edm_time_steps():
    t = edm_sigmas(8, 0.002, 80.0, 7.0)
    assert t.shape == (9,) and t[-1] == 0
    assert math.isclose(t[0], 80.0) and math.isclose(t[-2], 0.002, rel_tol=1e-9)
    assert torch.all(t[1:] < t[:-1])
    assert edm_sigmas(1, 0.002, 80.0).tolist() == [80.0, 0.0]
    assert churn_gamma(40, 32) == pytest.approx(math.sqrt(2) - 1) and churn_gamma(1, 10) == pytest.approx(0.1)
    assert churn_gamma(0, 10) == 0.0


def test_heun_skips_the_final_step():
    calls = []

    def D(x, s):
        calls.append(s)
        return torch.zeros_like(x)
    edm_sample(D, lambda: torch.randn(4), edm_sigmas(5, 0.01, 10.0), max_drop=math.inf)     # Algorithm 2 as published
    assert len(calls) == 2 * 5 - 1 and calls[-1] == pytest.approx(0.01)
    for steps, heun, churn in [(1, True, 0), (5, True, 0), (5, False, 0), (2, True, 0), (3, True, 40), (8, True, 40)]:
        calls.clear()                                                   # the count the bench extrapolates by
        sigmas = edm_sigmas(steps, 0.002, 80.0)
        edm_sample(D, lambda: torch.randn(4), sigmas, heun=heun, churn=churn)
        assert len(calls) == network_evaluations(sigmas, churn, heun=heun), (steps, heun, churn)


def test_heun_skips_steps_that_lower_the_noise_too_far():
    """A step that lowers sigma more than HEUN_MAX_DROP-fold takes no Heun correction: there the correction multiplies
    the denoiser's error by ~t^ / t_{i+1} / 2. With a denoiser of N(mu, s^2) data that is off by 1e-3, 2-4 steps from
    sigma 80 stay inside the data's range; the trapezoid on every step (written out here) lands 1.5-35 away, and
    the last steps of 8 (7.6- and 17.6-fold drops) 0.02 away."""
    mu, s, bias = 0.3, 0.5, 1e-3

    def D(x, sigma):
        return (s ** 2 * x + sigma ** 2 * mu) / (s ** 2 + sigma ** 2) + bias

    def always_heun(x, ts):
        for t, t_next in zip(ts[:-1], ts[1:]):
            d = (x - D(x, t)) / t
            x_next = x + (t_next - t) * d
            if t_next > 0:
                x_next = x + (t_next - t) * (0.5 * d + 0.5 * (x_next - D(x_next, t_next)) / t_next)
            x = x_next
        return x
    for steps, corrected, apart in [(2, [False, False], 1.0), (3, [False, False, False], 1.0),
                                    (4, [False, False, False, False], 1.0), (8, [True] * 5 + [False] * 3, 0.02)]:
        sigmas = edm_sigmas(steps, 0.002, 80.0)
        assert [c for *_, c in sampler_steps(sigmas)] == corrected
        assert network_evaluations(sigmas) == steps + sum(corrected)
        start = 80.0 * torch.randn(4096, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        x = edm_sample(D, lambda: None, sigmas, x=start.clone())
        # So few deterministic steps draw a law narrower than the data's (one Euler step: its mean) or a little wider.
        assert abs(x.mean() - mu) < 0.01 and x.std() < 1.3 * s, steps
        y = always_heun(start.clone(), sigmas.tolist())
        assert (y - x).abs().mean() > apart, steps                     # 35, 1.6, 1.5 and 0.05 here (data std 0.5)
    # Schedules of 16 and more steps from sigma 80 drop less than HEUN_MAX_DROP-fold: every step but the last corrected.
    for steps in (16, 24, 32):
        assert network_evaluations(edm_sigmas(steps, 0.002, 80.0)) == 2 * steps - 1
    # max_drop = inf (sample.heun_max_drop = 0) is Algorithm 2 as published: the trapezoid on every step.
    sigmas = edm_sigmas(3, 0.002, 80.0)
    start = 80.0 * torch.randn(64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = edm_sample(D, lambda: None, sigmas, x=start.clone(), max_drop=math.inf)
    assert torch.allclose(exact, always_heun(start.clone(), sigmas.tolist()), rtol=0, atol=1e-9)
    assert network_evaluations(sigmas, max_drop=math.inf) == 5


def test_hierarchical_sampler_takes_the_recipes_heun_max_drop():
    """sample.heun_max_drop reaches every level's sampler, and its evaluation count (0: no step skipped)."""
    import dataclasses
    from hpdm_cli.config import ConfigError
    net, recipe = small_net(load=[1, 1, 2, 3])
    counts = {}
    for drop in (0.0, 20.0):
        r = dataclasses.replace(recipe, sample=dataclasses.replace(recipe.sample, heun_max_drop=drop))
        sampler = HierarchicalSampler(net, r.diffusion, r.sample, tile_batch=64)
        calls = []
        hook = net.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
        sampler.sample([3], torch.tensor([1]), guidance=1.0, steps=[3, 3, 2])
        hook.remove()
        counts[drop] = (len(calls), [sampler.evaluations(l, s) for l, s in enumerate([3, 3, 2])])
    assert counts[0.0][1] == [5, 5, 3] and counts[20.0][1] == [3, 3, 2]
    assert counts[0.0][0] - counts[20.0][0] >= 2 + 2 + 1                    # the skipped corrections' forwards
    with pytest.raises(ConfigError, match="sample.heun_max_drop = -1.0: expected a finite number >= 0"):
        dataclasses.replace(recipe, sample=dataclasses.replace(recipe.sample, heun_max_drop=-1.0)).validate()


@pytest.mark.parametrize("churn", [0.0, 40.0])
def test_edm_sampler_draws_gaussian_data(churn):
    """Exact denoiser of N(mu, s^2): D = (s^2 x + sigma^2 mu) / (s^2 + sigma^2); samples match mean and variance."""
    mu, s = 0.3, 0.5
    g = torch.Generator().manual_seed(0)

    def D(x, sigma):
        return (s ** 2 * x + sigma ** 2 * mu) / (s ** 2 + sigma ** 2)
    x = edm_sample(D, lambda: torch.randn(4096, 8, generator=g, dtype=torch.float64),
                   edm_sigmas(64, 0.002, 80.0, 7.0), churn=churn)
    n = x.numel()                                                   # tolerances: 4 standard errors
    assert abs(x.mean() - mu) < 4 * s / math.sqrt(n)
    assert abs(x.var() / s ** 2 - 1) < 4 * math.sqrt(2 / n) + 0.01


def test_churn_raises_the_noise_as_algorithm_2():
    """Each step with t_i in [S_tmin, S_tmax] first adds fresh noise of std S_noise sqrt(t^2 - t_i^2), t = t_i (1 + gamma);
    the others add none (with a zero denoiser every step is then x <- x t_{i+1} / t, written out here)."""
    g = torch.Generator().manual_seed(4)
    x0, e = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    sigmas = edm_sigmas(4, 0.01, 10.0)[:-1]                    # stop at 0.01: a zero denoiser's last step gives 0
    drawn = []

    def noise():
        drawn.append(1)
        return e
    out = edm_sample(lambda x, s: torch.zeros_like(x), noise, sigmas, churn=1.0, s_tmin=0.05, s_tmax=5.0, s_noise=0.9,
                     heun=False, x=x0.clone())
    ts, gamma = sigmas.tolist(), churn_gamma(1.0, 3)
    x, stochastic = x0.clone(), 0
    for t, t_next in zip(ts[:-1], ts[1:]):
        t_hat = t * (1 + gamma) if 0.05 <= t <= 5.0 else t
        stochastic += t_hat > t
        x = (x + math.sqrt(t_hat ** 2 - t ** 2) * 0.9 * e) * t_next / t_hat
    assert 0 < stochastic < 3                                   # the window keeps some steps deterministic
    assert len(drawn) == stochastic
    assert torch.allclose(out, x, rtol=0, atol=1e-12)
    plain = edm_sample(lambda x, s: torch.zeros_like(x), noise, sigmas, heun=False, x=x0.clone())
    assert (out - plain).abs().max() > plain.abs().max()       # churn changes the sample


class GaussNet(torch.nn.Module):
    """A stand-in network that is the exact denoiser of pixels ~ N(mu, s^2) in each level's scaled space."""

    def __init__(self, recipe, mu, s):
        super().__init__()
        self.recipe, self.mu, self.s = recipe, mu, s
        self.pyramid, self.cfg = recipe.pyramid, recipe.model                      # what the sampler reads

    def forward(self, x, c_noise, offsets, cond=None, keep=None, *, lo=0, context=None, collect=False):
        d = self.recipe.diffusion
        sigma = (4 * c_noise.double()).exp()[..., None, None, None, None]
        b = torch.tensor([d.level_input_scale(lo + i) for i in range(x.shape[1])], dtype=torch.float64)
        b = b[None, :, None, None, None, None]
        sd = d.sigma_data                         # EDM's preconditioning written out, scaled data of std b_l sigma_d
        noisy = x.double() * torch.sqrt(sigma ** 2 + (b * sd) ** 2)                  # undoes c_in
        m, v = b * self.mu, (b * self.s) ** 2
        D = (v * noisy + sigma ** 2 * m) / (v + sigma ** 2)
        skip, out = sd ** 2 / (sigma ** 2 + sd ** 2), sigma * sd / torch.sqrt(sigma ** 2 + sd ** 2)
        return NetOutput(((D - skip * noisy) / out).float())


@pytest.mark.parametrize("stochastic", [0, 1])
def test_hierarchical_level0_draws_gaussian_data(stochastic):
    recipe = tiny_recipe(resolution=(8, 32, 32), patch=(4, 8, 8), fusion="none")
    recipe.sample.stochastic_levels = stochastic
    recipe.diffusion.input_scale = 0.8                                      # pixels = x / b_0
    mu, s = 0.2, 0.25
    res = sample(GaussNet(recipe, mu, s), recipe, list(range(32)), levels=1, steps=[64])
    x = res.videos[0].double()
    n = x.numel()
    assert len(res.videos) == 1 and n == 32 * 3 * 4 * 8 * 8
    assert abs(x.mean() - mu) < 4 * s / math.sqrt(n)
    assert abs(x.var() / s ** 2 - 1) < 4 * math.sqrt(2 / n) + 0.01


# ---------------------------------------------------------------------------------------------
# Hierarchical sampling with a real network (invariants "cached context equals recomputed context" and
# "a sample depends only on its seed")

def small_net(**model):
    """A random network with its recipe; its sampler corrects every step as Algorithm 2 does (heun_max_drop = 0),
    so that the tests of the sampler's machinery count Heun's 2s-1 evaluations in their few-step schedules."""
    recipe = tiny_recipe(resolution=(4, 32, 32), patch=(2, 8, 8), **model)
    recipe.sample.heun_max_drop = 0.0
    return randomize(HPDMNet(recipe.pyramid, recipe.model)), recipe


def cond_for(recipe, seeds):
    if recipe.model.cond == "text":
        g = torch.Generator().manual_seed(1)
        return torch.randn(len(seeds), recipe.model.text_tokens, recipe.model.text_dim, generator=g)
    return torch.tensor([s % recipe.model.num_classes for s in seeds])


# Untrained networks are not denoisers: Heun's steps amplify float32 rounding of differently batched
# forwards (a few 1e-5 after clamping). Float64 runs show both paths agree to rounding error.
TOL = {torch.float64: 1e-9, torch.float32: 5e-4}


@pytest.mark.parametrize("model,guidance,overlap,dtype", [
    (dict(fusion="deep", load=[1, 1, 2, 3]), 1.0, "fhw", torch.float64),
    (dict(fusion="deep", load=[1, 1, 2, 3]), 2.0, "fhw", torch.float32),
    (dict(fusion="deep", load="linear"), 2.0, "hw", torch.float64),
    (dict(fusion="shallow", load=[1, 1, 2, 3]), 2.0, "fhw", torch.float64),
    (dict(fusion="deep", load=[1, 2, 3, 3], cond="text", text_dim=12, text_tokens=2), 2.0, "w", torch.float64),
    (dict(fusion="deep", load=[1, 1, 2, 3], self_condition=True), 2.0, "fhw", torch.float64),
    (dict(fusion="deep", load=[1, 1, 2, 3], self_condition=True), 2.0, "shift-hw", torch.float64),
    (dict(fusion="deep", load=[1, 1, 2, 3], fusion_edges=True), 2.0, "shift-fhw", torch.float64),
    (dict(fusion="deep", load=[1, 2, 3, 3], cond="text", text_dim=12, text_tokens=2), 1.0, "f+shift-hw",
     torch.float64),
    # The packaged model's options (docs/method.md, section 4), and a load that skips the middle level's blocks.
    (dict(fusion="deep", load=[3, 1, 1, 3], interface_conv=True, qk_norm=True, adaptive_norm=True,
          adaptive_norm_interface=True, pos_embed="sincos", self_condition=True), 2.0, "fhw", torch.float64),
    # Fixed positions that fade with the noise: the cached level 0 was tokenized at its own (final) sigma.
    (dict(fusion="deep", load=[1, 1, 2, 3], pos_embed="fourier", pos_fixed_sigma=[0.5, 2.0]), 2.0, "fhw",
     torch.float64),
    # ... and in the attention logits alone: the cached level 0 is the same tokens, its table not among them.
    (dict(fusion="deep", load=[1, 1, 2, 3], pos_embed="fourier", pos_fixed_sigma=[0.5, 2.0],
          pos_fixed_into="attention"), 2.0, "fhw", torch.float64),
    # ... and subtracted from the tokens before the readout, at level 0 only.
    (dict(fusion="deep", load=[1, 1, 2, 3], pos_embed="fourier", pos_fixed_sigma=[0.5, 2.0], pos_fixed_levels="base",
          pos_fixed_subtract=True), 2.0, "fhw", torch.float64),
])
def test_cached_context_equals_recomputed(model, guidance, overlap, dtype):
    """Activation caching and per-call recomputation give the same video.

    docs/method.md, invariant "cached context equals recomputed context".
    """
    net, recipe = small_net(**model)
    net.to(dtype)
    shapes = []
    hook = net.register_forward_pre_hook(lambda m, args: shapes.append(args[0].shape[1]))
    seeds = [3, 4]
    kw = dict(cond=cond_for(recipe, seeds), guidance=guidance, overlap=overlap, steps=[3, 3, 1], tile_batch=200,
              dtype=dtype)
    cached = sample(net, recipe, seeds, cache=True, **kw)
    assert set(shapes) == {1}, "with caching, every forward runs a single level"
    shapes.clear()
    recomputed = sample(net, recipe, seeds, cache=False, **kw)
    assert max(shapes) == 3
    hook.remove()
    for a, b in zip(cached.videos, recomputed.videos):
        assert a.shape == b.shape and a.dtype == dtype
        assert (a - b).abs().max() < TOL[dtype]
        assert (a.abs() < 0.99).float().mean() > 0.1                           # not saturated: a real comparison
    assert cached.videos[2].std() > 0.1
    rows = len(seeds) * (2 if guidance != 1 else 1)
    assert cached.cache_bytes == cache_bytes(recipe.pyramid, recipe.model, overlap, rows,
                                             bytes_per_value=dtype.itemsize)
    if recipe.model.fusion == "deep":
        assert cached.cache_bytes[0] > 0 and cached.cache_bytes[1] > 0



@pytest.mark.parametrize("model", [dict(load=[1, 1, 2, 3]), dict(load=[1, 2, 3, 3], self_condition=True)])
def test_context_computed_once_per_level_gives_the_same_video(model):
    """Context terms (eq. 7-9) held for a level's evaluations equal recomputing them per call; a small budget holds none."""
    import dataclasses
    net, recipe = small_net(fusion="deep", **model)
    net.to(torch.float64)
    seeds = [3, 4]
    out = {}
    for gib in (4.0, 1e-6, 0.0):
        rec = dataclasses.replace(recipe, sample=dataclasses.replace(recipe.sample, context_cache_gib=gib))
        out[gib] = sample(net, rec, seeds, cond=cond_for(recipe, seeds), guidance=2.0, overlap="hw", steps=[3, 3, 1],
                          tile_batch=7, dtype=torch.float64)
    held = out[4.0].context_bytes
    assert held[0] == 0 and held[1] > 0 and held[2] > 0                   # level 0 reads no context
    assert out[1e-6].context_bytes == [0, 0, 0] and out[0.0].context_bytes == [0, 0, 0]
    for a, b in zip(out[4.0].videos, out[0.0].videos):
        assert (a - b).abs().max() < TOL[torch.float64] and (a.abs() < 0.99).float().mean() > 0.1

class _ContextSpy(HierarchicalSampler):
    """The product's sampler, recording how each chunk's held context terms were read."""

    def _context(self, run, level, ch):
        got = super()._context(run, level, ch)
        if run.context and got is not None:
            T = self.tiles[level].num_tiles
            for b, c in run.context.items():
                assert torch.equal(got.terms[b], c.index_select(0, ch.g * T + ch.t))     # the chunk's own rows
                self.reads.append((ch.span, got.terms[b].data_ptr() == c[ch.rows[0]].data_ptr()))
        return got


@pytest.mark.parametrize("overlap,pad", [("hw", False), ("hw", True), ("shift-hw", False)])
def test_held_context_of_in_order_chunks_is_read_in_place(overlap, pad):
    """Held context terms: a chunk of every tile in order, unpadded, reads a view of them (no copy), any other
    chunk (padded as compiled forwards are, or a shifted tiling's phase) gathers its rows; the video is the same."""
    import dataclasses
    net, recipe = small_net(fusion="deep", load=[1, 1, 2, 3])
    net.to(torch.float64)
    seeds = [3, 4]
    videos = {}
    for gib in (4.0, 0.0):
        rec = dataclasses.replace(recipe, sample=dataclasses.replace(recipe.sample, context_cache_gib=gib))
        spy = _ContextSpy(net, rec.diffusion, rec.sample, overlap=overlap, tile_batch=20, dtype=torch.float64)
        spy.compiled, spy.reads = pad, []                   # `compiled` pads chunks to a power of two of tiles
        videos[gib] = spy.sample(seeds, cond_for(recipe, seeds), guidance=2.0, steps=[3, 3, 1]).videos
        if gib:
            spans = {span for span, _ in spy.reads}
            assert spans == ({False} if overlap.startswith("shift") else {True, False} if pad else {True})
            assert all(view == span for span, view in spy.reads)
    for a, b in zip(videos[4.0], videos[0.0]):
        assert (a - b).abs().max() < TOL[torch.float64] and (a.abs() < 0.99).float().mean() > 0.1


def test_bf16_autocast_caches_at_bf16_and_matches_recomputation():
    """Under bf16 autocast the activation cache is held in bf16 (half the bytes) and gives the recomputed video."""
    net, recipe = small_net(fusion="deep", load=[1, 1, 2, 3])
    seeds = [3, 4]
    out = {}
    for cache in (True, False):
        sampler = HierarchicalSampler(net, recipe.diffusion, recipe.sample, overlap="hw", tile_batch=200,
                                      cache=cache, autocast=torch.bfloat16)
        out[cache] = sampler.sample(seeds, cond_for(recipe, seeds), guidance=2.0, steps=[3, 3, 1])
    assert out[True].cache_bytes == cache_bytes(recipe.pyramid, recipe.model, "hw", 2 * len(seeds), bytes_per_value=2)
    for a, b in zip(out[True].videos, out[False].videos):
        assert a.dtype == torch.float32 and (a.abs() < 0.99).float().mean() > 0.1
        assert (a - b).abs().max() < 1e-3          # equal here; bf16 itself moves these videos by ~4e-2

@pytest.mark.parametrize("dtype,overlap", [(torch.float64, None), (torch.float32, None),
                                           (torch.float64, "shift-hw")])
def test_sample_depends_only_on_its_seed(dtype, overlap):
    """Seed 5's video is the same alone or next to seed 3 (and with other chunking).

    docs/method.md, invariant "a sample depends only on its seed".
    """
    net, recipe = small_net(load=[1, 1, 2, 3], self_condition=overlap is not None)
    net.to(dtype)
    kw = dict(guidance=2.0, steps=[3, 3, 3] if overlap else [3, 3, 1], dtype=dtype, overlap=overlap)
    both = sample(net, recipe, [3, 5], cond=torch.tensor([1, 2]), tile_batch=64, **kw)
    alone = sample(net, recipe, [5], cond=torch.tensor([2]), tile_batch=7, **kw)
    for l in range(3):
        assert (both.videos[l][1] - alone.videos[l][0]).abs().max() < TOL[dtype]
        assert (both.videos[l][0] - both.videos[l][1]).abs().max() > 0.1


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("scales", [[2.0, 1.0, 1.0], [1.0, 2.0, 2.0], [2.0, 1.0, 2.0]])
def test_per_level_guidance(monkeypatch, scales, cache):
    """A scale per level: level 0 as under its scale alone; unguided levels skip the unconditional rows exactly."""
    net, recipe = small_net(fusion="deep", load=[1, 1, 2, 3], self_condition=True)
    net.to(torch.float64)
    seeds = [3, 4]
    kw = dict(cond=cond_for(recipe, seeds), overlap="fhw", steps=[3, 3, 1], tile_batch=200, dtype=torch.float64,
              cache=cache)
    rows = {"lean": 0, "alone": 0, "full": 0}
    mode = ["lean"]

    def count(m, args):
        rows[mode[0]] += args[0].shape[0]
    hook = net.register_forward_pre_hook(count)
    lean = sample(net, recipe, seeds, guidance=scales, **kw)
    mode[0] = "alone"
    # Level 0 is what its own scale gives, with the same scale for every level.
    alone = sample(net, recipe, seeds, guidance=scales[0], **kw)
    assert (lean.videos[0] - alone.videos[0]).abs().max() < 1e-9
    first = next(l for l, w in enumerate(scales) if w != scales[0])
    assert (lean.videos[first] - alone.videos[first]).abs().max() > 1e-3        # the finer scales matter
    # Skipping the unconditional rows of levels nothing guided reads changes nothing ...
    monkeypatch.setattr(HierarchicalSampler, "_rows", lambda self, run, levels: run.G)
    mode[0] = "full"
    full = sample(net, recipe, seeds, guidance=scales, **kw)
    hook.remove()
    for a, b in zip(lean.videos, full.videos):
        assert (a - b).abs().max() < 1e-9
        assert (a.abs() < 0.99).float().mean() > 0.1
    # ... and saves work: the last levels, unguided, run on the conditional rows alone.
    assert (rows["lean"] < rows["full"]) == (scales[-1] == 1.0)
    if scales[-1] == 1.0 and cache:
        assert lean.cache_bytes[1] * 2 == full.cache_bytes[1]


def test_per_level_guidance_needs_a_scale_per_level():
    """The recipe's sample.guidance may be a list; the sampler wants one scale per level."""
    import dataclasses
    net, recipe = small_net(load=[1, 1, 2, 3])
    per_level = dataclasses.replace(recipe, sample=dataclasses.replace(recipe.sample, guidance=[2.0, 1.0, 1.0]))
    kw = dict(cond=torch.tensor([1]), steps=[2, 1, 1])
    a = sample(net, per_level, [1], **kw)
    b = sample(net, recipe, [1], guidance=[2.0, 1.0, 1.0], **kw)
    assert all(torch.equal(x, y) for x, y in zip(a.videos, b.videos))
    with pytest.raises(ValueError, match="2 per-level guidance scales given for 3 levels"):
        sample(net, recipe, [1], cond=torch.tensor([1]), guidance=[2.0, 1.0], steps=[1, 1, 1])


def spy_forwards(monkeypatch, net) -> list:
    """Record every forward of `net` as (lo, self_cond, returned latents, collect); returns the growing list."""
    calls, forward = [], net.forward

    def spy(*args, **kw):
        res = forward(*args, **kw)
        calls.append((kw.get("lo", 0), kw.get("self_cond"), res.latents, kw.get("collect", False)))
        return res
    monkeypatch.setattr(net, "forward", spy)
    return calls


def test_self_conditioning_feeds_each_tile_its_previous_latents(monkeypatch):
    """model.self_condition: every evaluation after a level's first gets the latents the previous one returned."""
    net, recipe = small_net(load=[1, 1, 2, 3], self_condition=True)
    forward = net.forward
    calls = spy_forwards(monkeypatch, net)
    out = sample(net, recipe, [3, 5], cond=torch.tensor([1, 2]), guidance=2.0, steps=[3, 2, 1], tile_batch=64)
    level0 = [c for c in calls if c[0] == 0 and not c[3]]
    assert len(level0) == 5 and level0[0][1] is None                  # 3 Heun steps: 5 evaluations
    for prev, cur in zip(level0, level0[1:]):
        assert torch.equal(cur[1][0], prev[2][:, 0].to(cur[1][0].dtype))  # one tile: rows line up
    cache0 = [c for c in calls if c[0] == 0 and c[3]]
    assert len(cache0) == 1 and torch.equal(cache0[0][1][0], level0[-1][2][:, 0])
    later = [c for c in calls if c[0] == 1 and not c[3]]              # 2 Heun steps: 3 evaluations of all chunks
    per = len(later) // 3
    assert len(later) == 3 * per and [c[1] is None for c in later] == [True] * per + [False] * (2 * per)

    monkeypatch.setattr(net, "forward", forward)
    plain = sample(net, recipe, [3, 5], cond=torch.tensor([1, 2]), guidance=2.0, steps=[3, 2, 1], tile_batch=64)
    net.self_cond_proj.weight.data.zero_()
    net.self_cond_proj.bias.data.zero_()                                 # the self-conditioning path cut
    cut = sample(net, recipe, [3, 5], cond=torch.tensor([1, 2]), guidance=2.0, steps=[3, 2, 1], tile_batch=64)
    assert torch.equal(out.videos[0], plain.videos[0])
    assert (out.videos[0] - cut.videos[0]).abs().max() > 1e-3             # it changes the sample


def test_shifted_tiles_self_condition_each_tile_on_its_latest_latents(monkeypatch):
    """Shifted tiles: call i evaluates phase i mod 4; the first call of every phase reads no latents (some of its
    tiles have none yet), later calls read each tile's latents from the latest call that evaluated it."""
    net, recipe = small_net(load=[1, 1, 2, 3], self_condition=True)
    net.double()
    calls = spy_forwards(monkeypatch, net)
    sampler = HierarchicalSampler(net, recipe.diffusion, recipe.sample, overlap="shift-hw", tile_batch=256,
                                  dtype=torch.float64)
    sampler.sample([3], torch.tensor([1]), guidance=1.0, steps=[2, 2, 4])
    level2 = [c for c in calls if c[0] == 2 and not c[3]]
    assert len(level2) == 7                                          # 4 Heun steps: 7 calls, one chunk each
    latest = {}
    for i, (_, self_cond, latents, _) in enumerate(level2):
        tiles = sampler.phases[2][i % 4][0].tolist()
        assert latents.shape[0] == len(tiles)
        if i < 4:
            assert self_cond is None, i
        else:
            assert torch.equal(self_cond[0], torch.stack([latest[t] for t in tiles])), i
        latest.update({t: latents[j, 0] for j, t in enumerate(tiles)})
    assert [len(sampler.phases[2][k][0]) for k in range(4)] == [32, 50, 40, 40]   # 2 x (4|5) x (4|5) tiles
    cache1 = [c for c in calls if c[0] == 1 and c[3]]
    assert len(cache1) == 1 and cache1[0][1] is not None            # every level-1 tile has latents by then


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: canvases drawn by GPU generators")
def test_gpu_sample_depends_only_on_its_seed():
    """On a GPU the noise comes from GPU generators seeded by the seed's streams.

    docs/method.md, invariant "a sample depends only on its seed".
    """
    net, recipe = small_net(load=[1, 1, 2, 3])
    net.cuda()
    kw = dict(guidance=2.0, steps=[3, 3, 1])
    both = sample(net, recipe, [3, 5], cond=torch.tensor([1, 2]), tile_batch=64, **kw)
    alone = sample(net, recipe, [5], cond=torch.tensor([2]), tile_batch=7, **kw)
    for l in range(3):
        assert both.videos[l].device.type == "cuda"
        assert (both.videos[l][1] - alone.videos[l][0]).abs().max() < 1e-3
        assert (both.videos[l][0] - both.videos[l][1]).abs().max() > 0.1


@pytest.mark.parametrize("options,first", [({}, []), (dict(self_condition=True, interface_conv=True), [1, 2])])
def test_compiled_sampling_gives_the_same_video_with_one_graph_per_level_pass_and_size(monkeypatch, options, first):
    """`compile`: forwards padded to a power of two of rows (padding dropped) reproduce the eager video;
    one graph per level, pass (denoise, cache) and padded size.

    With self-conditioning the first evaluation of levels 1 and 2 (no previous latents) is one more
    graph per size.
    """
    import torch._dynamo as dynamo
    net, recipe = small_net(load=[1, 1, 2, 3], **options)
    net.double()
    kw = dict(guidance=2.0, steps=[2, 2, 1])
    eager = sample(net, recipe, [3, 5], cond=torch.tensor([1, 2]), tile_batch=7, dtype=torch.float64, **kw)
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **k: compile_(m, backend="aot_eager", **k))   # no C++ build
    dynamo.reset()
    dynamo.utils.counters.clear()
    sampler = HierarchicalSampler(net, recipe.diffusion, recipe.sample, tile_batch=7, dtype=torch.float64,
                                  compile=True)
    got = sampler.sample([3, 5], torch.tensor([1, 2]), **kw)
    for a, b in zip(eager.videos, got.videos):
        assert (a - b).abs().max() < TOL[torch.float64], (a - b).abs().max()    # batch size changes rounding only
    # Level 0 and 1 (denoise, cache) and level 2 (denoise), each at its chunks' padded sizes.
    run = SimpleNamespace(B=2, cond=None, keep=None)
    sizes = [{sampler.padded_rows(ch.n) for ch in sampler._chunks(run, l, 4)} for l in range(3)]
    assert max(map(len, sizes)) > 1                 # a last chunk that is padded to a smaller size
    graphs = 2 * len(sizes[0]) + 2 * len(sizes[1]) + len(sizes[2]) + sum(len(sizes[l]) for l in first)
    assert dynamo.utils.counters["stats"]["unique_graphs"] == graphs, sizes
    dynamo.reset()


def test_compiled_forwards_pad_to_a_power_of_two_at_most_the_tile_batch():
    """A level of few tiles (the base level: one per video) is not padded to a whole tile batch."""
    net, recipe = small_net(load=[1, 1, 2, 3])
    sampler = HierarchicalSampler(net, recipe.diffusion, recipe.sample, tile_batch=64)
    assert [sampler.padded_rows(n) for n in (1, 2, 3, 16, 17, 32, 33, 64)] == [1, 2, 4, 16, 32, 32, 64, 64]
    assert HierarchicalSampler(net, recipe.diffusion, recipe.sample, tile_batch=7).padded_rows(5) == 7
    sampler.compiled = True                         # the chunking alone, without compiling anything
    run = SimpleNamespace(B=2, cond=None, keep=None)
    for level in range(recipe.pyramid.num_levels):
        T = sampler.tiles[level].num_tiles
        for ch in sampler._chunks(run, level, 4):
            assert len(ch.g) == sampler.padded_rows(ch.n) and ch.n <= 64
        assert sum(ch.n for ch in sampler._chunks(run, level, 4)) == 4 * T


def test_preview_offload_progress_and_fixed_levels():
    net, recipe = small_net(load=[1, 1, 2, 3])
    recipe.sample.stochastic_levels = 2
    sampler = HierarchicalSampler(net, recipe.diffusion, recipe.sample, tile_batch=100)
    calls = []
    full = sampler.sample([7], torch.tensor([4]), steps=[3, 2, 1], progress=lambda *a: calls.append(a))
    assert calls == [(0, 1, 3), (0, 2, 3), (0, 3, 3), (1, 1, 2), (1, 2, 2), (2, 1, 1)]
    assert len(full.seconds) == 3 and full.steps == [3, 2, 1]
    for l, v in enumerate(full.videos):
        assert v.shape == (1, 3, *recipe.pyramid.level_resolution(l)) and v.abs().max() <= 1
    # The preview is the first level of the full video.
    preview = sampler.sample([7], torch.tensor([4]), steps=[3, 2, 1], levels=1)
    assert len(preview.videos) == 1 and torch.equal(preview.videos[0], full.videos[0])
    # Offloaded caches give the same video.
    off = HierarchicalSampler(net, recipe.diffusion, recipe.sample, tile_batch=100, offload=True).sample([7], torch.tensor([4]),
                                                                               steps=[3, 2, 1])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(off.videos, full.videos))
    # Fixing level 0 to the run's own level 0 reproduces the run (per-level noise streams) ...
    fixed = {0: full.videos[0].clone()}
    up = sampler.sample([7], torch.tensor([4]), steps=[3, 2, 1], fixed=fixed)
    assert torch.equal(up.videos[0], fixed[0]) and up.steps[0] == 0
    assert all((a - b).abs().max() < 1e-5 for a, b in zip(up.videos, full.videos))
    # ... and a different fixed level 0 conditions what is generated above it.
    other = sampler.sample([7], torch.tensor([4]), steps=[3, 2, 1], fixed={0: -full.videos[0]})
    assert torch.equal(other.videos[0], -full.videos[0])
    assert (other.videos[1] - full.videos[1]).abs().max() > 0.05
    # Fixed levels 0 and 1: only level 2 is generated, conditioned on both.
    two = sampler.sample([7], torch.tensor([4]), steps=[3, 2, 1], fixed={0: full.videos[0], 1: full.videos[1]})
    assert (two.videos[2] - full.videos[2]).abs().max() < 1e-5 and two.steps == [0, 0, 1]
    with pytest.raises(ValueError):
        sampler.sample([7], steps=[1, 1, 1], fixed={1: torch.zeros(1, 3, 2, 8, 8)})


def test_a_fixed_middle_level_between_generated_ones_reproduces_the_run():
    """Levels 0, 1 generated (level 1 with its context held), level 2 fixed to the run's own, level 3 generated:
    the run again, so nothing of level 1's held context outlives level 1."""
    recipe = tiny_recipe(resolution=(8, 64, 64), patch=(2, 8, 8), load=[1, 2, 3, 4])
    net = randomize(HPDMNet(recipe.pyramid, recipe.model)).to(torch.float64)
    sampler = HierarchicalSampler(net, recipe.diffusion, recipe.sample, tile_batch=256, dtype=torch.float64)
    assert sampler.num_levels == 4
    kw = dict(steps=[2, 2, 1, 1])
    full = sampler.sample([7], torch.tensor([4]), **kw)
    assert full.context_bytes[1] > 0                                     # level 1 held its context
    again = sampler.sample([7], torch.tensor([4]), fixed={2: full.videos[2]}, **kw)
    assert again.steps == [2, 2, 0, 1]
    assert all((a - b).abs().max() < 1e-9 for a, b in zip(again.videos, full.videos))


def test_finished_levels_are_shown_at_the_context_sigma_with_their_own_noise():
    """A finished level enters the finer levels as b_l x + context_sigma eps, eps from the (seed, level) context
    stream (docs/method.md, section 5: that noise is actually added), not as the clean canvas."""
    from hpdm_cli.sampling.hierarchical import _CONTEXT_STREAM, seed_generator
    net, recipe = small_net(load=[1, 1, 2, 3])
    net.to(torch.float64)
    inputs = []
    hook = net.register_forward_pre_hook(lambda m, args: inputs.append(args[0].clone()))
    res = sample(net, recipe, [7], torch.tensor([4]), steps=[2, 1, 1], cache=False, dtype=torch.float64,
                 overlap="none")
    hook.remove()
    first = next(x for x in inputs if x.shape[1] == 2)                     # level 1's first call: levels 0, 1
    d = recipe.diffusion
    b0, s = d.level_input_scale(0), torch.tensor(d.context_sigma, dtype=torch.float64)
    eps = torch.randn(res.videos[0].shape[1:], generator=seed_generator(7, 0, _CONTEXT_STREAM), dtype=torch.float64)
    scale = c_in(s, d.sigma_data, b0)                                      # the network sees c_in x~
    want = scale * (b0 * res.videos[0][0] + d.context_sigma * eps)         # level 0 is one tile
    assert all((row - want).abs().max() < 1e-12 for row in first[:, 0])
    assert (first[0, 0] - scale * b0 * res.videos[0][0]).abs().max() > 0.5 * d.context_sigma


def test_level_steps():
    recipe = tiny_recipe()
    assert level_steps(recipe.sample, 3) == [128, 64, 32]
    recipe.sample.steps = 4
    assert level_steps(recipe.sample, 4) == [4, 2, 1, 1]
    recipe.sample.level_steps = [5, 3, 2]
    assert level_steps(recipe.sample, 3) == [5, 3, 2]
    assert level_steps(recipe.sample, 2, [9, 1]) == [9, 1]
    with pytest.raises(ValueError):
        level_steps(recipe.sample, 3, [2, 2])


def test_per_level_sigma_max_starts_each_level_where_it_says(monkeypatch):
    """sample.sigma_max per level: each level's schedule starts at its own value; one value is every level's."""
    import dataclasses

    import hpdm_cli.sampling.hierarchical as hier
    net, recipe = small_net(load=[1, 1, 2, 3])
    starts, real = [], hier.edm_sample
    monkeypatch.setattr(hier, "edm_sample", lambda D, noise, sigmas, **kw: starts.append(float(sigmas[0]))
                        or real(D, noise, sigmas, **kw))
    per_level = dataclasses.replace(recipe, sample=dataclasses.replace(recipe.sample, sigma_max=[80.0, 10.0, 5.0]))
    kw = dict(cond=torch.tensor([1]), steps=[2, 2, 1])
    a = sample(net, per_level, [1], **kw)
    assert starts == pytest.approx([80.0, 10.0, 5.0], rel=1e-12)
    starts.clear()
    b = sample(net, recipe, [1], **kw)
    assert starts == pytest.approx([recipe.sample.sigma_max] * 3, rel=1e-12)
    assert torch.equal(a.videos[0], b.videos[0])                  # level 0 starts as before: the same video
    assert (a.videos[1] - b.videos[1]).abs().max() > 1e-3         # the finer levels start lower


def test_guidance_interval_guides_only_between_its_sigmas():
    """sample.guidance_interval = [lo, hi]: guidance at lo < sigma <= hi only. Covering every sigma it is plain
    guidance; covering none it is the conditional denoiser alone (scale 1); a partial one lies between."""
    import dataclasses
    net, recipe = small_net(load=[1, 1, 2, 3])
    net.to(torch.float64)
    seeds = [3, 4]
    kw = dict(cond=cond_for(recipe, seeds), guidance=3.0, steps=[3, 3, 1], dtype=torch.float64)

    def run(interval, **over):
        r = dataclasses.replace(recipe, sample=dataclasses.replace(recipe.sample, guidance_interval=interval))
        return sample(net, r, seeds, **{**kw, **over}).videos
    plain, everywhere = run([]), run([0.0, 1e9])
    nowhere, unguided = run([1e8, 1e9]), run([], guidance=1.0)
    partial = run([1.0, 1e9])                    # guided at the first steps (sigma 80 ...), not at the last ones
    for l in range(3):
        assert (plain[l] - everywhere[l]).abs().max() < 1e-12
        assert (nowhere[l] - unguided[l]).abs().max() < 1e-9
        assert (plain[l] - unguided[l]).abs().max() > 1e-3
    for l in range(2):                            # level 2's one step is at sigma 80, guided in both
        assert (partial[l] - plain[l]).abs().max() > 1e-3 and (partial[l] - unguided[l]).abs().max() > 1e-3
    # The ends: without churn every level starts at sigma_max (80, inside (lo, hi]) and takes its last step
    # from sigma_min (0.002, not inside when it is lo).
    no_churn = dataclasses.replace(recipe.sample, churn=0.0)
    recipe = dataclasses.replace(recipe, sample=no_churn)
    plain = run([])
    sigmas = edm_sigmas(3, no_churn.sigma_min, no_churn.sigma_max, no_churn.rho)     # levels 0 and 1: 3 steps
    assert sigmas[0] == no_churn.sigma_max
    assert all((a - b).abs().max() < 1e-12 for a, b in zip(run([0.0, no_churn.sigma_max]), plain))
    last = run([float(sigmas[-2]), 1e9])
    assert all((last[l] - plain[l]).abs().max() > 1e-9 for l in range(2))


def test_classifier_free_guidance_is_uncond_plus_w_times_cond_minus_uncond():
    """D_w = D_u + w (D_c - D_u): one deterministic Euler step from sigma_max gives level 0's D_w itself, affine in
    w, the conditional denoiser at w = 1 and the unconditional one at w = 0."""
    import dataclasses
    net, recipe = small_net(load=[1, 1, 2, 3])
    net.to(torch.float64)
    recipe = dataclasses.replace(recipe, sample=dataclasses.replace(recipe.sample, churn=0.0))
    seeds = [3, 4]
    d = {w: sample(net, recipe, seeds, cond_for(recipe, seeds), guidance=w, steps=[1], levels=1,
                   dtype=torch.float64).videos[0] for w in (0.0, 1.0, 2.5)}
    inside = (d[0.0].abs() < 0.99) & (d[1.0].abs() < 0.99) & (d[2.5].abs() < 0.99)   # not clamped
    assert inside.float().mean() > 0.5 and (d[1.0] - d[0.0])[inside].abs().max() > 1e-5
    assert (d[2.5] - (d[0.0] + 2.5 * (d[1.0] - d[0.0])))[inside].abs().max() < 1e-9


# ---------------------------------------------------------------------------------------------
# Autoguidance (docs/method.md, "Autoguidance")

def guide_for(net, recipe, copy: bool):
    """A one-level net of `recipe`'s level 0 (same model settings): a copy of `net`'s level-0 weights, or random."""
    import dataclasses
    pyr = dataclasses.replace(recipe.pyramid, resolution=tuple(recipe.pyramid.level_resolution(0)))
    g = HPDMNet(pyr, recipe.model)
    if copy:
        own = g.state_dict()
        g.load_state_dict({k: v[:own[k].shape[0]] if v.shape != own[k].shape else v
                           for k, v in net.state_dict().items() if k in own})
    else:
        randomize(g)
    return g.to(next(net.parameters()).dtype)


def autoguided(net, recipe, guide, seeds, **kw):
    sampler = HierarchicalSampler(net, recipe.diffusion, recipe.sample, dtype=torch.float64, guide=guide)
    return sampler.sample(seeds, **kw).videos


@pytest.mark.parametrize("model", [dict(load=[1, 1, 2, 3]), dict(load=[1, 1, 2, 3], self_condition=True,
                                                                  cond="text", text_dim=12, text_tokens=2)])
def test_autoguidance_combines_the_guides_and_the_models_denoisers(model):
    """D = D_g + w (D_c - D_g) at level 0: a guide that is the model's own level 0 leaves the conditional
    sample (any w); w = 0 gives the guide's own sample; otherwise it differs from both and from CFG."""
    net, recipe = small_net(**model)
    net.to(torch.float64)
    seeds = [3, 4]
    kw = dict(cond=cond_for(recipe, seeds), steps=[3, 3, 1])
    plain = sample(net, recipe, seeds, dtype=torch.float64, guidance=1.0, **kw).videos
    cfg = sample(net, recipe, seeds, dtype=torch.float64, guidance=[2.5, 1, 1], **kw).videos
    same = autoguided(net, recipe, guide_for(net, recipe, copy=True), seeds, guidance=[2.5, 1, 1], **kw)
    for l in range(3):
        assert (same[l] - plain[l]).abs().max() < 1e-9
    other = guide_for(net, recipe, copy=False)
    alone = sample(other, dataclasses_replace_levels(recipe, other), seeds, dtype=torch.float64, guidance=1.0,
                   cond=kw["cond"], steps=[3]).videos[0]
    zero = autoguided(net, recipe, other, seeds, guidance=[0.0, 1, 1], **kw)
    assert (zero[0] - alone).abs().max() < 1e-9
    guided = autoguided(net, recipe, other, seeds, guidance=[2.5, 1, 1], **kw)
    for ref in (plain, cfg, zero):
        assert (guided[0] - ref[0]).abs().max() > 1e-3


def dataclasses_replace_levels(recipe, guide):
    """`recipe` with the guide's (one-level) pyramid, to sample the guide alone."""
    import dataclasses
    return dataclasses.replace(recipe, pyramid=guide.pyramid)


def test_autoguidance_runs_no_unconditional_rows_and_refuses_a_guide_that_does_not_fit(monkeypatch):
    """With level 0 autoguided and the upper levels unguided the model runs the conditional rows only;
    a guide of several levels, another resolution or another condition is refused."""
    import dataclasses
    net, recipe = small_net(load=[1, 1, 2, 3])
    net.to(torch.float64)
    seeds = [3, 4, 5]
    kw = dict(cond=cond_for(recipe, seeds), steps=[2, 2, 1])
    rows = []
    net.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))

    def model_rows(run) -> int:
        rows.clear()
        run()
        return sum(rows)
    auto = model_rows(lambda: autoguided(net, recipe, guide_for(net, recipe, copy=False), seeds,
                                         guidance=[2.0, 1, 1], **kw))
    plain = model_rows(lambda: sample(net, recipe, seeds, dtype=torch.float64, guidance=1.0, **kw))
    cfg = model_rows(lambda: sample(net, recipe, seeds, dtype=torch.float64, guidance=[2.0, 1, 1], **kw))
    assert auto == plain < cfg
    with pytest.raises(ValueError, match="pyramid levels"):
        HierarchicalSampler(net, recipe.diffusion, recipe.sample, guide=net)
    wide = dataclasses.replace(recipe.pyramid, resolution=(4, 32, 32), patch=(4, 32, 32))
    with pytest.raises(ValueError, match="level 0 here"):
        HierarchicalSampler(net, recipe.diffusion, recipe.sample, guide=HPDMNet(wide, recipe.model))
    text = dataclasses.replace(recipe.model, cond="text", text_dim=12, text_tokens=2)
    one = dataclasses.replace(recipe.pyramid, resolution=tuple(recipe.pyramid.level_resolution(0)))
    with pytest.raises(ValueError, match="model.cond"):
        HierarchicalSampler(net, recipe.diffusion, recipe.sample, guide=HPDMNet(one, text))
