"""Training statistics: `stats.jsonl` (one JSON object per logged step), TensorBoard when installed, live progress."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Optional

from ..io import atomic_write_text
from .run_dir import STATS, TENSORBOARD


class StatsWriter:
    """Appends logged steps to run_dir/stats.jsonl (and TensorBoard if available); no-op when disabled.

    `note` says why TensorBoard logging is off when it was asked for (package missing, writer failed).

    `resume_step`: the run continues after this step, so records of later steps (logged after
    the checkpoint it resumes from, before a crash) are dropped from stats.jsonl and TensorBoard;
    every step then appears once, as the resumed run computes it again.
    """

    def __init__(self, run_dir: Path, *, enabled: bool = True, tensorboard: bool = True,
                 resume_step: Optional[int] = None):
        self.enabled = enabled
        self.path = Path(run_dir) / STATS
        self._tb = None
        self.note: Optional[str] = None          # why TensorBoard logging is off, when it was asked for
        if enabled and resume_step is not None:
            self.truncate_after(resume_step)
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.note = ("TensorBoard logging is off: the tensorboard package is not installed "
                             "(pip install tensorboard); every logged step is in stats.jsonl")
            else:
                try:
                    self._tb = SummaryWriter(str(Path(run_dir) / TENSORBOARD),
                                             purge_step=resume_step + 1 if resume_step else None)
                except Exception as e:                                    # e.g. an unwritable directory
                    why = str(e).splitlines()[0] if str(e) else type(e).__name__
                    self.note = f"TensorBoard logging is off ({why}); every logged step is in stats.jsonl"

    def truncate_after(self, step: int) -> int:
        """Drop the records of steps > `step` from stats.jsonl (atomically); returns how many were dropped."""
        if not self.path.exists():
            return 0
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()   # bytes a crash left: dropped
        keep = []
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:                                  # a line cut short by a crash
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
                keep.append(line)
        dropped = len(lines) - len(keep)
        if dropped:
            atomic_write_text(self.path, "".join(line + "\n" for line in keep))
        return dropped

    def write(self, record: dict) -> None:
        """Append one record (must hold `step`); flushed at once so a crash loses nothing logged."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                for k, v in record.items()}) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self._tb is not None:
            self._tb.close()

    @contextlib.contextmanager
    def progress(self, start: int, total: int, *, enabled: bool, batch: int = 1):
        """A Rich live progress bar (loss, videos/s, ETA) when enabled; yields update(step, loss) with `.live`.

        `loss` None keeps the last shown loss (the training loop reads losses back only at sync points).
        """
        if not enabled:
            def update(step, loss):
                pass
            update.live = False
            yield update
            return
        import time

        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        cols = [TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[vps]:.1f} videos/s"),
                TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*cols, transient=False) as bar:
            task = bar.add_task("train", total=total, completed=start, loss=float("nan"), vps=0.0)
            last = [time.perf_counter(), 0.0]

            def update(step, loss):
                now = time.perf_counter()
                rate = batch / max(now - last[0], 1e-9)
                last[1] = rate if last[1] == 0 else 0.9 * last[1] + 0.1 * rate     # smoothed videos/s
                last[0] = now
                fields = {} if loss is None else {"loss": float(loss)}
                bar.update(task, completed=step, vps=last[1], **fields)
            update.live = True
            yield update


def read_stats(run_dir: Path) -> list[dict]:
    """All records of run_dir/stats.jsonl (a last line cut short by a crash is ignored)."""
    p = Path(run_dir) / STATS
    if not p.exists():
        return []
    lines = [line for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return out
