"""STAND-IN for Prodigy, used only by odal's recipe tests. This is NOT Prodigy.

Prodigy is commercial and cannot be installed on our machines, so the tests put this minimal package on
``sys.path`` (only inside those tests) to exercise the recipe's thin registration layer.  It models just what the
recipe touches, after Prodigy's documented API: ``prodigy.recipe`` (the pre-1.12 decorator whose arguments are
``(help, kind, shorthand, type)`` tuples), ``prodigy.core.recipe`` / ``prodigy.core.Arg`` (1.12+), and
``prodigy.util.set_hashes`` / ``split_string``.  Registered recipes land in :data:`RECIPES`; :func:`cli_help`
renders the ``--help`` text a command line would show from the registered metadata, and :func:`run` parses a
command line with it and calls the recipe (the way Prodigy fills in options that were left out).
"""

from __future__ import annotations

import argparse
import inspect
import typing

from prodigy.util import set_hashes, split_string  # noqa: F401 - Prodigy re-exports these too

# name -> {"func": function, "api": "core" | "legacy", "args": {param: Arg | tuple}}
RECIPES: dict[str, dict] = {}


def recipe(name: str, **annotations):
    """The pre-1.12 decorator: each argument is ``(help, "positional"|"option"|"flag", shorthand, type)``."""

    def register(func):
        RECIPES[name] = {"func": func, "api": "legacy", "args": annotations}
        return func

    return register


def _parser(name: str) -> argparse.ArgumentParser:
    """An argparse parser built from recipe ``name``'s registered metadata, as a command line would parse it: an
    option left out gets the function's default (None when the function has none, as plac does); a given value
    is converted by the legacy tuple's type, or (1.12+) by the annotation, ``List[str]`` from "a,b"."""
    entry = RECIPES[name]
    parser = argparse.ArgumentParser(prog=f"prodigy {name}")
    params = inspect.signature(entry["func"]).parameters
    for param, meta in entry["args"].items():
        default = params[param].default
        if entry["api"] == "legacy":
            text, kind, short, convert = meta
            flags = [param] if kind == "positional" else [f"--{param.replace('_', '-')}"] + ([f"-{short}"] if short else [])
        else:
            text, flags = meta.help, list(meta.names) or [param]
            convert = _from_annotation(params[param].annotation)
        kwargs = {} if flags[0] == param else {"default": None if default is inspect.Parameter.empty else default,
                                                "dest": param}
        parser.add_argument(*flags, help=text, type=convert, **kwargs)
    return parser


def _from_annotation(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (list, typing.List) or (args and typing.get_origin(args[0]) is list):
        return split_string
    if args:
        return args[0] if isinstance(args[0], type) else None
    return annotation if isinstance(annotation, type) else None


def cli_help(name: str) -> str:
    """The help text of recipe ``name``, built from its registered argument metadata with argparse."""
    return _parser(name).format_help()


def run(name: str, argv: list[str]):
    """What ``prodigy NAME ARGV...`` does up to serving: parse the command line, call the recipe, return its
    components."""
    return RECIPES[name]["func"](**vars(_parser(name).parse_args(argv)))
