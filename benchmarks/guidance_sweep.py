"""FVD and faithfulness of one shapes model under several classifier-free guidance settings.

The same N held-out prompts and seeds are sampled once per setting: a scale, or one per level as
"3,1,1", optionally followed by per-level steps, an overlap, per-level sigma_max (where each
level's schedule starts: "1.5/32,32,16/hw" or "1.5,1,1/32,32,16/fhw/80,10,10") and the sigmas between
which guidance applies (sample.guidance_interval: "1.5,1,1/32,48,24/shift-fhw//0.3,5"), then a model of level 0
alone that guides it instead of the unconditional denoiser (sample.guide_model, autoguidance:
"1.5,1,1/32,48,24/shift-fhw///out/guides/ags-6000.safetensors"; "none": classifier-free guidance,
which the packaged model, autoguided by default, needs to reproduce docs/results.md sections 14-42); every setting
is scored against the same real clips, beside the real-vs-real floor and the trivial baselines
(static, shuffled frames) at that N; `stripes` is the background stripe R^2 (hpdm_cli/eval/texture.py),
`seams` the steps across the finest level's tile borders over those elsewhere (hpdm_cli/eval/seams.py;
real clips ~1), `seams_t` the same between frames across its tile borders in time. One JSON line
per setting as it finishes, then a markdown table, then every whole set's FVD (the floor's too)
extrapolated to infinitely many clips per side (hpdm_cli.eval.fvd.extrapolated_fvd: FVD falls with N).
On a GPU with the I3D file (docs/results.md, section 8):
    python benchmarks/guidance_sweep.py hpdm_cli/assets/shapes-t2v.safetensors --num 512 \
        --settings 3 1.5 1 3,1,1 --i3d-weights /tmp/i3d-kinetics-400.ckpt --bf16 --sheets out/sweep
With --base B the level 0 of every clip comes from another model's base level B (with --base-low B2
--split-sigma S, two as noise-level experts: benchmarks/base_level_faithfulness.py) and the
model's upper levels are sampled given it, as `hpdm upscale` does: what a better base level is
worth in FVD before a pyramid is trained from it. With --real-level0 each setting also samples the
upper levels given the level 0 of the floor's real clips (with their prompts): its FVD against the
floor's (the real-vs-real row) is what the upper levels cost, apart from level 0 (in parts too: its
own parts, "-real0-" in their names, merged as a row of their own).
Several models (e.g. the variants of benchmarks/gpu_pyramid_variants.sh) are scored in one process
against the same real clips, features and baselines; every line and sheet carries its model's name
(file stem or folder name) and every line the weights file and step scored.
A sweep too long for one process (e.g. `hw` overlap at 32x128^2 on a GPU call of 10 minutes) runs in
parts: `--rows 0:128 --save DIR` then `--rows 128:256 --save DIR` sample those prompts/seeds only
(the same clips as in a whole run: seeds are per row) and save their I3D features, faithfulness
readings, stripe fits and seam steps with the real clips' reference; `--merge DIR` (no model, no GPU) scores
every model and setting whose parts cover all N rows exactly once, as a whole run would have;
`--merge DIR --bootstrap 200` adds how far that draw of clips settles each difference (the same
prompts and seeds resampled for every setting: hpdm_cli.eval.fvd.paired_bootstrap); `--merge DIR
--partial` scores parts that cover only rows 0:n so far as a set of N = n (against the first n real
clips and the first n of the floor's), an interim figure when the budget ran out.
`--chunk K --save DIR` saves every K rows as a part of their own as soon as they are scored, and skips
the rows whose part DIR already holds (same model weights and setting): a call stopped by its time
limit keeps what it finished, and the same command with the returned parts in DIR goes on from there;
when the rows cover all N, the run scores the whole set itself; `--stop-after S` starts no part that
the S seconds since the run began cannot hold (judged by the slowest part so far), so that a call's
limit does not cut a part off half-sampled; `--sheets DIR` with `--chunk` draws a sheet of every
part's first prompts. A run with `--save DIR` also takes the
real clips' features and readings from DIR's real-n<N>.npz when that was written for the same
resolution, prompts and I3D weights, instead of measuring them again; `--save DIR --no-real`
leaves the real side out altogether (no I3D pass over 2N real clips, only the sampled rows
rendered: parts drawn on a machine the real side's file cannot travel to) and --merge takes the
real-n<N>.npz of a run that measured it. Pixels are read on every CPU core (hpdm_cli.eval.measure).
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
    """"3" -> (3.0, steps, overlap, None, None, None); "3,1,1/32,32,16/hw/80,10,10/0.3,5/G.safetensors" ->
    ([3.0, 1.0, 1.0], [32, 32, 16], "hw", [80.0, 10.0, 10.0], [0.3, 5.0], "G.safetensors") (sample.sigma_max
    per level, sample.guidance_interval and sample.guide_model; None keeps the recipe's). The guide's
    path is the rest of the text after the fifth "/", so it may hold folders."""
    parts = text.split("/", 5)
    vals = [float(v) for v in parts[0].split(",")]
    if len(parts) > 1 and parts[1]:
        steps = [int(v) for v in parts[1].split(",")]
    if len(parts) > 2 and parts[2]:
        overlap = parts[2]
    sigma_max = [float(v) for v in parts[3].split(",")] if len(parts) > 3 and parts[3] else None
    interval = [float(v) for v in parts[4].split(",")] if len(parts) > 4 and parts[4] else None
    guide = parts[5] if len(parts) > 5 and parts[5] else None
    return (vals[0] if len(vals) == 1 else vals), steps, overlap, sigma_max, interval, guide


SCORED = ("valid", "colour", "shape", "direction", "background", "stripes", "size", "motion", "seams", "seams_t")


def parse_rows(text: str | None, num: int) -> tuple[int, int]:
    """"LO:HI" -> (LO, HI), the rows (prompt and seed indices) of N = `num` a part samples; None -> all."""
    if text is None:
        return 0, num
    try:
        lo, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise SystemExit(f"--rows {text!r}: expected LO:HI, e.g. 0:128") from None
    if not 0 <= lo < hi <= num:
        raise SystemExit(f"--rows {text}: need 0 <= LO < HI <= --num ({num})")
    return lo, hi


def summarise(readings: list, captions: list, stripes: np.ndarray, seams: np.ndarray, real_sc: dict) -> dict:
    """Faithfulness of clip readings against their captions, the mean stripe fit (NaN skipped, as
    `stripe_summary`), the tile seams in space and in time (`seams`, `seams_t`, from per-clip
    `seam_steps` rows [n, 2 axes, 2]), and object size and motion as ratios to the real clips' (`real_sc`)."""
    from hpdm_cli.eval.faithfulness import accuracy_by_asked, score_clips
    from hpdm_cli.eval.seams import AXES, seam_ratio
    sc = score_clips(readings, captions)
    sc["direction_asked"] = accuracy_by_asked(sc, "direction")
    ratio = seam_ratio([dict(zip(AXES, map(tuple, row))) for row in seams])
    sc["seams"], sc["seams_t"] = ratio["hw"], ratio["t"]
    ok = stripes[~np.isnan(stripes)]
    sc["stripes"] = float(ok.mean()) if ok.size else float("nan")
    sc["size"], sc["motion"] = sc["area"] / real_sc["area"], sc["travel"] / real_sc["travel"]
    return sc


def save_npz(path: Path, **arrays) -> None:
    """Write arrays to an .npz atomically (a part that stopped half-way leaves nothing behind)."""
    from hpdm_cli.io import atomic_open
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def load_part(path: Path, meta: dict):
    """A part saved by --save whose model weights, step, setting, N and rows are `meta`'s, as (features, readings,
    stripe fits, seam steps, sampling seconds); None when there is none (or another model's or setting's)."""
    from hpdm_cli.eval.faithfulness import ClipReading
    if not path.is_file():
        return None
    z = np.load(path)
    saved = json.loads(str(z["meta"]))
    if any(saved.get(k) != v for k, v in meta.items() if k != "model"):
        return None
    return (z["features"], [ClipReading(**d) for d in json.loads(str(z["readings"]))], z["stripes"], z["seams"],
            float(saved["sample_seconds"]))


def load_real(path: Path, key: dict):
    """The real side an earlier run saved in `path` (real-n<N>.npz) if its resolution, captions and I3D weights
    are `key`'s, as (features, floor features, info); None otherwise (or when files older than the key lack it)."""
    if not path.is_file():
        return None
    z = np.load(path)
    info = json.loads(str(z["info"]))
    if any(info.get(k) != v for k, v in key.items()):
        return None
    return z["features"], z["floor_features"], info


def score_real(ext, real_a, real_b, measure) -> tuple:
    """The real side of a sweep: I3D features of `real_a` (the reference) and `real_b` (the floor), the
    floor's, static and shuffled clips' FVD rows, and `real_a`'s readings (size, travel, stripes, seams)."""
    from hpdm_cli.eval.fvd import feature_stats, frechet_distance
    ref_features, floor_features = ext.features(iter(real_a.videos)), ext.features(iter(real_b.videos))
    ref = feature_stats(ref_features)
    fvd = lambda feats: float(frechet_distance(*ref, *feature_stats(feats)))
    rng = np.random.default_rng(0)
    rows = [("real (floor)", fvd(floor_features), None),
            ("static real", fvd(ext.features(iter([np.repeat(v[:1], v.shape[0], axis=0) for v in real_b.videos]))),
             None),
            ("shuffled real", fvd(ext.features(iter([v[rng.permutation(v.shape[0])] for v in real_b.videos]))), None)]
    return ref_features, floor_features, rows, {"floor": [(n, f) for n, f, _ in rows], "captions": real_a.captions,
                                                "real": real_readings(real_a, measure)}


def real_readings(real, measure) -> dict:
    """The real clips' mean object area and travel, stripe fit and seam ratios: what generated clips are set against."""
    from hpdm_cli.eval.faithfulness import score_clips
    from hpdm_cli.eval.seams import AXES, seam_ratio
    readings, stripes, seams = measure(real.videos)
    sc = score_clips(readings, real.captions)
    ratio = seam_ratio([dict(zip(AXES, map(tuple, row))) for row in seams])
    ok = stripes[~np.isnan(stripes)]
    return {"area": sc["area"], "travel": sc["travel"], "stripes": float(ok.mean()) if ok.size else float("nan"),
            "seams": ratio["hw"], "seams_t": ratio["t"]}


LEVEL0_LABEL = "upper levels given real level 0,"     # the rows of --real-level0, in lines, tables and merges


def slug(text: str) -> str:
    """A setting as a file-name part: "1.5,1,1/32,48,24/hw" -> "1.5-1-1_32-48-24_hw"."""
    return text.replace(",", "-").replace("/", "_")


def print_table(title: str, rows: list) -> None:
    """The markdown table of (name, FVD, scores or None) rows under a one-line title."""
    print(f"\n{title}")
    # size: median object area / the real clips'; motion: median travel over the clip / the real clips'
    # seams: steps across the finest level's tile borders / elsewhere, in space and in time (between frames)
    # (hpdm_cli/eval/seams.py; real ~1)
    print("| setting | FVD | colour | shape | direction | stripes | size | motion | seams | seams (time) |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for name, f, sc in rows:
        cells = [""] * 8 if sc is None else [f"{100 * sc[k]:.1f}%" for k in ("colour", "shape", "direction")] \
            + [f"{sc['stripes']:.3f}", f"{sc['size']:.2f}", f"{sc['motion']:.2f}", f"{sc['seams']:.2f}",
               f"{sc['seams_t']:.2f}"]
        print(f"| {name} | {f:.1f} | " + " | ".join(cells) + " |")
    for name, _, sc in rows:
        if sc is not None:
            print(f"- direction by asked direction, {name}: "
                  + ", ".join(f"{d} {hit}/{n}" for d, (hit, n) in sc["direction_asked"].items()))


def rows_of_real(real, i: int, j: int):
    """Rows i:j of rendered real clips (videos, captions, labels)."""
    return dataclasses.replace(real, videos=real.videos[i:j], captions=real.captions[i:j], labels=real.labels[i:j])


def merge(folder: Path, bootstrap: int = 0, partial: bool = False) -> int:
    """Score the parts saved by --rows/--save in `folder`: one line and table row per model and setting.

    With `bootstrap` rounds, also how far this draw of clips settles each FVD difference
    (`hpdm_cli.eval.fvd.paired_bootstrap`: the same prompts and seeds resampled for every setting).
    With `partial`, parts that cover rows 0:n of N (n < N, a budget spent before all N rows) are scored
    at N = n: against the first n real clips, beside the floor of the first n of each real set; the
    static and shuffled baselines, measured at N only, are left out.
    """
    from hpdm_cli.eval.faithfulness import ClipReading
    from hpdm_cli.eval.fvd import feature_stats, frechet_distance, paired_bootstrap
    reals = sorted(folder.glob("real-n*.npz"))
    if len(reals) != 1:
        raise SystemExit(f"--merge {folder}: expected one real-n<N>.npz written by --save, found {len(reals)}")
    real = np.load(reals[0])
    num, info = int(real["num"]), json.loads(str(real["info"]))
    groups: dict = {}
    for path in sorted(folder.glob("part-*.npz")):
        z = np.load(path)
        missing = {"features", "stripes", "seams", "readings", "meta"} - set(z.files)
        if missing:
            raise SystemExit(f"{path}: no {', '.join(sorted(missing))} (written by an older guidance_sweep.py?): "
                             "sample that part again")
        meta = json.loads(str(z["meta"]))
        if meta["num"] != num:
            raise SystemExit(f"{path}: a part of N = {meta['num']}, but {reals[0].name} is for N = {num}")
        groups.setdefault((meta["model"], meta["setting"], meta.get("level0")), []).append((meta, z, path))
    if not groups:
        raise SystemExit(f"--merge {folder}: no part-*.npz (write them with --rows LO:HI --save {folder})")
    many = len({m for m, _, _ in groups}) > 1
    ends = []
    for (model, setting, _), parts in groups.items():
        parts.sort(key=lambda p: p[0]["rows"][0])
        spans = [tuple(m["rows"]) for m, _, _ in parts]
        if [lo for lo, _ in spans] != [0] + [hi for _, hi in spans[:-1]] or (spans[-1][1] != num and not partial):
            raise SystemExit(f"{model} {setting}: the parts cover rows {spans}, not 0:{num} exactly once: "
                             "sample the missing rows (or remove a repeated part)"
                             + ("" if partial else ", or score the rows so far with --partial"))
        ends.append(spans[-1][1])
    n = min(ends)                                           # every setting scored on the same rows 0:n
    real_features = real["features"][:n]
    if n == num:
        rows = [(name, f, None) for name, f in info["floor"]]
    elif "floor_features" not in real.files:
        raise SystemExit(f"--partial: {reals[0].name} holds no floor features (an older guidance_sweep.py)")
    else:
        rows = [("real (floor)", float(frechet_distance(*feature_stats(real_features),
                                                        *feature_stats(real["floor_features"][:n]))), None)]
        print(f"rows 0:{n} of {num}: scored at N = {n} against the first {n} real clips; the static and shuffled "
              f"baselines were measured at N = {num} only", flush=True)
    ref = feature_stats(real_features)
    merged = {}
    for (model, setting, level0), parts in groups.items():
        weights = {(m["weights"], m["step"]) for m, _, _ in parts}
        if len(weights) > 1:
            raise SystemExit(f"{model} {setting}: parts from different weights {sorted(weights)}: keep one model's")
        feats = np.concatenate([z["features"] for _, z, _ in parts])[:n]
        readings = [ClipReading(**d) for _, z, _ in parts for d in json.loads(str(z["readings"]))][:n]
        stripes = np.concatenate([z["stripes"] for _, z, _ in parts])[:n]
        seams = np.concatenate([z["seams"] for _, z, _ in parts])[:n]
        if all("captions" in z.files for _, z, _ in parts):     # each part's prompts (the real0 parts: the floor's)
            captions = [c for _, z, _ in parts for c in json.loads(str(z["captions"]))][:n]
        elif level0:
            raise SystemExit(f"{model} {setting}: real-level-0 parts without their prompts: sample them again")
        else:                                                    # parts older than their prompts: the reference's
            captions = info["captions"][:n]
        sc = summarise(readings, captions, stripes, seams, info["real"])
        f = float(frechet_distance(*ref, *feature_stats(feats)))
        prefix = f"{model}: " if many else ""
        label = f"{prefix}{LEVEL0_LABEL} {setting}" if level0 else f"{prefix}guidance {setting}"
        rows.append((label, f, sc))
        merged[label if level0 else prefix + setting] = feats
        meta = parts[0][0]
        print(json.dumps({"model": model, "weights": meta["weights"], "step": meta["step"], "setting": setting,
                          **({"level0": "real (the floor's clips)"} if level0 else {}),
                          "fvd": round(f, 1), "n": n, **({} if n == num else {"of": num}), "parts": len(parts),
                          "sample_seconds": round(sum(m["sample_seconds"] for m, _, _ in parts), 1),
                          **{k: round(sc[k], 3) for k in SCORED}, "direction_asked": sc["direction_asked"]}),
              flush=True)
    print_table(f"{n}{'' if n == num else f' of {num}'} held-out clips per side, merged from {folder}", rows)
    floor = {"real (floor)": real["floor_features"][:n]} if "floor_features" in real.files else {}
    print_extrapolated(real_features, {**floor, **merged})
    if bootstrap:
        print_bootstrap(paired_bootstrap(real_features, merged, rounds=bootstrap))
    return 0


def print_extrapolated(real: np.ndarray, sets: dict) -> None:
    """Each set's FVD extrapolated to infinitely many clips per side (`hpdm_cli.eval.fvd.extrapolated_fvd`)."""
    from hpdm_cli.drivers.evaluate import EXTRAPOLATE_MIN_CLIPS
    from hpdm_cli.eval.fvd import extrapolated_fvd
    if not sets:
        return
    if min(len(real), *(len(v) for v in sets.values())) < EXTRAPOLATE_MIN_CLIPS:
        print(f"\nnot extrapolated to infinitely many clips: fewer than {EXTRAPOLATE_MIN_CLIPS} a side")
        return
    fits = {k: extrapolated_fvd(real, v) for k, v in sets.items()}
    sizes = next(iter(fits.values())).sizes
    print(f"\nextrapolated to infinitely many clips per side (FVD(n) = a + b / n over n = {sizes}, "
          "random subsets of both sides):")
    for k, e in fits.items():
        print(f"- {k}: FVD {e.fvd:.1f} (+ {e.slope:.0f} / n; at n = {sizes[-1]}: {e.means[-1]:.1f})")


def print_bootstrap(pb) -> None:
    """The spread of a paired bootstrap (`paired_bootstrap`): each FVD's and each difference's."""
    print(f"\nover {pb.rounds} resamplings of the generated clips (the same rows for every setting; real side fixed):")
    for k, f in pb.fvd.items():
        print(f"- {k}: FVD {f:.1f}, sd {pb.sd[k]:.1f}")
    for (a, b), (d, lo, hi) in pb.diff.items():
        print(f"- {a} minus {b}: {d:+.1f}, 95% of resamplings in [{lo:+.1f}, {hi:+.1f}]")


def main(argv=None) -> int:
    """Sample, score and print one row per guidance setting."""
    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.drivers.evaluate import (
        _write_sheet,
        condition_rows,
        generate_rows,
        real_level0,
        render_real,
    )
    from hpdm_cli.conditioning import GenerateError
    from hpdm_cli.drivers.options import parse_guide_model
    from hpdm_cli.text.tables import embed_prompts
    from hpdm_cli.eval.fvd import I3DExtractor, feature_stats, frechet_distance
    from hpdm_cli.eval.measure import measure_clips
    from hpdm_cli.eval.seams import AXES
    from hpdm_cli.checkpoint import resolve_sampling_weights
    from hpdm_cli.train.checkpoint import read_metadata, recipe_in_metadata
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", nargs="*", help="models (run, checkpoint or weights file) scored on the same clips")
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
    ap.add_argument("--rows", default=None, help="LO:HI: sample only these of the N prompts/seeds (a part; see --save)")
    ap.add_argument("--no-real", action="store_true",
                    help="with --save: leave out the real clips' features (their I3D pass, the floor and baselines): "
                         "--merge then takes the real-n<N>.npz another run saved in the folder")
    ap.add_argument("--save", default=None, help="folder: keep each setting's features, readings, stripe fits, "
                                                 "seam steps (and the real clips' reference) for --merge")
    ap.add_argument("--chunk", type=int, default=0, help="with --save: save every CHUNK rows as a part as soon as "
                                                       "they are scored, and skip the parts --save already holds")
    ap.add_argument("--stop-after", type=float, default=0, help="with --chunk: start no part that the seconds "
                                                                "left of this many since the start cannot hold")
    ap.add_argument("--merge", default=None, help="folder of parts written by --save: score them (no model needed)")
    ap.add_argument("--bootstrap", type=int, default=0, help="with --merge: rounds of a paired bootstrap of the "
                                                           "generated clips (how far the FVD differences are settled)")
    ap.add_argument("--partial", action="store_true", help="with --merge: score the rows 0:n that every setting's "
                                                           "parts cover so far, at N = n (an interim figure)")
    a = ap.parse_args(argv)
    started = time.time()
    if a.bootstrap and not a.merge:
        raise SystemExit("--bootstrap resamples merged parts: add --merge DIR")
    if a.bootstrap and a.bootstrap < 2:
        raise SystemExit(f"--bootstrap {a.bootstrap}: expected at least 2 rounds (e.g. 200), or leave it out")
    if a.partial and not a.merge:
        raise SystemExit("--partial scores the parts so far: add --merge DIR")
    if a.merge:
        return merge(Path(a.merge), a.bootstrap, a.partial)
    if not a.ckpt:
        raise SystemExit("name a model to score (a run, checkpoint or weights file), or --merge a folder of parts")
    lo, hi = parse_rows(a.rows, a.num)
    partial = (lo, hi) != (0, a.num)
    if partial and not a.save:
        raise SystemExit(f"--rows {a.rows} samples part of the clips: add --save DIR to keep them for --merge")
    if a.no_real and not a.save:
        raise SystemExit("--no-real leaves the real side to another run: add --save DIR (and --rows LO:HI for a part)")
    unscored = partial or a.no_real                # no FVD here: --merge scores the parts with a real side
    if a.chunk and (a.chunk < 1 or not a.save):
        raise SystemExit(f"--chunk {a.chunk}: expected a positive number of rows with --save DIR")
    if a.stop_after and (a.stop_after < 0 or not a.chunk):
        raise SystemExit(f"--stop-after {a.stop_after:g}: expected seconds > 0 with --chunk K --save DIR")
    slowest = 0.0                                  # the longest part sampled so far (--stop-after's estimate)
    for text in a.settings:                        # a setting's guide model, checked before any work
        try:
            parse_guide_model(parse_setting(text, None, None)[5])
        except GenerateError as e:
            raise SystemExit(f"setting {text}: {e}") from None
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
    # rows lo:hi of the real clips (off = lo) when --no-real needs no more; all N otherwise (off = 0)
    off = lo if a.no_real else 0
    real_a = render_real(hi - lo, lo, R, "heldout") if a.no_real else render_real(a.num, 0, R, "heldout")
    embed = lambda caps: embed_prompts(recipe, caps, a.tables.split(","))
    cond = condition_rows(recipe, real_a, embed)
    steps = None if a.steps is None else [int(s) for s in a.steps.split(",")]
    ext = I3DExtractor(a.i3d_weights, info.device)
    tile = list(recipe.pyramid.patch)                  # the finest level's tiles, in output pixels

    def measure(clips) -> tuple:                     # per clip: readings, stripe fits, seam steps [n, 2 axes, 2]
        m = measure_clips(clips, tile)
        return m.readings, m.stripes, np.array([[s[k] for k in AXES] for s in m.seams]).reshape(-1, 2, 2)
    real_file = Path(a.save) / f"real-n{a.num}.npz" if a.save else None
    real_key = {"resolution": list(R), "captions": real_a.captions, "i3d_sha256": ext.sha256}
    if a.no_real:                               # no real side: the parts' readings against their own real rows
        real_b = render_real(hi - lo, a.num + lo, R, "heldout") if a.real_level0 else None
        rows, ref, whole_sets, real_sc = [], None, {}, real_readings(real_a, measure)
        print(f"the real side left out (--no-real): --merge {a.save} takes the real-n{a.num}.npz of a run "
              "that measured it", file=sys.stderr, flush=True)
    else:
        kept_real = load_real(real_file, real_key) if real_file is not None else None
        if kept_real is not None:                      # an earlier call's real side: the same clips and detector
            ref_features, floor_features, real_info = kept_real
            rows = [(n, f, None) for n, f in real_info["floor"]]
            print(f"the real clips' features and readings found in {real_file}", file=sys.stderr, flush=True)
        # the floor's second set of real clips: rendered only when the real side is measured, or for --real-level0
        real_b = render_real(a.num, a.num, R, "heldout") if kept_real is None or a.real_level0 else None
        if kept_real is None:
            ref_features, floor_features, rows, real_info = score_real(ext, real_a, real_b, measure)
            real_info.update(real_key)
            if real_file is not None:                  # the reference every part of this N shares
                save_npz(real_file, num=np.array(a.num), features=ref_features, floor_features=floor_features,
                         info=np.array(json.dumps(real_info)))
        ref, real_sc = feature_stats(ref_features), real_info["real"]
        whole_sets = {"real (floor)": floor_features}      # features of whole sets: extrapolated after the table
    cond_b = condition_rows(recipe, real_b, embed) if a.real_level0 else None
    for name, f, _ in rows:
        print(json.dumps({"setting": name, "fvd": round(f, 1), "n": a.num}), flush=True)
    print(json.dumps({"setting": "real", **{k: round(real_sc[k], n) for k, n in
                                             (("stripes", 3), ("area", 4), ("travel", 3), ("seams", 3), ("seams_t", 3))
                                             if k in real_sc}}), flush=True)
    seeds, part_cond = list(range(lo, hi)), cond[lo - off:hi - off]
    many, scored, base_level0 = len(a.ckpt) > 1, [], {}     # the last: setting -> level 0 from --base, for every model
    for i, (path, name) in enumerate(zip(a.ckpt, names)):
        if i:
            del net
            net, recipe, info = load_generator(path, a.device)
        scored.append(str(info.weights))
        tag = f"{name}: " if many else ""
        who = {"model": name, "weights": str(info.weights), "step": info.step}
        # --real-level0: the floor's real clips as this model's level 0, once for all its settings
        given0 = real_level0(real_b.videos[lo - off:hi - off], recipe.pyramid) if a.real_level0 else None
        for text in a.settings:
            w, st, ov, smax, interval, guide = parse_setting(text, steps, a.overlap)
            rec = dataclasses.replace(recipe, sample=dataclasses.replace(
                recipe.sample, **({} if smax is None else {"sigma_max": smax}),
                **({} if interval is None else {"guidance_interval": interval}),
                **({} if guide is None else {"guide_model": parse_guide_model(guide)})))
            gen = dict(batch=a.batch, device=info.device, bf16=a.bf16, compile=a.compile, context_gib=a.context_gib,
                       log=lambda s: None)
            fixed = None
            if base is not None:
                if text not in base_level0:      # level 0 from the other base level at this setting's values, once
                    first = lambda v: v[0] if isinstance(v, (list, tuple)) else v
                    lvl0 = generate_rows(*base, seeds, part_cond, guidance=first(w),
                                         steps=None if st is None else [first(st)], overlap="none", levels=1, **gen)
                    base_level0[text] = real_level0(lvl0, base[1].pyramid)      # uint8 clips -> [-1, 1], as given
                fixed = base_level0[text]
            passes = [("", fixed, part_cond, real_a)]   # (kind, given level 0, condition rows, real clips)
            if a.real_level0:                          # the upper levels given the floor's real clips' level 0
                passes.append(("real0", given0, cond_b[lo - off:hi - off], real_b))
            for kind, given, pcond, real in passes:
                label = f"{tag}{LEVEL0_LABEL if kind else 'guidance'} {text}"
                pcaps = real.captions[lo - off:hi - off]
                got, found = [], 0               # per chunk of rows: features, readings, stripe fits, seams, seconds
                for c0, c1 in ([(c, min(c + a.chunk, hi)) for c in range(lo, hi, a.chunk)] if a.chunk else [(lo, hi)]):
                    stem = f"part-{name}-{slug(text)}{'-' + kind if kind else ''}"
                    part = Path(a.save) / f"{stem}-rows{c0:05d}-{c1:05d}.npz" if a.save else None
                    key = {**who, "setting": text, "level0": "real" if kind else None, "num": a.num, "rows": [c0, c1]}
                    kept = load_part(part, key) if a.chunk else None
                    if kept is not None:
                        got.append(kept)
                        found += 1
                        print(f"{label}: rows {c0}:{c1} found in {part}", file=sys.stderr, flush=True)
                        continue
                    left = a.stop_after - (time.time() - started)
                    if a.stop_after and 0 < slowest > left:      # the first part always starts
                        print(f"{label}: rows {c0}:{c1} not started: {max(left, 0):.0f} s left of --stop-after "
                              f"{a.stop_after:g}, a part took up to {slowest:.0f} s; the parts saved so far are in "
                              f"{a.save}", file=sys.stderr, flush=True)
                        return 0
                    t0 = time.time()
                    fake = generate_rows(net, rec, seeds[c0 - lo:c1 - lo], pcond[c0 - lo:c1 - lo], guidance=w,
                                         steps=st, overlap=ov, fixed=None if given is None else given[c0 - lo:c1 - lo],
                                         **gen)
                    secs = time.time() - t0
                    features, (readings, stripes, seams) = ext.features(iter(fake)), measure(fake)
                    got.append((features, readings, stripes, seams, secs))
                    if part is not None:
                        save_npz(part, features=features, stripes=stripes, seams=seams,
                                 meta=np.array(json.dumps({**key, "sample_seconds": round(secs, 1)})),
                                 readings=np.array(json.dumps([r.as_dict() for r in readings])),
                                 captions=np.array(json.dumps(pcaps[c0 - lo:c1 - lo])))
                    if a.chunk:
                        print(f"{label}: rows {c0}:{c1} sampled in {secs:.1f} s, saved", file=sys.stderr, flush=True)
                    if a.sheets and (c0 == 0 or a.chunk):    # the first prompts; with --chunk, every part's
                        Path(a.sheets).mkdir(parents=True, exist_ok=True)
                        rows_of = f"-rows{c0:05d}-{c1:05d}" if a.chunk else ""
                        _write_sheet(Path(a.sheets) / f"{name}-guidance-{slug(text)}{'-' + kind if kind else ''}"
                                     f"{rows_of}.png", fake, rows_of_real(real, c0 - off, c1 - off) if a.chunk else real,
                                     min(8, len(fake)))
                    slowest = max(slowest, time.time() - t0)   # the whole part: sampling, features, readings, files
                features = np.concatenate([g[0] for g in got])
                readings = [r for g in got for r in g[1]]
                stripes, seams = np.concatenate([g[2] for g in got]), np.concatenate([g[3] for g in got])
                secs = sum(g[4] for g in got)
                sc = summarise(readings, pcaps, stripes, seams, real_sc)
                f = None if unscored else float(frechet_distance(*ref, *feature_stats(features)))
                if not unscored:
                    rows.append((label, f, sc))
                    whole_sets[label] = features
                print(json.dumps({**who, "setting": text, **({"level0": "real (the floor's clips)"} if kind else {}),
                                  "fvd": None if f is None else round(f, 1), "n": a.num,
                                  **({"rows": [lo, hi]} if partial else {}),
                                  "sample_seconds": round(secs, 1), **({"parts_found": found} if a.chunk else {}),
                                  "base": a.base, "base_low": a.base_low,
                                  "split_sigma": a.split_sigma if a.base_low else None,
                                  **{k: round(sc[k], 3) for k in SCORED},
                                  "direction_asked": sc["direction_asked"]}), flush=True)
    print_table(f"{a.num} held-out clips per side" + (f" (rows {lo}:{hi} sampled: --merge {a.save} scores the "
                                                         "parts together)" if unscored else "")
                + f", {', '.join(scored)}"
                + (f"; level 0 from {a.base}" + (f" (below sigma {a.split_sigma}: {a.base_low})" if a.base_low else "")
                   if a.base else ""), rows)
    if not unscored:
        print_extrapolated(ref_features, whole_sets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
