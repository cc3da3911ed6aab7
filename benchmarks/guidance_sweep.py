"""FVD and faithfulness of one shapes model under several classifier-free guidance settings.

The same N held-out prompts and seeds are sampled once per setting: a scale, or one per level as
"3,1,1", optionally followed by per-level steps, an overlap and per-level sigma_max (where each
level's schedule starts: "1.5/32,32,16/hw" or "1.5,1,1/32,32,16/fhw/80,10,10"); every setting
is scored against the same real clips, beside the real-vs-real floor and the trivial baselines
(static, shuffled frames) at that N; `stripes` is the background stripe R^2 (hpdm_cli/eval/texture.py). One JSON line per setting as it finishes, then a markdown
table. On a GPU with the I3D file (docs/results.md, section 8):
    python benchmarks/guidance_sweep.py hpdm_cli/assets/shapes-t2v.safetensors --num 512 \
        --settings 3 1.5 1 3,1,1 --i3d-weights /tmp/i3d-kinetics-400.ckpt --bf16 --sheets out/sweep
With --base B the level 0 of every clip comes from another model's base level B (with --base-low B2
--split-sigma S, two as noise-level experts: benchmarks/base_level_faithfulness.py) and the
model's upper levels are sampled given it, as `hpdm upscale` does: what a better base level is
worth in FVD before a pyramid is trained from it. With --real-level0 each setting also samples the
upper levels given the level 0 of the floor's real clips (with their prompts): its FVD against the
floor's (the real-vs-real row) is what the upper levels cost, apart from level 0.
Several models (e.g. the variants of benchmarks/gpu_pyramid_variants.sh) are scored in one process
against the same real clips, features and baselines; every line and sheet carries its model's name
(file stem or folder name) and every line the weights file and step scored.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def parse_setting(text: str, steps, overlap) -> tuple:
    """"3" -> (3.0, steps, overlap, None); "3,1,1/32,32,16/hw/80,10,10" -> ([3.0, 1.0, 1.0], [32, 32, 16], "hw",
    [80.0, 10.0, 10.0]) (the last: sample.sigma_max per level; None keeps the recipe's)."""
    parts = text.split("/")
    vals = [float(v) for v in parts[0].split(",")]
    if len(parts) > 1 and parts[1]:
        steps = [int(v) for v in parts[1].split(",")]
    if len(parts) > 2 and parts[2]:
        overlap = parts[2]
    sigma_max = [float(v) for v in parts[3].split(",")] if len(parts) > 3 and parts[3] else None
    return (vals[0] if len(vals) == 1 else vals), steps, overlap, sigma_max


SCORED = ("valid", "colour", "shape", "direction", "background", "stripes", "size", "motion")


def main(argv=None) -> int:
    """Sample, score and print one row per guidance setting."""
    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.drivers.evaluate import (
        _write_sheet,
        condition_rows,
        embed_prompts,
        generate_rows,
        real_level0,
        render_real,
    )
    from hpdm_cli.eval.faithfulness import score_clips
    from hpdm_cli.eval.fvd import I3DExtractor, feature_stats, frechet_distance
    from hpdm_cli.eval.texture import stripe_summary
    from hpdm_cli.train.checkpoint import read_metadata, recipe_in_metadata, resolve_sampling_weights
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", nargs="+", help="models (run, checkpoint or weights file) scored on the same clips")
    ap.add_argument("--settings", nargs="+", default=["3", "1.5", "1", "3,1,1"])
    ap.add_argument("--num", type=int, default=512, help="clips per side")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", default=None, help="per-level steps, e.g. 32,16,8 (default: the recipe's)")
    ap.add_argument("--overlap", default=None)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network (compile time included)")
    ap.add_argument("--context-gib", type=float, default=None,
                    help="memory for a level's held context (default: the recipe's sample.context_cache_gib)")
    ap.add_argument("--i3d-weights", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tables", default="out/gpu/shapes_prompts_tokens.safetensors")
    ap.add_argument("--sheets", default=None, help="folder for one contact sheet per setting")
    ap.add_argument("--base", help="a model (one level or a pyramid) whose level 0 the upper levels are given")
    ap.add_argument("--base-low", help="with --base: a second base level for the calls below --split-sigma")
    ap.add_argument("--split-sigma", type=float, default=1.0)
    ap.add_argument("--real-level0", action="store_true",
                    help="also per setting: the upper levels given the floor's real clips' level 0")
    a = ap.parse_args(argv)
    net, recipe, info = load_generator(a.ckpt[0], a.device)
    base = None
    same = lambda r: (r.model.cond, r.model.text_encoder, r.model.text_tokens, r.model.text_dim, r.model.num_classes)
    if a.base:
        from base_level_faithfulness import SigmaSplit
        base_net, base_recipe, _ = load_generator(a.base, a.device)
        if same(base_recipe) != same(recipe):
            raise SystemExit(f"--base {a.base} is conditioned otherwise than {a.ckpt[0]} ({same(base_recipe)} vs {same(recipe)})")
        if a.base_low:
            base_net = SigmaSplit(base_net, load_generator(a.base_low, a.device)[0], a.split_sigma)
        base = (base_net, base_recipe)
    R = tuple(recipe.pyramid.resolution)
    names = [Path(p).stem if Path(p).is_file() else Path(p).name for p in a.ckpt]     # lines' and sheets' names
    for n in {n for n in names if names.count(n) > 1}:
        raise SystemExit(f"{names.count(n)} models are named {n!r} (file stem or folder name): their lines and "
                         "sheets would be mixed up; copy or link them under distinct names")
    for path in a.ckpt[1:]:              # every model is scored on the first one's clips: refuse a misfit first
        other = recipe_in_metadata(read_metadata(resolve_sampling_weights(path)), path)    # the header only
        if (tuple(other.pyramid.resolution), same(other)) != (R, same(recipe)):
            raise SystemExit(f"{path}: {tuple(other.pyramid.resolution)}, condition {same(other)}; the first "
                             f"model ({a.ckpt[0]}) is {R}, {same(recipe)}: score it in a run of its own")
    real_a = render_real(a.num, 0, R, "heldout")
    real_b = render_real(a.num, a.num, R, "heldout")
    embed = lambda caps: embed_prompts(recipe, caps, a.tables.split(","))
    cond = condition_rows(recipe, real_a, embed)
    cond_b = condition_rows(recipe, real_b, embed) if a.real_level0 else None
    steps = None if a.steps is None else [int(s) for s in a.steps.split(",")]
    ext = I3DExtractor(a.i3d_weights, info.device)
    ref = feature_stats(ext.features(iter(real_a.videos)))
    rng = np.random.default_rng(0)

    def fvd(clips) -> float:
        return float(frechet_distance(*ref, *feature_stats(ext.features(iter(clips)))))

    def scores(clips, captions) -> dict:             # faithfulness, stripes, size and motion against real
        sc = score_clips(clips, captions)
        sc["stripes"] = stripe_summary(clips)["mean"]
        sc["size"], sc["motion"] = sc["area"] / real_sc["area"], sc["travel"] / real_sc["travel"]
        return sc
    rows = [("real (floor)", fvd(real_b.videos), None),
            ("static real", fvd([np.repeat(v[:1], v.shape[0], axis=0) for v in real_b.videos]), None),
            ("shuffled real", fvd([v[rng.permutation(v.shape[0])] for v in real_b.videos]), None)]
    for name, f, _ in rows:
        print(json.dumps({"setting": name, "fvd": round(f, 1), "n": a.num}), flush=True)
    real_sc = score_clips(real_a.videos, real_a.captions)
    print(json.dumps({"setting": "real", "stripes": round(stripe_summary(real_a.videos)["mean"], 3),
                      "area": round(real_sc["area"], 4), "travel": round(real_sc["travel"], 3)}), flush=True)
    many, scored, base_level0 = len(a.ckpt) > 1, [], {}     # the last: setting -> level 0 from --base, for every model
    for i, (path, name) in enumerate(zip(a.ckpt, names)):
        if i:
            del net
            net, recipe, info = load_generator(path, a.device)
        scored.append(str(info.weights))
        tag = f"{name}: " if many else ""
        who = {"model": name, "weights": str(info.weights), "step": info.step}
        for text in a.settings:
            t0 = time.time()
            w, st, ov, smax = parse_setting(text, steps, a.overlap)
            rec = recipe if smax is None else dataclasses.replace(
                recipe, sample=dataclasses.replace(recipe.sample, sigma_max=smax))
            gen = dict(batch=a.batch, device=info.device, bf16=a.bf16, compile=a.compile, context_gib=a.context_gib,
                       log=lambda s: None)
            fixed = None
            if base is not None:
                if text not in base_level0:      # level 0 from the other base level at this setting's values, once
                    first = lambda v: v[0] if isinstance(v, (list, tuple)) else v
                    lvl0 = generate_rows(*base, list(range(a.num)), cond, guidance=first(w),
                                         steps=None if st is None else [first(st)], overlap="none", levels=1, **gen)
                    base_level0[text] = real_level0(lvl0, base[1].pyramid)      # uint8 clips -> [-1, 1], as given
                fixed = base_level0[text]
            fake = generate_rows(net, rec, list(range(a.num)), cond, guidance=w, steps=st, overlap=ov,
                                 fixed=fixed, **gen)
            secs = time.time() - t0
            sc, f = scores(fake, real_a.captions), fvd(fake)
            rows.append((f"{tag}guidance {text}", f, sc))
            print(json.dumps({**who, "setting": text, "fvd": round(f, 1), "n": a.num,
                              "sample_seconds": round(secs, 1), "base": a.base, "base_low": a.base_low,
                              "split_sigma": a.split_sigma if a.base_low else None,
                              **{k: round(sc[k], 3) for k in SCORED}}), flush=True)
            if a.real_level0:
                up = generate_rows(net, rec, list(range(a.num)), cond_b, guidance=w, steps=st, overlap=ov,
                                   fixed=real_level0(real_b.videos, recipe.pyramid), **gen)
                su, fu = scores(up, real_b.captions), fvd(up)
                rows.append((f"{tag}upper levels given real level 0, {text}", fu, su))
                print(json.dumps({**who, "setting": text,
                                  "level0": "real (the floor's clips)", "fvd": round(fu, 1), "n": a.num,
                                  **{k: round(su[k], 3) for k in SCORED}}), flush=True)
            if a.sheets:
                Path(a.sheets).mkdir(parents=True, exist_ok=True)
                sheet = f"{name}-guidance-{text.replace(',', '-').replace('/', '_')}.png"
                _write_sheet(Path(a.sheets) / sheet, fake, real_a, 8)
    print(f"\n{a.num} held-out clips per side, {', '.join(scored)}"
          + (f"; level 0 from {a.base}" + (f" (below sigma {a.split_sigma}: {a.base_low})" if a.base_low else "")
             if a.base else ""))
    # size: median object area / the real clips'; motion: median travel over the clip / the real clips'
    print("| setting | FVD | colour | shape | direction | stripes | size | motion |\n|---|---|---|---|---|---|---|---|")
    for name, f, sc in rows:
        cells = [""] * 6 if sc is None else [f"{100 * sc[k]:.1f}%" for k in ("colour", "shape", "direction")] \
            + [f"{sc['stripes']:.3f}", f"{sc['size']:.2f}", f"{sc['motion']:.2f}"]
        print(f"| {name} | {f:.1f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
