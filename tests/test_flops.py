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
