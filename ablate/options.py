"""Options: one typed way to declare what a valid value is, and one wording for each mistake.

An option is declared once: on a TrainConfig field (`option(default, ge=1)`, its type read from
the annotation) or by a model's signature (`from_annotation`). Every source of a value -- a study
file, a flag, `--factor KEY=A,B`, `--model-arg [MODEL.]KEY=VALUE`, the tuner's space -- hands it
to `coerce` under its own name ('s.toml: line 4, column 1: train.lr', '--factor lr',
'--model-arg unet.base_channels', '--lr'), so a mistake reads the same from all of them:

    SOURCE: expected RULE, got VALUE          e.g. --lr: expected a number > 0, got 'abc'

Standard library only: the command line imports this before `--help`."""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Iterable

from ablate.errors import AblateError

# Where a TrainConfig option may be set in a study (`Option.scope`)
CELL = "cell"  # per cell, by the study's top level: model (models), model_args, seed (seeds)
TOGGLE = "toggle"  # switched off and on by `toggles`, or a factor
STUDY = "study"  # [train] only: one dataset and one execution set-up per study
RUN = "run"  # [train], [model_train.MODEL] and [factors]

# How a command line writes true, false and none (a study file may write on/off too)
_TRUE = ("true", "on", "yes", "1")
_FALSE = ("false", "off", "no", "0")
_NONE = ("none", "null", "")
_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*")
# An image size: one integer (square) or two, as HxW, "H W" or "H,W"; the whole text must match,
# so a dangling "64x" or a "7x9x3" is refused instead of read as 64x64 or cut short.
_SIZE_TEXT = re.compile(r"\s*([+-]?\d+)(?:(?:\s*[xX,]\s*|\s+)([+-]?\d+))?\s*")
_WORDS = {bool: "true or false (on/off, yes/no, 1/0)", int: "an integer", float: "a number", str: "a string",
          dict: "a table"}
_BAD = object()  # a value that cannot be read as the option's type


@dataclass(frozen=True)
class Option:
    """What a valid value of one option is. `kind` is bool, int, float, str, dict, tuple (an
    image size (H, W)) or a tuple of these (tried in order); bounds apply to a number and to
    each side of an image size."""

    kind: type | tuple[type, ...] = str
    optional: bool = False  # None is a value too ("none" on a command line)
    ge: float | None = None  # bounds: >= ge, > gt, <= le, < lt
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple = ()  # the accepted values, when they are a fixed set
    also: tuple[str, ...] = ()  # words accepted besides the kind's values ("auto")
    step: int = 1  # an image size: each side a multiple of this
    pattern: str | None = None  # a string must match this regular expression in full
    words: str = ""  # the rule in words, where the generated one would not say it
    scope: str = RUN  # where a TrainConfig option may be set in a study (CELL, TOGGLE, STUDY, RUN)

    @property
    def kinds(self) -> tuple[type, ...]:
        return self.kind if isinstance(self.kind, tuple) else (self.kind,)

    @property
    def rule(self) -> str:
        """A valid value in words: 'a number > 0', 'one of ce, dice', "'auto' or an integer >= 1"."""
        if self.words:
            text = self.words
        elif self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        elif tuple in self.kinds:
            text = (f"an integer or HEIGHTxWIDTH, each positive and divisible by {self.step} "
                    f"({2 * self.step} or {2 * self.step}x{3 * self.step})")
        else:
            text = " or ".join(_WORDS[k] for k in self.kinds) + self._bounds()
        also = [repr(a) for a in self.also] + [text] + (["none"] if self.optional else [])
        return " or ".join(also)

    def _bounds(self) -> str:
        low = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None else None
        high = (self.le, "]") if self.le is not None else (self.lt, ")") if self.lt is not None else None
        if low and high:
            return f" in {low[0]}{_num(low[1])}, {_num(high[0])}{high[1]}"
        if low:
            return f" {'>=' if low[0] == '[' else '>'} {_num(low[1])}"
        if high:
            return f" {'<=' if high[1] == ']' else '<'} {_num(high[0])}"
        return ""


def coerce(option: Option, value: Any, source: str, *, text: bool = False) -> Any:
    """`value` as `option` says, or one line `SOURCE: expected RULE, got VALUE`. With `text`, a
    string is command-line text ('1e-3', 'on', 'none', '64x96') read as the option's kind;
    without it, a value must have its kind already, as a study file's does (an integer where
    a number goes is widened to a float; a bool also takes on/off). An image size is (H, W)."""
    typed = _read(option, value, text)
    if typed is _BAD:
        raise AblateError(f"{source}: expected {option.rule}, got {value!r}")
    if not _valid(option, typed):
        raise AblateError(f"{source}: expected {option.rule}, got {_shown(typed)}{_hint(option, typed)}")
    return typed


def coerce_range(option: Option, values: Any, source: str) -> tuple[Any, Any]:
    """[low, high] of a searched range: both ends valid values of `option`, low < high."""
    if not isinstance(values, (list, tuple)) or len(values) != 2:
        raise AblateError(f"{source}: expected a range [low, high], got {values!r}")
    low, high = (coerce(option, v, source) for v in values)
    if not low < high:
        raise AblateError(f"{source}: expected a range [low, high] with low < high, got {list(values)!r}")
    return low, high


