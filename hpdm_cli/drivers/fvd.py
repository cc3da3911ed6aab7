"""The driver of `hpdm eval-fvd`: check the options, measure both sides, generate fake clips from a checkpoint.

`hpdm_cli.eval.fvd` measures (protocol, detector, statistics) and `hpdm_cli.eval.fvd_sources` reads
folders, datasets and statistics files; this module decides what to measure and makes the clips a checkpoint side
needs: it loads the generator, draws class labels or captions as in the data (the protocol's
step 7 in `hpdm_cli.eval.fvd`), calls the sampler and streams the clips to `stream_stats`.
`run_eval_fvd` is what the command calls: the defaults of its generation options, the
evaluation and the `--json` file. The CLI only parses options and prints the result.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ..assets import DEFAULT_MODEL, names_packaged
from ..config import TILE_BATCH
from ..data.shards import is_dataset
from ..errors import WARNING
from ..device import parse_device, resolve_device
from ..eval import FVDError
from ..eval.fvd import (FVDResult, FVDStats, I3DExtractor, Protocol, SideReport, check_compatible, frechet_distance,
                        selection_order)
from ..eval.fvd_sources import (Clip, Log, Progress, check_workers, default_cache_dir, side_stats, source_kind,
                                stream_stats, video_clip)
from ..eval.i3d import MIN_FRAMES, WEIGHTS_SHA256
from ..io import holds_other_than, unwritable
from .options import (check_seed_range, parse_guidance, parse_guidance_interval, parse_guide_model, parse_sigma_max,
                      parse_steps, with_sample_options)

__all__ = ["evaluate_fvd", "run_eval_fvd", "generate_fake_clips", "checkpoint_recipe"]


# ============================================================================ generated clips


def _check_data(data) -> None:
    """Refuse a --data that is not a prepared dataset."""
    if not is_dataset(data):
        raise FVDError(f"--data {str(data)!r} is not a prepared dataset (no dataset.json): give the OUT_DIR of "
                       "`hpdm prepare` whose labels or captions condition the model, or drop --data")


def _find_dataset(recipe, data: Optional[str | os.PathLike], search: Sequence[Path]):
    """The prepared dataset labels / captions are drawn from: `data`, else the recipe's data.path (searched)."""
    from ..data.shards import VideoDataset
    if data is not None:
        _check_data(data)
        return VideoDataset(data)
    p = Path(recipe.data.path)
    for d in ([p] if p.is_absolute() else [p] + [Path(s) / p for s in search]):
        if is_dataset(d):
            return VideoDataset(d)
    return None


def _check_generation(gen: dict, num_levels: Optional[int] = None) -> None:
    """Checkpoint --fake options that can be checked before any work: seed, batch, guidance, sigma_max, steps, data."""
    seed, batch, guidance = gen.get("seed"), gen.get("batch"), gen.get("guidance")
    if seed is not None and (int(seed) != seed or seed < 0):
        raise FVDError(f"--gen-seed {seed}: expected a seed >= 0")
    if seed is not None:
        _as_fvd_error(check_seed_range, int(seed), gen.get("num", 1), "--gen-seed")
    if batch is not None and (int(batch) != batch or batch < 1):
        raise FVDError(f"--gen-batch {batch}: expected a positive number of videos per sampler call")
    _as_fvd_error(parse_guidance, guidance, num_levels)
    _as_fvd_error(parse_guidance_interval, gen.get("guidance_interval"))
    _as_fvd_error(parse_guide_model, gen.get("guide_model"))
    _as_fvd_error(parse_sigma_max, gen.get("sigma_max"), num_levels)
    if num_levels is not None and gen.get("steps") is not None:
        _as_fvd_error(parse_steps, gen["steps"], num_levels)
    if gen.get("data") is not None:
        _check_data(gen["data"])


def _as_fvd_error(parse, *args):
    """A sampling option parsed as `hpdm sample` parses it (`parse_steps`, `parse_guidance`), its errors as FVDError."""
    from ..conditioning import GenerateError
    try:
        return parse(*args)
    except GenerateError as e:
        raise FVDError(str(e)) from None


