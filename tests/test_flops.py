"""Counted FLOPs: the analytic count equals torch's FlopCounterMode, and adaptive computation saves as predicted."""

import pytest
import torch
from conftest import tiny_recipe, tiny_toml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hpdm_cli.model import HPDMNet
from hpdm_cli.model.flops import block_level_flops, forward_flops, fusion_level_flops, fusion_pair_flops
from hpdm_cli.pyramid import sample_nested_offsets


def counted(recipe, B=2):
    net = HPDMNet(recipe.pyramid, recipe.model)
    L = recipe.pyramid.num_levels
    off = sample_nested_offsets(recipe.pyramid, B)
    x = torch.randn(B, L, 3, *recipe.pyramid.patch)
    c = torch.randn(B, recipe.model.text_tokens, recipe.model.text_dim) if recipe.model.cond == "text" \
        else torch.zeros(B, dtype=torch.long)
    # The math SDPA backend decomposes attention into counted matmuls on the CPU.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc, torch.no_grad():
        net(x, torch.zeros(B, L), off, c)
    return fc.get_total_flops() / B


@pytest.mark.parametrize("model", [dict(load="none"), dict(load="linear"), dict(load=[1, 3, 2, 3]),
                                   dict(fusion="shallow"), dict(fusion_coords=False), dict(fusion_edges=True),
                                   dict(cond="text", text_dim=12, text_tokens=3), dict(fusion="none"),
                                   dict(cond="text", text_dim=12, text_tokens=3, text_whitening=True),
                                   dict(interface_conv=True)])
def test_analytic_flops_equal_counted_flops(model):
    recipe = tiny_recipe(**model)
    assert forward_flops(recipe.pyramid, recipe.model)["total"] == counted(recipe)


def test_adaptive_computation_flop_drop_is_as_predicted():
    full, adaptive = tiny_recipe(load="none"), tiny_recipe(load=[1, 1, 2, 3])
    saved = counted(full) - counted(adaptive)
    blk = block_level_flops(full.pyramid, full.model)
    fus = fusion_level_flops(full.pyramid, full.model)
    pair = fusion_pair_flops(full.pyramid, full.model)
    # none: 4 blocks x 3 levels = 12 block-levels, 4 x 2 projections, 4 x 3 sampled pairs;
    # the load [1,1,2,3]: 7 block-levels, 0+0+1+2 = 3 projections, 0+0+1+3 = 4 pairs.
    assert saved == (12 - 7) * blk + (8 - 3) * fus + (12 - 4) * pair
    assert counted(adaptive) < 0.7 * counted(full)


def test_bench_row_flops_and_mfu(monkeypatch):
    import hpdm_cli.drivers.bench as bench
    from hpdm_cli.model.flops import train_step_flops
    rec = tiny_toml()
    monkeypatch.setattr(bench, "peak_flops", lambda device, precision: 1e12)
    row = bench.bench_training(rec, steps=1, warmup=0, batch=2, precisions=["fp32"])[0]
    assert row["TFLOP_per_video"] == pytest.approx(train_step_flops(rec.pyramid, rec.model) / 1e12)
    assert row["MFU_%"] == pytest.approx(100 * row["TFLOPs"] * 1e12 / 1e12)


def test_peak_memory_is_in_gib(monkeypatch):
    import hpdm_cli.drivers.bench as bench
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2 ** 30)
    assert bench._peak_mem_gib(torch.device("cuda")) == pytest.approx(3.0)


def test_h200_peaks(monkeypatch):
    import hpdm_cli.drivers.bench as bench
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert bench.peak_flops(torch.device("cuda"), "bf16") == pytest.approx(989.4e12)
    assert bench.peak_flops(torch.device("cuda"), "tf32") == pytest.approx(494.7e12)


def test_train_step_is_three_forwards():
    from hpdm_cli.model.flops import forward_flops, train_step_flops
    rec = tiny_toml()
    assert train_step_flops(rec.pyramid, rec.model) == 3 * forward_flops(rec.pyramid, rec.model)["total"]



@pytest.mark.parametrize("self_condition, prob", [(False, 0.9), (True, 0.0), (True, 1.0)])
def test_a_training_step_counts_the_self_conditioning_pass_it_runs(self_condition, prob):
    """`train_step_flops` against FlopCounterMode over edm_loss + backward, the self-conditioning pass included
    (probability 0 or 1: every step alike); the first layer's backward has no input gradient, so the count is a
    little below three forwards."""
    import dataclasses

    from hpdm_cli.diffusion.edm import edm_loss
    from hpdm_cli.model.flops import train_step_flops
    recipe = tiny_recipe(resolution=(8, 16, 16), self_condition=self_condition)
    diff = dataclasses.replace(recipe.diffusion, self_cond_prob=prob)
    net, B, L = HPDMNet(recipe.pyramid, recipe.model), 2, recipe.pyramid.num_levels
    x = torch.rand(B, L, 3, *recipe.pyramid.patch) * 2 - 1
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        edm_loss(net, x, sample_nested_offsets(recipe.pyramid, B), diff, torch.zeros(B, dtype=torch.long),
                 generator=torch.Generator().manual_seed(0), self_condition=self_condition).loss.backward()
    expected = train_step_flops(recipe.pyramid, recipe.model, self_cond_prob=prob)
    assert fc.get_total_flops() / B == pytest.approx(expected, rel=0.02)
    plain = 3 * forward_flops(recipe.pyramid, recipe.model)["total"]
    if self_condition and prob == 1.0:
        assert expected > 1.3 * plain                  # the pass is a whole forward: ~4 forwards, not 3
        half = train_step_flops(recipe.pyramid, recipe.model, self_cond_prob=0.5)
        assert half == pytest.approx((plain + expected) / 2, abs=1)   # the expectation over the draws


def test_the_timing_condition_is_of_the_models_kind():
    """`hpdm bench` and the profiler feed a class model class ids, a text model [B, T, E] states, others nothing."""
    from types import SimpleNamespace

    from hpdm_cli.drivers.bench import stand_in_condition
    cpu = torch.device("cpu")
    ids = stand_in_condition(SimpleNamespace(cond="class"), 3, cpu)
    assert ids.dtype == torch.long and ids.shape == (3,)
    text = stand_in_condition(SimpleNamespace(cond="text", text_tokens=5, text_dim=7), 3, cpu)
    assert text.is_floating_point() and text.shape == (3, 5, 7)
    assert stand_in_condition(SimpleNamespace(cond="none"), 3, cpu) is None
