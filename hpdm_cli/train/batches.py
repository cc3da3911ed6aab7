"""The training data of one rank: endless micro-batches of clips from the recipe's datasets, resumable by index."""

from __future__ import annotations

import re

import torch

from ..config import Recipe
from ..pixels import unit_from_uint8
from ..device import to_device
from . import TrainError
from .distributed import DistInfo
from .signals import worker_ignores_signals

# A left-right mirror turns "moving left" into "moving right": flips are refused for such data.
_DIRECTION_WORDS = re.compile(r"\b(left|right|leftwards|rightwards|clockwise|counterclockwise|anticlockwise)\b", re.I)


class Batches:
    """Endless per-rank batches of clips (videos, images mixed in) starting at a sample index.

    The data position is a pure function of the batch index: batch j of rank r holds samples
    j*n .. (j+1)*n - 1 of each ClipDataset (n = its share of the micro-batch), and sample k is
    a deterministic function of (seed, rank, k), so resuming at batch j reproduces the stream.
    """

    def __init__(self, recipe: Recipe, dist: DistInfo, micro: int, start_batch: int, total_batches: int):
        from ..data.loader import ClipDataset, make_loader
        from ..data.synthetic import SyntheticClips, is_synthetic
        R = recipe.pyramid.resolution
        d = recipe.data
        n_img = int(round(micro * d.image_fraction)) if d.image_path else 0
        self.micro = micro
        self.n_vid, self.n_img = micro - n_img, n_img
        self.loaders, self.captions, self.class_names = [], [], []
        self.caption_sources = []                                         # dataset of each part of `captions`
        for path, n, frames, seed in ((d.path, self.n_vid, R[0], recipe.train.seed),
                                      (d.image_path, n_img, 1, recipe.train.seed + 1)):
            if n == 0:
                continue
            if is_synthetic(path):                                        # rendered into device memory
                src = SyntheticClips(path, num_videos=d.synthetic_videos, frames=frames, height=R[1], width=R[2],
                                     seed=seed, split=d.synthetic_split, rank=dist.rank,
                                     world_size=dist.world_size, workers=d.num_workers, device=dist.device,
                                     short_caption_prob=d.short_caption_prob)
                self.loaders.append((src.stream(start_batch * n, n), frames, len(self.captions)))
                self.captions += src.captions()
                self.caption_sources.append(path)
                self.class_names = self.class_names or src.class_names
                continue
            ds = ClipDataset(path, frames, seed=seed, rank=dist.rank, world_size=dist.world_size, dtype="uint8",
                             horizontal_flip=d.horizontal_flip, num_samples=total_batches * n,
                             resolution=R[1:])
            loader = make_loader(ds, n, start=start_batch * n, num_workers=d.num_workers,
                                 pin_memory=dist.device.type == "cuda")
            # The loader draws its workers' base seed from this generator, not from torch's global
            # RNG (whose state is checkpointed and must not depend on where a run was resumed).
            loader.generator = torch.Generator().manual_seed(seed * 1_000_003 + dist.rank)
            if d.num_workers > 0:
                loader.worker_init_fn = worker_ignores_signals
            # Caption ids of every dataset index one joint caption list.
            self.loaders.append((iter(loader), frames, len(self.captions)))
            self.captions += ds.captions()
            self.caption_sources.append(path)
            self.class_names = self.class_names or ds.class_names
        self.unlabelled = False
        if d.horizontal_flip:
            named = [t for t in list(self.class_names) + list(self.captions) if _DIRECTION_WORDS.search(str(t))]
            if named:
                raise TrainError(f"data.horizontal_flip = true would mirror videos whose labels or captions name a "
                                 f"horizontal direction (e.g. {named[0]!r}) without changing them: set "
                                 "data.horizontal_flip = false")

    def next(self, device, frames: int):
        """The next micro-batch: (videos [B, 3, F, H, W] in [-1, 1], labels [B], caption ids [B])."""
        parts = [next(it) for it, _, _ in self.loaders]
        vids, caps = [], []
        for p, (_, f, cap0) in zip(parts, self.loaders):
            v = unit_from_uint8(p["video"].to(device, non_blocking=True))              # on the device
            vids.append(v if f == frames else v.expand(-1, -1, frames, -1, -1))  # an image is a still video
            caps.append(p["caption_id"] + cap0)
        labels = torch.cat([p["label"] for p in parts])
        self.unlabelled = bool((labels < 0).any())                        # checked on the CPU: no device sync
        return torch.cat(vids), to_device(labels, device), to_device(torch.cat(caps), device)
