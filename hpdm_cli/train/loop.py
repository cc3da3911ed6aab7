"""The training loop: one code path from a laptop CPU to a multi-GPU node (torchrun + DDP).

`train(recipe, run_dir)` builds the model, optimiser (LAMB or AdamW), EMA and data stream, resumes from
the newest readable checkpoint in `run_dir` if there is one, and runs until `train.steps`.
Every random choice of step s on rank r (patch offsets, sigmas, noise, condition dropout) comes
from a generator seeded by (train.seed, r, s), the data stream is a deterministic function of
the sample index, and torch's global RNG is checkpointed, so an interrupted and resumed run
reproduces the uninterrupted one exactly (docs/method.md, invariant "resume reproduces the
uninterrupted run"; tests/test_train.py).
Non-finite losses or gradients skip the step (counted in `skipped`, logged, never trained on);
`train.max_nonfinite_steps` skipped steps among the last twice as many stop the run with a
TrainError (a diverging run skips most steps but not all, so a count of steps in a row would
miss it), and weights
that are not finite are never saved, so the newest checkpoint stays the last good one. The skip
is decided and applied on the device: the host never waits for a step to finish except at sync
points (a logged or checkpointed step, the last one, a signal), where it reads the flags back.
Rank 0 holds a lock on the run directory (`hpdm_cli.io.lock`) for the whole run: a second
`hpdm train` on the same directory is refused, naming the holder. A run refused (an `HPDMError`) before its
steps began, in a run directory it made itself and locked, removes that directory again (`_Claim`).
SIGTERM / Ctrl-C save a checkpoint at the end of the current step and return (a second Ctrl-C
stops at once); a handler that something inside the run replaced is restored, with a warning, at
the next sync point. Under DDP, rank 0 decides everything that touches the run directory (refusals,
which checkpoint to resume, saving) and every rank learns the outcome, so no rank hangs on
another's error.

A run, in order: `_open_run_dir` (lock, refusals, the checkpoint to resume), `_model_state`
(network, EMA, optimiser: resumed, fresh, or from `init_from_checkpoint`, train/init_from.py),
`_parallel_model` (compile, DDP), the data (`Batches`, train/batches.py) and condition
(`_training_condition`; a text model's caption embeddings from train/captions.py), then `_Steps`
(gradients, the ranks' common verdict, the update, statistics, checkpoints).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..assets import PACKAGED
from ..config import CUDA_GRAPH_MODES, Recipe
from ..data.shards import is_dataset
from ..device import DeviceError, to_device
from ..diffusion.edm import diffusion_at_step, draw_noise
from ..errors import WARNING, HPDMError
from ..model.flops import train_step_flops
from ..model.network import HPDMNet
from ..io import atomic_write_json, atomic_write_text, unwritable
from ..io.lock import hold_lock
from ..pyramid import sample_nested_offsets
from . import TrainError
from .checkpoint import (CheckpointError, architecture_differences, architecture_of, latest_checkpoint,
                         list_checkpoints, load_checkpoint, recipe_in_metadata, save_checkpoint)
from .batches import Batches
from .captions import caption_embeddings, whiten_text_states
from .distributed import DistInfo, all_reduce_sum, init_distributed, shutdown
from .init_from import init_from_checkpoint, init_from_weights
from .optim import EMA, clip_gradients, lr_at, make_ema, make_optimizer, param_groups
from .signals import StopFlag
from .run_dir import CHECKPOINTS, CLASS_NAMES, ENV, LOG, RECIPE, checkpoint_name, foreign_entries, holds_training
from .stats import StatsWriter
from .step import (apply_update, build_model, compile_model, compile_note, forward_backward, load_compile_cache,
                   save_compile_cache, set_precision, step_generator)


@dataclass
class TrainSummary:
    """What a call to `train` did."""

    run_dir: Path
    start_step: int
    step: int
    steps: int
    skipped: int = 0
    interrupted: Optional[int] = None           # signal number, if stopped by a signal
    last_loss: float = float("nan")
    checkpoint: Optional[Path] = None
    messages: list = field(default_factory=list)


def _environment(dist: DistInfo) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except Exception:
        commit = ""
    from .. import __version__
    return {"hpdm": __version__, "git_commit": commit, "python": sys.version.split()[0], "torch": torch.__version__,
            "cuda": torch.version.cuda, "device": str(dist.device), "world_size": dist.world_size,
            "gpu": torch.cuda.get_device_name(dist.device) if dist.device.type == "cuda" else "",
            "host": platform.node(), "argv": sys.argv}


SIGNAL_EVERY = 10   # under DDP, steps between the ranks' reads of each other's signals (a device sync each)


def _check_dataset(path: str, what: str, resolution: Sequence[int], labelled: bool = False) -> None:
    """Fail early, in one line, when a dataset of the recipe is missing, of another (height, width) than
    `resolution`, or (`labelled`: a class-conditional model) holds unlabelled clips (before touching the run
    directory)."""
    from ..data.loader import check_resolution
    from ..data.shards import VideoDataset
    from ..data.synthetic import check_synthetic, is_synthetic
    if is_synthetic(path):
        check_synthetic(path)
        return
    if not path:
        raise TrainError(f"{what} is empty: set it to a dataset prepared with `hpdm prepare`")
    dataset = VideoDataset(path)                                          # DataError (one line) if unusable
    try:
        check_resolution(dataset, resolution)
        unlabelled = int((dataset.labels() < 0).sum()) if labelled else 0
    finally:
        dataset.close()
    if unlabelled:
        raise TrainError(f"model.cond = \"class\" but {unlabelled} of {what}'s {len(dataset)} clips have no label "
                         f"({path}): prepare it from class sub-folders or a labels file, or set model.cond=\"none\"")


def _check_settings(recipe: Recipe, run_dir: Path, log) -> None:
    """Refuse (TrainError) or warn about recipe values that would fail or mislead only later, before the run
    directory is written: the pixel channels, train.steps = 0 without train.init_from, missing paths, an overlap
    that cannot tile the patch, a warm-up longer than the run."""
    t, m = recipe.train, recipe.model
    if m.channels != 3:
        raise TrainError(f"model.channels = {m.channels}, but training videos are RGB (3 channels): set "
                         "model.channels = 3")
    if t.steps == 0 and not t.init_from and not holds_training(run_dir):
        raise TrainError("train.steps = 0 trains nothing: raise train.steps (0 only saves the weights that "
                         "train.init_from starts from)")
    table = recipe.data.prompt_table
    if table and m.cond == "text" and not os.path.exists(table):   # read only where the dataset's own do not fit
        log(WARNING + f"data.prompt_table = {table!r}: no such file or folder (the captions' embeddings stored with "
            "the dataset, or the text encoder, are used instead)")
    guide = recipe.sample.guide_model
    if guide and guide != PACKAGED and not os.path.exists(guide):
        log(WARNING + f"sample.guide_model = {guide!r} does not exist here: this run's checkpoints will not sample "
            "until it does (or pass --guide-model none)")
    odd = recipe.pyramid.odd_half_tile_axis()
    if odd:
        log(WARNING + f"pyramid.overlap = {recipe.pyramid.overlap!r} tiles every half tile along {odd}, where "
            "pyramid.patch is odd: this model can only be sampled with an --overlap that leaves out that axis")
    if t.warmup_steps > t.steps > 0:
        log(WARNING + f"train.warmup_steps = {t.warmup_steps} is more than train.steps = {t.steps}: the learning "
            f"rate never reaches train.lr = {t.lr:g}")
    if t.compile_cache:
        if t.compile is False:
            log(WARNING + f"train.compile_cache = {t.compile_cache!r} is unused: train.compile is false (nothing is "
                "compiled to cache)")
        elif (why := unwritable(t.compile_cache)) is not None:
            raise TrainError(f"train.compile_cache = {t.compile_cache!r}: {why}")
    if t.compile_scope == "blocks":
        if t.compile is False:
            log(WARNING + 'train.compile_scope = "blocks" is unused: train.compile is false (nothing is compiled)')
        elif t.compile in CUDA_GRAPH_MODES:
            # measured on an H100 (docs/benchmarks.md, fortieth visit): the shapes pyramid's 20 steps after its
            # first took ~45 s this way, where either alone runs ~11-16 steps a second
            log(WARNING + f"train.compile_scope = \"blocks\" with train.compile = {json.dumps(t.compile)} records a "
                "CUDA graph per block: on an H100 its steps ran at ~0.5 a second against ~11 with train.compile = "
                "true; use train.compile = true with it")


def _refuse_foreign_folder(run_dir: Path) -> tuple[Optional[Recipe], bool]:
    """Refuse a dataset, a user's recipe.toml or a folder of other files; return (the run's recipe or None, trained).

    It only reads, so it runs before the lock is taken too: a refused folder is left as it was.
    """
    from ..recipe import recipe_from_toml, recipe_to_toml
    if is_dataset(run_dir):
        raise TrainError(f"--run-dir {run_dir} is a prepared dataset (it holds dataset.json): choose another folder "
                         "for the run")
    old = run_dir / RECIPE
    trained = holds_training(run_dir)
    prev = None
    if old.exists():
        try:
            text = old.read_text()
            prev = recipe_from_toml(text, source=str(old))
        except Exception as e:                                            # ConfigError, OSError, ...
            raise TrainError(f"{old} is unreadable ({str(e).strip().splitlines()[0] if str(e) else type(e).__name__}); "
                             "restore it, or delete it to adopt this recipe") from None
        if not trained and text != recipe_to_toml(prev):              # e.g. the user's own recipe kept there
            raise TrainError(f"{old} is not the resolved recipe hpdm train writes there (a recipe of your own, or "
                             "one edited by hand), and the run would replace it: move it elsewhere, or choose "
                             "another --run-dir")
    # A run (trained, or holding the recipe it wrote) may gather the user's files; any other folder must not.
    foreign = [] if trained or prev is not None else foreign_entries(run_dir)
    if foreign:
        raise TrainError(f"--run-dir {run_dir} holds files that are not an hpdm run's ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}): choose an empty or new folder for the run")
    return prev, trained


def _recipe_of_checkpoint(ck: Optional[dict]) -> Optional[Recipe]:
    """The recipe stored with a checkpoint (None without a checkpoint, or when it holds none that parses: then
    load_state_dict judges the weights)."""
    if ck is None or "hpdm_recipe" not in ck["meta"]:
        return None
    try:
        return recipe_in_metadata(ck["meta"], ck["path"])
    except Exception:
        return None


def _check_run_dir(recipe: Recipe, run_dir: Path, warn) -> Optional[dict]:
    """Refuse a run directory of another architecture; return its newest readable checkpoint (or None)."""
    prev, trained = _refuse_foreign_folder(run_dir)
    arch = architecture_of(recipe)
    old = run_dir / RECIPE
    if prev is not None:
        if architecture_of(prev) != arch:
            if trained:
                diff = architecture_differences(architecture_of(prev), arch)
                raise TrainError(f"{run_dir} holds a run of another architecture ({diff}); use another run "
                                 "directory or restore the recipe")
            warn(f"{old}: a run that never trained (no checkpoint, no logged step) with another architecture; "
                 "this recipe replaces it")
    ckpts = run_dir / CHECKPOINTS
    if ckpts.exists() and not ckpts.is_dir():
        raise TrainError(f"{ckpts} is a file, not the run's folder of checkpoints: move it aside, or choose another "
                         "--run-dir")
    had = list_checkpoints(run_dir)
    ck = latest_checkpoint(run_dir, device="cpu", warn=warn, set_aside=True)
    bad = sorted(p.name for p in ckpts.glob("*.corrupt*")) if ckpts.is_dir() else []
    bad = bad or [p.name for p in had]                 # (set aside, or left where they are when renaming failed)
    if ck is None and bad:                             # never restart over a run's unusable checkpoints unasked
        raise TrainError(f"{run_dir}: no usable checkpoint ({len(bad)} unreadable, e.g. {bad[0]}; see the warnings): "
                         "restore one, or move the run directory aside to start again")
    if ck is None and trained:
        warn(f"{run_dir}: no checkpoint was saved before the run stopped: training starts again from step 0")
    if ck is not None and recipe.train.init_from and (prev is None or prev.train.init_from != recipe.train.init_from):
        warn(f"train.init_from is not used: the run resumes from its checkpoint of step {ck['state']['step']} "
             "(init_from only starts a fresh run)")
    if ck is None and recipe.train.init_from:          # a fresh run's start, found before the folder is written
        init_from_weights(recipe.train.init_from)
    stored = _recipe_of_checkpoint(ck)
    if stored is not None and architecture_of(stored) != arch:
        raise CheckpointError(f"{ck['path']}: trained with another architecture "
                              f"({architecture_differences(architecture_of(stored), arch)}); use another run "
                              "directory or restore the recipe")
    if stored is not None and stored.train.steps != recipe.train.steps and ck["state"]["step"] < recipe.train.steps:
        warn(f"train.steps = {recipe.train.steps}, where its checkpoint was trained for {stored.train.steps}: the "
             f"learning-rate schedule is recomputed for {recipe.train.steps} steps from step {ck['state']['step']} on")
    return ck


def _last_logged_loss(run_dir: Path, step: int) -> float:
    """The loss logged for `step` in stats.jsonl (NaN when it was not logged or was not finite)."""
    from .stats import read_stats
    try:
        rows = [r for r in read_stats(run_dir) if r.get("step") == step]
    except (OSError, ValueError):
        return float("nan")
    loss = rows[-1].get("loss") if rows else None
    return float(loss) if isinstance(loss, (int, float)) else float("nan")


def _groups_of_checkpoint(net: torch.nn.Module, groups: list, saved: list) -> list:
    """The parameter groups of a checkpoint's optimiser (by the `names` it stored), else `groups`.

    The optimiser state is matched to parameters by position inside each group, so a resumed run
    must group parameters exactly as the run that wrote the checkpoint did.
    """
    params = dict(net.named_parameters())
    if len(saved) != len(groups) or not all(isinstance(g.get("names"), list) for g in saved):
        return groups
    names = [n for g in saved for n in g["names"]]
    if sorted(names) != sorted(n for g in groups for n in g["names"]):
        return groups                                                     # another model: load_state_dict says so
    return [dict(g, params=[params[n] for n in sg["names"]], names=list(sg["names"])) for g, sg in zip(groups, saved)]


def without_unbuilt_fusions(ck: dict, net: torch.nn.Module) -> dict:
    """A checkpoint of an earlier version minus the fusion weights of level-0-only blocks (model, EMA, optimiser).

    Such fusions never touched the output and are no longer built (`HPDMNet.is_unbuilt_fusion`).
    The optimiser state follows its parameters by position within each group, so a dropped
    parameter leaves its group's `params`/`names` lists and its state together.
    """
    drop = getattr(net, "is_unbuilt_fusion", None)
    if drop is None:
        return ck
    for part in ("model", "ema"):
        if ck.get(part) is not None:
            ck[part] = {k: v for k, v in ck[part].items() if not drop(k)}
    opt = ck.get("optimizer")
    if opt is not None:
        for g in opt["param_groups"]:
            names = g.get("names")
            if not isinstance(names, list) or len(names) != len(g["params"]):
                continue
            gone = [i for n, i in zip(names, g["params"]) if drop(n)]
            if gone:
                g["params"] = [i for n, i in zip(names, g["params"]) if not drop(n)]
                g["names"] = [n for n in names if not drop(n)]
                for i in gone:
                    opt["state"].pop(i, None)
    return ck


def unused_parameters(net: torch.nn.Module, recipe: Recipe, device) -> list:
    """Names of trainable parameters that one training forward/backward (batch 1, no self-conditioning) leaves
    without a gradient. Uses its own generator: torch's global RNG is untouched."""
    g = torch.Generator().manual_seed(0)
    p, m = recipe.pyramid, recipe.model
    videos = torch.zeros(1, m.channels, *p.resolution, device=device)
    offsets = sample_nested_offsets(p, 1, generator=g).to(device)
    cond = {"class": lambda: torch.zeros(1, dtype=torch.long, device=device),
            "text": lambda: torch.zeros(1, m.text_tokens, m.text_dim, device=device),
            "none": lambda: None}[m.cond]()
    draw = draw_noise(recipe.diffusion, (1, p.num_levels, m.channels, *p.patch), conditional=cond is not None,
                      self_condition=False, generator=g, device=device)
    net.zero_grad(set_to_none=True)
    forward_backward(net, videos, cond, recipe, offsets, draw, 1.0, "fp32")
    unused = [n for n, q in net.named_parameters() if q.requires_grad and q.grad is None]
    net.zero_grad(set_to_none=True)
    return unused


