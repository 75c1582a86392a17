""":class:`Layout`: the parameters a NumPy-adapter optimizer was built with (container,
array-API namespace, shapes, dtypes, devices), the checks of what a step is given, and the
per-parameter plan, factor dtype and fresh state (``optim.plan``, ``optim.fresh_state``:
math §3, §4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _array as A
from .. import optim
from .._array import Array, Namespace

Params = dict[str, Array] | list[Array] | tuple[Array, ...]


def np_dtype(dtype: Any) -> np.dtype:
    """The NumPy dtype of the same name as any namespace's ``dtype`` (``torch.float32``: float32).

    Example::

        >>> import numpy as np
        >>> from spectral_curv.numpy._layout import np_dtype
        >>> np_dtype(np.dtype(np.float32)), np_dtype("torch.float64")
        (dtype('float32'), dtype('float64'))
    """
    return np.dtype(str(dtype).split(".")[-1])


_NP = optim.namespace(np.empty(0))


def _namespace(arrays: list[Array], what: str) -> Namespace:
    if not arrays:
        return _NP
    try:
        return optim.namespace(*arrays)
    except TypeError as e:
        raise TypeError(f"`{what}` must hold arrays of one array-API namespace: {e}") from e


def _check_floating(xp: Namespace, a: Array, what: str) -> None:
    """A TypeError unless ``a`` is a real floating array of namespace ``xp`` (not an
    ``np.matrix``, whose ``*`` is a matrix product)."""
    if isinstance(a, np.matrix):
        raise TypeError(f"`{what}` is an np.matrix; pass np.asarray(...) (a 2-D ndarray)")
    try:
        ns = optim.namespace(a)
    except TypeError as e:
        raise TypeError(f"`{what}` is not an array: {type(a)!r}") from e
    if ns is not xp:
        raise TypeError(f"`{what}` belongs to {ns.__name__}, not {xp.__name__}")
    if not ns.isdtype(a.dtype, "real floating"):
        raise TypeError(f"`{what}` must have a real floating dtype, got {a.dtype}")


@dataclasses.dataclass(frozen=True)
class Layout:
    """The structure, namespace, shapes, dtypes and devices of an optimizer's parameters.

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> from spectral_curv.numpy._layout import Layout
        >>> lay = Layout.of({"w": np.zeros((4, 3)), "b": np.zeros(3)})
        >>> lay.describe()["shapes"], lay.label(0), lay.plan(0, optim.Options()).kind
        ([[4, 3], [3]], "'w'", 'kron')
        >>> lay.unpack({"w": np.zeros((4, 3))}, "grads", allow_none=True)
        Traceback (most recent call last):
        ...
        ValueError: `grads` keys differ: missing ['b'], unexpected []
    """

    kind: type
    names: list[str] | None
    xp: Namespace
    shapes: list[tuple[int, ...]]
    dtypes: list[Any]
    devices: list[Any]

    @classmethod
    def of(cls, params: Params) -> Layout:
        """The layout of ``params``; a TypeError unless it is a ``dict`` (str keys), list or
        tuple of real floating arrays of one array-API namespace."""
        kind: type
        if isinstance(params, Mapping):
            bad = [k for k in params if not isinstance(k, str)]
            if bad:
                raise TypeError(f"`params` keys must be str, got {bad[0]!r}")
            kind, names, arrays = dict, list(params), list(params.values())
        elif isinstance(params, (list, tuple)):
            kind, names, arrays = type(params), None, list(params)
        else:
            raise TypeError(
                f"`params` must be a dict of name → array or a list of arrays, got {type(params)!r}"
            )
        xp = _namespace(arrays, "params")
        for i, a in enumerate(arrays):
            _check_floating(xp, a, f"params[{i if names is None else repr(names[i])}]")
        shapes = [tuple(int(s) for s in a.shape) for a in arrays]
        dtypes, devices = [a.dtype for a in arrays], [A.device(a) for a in arrays]
        return cls(kind, names, xp, shapes, dtypes, devices)

    @property
    def is_numpy(self) -> bool:
        """Whether the namespace is NumPy's (state dict arrays are then stored as they are)."""
        return self.xp is _NP

    def label(self, i: int) -> str:
        """Parameter ``i`` as error messages name it (its quoted key, or its index)."""
        return repr(self.names[i]) if self.names is not None else str(i)

    def structure(self, values: list[Any]) -> Any:
        """``values`` (one per parameter) in the params' structure: a dict or a list."""
        if self.names is not None:
            return dict(zip(self.names, values))
        return list(values)

    def pack(self, arrays: list[Array]) -> Params:
        """``arrays`` in the params' container (``dict``, list or tuple)."""
        if self.names is not None:
            return dict(zip(self.names, arrays))
        return self.kind(arrays)

    def unpack(self, values: Any, what: str, allow_none: bool) -> list[Any]:
        """The arrays of ``values`` in parameter order, checked against the structure, the
        shapes and the dtypes (a ValueError; a non-array a TypeError)."""
        n = len(self.shapes)
        if self.names is not None:
            if not isinstance(values, Mapping):
                raise ValueError(f"`{what}` must be a dict like the params, got {type(values)!r}")
            if set(values) != set(self.names):
                missing = sorted(set(self.names) - set(values))
                extra = sorted(map(str, set(values) - set(self.names)))
                raise ValueError(f"`{what}` keys differ: missing {missing}, unexpected {extra}")
            arrays = [values[k] for k in self.names]
        else:
            if not isinstance(values, (list, tuple)):
                raise ValueError(f"`{what}` must be a list like the params, got {type(values)!r}")
            if len(values) != n:
                raise ValueError(f"`{what}` must hold {n} arrays, got {len(values)}")
            arrays = list(values)
        for i, a in enumerate(arrays):
            if a is None and allow_none:
                continue
            label = f"{what}[{self.label(i)}]"
            _check_floating(self.xp, a, label)
            if tuple(a.shape) != self.shapes[i]:
                raise ValueError(
                    f"`{label}` must have shape {self.shapes[i]}, got {tuple(a.shape)}"
                )
            if a.dtype != self.dtypes[i]:
                raise ValueError(f"`{label}` must have dtype {self.dtypes[i]}, got {a.dtype}")
        return arrays

    def describe(self) -> dict[str, Any]:
        """The ``params`` entry of a state dict (kind, names, shapes, dtype names)."""
        return {
            "kind": self.kind.__name__,
            "names": None if self.names is None else list(self.names),
            "shapes": [list(s) for s in self.shapes],
            "dtypes": [np_dtype(d).name for d in self.dtypes],
        }

    def from_numpy(self, i: int, a: np.ndarray) -> Array:
        """``a`` in the namespace, on parameter ``i``'s device (NumPy: ``a`` itself)."""
        return a if self.is_numpy else self.xp.asarray(a, device=self.devices[i])

    def precond_dtype(self, i: int, opts: optim.Options) -> Any:
        """Parameter ``i``'s factor dtype (``optim.precond_dtype_for``) in the namespace."""
        dt = optim.precond_dtype_for(self.xp, opts.precond_dtype, self.dtypes[i])
        return dt if self.is_numpy else getattr(self.xp, np_dtype(dt).name)

    def plan(self, i: int, opts: optim.Options) -> optim.Plan:
        """Parameter ``i``'s :func:`optim.plan` under ``opts.max_precond_dim``."""
        return optim.plan(self.shapes[i], opts.max_precond_dim)

    def fresh(self, i: int, opts: optim.Options) -> dict[str, Any]:
        """A new state for parameter ``i`` (``S = I``; the first step sets its scale)."""
        dt, dev = self.precond_dtype(i, opts), self.devices[i]
        pl, shape = self.plan(i, opts), self.shapes[i]
        return optim.fresh_state(pl, shape, opts, dtype=dt, device=dev, xp=self.xp)
