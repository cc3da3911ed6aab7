"""The command-line layer: the Typer app `hpdm` (app). The engine never imports this package."""