def _agree(flag: bool, dist: DistInfo) -> bool:
    """True when `flag` is true on any rank (a collective: every rank must call it)."""
    if not dist.distributed:
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=dist.device)).item() > 0)


def train(recipe: Recipe, run_dir: str | os.PathLike, *, log: Callable[[str], None] = print,
          stop_after: Optional[int] = None, progress: bool = False) -> TrainSummary:
    """Train (or resume) the recipe's model in `run_dir`; returns a summary. `stop_after` stops early (tests)."""
    t = recipe.train
    try:
        dist = init_distributed(t.device)
    except DeviceError as e:
        raise TrainError(str(e)) from None
    claim = _Claim()
    try:
        with ExitStack() as held:                                         # the run directory's lock (rank 0)
            try:
                return _train(recipe, Path(run_dir), dist, held, claim, log=log, stop_after=stop_after,
                              progress=progress)
            except HPDMError:
                if claim.made and not claim.stepping:   # a refused start leaves no half-made run (a bug keeps it)
                    shutil.rmtree(run_dir, ignore_errors=True)    # the lock still held: no other run is in it
                raise
    except OSError as e:                                                  # disk full, permissions, ... on a write
        where = f" ({e.filename})" if e.filename else ""
        raise TrainError(f"{run_dir}: {e.strerror or e}{where}; fix that and re-run the same command to resume "
                         "from the newest checkpoint") from e
    finally:
        if dist.owns_group:
            shutdown()


