"""The `hpdm` command: the Typer app, its commands, and the entry point that turns user mistakes into one line.

Each command lives in its own module (`*_cmd.py`): it parses the options, calls the command's
driver and prints. `main` maps every `HPDMError` (and the OS errors of a path the user gave)
to `hpdm: error: <first line>` on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer

from ..errors import HPDMError
from . import bench_cmd, eval_cmd, fvd_cmd, prepare_cmd, sample_cmd, train_cmd, upscale_cmd
from .console import err

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Hierarchical Patch Diffusion Models: prepare data, train, sample, upscale, evaluate, benchmark.")
# Registered in workflow order, the order `hpdm --help` lists them.
app.command("prepare")(prepare_cmd.prepare)
app.command("train", context_settings=train_cmd.CONTEXT_SETTINGS)(train_cmd.train)
app.command("sample")(sample_cmd.sample)
app.command("upscale")(upscale_cmd.upscale)
app.command("eval")(eval_cmd.evaluate)
app.command("eval-fvd")(fvd_cmd.eval_fvd)
app.command("bench")(bench_cmd.bench)

# What ends a command with one line and exit code 2: every HPDMError (hpdm_cli/errors.py), and the OS
# errors of a path the user gave that is missing, forbidden or of the wrong kind.
_USER_ERRORS = (HPDMError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


# Parse errors typer detects itself (missing argument, unknown option or command, a value of the wrong
# type) derive from the ClickException of the click copy that current typer releases carry (older
# ones used click itself): found through typer's public BadParameter, so `click` is never imported.
_ParseError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _one_line(text: str) -> str:
    """Collapse a message onto one line (whitespace runs become one space)."""
    return " ".join(str(text).split())


def _parse_error_line(e: Exception, argv: Optional[List[str]] = None) -> str:
    """The one-line message for a command-line parse error raised by typer."""
    msg = _one_line(e.format_message()).rstrip(".") or type(e).__name__
    opt = getattr(e, "option_name", None) or ""
    if opt.startswith("--") and "." in opt:                      # `--train.steps=10`: a recipe override
        msg += f"; recipe overrides take no dashes: {opt[2:]}=VALUE"
    ctx = getattr(e, "ctx", None)
    path = ctx.command_path if ctx is not None else "hpdm"
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    if path == "hpdm" and words and words[0] in typer.main.get_command(app).commands:
        path = f"hpdm {words[0]}"                              # an option's missing value, found before its command ran
    return f"{msg} (see '{path} --help')"


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of the `hpdm` console script (and of `python -m hpdm_cli`)."""
    code = exit_code(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun rank leaves without the interpreter's teardown: with the process group
        # already destroyed, a communication library's background thread can still abort the
        # process there ("terminate called without an active exception"), and torchrun would
        # report a finished run as a failed rank.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


INTERRUPTED = 130                                # the exit code of a Ctrl-C, as shells give it


def exit_code(argv: Optional[List[str]] = None) -> int:
    """Run the app on `argv`; the process exit code (user errors: one line on stderr, 2)."""
    try:
        rc = app(argv, prog_name="hpdm", standalone_mode=False)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        err.print(str(e.code), highlight=False, markup=False)                # sys.exit("message")
        return 1
    except typer.Exit as e:
        rc = e.exit_code
    except KeyboardInterrupt:
        rc = INTERRUPTED
    except typer.Abort:
        err.print("hpdm: aborted", highlight=False, markup=False)
        return 130
    except _ParseError as e:
        if type(e).__name__ == "NoArgsIsHelpError":                # bare `hpdm`: typer printed the help
            line = "no command given: run one of the commands listed above, e.g. 'hpdm train tiny'"
        else:
            line = _parse_error_line(e, argv)
        err.print(f"hpdm: error: {line}", highlight=False, markup=False, soft_wrap=True)
        return 2
    except Exception as e:                                                # noqa: BLE001
        if isinstance(e, _USER_ERRORS):
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            err.print(f"hpdm: error: {msg}", highlight=False, markup=False, soft_wrap=True)
            return 2
        raise
    rc = rc if isinstance(rc, int) else 0
    if rc == INTERRUPTED and os.environ.get("RANK", "0") == "0":   # Ctrl-C (typer's Exit(130)); one line per job
        err.print("hpdm: interrupted (Ctrl-C)", highlight=False, markup=False)
    return rc


if __name__ == "__main__":
    main()
