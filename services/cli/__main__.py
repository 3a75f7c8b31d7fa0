"""`python -m services.cli` is the `jobrunner` command."""

from services.cli import main

main()