@dataclass
class _Claim:
    """What this process holds of its run directory: whether it made the folder (and holds its lock), and whether
    the steps have begun. A run refused while `made` and not `stepping` removes the folder again."""

    made: bool = False
    stepping: bool = False


def _made_here(run_dir: Path) -> bool:
    """Make the missing run directory (and its parents); whether this call made it (False: it was there, or
    cannot be made, which the lock then says)."""
    try:
        run_dir.mkdir(parents=True)
    except OSError:
        return False
    return True


def _train(recipe: Recipe, run_dir: Path, dist: DistInfo, held: ExitStack, claim: _Claim, *, log, stop_after,
           progress) -> TrainSummary:
    """One run in a started process: the run directory, the model state, the data, then the steps."""
    t0 = time.perf_counter()
    t = recipe.train
    say = _run_log(run_dir, dist, log)
    per_step = _per_rank_batch(t, dist.world_size)
    size = recipe.pyramid.resolution[1:]
    labelled = recipe.model.cond == "class"
    _check_dataset(recipe.data.path, "data.path", size, labelled)
    if recipe.data.image_path and recipe.data.image_fraction > 0:
        _check_dataset(recipe.data.image_path, "data.image_path", size, labelled)
    warned: list[str] = []                              # said before the run directory can hold train.log

    def early(msg: str) -> None:
        if dist.is_main:
            log(msg)
            warned.append(msg)
    _check_settings(recipe, run_dir, early)
    ck = _open_run_dir(recipe, run_dir, dist, held, claim, log, say)
    for msg in warned:
        say(msg, echo=False)
    set_precision(t.precision)
    state = _model_state(recipe, dist, ck, say)
    del ck
    summary = TrainSummary(run_dir=run_dir, start_step=state.start, step=state.start, steps=t.steps,
                           skipped=state.skipped)
    if state.start >= t.steps:
        if t.steps == 0 and t.init_from and not list_checkpoints(run_dir):
            # The model as init_from starts it (e.g. a grown pyramid), to sample or evaluate before training.
            summary.checkpoint = _save(run_dir, recipe, 0, state.net, state.ema, state.opt, dist,
                                       {"skipped": 0, "samples_per_rank": 0}, t.keep_last)
            say(f"train.steps = 0: saved the weights as train.init_from starts them, {summary.checkpoint} "
                "(sample or evaluate them; raise train.steps to train from there)")
            return summary
        say(f"nothing to do: the run is at step {state.start} of train.steps = {t.steps} (raise train.steps to "
            "continue)")
        summary.last_loss = _last_logged_loss(run_dir, state.start)
        return summary
    model = _parallel_model(state.net, recipe, dist, say)
    marks = {"run directory and model": time.perf_counter()}   # the start-up phases, said before the first step
    batches = Batches(recipe, dist, per_step // t.grad_accum, start_batch=state.start * t.grad_accum,
                       total_batches=t.steps * t.grad_accum)
    marks["data"] = time.perf_counter()
    text_emb = _training_condition(recipe, batches, run_dir, dist, say)
    if state.whiten_text:
        say(whiten_text_states(state.net, state.ema, text_emb, distributed=dist.world_size > 1))
    marks["condition"] = time.perf_counter()
    if state.rng_state is not None:     # torch's global RNG as at the checkpoint (steps draw from step_generator)
        torch.set_rng_state(state.rng_state)
    steps = _Steps(recipe, run_dir, dist, state, model, batches, text_emb, say, summary, started=t0)
    claim.stepping = True
    say(start_up_line(t0, marks), echo=False)
    if (note := compile_note(recipe.train.compile)) is not None:
        say(note)
    if recipe.train.compile is not False and recipe.train.compile_cache:
        load_compile_cache(recipe.train.compile_cache, say if dist.is_main else lambda msg: None)
    return steps.run(stop_after=stop_after, progress=progress)


