"""Strict validation of a document against generated pydantic models (hera's Argo models
accept unknown keys; Kubernetes would drop them silently, so a typo such as ``endpont`` must
fail here instead)."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel


def _candidates(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [c for arg in typing.get_args(annotation) for c in _candidates(arg)]
    if origin is typing.Annotated:
        return _candidates(typing.get_args(annotation)[0])
    return [annotation]


def _check(annotation: Any, value: Any, path: str, problems: list[str]) -> None:
    for candidate in _candidates(annotation):
        origin = typing.get_origin(candidate)
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            if isinstance(value, dict):
                strict_problems(candidate, value, path, problems)
                return
        elif origin in (list, typing.List) and isinstance(value, list):  # noqa: UP006
            (item,) = typing.get_args(candidate) or (Any,)
            for i, element in enumerate(value):
                _check(item, element, f"{path}[{i}]", problems)
            return
        elif origin in (dict, typing.Dict) and isinstance(value, dict):  # noqa: UP006
            _, item = typing.get_args(candidate) or (str, Any)
            for key, element in value.items():
                _check(item, element, f"{path}.{key}", problems)
            return


def strict_problems(model: type[BaseModel], data: dict[str, Any], path: str = "",
                    problems: list[str] | None = None) -> list[str]:
    """Every key in ``data`` that ``model`` (recursively) does not define."""
    problems = [] if problems is None else problems
    fields = {}
    for name, info in model.model_fields.items():
        fields[info.alias or name] = info
        fields[name] = info
    for key, value in data.items():
        info = fields.get(key)
        if info is None:
            problems.append(f"{path}.{key}: unknown field of {model.__name__}".lstrip("."))
            continue
        _check(info.annotation, value, f"{path}.{key}".lstrip("."), problems)
    return problems
