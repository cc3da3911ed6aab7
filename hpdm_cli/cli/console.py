"""What the commands print with: the stdout and stderr consoles, one-line warnings (rank 0 only under torchrun
where asked), and `UserError`.

Results go to stdout (`out`); warnings, progress and errors to stderr (`err`). A `UserError` is
a command-line mistake a command finds itself; `hpdm_cli.cli.app.main` prints it, like every
`HPDMError`, as one line and exits with code 2.
"""

from __future__ import annotations

from rich.console import Console

from ..device import world
from ..errors import HPDMError

__all__ = ["out", "err", "warn", "rank0_warn", "is_main_rank", "UserError"]

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class UserError(HPDMError):
    """A command-line mistake found by the CLI itself; printed as one line (exit 2), like every HPDMError."""


def warn(message: str) -> None:
    """`hpdm: warning: MESSAGE` on stderr, as it is (no markup)."""
    err.print(f"hpdm: warning: {message}", highlight=False, markup=False)


def is_main_rank() -> bool:
    """Whether this process reports (rank 0 of a torchrun job, or the only process)."""
    return world().rank == 0


def rank0_warn(message: str) -> None:
    """`warn` on rank 0 only, e.g. an unusable checkpoint skipped in a run directory."""
    if is_main_rank():
        warn(message)
