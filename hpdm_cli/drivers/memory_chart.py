"""`hpdm bench --memory-chart`: training peak memory against output resolution, up to out-of-memory.

For every output resolution (frames x height x width) one training step at batch 1 in bf16
autocast (fp32 weights, forward + backward + optimiser step, synthetic data already on the
device) is run and its peak allocated GPU memory recorded; a step that runs out of memory is
marked OOM and the model's larger resolutions are skipped.

* HPDM: the recipe's model with `pyramid.resolution` set to the output size and its patch kept,
  so the pyramid gains a level for each doubling of the largest full/patch ratio (for
  recipes/ucf.toml's 16x64x64 patch: 16x64^2 one level, 32x128^2 two, 64x256^2 three, ...);
  `model.load = "linear"` spreads the blocks over the levels (docs/method.md, section 7). The step
  is `hpdm bench`'s (patch extraction from the full video, EDM loss, clipping, the recipe's optimiser, the EMA).
* Baseline (`baseline=True`): `video-diffusion-pytorch`'s Unet3D (dim=112, dim_mults=(1,2,4,8):
  103.9M parameters against HPDM-S's 105.2M) denoising the whole video (eps-prediction MSE,
  Adam), as its GaussianDiffusion trains it. A benchmark-only package, never a dependency of hpdm.

Writes a JSON of the points and a PNG chart (memory in GiB against resolution, each model, the
card's capacity, OOM marked), drawn with hpdm's own PNG writer and bitmap font. Both files are
rewritten after every point, so a job stopped by its time limit keeps what it measured. On a
CPU the steps run but there are no memory figures.
"""

from __future__ import annotations

import gc
import importlib
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..config import ConfigError
from ..device import use_tf32
from ..io import atomic_write_json, holds_other_than, make_folder, unwritable
from ..io.contact_sheet import draw_text, text_width, write_png

__all__ = ["RESOLUTIONS", "parse_resolutions", "measure", "draw_chart", "summary", "run_memory_chart"]

RESOLUTIONS = "16x64x64,32x128x128,64x256x256,64x512x512,128x512x512,128x1024x1024,256x1024x1024"
UNET_CONFIG = dict(dim=112, dim_mults=(1, 2, 4, 8))
UNET_MODULE = "video_diffusion_pytorch.video_diffusion_pytorch"
MODELS = {"hpdm": "HPDM ({recipe})", "unet3d": "Unet3D (video-diffusion-pytorch)"}

WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (20, 20, 20), (120, 120, 120), (225, 225, 225)
RED = (200, 30, 30)
COLOURS = {"hpdm": (31, 100, 200), "unet3d": (230, 110, 0)}
MARGINS = dict(left=64, right=24, top=64, bottom=64)                        # of the plot area, pixels

Point = Callable[[tuple], dict]


def parse_resolutions(text: str) -> list[tuple[int, int, int]]:
    """'16x64x64,32x128x128' -> [(16, 64, 64), (32, 128, 128)]; ConfigError naming a bad item."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ConfigError(f"--resolutions: {item!r}: expected FRAMESxHEIGHTxWIDTH, e.g. 64x256x256")
        out.append(tuple(int(p) for p in parts))
    return out


def label(res) -> str:
    """A resolution as the chart and the table print it: 64x256x256."""
    return "x".join(map(str, res))


# ----------------------------------------------------------------------------- measuring

def _is_oom(e: BaseException) -> bool:
    import torch
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _free() -> None:
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def recipe_at(recipe_path, overrides: Sequence[str], res):
    """The recipe at output size `res`, its blocks spread over the levels linearly; ConfigError if it cannot tile it."""
    from ..recipe import load_recipe
    size = f"pyramid.resolution=[{','.join(map(str, res))}]"
    return load_recipe(recipe_path, [*overrides, size, "model.load=\"linear\""])


def hpdm_point(recipe_path, overrides: Sequence[str]) -> Point:
    """Peak memory of one `hpdm bench` training step of the recipe's model at each output size."""
    from .bench import bench_training

    def point(res) -> dict:
        rec = recipe_at(recipe_path, overrides, res)
        row = bench_training(rec, steps=1, warmup=0, batch=1, precisions=["bf16"])[0]
        return {"peak_mem_GiB": row["peak_mem_GiB"], "levels": rec.pyramid.num_levels, "params_M": row["params_M"],
                "step_s": row["step_s"]}
    return point


