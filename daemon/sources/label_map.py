"""Read an OD API ``label_map.pbtxt`` without importing TensorFlow (a small text-proto reader)."""

from __future__ import annotations

import re
from pathlib import Path

from odal.common.errors import ConfigError

_TOKEN = re.compile(r"""\s*(?:(\#[^\n]*)|([{}:;,])|("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|([^\s{}:;,"'#]+))""")


def load_label_map(path: Path) -> list[str]:
    """Label names of an OD API ``label_map.pbtxt``, ordered by id; ids must be exactly 1..N. Raises ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"label map {path}: cannot be read: {error}") from error
    try:
        fields = _parse_text_proto(text)
    except ValueError as error:
        raise ConfigError(f"label map {path}: {error}") from error
    names: dict[int, str] = {}
    for key, item in fields:
        if key != "item":
            continue
        if not isinstance(item, list):
            raise ConfigError(f"label map {path}: 'item' must be a message {{ ... }}")
        values = dict((k, v) for k, v in item if not isinstance(v, list))
        ident, name = values.get("id"), values.get("name")
        if not isinstance(ident, int):
            raise ConfigError(f"label map {path}: an item has no integer id (name {name!r})")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"label map {path}: item id {ident} has no name")
        if ident in names:
            raise ConfigError(f"label map {path}: id {ident} is used twice ({names[ident]!r}, {name!r})")
        if name in names.values():
            raise ConfigError(f"label map {path}: name {name!r} is used twice")
        names[ident] = name
    if not names:
        raise ConfigError(f"label map {path}: has no items")
    if sorted(names) != list(range(1, len(names) + 1)):
        raise ConfigError(f"label map {path}: ids must be 1..{len(names)} without gaps, found {sorted(names)}")
    return [names[i] for i in range(1, len(names) + 1)]


def _tokens(text: str) -> list[tuple[str, object, int]]:
    """(kind, value, line) tokens: kind is 'punct', 'str' or 'word'; comments dropped."""
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            if text[pos:].strip():
                raise ValueError(f"line {text.count(chr(10), 0, pos) + 1}: cannot parse {text[pos:pos + 20]!r}")
            break
        line = text.count("\n", 0, match.start(match.lastindex or 0)) + 1
        if match.group(2):
            tokens.append(("punct", match.group(2), line))
        elif match.group(3):
            tokens.append(("str", _unquote(match.group(3)), line))
        elif match.group(4):
            tokens.append(("word", match.group(4), line))
        pos = match.end()
    return tokens


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def _unquote(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), quoted[1:-1])


def _parse_text_proto(text: str) -> list:
    """A protobuf text-format document as nested [(key, value)] lists (a message value is itself such a list)."""
    tokens = _tokens(text)
    stack: list[list] = [[]]
    i = 0
    while i < len(tokens):
        kind, value, line = tokens[i]
        if kind == "punct" and value == "}":
            if len(stack) == 1:
                raise ValueError(f"line {line}: unexpected '}}'")
            stack.pop()
            i += 1
            continue
        if kind == "punct" and value in ";,":
            i += 1
            continue
        if kind != "word":
            raise ValueError(f"line {line}: expected a field name, found {value!r}")
        i += 1
        if i < len(tokens) and tokens[i][:2] == ("punct", ":"):
            i += 1
        if i >= len(tokens):
            raise ValueError(f"line {line}: field {value!r} has no value")
        vkind, vvalue, vline = tokens[i]
        i += 1
        if (vkind, vvalue) == ("punct", "{"):
            message: list = []
            stack[-1].append((value, message))
            stack.append(message)
        elif vkind == "str":
            while i < len(tokens) and tokens[i][0] == "str":  # adjacent strings concatenate
                vvalue += tokens[i][1]
                i += 1
            stack[-1].append((value, vvalue))
        elif vkind == "word":
            stack[-1].append((value, _scalar(vvalue)))
        else:
            raise ValueError(f"line {vline}: field {value!r} has no value")
    if len(stack) != 1:
        raise ValueError("a '{' is not closed")
    return stack[0]


def _scalar(word: str) -> object:
    try:
        return int(word, 0)
    except ValueError:
        pass
    try:
        return float(word)
    except ValueError:
        return word
