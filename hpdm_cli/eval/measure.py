"""Every pixel measurement of many clips in one pass, spread over the CPU's cores.

Per clip: the faithfulness reading (`faithfulness.read_clip`), the background stripe fit
(`texture.stripe_fit`) and the tile seam steps (`seams.seam_steps`). They are pure NumPy on one
clip and take ~0.27 s together for a 32×128² clip on one core (the reading ~0.18 s of it), so that
a 1024-clip evaluation with its real clips spends ~9 minutes of one core reading pixels while the
rest of the machine waits. `measure_clips` hands the
clips to a pool of worker processes (started with "spawn", safe beside CUDA) and returns exactly
what the serial loop returns, in the clips' order.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial

import numpy as np

from ..device import available_cpus
from ..workers import spawned_pool
from .faithfulness import ClipReading, read_clip
from .seams import seam_ratio, seam_steps
from .texture import stripe_fit, stripe_stats

CLIPS_PER_WORKER = 16      # fewer clips than this per worker: starting the processes costs more than it saves


@dataclass
class ClipMeasures:
    """Per-clip pixel measurements, in the clips' order."""

    readings: list[ClipReading]
    stripes: np.ndarray                 # [n] stripe R^2, NaN where the background cannot be measured
    seams: list[dict]                   # `seam_steps` per clip

    def stripe_summary(self) -> dict:
        """`texture.stripe_summary` of these clips."""
        return stripe_stats(self.stripes)

    def seam_summary(self) -> dict:
        """`seams.seam_summary` of these clips (at the tile they were measured for)."""
        return seam_ratio(self.seams)


def measure_clip(clip: np.ndarray, tile: Sequence[int]) -> tuple[ClipReading, float, dict]:
    """One uint8 clip [T, H, W, 3]: (reading, stripe fit, seam steps at tiles `tile` (t, h, w) pixels)."""
    return read_clip(clip), stripe_fit(clip), seam_steps(clip, tile)


def measure_clips(clips: Sequence[np.ndarray], tile: Sequence[int], workers: int | None = None) -> ClipMeasures:
    """`measure_clip` of every clip, over `workers` processes (None: every available core; 1: in this process)."""
    workers = available_cpus() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers = {workers}: expected at least 1")
    workers = min(workers, len(clips) // CLIPS_PER_WORKER)
    one = partial(measure_clip, tile=tuple(int(v) for v in tile))
    got = _in_pool(one, clips, workers) if workers > 1 else None
    if got is None:
        got = [one(c) for c in clips]
    return ClipMeasures(readings=[g[0] for g in got], stripes=np.array([g[1] for g in got], np.float64),
                        seams=[g[2] for g in got])


def _in_pool(fn, clips: Sequence[np.ndarray], workers: int) -> list | None:
    """`fn` of every clip over `workers` spawned processes, one BLAS thread each; None if they cannot start
    (e.g. a main script read from standard input, which "spawn" cannot import again)."""
    try:
        with spawned_pool(workers, one_blas_thread=True) as pool:
            return list(pool.map(fn, clips, chunksize=max(1, len(clips) // (4 * workers))))
    except BrokenProcessPool:
        return None
