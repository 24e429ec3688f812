"""Study files, read for the grid and the tuner alike: a TOML file whose problems are one-line
errors naming the file, the line and column where the key is written, and the key."""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ablate.errors import AblateError
from ablate.options import unknown_key


@dataclass(frozen=True)
class Source:
    """Where a study came from (a file, or the built-in quick study) and its text, so an error
    can point at the line that wrote a key."""

    name: str  # the file's path as given, or a description
    text: str = ""  # the file's text ("" when there is no file)

    def where(self, *keys: str) -> str:
        """'FILE: line L, column C' of the line that writes `keys` (or its table), else 'FILE'."""
        found = locate(self.text, keys) if self.text and keys else None
        return f"{self.name}: line {found[0]}, column {found[1]}" if found else self.name

    def at(self, *keys: str) -> str:
        """The name of a value in messages: 'FILE: line L, column C: train.lr'."""
        return f"{self.where(*keys)}: {'.'.join(keys)}"


def read_study(path: str | Path, *, option: str = "--study") -> tuple[dict[str, Any], Source]:
    """The parsed file and its `Source`; a missing or unreadable file names `option`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AblateError(f"{option} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AblateError(f"{option} {path}: cannot read it ({exc})") from None
    try:
        return tomllib.loads(text), Source(str(path), text)
    except tomllib.TOMLDecodeError as exc:
        raise AblateError(_syntax_error(path, text, str(exc))) from None


def read_toml(path: str | Path, *, option: str = "--study") -> dict[str, Any]:
    """The parsed file; a missing or unreadable file names `option`."""
    return read_study(path, option=option)[0]


def table(value: Any, label: str) -> dict:
    """`value` if it is a TOML table, else `LABEL: expected a table, got VALUE`."""
    if not isinstance(value, dict):
        raise AblateError(f"{label}: expected a table, got {value!r}")
    return value


def check_keys(values: dict, accepted: Iterable[str], source: Source, *path: str, hint: str = "") -> None:
    """Refuse a key of the table at `path` that is not `accepted`, pointing at its line."""
    accepted = tuple(accepted)
    for key in values:
        if key not in accepted:
            raise unknown_key(source.where(*path, key), ".".join((*path, key)), accepted, hint)


# --------------------------------------------------------------------------- where a key is written
_KEY_PART = r'(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')'
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER = re.compile(rf"(\s*)\[\s*({_DOTTED})\s*\]\s*(?:#.*)?$")  # [table] (not [[array of tables]])
_ASSIGN = re.compile(rf"(\s*)({_DOTTED})\s*=")


def locate(text: str, keys: tuple[str, ...]) -> tuple[int, int] | None:
    """(line, column), from 1, of where `keys` (or the longest part of them written) is set:
    a `key = ...` line within its [table], a dotted key, or the [table] header. Best effort
    over the common forms of TOML; None when nothing of `keys` is written."""
    best, depth, current, quote = None, 0, (), None
    for number, line in enumerate(text.split("\n"), 1):
        if quote:  # inside a multi-line string: nothing here is a key
            quote = None if line.count(quote) % 2 else quote
            continue
        header, assign = _HEADER.match(line), _ASSIGN.match(line)
        if header:
            current, found, column = _parts(header[2]), _parts(header[2]), len(header[1]) + 1
        elif assign:
            found, column = current + _parts(assign[2]), len(assign[1]) + 1
        else:
            continue
        matched = _common(found, keys)
        if matched > depth and matched in (len(found), len(keys)):  # a key of `keys`, or the first within it
            best, depth = (number, column), matched
        quote = next((q for q in ('"""', "'''") if line.count(q) % 2), None)
    return best


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(part.strip("\"'") for part in re.findall(_KEY_PART, dotted))


def _common(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _syntax_error(path: Path, text: str, msg: str) -> str:
    """tomllib says '... (at line 2, column 18)' or '... (at end of document)'; say it as
    'FILE: line L, column C: ...' in both cases."""
    at = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
    if at:
        return f"{path}: line {at[1]}, column {at[2]}: {msg[:at.start()]}"
    end = re.search(r"\s*\(at end of document\)$", msg)
    if end:
        lines = text.split("\n")
        return f"{path}: line {len(lines)}, column {len(lines[-1]) + 1}: {msg[:end.start()]} (at the end of the file)"
    return f"{path}: {msg}"
