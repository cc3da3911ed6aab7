"""Our training step against lucidrains' `rin-pytorch` in one run: items/s, achieved TFLOP/s, MFU, peak memory.

Ours is `hpdm bench`'s training step of a recipe (default recipes/ucf.toml: HPDM-S, three levels
16x64^2 -> 32x128^2 -> 64x256^2, patch extraction + forward + backward + LAMB step on synthetic
videos already on the device). The peer is `rin_pytorch.RIN` (a RIN image denoiser) built at one
HPDM level's shape, stepped on synthetic images already on the device. Both sides run in fresh
worker processes, eager and `torch.compile`d, with bf16 autocast and fp32 weights, timed as
`hpdm bench` times: median of --steps steps after --warmup, each between device synchronisations.

What is matched (the peer's constructor mapped onto one HPDM level of recipes/ucf.toml):
  * interface: 4096 tokens x 1024 (RIN image_size=256, patch_size=4: a 64x64 token grid; a token
    is 4x4 pixels x 3 channels = 48 values, as HPDM's 1x4x4 tokenizer of a 16x64x64 patch);
  * latents: 768 x 256 (num_latents=768, dim_latent=256); blocks: 6 (depth=6), each with 4
    latent self-attention layers (latent_self_attn_depth=4); MLPs 4x wide, GELU;
  * read and latent self-attention: 4 heads x 64 (heads=4, dim_head=64), as HPDM's 256-wide
    latent attention with head_dim 64;
  * no self-attention over the interface (patches_self_attn=False), as RIN's paper and HPDM;
  * the noise level enters as one extra latent token (latent_token_time_cond=True), as HPDM's
    condition tokens do (its default instead adds a 4096 -> 2 x width scale/shift projection to
    every attention: ~110M more parameters for little compute).
What is not matched:
  * RIN uses one attention width for every attention, so its write attention (patches -> latents)
    is 256 wide where HPDM's is 1024 wide (16 heads x 64);
  * RIN adds a depthwise 3x3 convolution on the patches per block (PEG) and learned axial
    position MLPs; HPDM adds a pyramid-level token and a class token to the latents; RIN's input
    is the image concatenated with a zero self-conditioning image (96 values a token);
  * attention kernels: ours is torch SDPA with every kernel allowed. The peer, eager, runs its
    `flash=True` path (SDPA restricted, off the A100, to the math and memory-efficient kernels);
    compiled, its einsum path (`flash=False`), because its flash path wraps every attention in
    the deprecated `torch.backends.cuda.sdp_kernel` context, which torch.compile cannot trace (a
    graph break at each of its 36 attentions). `--peer-attn sdpa|einsum` forces one path;
  * HPDM steps three levels of a video per sample (adaptive computation: 12 block-levels, plus
    deep context fusion and patch extraction); the peer steps one image (6 block-levels). So
    items/s do not compare; achieved TFLOP/s (and MFU) do, which is the ratio printed;
  * parameters: ours 105M (with the deep-fusion projections), the peer 84M (its narrower write
    attention); optimiser: ours LAMB (hpdm's), the peer Adam (its trainer's, betas 0.9/0.99),
    both on fp32 weights; the peer's loss is the v-prediction MSE of its GaussianDiffusion
    without the random self-conditioning pass (self-conditioning is off in recipes/ucf.toml too).
FLOPs: ours from `hpdm_cli/model/flops.py` (exact, analytic); both sides are also counted with
torch's FlopCounterMode over one eager step (ours of COUNT_BATCH videos; grouped-convolution backward corrected: see
`carried.step_flops`). The ratio ours/peer uses ours' analytic count against the peer's counted
one; the counted/counted ratio is printed beside it.

The peer is installed from wheels carried in the checkout (`bash benchmarks/stage_wheels.sh`
stages them into out/gpu/whl; the GPU host has no internet). `--tiny` runs both at a toy size on
the CPU to check the whole pipeline. Examples:
  python3 benchmarks/peer_rin.py --json out/peer_rin.json
  python3 benchmarks/peer_rin.py --tiny --modes eager
  python3 benchmarks/peer_rin.py --sides peer --modes compiled --peer-attn sdpa
  python3 benchmarks/peer_rin.py --modes compiled,graphs       # with CUDA graphs (train.compile="reduce-overhead")
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import carried  # noqa: E402

# RIN at one HPDM level of recipes/ucf.toml (see the module docstring), and a toy size for --tiny.
PEER_FULL = dict(dim=1024, image_size=256, patch_size=4, channels=3, depth=6, latent_self_attn_depth=4,
                 dim_latent=256, num_latents=768, patches_self_attn=False, latent_token_time_cond=True,
                 heads=4, dim_head=64)
PEER_TINY = dict(dim=64, image_size=16, patch_size=4, channels=3, depth=2, latent_self_attn_depth=1,
                 dim_latent=32, num_latents=8, patches_self_attn=False, latent_token_time_cond=True,
                 heads=2, dim_head=16)
# --modes: name -> torch.compile mode (None: eager). "graphs" replays CUDA graphs (each step marks its start);
# "autotune" lets inductor benchmark its GEMM and kernel choices at compile time (minutes more of compilation).
MODES = {"eager": None, "compiled": "default", "graphs": "reduce-overhead", "autotune": "max-autotune-no-cudagraphs"}
CUDA_GRAPH_MODES = ("reduce-overhead",)
# Our step's FLOPs are counted over an eager step of this many videos at most (per video they do not depend on
# the batch): an eager step at the timed batch needs more memory than the compiled one, and ran out of it first.
COUNT_BATCH = 2
OURS_TINY = ["pyramid.resolution=[4,16,16]", "pyramid.patch=[2,8,8]", "model.interface_dim=64",
             "model.latent_dim=32", "model.num_latents=8", "model.num_blocks=2", "model.compute_layers=1",
             "model.head_dim=16", "model.load=linear"]


def _device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker_ours(a) -> dict:
    """Time and count our training step (a row of `hpdm bench`, plus the FlopCounterMode count)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from hpdm_cli.recipe import default_recipe_path, load_recipe
    from hpdm_cli.drivers import bench
    overrides = (OURS_TINY if a.tiny else []) + list(a.override)
    rec = load_recipe(default_recipe_path(a.recipe), overrides)
    device = _device()

    count_batch = min(a.batch, COUNT_BATCH)

    def one_step():
        bench.bench_training(rec, steps=1, warmup=0, batch=count_batch, precisions=[a.precision])
    # On the CPU the math SDPA backend decomposes attention into counted matmuls.
    with sdpa_kernel([SDPBackend.MATH]) if device.type == "cpu" else nullcontext():
        counted = carried.count_step_flops(one_step) / count_batch
    if a.compile:
        setting = "true" if a.compile == "default" else f'"{a.compile}"'
        rec = load_recipe(default_recipe_path(a.recipe), overrides + [f"train.compile={setting}"])
    row = bench.bench_training(rec, steps=a.steps, warmup=a.warmup, batch=a.batch, precisions=[a.precision])[0]
    return {"side": "ours", "model": f"HPDM {Path(a.recipe).stem} ({rec.pyramid.num_levels} levels, "
                                     f"{'x'.join(map(str, rec.pyramid.resolution))})",
            "compile": bool(a.compile), "mode": mode_name(a.compile), "precision": a.precision, "batch": a.batch,
            "unit": "videos",
            "params_M": row["params_M"], "step_s": row["step_s"], "update_s": row["update_s"],
            "items_per_s": row["videos_per_s"],
            "TFLOP_per_item": row["TFLOP_per_video"], "TFLOP_per_item_counted": counted / 1e12,
            "peak_mem_GiB": row["peak_mem_GiB"], "device": row["device"], "stood_in": []}


