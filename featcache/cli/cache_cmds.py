"""Commands around the cache: ``datasets``, ``models`` (extract/info/import-features follow)."""

from __future__ import annotations

import click

from featcache.cli import main


@main.command("models")
@click.option("--filter", "pattern", default="", help="Only models whose name contains this text.")
def models_cmd(pattern: str) -> None:
    """List the open_clip models (and featcache's tiny ones) with their pretrained tags."""
    from rich.console import Console
    from rich.table import Table

    from featcache.models import list_models

    table = Table("model", "pretrained tags")
    for row in list_models():
        if pattern.lower() in row["model"].lower():
            table.add_row(row["model"], row["pretrained"])
    Console().print(table)
