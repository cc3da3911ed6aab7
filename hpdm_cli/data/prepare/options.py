"""The options of `hpdm prepare` (`PrepareOptions`): what decides the bytes of a prepared dataset, and their checks.

This module imports only the standard library (and hpdm_cli.config, which does too), so the command
line can read the defaults without loading numpy. `error` builds the engine's user-facing error (`DataError`), imported
lazily because `hpdm_cli.data.shards` imports torch and spawned workers must start fast.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

from hpdm_cli.config import MAX_FPS, MIN_FPS

__all__ = ["FITS", "SHORT_POLICIES", "ORDERS", "DATASET_PRESET", "IMAGES_SUBDIR", "PrepareOptions", "options_from_recipe",
           "error"]

FITS = ("crop", "pad", "stretch")
SHORT_POLICIES = ("loop", "skip")
ORDERS = ("shuffle", "sorted")
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
           "placebo")                     # x264's speed presets
DATASET_PRESET = "fast"                   # a dataset's: ~the size of "medium", 1.5x faster to encode
IMAGES_SUBDIR = "images"                  # where `--images DIR` puts a dataset's image part (OUT_DIR/images)


def error(msg: str) -> Exception:
    """The `DataError` (an HPDMError: one line, exit code 2) that the prepare engine raises for `msg`."""
    from hpdm_cli.data.shards import DataError  # noqa: PLC0415 (lazy: spawned workers never import torch)
    return DataError(msg)


@dataclass
class PrepareOptions:
    """Everything that decides the bytes of a prepared dataset (plus workers / strict / overwrite)."""

    fps: float = 25.0                     # Frames per second of the stored videos (resampled to it).
    frames: int = 64                      # Clip length training reads; shorter videos follow `short`.
    size: tuple[int, int] = (256, 256)    # Stored (height, width).
    fit: str = "crop"                     # crop (cover, centre crop) | pad (fit, black bars) | stretch.
    short: str = "loop"                   # Videos under `frames`: loop (kept; the loader loops) | skip.
    labels: str = "auto"                  # auto | folders | none | path of a labels file.
    split: str | None = None              # Split list (UCF-101 trainlist01.txt ...): only its files.
    captions: str | None = None           # Captions file (CSV / JSON lines); None = sidecar .txt files.
    images: str | None = None             # Image folder for joint training (-> OUT_DIR/images).
    workers: int | None = None            # Worker processes (None = one per CPU core; 0 = in-process).
    order: str = "shuffle"                # Storage order: shuffle (by a hash of the path) | sorted.
    crf: int = 18                         # H.264 quality (18 = visually lossless).
    gop: int = 16                         # Keyframe interval in frames (random-access cost).
    preset: str = DATASET_PRESET          # x264 preset.
    max_videos_per_shard: int = 1000
    max_shard_bytes: int = 1 << 30
    strict: bool = False                  # Any skipped file: do not publish the dataset.
    overwrite: bool = False               # Replace an existing dataset / unfinished work at OUT_DIR.

    def validate(self) -> "PrepareOptions":
        """Check every value; raise DataError with a one-line message naming the option."""
        try:
            fps = float(self.fps)
        except (TypeError, ValueError):
            fps = float("nan")
        if not (math.isfinite(fps) and MIN_FPS <= fps <= MAX_FPS):
            raise error(f"--fps {self.fps!r}: expected {MIN_FPS} to {MAX_FPS:g} frames per second")
        if int(self.frames) != self.frames or self.frames < 1:
            raise error(f"--frames {self.frames!r}: expected a positive clip length in frames")
        if len(self.size) != 2 or any(int(v) != v or v < 1 for v in self.size):
            raise error(f"--size {self.size!r}: expected HxW with positive integers, e.g. 256x256")
        if self.fit not in FITS:
            raise error(f"--fit {self.fit!r}: expected one of {', '.join(FITS)}")
        if self.short not in SHORT_POLICIES:
            raise error(f"--short {self.short!r}: expected one of {', '.join(SHORT_POLICIES)}")
        if self.order not in ORDERS:
            raise error(f"--order {self.order!r}: expected one of {', '.join(ORDERS)}")
        if self.workers is not None and (int(self.workers) != self.workers or self.workers < 0):
            raise error(f"--workers {self.workers!r}: expected 0 (in-process) or a number of processes")
        if not (isinstance(self.crf, numbers.Integral) and 0 <= self.crf <= 51):   # int or numpy integer
            raise error(f"--crf {self.crf!r}: expected an integer in 0..51 (18 = visually lossless)")
        if self.preset not in PRESETS:
            raise error(f"--preset {self.preset!r}: expected one of {', '.join(PRESETS)}")
        if self.max_videos_per_shard < 1:
            raise error(f"--shard-videos {self.max_videos_per_shard!r}: expected at least 1 video per shard")
        if self.gop < 1 or self.max_shard_bytes < 1:
            raise error(f"gop {self.gop!r} and max_shard_bytes {self.max_shard_bytes!r}: expected positive numbers")
        for name in ("split", "captions", "images"):
            p = getattr(self, name)
            if p is not None and not os.path.exists(p):
                raise error(f"--{name} {p!r}: no such file or folder")
        if self.labels not in ("auto", "folders", "none") and not os.path.isfile(self.labels):
            raise error(f"--labels {self.labels!r}: expected folders, none or an existing labels file")
        if self.captions is not None and not os.path.isfile(self.captions):
            what = "a folder" if os.path.isdir(self.captions) else "not a regular file"
            raise error(f"--captions {self.captions!r} is {what}: give a captions file (CSV or JSON lines: path, "
                        "caption), or leave --captions out to read each video's NAME.txt beside it")
        if self.images is not None and not os.path.isdir(self.images):
            raise error(f"--images {self.images!r}: expected a folder of images")
        self.fps, self.size = fps, (int(self.size[0]), int(self.size[1]))
        return self

    def resolved_workers(self) -> int:
        """Worker processes to use (None -> one per CPU core this process may use)."""
        from hpdm_cli.device import available_cpus  # noqa: PLC0415
        return int(self.workers) if self.workers is not None else available_cpus()


def options_from_recipe(recipe, **overrides) -> PrepareOptions:
    """PrepareOptions whose fps / clip length / size come from a Recipe (data.fps, pyramid.resolution)."""
    T, H, W = recipe.pyramid.resolution
    base = dict(fps=float(recipe.data.fps), frames=int(T), size=(int(H), int(W)))
    base.update({k: v for k, v in overrides.items() if v is not None})
    return PrepareOptions(**base)
