"""`hpdm eval`: one quality report for a checkpoint of a `shapes` model.

What it measures, all at the same number N of clips per side:
* FVD of N generated clips against N real clips of the same captions, beside the real-vs-real
  floor (N other real clips) and two trivial baselines made of those other real clips (every
  frame the first one: no motion; frames shuffled in time: no coherent motion). A model is
  useful when it beats both baselines and approaches the floor. FVD is biased upwards by about
  b / N, so the generated and floor FVDs are also given extrapolated to infinitely many clips
  (`hpdm_cli.eval.fvd.extrapolated_fvd`): their ratio at N grows with N.
* Prompt faithfulness measured from pixels (`hpdm_cli.eval.faithfulness`): the share of
  generated clips whose object colour, shape and motion direction are those of the caption,
  with the real-clip ceiling and a swapped-caption floor (generated clips scored against other
  clips' captions: what a model that ignores its prompt gets).
* Condition sensitivity: the same seed sampled under another caption, against other seeds.
* The loss gap: the training loss with true vs shuffled captions (`eval.diagnostics`).
* A contact sheet: generated clips next to the real clips of the same captions.

The report (`report.json`) is rewritten after each part, with `"complete": false` until the last:
an eval stopped by a job's time limit keeps the contact sheet and the parts it finished. An earlier
run's finished report and its sheet in the same folder are kept as report.previous.json and
contact_sheet.previous.png.

Real clips are rendered by the procedural generator (`hpdm_cli.data.shapes`), by default from
its held-out split: combinations of colour, shape and direction never shown in training.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..checkpoint import load_generator
from ..config import MAX_VIDEOS, TILE_BATCH
from ..conditioning import GenerateError
from ..data.shapes import SHAPES_CLASSES, render_shapes_video
from ..errors import WARNING
from ..eval.diagnostics import condition_loss_gap, condition_sensitivity
from ..eval.faithfulness import accuracy_by_asked, score_clips, swapped_floor
from ..eval.measure import measure_clips
from ..eval.texture import stripe_summary
from ..io import atomic_write_json, unwritable
from ..io.contact_sheet import contact_sheet, stack_sheets, write_png
from ..text.tables import embed_prompts
from ..pixels import unit_from_uint8
from ..sampling.hierarchical import level_steps
from ..train.run_dir import CLASS_NAMES
from .generation import sample_videos, to_uint8
from .options import check_options, parse_guidance, parse_steps, with_sample_options

EVAL_SEED = 7          # the real clips' generator seed: disjoint from any training set's default seed 0
EXTRAPOLATE_MIN_CLIPS = 256  # fewer clips per side: an FVD extrapolation's subsets are as noisy as the bias it removes


@dataclass
class RealClips:
    """Rendered real clips with their captions and labels."""

    videos: list            # uint8 [T, H, W, 3]
    captions: list
    labels: list


def render_real(n: int, start: int, resolution: Sequence[int], split: str, seed: int = EVAL_SEED) -> RealClips:
    """Render `n` shapes clips (indices start .. start+n-1) of the given split at the model's full resolution."""
    T, H, W = resolution
    out = RealClips([], [], [])
    for i in range(start, start + n):
        v, cap, lab, _ = render_shapes_video(i, frames=T, height=H, width=W, seed=seed, split=split)
        out.videos.append(v)
        out.captions.append(cap)
        out.labels.append(lab)
    return out


def check_shapes_classes(recipe, info) -> None:
    """Refuse (GenerateError) a class-conditional model whose labels are not the shapes data's classes."""
    if recipe.model.cond != "class":
        return
    other = "hpdm eval scores models of the shapes data; for other data use `hpdm eval-fvd`"
    n = recipe.model.num_classes
    if n < len(SHAPES_CLASSES):
        raise GenerateError(f"this model has {n} classes, the shapes data {len(SHAPES_CLASSES)} (shape x "
                            f"direction): {other}")
    names, where = info.class_names, info.class_names_source      # the run's record, else its dataset's
    if names and names != SHAPES_CLASSES[:len(names)]:
        data = recipe.data.path if where.name == CLASS_NAMES else str(where.parent)
        raise GenerateError(f"this model was trained on {data!r}, whose classes "
                            f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}) are not the shapes "
                            f"data's: {other}")


