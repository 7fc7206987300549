"""`python -m headstart.cli`: the installed `headstart` script."""

from headstart.cli import command

command()