def _check_model_frames(frames: int, protocol: Protocol) -> None:
    """A model making `frames`-frame videos must hold the protocol's clip."""
    if frames < MIN_FRAMES:                                          # no --frames or --stride can help
        raise FVDError(f"the model makes {frames}-frame videos: I3D needs clips of at least {MIN_FRAMES} frames, "
                       "so FVD cannot score it")
    if protocol.frames is not None and frames < protocol.span:
        raise FVDError(f"the model makes {frames}-frame videos but the clip needs {protocol.span} frames "
                       f"(--frames {protocol.frames}, --stride {protocol.stride}): lower --frames or --stride")
    if protocol.frames is None and -(-frames // protocol.stride) < MIN_FRAMES:
        raise FVDError(f"the model makes {frames}-frame videos: I3D needs clips of at least {MIN_FRAMES} frames"
                       f" (--stride {protocol.stride} leaves {-(-frames // protocol.stride)}): lower --stride")


def checkpoint_recipe(ckpt: str | os.PathLike):
    """The recipe stored with a checkpoint / run directory, read from the safetensors metadata only (cheap)."""
    from ..checkpoint import resolve_sampling_weights
    from ..train.checkpoint import read_metadata, recipe_in_metadata
    path = resolve_sampling_weights(ckpt)
    return recipe_in_metadata(read_metadata(path), path)


def _class_labels(ds, recipe, protocol: Protocol, n: int) -> tuple[torch.Tensor, dict]:
    """Labels of the dataset's labelled items in the protocol's hash order, with their counts."""
    order = selection_order([str(i) for i in range(len(ds))], protocol.seed)
    lab = ds.labels()
    order = [i for i in order if lab[i] >= 0]
    if not order:
        raise FVDError(f"dataset {ds.path!r} has no class labels: a class model needs a labelled dataset (--data)")
    picked = np.array([int(lab[order[k % len(order)]]) for k in range(n)])
    if picked.max() >= recipe.model.num_classes:
        raise FVDError(f"dataset {ds.path!r} has labels up to {picked.max()} but the model has "
                       f"{recipe.model.num_classes} classes: give the training dataset with --data")
    return torch.from_numpy(picked), {int(k): int(v) for k, v in zip(*np.unique(picked, return_counts=True))}


def _caption_embeddings(ds, recipe, protocol: Protocol, n: int, device) -> tuple[torch.Tensor, int]:
    """Text embeddings of the dataset's captions in the protocol's hash order, with the number of distinct ones
    (from the tables stored with the dataset or `data.prompt_table`; the text encoder only for the rest)."""
    from ..text.tables import embed_prompts
    order = selection_order([str(i) for i in range(len(ds))], protocol.seed)
    caps, cid = ds.captions(), ds.caption_ids()
    prompts = [caps[int(cid[order[k % len(order)]])] for k in range(n)]
    uniq = sorted(set(prompts))
    emb = embed_prompts(recipe, uniq, [ds.path], device=device)
    row = {p: i for i, p in enumerate(uniq)}
    return emb[torch.tensor([row[p] for p in prompts])], len(uniq)


def _conditions(recipe, info, data, protocol: Protocol, seed: int, log: Optional[Log]) -> tuple:
    """(per-clip condition rows or None, what they are, extra metadata) for a checkpoint's clips."""
    n, cond = int(protocol.num), recipe.model.cond
    meta = dict(data=None, label_counts=None, num_prompts=None)
    if cond not in ("class", "text"):
        return None, "none", meta
    ds = _find_dataset(recipe, data, info.search_dirs)
    if ds is None and cond == "text":
        raise FVDError("a text model needs prompts: give the prepared dataset whose captions to use with --data "
                       f"DATASET (the recipe's data.path {recipe.data.path!r} was not found)")
    if ds is None:
        if log:
            log(WARNING + f"no dataset found at data.path {recipe.data.path!r} (give --data DATASET): class "
                "labels are drawn uniformly")
        labels = [k % recipe.model.num_classes for k in selection_order([str(i) for i in range(n)], seed)]
        return torch.tensor(labels, dtype=torch.long), "class labels (uniform)", meta
    meta["data"] = ds.path
    if cond == "class":
        values, meta["label_counts"] = _class_labels(ds, recipe, protocol, n)
        return values, "class labels drawn as in the data", meta
    values, meta["num_prompts"] = _caption_embeddings(ds, recipe, protocol, n, info.device)
    return values, "captions drawn as in the data", meta


def generate_fake_clips(ckpt: str | os.PathLike, protocol: Protocol, *, data: str | os.PathLike | None = None,
                        seed: int = 0, batch: Optional[int] = None, device: str | torch.device = "auto",
                        steps=None, guidance=None, overlap: Optional[str] = None,
                        bf16: bool = False, tile_batch: int = TILE_BATCH, guidance_interval=None, guide_model=None,
                        sigma_max=None,
                        log: Optional[Log] = None) -> tuple[Iterator[Clip], dict]:
    """Clips generated from a checkpoint / run directory, streamed batch by batch (uint8, as `hpdm sample` writes).

    Seeds seed .. seed + num - 1 (each video depends only on its seed). Class models: labels of
    the dataset's labelled items visited in the protocol's hash order (`data`, else the
    recipe's data.path); text models: their captions, encoded with the recipe's text encoder;
    unconditional models: nothing. Returns (stream, info).
    """
    from ..checkpoint import load_generator
    from ..conditioning import GenerateError
    from ..sampling import level_steps
    from .generation import make_sampler, sample_batches, to_uint8
    net, recipe, info = load_generator(ckpt, device)
    F_, H, W = recipe.pyramid.resolution
    _check_model_frames(F_, protocol)
    n = int(protocol.num)
    values, what, cmeta = _conditions(recipe, info, data, protocol, seed, log)
    nsteps = _as_fvd_error(parse_steps, steps, recipe.pyramid.num_levels)
    _check_generation(dict(seed=seed, num=n, batch=batch, guidance=guidance, guidance_interval=guidance_interval,
                           guide_model=guide_model, sigma_max=sigma_max))
    guidance = _as_fvd_error(parse_guidance, guidance, recipe.pyramid.num_levels)
    recipe = _as_fvd_error(lambda r: with_sample_options(r, guidance_interval=guidance_interval,
                                                         guide_model=guide_model, sigma_max=sigma_max), recipe)
    bs = int(batch) if batch is not None else int(recipe.sample.batch_size)
    if bs < 1:
        raise FVDError(f"--gen-batch {batch}: expected a positive number of videos per sampler call")
    seeds = list(range(int(seed), int(seed) + n))
    meta = dict(weights=str(info.weights), step=int(info.step), seeds=f"{seeds[0]}-{seeds[-1]}", condition=what,
                data=cmeta["data"], label_counts=cmeta["label_counts"], num_prompts=cmeta["num_prompts"],
                resolution=[F_, H, W], steps=nsteps, guidance=guidance,
                guidance_interval=list(recipe.sample.guidance_interval), guide_model=recipe.sample.guide_model,
                sigma_max=recipe.sample.sigma_max,
                overlap=overlap, bf16=bf16, batch=bs)

    def stream() -> Iterator[Clip]:                 # one sampler for every batch, each batch scored as it comes
        try:
            sampler = make_sampler(net, recipe, device=info.device, overlap=overlap, tile_batch=tile_batch, bf16=bf16)
            batches = sample_batches(sampler, seeds, values, batch=bs, guidance=guidance,
                                     steps=level_steps(recipe.sample, recipe.pyramid.num_levels, nsteps))
            for chunk, res in batches:
                for sd, video in zip(chunk, to_uint8(res.videos[-1])):
                    yield video_clip(f"seed {sd}", video, protocol)
        except GenerateError as e:
            raise FVDError(str(e)) from None

    return stream(), meta


def _generated_side_stats(path: Path, protocol: Protocol, extractor: I3DExtractor, generation: Optional[dict],
                          progress: Optional[Progress], log: Optional[Log]) -> tuple[FVDStats, SideReport]:
    """Statistics of clips generated from the checkpoint at `path` (the fake side)."""
    report = SideReport(role="fake", kind="checkpoint", path=str(path), num_requested=int(protocol.num))
    gen = dict(generation or {})
    gen.setdefault("device", extractor.device)
    stream, info = generate_fake_clips(path, protocol, log=log, **gen)
    report.generation = info
    report.num_candidates = protocol.num
    source = dict(kind="checkpoint", path=str(path.resolve()), generation=info)
    return stream_stats(stream, protocol, extractor, report, source, progress), report


# ============================================================================ the evaluation


def _check_writable_file(path, what: str, suffix: Optional[str] = None) -> None:
    """An output file path (of `suffix`) whose directory exists or can be made (checked before any work)."""
    why = unwritable(path, suffix=suffix)
    if why is not None:
        raise FVDError(f"{what} {str(path)!r}: {why}")


def _resolve_protocol(sides: Sequence[Path], frames, stride, precision) -> tuple[Optional[int], int, str]:
    """Explicit options win; unset ones come from a statistics-file side, else `Protocol`'s defaults."""
    default = Protocol()
    for p in sides:
        if p.is_file() and p.suffix.lower() == ".npz":
            st = FVDStats.load(p).protocol
            if frames is None:
                f = st.get("frames", default.frames_label)
                frames = "all" if f == "all" else int(f)
            if stride is None:
                stride = int(st.get("stride", default.stride))
            if precision is None:
                precision = st.get("precision", default.precision)
    frames = default.frames if frames is None else frames
    if isinstance(frames, str):
        if frames.strip().lower() == "all":
            frames = None
        else:
            try:
                frames = int(frames)
            except ValueError:
                raise FVDError(f"--frames {frames!r}: expected a number of frames or 'all'") from None
    if stride is None:
        stride = default.stride
    elif int(stride) != stride or stride < 1:
        raise FVDError(f"--stride {stride}: expected a positive integer (1 = every frame)")
    return frames, int(stride), precision or default.precision


def _follows_options(kinds: dict) -> bool:
    """Whether this evaluation's protocol comes from --frames / --stride (not both sides statistics files)."""
    return list(kinds.values()).count("stats") < 2


def _check_saves(sides: dict, saves: dict) -> None:
    """--save-real / --save-fake: .npz, writable, two different files, not the other side's input, and not a file
    other than hpdm statistics (a re-run may replace its own statistics, nothing else)."""
    for what, p in saves.items():
        if p is None:
            continue
        if Path(p).suffix.lower() != ".npz":
            raise FVDError(f"{what} {str(p)!r}: statistics files use the .npz suffix")
        _check_writable_file(p, what)
        target = os.path.realpath(p)
        for role, side in sides.items():
            if os.path.realpath(side) == target and what != f"--save-{role}":
                raise FVDError(f"{what} {str(p)!r} is the --{role} input: it would be overwritten; choose another path")
        if Path(p).is_file() and not (Path(p).stat().st_size == 0 or FVDStats.is_statistics(p)):
            raise FVDError(f"{what} {str(p)!r} already holds a file that is not hpdm FVD statistics: choose another "
                           "path (or delete it)")
    if None not in saves.values() and os.path.realpath(saves["--save-real"]) == os.path.realpath(saves["--save-fake"]):
        raise FVDError(f"--save-real and --save-fake are the same file ({str(saves['--save-real'])!r}): give two paths")


def _check_options(kinds: dict, real: Path, fake: Path, save_real, save_fake, cache: bool, cache_dir, workers,
                   extractor, device, batch_size) -> None:
    """Options that can be refused before any work: sides, output files, cache directory, workers, device, batch."""
    if kinds["real"] == "checkpoint":
        raise FVDError(f"--real {str(real)!r} is a model (.safetensors, checkpoint or run directory): --real takes "
                       "real clips (a folder of videos, a prepared dataset or a statistics .npz); only --fake can "
                       "be generated from a model")
    _check_saves({"real": real, "fake": fake}, {"--save-real": save_real, "--save-fake": save_fake})
    if cache and kinds["real"] in ("folder", "dataset"):
        cdir = Path(cache_dir) if cache_dir else default_cache_dir()
        for parent in (cdir, *cdir.absolute().parents):
            if parent.exists():
                if not parent.is_dir():
                    raise FVDError(f"--cache-dir {str(cdir)!r}: {str(parent)!r} is a file, not a directory "
                                   "(give a directory, or --no-cache)")
                break
    if workers is not None:
        check_workers(workers)
    if extractor is None:
        parse_device(device)
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise FVDError(f"--batch {batch_size}: expected a positive number of clips per I3D batch")


def _check_sides(sides: dict, kinds: dict, protocol: Protocol, extractor, generation: Optional[dict]) -> None:
    """Fail before any work: statistics files measured otherwise, a model that cannot make the clip."""
    for role in ("real", "fake"):
        if kinds[role] == "stats":
            st = FVDStats.load(sides[role])
            sha = extractor.sha256 if extractor is not None else WEIGHTS_SHA256
            check_compatible(protocol.describe(), sha, st.protocol, st.detector_sha256, "this evaluation",
                             f"--{role}", by_options=_follows_options(kinds))
    if kinds["fake"] == "checkpoint":
        rec = checkpoint_recipe(sides["fake"])
        _check_model_frames(int(rec.pyramid.resolution[0]), protocol)
        _check_generation(dict(generation or {}, num=int(protocol.num)), rec.pyramid.num_levels)


def _side_warnings(protocol: Protocol, num, reps: Sequence[SideReport], stats: Sequence[FVDStats]) -> list[str]:
    """The warnings of an evaluation: mixed precision, clip counts, skipped videos."""
    st_r, st_f = stats
    out = []
    if st_r.protocol.get("precision") != st_f.protocol.get("precision"):
        out.append(f"the real side was measured in {st_r.protocol.get('precision')} and the fake side in "
                   f"{st_f.protocol.get('precision')} arithmetic")
    for rep, st in zip(reps, stats):
        if rep.kind == "stats" and num is not None and st.num != protocol.num:
            out.append(f"{rep.role} statistics file holds {st.num} clips, --num asks for {protocol.num}")
        elif rep.kind != "stats" and rep.num < protocol.num:
            out.append(f"{rep.role}: only {rep.num} of {protocol.num} clips requested ({rep.num_candidates} "
                       f"videos, {rep.num_short} too short, {rep.num_unreadable} unreadable)")
        if rep.num_short:
            short = [x for x in rep.skipped if ": unreadable: " not in x]
            out.append(f"{rep.role}: {rep.num_short} video(s) too short for the clip were skipped (not padded)"
                       + (f", e.g. {short[0]}" if short else ""))
        if rep.num_unreadable:
            bad = [x for x in rep.skipped if ": unreadable: " in x]
            out.append(f"{rep.role}: {rep.num_unreadable} video(s) could not be decoded and were skipped"
                       + (f", e.g. {bad[0]}" if bad else ""))
    return out


def _measure_sides(real: Path, fake: Path, kinds: dict, protocol: Protocol, extractor, *, cache: bool, cache_dir,
                   workers, generation, progress, log) -> tuple[FVDStats, SideReport, FVDStats, SideReport]:
    """Statistics and reports of both sides; the real side may come from the cache, the fake side never does."""
    st_r, rep_r = side_stats(real, protocol, extractor, role="real", cache_dir=cache_dir, use_cache=cache,
                             workers=workers, progress=progress, log=log)
    if kinds["fake"] == "checkpoint":
        st_f, rep_f = _generated_side_stats(fake, protocol, extractor, generation, progress, log)
    else:
        st_f, rep_f = side_stats(fake, protocol, extractor, role="fake", cache_dir=cache_dir, use_cache=False,
                                 workers=workers, progress=progress, log=log)
    rep_f.cache = "" if rep_f.kind in ("stats", "checkpoint") else "off"
    sha = extractor.sha256 if extractor is not None else st_r.detector_sha256
    for st, what in ((st_r, "--real"), (st_f, "--fake")):
        check_compatible(protocol.describe(), sha, st.protocol, st.detector_sha256, "this evaluation", what,
                         by_options=_follows_options(kinds))
    return st_r, rep_r, st_f, rep_f


def evaluate_fvd(real: str | os.PathLike, fake: str | os.PathLike, *, num: Optional[int] = None,
                 frames: int | str | None = None, stride: Optional[int] = None, seed: Optional[int] = None,
                 i3d: str | os.PathLike | None = None, device: str | torch.device = "auto",
                 batch_size: Optional[int] = None, workers: Optional[int] = None, precision: Optional[str] = None,
                 cache: bool = True, cache_dir: str | os.PathLike | None = None,
                 save_real: str | os.PathLike | None = None, save_fake: str | os.PathLike | None = None,
                 generation: Optional[dict] = None, extractor: Optional[I3DExtractor] = None,
                 progress: Optional[Progress] = None, log: Optional[Log] = None) -> FVDResult:
    """FVD between `real` and `fake` (each a folder of videos, a prepared dataset or a statistics .npz; `fake`
    may also be a checkpoint / run directory, generated with `generation` options — see `generate_fake_clips`).

    `num` clips per side and the selection `seed` (None: `Protocol`'s defaults; a statistics file
    holds what it holds, a mismatch with an explicit `num` is a warning). `frames`/`stride`/`precision` left as None
    follow a statistics-file side, else `Protocol`'s defaults.
    Real statistics are cached (`cache`, `cache_dir`); `save_real` / `save_fake` write .npz files.
    """
    t0 = time.perf_counter()
    real, fake = Path(real), Path(fake)
    kinds = {"real": source_kind(real), "fake": source_kind(fake)}
    _check_options(kinds, real, fake, save_real, save_fake, cache, cache_dir, workers, extractor, device, batch_size)
    f, s, prec = _resolve_protocol([real, fake], frames, stride, precision)
    given = {k: int(v) for k, v in (("num", num), ("seed", seed)) if v is not None}   # None: Protocol's default
    protocol = Protocol(frames=f, stride=s, precision=prec, **given)
    _check_sides({"real": real, "fake": fake}, kinds, protocol, extractor, generation)
    if extractor is None and not (kinds["real"] == "stats" and kinds["fake"] == "stats"):
        extractor = I3DExtractor(i3d, device, batch_size=batch_size, precision=protocol.precision)
    elif extractor is not None:
        extractor.precision = protocol.precision
    st_r, rep_r, st_f, rep_f = _measure_sides(real, fake, kinds, protocol, extractor, cache=cache,
                                              cache_dir=cache_dir, workers=workers, generation=generation,
                                              progress=progress, log=log)
    warnings = _side_warnings(protocol, num, (rep_r, rep_f), (st_r, st_f))
    if os.path.realpath(real) == os.path.realpath(fake):
        warnings.append("--real and --fake are the same: the FVD of a set against itself is 0")
    for msg in warnings if log else ():
        log(WARNING + msg)
    if save_real is not None:
        st_r.save(save_real)
    if save_fake is not None:
        st_f.save(save_fake)
    fvd = frechet_distance(st_r.mu, st_r.sigma, st_f.mu, st_f.sigma, names=(f"--real {str(real)!r}",
                                                                          f"--fake {str(fake)!r}"))
    want = protocol.describe()
    if num is None and rep_r.kind == "stats" and rep_f.kind == "stats":
        want["num_requested"] = None                    # nothing was selected here
    dev = str(extractor.device) if extractor is not None else "none (statistics files)"
    return FVDResult(fvd=fvd, num_real=st_r.num, num_fake=st_f.num, protocol=want,
                     detector_sha256=st_r.detector_sha256, real=rep_r, fake=rep_f, warnings=warnings,
                     device=dev, seconds=time.perf_counter() - t0)


# ============================================================================ the command


def _recipe_eval_defaults(real: Path, fake: Path, options: dict) -> None:
    """Fill the options not given from a checkpoint --fake's recipe [eval] (clips, frames, I3D batch on a GPU).

    A statistics-file --real fixes its own clip count and frames, so those two are left to it.
    """
    if source_kind(fake) != "checkpoint":
        return
    rec = checkpoint_recipe(fake)
    ev = rec.eval
    if source_kind(real) != "stats":
        if options.get("num") is None:
            options["num"] = ev.num_clips
        if options.get("frames") is None:
            if ev.frames < MIN_FRAMES:
                raise FVDError(f"--fake {str(fake)!r} makes {rec.pyramid.resolution[0]}-frame videos (its recipe's "
                               f"eval.frames = {ev.frames}) and I3D needs clips of at least {MIN_FRAMES} frames: "
                               "this model cannot be scored by FVD")
            options["frames"] = ev.frames
    if options.get("batch_size") is None and options.get("extractor") is None:
        if resolve_device(options.get("device", "auto")).type == "cuda":
            options["batch_size"] = ev.batch_size


def run_eval_fvd(real: Path, fake: Path, *, json_out: Optional[Path] = None, data: Optional[Path] = None,
                 gen_seed: Optional[int] = None, gen_batch: Optional[int] = None, steps: Optional[str] = None,
                 guidance=None, overlap: Optional[str] = None, bf16: bool = False, guidance_interval=None,
                 guide_model=None, sigma_max=None, **options) -> FVDResult:
    """`hpdm eval-fvd`: evaluate (`evaluate_fvd` options in `options`) and write the result to `json_out`.

    The checkpoint side's conditioning dataset defaults to `real` when that is a prepared dataset, and
    its recipe's [eval] gives the clip count, frames and I3D batch that are not given.
    """
    if names_packaged(fake):                                   # the packaged model, as `hpdm sample --ckpt packaged`
        fake = DEFAULT_MODEL
    if json_out is not None:
        _check_writable_file(json_out, "--json", ".json")
        if holds_other_than(json_out, lambda v: isinstance(v, dict) and {"fvd", "detector"} <= v.keys()):
            raise FVDError(f"--json {str(json_out)!r} already holds a file that is not an `hpdm eval-fvd` report "
                           "(a dataset's description?): choose another path (or delete it)")
    if Path(fake).exists() and source_kind(fake) != "checkpoint":      # a missing --fake is named later
        given = [flag for flag, v in (("--gen-seed", gen_seed), ("--gen-batch", gen_batch), ("--steps", steps),
                                      ("--guidance", guidance), ("--overlap", overlap), ("--bf16", bf16 or None),
                                      ("--guidance-interval", guidance_interval), ("--guide-model", guide_model),
                                      ("--sigma-max", sigma_max),
                                      ("--data", data)) if v is not None]
        if given:
            raise FVDError(f"{', '.join(given)} generate clips from a checkpoint, but --fake {str(fake)!r} is not "
                           "one: drop them, or give a run directory or weights file as --fake")
    _recipe_eval_defaults(real, fake, options)
    generation = dict(batch=gen_batch, steps=steps, guidance=guidance, overlap=overlap, bf16=bf16,
                      guidance_interval=guidance_interval, guide_model=guide_model, sigma_max=sigma_max)
    if gen_seed is not None:                                  # else generate_fake_clips' first seed
        generation["seed"] = gen_seed
    if data is not None:
        generation["data"] = data
    elif is_dataset(real):
        generation["data"] = real
    res = evaluate_fvd(real, fake, generation=generation, **options)
    if json_out is not None:
        from ..io import atomic_write_json
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(json_out, res.to_json())
        except OSError as e:
            raise FVDError(f"cannot write {str(json_out)!r}: {e.strerror or e}") from None
    return res
