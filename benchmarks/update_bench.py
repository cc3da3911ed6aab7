"""The training update alone, eager against compiled, per recipe: compilation seconds and milliseconds a step.

The update is what `hpdm_cli.train.step.apply_update` applies after the backward pass: the recipe's optimiser
(LAMB's device-skippable step, or fused AdamW) and the EMA, gated by a device flag. Eager, LAMB's lists of 0-dim
tensors and per-tensor gradient masks run a kernel per parameter tensor; `train.compile` compiles LAMB's step (the
EMA, a few multi-tensor kernels off the CPU, stays eager; this script once compiled it too). This times both
on a recipe's parameters with fixed random gradients (no forward or backward), so it shows what the update
costs a small model, whose steps are short, and what its compilation costs a cold machine.

    python benchmarks/update_bench.py shapes ucf [--steps 20] [--warmup 3] [--modes eager,compiled] [--json F]

The first call of each mode is timed apart (`first_s`: the compilation, for compiled); `ms` is the mean of
`--steps` later calls between two device events. On a CPU "compiled" runs the eager update, as training
does there; `--compile-on-cpu` compiles it anyway (inductor builds C++), to see why it does not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpdm_cli.recipe import default_recipe_path, load_recipe  # noqa: E402
from hpdm_cli.train import optim  # noqa: E402
from hpdm_cli.train.optim import make_ema, make_optimizer, param_groups  # noqa: E402
from hpdm_cli.train.step import apply_update, build_model  # noqa: E402

MODES = {"eager": False, "compiled": True}


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_update(recipe: str, mode: str, steps: int, warmup: int, device: torch.device,
                overrides: list[str] = ()) -> dict:
    """One row: the recipe's update in `mode` (eager or compiled) on its parameters, first call and mean per step."""
    rec = load_recipe(default_recipe_path(recipe), [*overrides, f"train.compile={str(MODES[mode]).lower()}"])
    net = build_model(rec).to(device)
    opt, ema = make_optimizer(param_groups(net, rec.train.weight_decay), rec.train), make_ema(net, rec.train)
    params = [p for p in net.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    grads = [(torch.randn(p.shape, generator=gen) * 1e-3).to(device) for p in params]
    bad = torch.zeros((), device=device)

    def step() -> None:
        for p, g in zip(params, grads):
            p.grad = g                                   # the same gradients each step (the update clears them)
        apply_update(opt, ema, net, bad)

    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        end.synchronize()
        ms = start.elapsed_time(end) / steps
    else:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        ms = (time.perf_counter() - t0) * 1e3 / steps
    return {"recipe": recipe, "mode": mode, "tensors": len(params),
            "params_M": sum(p.numel() for p in params) / 1e6, "first_s": first, "ms": ms,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def table(rows: list[dict]) -> str:
    """The rows as a fixed-width table, with compiled ÷ eager per recipe where both ran."""
    head = f"{'recipe':>16} | {'mode':>9} | {'tensors':>7} | {'params M':>8} | {'first s':>8} | {'ms/step':>8}"
    out = [head]
    for r in rows:
        out.append(f"{r['recipe']:>16} | {r['mode']:>9} | {r['tensors']:>7} | {r['params_M']:>8.2f} | "
                   f"{r['first_s']:>8.1f} | {r['ms']:>8.3f}")
    by = {(r["recipe"], r["mode"]): r for r in rows}
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        e, c = by.get((recipe, "eager")), by.get((recipe, "compiled"))
        if e and c:
            out.append(f"{recipe}: eager ÷ compiled, a step {e['ms'] / c['ms']:.2f}x; "
                       f"the first call {c['first_s'] - e['first_s']:+.1f} s")
    return "\n".join(out)


def main(argv=None) -> int:
    """Time the update of each recipe in each mode; print the table (and write --json)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="+", help="recipe names or paths")
    ap.add_argument("--modes", default="eager,compiled")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--override", action="append", default=[], help="section.key=value for every recipe")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--compile-on-cpu", action="store_true", help="compile the update on a CPU too")
    a = ap.parse_args(argv)
    modes = a.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"--modes: unknown {unknown}; expected some of {list(MODES)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.compile_on_cpu:
        optim.COMPILED_DEVICES = (*optim.COMPILED_DEVICES, "cpu")
    rows = [time_update(r, m, a.steps, a.warmup, device, a.override) for r in a.recipes for m in modes]
    print(table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