def step_draws(recipe: Recipe, rank: int, step: int, micro: int, conditional: bool, device) -> list:
    """A rank's random choices of one step: (patch offsets, NoiseDraw) per micro-batch, from the step's generator."""
    t, rec = recipe.train, recipe
    gen = step_generator(t.seed, rank, step)
    shape = (micro, rec.pyramid.num_levels, rec.model.channels, *rec.pyramid.patch)
    diffusion = diffusion_at_step(rec.diffusion, step, t.steps)     # its ramps (p_mean_start, context_prob_start)
    out = []
    for _ in range(t.grad_accum):
        offsets = to_device(sample_nested_offsets(rec.pyramid, micro, generator=gen), device)
        out.append((offsets, draw_noise(diffusion, shape, conditional=conditional,
                                        self_condition=rec.model.self_condition, generator=gen, device=device,
                                        noise_on_device=t.noise_on == "device")))
    return out


def start_up_line(t0: float, marks: dict) -> str:
    """train.log's line of the seconds each start-up phase took (`marks`: phase -> perf_counter at its end)."""
    parts, last = [], t0
    for phase, at in marks.items():
        parts.append(f"{phase} {at - last:.1f} s")
        last = at
    return (f"start-up {last - t0:.1f} s ({', '.join(parts)}; compilation and graph capture, if any, come in the "
            "first logged steps: stats.jsonl's elapsed_s)")


