"""Training peak memory against output resolution: HPDM against a full-resolution video U-Net, up to OOM.

For every output resolution (frames x height x width) one training step at batch 1 in bf16 autocast
(fp32 weights, forward + backward + optimiser step, synthetic data already on the device) is run
and its peak allocated GPU memory recorded; a step that runs out of memory is marked OOM and the
model's larger resolutions are skipped.

* HPDM: recipes/ucf.toml's model (HPDM-S) with `pyramid.resolution` set to the output size and
  the patch kept at 16x64x64, so the pyramid gains a level for each doubling of the largest
  full/patch ratio (16x64^2: 1 level, 32x128^2: 2, 64x256^2: 3, 64x512^2 and 128x512^2: 4,
  128x1024^2 and 256x1024^2: 5, ...); `model.load = "linear"` spreads the 6 blocks over the
  levels as the recipe's [1,1,2,2,3,3] does for 3 levels (docs/method.md, section 7). The step is
  `hpdm bench`'s (patch extraction from the full video, EDM loss, LAMB).
* Baseline: `video-diffusion-pytorch`'s Unet3D (dim=112, dim_mults=(1,2,4,8): 103.9M parameters
  against HPDM-S's 109.4M), denoising the whole video (eps-prediction MSE, Adam), as its
  GaussianDiffusion trains it.

Writes a JSON of the points and a PNG chart (memory in GiB against resolution, both models, the
card's capacity, OOM marked), drawn with hpdm's own PNG writer and bitmap font (no plotting
package). The baseline comes from wheels carried in the checkout (`bash benchmarks/stage_wheels.sh`).
`--tiny` runs toy sizes on the CPU (no memory figures there: it checks the steps), `--dry-run`
draws the chart from made-up numbers (it checks the chart). Examples:
  python3 benchmarks/memory_vs_resolution.py --png out/memory.png --json out/memory.json
  python3 benchmarks/memory_vs_resolution.py --dry-run --png /tmp/m.png --json /tmp/m.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import carried  # noqa: E402
from hpdm_cli.io import atomic_write_text  # noqa: E402
from hpdm_cli.io.contact_sheet import draw_text, text_width, write_png  # noqa: E402

RESOLUTIONS = "16x64x64,32x128x128,64x256x256,64x512x512,128x512x512,128x1024x1024,256x1024x1024"
TINY_RESOLUTIONS = "4x16x16,8x32x32"
UNET_FULL = dict(dim=112, dim_mults=(1, 2, 4, 8))
UNET_TINY = dict(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)
HPDM_TINY = ["model.interface_dim=64", "model.latent_dim=32", "model.num_latents=8", "model.num_blocks=2",
             "model.compute_layers=1", "model.head_dim=16"]
MODELS = {"hpdm": "HPDM-S (recipes/ucf.toml)", "unet3d": "Unet3D (video-diffusion-pytorch)"}

WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (20, 20, 20), (120, 120, 120), (225, 225, 225)
RED = (200, 30, 30)
COLOURS = {"hpdm": (31, 100, 200), "unet3d": (230, 110, 0)}
MARGINS = dict(left=64, right=24, top=64, bottom=64)                        # of the plot area, pixels


def parse_resolutions(text: str) -> list[tuple[int, int, int]]:
    """'16x64x64,32x128x128' -> [(16, 64, 64), (32, 128, 128)]."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"resolution {item!r}: expected FRAMESxHEIGHTxWIDTH, e.g. 64x256x256")
        out.append(tuple(int(p) for p in parts))
    return out


def label(res) -> str:
    """A resolution as the chart and the table print it: 64x256x256."""
    return "x".join(map(str, res))


# ----------------------------------------------------------------------------- measuring

def _is_oom(e: BaseException) -> bool:
    import torch
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _free():
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def hpdm_point(res, a) -> dict:
    """Peak memory of one `hpdm bench` training step of recipes/ucf.toml's model at output size `res`."""
    from hpdm_cli.recipe import default_recipe_path, load_recipe
    over = [f"pyramid.resolution=[{','.join(map(str, res))}]", "model.load=linear"]
    if a.tiny:
        over += ["pyramid.patch=[2,8,8]"] + HPDM_TINY
    rec = load_recipe(default_recipe_path(a.recipe), over)
    from hpdm_cli.drivers.bench import bench_training
    row = bench_training(rec, steps=1, warmup=0, batch=1, precisions=["bf16"])[0]
    return {"peak_mem_GiB": row["peak_mem_GiB"], "levels": rec.pyramid.num_levels, "params_M": row["params_M"],
            "step_s": row["step_s"]}


