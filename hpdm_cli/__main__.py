"""`python -m hpdm_cli` runs the `hpdm` command."""

from .cli.app import main

main()