def baseline_module():
    """video-diffusion-pytorch's model module; ConfigError saying how to install it when it cannot be imported."""
    try:
        return importlib.import_module(UNET_MODULE)
    except Exception as e:                                   # absent, or a torchvision built for another torch
        raise ConfigError(f"--memory-chart: the Unet3D baseline needs the benchmark-only package "
                          f"video-diffusion-pytorch ({type(e).__name__}: {str(e)[:120]}); install it with "
                          "pip install 'hpdm[bench]', or pass --no-baseline") from None


def unet_point(module, config: Optional[dict] = None) -> Point:
    """Peak memory of one Unet3D training step (bf16 autocast, Adam) on a whole video of each size."""
    import torch
    import torch.nn.functional as F
    config = dict(UNET_CONFIG if config is None else config)

    def point(res) -> dict:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        use_tf32(True)
        torch.manual_seed(0)
        net = module.Unet3D(**config).to(device)
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
    return point


def measure(models: dict[str, Point], resolutions, report=None, log: Callable[[str], None] = print) -> dict:
    """Run every (model, resolution) point in order; after an OOM the model's larger sizes are skipped.

    `models` maps a name to its point function; `report(points)` is called after every point with
    the points so far (to write partial results).
    """
    points = {}
    for m, fn in models.items():
        rows, stop = [], None
        for res in resolutions:
            row = {"resolution": list(res)}
            if stop:
                row.update(status="skipped", reason=f"after {stop} at a smaller size")
            else:
                t0 = time.perf_counter()
                try:
                    row.update(status="ok", **fn(res))
                except Exception as e:                                  # OOM or another failure: recorded
                    row.update(status="oom" if _is_oom(e) else "error", reason=f"{type(e).__name__}: {str(e)[:300]}")
                    stop = row["status"]
                gib = row.get("peak_mem_GiB", float("nan"))
                log(f"{m:>7} {label(res):>14}: {row['status']}"
                    + ((f" {gib:.2f} GiB" if math.isfinite(gib) else "") if row["status"] == "ok"
                       else f" ({row['reason'][:120]})") + f" [{time.perf_counter() - t0:.1f} s]")
                _free()
            rows.append(row)
            points[m] = rows
            if report:
                report(points)
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


def draw_chart(points: dict, capacity_gib: Optional[float], title: str, *, names: Optional[dict] = None,
               width: int = 960, height: int = 560) -> np.ndarray:
    """Memory (GiB) against resolution for every model in `points`, the capacity line and OOM marks, as RGB uint8."""
    names = names or {}
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
    def ok(r) -> bool:
        return r["status"] == "ok" and math.isfinite(r.get("peak_mem_GiB", float("nan")))
    # At each resolution the highest point's value label goes above it, every other one below, so
    # that the labels of two curves that meet (the smallest sizes) do not overlap.
    top_series = {i: max((rows[i]["peak_mem_GiB"], name) for name, rows in points.items()
                         if i < len(rows) and ok(rows[i]))[1]
                  for i in range(len(resolutions))
                  if any(i < len(rows) and ok(rows[i]) for rows in points.values())}
    for k, (name, rows) in enumerate(points.items()):                     # curves, markers, OOM
        col = COLOURS.get(name, (90, 90, 90))
        prev = None
        for i, r in enumerate(rows):
            if ok(r):
                p = (ypix(r["peak_mem_GiB"]), xpix(i))
                if prev:
                    _line(img, *prev, *p, col, r=1)
                _dot(img, *p, col, r=3)
                s = f"{r['peak_mem_GiB']:.3g}"
                draw_text(img, s, p[0] - 14 if top_series.get(i) == name else p[0] + 7, p[1] + 5, colour=col)
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
        draw_text(img, names.get(name, name), ly, left + 24, colour=BLACK)
    return img


