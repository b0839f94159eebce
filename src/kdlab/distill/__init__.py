"""Registry of distillation methods: name -> :class:`~kdlab.distill.base.Distiller` class."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import UserError
from .base import Distiller, PretrainContext, Preempted

METHODS: dict[str, type[Distiller]] = {}

# Module of each method; imported on first use so that one broken method cannot hide others.
_METHOD_MODULES = {
    "logit": "logit",
    "fitnets": "fitnets",
    "attention_transfer": "attention",
    "factor_transfer": "factor_transfer",
    "nst": "nst",
    "rkd": "rkd",
}
METHOD_NAMES = tuple(_METHOD_MODULES)


def register(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator: make a method available under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Distiller]:
    if name not in _METHOD_MODULES:
        raise UserError(f"unknown distillation method {name!r}: expected one of "
                        f"none, {', '.join(METHOD_NAMES)}")
    if name not in METHODS:
        importlib.import_module(f"{__name__}.{_METHOD_MODULES[name]}")
    return METHODS[name]


def method_defaults(name: str) -> dict[str, Any]:
    """Every option of a method with its default value."""
    return dict(method_class(name).defaults)


def resolve_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Defaults overridden by ``options``; unknown option names are a UserError."""
    defaults = method_defaults(name)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)} for method {name!r}: "
                        f"expected {', '.join(sorted(defaults)) or 'none'}")
    merged = dict(defaults)
    for key, value in options.items():
        default = defaults[key]
        if isinstance(default, bool):
            value = _to_bool(name, key, value)
        elif isinstance(default, (int, float)) and not isinstance(value, bool):
            try:
                value = type(default)(value)
            except (TypeError, ValueError):
                raise UserError(f"option {key}={value!r} for method {name!r}: "
                                f"expected {type(default).__name__}") from None
        elif isinstance(default, str):
            value = str(value)
        merged[key] = value
    return merged


def _to_bool(method: str, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise UserError(f"option {key}={value!r} for method {method!r}: expected true or false")


def build_distiller(name: str, student_shapes, teacher_shapes,
                    options: dict[str, Any]) -> Distiller:
    cls = method_class(name)
    return cls(student_shapes, teacher_shapes, resolve_options(name, options))


__all__ = ["Distiller", "PretrainContext", "Preempted", "METHODS", "METHOD_NAMES",
           "register", "method_class", "method_defaults", "resolve_options", "build_distiller"]
