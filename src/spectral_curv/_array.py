"""Array-namespace helpers: namespace lookup, builders, dtype policy and input checks.

Everything here is written against the Python array API standard; no framework is
imported. Value checks (finiteness, symmetry) run only on eager arrays: under
``jax.jit`` (lazy arrays) they are skipped, since a traced value cannot be inspected.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import array_api_compat
from array_api_compat import array_namespace as _compat_namespace
from array_api_compat import is_lazy_array

from . import backends

Array = Any
Namespace = Any

__all__ = [
    "Array",
    "Namespace",
    "array_namespace",
    "check_finite",
    "check_positive",
    "check_same_namespace",
    "check_shape",
    "device",
    "eps",
    "eye",
    "frobenius",
    "gram",
    "is_lazy",
    "known_all",
    "mT",
]


#: ``array_api_compat.array_namespace`` of one array, per array type (it depends on the type
#: only): the core looks it up dozens of times a step, each ~3 µs uncached.
_NAMESPACE_OF_TYPE: dict[type, Namespace] = {}


def array_namespace(*arrays: Array, **kwargs: Any) -> Namespace:
    """``array_api_compat.array_namespace``, memoised per type for the one-array call (not
    for a NumPy array of a void dtype such as ``jax.float0``, which array_api_compat maps to
    ``jax.numpy``)."""
    if len(arrays) != 1 or kwargs or getattr(getattr(arrays[0], "dtype", None), "kind", "") == "V":
        return _compat_namespace(*arrays, **kwargs)
    ns = _NAMESPACE_OF_TYPE.get(type(arrays[0]))
    if ns is None:
        ns = _NAMESPACE_OF_TYPE[type(arrays[0])] = _compat_namespace(arrays[0])
    return ns


def known_all(xp: Namespace, flags: Array) -> bool:
    """True when ``flags`` are known, without a device sync or a traced value, to be all
    true: NumPy and array-api-strict arrays, and torch tensors on the CPU outside
    ``torch.compile``. False means "all true, or not known here" (a GPU, ``jax.jit``): the
    caller then takes the branch-free route, so both give the same values."""
    impl = backends.lookup("known_all", xp)
    if impl is not None:
        return bool(impl(flags))
    if array_api_compat.is_numpy_namespace(xp) or array_api_compat.is_array_api_strict_namespace(
        xp
    ):
        return bool(xp.all(flags))
    return False


def device(x: Array) -> Any:
    """Device of ``x`` (array API ``device``)."""
    return array_api_compat.device(x)


def is_lazy(*arrays: Array) -> bool:
    """True when any array is traced / lazy (e.g. inside ``jax.jit``): no value checks."""
    return any(is_lazy_array(a) for a in arrays)


def is_integer_dtype(x: Array) -> bool:
    """True for an array of a (signed or unsigned) integer dtype."""
    return bool(array_namespace(x).isdtype(x.dtype, "integral"))


def mT(x: Array) -> Array:
    """Transpose of the last two axes."""
    return x.mT


def gram(x: Array) -> Array:
    """``x @ xᵀ`` over the last two axes, through the backend's ``gram`` fast path where one is
    registered (torch on the CPU: a blocked product that skips the upper triangle's blocks,
    the same entries at 0.6–0.9 of the time, :mod:`spectral_curv.backends.torch`)."""
    impl = backends.lookup("gram", array_namespace(x))
    return x @ x.mT if impl is None else impl(x)


def unstacker(xp: Namespace) -> Callable[[Array], tuple[Array, ...]]:
    """``x ↦ (x[0], x[1], …)`` along the first axis (array API ``unstack``) for namespace
    ``xp``, through the backend's fast path where one is registered (torch: ``unbind``;
    array_api_compat's ``unstack`` iterates in Python)."""
    impl = backends.lookup("unstack", xp)
    if impl is not None:
        return impl
    return lambda x: tuple(xp.unstack(x, axis=0))


def eye(xp: Namespace, n: int, like: Array) -> Array:
    """Identity of size ``n`` with the dtype and device of ``like``."""
    return xp.eye(n, dtype=like.dtype, device=device(like))


def eps(xp: Namespace, dtype: Any) -> float:
    """Machine epsilon of a real floating dtype."""
    return float(xp.finfo(dtype).eps)


def frobenius(xp: Namespace, x: Array) -> Array:
    """Frobenius norm over the last two axes (a 0-d array for a matrix)."""
    return xp.sqrt(xp.sum(x * x, axis=(-2, -1)))


def check_same_namespace(xp: Namespace, **arrays: Array) -> None:
    """Raise when arrays come from different backends or live on different devices."""
    devs = {}
    for name, a in arrays.items():
        try:
            ns = array_namespace(a)
        except TypeError as e:
            raise TypeError(f"`{name}` is not an array of a supported backend: {type(a)!r}") from e
        if ns is not xp:
            raise TypeError(
                f"`{name}` belongs to {ns.__name__}, but the state is a {xp.__name__} array; "
                "convert it first (mixing backends is not supported)"
            )
        devs[name] = device(a)
    names = list(devs)
    for n in names[1:]:
        if devs[n] != devs[names[0]]:
            raise ValueError(
                f"`{n}` is on device {devs[n]}, but `{names[0]}` is on {devs[names[0]]}"
            )


def check_shape(name: str, x: Array, shape: tuple[int, ...]) -> None:
    """Raise a ValueError naming ``name`` when ``x.shape != shape``."""
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"`{name}` must have shape {tuple(shape)}, got {tuple(x.shape)}")


def check_finite(xp: Namespace, name: str, x: Array) -> None:
    """Raise when an eager array holds NaN or inf (skipped for lazy/traced arrays)."""
    if is_lazy(x):
        return
    if not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"`{name}` contains non-finite values (NaN or inf)")


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """Raise when a Python number is not positive (arrays are trusted: they may be traced)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        v = float(value)
        ok = v >= 0 if allow_zero else v > 0
        if not ok or not math.isfinite(v):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"`{name}` must be finite and {bound}, got {value!r}")


def check_floating(xp: Namespace, name: str, x: Array) -> None:
    """Raise for non real-floating arrays (integers, booleans, complex)."""
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"`{name}` must have a real floating dtype, got {x.dtype}")
