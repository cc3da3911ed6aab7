"""The training loop: one code path from a laptop CPU to a multi-GPU node (torchrun + DDP).

`train(recipe, run_dir)` builds the model, optimiser (LAMB), EMA and data stream, resumes from
the newest checkpoint in `run_dir` if there is one, and runs until `train.steps`. Every random
choice of step s on rank r (patch offsets, sigmas, noise, condition dropout) comes from a
generator seeded by (train.seed, r, s), and the data stream is a deterministic function of the
sample index, so an interrupted and resumed run reproduces the uninterrupted one exactly.
Non-finite losses or gradients skip the step (counted and logged). SIGTERM / Ctrl-C save a
checkpoint at the end of the current step and return.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Recipe
from ..diffusion.edm import NoiseDraw, draw_noise, edm_loss
from ..model.flops import train_step_flops
from ..model.network import HPDMNet
from ..pyramid import extract_patches, sample_nested_offsets
from .checkpoint import (CheckpointError, architecture_of, latest_checkpoint, read_weights_file, resolve_sampling_weights,
                         save_checkpoint)
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from .optim import EMA, Lamb, lr_at, param_groups, unwrap_model
from .stats import StatsWriter


class TrainError(ValueError):
    """A user-fixable problem with a training run (message says what to do)."""


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


def step_generator(seed: int, rank: int, step: int, device) -> torch.Generator:
    """The generator of all random choices of (seed, rank, step): reproducible across resumes."""
    g = torch.Generator(device="cpu")
    g.manual_seed((seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2 ** 63 - 1))
    return g


def set_precision(precision: str) -> None:
    """fp32: exact float32 matmuls; tf32 and bf16: TF32 tensor cores for float32 matmuls."""
    tf32 = precision in ("tf32", "bf16")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def autocast_for(precision: str, device: torch.device):
    """The autocast context of a training forward pass."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def build_model(recipe: Recipe) -> HPDMNet:
    """The network of a recipe (random initialisation seeded by train.seed)."""
    torch.manual_seed(recipe.train.seed)
    return HPDMNet(recipe.pyramid, recipe.model)


def init_from_checkpoint(net: torch.nn.Module, path: str) -> tuple[list, list]:
    """Load matching weights (same name and shape) from a checkpoint; return (loaded, new) names."""
    weights, _, _ = read_weights_file(resolve_sampling_weights(path))
    own = net.state_dict()
    loaded = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    net.load_state_dict(loaded, strict=False)
    return sorted(loaded), sorted(set(own) - set(loaded))


def forward_backward(model, videos: torch.Tensor, cond, recipe: Recipe, offsets: torch.Tensor,
                     draw: NoiseDraw, loss_scale: float, precision: str):
    """Extract the patch hierarchy, compute the EDM loss and backpropagate `loss * loss_scale`."""
    patches = extract_patches(videos, recipe.pyramid, offsets)
    with autocast_for(precision, videos.device):
        out = edm_loss(model, patches, offsets, recipe.diffusion, cond, draw=draw)
    (out.loss * loss_scale).backward()
    return out


