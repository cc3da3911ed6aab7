"""Host time of a training step's random draw (patch offsets + noise), which sits before the step's first kernel.

A step draws its nested patch offsets and sigmas on a CPU generator (per-step seeded, so runs
resume exactly) and copies them to the device; its noise comes either from that generator too
(train.noise_on = "host") or from a device generator seeded from it ("device", the default). This
times that part alone, as `hpdm bench` and `hpdm train` do it (median of --repeat draws,
milliseconds): host noise drawn for the CPU, host noise drawn and queued for the device, and
device noise. Compare with the step time of `hpdm bench`.
  python3 benchmarks/draw_cost.py --json out/draw_cost.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def time_draws(recipe, batch: int, device, repeat: int, noise_on_device: bool = False) -> float:
    """Median milliseconds of one step's offsets + noise draw onto `device` (the device synchronised after)."""
    import torch
    from hpdm_cli.diffusion.edm import draw_noise
    from hpdm_cli.pyramid import sample_nested_offsets
    L = recipe.pyramid.num_levels
    shape = (batch, L, recipe.model.channels, *recipe.pyramid.patch)
    times = []
    for i in range(repeat + 1):
        g = torch.Generator().manual_seed(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        sample_nested_offsets(recipe.pyramid, batch, generator=g).to(device)
        draw_noise(recipe.diffusion, shape, conditional=recipe.model.cond != "none", generator=g, device=device,
                   noise_on_device=noise_on_device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:                                                                 # the first one warms up
            times.append(1e3 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]


def main(argv=None) -> int:
    """Time the draw for the CPU and for the device; print and optionally write JSON."""
    import torch
    from hpdm_cli.io import atomic_write_text
    from hpdm_cli.recipe import default_recipe_path, load_recipe
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(HERE.parent / "recipes" / "ucf.toml"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    rec = load_recipe(default_recipe_path(a.recipe), [])
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    row = {"recipe": a.recipe, "batch": a.batch, "threads": torch.get_num_threads(),
           "cpu_ms": time_draws(rec, a.batch, torch.device("cpu"), a.repeat),
           "device": str(dev), "to_device_ms": time_draws(rec, a.batch, dev, a.repeat),
           "device_noise_ms": time_draws(rec, a.batch, dev, a.repeat, noise_on_device=True)}
    print(f"step draw ({Path(a.recipe).name}, batch {a.batch}): host noise {row['cpu_ms']:.1f} ms on the CPU, "
          f"{row['to_device_ms']:.1f} ms onto {dev}; device noise {row['device_noise_ms']:.1f} ms")
    if a.json:
        atomic_write_text(a.json, json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