def worker_peer(a) -> dict:
    """Time and count one training step of rin-pytorch's RIN (v-prediction MSE, Adam)."""
    import torch
    import torch.nn.functional as F
    from hpdm_cli.train.step import set_precision
    carried.ensure_wheels(carried.RIN_MODULES, a.wheels)
    mod, stood_in = carried.import_peer_module("rin_pytorch.rin_pytorch")
    cfg = dict(PEER_TINY if a.tiny else PEER_FULL)
    device = _device()
    # The peer's Attend: `flash=True` runs torch's fused SDPA kernels (its fast path eager; a graph
    # break per attention under torch.compile); its einsum path compiles whole, and on the CPU
    # keeps the attention FLOPs countable.
    attn = a.peer_attn if a.peer_attn != "auto" else ("einsum" if a.compile or device.type == "cpu" else "sdpa")
    cfg["flash"] = attn == "sdpa"
    torch.manual_seed(0)
    net = mod.RIN(**cfg).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.99))
    B, S = a.peer_batch, cfg["image_size"]
    g = torch.Generator(device="cpu").manual_seed(0)
    images = (torch.rand(B, 3, S, S, generator=g) * 2 - 1).to(device)
    bf16 = a.precision == "bf16"
    set_precision(a.precision)      # as hpdm's step: TF32 tensor cores for the float32 matmuls left outside autocast

    def step(model):
        t = torch.rand(B, device=device)
        noise = torch.randn_like(images)
        alpha, sigma = torch.cos(t * math.pi / 2)[:, None, None, None], torch.sin(t * math.pi / 2)[:, None, None, None]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = model(alpha * images + sigma * noise, t)
        loss = F.mse_loss(pred.float(), alpha * noise - sigma * images)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    counted = carried.count_step_flops(lambda: step(net)) / B
    model = torch.compile(net, mode=a.compile) if a.compile else net
    graphs = a.compile in CUDA_GRAPH_MODES
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(a.warmup + a.steps):          # timed as `hpdm bench` times ours: back to back, synced at the ends
        if i == a.warmup:
            _sync(device)
            t0 = time.perf_counter()
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        step(model)
    _sync(device)
    sec = (time.perf_counter() - t0) / a.steps
    tokens = (cfg["image_size"] // cfg["patch_size"]) ** 2
    return {"side": "peer", "model": f"rin-pytorch RIN ({cfg['image_size']}^2, {tokens} tokens x {cfg['dim']}, "
                                     f"{cfg['num_latents']} latents x {cfg['dim_latent']})",
            "compile": bool(a.compile), "mode": mode_name(a.compile), "precision": a.precision, "batch": B,
            "unit": "images", "attention": attn,
            "params_M": sum(p.numel() for p in net.parameters()) / 1e6, "step_s": sec, "items_per_s": B / sec,
            "TFLOP_per_item": counted / 1e12, "TFLOP_per_item_counted": counted / 1e12,
            "peak_mem_GiB": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda"
            else float("nan"),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "stood_in": stood_in}


def finish(row: dict, precision: str) -> dict:
    """Add achieved TFLOP/s (analytic and counted) and MFU to a worker's row."""
    import torch
    from hpdm_cli.drivers import bench
    peak = bench.peak_flops(_device(), precision) if row["device"] != "cpu" else None
    row["TFLOPs"] = row["TFLOP_per_item"] * row["items_per_s"]
    row["TFLOPs_counted"] = row["TFLOP_per_item_counted"] * row["items_per_s"]
    row["MFU_%"] = 100 * row["TFLOPs"] * 1e12 / peak if peak else float("nan")
    row["torch"] = torch.__version__
    return row


def mode_name(compile_mode) -> str:
    """The --modes name of a torch.compile mode (None: eager)."""
    return next(name for name, m in MODES.items() if m == (compile_mode or None))


def row_mode(row: dict) -> str:
    """A row's mode; rows written before modes had names say only whether they were compiled."""
    return row.get("mode") or ("compiled" if row.get("compile") else "eager")


def _run_worker(side: str, mode: str, a) -> dict:
    """Run one measurement (`mode`: a MODES name) in a fresh process; returns its row or {"error": ...}."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--recipe", a.recipe,
           "--batch", str(a.batch), "--peer-batch", str(a.peer_batch), "--steps", str(a.steps),
           "--warmup", str(a.warmup), "--precision", a.precision, "--wheels", a.wheels]
    cmd += ["--compile", MODES[mode]] if MODES[mode] else []
    cmd += ["--tiny"] if a.tiny else []
    cmd += ["--peer-attn", a.peer_attn]
    for o in a.override:
        cmd += ["--override", o]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(HERE.parent), env.get("PYTHONPATH", "")] if p)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"side": side, "compile": bool(MODES[mode]), "mode": mode, "error": f"timed out after {a.timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        if "OutOfMemoryError" in p.stderr:
            tail = "out of memory: " + tail
        return {"side": side, "compile": bool(MODES[mode]), "mode": mode, "error": tail}
    return json.loads(lines[-1])


def table(rows: list[dict]) -> str:
    """Render the rows and the ours/peer ratios as a plain-text table."""
    head = ["side", "mode", "batch", "items/s", "TFLOP/item", "counted", "TFLOP/s", "MFU %", "peak GiB", "update %"]
    out = [" | ".join(f"{h:>13}" if i == 0 else f"{h:>10}" for i, h in enumerate(head))]
    for r in rows:
        if "error" in r:
            out.append(f"{r['side']:>13} | {row_mode(r):>10} | ERROR: {r['error']}")
            continue
        side = r["side"] + (f" ({r['attention']})" if r.get("attention") else "")
        cells = (side, row_mode(r), r["batch"], f"{r['items_per_s']:.2f}",
                 f"{r['TFLOP_per_item']:.3f}", f"{r['TFLOP_per_item_counted']:.3f}", f"{r['TFLOPs']:.1f}",
                 f"{r['MFU_%']:.1f}", f"{r['peak_mem_GiB']:.1f}",
                 f"{100 * r['update_s'] / r['step_s']:.1f}" if "update_s" in r else "-")   # clip + optimiser + EMA
        out.append(" | ".join(f"{v:>13}" if i == 0 else f"{v:>10}" for i, v in enumerate(cells)))
    for comp, (o, p) in ratios(rows).items():
        out.append(f"ours / peer, achieved TFLOP/s, {comp}: {o:.2f}x (analytic ours vs counted peer), "
                   f"{p:.2f}x (both counted)")
    return "\n".join(out)


def ratios(rows: list[dict]) -> dict:
    """{mode: (ours analytic / peer, ours counted / peer counted)} for modes where both sides ran.

    With CUDA graphs on our side, "graphs vs compiled" also compares it with the peer compiled
    the plain way (the comparison the speed target names).
    """
    def ok(side, mode):
        return [r for r in rows if r.get("side") == side and row_mode(r) == mode and "error" not in r]
    out = {}
    for name, ours, peer in [(m, m, m) for m in MODES] + [("graphs vs compiled", "graphs", "compiled")]:
        o, p = ok("ours", ours), ok("peer", peer)
        if o and p:
            out[name] = (o[0]["TFLOPs"] / p[0]["TFLOPs"], o[0]["TFLOPs_counted"] / p[0]["TFLOPs_counted"])
    return out


def _write(a, rows: list[dict]) -> None:
    """Write the rows so far, the ratios and the peer's configuration to --json (atomically)."""
    from hpdm_cli.io import atomic_write_json
    atomic_write_json(a.json, {"rows": rows, "ratios": ratios(rows), "peer_config": PEER_TINY if a.tiny else PEER_FULL})


def main(argv=None) -> int:
    """Parse options; as a worker print one JSON row, else run all workers and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(HERE.parent / "recipes" / "ucf.toml"))
    ap.add_argument("--override", action="append", default=[], help="section.key=value for our recipe")
    ap.add_argument("--batch", type=int, default=16, help="our per-step batch (videos)")
    ap.add_argument("--peer-batch", type=int, default=32, help="the peer's per-step batch (images)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "tf32", "fp32"])
    ap.add_argument("--modes", default="eager,compiled", help="comma-separated: eager, compiled (torch.compile), "
                                                            "graphs (torch.compile with CUDA graphs), autotune "
                                                            "(its max-autotune-no-cudagraphs mode)")
    ap.add_argument("--sides", default="ours,peer", help="ours, peer or both (comma-separated)")
    ap.add_argument("--wheels", default=str(HERE.parent / carried.DEFAULT_WHEELS), help="folder of carried wheels")
    ap.add_argument("--peer-attn", default="auto", choices=["auto", "sdpa", "einsum"],
                    help="the peer's attention: its flash=True SDPA path or its einsum path (auto: SDPA eager, "
                         "einsum compiled)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (a CPU check of the pipeline)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per measurement")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--worker", choices=["ours", "peer"], help=argparse.SUPPRESS)
    ap.add_argument("--compile", default=None, choices=[m for m in MODES.values() if m], help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.tiny:
        a.batch, a.peer_batch = min(a.batch, 2), min(a.peer_batch, 2)
        a.steps, a.warmup = min(a.steps, 2), min(a.warmup, 1)
    if a.worker:
        row = (worker_ours if a.worker == "ours" else worker_peer)(a)
        print(json.dumps(finish(row, a.precision)))
        return 0
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        ap.error(f"--modes {a.modes!r}: expected a comma-separated list of {', '.join(MODES)}")
    sides = [x.strip() for x in a.sides.split(",") if x.strip()]
    if not sides or any(x not in ("ours", "peer") for x in sides):
        ap.error(f"--sides {a.sides!r}: expected ours, peer or ours,peer")
    try:                                                  # the peer's packages, once, before the workers
        installed = carried.ensure_wheels(carried.RIN_MODULES, a.wheels) if "peer" in sides else []
    except carried.CarriedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if installed:
        print(f"installed from carried wheels: {', '.join(installed)}", flush=True)
    rows = []
    for m in modes:
        for side in sides:
            t0 = time.perf_counter()
            rows.append(_run_worker(side, m, a))
            print(f"[{side} {m}: {time.perf_counter() - t0:.0f} s]", flush=True)
            if a.json:                                                    # kept if a later step is cut short
                _write(a, rows)
    for r in rows:
        if r.get("stood_in"):
            print(f"note: {r['side']}: {', '.join(r['stood_in'])} could not be imported and was stood in for "
                  "(used only by the peer's trainer)")
    print(table(rows))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
