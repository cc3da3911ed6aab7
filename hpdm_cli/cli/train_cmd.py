"""`hpdm train`: parse the options, run the training loop (`hpdm_cli.train.loop.train`), print the summary."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..recipe import available_recipes
from .console import log_line, out

# Recipe overrides are extra positional arguments; an unknown option stays a parse error.
CONTEXT_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": False}


def train(
    recipe: str = typer.Argument(..., metavar="RECIPE",
                                 help=f"Recipe file or packaged name ({', '.join(available_recipes())})."),
    overrides: Optional[List[str]] = typer.Argument(None, metavar="OVERRIDES", help="section.key=value overrides of the recipe (keys: hpdm_cli/config.py; lists as 'pyramid.patch=[4,16,16]', strings as 'train.compile=\"reduce-overhead\"')."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run directory (default runs/<recipe name>)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                            help="Live progress bar (default: on a terminal)."),
):
    """Train a recipe; re-running the same command resumes from the newest checkpoint."""
    _stacks_on_crash()
    from ..device import world
    from ..recipe import default_recipe_path, load_recipe
    from ..train.loop import train as run_train
    path = default_recipe_path(recipe)
    rec = load_recipe(path, overrides or [])
    rd = run_dir or Path("runs") / path.stem
    live = sys.stdout.isatty() if progress is None else progress
    summary = run_train(rec, rd, log=log_line, progress=live)
    if summary.interrupted:
        raise typer.Exit(128 + summary.interrupted)
    if world().rank != 0:
        return
    if summary.step == summary.start_step:                # no step ran, so no loss to report
        out.print(f"done: the starting weights saved, checkpoint {summary.checkpoint}" if summary.checkpoint else
                  f"done: already at step {summary.step}/{summary.steps}; nothing to do")
        return
    out.print(f"done: step {summary.step}/{summary.steps}, last loss {summary.last_loss:.4f}, "
              f"checkpoint {summary.checkpoint or '(unchanged)'}")


def _stacks_on_crash() -> None:
    """Have a crash in native code (a segfault in a compiled step, say) print the Python stacks to stderr."""
    import faulthandler
    if faulthandler.is_enabled():
        return
    try:
        faulthandler.enable(file=sys.__stderr__)
    except (AttributeError, ValueError, OSError):   # no real stderr (embedded interpreters): run without it
        pass
