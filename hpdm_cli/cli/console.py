"""What the commands print with: the stdout and stderr consoles and one-line warnings (rank 0 only under
torchrun where asked).

Results go to stdout (`out`); warnings, progress and errors to stderr (`err`). A command's mistakes
are raised as the engine's `HPDMError`s; `hpdm_cli.cli.app.main` prints each as one line and exits
with code 2.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Optional, TextIO

from rich.console import Console

from ..device import emulated_bf16_warning, world

__all__ = ["out", "err", "warn", "log_line", "rank0_warn", "is_main_rank", "warn_emulated_bf16", "console_width"]

# Width of output that is not a terminal (a log file, a pipe): wide enough for every table hpdm prints, which
# Rich would otherwise squeeze into 80 columns, cutting labels and numbers to "…".
PIPED_WIDTH = 240


def console_width(stream: TextIO, environ: Mapping[str, str] = os.environ) -> Optional[int]:
    """The width to print at: the terminal's (None: Rich asks it) or `COLUMNS` if set, else `PIPED_WIDTH`."""
    isatty = getattr(stream, "isatty", None)
    if (isatty is not None and isatty()) or environ.get("COLUMNS", "").isdigit():
        return None
    return PIPED_WIDTH


out = Console(soft_wrap=True, width=console_width(sys.stdout))
err = Console(stderr=True, soft_wrap=True, width=console_width(sys.stderr))


def warn(message: str) -> None:
    """`hpdm: warning: MESSAGE` on stderr, as it is (no markup)."""
    err.print(f"hpdm: warning: {message}", highlight=False, markup=False)


def log_line(message: str, console: Console = out) -> None:
    """A line of an engine's log: `warn` when it begins with `hpdm_cli.errors.WARNING`, else on `console`."""
    from ..errors import WARNING
    if message.startswith(WARNING):
        warn(message[len(WARNING):])
    else:
        console.print(message, highlight=False, markup=False)


def is_main_rank() -> bool:
    """Whether this process reports (rank 0 of a torchrun job, or the only process)."""
    return world().rank == 0


def rank0_warn(message: str) -> None:
    """`warn` on rank 0 only, e.g. an unusable checkpoint skipped in a run directory."""
    if is_main_rank():
        warn(message)


def warn_emulated_bf16(bf16: bool, device: str) -> None:
    """With --bf16, `rank0_warn` when the device is a CPU that only emulates bf16 (`device.emulated_bf16_warning`)."""
    message = emulated_bf16_warning(device) if bf16 else None
    if message:
        rank0_warn(message)
