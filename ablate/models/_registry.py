"""Model stage: the name → entry-point registry, `create_model`, `--model-arg [MODEL.]KEY=VALUE`
(each argument an ablate.options Option read from the entry point's signature), and what a
model's arguments mean for a run's identity.

Besides the registered names, every function here accepts the names of architectures from
elsewhere (ablate.models._external): an import path `pkg.mod:build` (options read from the
callable's signature: annotated bool/int/float/str or `X | None`, or typed by their default)
and `smp:Arch/encoder` (one option, `weights`: none | imagenet). Each is resolved once per
process, so the module hash in its identity is that of the code that was imported."""

from __future__ import annotations

import inspect
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ablate.errors import AblateError
from ablate.models import _external
from ablate.options import Option, coerce, from_annotation, split_assignment, unknown_key

ModelFn = Callable[..., nn.Module]

_MODELS: dict[str, ModelFn] = {}
_PARAMS: dict[str, dict[str, tuple[Any, Any]]] = {}
_IDENTITY: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
_CHECKS: dict[str, Callable[[dict[str, Any]], bool]] = {}  # name -> register_check hook
_RESOLVED: dict[str, tuple[_external.ExternalModel, dict[str, tuple[Any, Any]]]] = {}

# The argument types an entry point may declare; ablate.options reads and checks each.
_SCALARS = (bool, int, float, str)
_NUM_CLASSES = Option(int, ge=1)


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    """(int,) for `int`, (str, NoneType) for `str | None`; empty if unsupported."""
    if annotation in _SCALARS:
        return (annotation,)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if all(a in _SCALARS or a is type(None) for a in args):
            return args
    return ()


def register_model(fn: ModelFn) -> ModelFn:
    """Register `fn` under its own name. Its signature must be `(num_classes: int, *, ...)`
    with every option keyword-only, annotated (bool, int, float, str, or `X | None`) and
    defaulted, so the CLI can parse and type-check overrides from the signature alone."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    hints = typing.get_type_hints(fn)
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].name != "num_classes":
        raise TypeError(f"model entry point {name!r} must take num_classes as its first argument")
    options: dict[str, tuple[Any, Any]] = {}
    for p in params[1:]:
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty:
            raise TypeError(f"model {name!r}: option {p.name!r} must be keyword-only with a default")
        if not _allowed_types(hints.get(p.name)):
            raise TypeError(f"model {name!r}: option {p.name!r} has unsupported type {hints.get(p.name)!r}")
        options[p.name] = (hints[p.name], p.default)
    _MODELS[name] = fn
    _PARAMS[name] = options
    return fn


def register_identity(name: str, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Let model `name` say what its (defaults-filled) arguments mean for a run's identity,
    e.g. a weights file by its content hash instead of its path."""
    _require_known(name)
    _IDENTITY[name] = fn


def register_check(name: str, fn: Callable[[dict[str, Any]], bool]) -> None:
    """Let model `name` check its (defaults-filled) arguments without being built: `fn` raises
    an AblateError for what a build would refuse and returns whether a build (on the meta
    device) is still needed to check the rest, e.g. a weights file. A model whose builder
    imports a heavy library then costs `check_model` nothing when no build is needed."""
    _require_known(name)
    _CHECKS[name] = fn


def _with_defaults(name: str, model_args: dict[str, Any]) -> dict[str, Any]:
    """`model_args` on top of every default of model `name`."""
    return {key: default for key, (_, default) in model_params(name).items()} | model_args


def model_identity(name: str, model_args: dict[str, Any]) -> dict[str, Any]:
    """`model_args` with every default filled in (so an argument given explicitly at its
    default is the same run, and a changed default is a new one), resolved by the model's
    identity hook."""
    args = _with_defaults(name, model_args)
    if _external.is_external(name):
        return dict(sorted({**args, **_resolve(name)[0].identity}.items()))
    hook = _IDENTITY.get(name)
    return dict(sorted((hook(args) if hook else args).items()))


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def _require_known(name: str) -> None:
    if _external.is_external(name):
        _resolve(name)
    elif name not in _MODELS:
        raise AblateError(f"unknown model {name!r}; choose from: {', '.join(list_models())} "
                          "(or an import path MODULE:CALLABLE, or smp:ARCHITECTURE/ENCODER)")


def check_model_name(name: str, label: str | None = None) -> None:
    """Raise a one-line AblateError (prefixed by `label`, e.g. "study.toml: models") unless
    `name` is a registered model, an importable `pkg.mod:build` or an available smp model."""
    try:
        _require_known(name)
    except AblateError as exc:
        raise AblateError(f"{label}: {exc}" if label else str(exc)) from None


def external_names(names: Any) -> list[str]:
    """The names in `names` (a list, or a comma-separated string) written as models from
    elsewhere (`pkg.mod:build`, `smp:...`), not yet resolved: a list of choices can accept
    them and `check_model_name` then resolves each."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and _external.is_external(n)]


def _resolve(name: str) -> tuple[_external.ExternalModel, dict[str, tuple[Any, Any]]]:
    """The external model `name` and its options, resolved (imported, hashed) once per process."""
    if name not in _RESOLVED:
        model = _external.resolve(name)
        params = model.params if model.params is not None else _signature_options(name, model.build)
        _RESOLVED[name] = model, params
    return _RESOLVED[name]


def _signature_options(name: str, fn: Callable[..., Any]) -> dict[str, tuple[Any, Any]]:
    """A user callable's options: every parameter after the first (num_classes) that can be
    passed by keyword, typed by its annotation or else by its default's type."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: no options
        return {}
    try:
        hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: fall back to the defaults' types
        hints = {}
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not params or params[0].kind not in positional:
        raise AblateError(f"model {name}: the callable must take num_classes as its first positional argument")
    options: dict[str, tuple[Any, Any]] = {}
    for p in params[1:]:
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if p.kind is inspect.Parameter.POSITIONAL_ONLY or p.default is inspect.Parameter.empty:
            raise AblateError(f"model {name}: argument {p.name!r} needs a default and must be passable by keyword "
                              "(ablate passes num_classes and the model args given)")
        annotation = hints.get(p.name)
        if not _allowed_types(annotation):
            annotation = str | None if p.default is None else type(p.default)
        if _allowed_types(annotation):  # other types cannot be given from a study file or flag
            options[p.name] = (annotation, p.default)
    return options


