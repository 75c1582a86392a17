"""One dispatch table of per-backend fast paths: ``{op: {backend: impl}}``.

The core calls :func:`lookup` and falls back to its generic array-API route when no
fast path is registered; that generic route is the reference every fast path is
tested against (``tests/test_backends.py``). A backend's module is imported only when
an array of that backend is seen, so ``import spectral_curv`` imports no framework.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import array_api_compat as _compat

__all__ = ["TABLE", "backend_name", "lookup", "register"]

TABLE: dict[str, dict[str, Callable[..., Any]]] = {}

#: Modules holding fast paths, by backend name; imported on first use.
_MODULES = {"torch": "spectral_curv.backends.torch"}
_loaded: set[str] = set()
_disabled = False


def backend_name(xp: Any) -> str:
    """Short name of an array namespace: numpy, torch, jax, cupy, array_api_strict, other."""
    for name, pred in (
        ("numpy", _compat.is_numpy_namespace),
        ("torch", _compat.is_torch_namespace),
        ("jax", _compat.is_jax_namespace),
        ("cupy", _compat.is_cupy_namespace),
        ("array_api_strict", _compat.is_array_api_strict_namespace),
    ):
        if pred(xp):
            return name
    return "other"


def register(op: str, backend: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``impl`` as the fast path of ``op`` for ``backend``."""

    def deco(impl: Callable[..., Any]) -> Callable[..., Any]:
        TABLE.setdefault(op, {})[backend] = impl
        return impl

    return deco


def lookup(op: str, xp: Any) -> Callable[..., Any] | None:
    """The fast path of ``op`` for namespace ``xp``, or None (use the generic route)."""
    if _disabled:
        return None
    name = backend_name(xp)
    if name in _MODULES and name not in _loaded:
        importlib.import_module(_MODULES[name])
        _loaded.add(name)
    return TABLE.get(op, {}).get(name)


class generic_only:
    """Context manager that disables every fast path (used to test them against the core)."""

    def __enter__(self) -> None:
        global _disabled
        self._prev = _disabled
        _disabled = True

    def __exit__(self, *exc: object) -> None:
        global _disabled
        _disabled = self._prev
