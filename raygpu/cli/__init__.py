"""The `raygpu` command line: one root command, one module per command group."""

from __future__ import annotations

import click

from raygpu.cli import apps, batch, billing, calls, cluster, login, schedules, secrets, simulate, tokens, weights


@click.group()
@click.version_option(package_name="raygpu")
def main() -> None:
    """raygpu: serverless GPU functions on your own Ray cluster."""


for group in (cluster, login, apps, batch, calls, schedules, weights, tokens, secrets, billing, simulate):
    group.register(main)

if __name__ == "__main__":
    main()