def unknown_key(source: str, key: str, accepted: Iterable[str], hint: str = "") -> AblateError:
    """The one line for a key nothing declares: `SOURCE: unknown key 'KEY'; accepted: ...`."""
    return AblateError(f"{source}: unknown key {key!r}; accepted: {', '.join(accepted) or 'none'}{hint}")


def split_assignment(text: str, source: str, form: str) -> tuple[str, str]:
    """'KEY=VALUE' as (KEY, VALUE); anything else is `SOURCE: expected FORM, got TEXT`."""
    key, eq, value = str(text).partition("=")
    if not eq or not key.strip():
        raise AblateError(f"{source}: expected {form}, got {text!r}")
    return key.strip(), value


def option(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **rule: Any) -> Any:
    """A dataclass field that declares its option (`Option`'s fields but kind and optional,
    which `declared` reads from the field's annotation)."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"option": rule})


def declared(cls: type) -> dict[str, Option]:
    """Field name -> Option of a dataclass whose fields are declared with `option`."""
    hints = typing.get_type_hints(cls)
    return {f.name: from_annotation(hints[f.name], **f.metadata.get("option", {})) for f in dataclasses.fields(cls)}


def from_annotation(annotation: Any, **rule: Any) -> Option:
    """The Option of an annotation: int, `float | None`, `tuple[int, int]` (an image size), ..."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = typing.get_args(annotation) if union else (annotation,)
    kinds = tuple(typing.get_origin(a) or a for a in args if a is not type(None))
    return Option(kind=kinds[0] if len(kinds) == 1 else kinds, optional=type(None) in args, **rule)


def flag(name: str) -> str:
    """The command-line flag of an option: image_size -> --image-size."""
    return "--" + name.replace("_", "-")


# --------------------------------------------------------------------------- reading
def _read(option: Option, value: Any, text: bool) -> Any:
    if isinstance(value, str) and value.strip() in option.also:
        return value.strip()
    if value is None or (text and option.optional and isinstance(value, str) and value.strip().lower() in _NONE):
        return None if option.optional else _BAD
    for kind in option.kinds:
        typed = _read_kind(kind, value, text)
        if typed is not _BAD:
            return typed
    return _BAD


def _read_kind(kind: type, value: Any, text: bool) -> Any:
    if kind is tuple:
        return _size(value)
    if kind is bool and isinstance(value, str):  # a study file writes toggles on/off too
        word = value.strip().lower()
        return True if word in _TRUE else False if word in _FALSE else _BAD
    if text and isinstance(value, str) and kind in (int, float):
        return _number(kind, value)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else _BAD
    if kind is int and isinstance(value, bool):
        return _BAD  # True is never a count
    return value if isinstance(value, kind) else _BAD


def _number(kind: type, text: str) -> Any:
    if kind is int:
        return int(text) if _INT_TEXT.fullmatch(text) else _BAD
    try:
        number = float(text)
    except ValueError:
        return _BAD
    return number if math.isfinite(number) else _BAD


def _size(value: Any) -> Any:
    """64, "64", "64x96" (or "64 96", "64,96"), [64] or [64, 96] as (H, W)."""
    match = _SIZE_TEXT.fullmatch(value) if isinstance(value, str) else None
    if match:
        parts = [p for p in match.groups() if p is not None]
    elif isinstance(value, (list, tuple)) and 1 <= len(value) <= 2:
        parts = list(value)
    else:
        parts = [value]
    if not all(_INT_TEXT.fullmatch(p) if isinstance(p, str) else isinstance(p, int) and not isinstance(p, bool)
               for p in parts):
        return _BAD
    return int(parts[0]), int(parts[-1])


def _valid(option: Option, value: Any) -> bool:
    if value is None or value in option.also:
        return True
    if option.choices:
        return value in option.choices
    if option.pattern is not None and isinstance(value, str):
        return re.fullmatch(option.pattern, value) is not None
    if isinstance(value, tuple):
        return all(_in_bounds(option, side) and side % option.step == 0 for side in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _in_bounds(option, value)
    return True


def _in_bounds(option: Option, x: float) -> bool:
    return ((option.ge is None or x >= option.ge) and (option.gt is None or x > option.gt)
            and (option.le is None or x <= option.le) and (option.lt is None or x < option.lt))


def _shown(value: Any) -> str:
    """A read value as a message shows it: an image size as 48 or 48x64, else its repr."""
    if isinstance(value, tuple):
        return str(value[0]) if value[0] == value[1] else f"{value[0]}x{value[1]}"
    return repr(value)


def _hint(option: Option, value: Any) -> str:
    """'; try 64x64' for an image size of positive sides not divisible by the step."""
    if not isinstance(value, tuple) or option.step == 1 or min(value) < 1:
        return ""
    return "; try " + _shown(tuple(max(option.step, option.step * round(side / option.step)) for side in value))


def _num(x: float) -> str:
    return f"{x:g}"