def condition_rows(recipe, real: RealClips, embed: Callable[[list], torch.Tensor]) -> torch.Tensor:
    """The network condition of each real clip: its caption's embedding (text) or its label (class)."""
    if recipe.model.cond == "text":
        return embed(real.captions)
    if recipe.model.cond == "class":
        return torch.tensor(real.labels, dtype=torch.long)
    raise GenerateError("hpdm eval needs a conditional model (model.cond = \"text\" or \"class\")")


def generate_rows(net, recipe, seeds: Sequence[int], cond: torch.Tensor, *, batch: int, guidance, steps,
                  overlap, device, bf16: bool, levels: Optional[int] = None, fixed: Optional[torch.Tensor] = None,
                  compile: bool = False, context_gib: Optional[float] = None,
                  log: Callable[[str], None] = print) -> list[np.ndarray]:
    """One clip per (seed, condition row) as the evaluation draws them; uint8 [T, H, W, 3] each.

    `levels` stops after that many levels; `fixed` [N, C, f, h, w] in [-1, 1] is taken as level 0
    instead of generated (learned super-resolution of given clips). `context_gib` replaces the
    recipe's sample.context_cache_gib (the same videos; more memory held, fewer recomputations).
    Tiles go 1024 to a forward on a GPU; `guidance` is checked as `hpdm sample` checks it (one value, or one per
    level).
    """
    if levels is not None and not 1 <= levels <= recipe.pyramid.num_levels:
        raise GenerateError(f"levels = {levels}: expected 1..{recipe.pyramid.num_levels} (how many levels to generate)")
    tile_batch = 1024 if torch.device(device).type == "cuda" else TILE_BATCH
    out = sample_videos(net, recipe, seeds, cond, levels=None if levels is None else levels - 1, steps=steps,
                        guidance=guidance, overlap=overlap, batch=batch, tile_batch=tile_batch, device=device,
                        bf16=bf16, compile=compile, context_gib=context_gib,
                        fixed=None if fixed is None else {0: fixed}, log=log)
    return out.videos


def real_level0(videos: Sequence[np.ndarray], pyramid) -> torch.Tensor:
    """Uint8 clips [T, H, W, 3] at the pyramid's resolution (or already at level 0's) as its level 0 in [-1, 1]."""
    from ..pyramid import downsample_to_level
    clips = unit_from_uint8(torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3))
    if tuple(clips.shape[2:]) == tuple(pyramid.level_resolution(0)):   # a level 0 sampled alone (`levels=1`)
        return clips.clamp(-1, 1)
    return downsample_to_level(clips, pyramid, 0).clamp(-1, 1)


def _level_diagnostics(net, recipe, real, cond, seeds, k, **kw) -> dict:
    """Is the base level learnt (level 0 alone vs real clips at its size)? Is super-resolution (given real level 0)?"""
    real0 = real_level0(real.videos[:k], recipe.pyramid)
    caps = real.captions[:k]
    base = generate_rows(net, recipe, seeds[:k], cond[:k], levels=1, **kw)
    upscaled = generate_rows(net, recipe, seeds[:k], cond[:k], fixed=real0, **kw)
    real0 = to_uint8(real0)
    return {"level0_generated": score_clips(base, caps), "level0_real": score_clips(real0, caps),
            "upscaled_from_real_level0": score_clips(upscaled, caps),
            "level0_stripes": {"generated": stripe_summary(base), "real": stripe_summary(real0),
                               "upscaled_from_real_level0": stripe_summary(upscaled)}}


def _fvd_detector(resolution, weights) -> torch.nn.Module:
    """The I3D network (on the CPU) for the FVD of clips of `resolution`, checked before any sampling: clips
    long enough for I3D, and weights found and verified (GenerateError / I3DWeightsError otherwise)."""
    from ..eval.i3d import MIN_FRAMES, load_i3d
    if resolution[0] < MIN_FRAMES:
        raise GenerateError(f"this model makes {resolution[0]}-frame videos and FVD's I3D needs at least "
                            f"{MIN_FRAMES} frames: add --no-fvd")
    return load_i3d(weights, "cpu")


