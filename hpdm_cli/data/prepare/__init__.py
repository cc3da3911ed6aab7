"""`hpdm prepare`: folders of real videos (and images) -> a compact, faithful, resumable shard dataset.

The engine behind `hpdm prepare SRC_DIR OUT_DIR` (see docs/data_format.md for the format and
the design in full). In short:

* Inputs. SRC_DIR is searched recursively (hidden files and folders excluded, symlinks
  followed) for files with a video suffix (`VIDEO_EXTENSIONS`: mp4, avi, mkv, webm, mov, ...);
  every one of them is opened with PyAV. Labels: the first sub-folder of each file (the
  UCF-101 layout), a labels file (CSV / JSON lines / "path label" text) or none. A split
  list (UCF-101's trainlist01.txt / testlist01.txt, with classInd.txt beside it) selects
  the files and fixes the class order. Captions: a CSV / JSON-lines file, or sidecar
  `NAME.txt` files next to the videos. An image folder becomes a second dataset of
  one-frame videos for joint image+video training (`OUT_DIR/images`).
* Processing (in spawn-safe worker processes, one source at a time, streaming: one
  decoded frame in memory, never a whole video): decode -> turn upright (display-matrix
  rotation) and apply the sample aspect ratio -> resample to the dataset's fps on the
  frames' timestamps (nearest frame, so variable frame rates come out regular) -> resize
  and crop / pad / stretch to H x W -> H.264 (CRF 18, keyframe every 16 frames, one x264
  thread so the bytes do not depend on the machine). Whole videos are stored; training
  picks random clips. Videos shorter than the clip length are kept (the loader loops them)
  or skipped (`short="skip"`).
* Safety. A file that cannot be used (empty, unreadable, truncated, audio-only, no label,
  mislabelled, too short with `short="skip"`, or crashing the decoder) is skipped with its
  reason; the reasons go to `prepare_report.json` in OUT_DIR. Finished shards are recorded in
  a work journal (`OUT_DIR/.prepare/journal.jsonl`); re-running the same command resumes
  after the last finished shard and produces exactly the dataset of an uninterrupted run.
  `dataset.json` is written last, atomically.

The modules, one job each (the names below are re-exported here):

* `options`  PrepareOptions and their checks (standard library only: the CLI reads its defaults)
* `sources`  the folder scan and the storage order; `labels` labels, captions and split lists
* `plan`     the parts of a run (videos, images), the plan hash, the packaged examples
* `geometry` the resize plan of a frame and nearest-timestamp resampling
* `encode`   one source in a worker (`process_source`); `pool` the worker processes
* `journal`  the work journal (resume); `report` PrepareResult and prepare_report.json
* `run`      `prepare_dataset`, `prepare_example`: one run under OUT_DIR's lock

PyAV is used only through `hpdm_cli.io.video`; nothing here imports torch at import time
(worker processes start fast), so `DataError` is imported lazily. Importing this package
imports none of its modules: each name is loaded on first use, so reading the option
defaults stays cheap.
"""

from __future__ import annotations

import importlib

# name -> the module of this package that defines it
_HOMES = {
    "PrepareOptions": "options", "options_from_recipe": "options", "FITS": "options", "SHORT_POLICIES": "options",
    "ORDERS": "options",
    "VIDEO_EXTENSIONS": "sources", "IMAGE_EXTENSIONS": "sources", "scan_sources": "sources",
    "EXAMPLES": "plan",
    "ResizePlan": "geometry", "resize_plan": "geometry", "resample_times": "geometry",
    "process_source": "encode",
    "REPORT_NAME": "report", "PrepareResult": "report",
    "prepare_dataset": "run", "prepare_example": "run", "Terminated": "run",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    """Load a re-exported name from its module on first use."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's attributes, with the re-exported names."""
    return sorted(set(globals()) | set(_HOMES))