def model_params(name: str) -> dict[str, tuple[Any, Any]]:
    """`{option: (annotation, default)}` of model `name`'s keyword-only options."""
    _require_known(name)
    if _external.is_external(name):
        return dict(_resolve(name)[1])
    return dict(_PARAMS[name])


def model_option(name: str, key: str, source: str | None = None) -> Option:
    """What a valid value of model `name`'s argument `key` is (read from its annotation); a key
    the model lacks is the one line `SOURCE: unknown key 'KEY'; accepted: ...`."""
    params = model_params(name)
    if key not in params:
        raise unknown_key(source or f"model {name!r}", key, params)
    return from_annotation(params[key][0])


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build model `name` with `num_classes` output channels; kwargs are its options."""
    model_params(name)  # an unknown model: its one line
    coerce(_NUM_CLASSES, num_classes, f"model {name!r}: num_classes")
    checked = {key: coerce(model_option(name, key), value, f"model {name!r}: {key}") for key, value in kwargs.items()}
    if not _external.is_external(name):
        return _MODELS[name](num_classes, **checked)
    return _build_external(name, num_classes, checked)


def _build_external(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    build = _resolve(name)[0].build
    try:
        model = build(num_classes, **kwargs)
    except AblateError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code: any error is "cannot build", said in one line
        message = str(exc).splitlines()[0] if str(exc) else ""
        raise AblateError(f"model {name}: building it failed ({type(exc).__name__}: {message})") from None
    if not isinstance(model, nn.Module):
        raise AblateError(f"model {name}: returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def check_model(name: str, model_args: dict[str, Any]) -> None:
    """Build model `name` once with `model_args`, so a bad argument (a missing weights file,
    weights that cannot be downloaded) is an input error before any data loads or trains.
    One of ablate's own models is built on the meta device: every argument, layer shape and
    weights file is checked as in a real build (files read, downloads attempted), but no
    weights are allocated or initialised (a tenth of the time). Code from elsewhere (an import
    path, smp, a model registered by another package) is built for real: its initialisation
    may need values. A model with a `register_check` hook is built only when its hook asks."""
    fn = None if _external.is_external(name) else _MODELS.get(name)
    if fn is None or not fn.__module__.startswith("ablate.models."):
        create_model(name, 2, **model_args)  # (an unknown name: its error)
        return
    check = _CHECKS.get(name)
    if check is not None and set(model_args) <= set(model_params(name)) and not check(_with_defaults(name, model_args)):
        return  # (an argument the model does not take: create_model's error, below)
    with torch.device("meta"), warnings.catch_warnings():
        # loading a checked weights file into meta parameters is the no-op it is meant to be
        warnings.filterwarnings("ignore", message=".*meta parameter.*no-op", category=UserWarning)
        create_model(name, 2, **model_args)


def parse_model_args(name: str, pairs: Iterable[str]) -> dict[str, Any]:
    """`--model-arg KEY=VALUE` of a run of model `name`: {"base_channels": 16, ...}, typed by its
    signature (see `model_args_from_flags`)."""
    params = model_params(name)  # an unknown model: its one line, even without arguments
    parsed = model_args_from_flags((name,), pairs)
    for model, args in parsed.items():  # OTHER.KEY: not an argument of this run
        if model != name:
            raise unknown_key("--model-arg", f"{model}.{next(iter(args))}", params)
    return parsed.get(name, {})


def model_args_from_flags(models: Sequence[str], pairs: Iterable[str]) -> dict[str, dict[str, Any]]:
    """`--model-arg [MODEL.]KEY=VALUE` for a run of `models`, as {model: {key: value}}: MODEL.KEY
    sets that model's argument (any model: a study may hold arguments of models it does not
    run), a bare KEY every model in `models` that has it. Values are typed by each model's
    signature; a key given twice for one model is refused."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, text = split_assignment(pair, "--model-arg", "[MODEL.]KEY=VALUE (e.g. unet.base_channels=16)")
        label = f"--model-arg {key}"
        for model, arg in _targets(models, key):
            if arg in out.get(model, {}):
                raise AblateError(f"{label}: given twice")
            out.setdefault(model, {})[arg] = coerce(model_option(model, arg, "--model-arg"), text, label, text=True)
    return out


def _targets(models: Sequence[str], key: str) -> list[tuple[str, str]]:
    """(model, argument) pairs that `--model-arg KEY=...` sets."""
    for model in (*models, *list_models()):
        if key.startswith(model + "."):
            return [(model, key[len(model) + 1:])]
    owners = [(model, key) for model in models if key in model_params(model)]
    if not owners:
        accepted = (list(model_params(models[0])) if len(models) == 1
                    else [f"{model}.{arg}" for model in models for arg in model_params(model)])
        raise unknown_key("--model-arg", key, accepted)
    return owners
