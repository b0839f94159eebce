"""Registry of distillation methods: name -> :class:`~kdlab.distill.base.Distiller` class."""

from __future__ import annotations

import importlib
from typing import Any

from .. import catalog
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
    "sp": "sp",
    "cc": "cc",
    "vid": "vid",
    "pkt": "pkt",
    "dkd": "dkd",
    "dist": "dist",
    "ofd": "ofd",
    "reviewkd": "reviewkd",
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
    """Every option of a method with its default value (declared in :mod:`kdlab.catalog`)."""
    method_class(name)
    return catalog.method_defaults(name)


def resolve_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Defaults overridden by ``options``, typed and checked by :mod:`kdlab.catalog`."""
    method_class(name)
    return catalog.resolve_options(name, options)


def build_distiller(name: str, student_shapes, teacher_shapes,
                    options: dict[str, Any]) -> Distiller:
    cls = method_class(name)
    return cls(student_shapes, teacher_shapes, resolve_options(name, options))


__all__ = ["Distiller", "PretrainContext", "Preempted", "METHODS", "METHOD_NAMES",
           "register", "method_class", "method_defaults", "resolve_options", "build_distiller"]
