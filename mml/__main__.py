"""`python -m mml` = the `mml` command."""

from mml.cli import main

main()
