"""Step generators: long jobs in the core are generators that yield progress events and return a
result, so the CLI prints them, a napari worker shows them (and cancels by closing the generator)
and scripts run them to completion with :func:`drain`."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")


def drain(gen: Generator[Any, Any, T], on_event: Callable[[Any], None] | None = None) -> T:
    """Run a step generator to completion, passing every event to ``on_event``; return its value."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(ev)
