"""Study files, read for the grid and the tuner alike: a TOML file whose problems are one-line
errors naming the file and, for a syntax error, its line and column."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from ablate.errors import AblateError


def read_toml(path: str | Path, *, option: str = "--study") -> dict[str, Any]:
    """The parsed file; a missing or unreadable file names `option`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AblateError(f"{option} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AblateError(f"{option} {path}: cannot read it ({exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AblateError(_syntax_error(path, text, str(exc))) from None


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
