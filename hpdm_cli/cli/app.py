"""The `hpdm` command: thin Typer drivers over the engine (parse, call one engine function, print).

User mistakes end in one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Hierarchical Patch Diffusion Models: prepare data, train, sample, upscale, evaluate, benchmark.")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class UserError(Exception):
    """An error the user can fix; printed as one line."""


def _user_error_types() -> tuple:
    from ..config import ConfigError
    from ..data.shards import DataError
    from ..eval import FVDError
    from ..generate import GenerateError
    from ..io.video import VideoError
    from ..text.encoders import TextEncoderError
    from ..train.checkpoint import CheckpointError
    from ..train.loop import TrainError
    return (UserError, ConfigError, DataError, VideoError, TextEncoderError, CheckpointError, TrainError, FVDError,
            GenerateError,
            FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train(
    recipe: str = typer.Argument(..., help="Recipe file or packaged name (tiny, shapes, ucf, t2v)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="section.key=value overrides."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run directory (default runs/<recipe name>)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                            help="Live progress bar (default: on a terminal)."),
):
    """Train a recipe; re-running the same command resumes from the newest checkpoint."""
    from ..recipe import default_recipe_path, load_recipe
    from ..train.loop import train as run_train
    path = default_recipe_path(recipe)
    rec = load_recipe(path, overrides or [])
    rd = run_dir or Path("runs") / path.stem
    live = sys.stdout.isatty() if progress is None else progress
    summary = run_train(rec, rd, log=lambda m: out.print(m, highlight=False), progress=live)
    if summary.interrupted:
        raise typer.Exit(128 + summary.interrupted)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    out.print(f"done: step {summary.step}/{summary.steps}, last loss {summary.last_loss:.4f}, "
              f"checkpoint {summary.checkpoint or '(unchanged)'}")


@app.command()
def bench(
    recipe: str = typer.Argument(..., help="Recipe file or packaged name."),
    overrides: Optional[List[str]] = typer.Argument(None, help="section.key=value overrides."),
    steps: int = typer.Option(10, help="Timed training steps."),
    warmup: int = typer.Option(3, help="Untimed warm-up steps."),
    batch: Optional[int] = typer.Option(None, help="Per-GPU batch (default: the recipe's global batch)."),
    ablations: bool = typer.Option(False, help="Also time no adaptive computation and shallow fusion."),
    precision: Optional[str] = typer.Option(None, help="Comma-separated precisions to time (fp32,tf32,bf16)."),
    sampling: bool = typer.Option(False, "--sampling", help="Time hierarchical sampling instead of training."),
    overlap: Optional[str] = typer.Option(None, help="Sampling: comma-separated overlap settings (fhw,hw,...,none)."),
    compare_cache: bool = typer.Option(True, "--compare-cache/--cache-only", help="Sampling: also time without caching."),
    sample_steps: Optional[str] = typer.Option(None, help="Sampling: per-level steps actually run, e.g. 8,4,2."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
):
    """Training throughput, peak memory, counted FLOPs and MFU (synthetic inputs); --sampling times generation."""
    from ..bench import bench_sampling, bench_training, write_json
    from ..recipe import default_recipe_path, load_recipe
    rec = load_recipe(default_recipe_path(recipe), overrides or [])
    if sampling:
        rows = bench_sampling(rec, batch=batch or 16, overlaps=overlap.split(",") if overlap else None,
                              caches=(True, False) if compare_cache else (True,),
                              steps=[int(s) for s in sample_steps.split(",")] if sample_steps else None,
                              precision=precision or "bf16")
        title = "hpdm bench: sampling (seconds per video)"
    else:
        rows = bench_training(rec, steps=steps, warmup=warmup, batch=batch, ablations=ablations,
                              precisions=precision.split(",") if precision else None)
        title = "hpdm bench: training"
    from rich.table import Table
    table = Table(title=title)
    table.add_column("")
    for i in range(len(rows)):
        table.add_column(str(i + 1), justify="right")
    for key in rows[0]:
        table.add_row(key, *[f"{r[key]:.4g}" if isinstance(r[key], float) else str(r[key]) for r in rows])
    out.print(table)
    if json_out:
        write_json(json_out, rows)


from . import generate_cmd  # noqa: E402  (sample, upscale)

generate_cmd.register(app)

from . import fvd_cmd  # noqa: E402  (eval-fvd)

fvd_cmd.register(app)

from . import eval_cmd  # noqa: E402  (eval)

eval_cmd.register(app)

from . import prepare_cmd  # noqa: E402  (prepare)

prepare_cmd.register(app)


def main() -> None:
    """Entry point of the `hpdm` console script."""
    try:
        rc = app(standalone_mode=False)
    except SystemExit:
        raise
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:                                                # noqa: BLE001
        import click
        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        if isinstance(e, _user_error_types()):
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            err.print(f"hpdm: error: {msg}", highlight=False, markup=False, soft_wrap=True)
            sys.exit(2)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