def _run_log(run_dir: Path, dist: DistInfo, log) -> Callable[..., None]:
    """say(msg, echo=True): rank 0 appends `msg` to RUN_DIR/train.log (time-stamped) and, if `echo`, logs it."""
    def say(msg: str, echo: bool = True) -> None:
        if dist.is_main:
            if echo:
                log(msg)
            with open(run_dir / LOG, "a") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")
    return say


def _per_rank_batch(t, world_size: int) -> int:
    """Samples per rank and step: train.batch_size split over the ranks, then into train.grad_accum micro-batches."""
    per_step = t.batch_size // world_size
    if t.batch_size % world_size or per_step % t.grad_accum:
        raise TrainError(f"train.batch_size = {t.batch_size} is not divisible by world size {world_size} "
                         f"x train.grad_accum {t.grad_accum}")
    return per_step


def _open_run_dir(recipe: Recipe, run_dir: Path, dist: DistInfo, held: ExitStack, claim: _Claim, log,
                  say) -> Optional[dict]:
    """Claim the run directory and return the checkpoint to resume from (None: a fresh run).

    Rank 0 takes the directory's lock (created if missing; a file there is refused), refuses a
    directory of another architecture and picks the newest readable checkpoint (setting corrupt
    ones aside); every rank learns the outcome and loads that checkpoint. Rank 0 then writes the
    resolved recipe and the environment.
    """
    from ..recipe import dump_recipe
    refusal, ck = None, None
    if dist.is_main:
        try:
            if run_dir.is_dir():
                _refuse_foreign_folder(run_dir)             # before the lock file is created in a refused folder
            made = _made_here(run_dir)
            held.enter_context(hold_lock(run_dir, "hpdm train", error=TrainError, warn=lambda m: log(WARNING + m)))
            claim.made = made                               # only once the lock is this process's
            ck = _check_run_dir(recipe, run_dir, lambda m: say(WARNING + m))
        except (TrainError, CheckpointError) as e:
            refusal = e
    if _agree(refusal is not None, dist):
        raise refusal or TrainError(f"{run_dir}: rank 0 refused the run directory (see its message)")
    if dist.is_main:
        dump_recipe(recipe, run_dir / RECIPE)
        atomic_write_text(run_dir / ENV, json.dumps(_environment(dist), indent=1))
    if dist.distributed:
        found = torch.tensor([ck["state"]["step"] + 1 if ck is not None else 0], device=dist.device)
        found = int(all_reduce_sum(found).item())
        if not dist.is_main and found:
            path = run_dir / CHECKPOINTS / checkpoint_name(found - 1)
            ck = load_checkpoint(path, "cpu")
            ck["path"] = path
    return ck


@dataclass
class _ModelState:
    """The network, its EMA and optimiser, and where the run continues (step, skipped steps, torch's RNG)."""

    net: HPDMNet
    ema: Optional[EMA]
    opt: torch.optim.Optimizer
    start: int = 0
    skipped: int = 0
    rng_state: Optional[torch.Tensor] = None
    whiten_text: bool = False          # model.text_whitening's statistics still to set from the training captions


def _model_state(recipe: Recipe, dist: DistInfo, ck: Optional[dict], say) -> _ModelState:
    """Network, EMA and optimiser on the device: resumed from `ck`, else fresh (from train.init_from if set)."""
    t = recipe.train
    net = build_model(recipe)
    if ck is not None:
        ck = without_unbuilt_fusions(ck, net)
    # Parameter groups of the freshly initialised model (param_groups looks at values: zero-initialised
    # tensors go to the no-decay group), so that they do not depend on init_from or on a resume.
    groups = param_groups(net, t.weight_decay)
    if ck is not None:
        groups = _groups_of_checkpoint(net, groups, ck["optimizer"]["param_groups"])
    whitened = False                                                     # text whitening loaded from init_from
    if t.init_from and ck is None:                                       # a fresh run starts from init_from
        report = init_from_checkpoint(net, t.init_from)
        say(report.describe(t.init_from))
        whitened = "text_whiten" in report.loaded
        if recipe.model.text_whitening and not whitened:
            say(WARNING + f"model.text_whitening: train.init_from = {t.init_from!r} has none, so its text "
                "projection, trained on the encoder's raw states, now reads whitened ones: the condition is relearnt")
    net.to(dist.device)
    ema = make_ema(net, t)
    state = _ModelState(net, ema, make_optimizer(groups, t),
                        whiten_text=recipe.model.text_whitening and ck is None and not whitened)
    if ck is not None:
        _resume(state, ck, recipe, dist, say)
    return state


def _resume(state: _ModelState, ck: dict, recipe: Recipe, dist: DistInfo, say) -> None:
    """Load checkpoint `ck` into the model state: weights, EMA, optimiser, step counters and RNG states."""
    t = recipe.train
    try:
        state.net.load_state_dict(ck["model"])
        if state.ema is not None and ck["ema"] is not None:
            state.ema.load_state_dict(ck["ema"])
        state.opt.load_state_dict(ck["optimizer"])
        for g in state.opt.param_groups:                                  # the recipe's settings win over the
            g["betas"], g["eps"] = tuple(t.betas), t.eps                     # stored ones (continuing with
        state.opt.param_groups[0]["weight_decay"] = t.weight_decay        # changed hyperparameters)
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{ck['path']}: weights do not fit this recipe's model "
                              f"({str(e).strip().splitlines()[0]})") from None
    state.start, state.skipped = int(ck["state"]["step"]), int(ck["state"].get("skipped", 0))
    state.rng_state = ck["extra"].get("torch_rng")
    if dist.device.type == "cuda" and "cuda_rng" in ck["extra"]:
        torch.cuda.set_rng_state(ck["extra"]["cuda_rng"].cpu(), dist.device)
    say(f"resumed from {ck['path']} at step {state.start}")