def _fvd_block(fake, real_a, real_b, i3d, device, log) -> dict:
    """FVD of the generated clips, the real-vs-real floor and the trivial baselines against `real_a` (I3D network
    `i3d`, None: the default weights); the generated and floor FVDs also extrapolated to infinitely many clips
    per side (`extrapolated_fvd`)."""
    from ..eval.fvd import I3DExtractor, extrapolated_fvd, feature_stats, frechet_distance
    ext = I3DExtractor(device=device, net=i3d)
    rng = np.random.default_rng(0)
    ref_features = ext.features(iter(real_a))
    ref = feature_stats(ref_features)
    static = [np.repeat(v[:1], v.shape[0], axis=0) for v in real_b]
    shuffled = [v[rng.permutation(v.shape[0])] for v in real_b]
    out, kept = {}, {}
    for name, clips in (("generated", fake), ("real_floor", real_b), ("static", static), ("shuffled", shuffled)):
        kept[name] = ext.features(iter(clips))
        out[name] = float(frechet_distance(*ref, *feature_stats(kept[name])))
        log(f"  FVD {name}: {out[name]:.1f}")
    if min(len(ref_features), len(kept["generated"])) >= EXTRAPOLATE_MIN_CLIPS:
        for name in ("generated", "real_floor"):
            out[f"{name}_extrapolated"] = extrapolated_fvd(ref_features, kept[name]).fvd
            log(f"  FVD {name}, extrapolated to infinitely many clips: {out[f'{name}_extrapolated']:.1f}")
    return out


def _v(x, spec: str = ".1f", pct: bool = False) -> str:
    """One value of the summary: `spec`-formatted (x 100 with a % where `pct`), "n/a" where not measured (None, NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:{spec}}%" if pct else f"{x:{spec}}"


def summary_rows(report: dict) -> list[tuple[str, str]]:
    """The report's headline numbers as (name, formatted value) rows for a table ("n/a": not measured)."""
    f = report["faithfulness"]
    rows = []
    for attr in ("colour", "shape", "direction", "all"):
        key = attr if attr in f["generated"] else f"{attr}_accuracy"
        rows.append((f"faithfulness {attr}: generated / real / swapped",
                     " / ".join(_v(f[s].get(key), pct=True) for s in ("generated", "real_ceiling", "swapped_floor"))))
    gen, real = f["generated"], f["real_ceiling"]
    if gen.get("confusion"):             # one axis of motion can be learnt before the other (docs/results.md, 68)
        by = accuracy_by_asked(gen, "direction")
        rows.append(("direction per asked direction: generated",
                     ", ".join(f"{d} {_v(hit / n if n else None, '.0f', True)}" for d, (hit, n) in by.items())))
    if "area" in gen:                    # reports written before object area was read lack it
        rows.append(("object area / travel: generated vs real (of the frame)",
                     f"{_v(gen['area'], pct=True)} vs {_v(real['area'], pct=True)} / "
                     f"{_v(gen['travel'], '.0f', True)} vs {_v(real['travel'], '.0f', True)}"))
    s = report["sensitivity"]
    rows.append(("same seed, other prompt vs other seed (mean |diff|)",
                 f"{_v(s['same_seed_other_condition'])} vs {_v(s['other_seed'])}"))
    g = report["loss_gap"]
    rows.append(("loss: true / shuffled / null condition",
                 " / ".join(_v(g[k], ".4f") for k in ("true", "shuffled", "null"))))
    b = report.get("background_stripes")
    if b:
        rows.append(("background stripes R^2: generated / real", f"{_v(b['generated']['mean'], '.2f')} / "
                                                                  f"{_v(b['real']['mean'], '.2f')}"))
    t = report.get("tile_seams")
    if t:
        rows.append(("tile seams, step across borders / elsewhere, space (time): generated / real",
                     f"{_v(t['generated']['hw'], '.2f')} ({_v(t['generated']['t'], '.2f')}) / "
                     f"{_v(t['real']['hw'], '.2f')} ({_v(t['real']['t'], '.2f')})"))
    for name, value in report.get("fvd", {}).items():
        rows.append((f"FVD {name.replace('_extrapolated', ', extrapolated to infinitely many clips')}", _v(value)))
    lv = report.get("levels")
    if lv:
        for name, key in (("level 0 alone: generated / real", ("level0_generated", "level0_real")),):
            for attr in ("colour", "shape", "direction"):
                rows.append((f"{name} {attr}", " / ".join(_v(lv[k][attr], pct=True) for k in key)))
        for attr in ("colour", "shape", "direction"):
            rows.append((f"upper levels given real level 0: {attr}",
                         _v(lv['upscaled_from_real_level0'][attr], pct=True)))
        if "area" in lv["level0_real"]:   # where a size bias comes from: level 0, or the levels above it
            rows.append(("object area: level 0 alone generated / real; upper levels given real level 0 / real",
                         f"{_v(lv['level0_generated']['area'], pct=True)} / {_v(lv['level0_real']['area'], pct=True)}; "
                         f"{_v(lv['upscaled_from_real_level0']['area'], pct=True)} / {_v(real['area'], pct=True)}"))
        st = lv.get("level0_stripes")
        if st:
            rows.append(("level 0 alone: background stripes R^2 generated / real",
                         f"{_v(st['generated']['mean'], '.2f')} / {_v(st['real']['mean'], '.2f')}"))
            rows.append(("upper levels given real level 0: background stripes R^2",
                         _v(st['upscaled_from_real_level0']['mean'], '.2f')))
    rows.append(("sampling seconds per clip", _v(report['seconds_per_clip'], '.2f')))
    if report.get("guide_model"):
        rows.append(("autoguidance: the guide model", str(report["guide_model"])))
    return rows


