"""The command-line layer: the Typer app `hpdm` (app.py), one module per command (*_cmd.py: parse the options,
call the command's driver, print), the consoles (console.py), progress bars (progress.py) and the help of
options several commands share (help_texts.py).

Nothing outside this package imports it.
"""
