"""One dispatch table of per-backend fast paths: ``{op: {backend: impl}}``.

The core calls :func:`lookup` and falls back to its generic array-API route when no
fast path is registered; that generic route is the reference every fast path is
tested against (``tests/test_backends.py``). A backend's module is imported only when
an array of that backend is seen, so ``import spectral_curv`` imports no framework.
The registered ops are the Cayley products of math §1 (``cayley_apply_<mode>``), the
damped rule's rotation generator (``damped_generator``, math §2.4) and ``x xᵀ``
(``gram``, for ``W``, the maps' ``XXᵀ`` and Newton–Schulz's ``BᵀB``), all in
:mod:`spectral_curv.backends.torch`; a fast path must agree with the generic route
to round-off, so it never changes results.

Example (numpy has no fast path: the core takes the generic route)::

    >>> import numpy as np
    >>> from spectral_curv import backends
    >>> backends.lookup("cayley_apply_exact", np) is None
    True
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
    """Short name of an array namespace: numpy, torch, jax, cupy, array_api_strict, other.

    Example (numpy and its ``array_api_compat`` wrapper share a name; a non-array module)::

        >>> import numpy as np
        >>> from array_api_compat import array_namespace
        >>> from spectral_curv import backends
        >>> backends.backend_name(np), backends.backend_name(array_namespace(np.ones(1)))
        ('numpy', 'numpy')
        >>> import math
        >>> backends.backend_name(math)
        'other'
    """
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
    """Decorator: register ``impl`` as the fast path of ``op`` for ``backend``.

    Example (``impl`` is returned unchanged and stored in :data:`TABLE`)::

        >>> from spectral_curv import backends
        >>> def twice(x):
        ...     return 2 * x
        >>> backends.register("demo_op", "numpy")(twice) is twice
        True
        >>> backends.TABLE["demo_op"] == {"numpy": twice}
        True
        >>> del backends.TABLE["demo_op"]
    """

    def deco(impl: Callable[..., Any]) -> Callable[..., Any]:
        TABLE.setdefault(op, {})[backend] = impl
        return impl

    return deco


def lookup(op: str, xp: Any) -> Callable[..., Any] | None:
    """The fast path of ``op`` for namespace ``xp``, or None (use the generic route).

    Example (a path registered for numpy is found for numpy only)::

        >>> import numpy as np
        >>> from spectral_curv import backends
        >>> impl = backends.register("demo_op", "numpy")(lambda x: 2 * x)
        >>> backends.lookup("demo_op", np) is impl, backends.lookup("no_such_op", np)
        (True, None)
        >>> del backends.TABLE["demo_op"]
    """
    if _disabled:
        return None
    name = backend_name(xp)
    if name in _MODULES and name not in _loaded:
        importlib.import_module(_MODULES[name])
        _loaded.add(name)
    return TABLE.get(op, {}).get(name)


class generic_only:
    """Context manager that disables every fast path (used to test them against the core).

    Example (the previous setting is restored on exit, also when nested)::

        >>> import numpy as np
        >>> from spectral_curv import backends
        >>> impl = backends.register("demo_op", "numpy")(lambda x: 2 * x)
        >>> with backends.generic_only():
        ...     with backends.generic_only():
        ...         pass
        ...     inside = backends.lookup("demo_op", np)
        >>> inside is None, backends.lookup("demo_op", np) is impl
        (True, True)
        >>> del backends.TABLE["demo_op"]
    """

    def __enter__(self) -> None:
        global _disabled
        self._prev = _disabled
        _disabled = True

    def __exit__(self, *exc: object) -> None:
        global _disabled
        _disabled = self._prev