FEW_CLIPS = 256          # below this many clips a side, FVD is dominated by its finite-sample bias (docs/results.md)


def _keep_previous(out_dir: Path) -> list[str]:
    """Keep an earlier finished report.json and its contact_sheet.png as *.previous.*; returns the names kept.

    Done before this run writes its own, so a run stopped part-way never leaves a half report beside an old
    sheet, and no finished report is lost. An interrupted run's report ("complete": false) is not kept: this
    run replaces it, and a kept finished report is never replaced by one.
    """
    try:
        if json.loads((out_dir / "report.json").read_text()).get("complete") is False:
            return []
    except FileNotFoundError:
        return []
    except (OSError, ValueError, AttributeError):                # not an hpdm report: the user's, kept too
        pass
    kept = []
    for name in ("report.json", "contact_sheet.png"):
        old = out_dir / name
        if old.is_file():
            target = old.with_name(old.stem + ".previous" + old.suffix)
            os.replace(old, target)
            kept.append(target.name)
    return kept


def _check_options(num_clips: Optional[int], split: str, batch: int, guidance, out_dir,
                   context_gib: Optional[float] = None, guidance_interval=None, guide_model=None,
                   sigma_max=None) -> Path:
    """GenerateError for an option out of range (before any checkpoint is loaded); the report folder."""
    if num_clips is not None and not 2 <= num_clips <= MAX_VIDEOS:
        raise GenerateError(f"--num-clips {num_clips}: expected 2 to {MAX_VIDEOS:,} clips per side")
    if split not in ("heldout", "train", "all"):
        raise GenerateError(f"--split {split!r}: expected heldout, train or all")
    check_options(batch=batch, guidance=guidance, context_gib=context_gib, guidance_interval=guidance_interval,
                  guide_model=guide_model, sigma_max=sigma_max)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise GenerateError(f"--out {str(out_dir)!r} is a file: give a folder for report.json and contact_sheet.png")
    why = unwritable(out_dir / "report.json")
    if why is not None:
        raise GenerateError(f"--out {str(out_dir)!r}: {why}")
    return out_dir


def _write_sheet(path: Path, fake: list, real: RealClips, rows: int) -> str:
    """The contact sheet: the first `rows` generated clips beside the real clips of the same prompts."""
    labels = real.captions[:rows]
    write_png(path, stack_sheets([contact_sheet(fake[:rows], labels, scale=2),
                                  contact_sheet(real.videos[:rows], labels, scale=2)], ["GENERATED", "REAL"]))
    return str(path)


