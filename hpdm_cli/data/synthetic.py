"""Procedural training data held in memory: the `shapes` videos rendered once, no files, no decoder.

A recipe selects it with `data.path = "synthetic:shapes"` (`data.synthetic_videos` videos of the
recipe's full resolution, `data.synthetic_split` of the held-out split). The videos are rendered
in worker processes at start-up and kept as one uint8 tensor on the training device, so a small
dataset costs no loader time at all (a GPU takes ~1250 shapes videos/s, more than decoding
prepared H.264 shards delivers on one host). Sample k of rank r is a deterministic function of
(seed, rank, k), drawn the same way as `ClipDataset` draws it, so training resumes exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from ..device import to_device
from ..workers import spawned_pool
from .loader import epoch_permutation
from .shards import DataError
from .shapes import SHAPES_CLASSES, render_shapes_video, shapes_caption

PREFIX = "synthetic:"
GENERATORS = ("shapes",)


def is_synthetic(path: str) -> bool:
    """Whether a `data.path` names a procedural in-memory source rather than a prepared dataset."""
    return str(path).startswith(PREFIX)


def check_synthetic(path: str) -> None:
    """Raise DataError (one line) unless `path` names a known procedural source."""
    if str(path)[len(PREFIX):] not in GENERATORS:
        raise DataError(f"data.path = {path!r}: unknown procedural source; expected one of "
                        f"{[PREFIX + g for g in GENERATORS]}")


def _render(job: tuple) -> tuple[np.ndarray, str, int, str]:
    index, frames, height, width, seed, split = job
    video, caption, label, attrs = render_shapes_video(index, frames=frames, height=height, width=width, seed=seed,
                                                       split=split)
    return video, caption, label, shapes_caption(attrs["colour"], attrs["shape"], attrs["direction"])


class SyntheticClips:
    """The `shapes` videos of one rank rendered into a uint8 tensor [N, 3, T, H, W] on `device`.

    With `short_caption_prob` p, a sample is captioned without its background phrase ("a red circle moving
    right") with probability p, a pure function of (seed, rank, sample) like the order: prompts that name no
    background are then inside the training captions (docs/results.md, section 59).
    """

    def __init__(self, path: str, *, num_videos: int, frames: int, height: int, width: int, seed: int = 0,
                 split: str = "train", rank: int = 0, world_size: int = 1, workers: int = 0,
                 device: torch.device | str = "cpu", short_caption_prob: float = 0.0):
        check_synthetic(path)
        if num_videos < world_size:
            raise DataError(f"data.synthetic_videos = {num_videos} is smaller than the {world_size} ranks")
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.local = np.arange(self.rank, int(num_videos), self.world_size)       # this rank's video indices
        jobs = [(int(i), frames, height, width, self.seed, split) for i in self.local]
        if workers > 0 and len(jobs) > 64:
            with spawned_pool(workers) as pool:
                rendered = list(pool.map(_render, jobs, chunksize=32))
        else:
            rendered = [_render(j) for j in jobs]
        self.short_caption_prob = float(short_caption_prob)
        shorts = {r[3] for r in rendered} if self.short_caption_prob > 0 else set()
        self._captions = sorted({r[1] for r in rendered} | shorts)
        cid = {c: i for i, c in enumerate(self._captions)}
        videos = torch.from_numpy(np.stack([r[0] for r in rendered])).permute(0, 4, 1, 2, 3)
        self.videos = videos.contiguous().to(device)                             # uint8 [N, 3, T, H, W]
        self.labels = torch.tensor([r[2] for r in rendered], dtype=torch.long)   # on the CPU: no sync
        self.caption_ids = torch.tensor([cid[r[1]] for r in rendered], dtype=torch.long, device=device)
        self.short_ids = (torch.tensor([cid[r[3]] for r in rendered], dtype=torch.long, device=device)
                          if shorts else None)
        self.class_names = list(SHAPES_CLASSES)
        self._epoch: tuple = (-1, None, None)                 # (epoch, its visiting order, its short-caption draws)

    def captions(self) -> list[str]:
        """Distinct captions of the rendered videos (indexed by the caption ids of `batch`)."""
        return list(self._captions)

    def sample_indices(self, start: int, count: int) -> np.ndarray:
        """Local video positions of samples start .. start+count-1 (one permutation per epoch, as `ClipDataset`)."""
        return self._draw(start, count)[0]

    def _draw(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(local video positions, whether each sample takes its short caption) of samples start .. start+count-1."""
        n = len(self.local)
        out, short = np.empty(count, np.int64), np.zeros(count, bool)
        for j, k in enumerate(range(start, start + count)):
            epoch, pos = divmod(k, n)
            if self._epoch[0] != epoch:
                short_draws = (np.random.default_rng([self.seed, self.rank, epoch, 0xCA97]).random(n)
                               < self.short_caption_prob) if self.short_ids is not None else np.zeros(n, bool)
                self._epoch = (epoch, epoch_permutation(self.seed, self.rank, epoch, n), short_draws)
            out[j], short[j] = self._epoch[1][pos], self._epoch[2][pos]
        return out, short

    def stream(self, start: int, count: int):
        """Endless batches of `count` samples from sample `start` on, as dicts like a `make_loader` batch."""
        while True:
            video, label, caption_id = self.batch(start, count)
            yield dict(video=video, label=label, caption_id=caption_id)
            start += count

    def batch(self, start: int, count: int):
        """Samples start .. start+count-1: (videos uint8 [B, 3, T, H, W], labels [B] on the CPU, caption ids [B])."""
        positions, short = self._draw(start, count)
        idx = torch.from_numpy(positions)
        on_dev = to_device(idx, self.videos.device)                       # pinned and asynchronous: no host wait
        caption_ids = self.caption_ids[on_dev]
        if self.short_ids is not None:
            pick = to_device(torch.from_numpy(short), self.videos.device)
            caption_ids = torch.where(pick, self.short_ids[on_dev], caption_ids)
        return self.videos[on_dev], self.labels[idx], caption_ids
