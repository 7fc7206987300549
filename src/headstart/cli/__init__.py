"""The `headstart` command: typer commands by topic. The only package that prints, and the only place for the
command's own start-up tricks (cli/startup.py). Nothing in headstart imports it."""

from headstart.cli.entrypoint import app, command, main

__all__ = ["app", "command", "main"]
