"""The CPU-checkable parts of the GPU benchmark scripts in benchmarks/: FLOP counting, carried wheels,
the peer's shape mapping, the memory chart's dry run, DDP efficiency and the summary table."""

import json
import math
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import background_tiles  # noqa: E402
import border_pixels  # noqa: E402
import carried  # noqa: E402
import cond_token_probe  # noqa: E402
import prompt_geometry  # noqa: E402
import context_vs_caption  # noqa: E402
import ddp_scaling  # noqa: E402
import graphs_check  # noqa: E402
import mean_motion  # noqa: E402
import memory_vs_resolution as mvr  # noqa: E402
import peer_rin  # noqa: E402
import profile_train  # noqa: E402
import prompt_word_swap  # noqa: E402
import quality_table  # noqa: E402
import speed_summary  # noqa: E402

from hpdm_cli.recipe import load_recipe  # noqa: E402
from conftest import MeanColourFeatures  # noqa: E402

ROOT = BENCH.parent


@pytest.mark.parametrize("groups", [1, 16])
def test_step_flops_count_convolution_backward_as_twice_the_forward(groups):
    conv = torch.nn.Conv2d(16, 16, 3, padding=1, groups=groups, bias=False)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    forward = 2 * 2 * 8 * 8 * 16 * (16 // groups) * 9                    # 2 * outputs * inputs per output
    assert carried.count_step_flops(lambda: conv(x)) == forward
    # Input and weight gradients each cost one forward convolution, whatever the groups.
    assert carried.count_step_flops(lambda: conv(x).sum().backward()) == 3 * forward


def test_wheels_for_matches_normalised_names(tmp_path):
    for name in ("rin_pytorch-0.8.0-py3-none-any.whl", "ema_pytorch-0.8.3-py3-none-any.whl", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    wheels, missing = carried.wheels_for(["rin-pytorch", "ema-pytorch", "beartype"], tmp_path)
    assert [w.name for w in wheels] == ["rin_pytorch-0.8.0-py3-none-any.whl", "ema_pytorch-0.8.3-py3-none-any.whl"]
    assert missing == ["beartype"]
    assert carried.wheels_for(["rin-pytorch"], tmp_path / "absent") == ([], ["rin-pytorch"])


@pytest.fixture
def scratch_site(tmp_path, monkeypatch):
    """A scratch install folder; sys.path, PYTHONPATH and sys.modules are restored afterwards."""
    monkeypatch.setenv("HPDM_BENCH_SITE", str(tmp_path / "site"))
    monkeypatch.setenv("PYTHONPATH", "")
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for k in set(sys.modules) - before:
        del sys.modules[k]


def _wheel(folder: Path, dist: str, module: str, source: str) -> Path:
    """A minimal pure-Python wheel providing `module`."""
    path = folder / f"{dist.replace('-', '_')}-1.0-py3-none-any.whl"
    info = f"{dist.replace('-', '_')}-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}.py", source)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", f"{module}.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


def test_ensure_wheels_installs_a_missing_module_into_the_scratch_folder(scratch_site):
    wheels = scratch_site / "whl"
    wheels.mkdir()
    _wheel(wheels, "hpdm-fake-peer", "hpdm_fake_peer", "VALUE = 7\n")
    assert carried.ensure_wheels({"hpdm_fake_peer": "hpdm-fake-peer", "json": "unused"}, wheels) == \
        ["hpdm_fake_peer-1.0-py3-none-any.whl"]
    import hpdm_fake_peer
    assert hpdm_fake_peer.VALUE == 7
    assert Path(hpdm_fake_peer.__file__).parent == scratch_site / "site"
    assert str(scratch_site / "site") in sys.path[0] and str(scratch_site / "site") in carried.os.environ["PYTHONPATH"]
    assert carried.ensure_wheels({"hpdm_fake_peer": "hpdm-fake-peer"}, wheels) == []     # already there


def test_ensure_wheels_names_the_missing_wheel_and_how_to_stage_it(scratch_site):
    with pytest.raises(carried.CarriedError, match=r"hpdm-absent-dist not installed and no wheel .*stage_wheels\.sh"):
        carried.ensure_wheels({"hpdm_absent_module": "hpdm-absent-dist"}, scratch_site)


def test_an_unimportable_trainer_only_package_is_stood_in_for(scratch_site):
    src = scratch_site / "src"
    (src / "hpdm_fake_broken").mkdir(parents=True)
    (src / "hpdm_fake_broken" / "__init__.py").write_text("raise RuntimeError('built for another torch')\n")
    (src / "hpdm_fake_model.py").write_text(
        "from hpdm_fake_broken import transforms as T, utils\n"
        "DEFAULT = T.ToTensor()\n"
        "class Model:\n    width = 3\n")
    sys.path.insert(0, str(src))
    mod, stood_in = carried.import_peer_module("hpdm_fake_model", trainer_only=("hpdm_fake_broken",))
    assert mod.Model.width == 3 and stood_in == ["hpdm_fake_broken"]
    # An importable package is used as it is.
    mod, stood_in = carried.import_peer_module("hpdm_fake_model", trainer_only=("json",))
    assert stood_in == [] and not isinstance(sys.modules["json"], carried._StandIn)


def test_peer_shape_is_one_level_of_the_ucf_recipe():
    r = load_recipe(ROOT / "recipes" / "ucf.toml", [])
    m, p = r.model, peer_rin.PEER_FULL
    tokens = math.prod(a // b for a, b in zip(r.pyramid.patch, m.tokenizer))
    assert (p["image_size"] // p["patch_size"]) ** 2 == tokens == 4096
    assert p["channels"] * p["patch_size"] ** 2 == m.channels * math.prod(m.tokenizer)
    assert (p["dim"], p["dim_latent"], p["num_latents"]) == (m.interface_dim, m.latent_dim, m.num_latents)
    assert (p["depth"], p["latent_self_attn_depth"]) == (m.num_blocks, m.compute_layers)
    assert p["heads"] * p["dim_head"] == m.latent_dim and p["dim_head"] == m.head_dim
    assert not p["patches_self_attn"] and p["latent_token_time_cond"]


def _row(side, compile_, tflops, counted, **kw):
    row = dict(side=side, compile=compile_, batch=2, items_per_s=1.0, TFLOP_per_item=tflops,
               TFLOP_per_item_counted=counted, TFLOPs=tflops, TFLOPs_counted=counted, peak_mem_GiB=1.0)
    row["MFU_%"] = 1.0
    return {**row, **kw}


def test_peer_ratios_only_where_both_sides_ran():
    rows = [_row("ours", False, 3.0, 2.0), _row("peer", False, 2.0, 2.0),
            _row("ours", True, 4.0, 4.0), {"side": "peer", "compile": True, "error": "timed out after 200 s"}]
    assert peer_rin.ratios(rows) == {"eager": (1.5, 1.0)}
    text = peer_rin.table(rows)
    assert "ERROR: timed out after 200 s" in text and "eager: 1.50x" in text and "compiled:" not in text


def test_peer_modes_with_cuda_graphs_are_named_and_compared_with_the_compiled_peer():
    rows = [_row("ours", True, 4.0, 4.0, mode="compiled"), _row("peer", True, 2.0, 2.0, mode="compiled"),
            _row("ours", True, 5.0, 5.0, mode="graphs"), _row("peer", True, 4.0, 4.0, mode="graphs")]
    assert peer_rin.ratios(rows) == {"compiled": (2.0, 2.0), "graphs": (1.25, 1.25), "graphs vs compiled": (2.5, 2.5)}
    assert "graphs" in peer_rin.table(rows) and "graphs vs compiled: 2.50x" in peer_rin.table(rows)
    assert [peer_rin.mode_name(m) for m in (None, "default", "reduce-overhead", "max-autotune-no-cudagraphs")] == [
        "eager", "compiled", "graphs", "autotune"]
    with pytest.raises(SystemExit):
        peer_rin.main(["--modes", "eager,turbo"])


def test_peer_rin_times_our_side_alone_without_the_peers_wheels(tmp_path):
    """--sides ours needs no rin-pytorch wheels; a recipe override reaches our model (a toy step on the CPU)."""
    js = tmp_path / "ours.json"
    assert peer_rin.main(["--tiny", "--sides", "ours", "--modes", "eager", "--wheels", str(tmp_path / "none"),
                          "--override", "model.bf16_streams=true", "--json", str(js)]) == 0
    rows = json.loads(js.read_text())["rows"]
    assert [r["side"] for r in rows] == ["ours"] and "error" not in rows[0] and rows[0]["items_per_s"] > 0
    assert peer_rin.main(["--tiny", "--sides", "ours", "--modes", "eager", "--wheels", str(tmp_path / "none"),
                          "--override", "model.no_such_key=1", "--json", str(js)]) == 1   # a row failed
    assert "model.no_such_key" in json.loads(js.read_text())["rows"][0]["error"]     # the override is read


def test_our_flops_are_counted_over_a_small_eager_step_and_per_video_do_not_depend_on_the_batch(monkeypatch):
    """The eager counting pass runs at most COUNT_BATCH videos whatever the timed batch (a large eager step
    ran out of memory before the compiled one was timed), and its count per video is the full batch's."""
    from hpdm_cli.drivers import bench
    batches, real = [], bench.bench_training

    def spy(rec, **kw):
        batches.append(kw["batch"])
        return real(rec, **kw)
    monkeypatch.setattr(bench, "bench_training", spy)
    a = type("A", (), dict(tiny=True, override=[], recipe=str(ROOT / "recipes" / "ucf.toml"), batch=5,
                           precision="fp32", compile=None, steps=1, warmup=0))()
    row = peer_rin.worker_ours(a)
    assert batches == [peer_rin.COUNT_BATCH, 5]                   # the count, then the timed steps
    monkeypatch.setattr(peer_rin, "COUNT_BATCH", 5)
    again = peer_rin.worker_ours(a)
    assert batches[2:] == [5, 5]
    assert again["TFLOP_per_item_counted"] == pytest.approx(row["TFLOP_per_item_counted"], rel=1e-9)


def test_update_bench_times_the_recipes_update_eager_and_compiled(tmp_path, monkeypatch, capsys):
    """A row per recipe and mode over all the recipe's parameter tensors; compiled really compiles (here on the
    CPU, through aot_eager) and its ratio line is printed."""
    import torch._dynamo as dynamo
    import update_bench
    from hpdm_cli.train import optim
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda f, **k: compile_(f, backend="aot_eager", **k))
    monkeypatch.setattr(optim, "COMPILED_DEVICES", optim.COMPILED_DEVICES)       # main widens it: undone after
    optim._compiled.cache_clear()
    dynamo.reset()
    dynamo.utils.counters.clear()
    try:
        js = tmp_path / "rows.json"
        assert update_bench.main(["tiny", "--steps", "2", "--warmup", "1", "--compile-on-cpu",
                                  "--json", str(js)]) == 0
        graphs = dynamo.utils.counters["stats"]["unique_graphs"]
    finally:
        optim._compiled.cache_clear()
        dynamo.reset()
    rows = json.loads(js.read_text())["rows"]
    from hpdm_cli.train.step import build_model
    tensors = len(list(build_model(load_recipe(ROOT / "recipes" / "tiny.toml")).parameters()))
    assert [(r["mode"], r["tensors"]) for r in rows] == [("eager", tensors), ("compiled", tensors)]
    assert all(r["ms"] > 0 and r["first_s"] > 0 for r in rows)
    assert graphs == 2                                    # LAMB's two groups (the EMA is never compiled)
    assert "tiny: eager ÷ compiled, a step" in capsys.readouterr().out


def test_profile_kinds_sum_kernel_time_by_kind_of_kernel():
    """Kernel names of each kind land in it (a compiled matmul template with the products, not the fused kernels),
    and the shares over kernels with device time sum to 1."""
    from types import SimpleNamespace as E
    names = {"sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn": "matrix products", "nvjet_tst_192x64": "matrix products",
             "triton_tem_fused_addmm_3": "matrix products", "flash_fwd_kernel": "attention",
             "triton_per_fused_native_layer_norm_7": "fused by torch.compile",
             "void at::native::multi_tensor_apply_kernel<...>": "optimiser (multi-tensor)",
             "void at::native::vectorized_elementwise_kernel<4, ...>": "element-wise (eager)",
             "Memcpy DtoD (Device -> Device)": "copies and casts", "some_kernel": "other",
             # as an H100 named them (docs/benchmarks.md, fortieth visit), and a compiled LAMB step's combo kernel
             "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_3_64x64x128": "attention",
             "nvjet_sm90_tst_128x256_64x4_1x2_h_bz_coopA_bias_TNN": "matrix products",
             "triton_red_fused__to_copy_add_mul_native_layer_norm_native_layer_norm_backward_3": "fused by torch.compile",
             "triton_poi_fused_add_mul_select_slice_backward_view_25": "fused by torch.compile",
             "triton_for_fused_0": "optimiser (multi-tensor)"}
    assert {n: profile_train.kind_of(n) for n in names} == names
    rows = profile_train.by_kind([E(key="triton_poi_fused_mul_0", device_time_total=30.0, count=3),
                                  E(key="ampere_bf16_s16816gemm", device_time_total=10.0, count=1),
                                  E(key="triton_red_fused_sum_1", device_time_total=60.0, count=2),
                                  E(key="cpu_op", device_time_total=0.0, count=5)])
    assert rows == [("fused by torch.compile", 0.9, 5), ("matrix products", 0.1, 1)]
    assert profile_train.by_kind([]) == []


def test_dry_run_writes_the_png_and_the_json(tmp_path):
    png, js = tmp_path / "m.png", tmp_path / "m.json"
    assert mvr.main(["--dry-run", "--png", str(png), "--json", str(js)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == 960 and int.from_bytes(data[20:24], "big") == 560
    out = json.loads(js.read_text())
    assert set(out["points"]) == {"hpdm", "unet3d"}
    assert [r["status"] for r in out["points"]["unet3d"]][:3] == ["ok", "ok", "oom"]
    assert all(r["status"] == "ok" for r in out["points"]["hpdm"])


def test_peer_ratios_set_counted_flops_against_counted_flops():
    """The second ratio is ours counted over the peer's counted TFLOP/s, the first ours analytic over the peer's
    (the peer's analytic figure, where it differs, takes no part in either)."""
    rows = [_row("ours", False, 6.0, 3.0), _row("peer", False, 4.0, 2.0, TFLOPs_counted=1.5)]
    assert peer_rin.ratios(rows) == {"eager": (1.5, 2.0)}


def test_ddp_efficiency_from_stats_windows(tmp_path):
    stats = tmp_path / "stats.jsonl"
    stats.write_text("\n".join(json.dumps(r) for r in [
        {"step": 10, "videos_per_s": 5.0}, {"step": 20, "videos_per_s": 90.0}, {"step": 25, "note": "resumed"},
        {"step": 30, "videos_per_s": 100.0}, {"step": 40, "videos_per_s": 94.0}]) + "\n")
    rates = ddp_scaling.window_rates(stats, skip=1)
    assert rates == [90.0, 100.0, 94.0] and ddp_scaling.median(rates) == 94.0
    assert ddp_scaling.median([1.0, 3.0]) == 2.0
    assert ddp_scaling.efficiency(180.0, 100.0, 2) == pytest.approx(0.9)


def test_ddp_runs_use_synthetic_data_and_the_global_batch():
    a = ddp_scaling.argparse.Namespace(videos_per_rank=8, batch=16, steps=60, log_every=10, precision="bf16",
                                       compile=True, tiny=False, override=["model.fusion=shallow"])
    o = ddp_scaling.overrides(a, 2)
    assert "data.path=synthetic:shapes" in o and "data.synthetic_videos=16" in o
    assert "train.batch_size=32" in o and "train.compile=true" in o and o[-1] == "model.fusion=shallow"
    load_recipe(ROOT / "recipes" / "ucf.toml", o)                         # every override is a valid key


def test_summary_names_failed_and_missing_parts(tmp_path):
    (tmp_path / "peer_rin.json").write_text(json.dumps({
        "rows": [_row("ours", False, 4.5, 4.4, **{"MFU_%": 20.5}), {"side": "peer", "compile": False,
                                                                    "error": "out of memory: ..."}],
        "ratios": {}}))
    (tmp_path / "sampling.json").write_text(json.dumps([{
        "overlap": "hw", "cache": True, "batch": 16, "steps": "8/4/2", "s_per_video": 1.25,
        "full_steps": "128/64/32", "s_per_video_full_steps_est": 19.5, "peak_mem_GiB": 27.0}]))
    (tmp_path / "draw_cost.json").write_text(json.dumps({"batch": 16, "cpu_ms": 41.0, "to_device_ms": 43.5,
                                                        "device": "cuda", "device_noise_ms": 1.5}))
    (tmp_path / "sampling_compiled_held_streams.json").write_text(json.dumps([{
        "overlap": "hw", "cache": True, "batch": 16, "steps": "8/4/2", "s_per_video": 0.5, "compiled": True,
        "compile_s": 110.0, "context_GiB": 49.0, "full_steps": "128/64/32", "s_per_video_full_steps_est": 9.25,
        "peak_mem_GiB": 60.0}]))
    text = speed_summary.summary(tmp_path)
    assert "compiled (compile 110 s apart), context held 49 GiB, bf16 residual streams: 0.500 s/video" in text
    assert "sampling: no sampling_compiled_held.json" in text
    assert "random draw (batch 16): 41.0 ms on the CPU, 43.5 ms onto cuda; noise drawn on the device: 1.5 ms" in text
    assert "peer eager" in text and "failed: out of memory" in text
    assert "est. 19.50 s/video at 128/64/32" in text
    assert "memory: no memory_vs_resolution.json" in text


def test_summary_gives_the_speedup_over_the_first_baseline_at_the_same_steps_only(tmp_path):
    row = lambda steps, s, **kw: {"overlap": "hw", "cache": True, "batch": 16, "steps": steps, "s_per_video": s,
                                  "full_steps": "128/64/32", "s_per_video_full_steps_est": s, "peak_mem_GiB": 1.0, **kw}
    (tmp_path / "sampling_baseline.json").write_text(json.dumps([row("128/64/32", 24.0)]))
    (tmp_path / "sampling_held.json").write_text(json.dumps([row("8/4/2", 2.0, peak_mem_GiB=None)]))   # CPU: null
    (tmp_path / "sampling_compiled_held.json").write_text(json.dumps([row("128/64/32", 10.0, compiled=True,
                                                                          compile_s=100.0)]))
    (tmp_path / "sampling.json").write_text(json.dumps([row("8/4/2", 1.0)]))
    text = speed_summary.summary(tmp_path)
    assert "the first baseline's code, hw cache=True batch 16: 24.000 s/video at 128/64/32 steps" in text
    assert text.count("the first baseline / this") == 1                     # 8/4/2 has no baseline row to match
    assert "the first baseline / this: 2.40x faster, both timed at 128/64/32 steps" in text
    assert "2.000 s/video at 8/4/2 steps, est. 2.00 s/video at 128/64/32, peak n/a GiB" in text


def test_summary_names_the_largest_trained_size_and_the_first_that_failed(tmp_path):
    """The memory lines: per model the last size that trained and the first one out of memory (or failed)."""
    point = lambda s, status, gib=None: {"resolution": [16, s, s], "status": status, "peak_mem_GiB": gib}
    (tmp_path / "memory_vs_resolution.json").write_text(json.dumps({"points": {
        "unet3d": [point(64, "ok", 10.0), point(128, "ok", 40.0), point(256, "oom"), point(512, "error")],
        "hpdm": [point(64, "ok", 5.0), point(512, "ok", 30.0)]}}))
    text = speed_summary.summary(tmp_path)
    assert "memory unet3d: largest trained 16x128x128 at 40.0 GiB, oom at 16x256x256" in text
    assert "memory hpdm: largest trained 16x512x512 at 30.0 GiB, no OOM up to the largest size tried" in text


def test_quality_table_has_a_row_per_report_and_skips_curve_steps(tmp_path):
    scores = {"colour": 0.924, "shape": 0.268, "direction": 0.036, "all": 0.005}
    report = {"step": 3427, "faithfulness": {"generated": scores},
              "fvd": {"generated": 1623.68, "real_floor": 31.96},
              "levels": {"level0_generated": {"colour": 0.5, "shape": 0.31, "direction": 0.12},
                         "upscaled_from_real_level0": {"colour": 1.0, "shape": 0.94, "direction": 1.0}},
              "loss_gap": {"true": 0.0762, "null": 0.0772}}
    for where in ("c", "c/curve/step-00000500"):
        (tmp_path / where).mkdir(parents=True)
        (tmp_path / where / "report.json").write_text(json.dumps(report))
    lines = quality_table.table([str(tmp_path)]).splitlines()
    assert len(lines) == 3 and lines[0].startswith("| run | step | FVD / floor")
    assert lines[2] == ("| c | 3427 | 1623.7 / 32.0 | 92.4% | 26.8% | 3.6% | 0.5% | 50 / 31 / 12 | 100 / 94 / 100 "
                        "| 0.0762 / 0.0772 |")


@pytest.mark.parametrize("noise_on", ["device", "host"])
def test_bench_training_draws_noise_as_the_recipe_says(noise_on):
    """`hpdm bench` times the step as training runs it, noise draw included; the row names where it was drawn."""
    from hpdm_cli.drivers.bench import bench_training
    rec = load_recipe(ROOT / "recipes" / "tiny.toml", [f'train.noise_on="{noise_on}"'])
    row = bench_training(rec, steps=1, warmup=0, batch=2, precisions=["fp32"])[0]
    assert row["noise_on"] == noise_on and row["batch"] == 2 and row["videos_per_s"] > 0


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_bench_training_runs_the_self_conditioning_pass_it_counts(prob, monkeypatch):
    """A self-conditioning recipe's timed step runs the forward-only first pass as training does (here always or never),
    and its FLOP count is the one of the step it ran."""
    from hpdm_cli.drivers.bench import bench_training
    from hpdm_cli.model.flops import train_step_flops
    from hpdm_cli.model.network import HPDMNet
    rec = load_recipe(ROOT / "recipes" / "tiny.toml", ["model.self_condition=true", f"diffusion.self_cond_prob={prob}"])
    calls = []
    forward = HPDMNet.forward
    monkeypatch.setattr(HPDMNet, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    row = bench_training(rec, steps=2, warmup=0, batch=2, precisions=["fp32"])[0]
    assert len(calls) == (4 if prob else 2)                                 # two steps, one or two passes each
    assert row["TFLOP_per_video"] == pytest.approx(train_step_flops(rec.pyramid, rec.model,
                                                                    self_cond_prob=prob) / 1e12)


@pytest.mark.parametrize("optimizer,kind", [("adamw", "AdamW"), ("lamb", "Lamb")])
def test_bench_training_steps_as_training_does_clip_optimiser_and_ema(monkeypatch, optimizer, kind):
    """The timed step is training's: gradients clipped at train.grad_clip, the recipe's optimiser, the EMA moved."""
    import torch
    from hpdm_cli.drivers.bench import bench_training
    from hpdm_cli.train.optim import EMA
    seen = {"opt": [], "ema": 0, "clip": [], "keep": []}

    def ema_update(self, net, keep=None):                 # skippable on the device, as the training loop applies it
        seen["ema"] += 1
        seen["keep"].append(keep)
    monkeypatch.setattr(EMA, "update", ema_update)
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, c, **k: seen["clip"].append(c) or clip(p, c, **k))
    rec = load_recipe(ROOT / "recipes" / "tiny.toml", [f'train.optimizer="{optimizer}"', "train.grad_clip=0.5",
                                                       "train.ema_halflife_steps=10"])
    import hpdm_cli.train.optim as optim
    make = optim.make_optimizer

    def record(groups, t):
        seen["opt"].append(make(groups, t))
        return seen["opt"][-1]
    monkeypatch.setattr(optim, "make_optimizer", record)
    bench_training(rec, steps=2, warmup=1, batch=2, precisions=["fp32"])
    assert [type(o).__name__ for o in seen["opt"]] == [kind] and seen["opt"][0].param_groups[0]["lr"] == rec.train.lr
    assert seen["ema"] == 3 and seen["clip"] == [0.5] * 3                      # one warm-up and two timed steps
    assert all(isinstance(k, torch.Tensor) and k.item() == 1.0 for k in seen["keep"])
    assert isinstance(seen["opt"][0].found_inf, torch.Tensor) and seen["opt"][0].found_inf.item() == 0.0


def test_bench_training_times_the_update_apart(monkeypatch):
    """update_s is the clip + optimiser + EMA part of each timed step: a slower EMA update shows in it, and in the
    step, by the same amount; the forward and backward are outside it."""
    import time
    from hpdm_cli.drivers.bench import bench_training
    from hpdm_cli.train.optim import EMA
    rec = load_recipe(ROOT / "recipes" / "tiny.toml", ["train.ema_halflife_steps=10"])
    base = bench_training(rec, steps=2, warmup=1, batch=1, precisions=["fp32"])[0]
    assert 0 < base["update_s"] < base["step_s"] and base["update_%"] == pytest.approx(
        100 * base["update_s"] / base["step_s"])
    import hpdm_cli.train.step as step
    update, fb = EMA.update, step.forward_backward
    monkeypatch.setattr(EMA, "update", lambda self, net, keep=None: (time.sleep(0.3), update(self, net, keep)))
    monkeypatch.setattr(step, "forward_backward", lambda *a, **k: (time.sleep(0.3), fb(*a, **k))[1])
    slow = bench_training(rec, steps=2, warmup=1, batch=1, precisions=["fp32"])[0]
    assert 0.3 <= slow["update_s"] < 0.3 + base["update_s"] + 0.25           # the EMA's sleep, not the forward's
    assert slow["step_s"] - slow["update_s"] >= 0.3
    assert 0 < base["first_step_s"] and slow["first_step_s"] >= 0.6          # the warm-up step, both sleeps in it
    assert base["compile_scope"] == "model"
    none = bench_training(rec, steps=1, warmup=0, batch=1, precisions=["fp32"])[0]
    assert none["first_step_s"] is None                                     # no warm-up: not timed apart


def test_bench_ablations_time_the_papers_table2_rows_each_as_its_setting_builds_it():
    """`hpdm bench --ablations`: one row per Table 2 change; counted FLOPs and parameters move as each change implies."""
    from hpdm_cli.drivers.bench import bench_training
    rec = load_recipe(ROOT / "recipes" / "tiny.toml")
    rows = {r["variant"]: r for r in bench_training(rec, steps=1, warmup=0, batch=2, ablations=True,
                                                     precisions=["fp32"])}
    assert list(rows) == ["default", "no adaptive computation", "shallow fusion", "context detach", "no coordinates"]
    flops = {k: r["TFLOP_per_video"] for k, r in rows.items()}
    params = {k: r["params_M"] for k, r in rows.items()}
    assert flops["no adaptive computation"] > flops["default"] > flops["shallow fusion"]
    assert flops["no coordinates"] < flops["default"] and params["no coordinates"] < params["default"]
    assert flops["context detach"] == flops["default"] and params["context detach"] == params["default"]
    assert all(r["videos_per_s"] > 0 for r in rows.values())


def test_prompt_word_swap_changes_one_object_word_and_keeps_the_background():
    from hpdm_cli.eval.faithfulness import parse_shapes_caption
    cap = "a green diamond moving down on a green background"
    for word in ("colour", "shape", "direction"):
        new = prompt_word_swap.swapped(cap, word)
        before, after = parse_shapes_caption(cap), parse_shapes_caption(new)
        assert [k for k in before if before[k] != after[k]] == [word], (word, new)


def test_mean_motion_centroids_follow_the_rendered_object():
    """The object-colour centroid of a real clip moves as the renderer's centres do."""
    from hpdm_cli.data.shapes import render_shapes_video
    for index in range(8):
        video, _, _, at = render_shapes_video(index, frames=4, height=16, width=16, split="train")
        clip = torch.from_numpy(video).permute(3, 0, 1, 2).float() / 127.5 - 1
        got = mean_motion.colour_centroids(clip, at["colour_rgb"], at["background_rgb"])
        want = torch.tensor(at["centres"], dtype=got.dtype)
        moved, travelled = got[-1] - got[0], want[-1] - want[0]          # a shape's centroid is not its centre
        # within a quarter of the travel (shapes cut by the frame's edge pull the centroid inwards)
        assert ((moved - travelled).abs() <= 0.25 * travelled.abs() + 0.3).all(), (index, moved, travelled)
        assert travelled.abs().max() > 2


def test_mean_motion_track_share_is_the_projected_share_of_the_data_displacement():
    truth = [(-4.0, 0.0), (4.0, 0.0), (0.0, -4.0), (0.0, 4.0)]
    assert mean_motion.track_share(truth, truth) == pytest.approx(1.0)
    assert mean_motion.track_share([(0.1, -0.1)] * 4, truth) == pytest.approx(0.0)      # one still mean for all
    assert mean_motion.track_share([(-2.0, 3.0), (2.0, -3.0), (1.0, -2.0), (1.0, 2.0)], truth) == pytest.approx(0.5)
    assert mean_motion.track_share([(x, -y) for x, y in truth], truth) == pytest.approx(0.0)   # half the wrong way
    assert mean_motion.track_share([(-x, -y) for x, y in truth], truth) == pytest.approx(-1.0)


def test_mean_motion_every_keeps_the_steps_asked_and_the_last_checkpoint():
    run = [f"runs/x/checkpoints/ckpt-{s:08d}" for s in (250, 500, 750, 1000, 1250, 1317)]
    assert mean_motion.every_steps(run, 500) == [run[1], run[3], run[5]]
    assert mean_motion.every_steps(run, 250) == run[:5] + [run[5]]
    assert mean_motion.every_steps(run, 0) == run
    assert mean_motion.every_steps(["a.safetensors", run[0], run[2]], 1000) == ["a.safetensors", run[2]]   # not a step: kept


def test_mean_motion_reads_the_packaged_models_motion(capsys):
    """The packaged model's noise-averaged base level moves each direction's object most of the data's way."""
    ckpt = str(ROOT / "hpdm_cli" / "assets" / "shapes-t2v.safetensors")
    # the same weights twice, as a learning curve over checkpoints: four directions and a track share each
    assert mean_motion.main([ckpt, ckpt, "--prompts", "2", "--noise", "16", "--tables", "none"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == 10
    for half in (rows[:5], rows[5:]):
        assert [r.get("direction") for r in half] == ["left", "right", "up", "down", None]
        assert {(r["ckpt"], r["step"]) for r in half} == {(ckpt, rows[0]["step"])}
        assert half[-1]["track"] > 0.5, rows
        assert min(half[-1]["track_h"], half[-1]["track_v"]) > 0.5, rows        # both axes learnt
        per_axis = [mean_motion.track_share([r["model_dx_dy"] for r in pair], [r["data_dx_dy"] for r in pair])
                    for pair in (half[0:2], half[2:4])]
        assert [half[-1]["track_h"], half[-1]["track_v"]] == pytest.approx(per_axis, abs=2e-3)
        assert half[-1]["track"] == pytest.approx(sum(per_axis) / 2, abs=2e-3)
    assert rows[4]["track"] == rows[9]["track"]                        # the same noise for every checkpoint


@pytest.mark.parametrize("word", cond_token_probe.WORDS)
def test_cond_token_probe_swaps_exactly_one_word(word):
    from hpdm_cli.eval.faithfulness import parse_shapes_caption
    caption = "a red circle moving left on a black background"
    before, after = parse_shapes_caption(caption), parse_shapes_caption(cond_token_probe.swap_word(caption, word))
    assert {k for k in before if before[k] != after[k]} == {word}


def test_prompt_geometry_finds_the_word_held_close_and_whitening_evens_it_out(tmp_path, capsys):
    """Captions built from one vector per word, the direction words' five times smaller: the centred states hold
    direction swaps closest by far; whitened, every attribute's swaps are about as far apart."""
    from hpdm_cli.data.shapes import shapes_prompts
    from hpdm_cli.eval.faithfulness import parse_shapes_caption
    from hpdm_cli.text.tables import write_table
    g = torch.Generator().manual_seed(0)
    texts = [t for t in shapes_prompts() if parse_shapes_caption(t)["background"] is not None]
    words = {(k, parse_shapes_caption(t)[k]) for t in texts for k in prompt_geometry.ATTRS}
    vec = {w: torch.randn(2, 64, generator=g) * (0.2 if w[0] == "direction" else 1.0) for w in sorted(words)}
    emb = torch.stack([sum(vec[(k, parse_shapes_caption(t)[k])] for k in prompt_geometry.ATTRS) for t in texts])
    table = write_table(tmp_path / "t.safetensors", texts, emb, encoder="minilm-tokens:test@0", spec="minilm-tokens")
    assert prompt_geometry.main([str(table), "--json", str(tmp_path / "g.json")]) == 0
    got = json.loads((tmp_path / "g.json").read_text())
    assert got["captions"] == len(texts) and "| whitened |" in capsys.readouterr().out
    centred, whitened = got["centred"], got["whitened"]
    assert centred["direction"]["mean"] < 0.35 * min(centred[k]["mean"] for k in ("colour", "shape", "background"))
    others = [whitened[k]["mean"] for k in ("colour", "shape", "background")]
    assert 0.7 * min(others) < whitened["direction"]["mean"] < 1.3 * max(others)


def test_cond_token_probe_reads_the_packaged_models_condition(capsys):
    """The encoder holds direction swaps closest; the packaged model's projection keeps them apart."""
    ckpt = str(ROOT / "hpdm_cli" / "assets" / "shapes-t2v.safetensors")
    assert cond_token_probe.main([ckpt, "--tables", "none"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(cond_token_probe.WORDS) <= set(row)
    enc = {w: row[w]["encoder"] for w in cond_token_probe.WORDS}
    assert enc["direction"] < min(enc["colour"], enc["shape"]), enc
    # a model that moves objects as asked tells the directions apart after its projection (a short run that does
    # not: a third of the encoder's distance or less, docs/results.md, section 63)
    assert row["direction"]["tokens"] > 0.6 * enc["direction"], row
    assert all(0 < row[w][k] < 2 for w in cond_token_probe.WORDS for k in ("encoder", "tokens", "norm_vector"))


# ------------------------------------------------------------------------------------------ every script, texture tools

@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.sh")))
def test_every_benchmark_shell_script_parses(script):
    res = subprocess.run(["bash", "-n", str(BENCH / script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_every_benchmark_python_script_compiles(script):
    import py_compile
    import tempfile
    with tempfile.TemporaryDirectory() as d:                              # no __pycache__ left in benchmarks/
        py_compile.compile(str(BENCH / script), cfile=str(Path(d) / "x.pyc"), doraise=True)


def test_the_index_names_every_benchmark_script_and_only_those():
    import re
    listed = set(re.findall(r"`([\w.]+\.(?:py|sh))`", (BENCH / "README.md").read_text(encoding="utf-8")))
    present = {p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh")}
    assert present - listed == set(), "add these to benchmarks/README.md"
    assert listed - present == set(), "benchmarks/README.md names scripts that do not exist"


def test_fvd_edits_change_what_they_name_and_nothing_else():
    import fvd_edits
    from hpdm_cli.data.shapes import render_shapes_video
    from hpdm_cli.drivers.evaluate import EVAL_SEED
    from hpdm_cli.eval.texture import stripe_summary
    R, idx = (16, 64, 64), range(300, 308)
    real = [render_shapes_video(i, frames=16, height=64, width=64, seed=EVAL_SEED, split="heldout")[0] for i in idx]
    assert all(np.array_equal(v, fvd_edits.edited_clip(i, "", R, "heldout", EVAL_SEED)) for i, v in zip(idx, real))
    edited = {e: [fvd_edits.edited_clip(i, e, R, "heldout", EVAL_SEED) for i in idx] for e in fvd_edits.EDITS}
    stripes = {e: stripe_summary(v)["mean"] for e, v in edited.items()}
    assert stripe_summary(real)["mean"] > 0.6 and stripes["flat"] < 0.05
    assert stripes["no stripes"] < stripe_summary(real)["mean"] - 0.15 and stripes["mottled"] < 0.3
    assert abs(stripes["larger 1.1"] - stripe_summary(real)["mean"]) < 0.05          # the background untouched

    from hpdm_cli.data.shapes import shapes_attributes
    colour = np.array(shapes_attributes(idx[0], frames=16, height=64, width=64, seed=EVAL_SEED,
                                        split="heldout")["colour_rgb"])

    def track(v):                                  # (first-to-last centroid distance, mean object area)
        mask = np.abs(v.astype(int) - colour).sum(-1) < 60                  # the object's own colour
        ends = [np.argwhere(mask[t]).mean(0) for t in (0, -1)]
        return float(np.hypot(*(ends[1] - ends[0]))), float(mask.mean())
    (d_real, a_real), (d_half, _), (_, a_big) = (track(v) for v in (real[0], edited["half motion"][0],
                                                                    edited["larger 1.1"][0]))
    assert d_half == pytest.approx(d_real / 2, rel=0.15) and a_big == pytest.approx(1.21 * a_real, rel=0.1)


def test_stripe_toy_references_order_as_the_theory_says():
    """Matched filter > best linear filter > blur on noisy stripes; near exact on clean ones."""
    import stripe_toy
    g = torch.Generator().manual_seed(3)
    clean = stripe_toy.stripes(64, 0.15, g)
    assert stripe_toy.scores(stripe_toy.matched_filter(clean), clean)["r2"] > 0.97       # its grid of 48 x 31
    noisy = clean + 0.3 * torch.randn(clean.shape, generator=g)
    r2 = {name: stripe_toy.scores(f(noisy), clean)["r2"] for name, f in
          (("matched", stripe_toy.matched_filter), ("wiener", lambda y: stripe_toy.wiener(y, 0.15, 0.3)),
           ("blur", lambda y: stripe_toy._blur(y, 1.5)))}
    assert r2["matched"] > 0.7 > 0.4 > r2["wiener"] > 0.15 > r2["blur"]


def test_stripe_toy_variants_build_denoise_and_move_to_a_device():
    """Every toy variant maps [B, 1, 16, 16] to the same shape after .to() (which the mixing must not shadow)."""
    import stripe_toy
    y = torch.randn(2, 1, 16, 16)
    for v in ("plain", "mixing", "glu", "wideconv", "wideconv-glu", "bigpos", "mlp"):
        net, name = stripe_toy.build(v, 1, 4)
        assert net.to("cpu", torch.float64).double()(y.double()).shape == y.shape and name
    with pytest.raises(SystemExit, match="unknown variant"):
        stripe_toy.build("nope", 1, 4)
    net, name = stripe_toy.build("plain", 1, 4, qk_norm=True)                 # --qk-norm reaches every attention
    from hpdm_cli.model.layers import QKNorm
    assert "qk-norm" in name and sum(isinstance(m, QKNorm) for m in net.modules()) == 3   # read, compute, write
    assert net(y).shape == y.shape
    # EDM preconditioning around a non-residual net: c_skip y + c_out F(c_in y), F seeing the input times c_in.
    net, _ = stripe_toy.build("mlp", 1, 4, hidden=8, residual=False)
    seen = []
    net.f.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    edm = stripe_toy.EDM(net, 0.1)
    out = edm(y)
    c_in = 1 / (0.3 ** 2 + 0.1 ** 2) ** 0.5
    assert torch.allclose(seen[0], c_in * y.flatten(1))
    assert torch.allclose(out, 0.01 / 0.1 * y + 0.3 * 0.1 * c_in * net.f(c_in * y.flatten(1)).view_as(y), atol=1e-6)


def test_sigma_split_routes_each_call_by_its_noise_level_and_drops_the_other_experts_latents():
    """High-sigma calls go to the first base level, low-sigma ones to the second; self-conditioning restarts at the switch."""
    import base_level_faithfulness as blf

    class Tag(torch.nn.Module):
        def __init__(self, tag):
            super().__init__()
            self.tag, self.pyramid, self.cfg, self.calls = tag, "pyramid", "cfg", []

        def forward(self, x, c_noise, *args, self_cond=None, **kwargs):
            self.calls.append(self_cond)
            return self.tag

    high, low = Tag("high"), Tag("low")
    net = blf.SigmaSplit(high, low, split=1.0)
    assert (net.pyramid, net.cfg) == ("pyramid", "cfg")
    c = lambda sigma: torch.full((3, 1), math.log(sigma) / 4)                  # EDM's c_noise, all rows alike
    prev = torch.zeros(1)
    assert [net(None, c(s), self_cond=prev) for s in (80.0, 2.0, 0.9, 0.1)] == ["high", "high", "low", "low"]
    assert high.calls == [prev, prev]                   # the first call's latents are its own expert's
    assert low.calls[0] is None and low.calls[1] is prev


def test_heldout_table_keeps_exactly_the_held_out_prompts():
    """A caption is kept when its (colour, shape, direction) is held out, whatever its background; others are not."""
    import heldout_table
    from hpdm_cli.data.shapes import COLOURS, DIRECTIONS, HELDOUT_TRIPLES, SHAPES, is_heldout, shapes_caption
    c, k, d = HELDOUT_TRIPLES[0]
    train = next((c2, k2, d2) for k2 in SHAPES for d2 in DIRECTIONS for c2 in COLOURS if not is_heldout(c2, k2, d2))
    texts = [shapes_caption(*train, "gray"), shapes_caption(c, k, d), shapes_caption(c, k, d, "black"), "a cat"]
    assert heldout_table.heldout_rows(texts) == [1, 2]


def test_compile_cache_round_trips_in_parts_and_returns_the_commands_exit_code(tmp_path, monkeypatch):
    """What torch.compile saved comes back byte for byte from parts of at most --part-mib; old parts go."""
    import compile_cache
    made = bytes(range(256)) * 4096 + b"tail"                          # ~1 MiB, compresses to several parts
    loaded = []
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (made, None))
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", loaded.append)
    prefix = tmp_path / "cc" / "cache"
    prefix.parent.mkdir()
    (prefix.parent / "cache.part-07").write_bytes(b"stale")          # a part of an older, longer cache
    rc = compile_cache.main(["--cache", str(prefix), "--part-mib", "0.002", "--",
                             "train", str(tmp_path / "missing.toml")])
    assert rc == 2                                                     # the hpdm command's own exit code
    parts = compile_cache.parts_of(prefix)
    assert len(parts) > 1 and all(p.stat().st_size <= 0.002 * 2 ** 20 for p in parts)
    assert not (prefix.parent / "cache.part-07").exists() and not list(prefix.parent.glob(".*.tmp"))
    assert loaded == []                                                # the stale part made the old cache unusable
    assert compile_cache.load(prefix) > 0 and loaded == [made]


def test_compile_cache_saves_nothing_when_nothing_was_compiled(tmp_path, monkeypatch):
    """No artifacts: no part files, and a missing cache loads as nothing."""
    import compile_cache
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: None)
    assert compile_cache.load(tmp_path / "none") == 0
    assert compile_cache.save(tmp_path / "none", 2 ** 20) == 0 and compile_cache.parts_of(tmp_path / "none") == []


def test_offset_phase_moves_only_patches_that_stay_nested():
    """Where `movable` says so, moving the level by up to one of its pixels keeps every patch inside its parent."""
    import dataclasses

    import offset_phase_loss as opl
    from hpdm_cli.pyramid import level_scales, sample_nested_offsets
    pyr = dataclasses.replace(load_recipe(ROOT / "recipes" / "shapes128-grown.toml").pyramid, offsets="grid")
    scales = level_scales(pyr, "cpu").double()
    base = sample_nested_offsets(pyr, 512, generator=torch.Generator().manual_seed(0)).double()
    for level in (1, 2):
        pixel = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64) / torch.tensor(pyr.level_resolution(level))
        ok = opl.movable(base, scales, level, pixel)
        assert 0.1 < ok.float().mean() < 0.9                 # some can move, some sit at an edge
        for t in (0.0, 0.5, 1.0):
            off = base[ok].clone()
            off[:, level] += t * pixel
            for k in range(1, pyr.num_levels):                # each patch inside the one below it
                assert (off[:, k] >= off[:, k - 1] - 1e-9).all()
                assert (off[:, k] + scales[k] <= off[:, k - 1] + scales[k - 1] + 1e-9).all()
        moved = base[~ok].clone()
        moved[:, level] += pixel
        inside = [((moved[:, k] >= moved[:, k - 1] - 1e-9) & (moved[:, k] + scales[k] <= moved[:, k - 1]
                   + scales[k - 1] + 1e-9)).all(-1) for k in range(1, pyr.num_levels)]
        assert not torch.stack(inside).all(0).any()           # the others would leave a parent


def test_guidance_sweep_settings_name_guidance_steps_overlap_and_sigma_max():
    """A setting is a scale or one per level, then optional per-level steps, overlap, sigma_max, guidance interval
    and guide model (a path, folders and all)."""
    from guidance_sweep import parse_setting
    assert parse_setting("3", None, None) == (3.0, None, None, None, None, None)
    assert parse_setting("1.5,1,1/32,32,16/fhw", None, "none") == ([1.5, 1.0, 1.0], [32, 32, 16], "fhw", None, None,
                                                                   None)
    assert parse_setting("1.5,1,1//hw/80,10,10", [8, 4, 2], None) == ([1.5, 1.0, 1.0], [8, 4, 2], "hw",
                                                                      [80.0, 10.0, 10.0], None, None)
    assert parse_setting("1.5,1,1/32,48,24/shift-fhw//0.3,5", None, None) == ([1.5, 1.0, 1.0], [32, 48, 24],
                                                                              "shift-fhw", None, [0.3, 5.0], None)
    assert parse_setting("2,1,1/32,48,24/shift-fhw///out/g/ags.safetensors", None, None) == (
        [2.0, 1.0, 1.0], [32, 48, 24], "shift-fhw", None, None, "out/g/ags.safetensors")


def test_guidance_sweep_scores_several_models_against_one_set_of_real_clips(tmp_path, capsys, monkeypatch):
    """Two runs in one sweep: the real rows once, one named line and sheet per model; a mismatch is refused."""
    import guidance_sweep
    import hpdm_cli.eval.fvd as fvd
    from hpdm_cli.train.loop import train
    monkeypatch.setattr(fvd, "I3DExtractor", MeanColourFeatures)
    tiny = str(ROOT / "recipes/tiny.toml")
    common = ['data.path="synthetic:shapes"', "data.synthetic_videos=8", 'model.cond="class"', "model.num_classes=16",
              "train.steps=1", "train.batch_size=2", "data.num_workers=0"]
    for name, res in (("a", "[4,16,16]"), ("b", "[4,16,16]"), ("odd", "[4,32,32]")):
        train(load_recipe(tiny, [*common, f"pyramid.resolution={res}"]), tmp_path / name, log=lambda m: None)
    import hpdm_cli.checkpoint as checkpoint
    loaded, load = [], checkpoint.load_generator
    monkeypatch.setattr(checkpoint, "load_generator", lambda path, *a, **k: loaded.append(Path(path).name) or load(
        path, *a, **k))
    args = ["--num", "4", "--batch", "4", "--settings", "1/2,2/none", "--device", "cpu", "--sheets", str(tmp_path / "s")]
    assert guidance_sweep.main([str(tmp_path / "a"), str(tmp_path / "b"), *args]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [x["setting"] for x in lines[:4]] == ["real (floor)", "static real", "shuffled real", "real"]
    assert len(lines) == 6 and loaded == ["a", "b"]          # the real rows once; each model loaded and scored
    scored = lines[4:]
    assert [x["model"] for x in scored] == ["a", "b"] and all(x["n"] == 4 and x["step"] == 1 for x in scored)
    assert [Path(x["weights"]).parts[-4] for x in scored] == ["a", "b"]       # run/checkpoints/ckpt-N/ema.safetensors
    assert sorted(f.name for f in (tmp_path / "s").iterdir()) == ["a-guidance-1_2-2_none.png",
                                                                   "b-guidance-1_2-2_none.png"]
    with pytest.raises(SystemExit, match=r"odd: .*score it in a run of its own"):
        guidance_sweep.main([str(tmp_path / "a"), str(tmp_path / "odd"), *args])
    with pytest.raises(SystemExit, match=r"2 models are named 'a'"):
        guidance_sweep.main([str(tmp_path / "a"), str(tmp_path / "a"), *args])
    assert capsys.readouterr().out == "" and loaded == ["a", "b", "a", "a"]    # refused before anything was sampled


def test_guidance_sweep_in_parts_scores_as_the_whole_run(tmp_path, capsys, monkeypatch):
    """--rows parts saved with --save and scored by --merge give the whole run's FVD and faithfulness."""
    import guidance_sweep
    import hpdm_cli.eval.fvd as fvd
    from hpdm_cli.train.loop import train
    monkeypatch.setattr(fvd, "I3DExtractor", MeanColourFeatures)
    train(load_recipe(str(ROOT / "recipes/tiny.toml"), [
        'data.path="synthetic:shapes"', "data.synthetic_videos=8", 'model.cond="class"', "model.num_classes=16",
        "train.steps=1", "train.batch_size=2", "data.num_workers=0", "pyramid.resolution=[4,16,16]"]),
        tmp_path / "m", log=lambda m: None)
    args = [str(tmp_path / "m"), "--num", "6", "--batch", "2", "--settings", "1/2,2/none", "--device", "cpu"]
    lines = lambda: [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert guidance_sweep.main(args) == 0
    assert "not extrapolated to infinitely many clips: fewer than 256 a side" in capsys.readouterr().out
    import hpdm_cli.drivers.evaluate as ev
    monkeypatch.setattr(ev, "EXTRAPOLATE_MIN_CLIPS", 6)
    assert guidance_sweep.main(args) == 0
    out = capsys.readouterr().out
    extrapolated = out[out.index("extrapolated to infinitely many clips per side (FVD(n) = a + b / n over n = "
                                 "[2, 3, 4, 6]"):]
    assert "- real (floor): FVD" in extrapolated and "- guidance 1/2,2/none: FVD" in extrapolated
    whole = [json.loads(x) for x in out.splitlines() if x.startswith("{")][-1]
    for rows in ("0:2", "2:6"):
        assert guidance_sweep.main([*args, "--rows", rows, "--save", str(tmp_path / "p"),
                                    "--sheets", str(tmp_path / "s")]) == 0
        part = lines()[-1]
        assert part["fvd"] is None and part["rows"] == [int(v) for v in rows.split(":")]
    assert [f.name for f in (tmp_path / "s").iterdir()] == ["m-guidance-1_2-2_none.png"]   # the first rows' part
    assert guidance_sweep.main(["--merge", str(tmp_path / "p"), "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "over 20 resamplings of the generated clips" in out and "1/2,2/none: FVD" in out
    assert "- real (floor): FVD" in out[out.index("extrapolated to infinitely many clips per side"):]
    merged = [json.loads(x) for x in out.splitlines() if x.startswith("{")][-1]
    assert merged["parts"] == 2 and merged["n"] == 6
    assert merged["fvd"] == pytest.approx(whole["fvd"], abs=0.11)
    for k in guidance_sweep.SCORED:
        assert merged[k] == pytest.approx(whole[k], abs=1e-3, nan_ok=True), k
    assert merged["direction_asked"] == whole["direction_asked"]
    assert sum(n for _, n in whole["direction_asked"].values()) == 6     # every clip under its asked direction
    assert "- direction by asked direction, guidance 1/2,2/none: " in out
    # --no-real: a part alone, no real features measured; --merge takes another run's real side
    counted = []

    class Counted(MeanColourFeatures):
        def features(self, clips):
            clips = list(clips)
            counted.append(len(clips))
            return super().features(clips)
    monkeypatch.setattr(fvd, "I3DExtractor", Counted)
    q = tmp_path / "q"
    assert guidance_sweep.main([*args, "--rows", "2:6", "--save", str(q), "--no-real"]) == 0
    assert counted == [4]                                    # the part's 4 generated clips, no real ones
    got = capsys.readouterr()
    assert f"the real side left out (--no-real): --merge {q} takes the real-n6.npz" in got.err
    assert [f.name for f in q.iterdir()] == ["part-m-1_2-2_none-rows00002-00006.npz"]     # no real-n6.npz
    assert not any(json.loads(x)["setting"] == "real (floor)" for x in got.out.splitlines() if x.startswith("{"))
    with pytest.raises(SystemExit, match=r"expected one real-n<N>.npz written by --save, found 0"):
        guidance_sweep.main(["--merge", str(q)])
    for f in ("real-n6.npz", "part-m-1_2-2_none-rows00000-00002.npz"):
        (q / f).write_bytes((tmp_path / "p" / f).read_bytes())
    assert guidance_sweep.main(["--merge", str(q)]) == 0
    again = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")][-1]
    assert again["fvd"] == pytest.approx(merged["fvd"], abs=1e-9)       # the same clips as the run that measured
    for k in guidance_sweep.SCORED:
        assert again[k] == pytest.approx(merged[k], abs=1e-9, nan_ok=True), k
    with pytest.raises(SystemExit, match=r"--no-real leaves the real side to another run: add --save DIR"):
        guidance_sweep.main([*args, "--no-real"])
    w = tmp_path / "w"                                        # all N rows without the real side: scored by --merge
    assert guidance_sweep.main([*args, "--save", str(w), "--no-real"]) == 0
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")][-1]["fvd"] is None
    (w / "real-n6.npz").write_bytes((tmp_path / "p" / "real-n6.npz").read_bytes())
    assert guidance_sweep.main(["--merge", str(w)]) == 0
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")][-1]["fvd"] == \
        pytest.approx(whole["fvd"], abs=0.11)
    (tmp_path / "p" / "part-m-1_2-2_none-rows00002-00006.npz").unlink()
    with pytest.raises(SystemExit, match=r"cover rows \[\(0, 2\)\], not 0:6 exactly once: .* with --partial"):
        guidance_sweep.main(["--merge", str(tmp_path / "p")])
    assert guidance_sweep.main(["--merge", str(tmp_path / "p"), "--partial"]) == 0   # rows 0:2 as a set of N = 2
    out = capsys.readouterr().out
    assert "rows 0:2 of 6: scored at N = 2" in out and "2 of 6 held-out clips per side" in out
    interim = [json.loads(x) for x in out.splitlines() if x.startswith("{")][-1]
    assert (interim["n"], interim["of"], interim["parts"]) == (2, 6, 1)
    real = np.load(tmp_path / "p" / "real-n6.npz")
    part = np.load(tmp_path / "p" / "part-m-1_2-2_none-rows00000-00002.npz")
    expect = fvd.frechet_distance(*fvd.feature_stats(real["features"][:2]), *fvd.feature_stats(part["features"]))
    assert interim["fvd"] == pytest.approx(float(expect), abs=0.051)
    with pytest.raises(SystemExit, match=r"--partial scores the parts so far: add --merge DIR"):
        guidance_sweep.main([*args, "--partial"])
    with pytest.raises(SystemExit, match=r"add --save DIR"):
        guidance_sweep.main([*args, "--rows", "0:2"])
    with pytest.raises(SystemExit, match=r"--bootstrap resamples merged parts"):
        guidance_sweep.main([*args, "--bootstrap", "20"])
    with pytest.raises(SystemExit, match=r"--bootstrap 1: expected at least 2 rounds"):
        guidance_sweep.main(["--merge", str(tmp_path / "p"), "--bootstrap", "1"])
    with pytest.raises(SystemExit, match=r"need 0 <= LO < HI <= --num \(6\)"):
        guidance_sweep.main([*args, "--rows", "4:9", "--save", str(tmp_path / "p")])


def test_guidance_sweep_in_chunks_keeps_what_it_finished_and_goes_on_from_there(tmp_path, capsys, monkeypatch):
    """--chunk K --save DIR: a part per K rows as each is scored; a re-run samples only the rows DIR lacks (parts
    of other weights or settings are sampled again), and once all rows are there it scores the whole set."""
    import guidance_sweep
    import hpdm_cli.drivers.evaluate as ev
    import hpdm_cli.eval.fvd as fvd
    from hpdm_cli.train.loop import train
    monkeypatch.setattr(fvd, "I3DExtractor", MeanColourFeatures)
    train(load_recipe(str(ROOT / "recipes/tiny.toml"), [
        'data.path="synthetic:shapes"', "data.synthetic_videos=8", 'model.cond="class"', "model.num_classes=16",
        "train.steps=1", "train.batch_size=2", "data.num_workers=0", "pyramid.resolution=[4,16,16]"]),
        tmp_path / "m", log=lambda m: None)
    sampled, gen = [], ev.generate_rows
    monkeypatch.setattr(ev, "generate_rows", lambda net, rec, seeds, *a, **k: sampled.append(list(seeds)) or gen(
        net, rec, seeds, *a, **k))
    args = [str(tmp_path / "m"), "--num", "6", "--batch", "2", "--settings", "1/2,2/none", "--device", "cpu"]
    last = lambda: [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")][-1]
    assert guidance_sweep.main(args) == 0
    whole = last()
    parts = tmp_path / "p"
    assert guidance_sweep.main([*args, "--rows", "0:4", "--chunk", "2", "--save", str(parts)]) == 0
    assert sampled[1:] == [[0, 1], [2, 3]] and last()["fvd"] is None
    assert sorted(f.name for f in parts.glob("part-*")) == ["part-m-1_2-2_none-rows00000-00002.npz",
                                                            "part-m-1_2-2_none-rows00002-00004.npz"]
    del sampled[:]
    assert guidance_sweep.main([*args, "--chunk", "2", "--save", str(parts)]) == 0
    got = capsys.readouterr()
    out = [json.loads(x) for x in got.out.splitlines() if x.startswith("{")][-1]
    assert sampled == [[4, 5]] and out["parts_found"] == 2                # only the rows the folder lacked
    assert f"the real clips' features and readings found in {parts / 'real-n6.npz'}" in got.err   # not measured again
    real_file, key = parts / "real-n6.npz", json.loads(str(np.load(parts / "real-n6.npz")["info"]))
    assert key["resolution"] == [4, 16, 16] and len(key["captions"]) == 6
    assert guidance_sweep.load_real(real_file, {"resolution": [4, 16, 16]}) is not None
    for other in ({"resolution": [4, 32, 32]}, {"captions": key["captions"][::-1]}, {"i3d_sha256": "another"}):
        assert guidance_sweep.load_real(real_file, other) is None, other
    assert out["fvd"] == pytest.approx(whole["fvd"], abs=0.11)
    for k in guidance_sweep.SCORED:
        assert out[k] == pytest.approx(whole[k], abs=1e-3, nan_ok=True), k
    del sampled[:]
    assert guidance_sweep.main([*args[:-4], "--settings", "1/2,2/none", "1/1,1/none", "--device", "cpu",
                                "--chunk", "4", "--save", str(parts)]) == 0
    assert sampled == [[0, 1, 2, 3], [0, 1, 2, 3], [4, 5]]   # rows 4:6 of the first setting kept; other spans sampled
    with pytest.raises(SystemExit, match=r"--chunk 2: expected a positive number of rows with --save DIR"):
        guidance_sweep.main([*args, "--chunk", "2"])
    # --stop-after: no part started that the time left cannot hold (the slowest part so far its estimate); with
    # --sheets, one sheet per part sampled, of its own rows
    del sampled[:]
    capsys.readouterr()
    short, sheets = tmp_path / "short", tmp_path / "sheets"
    assert guidance_sweep.main([*args, "--rows", "2:6", "--chunk", "2", "--save", str(short), "--no-real",
                                "--stop-after", "0.001", "--sheets", str(sheets)]) == 0
    assert sampled == [[2, 3]] and [f.name for f in short.iterdir()] == ["part-m-1_2-2_none-rows00002-00004.npz"]
    assert "rows 4:6 not started: 0 s left of --stop-after 0.001" in capsys.readouterr().err
    assert [f.name for f in sheets.iterdir()] == ["m-guidance-1_2-2_none-rows00002-00004.png"]
    assert guidance_sweep.main([*args, "--rows", "2:6", "--chunk", "2", "--save", str(short), "--no-real",
                                "--stop-after", "600"]) == 0
    assert sampled == [[2, 3], [4, 5]]                        # time enough: the rest
    with pytest.raises(SystemExit, match=r"--stop-after 60: expected seconds > 0 with --chunk K --save DIR"):
        guidance_sweep.main([*args, "--stop-after", "60"])


def test_guidance_sweep_real_level0_in_chunks_scores_as_the_whole_run(tmp_path, capsys, monkeypatch):
    """--real-level0 with --chunk: parts of the upper levels given the floor's real level 0 (and the floor's
    prompts) sit beside the setting's own; the run and --merge score them as the whole run's row."""
    import guidance_sweep
    import hpdm_cli.eval.fvd as fvd
    from hpdm_cli.train.loop import train
    monkeypatch.setattr(fvd, "I3DExtractor", MeanColourFeatures)
    train(load_recipe(str(ROOT / "recipes/tiny.toml"), [
        'data.path="synthetic:shapes"', "data.synthetic_videos=8", 'model.cond="class"', "model.num_classes=16",
        "train.steps=1", "train.batch_size=2", "data.num_workers=0", "pyramid.resolution=[4,16,16]"]),
        tmp_path / "m", log=lambda m: None)
    args = [str(tmp_path / "m"), "--num", "6", "--batch", "2", "--settings", "1/2,2/none", "--device", "cpu",
            "--real-level0"]
    lines = lambda out: [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert guidance_sweep.main(args) == 0
    whole = [x for x in lines(capsys.readouterr().out) if "level0" in x]
    assert len(whole) == 1 and whole[0]["level0"] == "real (the floor's clips)"
    parts = tmp_path / "p"
    assert guidance_sweep.main([*args, "--chunk", "4", "--save", str(parts)]) == 0
    chunked = [x for x in lines(capsys.readouterr().out) if "level0" in x]
    assert sorted(f.name for f in parts.glob("part-*real0*")) == ["part-m-1_2-2_none-real0-rows00000-00004.npz",
                                                                  "part-m-1_2-2_none-real0-rows00004-00006.npz"]
    assert guidance_sweep.main(["--merge", str(parts)]) == 0
    out = capsys.readouterr().out
    merged = [x for x in lines(out) if "level0" in x]
    assert "| upper levels given real level 0, 1/2,2/none |" in out and "| guidance 1/2,2/none |" in out
    for got in (chunked[0], merged[0]):
        assert got["fvd"] == pytest.approx(whole[0]["fvd"], abs=0.11)
        for k in guidance_sweep.SCORED:
            assert got[k] == pytest.approx(whole[0][k], abs=1e-3, nan_ok=True), k
    own = next(x for x in lines(out) if "level0" not in x and "weights" in x)
    assert own["fvd"] != pytest.approx(merged[0]["fvd"], abs=1e-6)      # two rows, not one set twice
    r = tmp_path / "r"                      # rows 4:6 with --no-real: the floor's clips 10:12 as their level 0
    assert guidance_sweep.main([*args, "--rows", "4:6", "--chunk", "4", "--save", str(r), "--no-real"]) == 0
    capsys.readouterr()
    name = "part-m-1_2-2_none-real0-rows00004-00006.npz"
    alone, measured = np.load(r / name), np.load(parts / name)
    assert str(alone["captions"]) == str(measured["captions"])                  # the floor's prompts of those rows
    np.testing.assert_allclose(alone["features"], measured["features"], atol=1e-9)
    for f in parts.iterdir():
        if "rows00004" not in f.name:
            (r / f.name).write_bytes(f.read_bytes())
    assert guidance_sweep.main(["--merge", str(r)]) == 0
    assert [x for x in lines(capsys.readouterr().out) if "level0" in x][0]["fvd"] == pytest.approx(merged[0]["fvd"],
                                                                                                abs=1e-9)


def test_guidance_sweep_prints_each_bootstrap_difference(capsys):
    """print_bootstrap: one line per setting and one per pair, the difference's sign and range as resampled."""
    import guidance_sweep
    from hpdm_cli.eval.fvd import paired_bootstrap
    rng = np.random.default_rng(1)
    real, near = rng.normal(size=(200, 4)), rng.normal(size=(150, 4))
    guidance_sweep.print_bootstrap(paired_bootstrap(real, {"a": near, "b": near + 1.0}, rounds=30))
    out = capsys.readouterr().out
    assert "over 30 resamplings" in out and "- a: FVD" in out and "- b: FVD" in out
    line = next(x for x in out.splitlines() if x.startswith("- a minus b: "))
    d, lo, hi = [float(v) for v in line.replace("- a minus b: ", "").replace(", 95% of resamplings in [", " ")
                 .replace(", ", " ").rstrip("]").split()]
    # the same clips shifted by 1 in each of 4 features: ~4 worse (|shift|^2), in every resampling
    assert d == pytest.approx(-4.0, abs=1.5) and lo - 0.1 <= d <= hi + 0.1 and lo <= hi < 0


def test_interface_conv_benchmark_times_both_methods_and_restores_auto(capsys):
    """benchmarks/interface_conv.py on the CPU: one table row per method, the ratio line, GridConv left on auto."""
    import interface_conv
    from hpdm_cli.model.layers import GridConv
    tiny = str(ROOT / "recipes/tiny.toml")
    assert interface_conv.main([tiny, "model.interface_conv=true", "--batch", "2", "--layer-rows", "4", "--iters", "1",
                                "--steps", "1", "--no-compile", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| conv3d |" in out and "| shifts |" in out and "shifts / conv3d: layer eager ms" in out
    assert GridConv.method == "auto"
    with pytest.raises(SystemExit, match="interface_conv is off"):
        interface_conv.main([tiny, "model.interface_conv=false", "--device", "cpu"])


def test_pickle_pack_restores_the_file_byte_for_byte_and_refuses_a_damaged_pack(tmp_path):
    """benchmarks/pickle_pack.py: pack then unpack is the identity; the arrays shrink; damage is caught."""
    import pickle

    import pickle_pack
    rng = np.random.default_rng(0)
    params = {"conv": {"w": rng.normal(0, 0.05, (64, 3, 3, 3)).astype(np.float32),
                       "b": rng.normal(0, 0.05, 64).astype(np.float32)},
              "odd": np.arange(7, dtype=np.uint8), "name": "i3d"}
    data = pickle.dumps({"params": params}, protocol=4)
    spans = pickle_pack.payload_spans(data)
    assert [n for _, n in spans] == [params["conv"]["w"].nbytes]     # the big float array only
    packed = pickle_pack.pack(data)
    assert pickle_pack.unpack(packed) == data and len(packed) < 0.95 * len(data)
    damaged = bytearray(packed)
    damaged[len(pickle_pack.MAGIC) + 4] ^= 1                        # the header's JSON
    with pytest.raises(ValueError):
        pickle_pack.unpack(bytes(damaged))
    (tmp_path / "x.pkl").write_bytes(data)
    assert pickle_pack.main(["pack", str(tmp_path / "x.pkl"), str(tmp_path / "x.pack")]) == 0
    assert pickle_pack.main(["unpack", str(tmp_path / "x.pack"), str(tmp_path / "y.pkl")]) == 0
    assert (tmp_path / "y.pkl").read_bytes() == data
    with pytest.raises(SystemExit, match="not a file written by pickle_pack.py pack"):
        pickle_pack.main(["unpack", str(tmp_path / "x.pkl"), str(tmp_path / "z.pkl")])
    assert not (tmp_path / "z.pkl").exists()


def _reading(colour, travel, area):
    """A valid ClipReading of a shapes clip 16 pixels on a side: its colour, travel (of 16 px) and area."""
    from hpdm_cli.eval.faithfulness import ClipReading
    return ClipReading(valid=True, reason="", colour=colour, shape="circle", direction="left", background="black",
                       background_rgb=(20.0, 20.0, 24.0), displacement=(16.0 * travel, 0.0), area=area,
                       shape_iou=0.5, area_cv=0.1, found_frames=4, clutter=0.0, frame_size=16)


def _save_real(folder, num, features, floor_features, captions, **real):
    """The real-n<N>.npz that guidance_sweep.py --save writes beside its parts."""
    from guidance_sweep import save_npz
    info = {"floor": [["real (floor)", 1.0], ["static real", 2.0], ["shuffled real", 3.0]], "captions": captions,
            "real": {"area": 0.25, "travel": 0.5, "stripes": 0.1, "seams": 1.0, "seams_t": 1.0, **real}}
    save_npz(folder / f"real-n{num}.npz", num=np.array(num), features=features, floor_features=floor_features,
             info=np.array(json.dumps(info)))


def _save_part(folder, setting, rows, num, features, readings, *, stripes=None, seams=None, captions=None,
               level0=None, model="m", weights="m.safetensors", step=1, seconds=1.0, name=None, drop=()):
    """One part as guidance_sweep.py --rows LO:HI --save writes it (rows of `num`; `drop`: fields left out)."""
    from guidance_sweep import save_npz, slug
    n = rows[1] - rows[0]
    meta = {"model": model, "weights": weights, "step": step, "setting": setting, "level0": level0, "num": num,
            "rows": list(rows), "sample_seconds": seconds}
    fields = dict(features=features, meta=np.array(json.dumps(meta)),
                  stripes=np.full(n, 0.5) if stripes is None else stripes,
                  seams=np.ones((n, 2, 2)) if seams is None else seams,
                  readings=np.array(json.dumps([r.as_dict() for r in readings])))
    if captions is not None:
        fields["captions"] = np.array(json.dumps(captions))
    name = name or f"part-{model}-{slug(setting)}{'-real0' if level0 else ''}-rows{rows[0]:05d}-{rows[1]:05d}.npz"
    save_npz(folder / name, **{k: v for k, v in fields.items() if k not in drop})


def _merged_lines(out):
    return [json.loads(x) for x in out.splitlines() if x.startswith("{")]


def test_guidance_sweep_merge_scores_parts_from_their_saved_fields(tmp_path, capsys):
    """--merge on hand-made parts: the FVD of the parts' features together against the real ones, the stripe fit
    without NaN, the seams in space and in time (seam steps [n, (t, hw), (border, other)]), size and motion as
    ratios to the real clips' area and travel, and the sampling seconds of all parts (docs/results.md, section 8)."""
    import guidance_sweep
    from hpdm_cli.eval.fvd import feature_stats, frechet_distance
    rng = np.random.default_rng(0)
    num = 6
    real, floor, fake = rng.normal(size=(num, 3)), rng.normal(size=(num, 3)), rng.normal(1.0, 2.0, size=(num, 3))
    _save_real(tmp_path, num, real, floor, ["a red circle moving left"] * num, area=0.2, travel=0.4)
    seams = np.stack([np.tile([[3.0, 1.0], [2.0, 1.0]], (1, 1))] * num)       # time: 3 / 1, space: 2 / 1
    readings = [_reading("red", 0.2, 0.1)] * 4 + [_reading("blue", 0.2, 0.1)] * 2
    _save_part(tmp_path, "1", (2, 6), num, fake[2:], readings[2:], seams=seams[2:], seconds=3.0,
               stripes=np.array([0.2, np.nan, 0.4, np.nan]))
    _save_part(tmp_path, "1", (0, 2), num, fake[:2], readings[:2], seams=seams[:2], seconds=2.0,
               stripes=np.array([0.3, 0.1]))
    assert guidance_sweep.merge(tmp_path) == 0
    got = _merged_lines(capsys.readouterr().out)[-1]
    want = frechet_distance(*feature_stats(real), *feature_stats(fake))
    assert got["fvd"] == pytest.approx(want, abs=0.051) and (got["n"], got["parts"]) == (6, 2)
    assert got["colour"] == pytest.approx(4 / 6, abs=1e-3) and got["stripes"] == pytest.approx(0.25)
    assert (got["seams"], got["seams_t"]) == (2.0, 3.0)
    assert (got["size"], got["motion"]) == (pytest.approx(0.5), pytest.approx(0.5))   # 0.1 / 0.2, 0.2 / 0.4
    assert got["sample_seconds"] == 5.0


def test_guidance_sweep_merge_refuses_what_a_whole_run_would_not_score(tmp_path, capsys):
    """--merge stops, naming why, on two real sides, a part without a saved field, a part of another N, parts
    of other weights or steps; parts older than their prompts are scored against the reference's captions."""
    import guidance_sweep
    rng = np.random.default_rng(0)
    num, caps = 4, ["a red circle moving left"] * 4
    feats, readings = rng.normal(size=(num, 3)), [_reading("red", 0.2, 0.1)] * num
    _save_real(tmp_path, num, rng.normal(size=(num, 3)), rng.normal(size=(num, 3)), caps)
    _save_part(tmp_path, "1", (0, 4), num, feats, readings)                   # no captions: the reference's
    assert guidance_sweep.merge(tmp_path) == 0
    assert _merged_lines(capsys.readouterr().out)[-1]["colour"] == 1.0
    _save_real(tmp_path, 8, rng.normal(size=(8, 3)), rng.normal(size=(8, 3)), caps * 2)
    with pytest.raises(SystemExit, match=r"expected one real-n<N>.npz written by --save, found 2"):
        guidance_sweep.merge(tmp_path)
    (tmp_path / "real-n8.npz").unlink()

    def fresh(name):                                      # a folder with the real side and no parts yet
        (tmp_path / name).mkdir()
        (tmp_path / name / "real-n4.npz").write_bytes((tmp_path / "real-n4.npz").read_bytes())
        return tmp_path / name
    _save_part(fresh("a"), "1", (0, 4), num, feats, readings, drop=("stripes",))
    with pytest.raises(SystemExit, match=r"no stripes \(written by an older guidance_sweep.py\?\)"):
        guidance_sweep.merge(tmp_path / "a")
    _save_part(fresh("b"), "1", (0, 4), 5, feats, readings)
    with pytest.raises(SystemExit, match=r"a part of N = 5, but real-n4.npz is for N = 4"):
        guidance_sweep.merge(tmp_path / "b")
    for name, other in (("c", {"weights": "other.safetensors"}), ("d", {"step": 2})):
        _save_part(fresh(name), "1", (0, 2), num, feats[:2], readings[:2])
        _save_part(tmp_path / name, "1", (2, 4), num, feats[2:], readings[2:], **other)
        with pytest.raises(SystemExit, match=r"parts from different weights"):
            guidance_sweep.merge(tmp_path / name)
    _save_part(fresh("e"), "1", (0, 2), num, feats[:2], readings[:2], level0="real")      # no prompts saved
    _save_part(tmp_path / "e", "1", (2, 4), num, feats[2:], readings[2:], level0="real")
    with pytest.raises(SystemExit, match=r"real-level-0 parts without their prompts"):
        guidance_sweep.merge(tmp_path / "e")


def test_guidance_sweep_merge_keeps_the_real_level0_rows_apart_with_their_own_prompts(tmp_path, capsys, monkeypatch):
    """Parts of the upper levels given the floor's level 0 are scored against their own (the floor's) prompts and
    extrapolated and resampled as a set of their own beside the setting's (docs/results.md, section 8)."""
    import guidance_sweep
    import hpdm_cli.drivers.evaluate as ev
    monkeypatch.setattr(ev, "EXTRAPOLATE_MIN_CLIPS", 4)
    rng = np.random.default_rng(0)
    num = 8
    _save_real(tmp_path, num, rng.normal(size=(num, 3)), rng.normal(size=(num, 3)), ["a red circle moving left"] * num)
    readings = [_reading("red", 0.2, 0.1)] * num
    _save_part(tmp_path, "1", (0, 8), num, rng.normal(size=(num, 3)), readings,
               captions=["a red circle moving left"] * num)
    _save_part(tmp_path, "1", (0, 8), num, rng.normal(2.0, 1.0, size=(num, 3)), readings, level0="real",
               captions=["a blue circle moving left"] * 6 + ["a red circle moving left"] * 2)
    assert guidance_sweep.merge(tmp_path, bootstrap=4) == 0
    out = capsys.readouterr().out
    given, own = sorted(_merged_lines(out), key=lambda x: "level0" not in x)
    assert given["colour"] == pytest.approx(0.25) and own["colour"] == 1.0
    label = f"{guidance_sweep.LEVEL0_LABEL} 1"
    extrapolated = out[out.index("extrapolated to infinitely many clips"):out.index("over 4 resamplings")]
    assert f"- {label}: FVD" in extrapolated and "- 1: FVD" in extrapolated
    assert f"- {label} minus 1: " in out[out.index("over 4 resamplings"):]


def test_guidance_sweep_partial_merge_scores_every_setting_on_the_rows_all_cover(tmp_path, capsys, monkeypatch):
    """--merge --partial: settings sampled that far score rows 0:n of the one that covers the fewest, against the
    first n real clips; the floor, its extrapolation and the bootstrap take the first n of each real set too."""
    import guidance_sweep
    import hpdm_cli.drivers.evaluate as ev
    from hpdm_cli.eval.fvd import extrapolated_fvd, feature_stats, frechet_distance, paired_bootstrap
    monkeypatch.setattr(ev, "EXTRAPOLATE_MIN_CLIPS", 4)
    rng = np.random.default_rng(0)
    num, n = 8, 4
    real, floor = rng.normal(size=(num, 3)), rng.normal(size=(num, 3))
    real[n:] += 3.0
    floor[n:] -= 3.0                                     # rows past n: far off, were they taken in
    _save_real(tmp_path, num, real, floor, ["a red circle moving left"] * num)
    a, b = rng.normal(size=(6, 3)), rng.normal(0.5, 1.0, size=(n, 3))
    a[n:] += 5.0
    readings = [_reading("red", 0.2, 0.1)] * 4 + [_reading("blue", 0.2, 0.1)] * 2
    seams = np.ones((6, 2, 2))
    seams[n:, :, 0] = 5.0                                # tile borders 5x the steps elsewhere, past row n
    _save_part(tmp_path, "1", (0, 6), num, a, readings, stripes=np.array([0.2] * 4 + [0.8] * 2), seams=seams)
    _save_part(tmp_path, "2", (0, n), num, b, readings[:n])
    assert guidance_sweep.merge(tmp_path, bootstrap=3, partial=True) == 0
    out = capsys.readouterr().out
    one, two = _merged_lines(out)
    assert (one["n"], one["of"], two["n"]) == (n, num, n)
    ref = feature_stats(real[:n])
    assert one["fvd"] == pytest.approx(frechet_distance(*ref, *feature_stats(a[:n])), abs=0.051)
    assert two["fvd"] == pytest.approx(frechet_distance(*ref, *feature_stats(b)), abs=0.051)
    assert one["colour"] == 1.0 and one["stripes"] == pytest.approx(0.2) and one["seams"] == one["seams_t"] == 1.0
    floor_fvd = frechet_distance(*ref, *feature_stats(floor[:n]))
    assert f"| real (floor) | {floor_fvd:.1f} |" in out
    e = extrapolated_fvd(real[:n], floor[:n])
    assert f"- real (floor): FVD {e.fvd:.1f} (+ {e.slope:.0f} / n; at n = {n}: {e.means[-1]:.1f})" in out
    pb = paired_bootstrap(real[:n], {"1": a[:n], "2": b}, rounds=3)
    assert f"- 1: FVD {pb.fvd['1']:.1f}, sd {pb.sd['1']:.1f}" in out


def test_guidance_sweep_rows_and_chunks_must_be_a_nonempty_span():
    """--rows LO:HI needs 0 <= LO < HI <= N; --chunk a positive number of rows (refused before any model loads)."""
    import guidance_sweep
    assert guidance_sweep.parse_rows(None, 6) == (0, 6) and guidance_sweep.parse_rows("0:6", 6) == (0, 6)
    assert guidance_sweep.parse_rows("2:3", 6) == (2, 3)
    for bad in ("2:2", "3:2", "-1:2", "0:7"):
        with pytest.raises(SystemExit, match=r"need 0 <= LO < HI <= --num \(6\)"):
            guidance_sweep.parse_rows(bad, 6)
    with pytest.raises(SystemExit, match=r"expected LO:HI"):
        guidance_sweep.parse_rows("2-4", 6)
    for chunk in ("-1", "-4"):
        with pytest.raises(SystemExit, match=rf"--chunk {chunk}: expected a positive number of rows"):
            guidance_sweep.main(["no-such-model", "--chunk", chunk, "--save", "unused"])


def test_guidance_sweep_chunks_reuse_only_parts_of_the_same_weights(tmp_path):
    """--chunk skips a part only when its weights, step, setting, N and rows are this run's (the model's name
    aside): another checkpoint saved under the same name is sampled again."""
    import guidance_sweep
    feats, readings = np.zeros((2, 3)), [_reading("red", 0.2, 0.1)] * 2
    _save_part(tmp_path, "1", (0, 2), 4, feats, readings, weights="a/ema.safetensors", name="part.npz")
    key = {"model": "other", "weights": "a/ema.safetensors", "step": 1, "setting": "1", "level0": None, "num": 4,
           "rows": [0, 2]}
    assert guidance_sweep.load_part(tmp_path / "part.npz", key) is not None
    for other in ({"weights": "b/ema.safetensors"}, {"step": 2}, {"setting": "2"}, {"rows": [0, 3]}):
        assert guidance_sweep.load_part(tmp_path / "part.npz", {**key, **other}) is None, other


def test_border_pixels_count_object_pixels_on_each_border_line():
    """An object cut by the bottom edge is counted on the bottom line only, by its width there; faint texture is not."""
    frame = np.full((32, 48, 3), 40, np.uint8)
    frame[::4, :, :] = 70                                    # stripes: 90 of 765 from the median, below 200
    frame[20:32, 10:17] = (240, 220, 30)                     # a yellow block, 7 pixels wide at the bottom edge
    frame[0, 47] = (250, 250, 250)                           # one bright pixel at the top-right corner
    assert border_pixels.border_counts(frame) == {"top": 1, "bottom": 7, "left": 0, "right": 1}
    assert border_pixels.border_counts(frame, threshold=60) == {"top": 48, "bottom": 7, "left": 8, "right": 8}


def test_border_pixels_count_the_lines_further_in_by_depth():
    """depth d reads each side's line d pixels in from the border: an object widening toward the bottom edge shows it."""
    frame = np.full((16, 16, 3), 40, np.uint8)
    frame[12:16, 4:8] = 250                                  # 4 wide from row 12 down ...
    frame[15, 2:10] = 250                                    # ... and 8 wide on the border line itself
    frame[3, 0] = 250                                        # one pixel on the left border line, row 3
    assert border_pixels.border_counts(frame) == {"top": 0, "bottom": 8, "left": 1, "right": 0}
    assert border_pixels.border_counts(frame, depth=1) == {"top": 0, "bottom": 4, "left": 0, "right": 0}
    assert border_pixels.border_counts(frame, depth=3) == {"top": 1, "bottom": 4, "left": 1, "right": 0}
    assert border_pixels.border_counts(frame, depth=4) == {"top": 0, "bottom": 0, "left": 4, "right": 0}
    video = np.stack([frame, frame])
    assert border_pixels.video_border_counts(video, "all", depth=1)["bottom"] == 8


def test_border_pixels_counts_the_middle_frame_or_sums_every_frame():
    """--frames all sums each frame's border pixels; the default reads the middle frame alone."""
    video = np.full((4, 16, 16, 3), 40, np.uint8)
    for t in range(4):
        video[t, 15, 2:2 + t] = 250                          # frame t: t object pixels on the bottom line
    video[1, 0, 5] = 250                                     # and one on the top line of frame 1
    assert border_pixels.video_border_counts(video) == {"top": 0, "bottom": 2, "left": 0, "right": 0}
    assert border_pixels.video_border_counts(video, "all") == {"top": 1, "bottom": 6, "left": 0, "right": 0}
    with pytest.raises(ValueError, match="frames"):
        border_pixels.video_border_counts(video, "first")


def test_border_pixels_difference_over_the_whole_frame_or_its_inner_part():
    """A difference on the outer eighth of the frame counts in the whole-frame mean only."""
    real = np.zeros((2, 16, 16, 3), np.uint8)
    gen = real.copy()
    gen[:, 0] = 64                                           # the top row: 16 of 256 pixels differ by 64
    assert border_pixels.mean_abs_diff(gen, real) == 4.0
    assert border_pixels.mean_abs_diff(gen, real, inner=True) == 0.0
    gen[:, 8, 8] = 144                                       # one inner pixel of 12 x 12
    assert border_pixels.mean_abs_diff(gen, real, inner=True) == 1.0


def test_border_pixels_control_counts_the_real_objects_outermost_inner_lines():
    """A generated object one row taller at the bottom shows on the real object's bottom row, not on the frame's border."""
    real = np.full((1, 16, 16, 3), 40, np.uint8)
    real[0, 4:8, 5:9] = 250                                  # a 4x4 object: outermost rows 4, 7, columns 5, 8
    gen = real.copy()
    gen[0, 8, 3:11] = 250                                    # a wider row just below it (row 8: outside the real object)
    gen[0, 7, 3:11] = 250                                    # and its bottom row 8 wide instead of 4
    assert border_pixels.inner_extreme_counts(real, real) == (16, 16)
    assert border_pixels.inner_extreme_counts(gen, real) == (4 + 8 + 5 + 5, 16)
    edge = real.copy()
    edge[0, 12:16, 5:9] = 250                                # a second object on the bottom border: row 15 is skipped
    assert border_pixels.inner_extreme_counts(edge, edge) == (4 + 8 + 4 + 4, 20)


def test_border_pixels_takes_real_levels_below_the_last_only(monkeypatch, capsys):
    """--real-levels K fixes levels 0..K-1 from the real clip: K = the level count leaves nothing to sample."""
    ckpt = str(Path(__file__).resolve().parents[1] / "hpdm_cli" / "assets" / "shapes-t2v.safetensors")
    for k in (0, 3):
        monkeypatch.setattr(sys, "argv", ["border_pixels.py", ckpt, "--rows", "1030", "--real-levels", str(k)])
        with pytest.raises(SystemExit) as e:
            border_pixels.main()
        assert str(e.value) == f"--real-levels {k}: expected 1..2"


def test_graphs_check_compares_losses_step_by_step_and_fails_on_a_gap():
    a = {1: 1.0, 2: 0.5, 3: 0.25}
    assert graphs_check.relative_difference(a, dict(a)) == 0.0
    assert graphs_check.relative_difference(a, {1: 1.0, 2: 0.55, 3: 0.25}) == pytest.approx(0.1)
    assert graphs_check.relative_difference(a, {4: 1.0}) == math.inf                  # no step in common
    assert graphs_check.relative_difference(a, {1: float("nan")}) == math.inf
    assert graphs_check._compile_value("reduce-overhead") == '"reduce-overhead"'
    assert graphs_check._compile_value("true") == "true"


def test_graphs_check_two_eager_runs_from_one_seed_agree_exactly_and_resume(tmp_path):
    """The script end to end on the CPU (tiny recipe, synthetic data): equal runs, a resumed last run."""
    report = graphs_check.check("recipes/tiny.toml", tmp_path, ["false", "false"], 2, 1, "cpu",
                                ["data.synthetic_videos=32"], 0.02)
    assert report["ok"], report
    assert [r["steps_logged"] for r in report["rows"]] == [2, 2]
    assert report["rows"][1]["loss_rel_diff"] == 0.0 and report["rows"][1]["weights_rel_diff"] == 0.0
    assert report["resume"]["reached"] == 3 and report["resume"]["finite"]
    # Another learning rate in the second run is a different model: its weights differ beyond any tolerance.
    graphs_check.train("recipes/tiny.toml", tmp_path / "other", "false", 2, "cpu",
                       ["data.synthetic_videos=32", "train.lr=0.05"])
    assert graphs_check.weights_difference(tmp_path / "run0-false", tmp_path / "other") > 0.02
    assert "the runs agree" in graphs_check.table(report)


def test_background_tiles_tell_texture_from_a_second_background():
    """Real clips' tiles agree up to their texture; a tile painted with another background is found."""
    from hpdm_cli.data.shapes import BACKGROUNDS, COLOURS, render_shapes_video, shapes_attributes
    attrs = [shapes_attributes(i, frames=8, height=64, width=64) for i in range(12)]
    real = [render_shapes_video(i, frames=8, height=64, width=64)[0] for i in range(12)]
    tile = (4, 16, 16)
    assert max(background_tiles.tile_disagreement(v, tile, COLOURS[a["colour"]]) for v, a in zip(real, attrs)) < 80
    for i, (v, a) in enumerate(zip(real[:6], attrs)):
        other = [c for n, c in BACKGROUNDS.items() if n != a["background"]]
        v = v.copy()
        v[4:, 48:, 16:32] = other[i % len(other)]                           # one tile of another background
        assert background_tiles.tile_disagreement(v, tile, COLOURS[a["colour"]]) > 80    # the script's threshold
    assert len(set(background_tiles.prompts_of(6))) == 6


def test_background_tiles_name_a_tile_of_a_near_background():
    """Blue and purple are closer than real texture spreads; each tile's nearest background still tells them apart."""
    from hpdm_cli.data.shapes import BACKGROUNDS, COLOURS, render_shapes_video, shapes_attributes
    tile, found = (4, 16, 16), 0
    for i in range(40):
        a = shapes_attributes(i, frames=8, height=64, width=64)
        v = render_shapes_video(i, frames=8, height=64, width=64)[0]
        assert not background_tiles.mixed_backgrounds(v, tile, COLOURS[a["colour"]])
        near = {"blue": "purple", "purple": "blue"}.get(a["background"])
        if near:
            v = v.copy()
            v[4:, 48:, 16:32] = np.clip(v[4:, 48:, 16:32].astype(int) - BACKGROUNDS[a["background"]]
                                        + BACKGROUNDS[near], 0, 255)             # its texture, the other colour
            assert background_tiles.tile_disagreement(v, tile, COLOURS[a["colour"]]) < 80   # the threshold's blind spot
            assert background_tiles.mixed_backgrounds(v, tile, COLOURS[a["colour"]])
            found += 1
    assert found >= 3


def test_context_vs_caption_counts_the_tiles_that_keep_the_real_background():
    """A real clip keeps its background in every tile; repainted with the other background, in none; half, half."""
    from hpdm_cli.data.shapes import BACKGROUNDS, COLOURS, _allowed_backgrounds
    clips = context_vs_caption.conflict_clips(3, (8, 64, 64))
    assert len(clips) == 3
    for video, at, other in clips:
        assert other != at["background"] and other in _allowed_backgrounds(at["colour"])
        args = ((4, 16, 16), COLOURS[at["colour"]], BACKGROUNDS[at["background"]], BACKGROUNDS[other])
        assert context_vs_caption.kept_share(video, *args) == 1.0
        painted = video.copy()
        background = np.abs(video.astype(int) - np.asarray(COLOURS[at["colour"]])).sum(-1) >= 150
        painted[background] = BACKGROUNDS[other]
        assert context_vs_caption.kept_share(painted, *args) == 0.0
        half = video.copy()
        half[:, :, 32:][background[:, :, 32:]] = BACKGROUNDS[other]
        assert context_vs_caption.kept_share(half, *args) == pytest.approx(0.5, abs=0.13)


def test_every_cpu_motion_probe_variant_is_a_valid_set_of_guide_overrides():
    # the probe's fixed overrides and each variant's, loaded as the script passes them to recipes/shapes-guide.toml
    script = (BENCH / "cpu_motion_probe.sh").read_text()
    table = dict(re.findall(r"^\s+(\w+)\) echo '(.*)' ;;$", script, flags=re.M))
    assert set(table) == {"learned", "fourier", "sincos"}
    fixed = ["diffusion.p_mean=1.5", "diffusion.p_std=0.7", "train.batch_size=32", 'train.precision="fp32"']
    assert all(o in script for o in fixed)
    for name, overrides in table.items():
        rec = load_recipe(ROOT / "recipes" / "shapes-guide.toml", fixed + shlex.split(overrides))
        assert rec.model.pos_embed == name and list(rec.pyramid.resolution) == [4, 16, 16]
    listed = re.search(r"unknown variant \$1 \(([\w ]+), or set", script)
    assert set(listed.group(1).split()) == set(table)


def test_pyramid_variants_refuses_an_export_name_that_no_variant_has_before_training(tmp_path):
    """EXPORT names variants: a name that is neither in VARIANTS nor a run folder stops the script at once (exit 2)."""
    env = dict(os.environ, OUT=str(tmp_path / "out"), RUNS=str(tmp_path / "runs"), VARIANTS="fastF", EXPORT="fastF8",
               SECONDS_EACH="5", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(["bash", str(BENCH / "gpu_pyramid_variants.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "EXPORT=fastF8: no variant of that name" in done.stderr
    assert not (tmp_path / "runs" / "fastF").exists()                  # nothing trained


def test_every_pyramid_variant_is_a_valid_set_of_shapes_overrides():
    # a typo in a variant's keys or values would only show on the GPU, after a cold start: load each here
    script = (BENCH / "gpu_pyramid_variants.sh").read_text()
    table = dict(re.findall(r"^\s+(\w+)\) echo '(.*)' ;;$", script, flags=re.M))   # variant -> its overrides
    assert {"default", "fast", "fastR", "fastS"} <= set(table)
    for overrides in table.values():
        load_recipe(ROOT / "recipes" / "shapes.toml", shlex.split(overrides))   # raises a ConfigError naming the key
    assert load_recipe(ROOT / "recipes" / "shapes.toml", shlex.split(table["fastS"])).train.batch_size == 128
    assert load_recipe(ROOT / "recipes" / "shapes.toml", shlex.split(table["fastL"])).train.batch_size == 512
    assert load_recipe(ROOT / "recipes" / "shapes.toml", shlex.split(table["fast2g"])).train.batch_size == 512  # global
    assert load_recipe(ROOT / "recipes" / "shapes.toml", shlex.split(table["fastR"])).diffusion.ramped
    assert load_recipe(ROOT / "recipes" / "shapes.toml", shlex.split(table["fastF0a"])).model.pos_fixed_into == \
        "attention"
    # the script's own message for an unknown variant names exactly the table's variants
    listed = re.search(r"unknown variant \$1 \(([\w ]+), or set", script)
    assert set(listed.group(1).split()) == set(table)


def test_token_scale_splits_level0_tokens_into_content_and_a_scaled_position_table():
    """token_scale.py: the content and position parts are the tokenizer's output and the fixed table's (scaled by
    model.pos_fixed_scale), and level 0's float32 and bf16 denoising errors agree on a tiny class model."""
    import token_scale
    from conftest import tiny_recipe
    from hpdm_cli.model.network import HPDMNet
    torch.manual_seed(0)
    nets = []
    for scale in (1.0, 0.25):
        rec = tiny_recipe(pos_embed="fourier", pos_fixed_scale=scale, cond="class")
        net = HPDMNet(rec.pyramid, rec.model).eval()
        with torch.no_grad():
            if nets:
                net.load_state_dict(nets[0][0].state_dict())
            else:                                    # zero-initialised layers (the detokenizer) given signal
                for p in net.parameters():
                    if torch.all(p == 0):
                        p.normal_(0, 0.05)
            net.pos_embed.zero_(), net.level_embed.zero_()
        nets.append((net, rec))
    x0 = torch.rand(3, 3, *nets[0][1].pyramid.level_resolution(0)) * 2 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    cond = torch.tensor([0, 1, 2])
    rows = [token_scale.measure(net, rec, x0, cond, [0.3, 3.0], noise) for net, rec in nets]
    table = nets[0][0].pos_fixed
    for r1, r25 in zip(*rows):
        assert r1["position"] == pytest.approx(table.pow(2).mean().sqrt().item(), rel=1e-5)
        assert r25["position"] == pytest.approx(0.25 * r1["position"], rel=1e-5)
        assert r25["content"] == pytest.approx(r1["content"], rel=1e-6)           # the same tokenizer
        assert r1["mse_fp32"] > 0 and r1["bf16_change"] < 0.05 * r1["mse_fp32"]
    assert rows[0][0]["mse_fp32"] != rows[1][0]["mse_fp32"]                    # the table's scale reaches the output
    assert not nets[0][0].cfg.bf16_streams                                      # restored after the bf16 pass
    rec = tiny_recipe(pos_embed="fourier", pos_fixed_sigma=[0.5, 2.0], cond="class")      # the table faded out
    gated = HPDMNet(rec.pyramid, rec.model).eval()
    gated.load_state_dict(nets[0][0].state_dict())
    low, high = token_scale.measure(gated, rec, x0, cond, [0.3, 3.0], noise)
    assert low["position"] == 0 and high["position"] == pytest.approx(rows[0][1]["position"], rel=1e-5)
