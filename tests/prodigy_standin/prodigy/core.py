"""STAND-IN for ``prodigy.core`` (Prodigy >= 1.12), for odal's recipe tests only: ``recipe`` and ``Arg``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arg:
    """A recipe argument: its CLI names (none for a positional one) and help text, as ``Arg("--x", "-x", help=...)``."""

    names: tuple[str, ...]
    help: str | None

    def __init__(self, *names: str, help: str | None = None) -> None:  # noqa: A002 - Prodigy's keyword
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "help", help)


def recipe(name: str, **args: Arg):
    """The 1.12+ decorator: argument types come from the function's annotations, help and flags from ``Arg``."""
    from prodigy import RECIPES

    def register(func):
        RECIPES[name] = {"func": func, "api": "core", "args": args}
        return func

    return register
