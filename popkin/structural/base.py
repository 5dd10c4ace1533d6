"""Structural models: the common interface and the registry of names used in model specs."""

from __future__ import annotations

from typing import Callable, Mapping, Protocol, runtime_checkable

__all__ = ["Structure", "check_parameter_names", "register", "get_structure", "structure_names"]


@runtime_checkable
class Structure(Protocol):
    """A structural model predicts each output at the event table's points.

    ``parameters`` are required, ``optional_parameters`` have defaults (``ALAG`` = 0, ``F`` = 1).
    ``predict(events, params)`` takes one value or one array over subjects per parameter,
    numpy or PyTensor, and returns the prediction at every point of ``events`` (the output
    each point's ``DVID`` selects).
    """

    name: str
    parameters: tuple[str, ...]
    optional_parameters: Mapping[str, float]
    compartments: tuple[str, ...]
    dose_compartment: int
    dosable: tuple[int, ...]
    observed: tuple[int, ...]
    outputs: tuple[str, ...]

    def predict(self, events, params): ...


def check_parameter_names(structure: Structure, params: Mapping) -> None:
    """Raise a KeyError naming what is missing from, or unknown in, ``params``."""
    missing = [n for n in structure.parameters if n not in params]
    if missing:
        raise KeyError(f"structure {structure.name!r} needs parameter(s) {', '.join(missing)}; "
                       f"got {', '.join(params) or 'none'}")
    known = tuple(structure.parameters) + tuple(structure.optional_parameters)
    unknown = [n for n in params if n not in known]
    if unknown:
        raise KeyError(f"structure {structure.name!r} has no parameter(s) {', '.join(unknown)}; "
                       f"its parameters: {', '.join(known)}")


_REGISTRY: dict[str, Callable[[], Structure]] = {}


def register(name: str):
    """Register a factory (or class) that builds the structure ``name``."""

    def decorator(factory):
        if name in _REGISTRY:
            raise ValueError(f"structure {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def get_structure(name: str) -> Structure:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown structure {name!r}; registered structures: {known}") from None
    return factory()


def structure_names() -> list[str]:
    return sorted(_REGISTRY)
