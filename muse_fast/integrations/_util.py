"""Helpers shared by the integrations: one-time warnings and version checks."""

from __future__ import annotations

import warnings

_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, stacklevel=3)


def major_version(module_name: str) -> tuple[str, int]:
    """(version string, major) of an installed package; ("", -1) when it is absent."""
    try:
        from importlib.metadata import version

        v = version(module_name)
    except Exception:
        return "", -1
    try:
        return v, int(v.split(".")[0])
    except ValueError:
        return v, -1


def class_names(obj: object) -> list[str]:
    return [c.__name__ for c in type(obj).__mro__]
