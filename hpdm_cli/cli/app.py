"""The `hpdm` command: thin Typer drivers over the engine (parse, call one engine function, print).

User mistakes end in one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from ..errors import HPDMError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Hierarchical Patch Diffusion Models: prepare data, train, sample, upscale, evaluate, benchmark.")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class UserError(HPDMError):
    """A command-line mistake found by the CLI itself; printed as one line (exit 2), like every HPDMError."""


# What ends a command with one line and exit code 2: every HPDMError (hpdm_cli/errors.py), and the OS
# errors of a path the user gave that is missing, forbidden or of the wrong kind.
_USER_ERRORS = (HPDMError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train(
    recipe: str = typer.Argument(..., help="Recipe file or packaged name (tiny, shapes, ucf, t2v)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="section.key=value overrides."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run directory (default runs/<recipe name>)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                            help="Live progress bar (default: on a terminal)."),
):
    """Train a recipe; re-running the same command resumes from the newest checkpoint."""
    from ..device import world
    from ..recipe import default_recipe_path, load_recipe
    from ..train.loop import train as run_train
    path = default_recipe_path(recipe)
    rec = load_recipe(path, overrides or [])
    rd = run_dir or Path("runs") / path.stem
    live = sys.stdout.isatty() if progress is None else progress
    summary = run_train(rec, rd, log=lambda m: out.print(m, highlight=False), progress=live)
    if summary.interrupted:
        raise typer.Exit(128 + summary.interrupted)
    if world().rank != 0:
        return
    if summary.step == summary.start_step:                # already finished: no step ran, so no loss to report
        out.print(f"done: already at step {summary.step}/{summary.steps}; nothing to do")
        return
    out.print(f"done: step {summary.step}/{summary.steps}, last loss {summary.last_loss:.4f}, "
              f"checkpoint {summary.checkpoint or '(unchanged)'}")


def _csv(value: str, option: str, example: str) -> list:
    """Split a comma-separated option value; an empty item is a UserError naming the option."""
    items = [v.strip() for v in value.split(",")]
    if not all(items):
        raise UserError(f"{option} {value!r}: expected comma-separated values without empty items, e.g. {example}")
    return items


def _check_json_target(path: Path) -> None:
    """Refuse a --json path that cannot be written, before anything is timed."""
    if path.is_dir():
        raise UserError(f"--json {path}: is a directory; pass a file name, e.g. {path / 'bench.json'}")
    if not path.parent.is_dir():
        raise UserError(f"--json {path}: folder {path.parent} does not exist; create it or pick another path")


@app.command()
def bench(
    recipe: str = typer.Argument(..., help="Recipe file or packaged name."),
    overrides: Optional[List[str]] = typer.Argument(None, help="section.key=value overrides."),
    steps: Optional[int] = typer.Option(None, help="Timed training steps (default 10)."),
    warmup: Optional[int] = typer.Option(None, help="Untimed warm-up steps (default 3)."),
    batch: Optional[int] = typer.Option(None, help="Per-GPU batch (default: the recipe's global batch; "
                                                   "--sampling: 16 videos)."),
    ablations: bool = typer.Option(False, help="Also time no adaptive computation and shallow fusion."),
    precision: Optional[str] = typer.Option(None, help="Comma-separated precisions to time (fp32,tf32,bf16); "
                                                       "--sampling: one of them."),
    sampling: bool = typer.Option(False, "--sampling", help="Time hierarchical sampling instead of training."),
    overlap: Optional[str] = typer.Option(None, help="Sampling: comma-separated overlap settings (fhw,hw,...,none)."),
    compare_cache: bool = typer.Option(True, "--compare-cache/--cache-only", help="Sampling: also time without caching."),
    sample_steps: Optional[str] = typer.Option(None, help="Sampling: per-level steps actually run, e.g. 8,4,2."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
):
    """Training throughput, peak memory, counted FLOPs and MFU (synthetic inputs); --sampling times generation."""
    # Options of the other mode would be ignored without a word: refuse them instead.
    if sampling:
        given = [o for o, v in (("--steps", steps), ("--warmup", warmup), ("--ablations", ablations or None))
                 if v is not None]
        if given:
            raise UserError(f"{', '.join(given)} only {'apply' if len(given) > 1 else 'applies'} to timing "
                            f"training, not --sampling: drop {'them' if len(given) > 1 else 'it'} "
                            "(--sample-steps sets the sampler's steps)")
    else:
        given = [o for o, v in (("--overlap", overlap), ("--sample-steps", sample_steps),
                                ("--cache-only", None if compare_cache else True)) if v is not None]
        if given:
            raise UserError(f"{', '.join(given)} only {'apply' if len(given) > 1 else 'applies'} with --sampling: "
                            f"add --sampling or drop {'them' if len(given) > 1 else 'it'}")
    if json_out is not None:
        _check_json_target(json_out)
    precisions = _csv(precision, "--precision", "fp32,bf16") if precision is not None else None
    from ..bench import bench_sampling, bench_training, write_json
    from ..recipe import default_recipe_path, load_recipe
    rec = load_recipe(default_recipe_path(recipe), overrides or [])
    if sampling:
        if precisions is not None and len(precisions) != 1:
            raise UserError(f"--precision {precision!r}: --sampling times one precision, e.g. --precision bf16")
        counts = None
        if sample_steps is not None:
            try:
                counts = [int(v) for v in _csv(sample_steps, "--sample-steps", "8,4,2")]
            except ValueError:
                raise UserError(f"--sample-steps {sample_steps!r}: expected comma-separated positive integers, "
                                "one per level, e.g. 8,4,2") from None
        rows = bench_sampling(rec, batch=16 if batch is None else batch,
                              overlaps=_csv(overlap, "--overlap", "fhw,hw,none") if overlap is not None else None,
                              caches=(True, False) if compare_cache else (True,), steps=counts,
                              precision=precisions[0] if precisions else "bf16")
        title = "hpdm bench: sampling (seconds per video)"
    else:
        rows = bench_training(rec, steps=10 if steps is None else steps, warmup=3 if warmup is None else warmup,
                              batch=batch, ablations=ablations, precisions=precisions)
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


# Parse errors typer detects itself (missing argument, unknown option or command, a value of the wrong
# type) derive from the ClickException of the click copy that current typer releases carry (older
# ones used click itself): found through typer's public BadParameter, so `click` is never imported.
_ParseError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _one_line(text: str) -> str:
    """Collapse a message onto one line (whitespace runs become one space)."""
    return " ".join(str(text).split())


def _parse_error_line(e: Exception) -> str:
    """The one-line message for a command-line parse error raised by typer."""
    msg = _one_line(e.format_message()).rstrip(".") or type(e).__name__
    opt = getattr(e, "option_name", None) or ""
    if opt.startswith("--") and "." in opt:                      # `--train.steps=10`: a recipe override
        msg += f"; recipe overrides take no dashes: {opt[2:]}=VALUE"
    ctx = getattr(e, "ctx", None)
    path = ctx.command_path if ctx is not None else "hpdm"
    return f"{msg} (see '{path} --help')"


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of the `hpdm` console script (and of `python -m hpdm_cli`)."""
    try:
        rc = app(argv, prog_name="hpdm", standalone_mode=False)
    except SystemExit:
        raise
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except typer.Abort:
        err.print("hpdm: aborted", highlight=False, markup=False)
        sys.exit(130)
    except _ParseError as e:
        if type(e).__name__ == "NoArgsIsHelpError":                # bare `hpdm`: typer printed the help
            line = "no command given: run one of the commands listed above, e.g. 'hpdm train tiny'"
        else:
            line = _parse_error_line(e)
        err.print(f"hpdm: error: {line}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except Exception as e:                                                # noqa: BLE001
        if isinstance(e, _USER_ERRORS):
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            err.print(f"hpdm: error: {msg}", highlight=False, markup=False, soft_wrap=True)
            sys.exit(2)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