def evaluate(ckpt, out_dir, *, num_clips: Optional[int] = None, split: str = "heldout", batch: int = 16,
             guidance=None, steps=None, overlap: Optional[str] = None,
             device="auto", bf16: bool = False, compile: bool = False, fvd: bool = True, i3d_weights=None,
             embed: Optional[Callable[[list], torch.Tensor]] = None, sheet_rows: int = 8,
             context_gib: Optional[float] = None, guidance_interval=None, guide_model=None, sigma_max=None,
             log: Callable[[str], None] = print) -> dict:
    """Measure a shapes checkpoint (FVD with floor and baselines, faithfulness, sensitivity, loss gap); write a report.

    `num_clips` None: the checkpoint recipe's eval.num_clips.
    """
    out_dir = _check_options(num_clips, split, batch, guidance, out_dir, context_gib, guidance_interval, guide_model,
                             sigma_max)
    net, recipe, info = load_generator(ckpt, device)
    recipe = with_sample_options(recipe, guidance_interval=guidance_interval, guide_model=guide_model,
                                 sigma_max=sigma_max)
    source = ""
    if num_clips is None:
        num_clips, source = recipe.eval.num_clips, " (the recipe's eval.num_clips; --num-clips N to change)"
        if num_clips < 2:
            raise GenerateError(f"the checkpoint recipe's eval.num_clips = {num_clips}: need at least 2 clips per "
                                "side; give --num-clips")
    dev = info.device
    steps = parse_steps(steps, recipe.pyramid.num_levels)
    guidance = parse_guidance(guidance, recipe.pyramid.num_levels)
    if recipe.model.cond == "none":
        raise GenerateError("hpdm eval needs a conditional model (model.cond = \"text\" or \"class\")")
    check_shapes_classes(recipe, info)
    R = tuple(recipe.pyramid.resolution)
    i3d = _fvd_detector(R, i3d_weights) if fvd else None
    out_dir.mkdir(parents=True, exist_ok=True)
    if embed is None:
        embed = (lambda caps: embed_prompts(recipe, caps, info.folders))
    log(f"{num_clips} clips per side{source}; rendering {2 * num_clips} real clips ({split} split)")
    real_a = render_real(num_clips, 0, R, split)
    real_b = render_real(num_clips, num_clips, R, split)
    cond = condition_rows(recipe, real_a, embed)
    seeds = list(range(num_clips))
    log(f"sampling {num_clips} clips")
    t0 = time.time()
    gen = dict(batch=batch, guidance=guidance, steps=steps, overlap=overlap, device=dev, bf16=bf16, compile=compile,
               context_gib=context_gib, log=log)
    fake = generate_rows(net, recipe, seeds, cond, **gen)
    seconds = (time.time() - t0) / num_clips
    report = {"checkpoint": str(info.weights), "step": info.step, "num_clips": num_clips, "split": split,
              "resolution": list(R), "guidance": guidance if guidance is not None else recipe.sample.guidance,
              "guidance_interval": list(recipe.sample.guidance_interval),
              "guide_model": recipe.sample.guide_model, "sigma_max": recipe.sample.sigma_max,
              "steps": level_steps(recipe.sample, recipe.pyramid.num_levels, steps), "seconds_per_clip": seconds,
              "compiled": compile, "complete": False}

    def save() -> None:                  # after every part: a stopped eval (a job's time limit) keeps what it measured
        atomic_write_json(out_dir / "report.json", report, indent=2)

    kept = _keep_previous(out_dir)
    if kept:
        log(f"the previous report is kept as {', '.join(kept)}")
    report["contact_sheet"] = _write_sheet(out_dir / "contact_sheet.png", fake, real_a, min(sheet_rows, num_clips))
    tile = list(recipe.pyramid.patch)                   # the finest level's tiles, in output pixels
    log(f"reading {2 * num_clips} clips' pixels")
    got, real = measure_clips(fake, tile), measure_clips(real_a.videos, tile)
    # Faithfulness: generated, the real ceiling, and generated scored against other clips' captions.
    report["faithfulness"] = {"generated": score_clips(got.readings, real_a.captions),
                              "real_ceiling": score_clips(real.readings, real_a.captions),
                              "swapped_floor": swapped_floor(got.readings, real_a.captions)}
    report["background_stripes"] = {"generated": got.stripe_summary(), "real": real.stripe_summary()}
    report["tile_seams"] = {"tile": tile, "generated": got.seam_summary(), "real": real.seam_summary()}
    save()
    # Sensitivity: the first clips' seeds again under the next clip's caption.
    k = min(num_clips, 32)
    other = generate_rows(net, recipe, seeds[:k], cond[1:k + 1] if k < num_clips else cond.roll(-1, 0)[:k], **gen)
    report["sensitivity"] = condition_sensitivity(other, fake[:k])
    if recipe.pyramid.num_levels > 1:                    # one level: "level 0 alone" is the whole model
        report["levels"] = _level_diagnostics(net, recipe, real_a, cond, seeds, k, **gen)
    vids = torch.from_numpy(np.stack(real_a.videos[:min(num_clips, 256)])).permute(0, 4, 1, 2, 3)
    report["loss_gap"] = condition_loss_gap(net, recipe, unit_from_uint8(vids), cond[:len(vids)])
    save()
    if fvd:
        log("FVD (I3D)")
        if num_clips < FEW_CLIPS:
            log(WARNING + f"FVD from {num_clips} clips a side is mostly its finite-sample bias (compare it only with "
                f"the real-vs-real floor at the same N); rank models at --num-clips {FEW_CLIPS} or more")
        report["fvd"] = _fvd_block(fake, real_a.videos, real_b.videos, i3d, dev, log)
    report["complete"] = True
    save()
    return report
