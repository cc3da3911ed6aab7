"""Training peak memory against output resolution on the GPU host: `hpdm bench --memory-chart` with the peer.

The chart itself is `hpdm bench RECIPE --memory-chart PNG` (hpdm_cli/drivers/memory_chart.py:
HPDM against video-diffusion-pytorch's Unet3D, up to out-of-memory). The GPU host has no
internet, so this script first installs the baseline from the wheels carried in the checkout
(`bash benchmarks/stage_wheels.sh`; `carried.py` stands in for a torchvision built for another
torch), then draws the same chart. `--tiny` runs toy models and sizes on the CPU (no memory
figures there: it checks the steps), `--dry-run` draws the chart from made-up numbers (it checks
the chart). Examples:
  python3 benchmarks/memory_vs_resolution.py --png out/memory.png --json out/memory.json
  python3 benchmarks/memory_vs_resolution.py --dry-run --png /tmp/m.png --json /tmp/m.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import carried  # noqa: E402

from hpdm_cli.config import ConfigError  # noqa: E402
from hpdm_cli.drivers import memory_chart as mc  # noqa: E402
from hpdm_cli.io import atomic_write_text  # noqa: E402
from hpdm_cli.io.contact_sheet import write_png  # noqa: E402

TINY_RESOLUTIONS = "4x16x16,8x32x32"
UNET_TINY = dict(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)
HPDM_TINY = ["pyramid.patch=[2,8,8]", "model.interface_dim=64", "model.latent_dim=32", "model.num_latents=8",
             "model.num_blocks=2", "model.compute_layers=1", "model.head_dim=16", "model.load=\"linear\""]


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


def main(argv=None) -> int:
    """Bring the baseline from the carried wheels, then measure (or, with --dry-run, make up) and draw."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(HERE.parent / "recipes" / "ucf.toml"))
    ap.add_argument("--resolutions", help=f"comma-separated FxHxW (default {mc.RESOLUTIONS})")
    ap.add_argument("--no-baseline", action="store_true", help="HPDM alone")
    ap.add_argument("--wheels", default=str(HERE.parent / carried.DEFAULT_WHEELS), help="folder of carried wheels")
    ap.add_argument("--tiny", action="store_true", help="toy models and sizes on the CPU (checks the steps)")
    ap.add_argument("--dry-run", action="store_true", help="made-up numbers (checks the chart)")
    ap.add_argument("--png", default="memory_vs_resolution.png")
    ap.add_argument("--json", default="memory_vs_resolution.json")
    a = ap.parse_args(argv)
    try:
        if a.dry_run:
            res = mc.parse_resolutions(a.resolutions or mc.RESOLUTIONS)
            models = ["hpdm"] if a.no_baseline else ["hpdm", "unet3d"]
            points = fake_points(models, res)
            write_png(a.png, mc.draw_chart(points, 139.8, "training memory vs resolution: made-up numbers"))
            atomic_write_text(a.json, json.dumps({"device": "made-up numbers (--dry-run)", "points": points}, indent=1))
            print(mc.summary(points))
            return 0
        if not a.no_baseline:
            carried.ensure_wheels(carried.VDP_MODULES, a.wheels)
            _, stood_in = carried.import_peer_module(mc.UNET_MODULE)
            if stood_in:
                print(f"(stand-ins for {', '.join(stood_in)}: imported by the baseline's trainer only)")
        mc.run_memory_chart(a.recipe, HPDM_TINY if a.tiny else [], Path(a.png), json_out=Path(a.json),
                            resolutions=a.resolutions or (TINY_RESOLUTIONS if a.tiny else None),
                            baseline=not a.no_baseline, baseline_config=UNET_TINY if a.tiny else None)
    except (ConfigError, carried.CarriedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.png} and {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