def _parallel_model(net: HPDMNet, recipe: Recipe, dist: DistInfo, say):
    """What the steps call: the network wrapped in DDP when distributed, then compiled if train.compile.

    DDP goes inside the compiled module, so that the compiler splits the graph at DDP's gradient
    buckets and each bucket's all-reduce overlaps the rest of the backward pass (compiling the
    network inside DDP would hand all gradients over only at the end of one fused backward).
    """
    model = net
    if dist.distributed:
        # DDP must know about parameters that get no gradient: any parameter a training step leaves
        # unused (level-0-only blocks build no fusion, so those are not among them; the self-conditioning
        # projection gets a zero gradient on steps without its pass, `edm_loss`'s latent_shape). Buffers are
        # not broadcast: the network's are constants made alike on every rank (level scales, Fourier
        # frequencies), and DDP's broadcast in every forward would also run in the gradient-free
        # self-conditioning pass, which each rank draws on its own: two gloo ranks, one with the pass and one
        # without, stopped on a collective of mismatched sizes (tests/test_distributed.py).
        unused = unused_parameters(net, recipe, dist.device)
        if unused:
            say(f"DDP: {len(unused)} parameters never receive a gradient ({', '.join(unused[:6])}"
                + (" ..." if len(unused) > 6 else "") + "); find_unused_parameters is on")
        model = DDP(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                    find_unused_parameters=bool(unused), **no_forward_buffer_sync())
    return compile_model(model, recipe.train.compile, recipe.train.compile_scope)


def no_forward_buffer_sync() -> dict:
    """DDP's keyword for no buffer sync in every forward: `forward_sync_buffers` where torch has it (2.13 on, which
    deprecates `broadcast_buffers` with a warning), else `broadcast_buffers`. Either way the buffers, alike on
    every rank, may be synced once at construction."""
    import inspect
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _training_condition(recipe: Recipe, batches: Batches, run_dir: Path, dist: DistInfo,
                        say) -> Optional[torch.Tensor]:
    """The text model's caption embeddings (None otherwise); a class model's classes checked against the data."""
    m = recipe.model
    if m.cond == "text":
        return caption_embeddings(recipe, batches.captions, run_dir, dist.device, batches.caption_sources, say,
                                   dist.is_main)
    if m.cond == "class":
        n_cls = len(batches.class_names)
        if n_cls and n_cls > m.num_classes:
            raise TrainError(f"the dataset has {n_cls} classes but model.num_classes = {m.num_classes}: set "
                             f"model.num_classes={n_cls} (or more)")
        if n_cls and dist.is_main:             # sampling names classes without the dataset (hpdm_cli.checkpoint)
            atomic_write_json(run_dir / CLASS_NAMES, {"class_names": [str(n) for n in batches.class_names]})
    return None


