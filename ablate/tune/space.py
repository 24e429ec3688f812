"""Tuner, its search spaces: every parameter the tuner knows with its default range (`PARAMS`),
each model's default space (`DEFAULT_SPACE`), and how a study file's `[tune]` table narrows,
widens or fixes them (`apply_overrides`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna

from ablate.config import TOGGLES, TrainConfig
from ablate.errors import AblateError


def _anything(v: Any) -> bool:
    return True


@dataclass(frozen=True)
class Param:
    """One searchable hyperparameter: a log-uniform float range or a set of choices."""

    low: float | None = None  # log-uniform range [low, high] when choices is empty
    high: float | None = None
    choices: tuple = ()
    rule: str = ""  # what a valid value is, for error messages
    # module-level functions only: a spec is pickled into worker processes
    valid: Callable[[Any], bool] = field(default=_anything, compare=False, repr=False)

    @property
    def is_range(self) -> bool:
        return not self.choices

    def contains(self, value: Any) -> bool:
        if self.is_range:
            return isinstance(value, (int, float)) and self.low <= value <= self.high
        return value in self.choices and type(value) is type(self.choices[self.choices.index(value)])

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.is_range:
            return trial.suggest_float(name, self.low, self.high, log=True)
        return trial.suggest_categorical(name, list(self.choices))

    def describe(self) -> dict:
        if self.is_range:
            return {"type": "log-uniform", "low": self.low, "high": self.high}
        return {"type": "choice", "choices": list(self.choices)}

    def clip(self, value: Any) -> Any:
        """`value` if the space holds it, else the nearest value it holds: a range's bound, or
        the closest numeric choice (the lower of two as close; the first choice otherwise)."""
        if self.contains(value):
            return float(value) if self.is_range else value
        if self.is_range:
            return self.low if not isinstance(value, (int, float)) or value < self.low else self.high
        numeric = [c for c in self.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and numeric:
            return min(numeric, key=lambda c: (abs(c - value), c))
        return self.choices[0]

    def text(self) -> str:
        """'log-uniform [0.0001, 0.01]' or 'one of [8, 16, 32]': the plan's and the report's words."""
        if self.is_range:
            return f"log-uniform [{self.low:g}, {self.high:g}]"
        return f"one of {list(self.choices)}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(v: Any) -> bool:
    return _is_int(v) and v >= 1


def _odd_kernel(v: Any) -> bool:
    return _is_int(v) and v >= 1 and v % 2 == 1


def _positive_float(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _non_negative(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _choice(*values: Any, rule: str, valid: Callable[[Any], bool]) -> Param:
    return Param(choices=tuple(values), rule=rule, valid=valid)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _bool_choice() -> Param:
    return _choice(False, True, rule="true or false", valid=_is_bool)


def _log_range(low: float, high: float) -> Param:
    return Param(low=low, high=high, rule="a number > 0", valid=_positive_float)


_KERNEL = dict(rule="an odd integer >= 1", valid=_odd_kernel)

# Every parameter the tuner knows, with its default range, declared once. Names are
# TrainConfig fields or model arguments (`model_params(model)`); a model's arguments only
# apply to that model.
PARAMS: dict[str, Param] = {
    "lr": _log_range(1e-4, 1e-2),
    "weight_decay": _log_range(1e-6, 1e-2),
    # Batch 4 is left out of the default: on a CPU it costs about twice the time per epoch of
    # batch 8 for the same images, and with the widest U-Net it was the search's slow corner
    # (400 s for 12 epochs at 128x160 px, issue 24). A study file can add it: batch_size = [4, 8, 16, 32].
    "batch_size": _choice(8, 16, 32, rule="a positive integer", valid=_positive_int),
    # custom: one kernel size per layer group — the first conv; the other five encoder convs;
    # the six decoder deconvs.
    "first_kernel": _choice(3, 5, 7, 9, 11, **_KERNEL),
    "encoder_kernel": _choice(3, 5, 7, **_KERNEL),
    "decoder_kernel": _choice(3, 5, 7, **_KERNEL),
    "base_channels": _choice(8, 16, 32, rule="a positive integer", valid=_positive_int),  # unet width
    "freeze_encoder": _bool_choice(),  # resnet18
    **{toggle: _bool_choice() for toggle in TOGGLES},  # searched with --tune-toggles
}

# What `ablate tune --model M` searches unless the study file says otherwise.
DEFAULT_SPACE: dict[str, tuple[str, ...]] = {
    "custom": ("lr", "batch_size", "first_kernel", "encoder_kernel", "decoder_kernel"),
    "baseline": ("lr", "batch_size", "weight_decay"),
    "resnet18": ("lr", "batch_size", "weight_decay", "freeze_encoder"),
    "unet": ("lr", "batch_size", "weight_decay", "base_channels"),
}

EXTERNAL_SPACE = ("lr", "batch_size", "weight_decay")  # `--model pkg.mod:build` or smp:ARCH/ENCODER
CONFIG_FIELDS = ("lr", "weight_decay", "batch_size", *TOGGLES)  # searchable TrainConfig fields; the rest are model args


def applicable_params(model: str) -> list[str]:
    """The parameters a study of `model` may search: config fields plus its own arguments."""
    from ablate.models import model_params  # torch: kept out of `ablate tune --help`

    own = model_params(model)  # raises for an unknown model
    return [name for name in PARAMS if name in CONFIG_FIELDS or name in own]


def default_space(model: str, *, tune_toggles: bool = False) -> dict[str, Param]:
    from ablate.models import external_names  # torch, as above

    applicable_params(model)  # unknown model -> AblateError
    if model not in DEFAULT_SPACE and not external_names([model]):
        raise AblateError(f"model {model!r} has no declared search space; add it to ablate.tune.DEFAULT_SPACE")
    # a model from elsewhere: the training settings every model shares (its own arguments via [tune])
    names = list(DEFAULT_SPACE.get(model, EXTERNAL_SPACE)) + (list(TOGGLES) if tune_toggles else [])
    return {name: PARAMS[name] for name in names}


def apply_overrides(model: str, space: dict[str, Param], overrides: dict[str, Any],
                    *, where: str = "[tune]") -> tuple[dict[str, Param], dict[str, Any]]:
    """Narrow, widen or fix parameters: `lr = [1e-4, 3e-3]` (a range), `batch_size = [8, 16]`
    (the choices), `encoder_kernel = 3` (fixed, no longer searched). A parameter the
    model's default space lacks (e.g. weight_decay for custom) is added.
    Returns the new space and the fixed values."""
    known = applicable_params(model)
    space, fixed = dict(space), {}
    for name, value in overrides.items():
        if name not in known:
            raise AblateError(f"{where}: unknown parameter {name!r} for model {model!r}; known: {', '.join(known)}")
        param = PARAMS[name]
        if isinstance(value, list):
            space[name] = _narrowed(name, param, value, where)
        elif isinstance(value, dict):
            raise AblateError(f"{where}: {name} must be a list (a range or choices) or one value, not a table")
        else:
            # A fixed value may sit where a log range cannot reach (weight_decay = 0);
            # TrainConfig has the last word on it.
            ok = _non_negative(value) if param.is_range else param.valid(value)
            if not ok:
                raise AblateError(f"{where}: {name} = {value!r} is not {'a number >= 0' if param.is_range else param.rule}")
            space.pop(name, None)
            fixed[name] = float(value) if param.is_range else value
    return space, fixed


def _narrowed(name: str, param: Param, values: list, where: str) -> Param:
    if not values:
        raise AblateError(f"{where}: {name} = [] is empty; give [low, high] or a list of choices")
    for v in values:
        if not param.valid(v):
            raise AblateError(f"{where}: {name} = {values!r}: {v!r} is not {param.rule}")
    if param.is_range:
        if len(values) != 2:
            raise AblateError(f"{where}: {name} = {values!r} must be [low, high] (a log-uniform range)")
        low, high = float(values[0]), float(values[1])
        if low > high:
            raise AblateError(f"{where}: {name} = {values!r} is inverted (low > high); write [{values[1]}, {values[0]}]")
        if low == high:
            raise AblateError(f"{where}: {name} = {values!r} is an empty range; write {name} = {values[0]} to fix it")
        return Param(low=low, high=high, rule=param.rule, valid=param.valid)
    return Param(choices=tuple(dict.fromkeys(values)), rule=param.rule, valid=param.valid)


def describe_space(space: dict[str, Param]) -> dict[str, dict]:
    return {name: p.describe() for name, p in space.items()}


def default_trial(space: dict[str, Param], base: TrainConfig, given: dict[str, Any] | None = None
                  ) -> tuple[dict[str, Any], list[str]]:
    """The default configuration as a trial's params (the tuner's trial 0): each searched
    parameter's value in `given` (a study file's [train] or [model_args.MODEL]), else the fixed
    configuration's (`base`: TrainConfig's default or a flag's value), else the model's default,
    clipped into the space. Returns the params and one note per value that had to be clipped."""
    from ablate.models import model_params  # torch: kept out of `ablate tune --help`

    own = model_params(base.model)
    params, notes = {}, []
    for name, param in space.items():
        if given and name in given:
            value = given[name]
        elif name in CONFIG_FIELDS:
            value = getattr(base, name)
        else:
            value = base.model_args.get(name, own.get(name, (None, None))[1])
        params[name] = param.clip(value)
        if not param.contains(value):
            notes.append(f"default {name}={value!r} is outside the search space ({param.text()}); "
                         f"the default trial uses {params[name]!r}")
    return params, notes


def config_for(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The run configuration of one trial: `base` with the sampled values put in place."""
    config_values = {k: v for k, v in params.items() if k in CONFIG_FIELDS}
    model_args = {**base.model_args, **{k: v for k, v in params.items() if k not in CONFIG_FIELDS}}
    return base.replace(**config_values, model_args=model_args)