def unet_point(res, a) -> dict:
    """Peak memory of one Unet3D training step (bf16 autocast, Adam) on a whole video of size `res`."""
    import torch
    import torch.nn.functional as F
    mod, _ = carried.import_peer_module("video_diffusion_pytorch.video_diffusion_pytorch")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    net = mod.Unet3D(**(UNET_TINY if a.tiny else UNET_FULL)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.randn(1, 3, *res, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    t = torch.randint(0, 1000, (1,), device=device).float()
    noise = torch.randn_like(x)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        pred = net(x * 0.8 + noise * 0.6, t)
    F.mse_loss(pred.float(), noise).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"peak_mem_GiB": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda"
            else float("nan"), "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
            "step_s": time.perf_counter() - t0}


def measure(models, resolutions, a, report=None) -> dict:
    """Run every (model, resolution) point in order; after an OOM the model's larger sizes are skipped.

    `report(points)` is called after every point with the points so far (to write partial results).
    """
    points = {}
    for m in models:
        fn = hpdm_point if m == "hpdm" else unet_point
        rows, stop = [], None
        for res in resolutions:
            row = {"resolution": list(res)}
            if stop:
                row.update(status="skipped", reason=f"after {stop} at a smaller size")
            else:
                t0 = time.perf_counter()
                try:
                    row.update(status="ok", **fn(res, a))
                except Exception as e:                                  # OOM or another failure: recorded
                    row.update(status="oom" if _is_oom(e) else "error", reason=f"{type(e).__name__}: {str(e)[:300]}")
                    stop = row["status"]
                print(f"{m:>7} {label(res):>14}: {row['status']}"
                      + (f" {row['peak_mem_GiB']:.2f} GiB" if row["status"] == "ok" else f" ({row['reason'][:120]})")
                      + f" [{time.perf_counter() - t0:.1f} s]", flush=True)
                _free()
            rows.append(row)
            points[m] = rows
            if report:
                report(points)
    return points


def fake_points(models, resolutions) -> dict:
    """Made-up points for --dry-run: HPDM grows slowly, the U-Net with the voxel count until it passes 140 GiB."""
    points = {}
    for m in models:
        rows, stop = [], False
        for i, res in enumerate(resolutions):
            vox = math.prod(res) / (16 * 64 * 64)
            gib = 2.0 + 1.5 * i + 4e-4 * vox if m == "hpdm" else 1.0 + 2.5 * vox
            if stop:
                rows.append({"resolution": list(res), "status": "skipped", "reason": "after oom at a smaller size"})
            elif gib > 140:
                rows.append({"resolution": list(res), "status": "oom", "reason": "made up"})
                stop = True
            else:
                rows.append({"resolution": list(res), "status": "ok", "peak_mem_GiB": gib})
        points[m] = rows
    return points


# ----------------------------------------------------------------------------- drawing

def _nice_step(span: float, ticks: int = 6) -> float:
    """A 1/2/2.5/5 x 10^k step giving about `ticks` intervals over `span`."""
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    return next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)


def _dot(img, y, x, colour, r=1):
    h, w = img.shape[:2]
    img[max(0, y - r):min(h, y + r + 1), max(0, x - r):min(w, x + r + 1)] = colour