class _StopFlag:
    """Records SIGTERM / SIGINT so that the loop can checkpoint and stop at the end of a step."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:                                            # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


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


class _Batches:
    """Endless per-rank batches of clips (videos, images mixed in) starting at a sample index."""

    def __init__(self, recipe: Recipe, dist: DistInfo, micro: int, start_batch: int, total_batches: int):
        from ..data.shards import ClipDataset, make_loader
        R = recipe.pyramid.resolution
        d = recipe.data
        n_img = int(round(micro * d.image_fraction)) if d.image_path else 0
        self.n_vid, self.n_img = micro - n_img, n_img
        self.loaders, self.captions, self.class_names = [], [], []
        for path, n, frames, seed in ((d.path, self.n_vid, R[0], recipe.train.seed),
                                      (d.image_path, n_img, 1, recipe.train.seed + 1)):
            if n == 0:
                continue
            ds = ClipDataset(path, frames, seed=seed, rank=dist.rank, world_size=dist.world_size,
                             horizontal_flip=d.horizontal_flip, num_samples=total_batches * n,
                             resolution=R[1:])
            loader = make_loader(ds, n, start=start_batch * n, num_workers=d.num_workers,
                                 pin_memory=dist.device.type == "cuda")
            # Caption ids of every dataset index one joint caption list.
            self.loaders.append((iter(loader), frames, len(self.captions)))
            self.captions += ds.captions()
            self.class_names = self.class_names or ds.class_names

    def next(self, device, frames: int):
        """The next micro-batch: (videos [B, 3, F, H, W] in [-1, 1], labels [B], caption ids [B])."""
        parts = [next(it) for it, _, _ in self.loaders]
        vids, caps = [], []
        for p, (_, f, cap0) in zip(parts, self.loaders):
            v = p["video"].to(device, non_blocking=True)
            vids.append(v if f == frames else v.expand(-1, -1, frames, -1, -1))  # an image is a still video
            caps.append(p["caption_id"] + cap0)
        labels = torch.cat([p["label"] for p in parts]).to(device)
        return torch.cat(vids), labels, torch.cat(caps).to(device)


def _caption_embeddings(recipe: Recipe, captions: list, run_dir: Path, device) -> torch.Tensor:
    from ..text.encoders import cached_embeddings, load_text_encoder
    enc = load_text_encoder(recipe.model.text_encoder, device=device, tokens=recipe.model.text_tokens)
    if enc.dim != recipe.model.text_dim or enc.tokens != recipe.model.text_tokens:
        raise TrainError(f"text encoder {enc.name} gives {enc.tokens}x{enc.dim} embeddings but the recipe has "
                         f"model.text_tokens={recipe.model.text_tokens}, model.text_dim={recipe.model.text_dim}")
    return cached_embeddings(enc, captions, run_dir / "cache").to(device)


def train(recipe: Recipe, run_dir: str | os.PathLike, *, log: Callable[[str], None] = print,
          stop_after: Optional[int] = None, progress: bool = False) -> TrainSummary:
    """Train (or resume) the recipe's model in `run_dir`; returns a summary. `stop_after` stops early (tests)."""
    from ..recipe import dump_recipe, recipe_from_toml
    t = recipe.train
    dist = init_distributed(t.device)
    run_dir = Path(run_dir)

    def say(msg: str) -> None:
        if dist.is_main:
            log(msg)
            with open(run_dir / "train.log", "a") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")
    set_precision(t.precision)

    per_step = t.batch_size // dist.world_size
    if t.batch_size % dist.world_size or per_step % t.grad_accum:
        raise TrainError(f"train.batch_size = {t.batch_size} is not divisible by world size {dist.world_size} "
                         f"x train.grad_accum {t.grad_accum}")
    micro = per_step // t.grad_accum

    # The run directory: refuse to resume into a different architecture.
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        old = run_dir / "recipe.toml"
        if old.exists():
            prev = recipe_from_toml(old.read_text(), source=str(old))
            if architecture_of(prev) != architecture_of(recipe):
                raise TrainError(f"{run_dir} holds a run of another architecture (its recipe.toml differs in "
                                 "[pyramid]/[model]); pass a new --run-dir or restore the recipe")
        dump_recipe(recipe, run_dir / "recipe.toml")
        (run_dir / "env.json").write_text(json.dumps(_environment(dist), indent=1))
    barrier()

    net = build_model(recipe)
    if t.init_from:
        loaded, new = init_from_checkpoint(net, t.init_from)
        say(f"init_from {t.init_from}: {len(loaded)} tensors loaded, {len(new)} new: {', '.join(new[:12])}"
            + (" ..." if len(new) > 12 else ""))
    net.to(dist.device)
    ema = EMA(net, t.ema_halflife_steps) if t.ema_halflife_steps >= 0 else None
    opt = Lamb(param_groups(net, t.weight_decay), lr=t.lr, betas=tuple(t.betas), eps=t.eps,
               weight_decay=t.weight_decay)

    start, skipped = 0, 0
    ck = latest_checkpoint(run_dir, device=dist.device, warn=say)
    if ck is not None:
        try:
            net.load_state_dict(ck["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{ck['path']}: weights do not fit this recipe's model ({str(e).splitlines()[0]})")
        if ema is not None and ck["ema"] is not None:
            ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        start, skipped = int(ck["state"]["step"]), int(ck["state"].get("skipped", 0))
        if "torch_rng" in ck["extra"]:
            torch.set_rng_state(ck["extra"]["torch_rng"])
        say(f"resumed from {ck['path']} at step {start}")

    model = torch.compile(net) if t.compile else net
    if dist.distributed:
        model = DDP(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                    find_unused_parameters=recipe.model.self_condition)

    summary = TrainSummary(run_dir=run_dir, start_step=start, step=start, steps=t.steps, skipped=skipped)
    if start >= t.steps:
        say(f"nothing to do: the run is at step {start} of train.steps = {t.steps} (raise train.steps to continue)")
        return summary

    batches = _Batches(recipe, dist, micro, start_batch=start * t.grad_accum, total_batches=t.steps * t.grad_accum)
    text_emb = None
    if recipe.model.cond == "text":
        text_emb = _caption_embeddings(recipe, batches.captions, run_dir, dist.device)
    if recipe.model.cond == "class":
        n_cls = len(batches.class_names)
        if n_cls and n_cls > recipe.model.num_classes:
            raise TrainError(f"the dataset has {n_cls} classes but model.num_classes = {recipe.model.num_classes}")

    flops = train_step_flops(recipe.pyramid, recipe.model) * t.batch_size
    stats = StatsWriter(run_dir, enabled=dist.is_main, tensorboard=True)
    frames = recipe.pyramid.resolution[0]
    params = [p for p in net.parameters()]
    last_ckpt_step, t_last, n_last = start, time.perf_counter(), 0
    say(f"training {sum(p.numel() for p in params) / 1e6:.1f}M parameters on {dist.world_size} x {dist.device.type}, "
        f"steps {start} -> {t.steps}, global batch {t.batch_size} (micro {micro} x accum {t.grad_accum})")

    with _StopFlag() as stop, stats.progress(start, t.steps, enabled=progress and dist.is_main) as bar:
        step = start
        while step < t.steps:
            lr = lr_at(step, lr=t.lr, warmup_steps=t.warmup_steps, total_steps=t.steps, min_lr_ratio=t.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            gen = step_generator(t.seed, dist.rank, step, dist.device)
            losses, per_level = [], []
            for a in range(t.grad_accum):
                videos, labels, caps = batches.next(dist.device, frames)
                cond = labels if recipe.model.cond == "class" else (text_emb[caps] if text_emb is not None else None)
                if recipe.model.cond == "class" and torch.any(labels < 0):
                    raise TrainError("model.cond = \"class\" but the dataset has unlabelled videos; "
                                     "use a labelled dataset or model.cond=\"none\"")
                offsets = sample_nested_offsets(recipe.pyramid, videos.shape[0], generator=gen).to(dist.device)
                L = recipe.pyramid.num_levels
                draw = draw_noise(recipe.diffusion, (videos.shape[0], L, videos.shape[1], *recipe.pyramid.patch),
                                  conditional=cond is not None, self_condition=recipe.model.self_condition,
                                  generator=gen, device=dist.device)
                sync = model.no_sync() if (dist.distributed and a < t.grad_accum - 1) else nullcontext()
                with sync:
                    out = forward_backward(model, videos, cond, recipe, offsets, draw, 1.0 / t.grad_accum,
                                           t.precision)
                losses.append(out.loss.detach())
                per_level.append(out.per_level)
            loss = torch.stack(losses).mean()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else float("inf"))
            flags = torch.stack([(~torch.isfinite(loss)).float(), (~torch.isfinite(grad_norm)).float(),
                                 torch.tensor(float(stop.signum), device=loss.device), loss.float()])
            flags = all_reduce_sum(flags)
            bad = bool(flags[0] > 0 or flags[1] > 0)
            if bad:
                skipped += 1
                say(f"step {step}: non-finite loss or gradient, step skipped ({skipped} so far)")
            else:
                opt.step()
                if ema is not None:
                    ema.update(net)
            opt.zero_grad(set_to_none=True)
            step += 1
            n_last += 1
            mean_loss = flags[3].item() / dist.world_size
            summary.last_loss, summary.step, summary.skipped = mean_loss, step, skipped
            bar(step, mean_loss)

            if step % t.log_every == 0 or step == t.steps:
                if dist.device.type == "cuda":
                    torch.cuda.synchronize(dist.device)
                now = time.perf_counter()
                sps = n_last / max(now - t_last, 1e-9)
                lv = torch.stack(per_level).mean(0)
                all_reduce_sum(lv)
                lv = (lv / dist.world_size).tolist()
                rec = {"step": step, "loss": mean_loss, **{f"loss_l{i}": v for i, v in enumerate(lv)}, "lr": lr,
                       "grad_norm": float(grad_norm), "skipped": skipped, "videos_per_s": sps * t.batch_size,
                       "tflops_per_s": sps * flops / 1e12}
                if dist.device.type == "cuda":
                    rec["max_mem_gb"] = torch.cuda.max_memory_allocated(dist.device) / 2 ** 30
                stats.write(rec)
                if not bar.live:
                    eta = (t.steps - step) / max(sps, 1e-9)
                    say(f"step {step}/{t.steps} loss {mean_loss:.4f} lr {lr:.2e} {rec['videos_per_s']:.2f} videos/s "
                        f"eta {eta / 60:.1f} min" + (f" skipped {skipped}" if skipped else ""))
                t_last, n_last = now, 0

            stopping = flags[2] > 0 or (stop_after is not None and step - start >= stop_after)
            if step % t.ckpt_every == 0 or step == t.steps or stopping:
                if dist.is_main:
                    summary.checkpoint = save_checkpoint(
                        run_dir, recipe, step, model=net.state_dict(), ema=ema.state_dict() if ema else None,
                        optimizer=opt.state_dict(), extra_tensors={"torch_rng": torch.get_rng_state()},
                        state={"skipped": skipped, "samples_per_rank": step * per_step}, keep_last=t.keep_last)
                barrier()
                last_ckpt_step = step
            if stopping:
                summary.interrupted = int(flags[2].item() / max(1, dist.world_size)) or None
                if summary.interrupted:
                    say(f"stopped by signal {summary.interrupted} at step {step}; checkpoint saved, "
                        "re-run the same command to resume")
                break
    stats.close()
    return summary
