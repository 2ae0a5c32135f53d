"""STAND-IN for Prodigy, used only by odal's recipe tests. This is NOT Prodigy.

Prodigy is commercial and cannot be installed on our machines, so the tests put this minimal package on
``sys.path`` (only inside those tests) to exercise the recipe's thin registration layer.  It models just what the
recipe touches, after Prodigy's documented API: ``prodigy.recipe`` (the pre-1.12 decorator whose arguments are
``(help, kind, shorthand, type)`` tuples), ``prodigy.core.recipe`` / ``prodigy.core.Arg`` (1.12+), and
``prodigy.util.set_hashes`` / ``split_string``.  Registered recipes land in :data:`RECIPES`; :func:`cli_help`
renders the ``--help`` text a command line would show from the registered metadata.
"""

from __future__ import annotations

import argparse
import inspect

from prodigy.util import set_hashes, split_string  # noqa: F401 - Prodigy re-exports these too

# name -> {"func": function, "api": "core" | "legacy", "args": {param: Arg | tuple}}
RECIPES: dict[str, dict] = {}


def recipe(name: str, **annotations):
    """The pre-1.12 decorator: each argument is ``(help, "positional"|"option"|"flag", shorthand, type)``."""

    def register(func):
        RECIPES[name] = {"func": func, "api": "legacy", "args": annotations}
        return func

    return register


def cli_help(name: str) -> str:
    """The help text of recipe ``name``, built from its registered argument metadata with argparse."""
    entry = RECIPES[name]
    parser = argparse.ArgumentParser(prog=f"prodigy {name}")
    params = inspect.signature(entry["func"]).parameters
    for param, meta in entry["args"].items():
        default = params[param].default
        if entry["api"] == "legacy":
            text, kind, short, _type = meta
            flags = [param] if kind == "positional" else [f"--{param.replace('_', '-')}"] + ([f"-{short}"] if short else [])
        else:
            text, flags = meta.help, list(meta.names) or [param]
        kwargs = {} if flags[0] == param else {"default": None if default is inspect.Parameter.empty else default}
        parser.add_argument(*flags, help=text, **kwargs)
    return parser.format_help()
