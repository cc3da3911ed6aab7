"""Faithfulness and background stripes of a shapes model's base level alone, on training and held-out prompts.

Is a base level that ignores shape and direction failing to generate, or failing to generalise to
prompt combinations it never saw? Level 0 (one tile) is sampled for N prompts of each split and
read by the faithfulness reader (docs/results.md, section 5); `stripes` is the background's
stripe R^2 (hpdm_cli/eval/texture.py) of the generated level 0, `stripes_real` of the real clips
box-downsampled to level 0; `size` and `motion` are the objects' mean area and distance travelled
over the real level 0's. Runs on a CPU in minutes:
    python benchmarks/base_level_faithfulness.py hpdm_cli/assets/shapes-t2v.safetensors --num 64
With --low CKPT --split-sigma S the denoiser calls at sigma < S go to a second base level (same
pyramid and conditioning; noise-level experts, as in eDiff-I): which noise levels decide the
layout and motion, and which the background texture?
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


class SigmaSplit(torch.nn.Module):
    """Two denoisers as one: `low` for sigma < split, `high` otherwise (all rows of a call share one sigma).

    The previous step's latents (self-conditioning) are one expert's own: the first call of the
    other expert gets none, as in the share of training steps without a self-conditioning pass.
    """

    def __init__(self, high: torch.nn.Module, low: torch.nn.Module, split: float):
        super().__init__()
        self.high, self.low, self.split = high, low, split
        self.pyramid, self.cfg = high.pyramid, high.cfg
        self.last = None

    def forward(self, x, c_noise, *args, **kwargs):
        """The expert for this call's noise level (c_noise = ln(sigma) / 4, EDM)."""
        expert = self.low if bool((c_noise.float() < math.log(self.split) / 4).all()) else self.high
        if self.last is not None and expert is not self.last and kwargs.get("self_cond") is not None:
            kwargs["self_cond"] = None
        self.last = expert
        return expert(x, c_noise, *args, **kwargs)


def main(argv=None) -> int:
    """Print one JSON line per split: valid, colour, shape, direction, background rates and stripes of level 0."""
    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.drivers.evaluate import condition_rows, generate_rows, real_level0, render_real
    from hpdm_cli.text.tables import embed_prompts
    from hpdm_cli.conditioning import GenerateError
    from hpdm_cli.drivers.generation import to_uint8
    from hpdm_cli.drivers.options import parse_guide_model
    from hpdm_cli.eval.faithfulness import score_clips
    from hpdm_cli.eval.texture import stripe_summary
    from hpdm_cli.io.contact_sheet import contact_sheet, stack_sheets, write_png
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", help="run directory, checkpoint or .safetensors of a shapes text or class model")
    ap.add_argument("--num", type=int, default=64, help="prompts per split")
    ap.add_argument("--splits", default="train,heldout")
    ap.add_argument("--tables", default="out/gpu/shapes_prompts.safetensors,out/gpu/shapes_prompts_tokens.safetensors",
                    help="comma-separated prompt tables or folders holding them")
    ap.add_argument("--guidance", type=float, help="classifier-free guidance (default: the recipe's)")
    ap.add_argument("--guidance-interval", help="LO,HI: guide only at LO < sigma <= HI (sample.guidance_interval)")
    ap.add_argument("--steps", type=int, help="sampler steps at level 0 (default: the recipe's)")
    ap.add_argument("--churn", type=float, help="S_churn at level 0 (default: the recipe's sample.churn; 0: deterministic)")
    ap.add_argument("--guide", help="a base-level model that guides level 0 (autoguidance, sample.guide_model); "
                    "none: classifier-free guidance (the packaged model is autoguided by default)")
    ap.add_argument("--low", help="a second base level for the calls below --split-sigma")
    ap.add_argument("--split-sigma", type=float, default=1.0, help="sigma below which --low denoises")
    ap.add_argument("--sheet", help="PNG: the last split's first --sheet-rows clips of level 0, generated beside real")
    ap.add_argument("--sheet-rows", type=int, default=6)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    net, recipe, info = load_generator(a.ckpt, a.device)
    if a.low:
        net = SigmaSplit(net, load_generator(a.low, a.device)[0], a.split_sigma)
    if a.guidance_interval:
        recipe.sample.guidance_interval = [float(v) for v in a.guidance_interval.split(",")]
    if a.guide:
        try:
            recipe.sample.guide_model = parse_guide_model(a.guide)
        except GenerateError as e:
            raise SystemExit(str(e)) from None
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
        real0 = to_uint8(real_level0(real.videos, recipe.pyramid))
        sc["stripes_real"] = stripe_summary(real0)["mean"]
        real_sc = score_clips(real0, real.captions)
        sc["size"] = sc["area"] / real_sc["area"]                         # object area / the real level 0's
        sc["motion"] = sc["travel"] / real_sc["travel"]                   # distance travelled / the real level 0's
        print(json.dumps({"ckpt": str(a.ckpt), "split": split, "n": a.num, "guidance": a.guidance,
                          "interval": recipe.sample.guidance_interval, "steps": a.steps,
                          "churn": recipe.sample.churn, "guide": a.guide, "low": a.low, "split_sigma": a.split_sigma if a.low else None,
                          **{k: round(sc[k], 3) for k in ("valid", "colour", "shape", "direction", "background",
                                                           "stripes", "stripes_real", "size", "motion")}}),
              flush=True)
    if a.sheet:
        k, big = a.sheet_rows, (lambda clips: [c.repeat(4, axis=1).repeat(4, axis=2) for c in clips])
        write_png(a.sheet, stack_sheets([contact_sheet(big(base[:k]), real.captions[:k], scale=2),
                                         contact_sheet(big(real0[:k]), real.captions[:k], scale=2)],
                                        ["GENERATED LEVEL 0", "REAL LEVEL 0"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
