"""The upper levels given the real level 0 under per-level sigma_max and steps: where should their schedules start?

    python benchmarks/upper_level_schedule.py [CKPT] --num 16 --settings 80,80,80 80,10,10 80,10,10@32,16,8

Each setting is `sample.sigma_max` per level, optionally `@` steps per level (default the recipe's).
For held-out `shapes` prompts, levels 1.. are sampled without tile overlap given the real clips'
level 0, and the result is compared with the real clips: mean squared error in [-1, 1] units (with
level 0 given, the objects are fixed and the error is the upper levels'), background stripes and
faithfulness (docs/results.md, section 27). The condition comes from the prompt table `--tables`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpdm_cli.checkpoint import load_generator  # noqa: E402
from hpdm_cli.drivers.evaluate import condition_rows, generate_rows, real_level0, render_real  # noqa: E402
from hpdm_cli.text.tables import embed_prompts  # noqa: E402
from hpdm_cli.eval.faithfulness import score_clips  # noqa: E402
from hpdm_cli.eval.texture import stripe_summary  # noqa: E402


def parse(setting: str) -> tuple[list[float], list[int] | None]:
    """"80,10,10@32,16,8" -> ([80.0, 10.0, 10.0], [32, 16, 8]); no "@": the recipe's steps (None)."""
    smax, _, steps = setting.partition("@")
    return [float(v) for v in smax.split(",")], ([int(v) for v in steps.split(",")] if steps else None)


def main() -> None:
    """One line per setting: error against the real clips, stripes, faithfulness, seconds."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", nargs="?", default="hpdm_cli/assets/shapes-t2v.safetensors")
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--settings", nargs="+", default=["80,80,80", "80,10,10"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tables", default="out/gpu/shapes_prompts_tokens.safetensors")
    args = ap.parse_args()
    net, recipe, info = load_generator(args.ckpt, args.device)
    real = render_real(args.num, 0, tuple(recipe.pyramid.resolution), "heldout")
    cond = condition_rows(recipe, real, lambda caps: embed_prompts(recipe, caps, args.tables.split(",")))
    given = real_level0(real.videos, recipe.pyramid)
    target = np.stack(real.videos).astype(np.float32)
    print(f"{args.ckpt}: {args.num} held-out prompts, real stripes {stripe_summary(real.videos)['mean']:.3f}")
    print("| sigma_max per level | steps | MSE vs real | stripes | colour / shape / direction | seconds |")
    print("|---|---|---|---|---|---|")
    for setting in args.settings:
        smax, steps = parse(setting)
        rec = dataclasses.replace(recipe, sample=dataclasses.replace(recipe.sample, sigma_max=smax))
        t0 = time.time()
        clips = generate_rows(net, rec, list(range(args.num)), cond, batch=args.num, guidance=None, steps=steps,
                              overlap="none", device=info.device, bf16=False, fixed=given, log=lambda s: None)
        mse = float((((np.stack(clips).astype(np.float32) - target) / 127.5) ** 2).mean())
        sc = score_clips(clips, real.captions)
        print(f"| {','.join(f'{v:g}' for v in smax)} | {steps or 'recipe'} | {mse:.5f} | "
              f"{stripe_summary(clips)['mean']:.3f} | {100 * sc['colour']:.0f} / {100 * sc['shape']:.0f} / "
              f"{100 * sc['direction']:.0f}% | {time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
