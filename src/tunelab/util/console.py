"""One rich console for all human-facing output (stderr, so stdout stays machine-readable)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

__all__ = ["console", "status"]

console = Console(stderr=True, highlight=False)
if not console.is_terminal:  # logs and CI: 80 columns squeeze tables into unreadable stacks
    console.width = 140


@contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner while something slow and indivisible runs (model conversion, loading)."""
    with console.status(message):
        yield
    console.print(f"[green]✓[/] {message}")
