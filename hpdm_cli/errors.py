"""One base for every user-facing error of hpdm: `HPDMError`; the prefix of a log line that warns: `WARNING`.

An `HPDMError` is a mistake the user can fix (a bad recipe value, a missing dataset, a corrupt
checkpoint, an unknown device, ...); its message says what is wrong and what to do, first line
first. The CLI (`hpdm_cli.cli.app.main`) prints that first line as `hpdm: error: ...` and exits
with code 2. Anything else that escapes a command is a bug and keeps its traceback.

The concrete classes live next to the code that raises them and keep their other bases (most are
also `ValueError`s), so existing `except ValueError` code is unaffected:

    ConfigError (config)          DataError (data.shards)        VideoError (io.video)
    TextEncoderError (text)       CheckpointError (train)        TrainError (train)      
    FVDError, I3DWeightsError (eval)   GenerateError (conditioning)  DeviceError (device)

This module imports nothing, so any part of hpdm can use it.
"""

from __future__ import annotations


class HPDMError(Exception):
    """A user-facing error: the CLI prints its first line and exits 2."""


# How a line of an engine's log that warns begins: the CLI prints such a line as `hpdm: warning: ...` on stderr
# (`hpdm_cli.cli.console.log_line`), the others as they are.
WARNING = "warning: "

__all__ = ["HPDMError", "WARNING"]
