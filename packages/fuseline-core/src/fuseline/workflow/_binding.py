"""Giving each ``run_step`` parameter its value (DESIGN.md section 3, "Binding")."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

from fuseline.depends import Depends
from fuseline.errors import StepBindingError
from fuseline.step import Step

__all__ = ["BoundCall", "bind_arguments"]

_EMPTY = inspect.Parameter.empty


@dataclass(frozen=True)
class _Parameter:
    name: str
    depends: Depends | None
    has_default: bool
    default: Any
    adapter: pydantic.TypeAdapter[Any] | None


@dataclass
class BoundCall:
    """The keyword arguments for ``run_step`` and the verdict of its conditions."""

    kwargs: dict[str, Any]
    conditions_met: bool


_PARAMETERS: dict[type[Step], tuple[_Parameter, ...]] = {}


def _parameters(cls: type[Step]) -> tuple[_Parameter, ...]:
    known = _PARAMETERS.get(cls)
    if known is None:
        known = _PARAMETERS[cls] = _inspect_parameters(cls)
    return known


def _inspect_parameters(cls: type[Step]) -> tuple[_Parameter, ...]:
    function = cls.run_step
    try:
        hints = typing.get_type_hints(function)
    except Exception:
        hints = {}
    params: list[_Parameter] = []
    for name, param in inspect.signature(function).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(name, Any)
        adapter = None if annotation is Any else pydantic.TypeAdapter(annotation)
        depends = param.default if isinstance(param.default, Depends) else None
        params.append(
            _Parameter(
                name=name,
                depends=depends,
                has_default=param.default is not _EMPTY and depends is None,
                default=None if param.default is _EMPTY else param.default,
                adapter=adapter,
            )
        )
    return tuple(params)


def _validate(step: Step, param: _Parameter, value: Any, source: str) -> Any:
    if param.adapter is None or value is None:
        return value
    try:
        return param.adapter.validate_python(value)
    except pydantic.ValidationError as exc:
        raise StepBindingError(
            f"Step {step.name!r} parameter {param.name!r} cannot accept {source}: "
            f"{exc.errors(include_url=False)}. Make the annotation match what is passed."
        ) from exc


def bind_arguments(
    step: Step,
    results: Mapping[str, Any],
    inputs: Mapping[str, Any],
    predecessors: Sequence[str],
) -> BoundCall:
    """Work out ``run_step``'s keyword arguments.

    Args:
        step: The step about to run.
        results: Results of the step's predecessors by step name (a skipped
            or absent predecessor binds None).
        inputs: The run's workflow inputs.
        predecessors: Names of the step's direct predecessors.

    Raises:
        StepBindingError: A parameter has no value, or its value does not match
            the parameter's annotation.
    """
    kwargs: dict[str, Any] = {}
    conditions_met = True
    unbound: list[_Parameter] = []
    depends_sources: set[str] = set()
    for param in _parameters(type(step)):
        if param.depends is not None:
            members = [member.name for member in param.depends.steps]
            depends_sources.update(members)
            source = next((m for m in members if m in results), None)
            raw = results[source] if source is not None else None
            value = _validate(step, param, raw, f"the result of step {source!r}")
            kwargs[param.name] = value
            condition = param.depends.condition
            if condition is not None and conditions_met and not condition(value):
                conditions_met = False
        elif param.name in inputs:
            kwargs[param.name] = _validate(
                step, param, inputs[param.name], f"workflow input {param.name!r}"
            )
        else:
            unbound.append(param)
    if not conditions_met:
        return BoundCall(kwargs, conditions_met=False)
    if len(predecessors) == 1 and len(unbound) == 1 and predecessors[0] not in depends_sources:
        param = unbound.pop()
        source = predecessors[0]
        kwargs[param.name] = _validate(
            step, param, results.get(source), f"the result of step {source!r}"
        )
    required = [param for param in unbound if not param.has_default]
    if required:
        names = ", ".join(repr(p.name) for p in required)
        raise StepBindingError(
            f"Step {step.name!r} has no value for parameter(s) {names}: give a Depends(...) "
            "default, pass a workflow input of that name, or give the parameter a default."
        )
    for param in unbound:
        kwargs[param.name] = param.default
    return BoundCall(kwargs, conditions_met=True)
