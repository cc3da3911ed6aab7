"""Training clips from a prepared dataset: random clips whose k-th sample is a deterministic function of
(seed, rank, k), and the DataLoader that reads them in order (`ClipDataset`, `make_loader`).

A rank visits its share of the videos (`VideoDataset.shard_indices`) once per epoch in the order
`epoch_permutation(seed, rank, epoch)`, so that a resumed run reads the same stream; the on-disk
format is `hpdm_cli.data.shards`.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from ..pixels import unit_from_uint8
from .shards import DataError, VideoDataset

__all__ = ["ClipDataset", "make_loader", "epoch_permutation", "check_resolution"]


def epoch_permutation(seed: int, rank: int, epoch: int, n: int) -> np.ndarray:
    """The order in which a rank visits its `n` videos in one epoch: a pure function of (seed, rank, epoch), so that
    a resumed run (and every data source: prepared shards, rendered shapes) reads the same stream."""
    return np.random.default_rng([seed, rank, epoch, 0x5EED]).permutation(n)


def check_resolution(dataset: VideoDataset, resolution: Sequence[int]) -> None:
    """DataError unless the dataset's videos are (height, width) = `resolution` (a dataset of mixed sizes passes)."""
    have = dataset.resolution
    if have is not None and tuple(have) != tuple(resolution):
        raise DataError(f"dataset {dataset.path!r} holds {have[0]}x{have[1]} videos but "
                        f"{resolution[0]}x{resolution[1]} are needed: re-run `hpdm prepare` at that resolution "
                        "(or fix pyramid.resolution)")


class ClipDataset(Dataset):
    """Map-style torch Dataset of random training clips: sample k is a deterministic function of (seed, rank, k).

    Sample k belongs to epoch e = k // n (n = videos of this rank, see
    `VideoDataset.shard_indices`); each epoch visits the rank's videos once in an order
    drawn from (seed, rank, e). The clip start (uniform over the valid starts) and the
    optional horizontal flip are drawn from (seed, rank, e, k mod n). Videos shorter
    than `frames` are looped from frame 0 (frame t reads frame t mod num_frames); an
    image (a one-frame item) is a still video. Returns dict(video: float32 [3, T, H, W]
    in [-1, 1], label: int64 (-1 = none), caption_id: int64 (index into
    `captions()`), index: int64 video index). Resuming at sample k reproduces the stream.
    With `dtype="uint8"` the video is uint8 [3, T, H, W] in 0..255 instead: 4x fewer bytes
    through worker queues, pinned memory and the host-to-device copy, and no float
    conversion on the CPU (convert on the GPU: `hpdm_cli.pixels.unit_from_uint8` gives the same values).
    """

    def __init__(self, dataset: "VideoDataset | str | os.PathLike", frames: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, horizontal_flip: bool = False, num_samples: int | None = None,
                 resolution: Sequence[int] | None = None, dtype: str = "float32"):
        self.dataset = dataset if isinstance(dataset, VideoDataset) else VideoDataset(dataset)
        if int(frames) < 1:
            raise DataError(f"frames = {frames}: expected a positive clip length")
        if dtype not in ("float32", "uint8"):
            raise DataError(f"dtype = {dtype!r}: expected \"float32\" (values in [-1, 1]) or \"uint8\" (0..255)")
        self.dtype = dtype
        self.frames = int(frames)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.horizontal_flip = bool(horizontal_flip)
        self.local = self.dataset.shard_indices(self.rank, self.world_size)
        if len(self.local) == 0:
            raise DataError(f"dataset {self.dataset.path!r} has {len(self.dataset)} videos, fewer than the "
                            f"{self.world_size} ranks: use fewer ranks or a larger dataset")
        self.num_samples = len(self.local) if num_samples is None else int(num_samples)
        self.resolution = tuple(int(v) for v in resolution) if resolution is not None else None
        if self.resolution is not None:
            check_resolution(self.dataset, self.resolution)
        self._perm_cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.num_samples

    @property
    def class_names(self) -> list[str]:
        """Class names of the underlying dataset."""
        return self.dataset.class_names

    def captions(self) -> list[str]:
        """Distinct captions of the underlying dataset (indexed by `caption_id`)."""
        return self.dataset.captions()

    def _perm(self, epoch: int) -> np.ndarray:
        p = self._perm_cache.get(epoch)
        if p is None:
            p = epoch_permutation(self.seed, self.rank, epoch, len(self.local))
            if len(self._perm_cache) >= 2:
                self._perm_cache.pop(min(self._perm_cache))
            self._perm_cache[epoch] = p
        return p

    def sample_spec(self, k: int) -> tuple[int, int, bool]:
        """(video index, clip start, flip) of sample k -- the deterministic recipe of `self[k]`."""
        if k < 0:
            raise IndexError(f"sample index {k} < 0")
        n = len(self.local)
        epoch, pos = divmod(int(k), n)
        vid = int(self.local[self._perm(epoch)[pos]])
        rng = np.random.default_rng([self.seed, self.rank, epoch, pos, 1])
        nf = self.dataset.item(vid)["num_frames"]
        start = int(rng.integers(0, nf - self.frames + 1)) if nf >= self.frames else 0
        flip = bool(rng.integers(0, 2)) if self.horizontal_flip else False
        return vid, start, flip

    def __getitem__(self, k: int) -> dict:
        import torch  # noqa: PLC0415
        vid, start, flip = self.sample_spec(int(k))
        clip = self.dataset.read_clip(vid, start, self.frames)
        if self.resolution is not None and clip.shape[1:3] != self.resolution:
            raise DataError(f"video {vid} of {self.dataset.path!r} is {clip.shape[1]}x{clip.shape[2]}, expected "
                            f"{self.resolution[0]}x{self.resolution[1]}: re-run `hpdm prepare` at that resolution")
        if flip:
            clip = clip[:, :, ::-1]
        # One copy to [3, T, H, W] (the flip included), then the float conversion on contiguous memory.
        video = torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2)))
        if self.dtype != "uint8":
            video = unit_from_uint8(video)
        meta = self.dataset.item(vid)
        return dict(video=video, label=torch.tensor(meta["label"], dtype=torch.int64),
                    caption_id=torch.tensor(meta["caption_id"], dtype=torch.int64),
                    index=torch.tensor(vid, dtype=torch.int64))


def make_loader(dataset: ClipDataset, batch_size: int, *, start: int = 0, stop: int | None = None,
                num_workers: int = 0, pin_memory: bool = False, prefetch_factor: int | None = None):
    """A torch DataLoader over samples [start, stop) of `dataset` in order (resume = pass the samples consumed)."""
    import torch  # noqa: PLC0415
    stop = len(dataset) if stop is None else int(stop)
    kwargs = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=prefetch_factor or 2)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=range(int(start), stop),
                                       num_workers=num_workers, pin_memory=pin_memory, drop_last=True, **kwargs)

