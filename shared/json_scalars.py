"""Booleans and numbers in requests take their JSON type only.

Pydantic's lax mode turns ``"stream": 0.0`` into ``False`` and ``"temperature": "0.5"`` into
``0.5``: a request the schema says is wrong would be served by a guess. Pydantic's strict mode
refuses those but also refuses enum values given as strings in Python, which is how the code
builds requests. So request models check just their scalar fields before pydantic converts
them: a ``bool`` field takes ``true``/``false``, an ``int`` or ``float`` field a number (never
a string or a boolean). The errors are pydantic's own (``bool_type``, ``int_type``,
``float_type``) at the field, so they read and locate like any other validation error.
"""

from __future__ import annotations

import functools
import numbers
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails

_ERROR_TYPES: dict[type, str] = {bool: "bool_type", int: "int_type", float: "float_type"}


def _scalar(annotation: Any) -> type | None:
    """``bool``, ``int`` or ``float`` when the annotation is one of them (or it or None);
    None for anything else (no check)."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if annotation in _ERROR_TYPES:
        return typing.cast(type, annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _scalar(members[0])
    return None


@functools.cache
def scalar_fields(model: type[BaseModel]) -> dict[str, type]:
    """The model's fields that are a bool, an int or a float (optionally None)."""
    fields = {name: _scalar(info.annotation) for name, info in model.model_fields.items()}
    return {name: kind for name, kind in fields.items() if kind is not None}


def _wrong(kind: type, value: Any) -> bool:
    if value is None:
        return False
    if kind is bool:
        return not isinstance(value, bool)
    return isinstance(value, bool) or not isinstance(value, numbers.Real)  # numpy's too


def check_scalars(model: type[BaseModel], data: Any) -> Any:
    """A ``model_validator(mode="before")`` body: ``data`` unchanged, or a ValidationError
    with one error per scalar field whose value has another JSON type."""
    if not isinstance(data, dict):
        return data
    errors = [
        InitErrorDetails(type=_ERROR_TYPES[kind], loc=(name,), input=data[name])
        for name, kind in scalar_fields(model).items()
        if name in data and _wrong(kind, data[name])
    ]
    if errors:
        raise ValidationError.from_exception_data(model.__name__, errors)
    return data