class _Steps:
    """The optimisation steps of a run: micro-batches in; optimiser and EMA updates, statistics, checkpoints out."""

    def __init__(self, recipe: Recipe, run_dir: Path, dist: DistInfo, state: _ModelState, model,
                 batches: Batches, text_emb: Optional[torch.Tensor], say, summary: TrainSummary, *,
                 started: float):
        self.recipe, self.t, self.run_dir, self.dist = recipe, recipe.train, run_dir, dist
        self.started = started                                             # perf_counter when the process's run began
        self.state, self.model, self.batches, self.text_emb = state, model, batches, text_emb
        self.say, self.summary = say, summary
        self.params = [p for p in state.net.parameters()]
        self.step, self.skipped, self.recent = state.start, state.skipped, 0   # recent: skipped in the window
        self.t_last, self.n_last = 0.0, 0                                  # throughput since the last log
        self.micro = batches.micro                                         # samples per micro-batch and rank
        self.conditional = recipe.model.cond == "class" or text_emb is not None
        self._pending: Optional[tuple[int, list]] = None                   # (step, draws) drawn ahead
        zero = torch.zeros((), device=dist.device)
        self._skips = zero                                                 # skipped since the last sync point
        # The skip flags of the last 2 * train.max_nonfinite_steps steps, a ring on the device.
        self._window = torch.zeros(max(2 * recipe.train.max_nonfinite_steps, 1), device=dist.device)
        self._synced = self.step                                           # the step count at the last sync point

    def run(self, *, stop_after: Optional[int], progress: bool) -> TrainSummary:
        """Train until train.steps, a signal or `stop_after` steps; checkpoint on the way and at the end."""
        t, dist, start = self.t, self.dist, self.state.start
        self.flops = train_step_flops(self.recipe.pyramid, self.recipe.model,
                                      self_cond_prob=self.recipe.diffusion.self_cond_prob) * t.batch_size
        self.stats = StatsWriter(self.run_dir, enabled=dist.is_main, tensorboard=True, resume_step=start)
        if self.stats.note:
            self.say(self.stats.note)
        self.t_last = time.perf_counter()
        self.say(f"training {sum(p.numel() for p in self.params) / 1e6:.1f}M parameters on {dist.world_size} x "
                 f"{dist.device.type}, steps {start} -> {t.steps}, global batch {t.batch_size} (micro {self.micro} x "
                 f"accum {t.grad_accum})")
        d = self.recipe.diffusion
        if d.ramped:
            show = lambda v: [round(x, 3) for x in v] if isinstance(v, (list, tuple)) else round(v, 3)
            self.say(f"training log-sigma mean: {show(diffusion_at_step(d, 0, t.steps).p_mean)} at step 0 -> "
                     f"{show(d.p_mean)} at step {t.steps - 1} (diffusion.p_mean_start); "
                     f"{show(diffusion_at_step(d, start, t.steps).p_mean)} now")
        if d.context_ramped:
            self.say(f"training share of samples with clean context: {d.context_prob_start:g} at step 0 -> "
                     f"{d.context_prob:g} at step {t.steps - 1} (diffusion.context_prob_start); "
                     f"{diffusion_at_step(d, start, t.steps).context_prob:.3g} now")
        if self.recipe.pyramid.num_levels > 1 and self.recipe.diffusion.context_prob >= 1:
            self.say(WARNING + "diffusion.context_prob = 1 makes level 0 context in every sample, so it is never "
                     "in the loss (docs/method.md, section 5); the base level then drifts through the upper "
                     "levels' gradients: use a value below 1 (the default is 0.25, the shapes recipes use 0.75)")
        try:
            with StopFlag() as stop, self.stats.progress(start, t.steps, enabled=progress and dist.is_main,
                                                          batch=t.batch_size) as bar:
                while self.step < t.steps:
                    if self._one_step(stop, bar, stop_after):
                        break
        finally:
            self.stats.close()
        return self.summary

    def _one_step(self, stop: StopFlag, bar, stop_after: Optional[int]) -> bool:
        """Step `self.step`: gradients, the ranks' verdict, the update; at sync points logging, checkpoint; True to stop."""
        t, st = self.t, self.state
        lr = lr_at(self.step, lr=t.lr, warmup_steps=t.warmup_steps, total_steps=t.steps, min_lr_ratio=t.min_lr_ratio)
        for g in st.opt.param_groups:
            g["lr"] = lr
        timed = self.step == st.start and t.compile is not False       # where a cold start's minutes go
        if timed:
            t0 = self._now()
        loss, per_level = self._gradients()
        grad_norm = clip_gradients(self.params, t)
        if timed:
            t1 = self._now()
        if self.step + 1 < t.steps:
            # Draw the next step's randomness on the host while the device still runs this step;
            # the values do not depend on when they are drawn.
            self._pending = (self.step + 1, self._draws(self.step + 1))
        # One collective per step, left on the device (torch.full fills on the device; torch.tensor
        # would copy from pageable host memory, which waits): non-finite loss / gradient anywhere, ranks
        # stopped by a signal (and the sum of their signal numbers), and the loss summed over ranks.
        # The update is applied or skipped on the device too, so the host queues the next step
        # while this one runs; it reads the flags back only at sync points (_sync_point).
        sig = stop.signum
        dev = loss.device
        flags = torch.stack([(~torch.isfinite(loss) | ~torch.isfinite(grad_norm)).float(),
                             torch.full((), float(sig > 0), device=dev), torch.full((), float(sig), device=dev),
                             loss.float()])
        flags = all_reduce_sum(flags)
        bad = (flags[0] > 0).float()
        self._update(bad)
        if timed:
            self.say(f"first step: {t1 - t0:.1f} s for the gradients, {self._now() - t1:.1f} s for the update "
                     f"(torch.compile's compilation included)")
            if t.compile_cache and self.dist.is_main:      # everything is compiled now: the next run skips it
                save_compile_cache(t.compile_cache, self.say)
        self._skips = self._skips + bad                                    # skipped since the last sync point
        self._window[self.step % self._window.numel()] = bad               # a device copy: no sync
        self.step += 1
        self.n_last += 1
        if not self._sync_point(sig, stop_after):
            bar(self.step, None)
            return False
        f, skips, recent = self._read(flags)
        self.skipped += skips
        replaced = stop.reassert()
        if replaced:
            self.say(WARNING + f"the {' and '.join(replaced)} handler was replaced during the run (by a library); "
                     "restored, so that a signal still saves a checkpoint")
        if skips:
            first, last = self._synced, self.step - 1
            self.say(f"step {last}: non-finite loss or gradient, step skipped ({self.skipped} so far)" if first == last
                     else f"steps {first}-{last}: {skips} with a non-finite loss or gradient skipped "
                          f"({self.skipped} so far)")
        self._synced, self.recent = self.step, recent
        mean_loss = f[3] / self.dist.world_size
        self.summary.last_loss, self.summary.step, self.summary.skipped = mean_loss, self.step, self.skipped
        bar(self.step, mean_loss)
        if self.step % t.log_every == 0 or self.step == t.steps:
            self._log(mean_loss, lr, grad_norm, per_level, live=bar.live)
        self._check_skips()
        stopping = f[1] > 0 or (stop_after is not None and self.step - st.start >= stop_after)
        if self.step % t.ckpt_every == 0 or self.step == t.steps or stopping:
            self.summary.checkpoint = _save(self.run_dir, self.recipe, self.step, st.net, st.ema, st.opt, self.dist,
                                            {"skipped": self.skipped,
                                             "samples_per_rank": self.step * (t.batch_size // self.dist.world_size)},
                                            t.keep_last)
        if stopping:
            signum = int(round(f[2] / f[1])) if f[1] > 0 else 0
            self.summary.interrupted = signum or None
            if signum:
                self.say(f"stopped by signal {signum} at step {self.step}; checkpoint saved, re-run the same command "
                         "to resume")
        return stopping

    def _sync_point(self, sig: int, stop_after: Optional[int]) -> bool:
        """Whether the host reads the step's flags now (a device sync): to log, checkpoint, stop or heed a signal.

        One process sees its own signal at once; under DDP the ranks agree on signals through the
        flags, read every SIGNAL_EVERY steps, so a SIGTERM takes effect within that many steps.
        """
        t, n = self.t, self.step
        return (n % t.log_every == 0 or n % t.ckpt_every == 0 or n == t.steps
                or (stop_after is not None and n - self.state.start >= stop_after)
                or (sig > 0 if self.dist.world_size == 1 else n % SIGNAL_EVERY == 0))

    def _read(self, flags: torch.Tensor) -> tuple[list, int, int]:
        """The flags, steps skipped since the last sync point and within the window, read in one transfer."""
        vals = torch.cat([flags, torch.stack([self._skips, self._window.sum()]).to(flags)]).tolist()
        self._skips = torch.zeros((), device=flags.device)
        return vals[:4], int(round(vals[4])), int(round(vals[5]))

    def _gradients(self) -> tuple[torch.Tensor, list]:
        """Accumulate the step's gradients over train.grad_accum micro-batches: (mean loss, per-level losses)."""
        t, dist, rec = self.t, self.dist, self.recipe
        pending, self._pending = self._pending, None
        draws = pending[1] if pending is not None and pending[0] == self.step else self._draws(self.step)
        frames = rec.pyramid.resolution[0]
        losses, per_level = [], []
        for a, (offsets, draw) in enumerate(draws):
            videos, labels, caps = self.batches.next(dist.device, frames)
            cond = labels if rec.model.cond == "class" else (self.text_emb[caps] if self.text_emb is not None else None)
            if rec.model.cond == "class" and self.batches.unlabelled:
                raise TrainError("model.cond = \"class\" but some training clips have no label (data.path's "
                                 "videos, or data.image_path's images: give those class sub-folders); use labelled "
                                 "data or model.cond=\"none\"")
            sync = self.model.no_sync() if (dist.distributed and a < t.grad_accum - 1) else nullcontext()
            with sync:
                out = forward_backward(self.model, videos, cond, rec, offsets, draw, 1.0 / t.grad_accum, t.precision)
            losses.append(out.loss.detach())
            per_level.append(out.per_level)
        return torch.stack(losses).mean(), per_level

    def _now(self) -> float:
        """The host clock once the device has finished what was queued (a sync: for one-off timings only)."""
        if self.dist.device.type == "cuda":
            torch.cuda.synchronize(self.dist.device)
        return time.perf_counter()

    def _draws(self, step: int) -> list:
        """Step `step`'s random choices: (patch offsets, NoiseDraw) per micro-batch (`step_draws`)."""
        return step_draws(self.recipe, self.dist.rank, step, self.micro, self.conditional, self.dist.device)

    def _update(self, bad: torch.Tensor) -> None:
        """Apply the step (optimiser, then EMA), or skip it on the device where `bad` (any rank's non-finite loss or gradient) is 1."""
        apply_update(self.state.opt, self.state.ema, self.state.net, bad)

    def _log(self, mean_loss: float, lr: float, grad_norm: torch.Tensor, per_level: list, live: bool) -> None:
        """Write a stats.jsonl row (losses per level, throughput, memory) and a progress line."""
        t, dist = self.t, self.dist
        if dist.device.type == "cuda":
            torch.cuda.synchronize(dist.device)
        now = time.perf_counter()
        sps = self.n_last / max(now - self.t_last, 1e-9)
        lv = torch.stack(per_level).mean(0)
        all_reduce_sum(lv)
        lv = (lv / dist.world_size).tolist()
        rec = {"step": self.step, "loss": mean_loss, **{f"loss_l{i}": v for i, v in enumerate(lv)}, "lr": lr,
               "grad_norm": float(grad_norm), "skipped": self.skipped, "videos_per_s": sps * t.batch_size,
               "tflops_per_s": sps * self.flops / 1e12,
               "elapsed_s": now - self.started}                    # since this process's run began
        if dist.device.type == "cuda":
            rec["max_mem_gb"] = torch.cuda.max_memory_allocated(dist.device) / 2 ** 30
        self.stats.write(rec)
        eta = (t.steps - self.step) / max(sps, 1e-9)
        self.say(f"step {self.step}/{t.steps} loss {mean_loss:.4f} lr {lr:.2e} {rec['videos_per_s']:.2f} videos/s "
                 f"eta {eta / 60:.1f} min" + (f" skipped {self.skipped}" if self.skipped else ""), echo=not live)
        self.t_last, self.n_last = now, 0

    def _check_skips(self) -> None:
        """Stop the run (TrainError, no checkpoint of this step) once max_nonfinite_steps of the last 2x were skipped."""
        t = self.t
        if not (t.max_nonfinite_steps and self.recent >= t.max_nonfinite_steps):
            return
        # Every rank saw the same flags: all stop here.
        kept = list_checkpoints(self.run_dir) if self.dist.is_main else []
        msg = (f"stopped at step {self.step}: {self.recent} of the last {self._window.numel()} steps had a non-finite "
               "loss or gradient; "
               f"the newest checkpoint{f' {kept[-1].name}' if kept else ''} is kept as it was; lower "
               "train.lr, set train.grad_clip or check the data (train.max_nonfinite_steps = "
               f"{t.max_nonfinite_steps} sets this limit)")
        self.say(msg, echo=False)
        raise TrainError(msg)


def _save(run_dir: Path, recipe: Recipe, step: int, net, ema, opt, dist: DistInfo, state: dict,
          keep_last: int) -> Optional[Path]:
    """Rank 0 writes checkpoint `step`; every rank learns whether it succeeded (no rank hangs on a failure)."""
    path, err = None, None
    if dist.is_main:
        extra = {"torch_rng": torch.get_rng_state()}
        if dist.device.type == "cuda":
            extra["cuda_rng"] = torch.cuda.get_rng_state(dist.device)
        try:
            path = save_checkpoint(run_dir, recipe, step, model=net.state_dict(),
                                   ema=ema.state_dict() if ema else None, optimizer=opt.state_dict(),
                                   extra_tensors=extra, state=state, keep_last=keep_last)
        except Exception as e:                                            # disk full, permissions, ...
            err = e
    failed = _agree(err is not None, dist)
    if err is not None:
        raise err
    if failed:
        raise TrainError(f"rank 0 failed to save checkpoint {step} in {run_dir} (see its message)")
    return path