def _line(img, y0, x0, y1, x1, colour, r=1, dash=0):
    n = int(max(abs(y1 - y0), abs(x1 - x0))) + 1
    for i, (y, x) in enumerate(zip(np.linspace(y0, y1, n), np.linspace(x0, x1, n))):
        if not dash or (i // dash) % 2 == 0:
            _dot(img, int(round(y)), int(round(x)), colour, r)


def draw_chart(points: dict, capacity_gib: float | None, title: str, *, width: int = 960,
               height: int = 560) -> np.ndarray:
    """Memory (GiB) against resolution for every model in `points`, the capacity line and OOM marks, as RGB uint8."""
    img = np.full((height, width, 3), WHITE, np.uint8)
    left, right, top, bottom = MARGINS["left"], MARGINS["right"], MARGINS["top"], MARGINS["bottom"]
    pw, ph = width - left - right, height - top - bottom
    resolutions = [tuple(r["resolution"]) for r in next(iter(points.values()))]
    n = len(resolutions)
    values = [r["peak_mem_GiB"] for rows in points.values() for r in rows
              if r["status"] == "ok" and math.isfinite(r.get("peak_mem_GiB", float("nan")))]
    ymax = max(values + ([capacity_gib] if capacity_gib else []) + [1.0]) * 1.1
    step = _nice_step(ymax)
    ymax = math.ceil(ymax / step) * step

    def ypix(v):
        return int(round(top + ph * (1 - v / ymax)))

    def xpix(i):
        return int(round(left + (i + 0.5) * pw / n))

    draw_text(img, title, 12, left, scale=2, colour=BLACK)
    draw_text(img, "peak training memory, GiB (batch 1, bf16)", 40, left, colour=GREY)
    v = 0.0
    while v <= ymax + 1e-9:                                               # grid and y labels
        y = ypix(v)
        img[y, left:left + pw] = LIGHT
        s = f"{v:g}"
        draw_text(img, s, y - 3, left - 6 - text_width(s), colour=BLACK)
        v += step
    img[top:top + ph + 1, left] = BLACK
    img[top + ph, left:left + pw] = BLACK
    for i, res in enumerate(resolutions):                                 # x ticks and labels
        x = xpix(i)
        img[top + ph:top + ph + 5, x] = BLACK
        s = label(res)
        draw_text(img, s, top + ph + 10, x - text_width(s) // 2, colour=BLACK)
    s = "output resolution (frames x height x width)"
    draw_text(img, s, height - 22, left + (pw - text_width(s)) // 2, colour=GREY)
    if capacity_gib:
        yc = ypix(capacity_gib)
        _line(img, yc, left, yc, left + pw, RED, r=0, dash=6)
        s = f"card capacity {capacity_gib:.1f} GiB"
        draw_text(img, s, yc - 11, left + pw - text_width(s) - 4, colour=RED)
    for k, (name, rows) in enumerate(points.items()):                     # curves, markers, OOM
        col = COLOURS.get(name, (90, 90, 90))
        prev = None
        for i, r in enumerate(rows):
            if r["status"] == "ok" and math.isfinite(r.get("peak_mem_GiB", float("nan"))):
                p = (ypix(r["peak_mem_GiB"]), xpix(i))
                if prev:
                    _line(img, *prev, *p, col, r=1)
                _dot(img, *p, col, r=3)
                s = f"{r['peak_mem_GiB']:.3g}"
                draw_text(img, s, p[0] - 14 if k == 0 else p[0] + 7, p[1] + 5, colour=col)
                prev = p
            elif r["status"] in ("oom", "error"):
                yy = ypix(capacity_gib) if capacity_gib else top + 8
                x = xpix(i)
                _line(img, yy - 6, x - 6, yy + 6, x + 6, col, r=1)
                _line(img, yy - 6, x + 6, yy + 6, x - 6, col, r=1)
                s = "OOM" if r["status"] == "oom" else "failed"
                draw_text(img, s, yy + 10 + 10 * k, x - text_width(s) // 2, colour=col)
                prev = None
        ly = top + 8 + 14 * k                                             # legend
        img[ly:ly + 8, left + 10:left + 18] = col
        draw_text(img, MODELS.get(name, name), ly, left + 24, colour=BLACK)
    return img


def summary(points: dict) -> str:
    """One line per resolution: each model's peak GiB or its status."""
    names = list(points)
    lines = ["resolution      " + "".join(f"{n:>12}" for n in names)]
    for i, r in enumerate(next(iter(points.values()))):
        cells = []
        for n in names:
            p = points[n][i]
            cells.append(f"{p['peak_mem_GiB']:.2f}" if p["status"] == "ok" else p["status"])
        lines.append(f"{label(r['resolution']):<16}" + "".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    """Measure (or, with --dry-run, make up) the points, print them, write the JSON and the PNG."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(HERE.parent / "recipes" / "ucf.toml"))
    ap.add_argument("--resolutions", help=f"comma-separated FxHxW (default {RESOLUTIONS})")
    ap.add_argument("--models", default="hpdm,unet3d", help="hpdm, unet3d or both")
    ap.add_argument("--wheels", default=str(HERE.parent / carried.DEFAULT_WHEELS), help="folder of carried wheels")
    ap.add_argument("--tiny", action="store_true", help="toy models and sizes on the CPU (checks the steps)")
    ap.add_argument("--dry-run", action="store_true", help="made-up numbers (checks the chart)")
    ap.add_argument("--png", default="memory_vs_resolution.png")
    ap.add_argument("--json", default="memory_vs_resolution.json")
    a = ap.parse_args(argv)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    if not models or any(m not in MODELS for m in models):
        ap.error(f"--models {a.models!r}: expected hpdm, unet3d or hpdm,unet3d")
    try:
        resolutions = parse_resolutions(a.resolutions or (TINY_RESOLUTIONS if a.tiny else RESOLUTIONS))
    except ValueError as e:
        ap.error(str(e))
    for path in (a.png, a.json):
        if not Path(path).resolve().parent.is_dir():
            ap.error(f"cannot write {path}: its folder does not exist (create it first)")
    device, capacity = "cpu", None
    if a.dry_run:
        points, device, capacity = fake_points(models, resolutions), "made-up numbers (--dry-run)", 139.8
    else:
        import torch
        if "unet3d" in models:
            try:
                carried.ensure_wheels(carried.VDP_MODULES, a.wheels)
            except carried.CarriedError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        if torch.cuda.is_available():
            device = torch.cuda.get_device_name(0)
            capacity = torch.cuda.get_device_properties(0).total_memory / 2 ** 30

    def write(points):
        """Write the JSON and the chart of the points so far (every point is kept if a later one is cut short)."""
        full = {m: points.get(m, []) + [{"resolution": list(r), "status": "not run"}
                                        for r in resolutions[len(points.get(m, [])):]] for m in models}
        write_png(a.png, draw_chart(full, capacity, f"training memory vs resolution: {device}"))
        unet = UNET_TINY if a.tiny else UNET_FULL
        atomic_write_text(a.json, json.dumps({
            "device": device, "capacity_GiB": capacity, "points": full, "hpdm_recipe": a.recipe, "tiny": a.tiny,
            "unet3d_config": {k: list(v) if isinstance(v, tuple) else v for k, v in unet.items()}}, indent=1))

    if not a.dry_run:
        points = measure(models, resolutions, a, report=write)
    write(points)
    print(summary(points))
    print(f"wrote {a.png} and {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
