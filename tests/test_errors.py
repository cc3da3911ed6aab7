"""One base for user-facing errors: every such class is an HPDMError, keeps its other bases, and the CLI
turns any HPDMError into one line on stderr and exit code 2."""

import pytest

from hpdm_cli.cli import app as cli_app
from hpdm_cli.config import ConfigError
from hpdm_cli.data.shards import DataError
from hpdm_cli.device import DeviceError
from hpdm_cli.errors import HPDMError
from hpdm_cli.eval import FVDError
from hpdm_cli.eval.i3d import I3DWeightsError
from hpdm_cli.conditioning import GenerateError
from hpdm_cli.io.video import VideoError
from hpdm_cli.text.encoders import TextEncoderError
from hpdm_cli.train.checkpoint import CheckpointError
from hpdm_cli.train.loop import TrainError

VALUE_ERRORS = [ConfigError, DataError, FVDError, I3DWeightsError, GenerateError, VideoError, TextEncoderError,
                CheckpointError, TrainError]


@pytest.mark.parametrize("cls", VALUE_ERRORS + [DeviceError], ids=lambda c: c.__name__)
def test_every_user_facing_error_is_an_hpdm_error(cls):
    assert issubclass(cls, HPDMError)


def test_other_bases_are_kept():
    assert all(issubclass(cls, ValueError) for cls in VALUE_ERRORS)
    assert issubclass(DeviceError, RuntimeError)


@pytest.mark.parametrize("cls", [HPDMError, CheckpointError, DeviceError], ids=lambda c: c.__name__)
def test_cli_prints_the_first_line_and_exits_2(cls, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise cls("what is wrong and what to do\nsecond line, never printed")
    monkeypatch.setattr(cli_app, "app", fail)
    with pytest.raises(SystemExit) as e:
        cli_app.main(["anything"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "hpdm: error: what is wrong and what to do"


def test_other_exceptions_keep_their_traceback(monkeypatch):
    def fail(*args, **kwargs):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(cli_app, "app", fail)
    with pytest.raises(ZeroDivisionError):
        cli_app.main(["anything"])


@pytest.mark.parametrize("exc,code,line", [
    (FileNotFoundError(2, "No such file or directory", "x.mp4"), 2, "hpdm: error: [Errno 2] No such file or directory: 'x.mp4'"),
    (HPDMError(""), 2, "hpdm: error: HPDMError"),
    (KeyboardInterrupt(), 130, "hpdm: interrupted (Ctrl-C)"),
    (SystemExit("stopped: a message"), 1, "stopped: a message"),
], ids=["missing path", "empty message", "ctrl-c", "exit with a message"])
def test_cli_exit_codes_and_lines_of_other_endings(exc, code, line, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise exc
    monkeypatch.setattr(cli_app, "app", fail)
    with pytest.raises(SystemExit) as e:
        cli_app.main(["anything"])
    assert e.value.code == code
    assert capsys.readouterr().err.strip() == line


def test_ctrl_c_inside_a_command_says_so(monkeypatch, capsys):
    """Typer turns a KeyboardInterrupt inside a command into Exit(130): the user still reads one line saying why."""
    import typer
    toy = typer.Typer()

    @toy.command()
    def work():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_app, "app", toy)
    assert cli_app.exit_code([]) == 130
    assert capsys.readouterr().err.strip() == "hpdm: interrupted (Ctrl-C)"


def test_an_abort_exits_130(monkeypatch, capsys):
    import typer

    def fail(*args, **kwargs):
        raise typer.Abort()
    monkeypatch.setattr(cli_app, "app", fail)
    assert cli_app.exit_code(["anything"]) == 130
    assert capsys.readouterr().err.strip() == "hpdm: aborted"


@pytest.mark.parametrize("argv,see", [(["sample", "--seeds"], "hpdm sample --help"),
                                      (["train", "--run-dir"], "hpdm train --help"),
                                      (["no-such-command"], "hpdm --help"),
                                      (["--no-such-option"], "hpdm --help")])
def test_a_parse_error_points_at_its_commands_help(argv, see, capsys):
    """An option without its value is found before its command runs: the line still names that command's help."""
    assert cli_app.exit_code(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hpdm: error: ") and err.endswith(f"(see '{see}')") and "\n" not in err, err
