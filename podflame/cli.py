"""The `podflame` command."""

import click


@click.group()
def main() -> None:
    """podflame: continuous eBPF CPU profiling, per pod."""
