"""The names of a run directory's parts, and what makes a folder a run or a checkpoint (one place for them).

    RUN_DIR/recipe.toml                       the resolved recipe the run trains (`RECIPE`)
    RUN_DIR/stats.jsonl                       one JSON object per logged step (`STATS`, hpdm_cli.train.stats)
    RUN_DIR/env.json, RUN_DIR/train.log       the software and hardware it ran on (`ENV`), its log lines (`LOG`)
    RUN_DIR/cache/                            caption embeddings computed for it (`CACHE`)
    RUN_DIR/prompt_embeddings.safetensors     its captions' stored embeddings (`RUN_TABLE`, hpdm_cli.text.tables)
    RUN_DIR/class_names.json                  a class model's class names, as its data named them (`CLASS_NAMES`)
    RUN_DIR/tensorboard/                      TensorBoard's event files, where it is installed (`TENSORBOARD`)
    RUN_DIR/checkpoints/ckpt-00001000/        one checkpoint per saved step (`CHECKPOINTS`, `checkpoint_name`)
        model.safetensors, ema.safetensors    training and EMA weights (`MODEL`, `EMA`), optim.safetensors (`OPTIM`),
        state.json                            the rest of the state (the format: hpdm_cli.train.checkpoint)

Nothing heavy is imported here: `hpdm prepare` and `hpdm eval-fvd` ask whether a folder is a run
before anything else loads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["RECIPE", "STATS", "ENV", "LOG", "CACHE", "RUN_TABLE", "CLASS_NAMES", "TENSORBOARD", "CHECKPOINTS", "MODEL", "EMA", "OPTIM", "CKPT_RE", "checkpoint_name",
           "is_run_dir", "is_trained_run", "holds_training", "is_checkpoint_dir", "foreign_entries"]

RECIPE = "recipe.toml"
STATS = "stats.jsonl"
ENV = "env.json"
LOG = "train.log"
CACHE = "cache"
RUN_TABLE = "prompt_embeddings.safetensors"
CLASS_NAMES = "class_names.json"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
MODEL = "model.safetensors"
EMA = "ema.safetensors"
OPTIM = "optim.safetensors"
CKPT_RE = re.compile(r"^ckpt-(\d{8})$")


def checkpoint_name(step: int) -> str:
    """The folder name of step `step`'s checkpoint: ckpt-00001000."""
    return f"ckpt-{int(step):08d}"


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder an `hpdm train` run has used: it holds checkpoints/ or the run's recipe.toml."""
    p = Path(path)
    return (p / CHECKPOINTS).is_dir() or (p / RECIPE).is_file()


def is_trained_run(path: str | os.PathLike) -> bool:
    """Whether `path` is a run with something to sample: it holds checkpoints/, or its recipe.toml and stats.jsonl.

    Stricter than `is_run_dir`: a folder of videos that happens to hold a recipe.toml is not a model.
    """
    p = Path(path)
    return (p / CHECKPOINTS).is_dir() or ((p / RECIPE).is_file() and (p / STATS).exists())


def holds_training(path: str | os.PathLike) -> bool:
    """Whether a run directory holds what a run trained: a checkpoint (readable or set aside) or a logged step.

    Stricter again than `is_trained_run`: an empty checkpoints/ or stats.jsonl (a run stopped before its
    first step) does not count, so such a run may be started afresh with another architecture.
    """
    p = Path(path)
    ckpts, stats = p / CHECKPOINTS, p / STATS
    return (ckpts.is_dir() and any(ckpts.iterdir())) or (stats.is_file() and stats.stat().st_size > 0)


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is one checkpoint's folder (it holds model.safetensors)."""
    return (Path(path) / MODEL).is_file()


def foreign_entries(path: str | os.PathLike) -> list[str]:
    """Entries of folder `path` that a run does not write (sorted; hidden names, e.g. the lock, count as its own)."""
    own = {RECIPE, STATS, ENV, LOG, CACHE, RUN_TABLE, CLASS_NAMES, TENSORBOARD, CHECKPOINTS}
    p = Path(path)
    return sorted(n for n in os.listdir(p) if n not in own and not n.startswith(".")) if p.is_dir() else []