def summary(points: dict) -> str:
    """One line per resolution: each model's peak GiB or its status."""
    names = list(points)
    lines = ["resolution      " + "".join(f"{n:>12}" for n in names)]
    for i, r in enumerate(next(iter(points.values()))):
        cells = []
        for n in names:
            p = points[n][i]
            gib = p.get("peak_mem_GiB", float("nan"))
            cells.append((f"{gib:.2f}" if math.isfinite(gib) else "ok (CPU)") if p["status"] == "ok" else p["status"])
        lines.append(f"{label(r['resolution']):<16}" + "".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command

def _check_target(path: Path, option: str) -> None:
    """Refuse an output path that cannot be written, before anything is measured."""
    why = unwritable(path, suffix=".json" if option == "--json" else None)     # missing folders are made
    if why is not None:
        raise ConfigError(f"{option} {path}: {why}")
    if option == "--json" and holds_other_than(path, lambda v: isinstance(v, dict) and {"device", "points"} <= set(v)):
        raise ConfigError(f"--json {path} already holds a file that is not an `hpdm bench --memory-chart` report: "
                          "choose another path (or delete it)")


def run_memory_chart(recipe: str, overrides: Sequence[str], png: Path, *, json_out: Optional[Path] = None,
                     resolutions: Optional[str] = None, baseline: bool = True,
                     baseline_config: Optional[dict] = None, log: Callable[[str], None] = print) -> dict:
    """Measure the recipe's model (and the Unet3D baseline) at each resolution; write the PNG chart and JSON."""
    import torch

    from ..recipe import default_recipe_path, load_recipe
    png, json_out = Path(png), (None if json_out is None else Path(json_out))
    if png.suffix.lower() != ".png":
        raise ConfigError(f"--memory-chart {png}: expected a .png file name")
    for path, option in ((png, "--memory-chart"), (json_out, "--json")):
        if path is not None:
            _check_target(path, option)
    res = parse_resolutions(resolutions or RESOLUTIONS)
    path = default_recipe_path(recipe)
    load_recipe(path, list(overrides))                      # a bad recipe or override fails before any step
    for r in res:                                           # ...and so does a size the recipe's patches cannot tile
        try:
            recipe_at(path, overrides, r)
        except ConfigError as e:
            raise ConfigError(f"--resolutions {label(r)}: {e}") from None
    for target in (png, json_out):
        if target is not None:
            make_folder(target.parent, "--memory-chart" if target == png else "--json")
    models = {"hpdm": hpdm_point(path, list(overrides))}
    if baseline:
        models["unet3d"] = unet_point(baseline_module(), baseline_config)
    names = {"hpdm": MODELS["hpdm"].format(recipe=Path(path).name), "unet3d": MODELS["unet3d"]}
    device, capacity = "cpu", None
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
        capacity = torch.cuda.get_device_properties(0).total_memory / 2 ** 30

    def write(points):
        """Write the JSON and the chart of the points so far (every point is kept if a later one is cut short)."""
        full = {m: points.get(m, []) + [{"resolution": list(r), "status": "not run"}
                                        for r in res[len(points.get(m, [])):]] for m in models}
        write_png(png, draw_chart(full, capacity, f"training memory vs resolution: {device}", names=names))
        if json_out is not None:
            cfg = dict(UNET_CONFIG if baseline_config is None else baseline_config)
            atomic_write_json(json_out, {
                "device": device, "capacity_GiB": capacity, "points": full, "recipe": str(path),
                "overrides": list(overrides),
                "unet3d_config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()} if baseline
                else None})
        return full

    points = write(measure(models, res, report=write, log=log))
    log(summary(points))
    return points
