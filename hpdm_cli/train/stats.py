"""Training statistics: `stats.jsonl` (one JSON object per logged step), TensorBoard when installed, live progress."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path


class StatsWriter:
    """Appends logged steps to run_dir/stats.jsonl (and TensorBoard if available); no-op when disabled."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "stats.jsonl"
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except Exception:                                             # tensorboard not installed
                self._tb = None

    def write(self, record: dict) -> None:
        """Append one record (must hold `step`); flushed at once so a crash loses nothing logged."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
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
    def progress(self, start: int, total: int, *, enabled: bool):
        """A Rich live progress bar (loss, steps/s, ETA) when enabled; yields update(step, loss) with `.live`."""
        if not enabled:
            def update(step, loss):
                pass
            update.live = False
            yield update
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        cols = [TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*cols, transient=False) as bar:
            task = bar.add_task("train", total=total, completed=start, loss=float("nan"))

            def update(step, loss):
                bar.update(task, completed=step, loss=loss)
            update.live = True
            yield update


def read_stats(run_dir: Path) -> list[dict]:
    """All records of run_dir/stats.jsonl."""
    p = Path(run_dir) / "stats.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []
