"""Faithfulness and background stripes of a shapes model's base level alone, on training and held-out prompts.

Is a base level that ignores shape and direction failing to generate, or failing to generalise to
prompt combinations it never saw? Level 0 (one tile) is sampled for N prompts of each split and
read by the faithfulness reader (docs/results.md, section 5); `stripes` is the background's
stripe R^2 (hpdm_cli/eval/texture.py) of the generated level 0, `stripes_real` of the real clips
box-downsampled to level 0. Runs on a CPU in minutes:
    python benchmarks/base_level_faithfulness.py hpdm_cli/assets/shapes-t2v.safetensors --num 64
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main(argv=None) -> int:
    """Print one JSON line per split: valid, colour, shape, direction, background rates and stripes of level 0."""
    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.drivers.evaluate import condition_rows, embed_prompts, generate_rows, real_level0, render_real
    from hpdm_cli.drivers.sample import to_uint8
    from hpdm_cli.eval.faithfulness import score_clips
    from hpdm_cli.eval.texture import stripe_summary
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", help="run directory, checkpoint or .safetensors of a shapes text or class model")
    ap.add_argument("--num", type=int, default=64, help="prompts per split")
    ap.add_argument("--splits", default="train,heldout")
    ap.add_argument("--tables", default="out/gpu/shapes_prompts.safetensors,out/gpu/shapes_prompts_tokens.safetensors",
                    help="comma-separated prompt tables or folders holding them")
    ap.add_argument("--guidance", type=float, help="classifier-free guidance (default: the recipe's)")
    ap.add_argument("--steps", type=int, help="sampler steps at level 0 (default: the recipe's)")
    ap.add_argument("--churn", type=float, help="S_churn at level 0 (default: the recipe's sample.churn; 0: deterministic)")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    net, recipe, info = load_generator(a.ckpt, a.device)
    if a.churn is not None:
        recipe.sample.churn, recipe.sample.stochastic_levels = a.churn, 1
    search = [p for p in a.tables.split(",") if p]
    for split in a.splits.split(","):
        real = render_real(a.num, 0, tuple(recipe.pyramid.resolution), split)
        cond = condition_rows(recipe, real, lambda caps: embed_prompts(recipe, caps, search))
        base = generate_rows(net, recipe, list(range(a.num)), cond, batch=64, guidance=a.guidance,
                             steps=None if a.steps is None else [a.steps] * recipe.pyramid.num_levels,
                             overlap="none", device=info.device, bf16=False, levels=1, log=lambda s: None)
        sc = score_clips(base, real.captions)
        sc["stripes"] = stripe_summary(base)["mean"]
        sc["stripes_real"] = stripe_summary(to_uint8(real_level0(real.videos, recipe.pyramid)))["mean"]
        print(json.dumps({"ckpt": str(a.ckpt), "split": split, "n": a.num, "guidance": a.guidance, "steps": a.steps,
                          "churn": recipe.sample.churn,
                          **{k: round(sc[k], 3) for k in ("valid", "colour", "shape", "direction", "background",
                                                           "stripes", "stripes_real")}}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
