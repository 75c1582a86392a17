"""Diagonal spectral scheme: ``B = I`` fixed, ``S = Diag(d)`` (math §3).

``d ← d ⊙ exp(β₂ δ / d)`` (exact) or ``d ← d + β₂ δ`` (first order), where ``δ`` is the
diagonal of the curvature change; for the GOP ``δ = g² + λ − γd``. The step is
``d^{-1/p} ⊙ g``: p=2, γ=1 with the first-order map is RMSprop, γ=0 AdaGrad, p=4 the
fractional diagonal method, p=1 the root-free variant. ``d`` may have any shape
(one entry per parameter entry).

Example::

    >>> import numpy as np
    >>> from spectral_curv import diag
    >>> st = diag.init((2, 3), scale=1e-3)
    >>> st = diag.update_gop(st, np.ones((2, 3)), beta2=0.01, exp="first_order")
    >>> step = diag.precondition(st, np.ones((2, 3)), p=2)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import _array as A
from . import maps
from ._array import Array, Namespace, array_namespace
from .full import _check_first_order

__all__ = ["DiagState", "dense", "init", "logdet", "precondition", "update", "update_gop"]


class DiagState(NamedTuple):
    """Diagonal ``S = Diag(d)``, ``d > 0`` of any shape (math §3).

    Example (``d`` keeps the parameter's shape)::

        >>> import numpy as np
        >>> from spectral_curv import diag
        >>> st = diag.DiagState(np.full((2, 3), 4.0))
        >>> st.d.shape, diag.dense(st).shape
        ((2, 3), (6, 6))
    """

    d: Array


def init(
    shape: int | tuple[int, ...],
    *,
    scale: float = 1.0,
    dtype: Any = None,
    device: Any = None,
    xp: Namespace | None = None,
) -> DiagState:
    """``d = scale`` everywhere (numpy float64 unless ``xp``/``dtype`` say; math §3).

    Example::

        >>> from spectral_curv import diag
        >>> st = diag.init((2, 3), scale=0.5)
        >>> st.d.shape, st.d.dtype, float(st.d[0, 0])
        ((2, 3), dtype('float64'), 0.5)
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if any((not isinstance(s, int)) or isinstance(s, bool) or s < 0 for s in shape):
        raise ValueError(f"`shape` must hold non-negative ints, got {shape!r}")
    A.check_positive("scale", scale)
    if xp is None:
        import numpy as _np

        xp = array_namespace(_np.empty(0))
    dtype = xp.float64 if dtype is None else dtype
    return DiagState(xp.full(shape, scale, dtype=dtype, device=device))


def update(
    state: DiagState, delta: Array, *, beta2: Any, exp: str = "exact", check: bool = True
) -> DiagState:
    """One step for a generic diagonal curvature change ``δ`` (may be negative; math §3).

    ``check=False`` skips the value checks (backend, finiteness) for adapters that have
    already done them.

    Example (a negative ``δ`` still keeps ``d > 0`` with the exact map)::

        >>> import numpy as np
        >>> from spectral_curv import diag
        >>> st = diag.update(diag.init(3), np.array([1.0, -5.0, 0.0]), beta2=0.5)
        >>> bool(np.all(st.d > 0)), bool(st.d[0] > 1.0 > st.d[1]), float(st.d[2])
        (True, True, 1.0)
    """
    xp = array_namespace(state.d)
    A.check_shape("delta", delta, tuple(state.d.shape))
    if check:
        A.check_same_namespace(xp, d=state.d, delta=delta)
        A.check_floating(xp, "delta", delta)
        A.check_finite(xp, "delta", delta)
    A.check_positive("beta2", beta2)
    maps.check_modes("exact", exp, 0)
    return DiagState(maps.exp_scale(state.d, beta2 * delta, mode=exp))  # type: ignore[arg-type]


def update_gop(
    state: DiagState,
    g: Array,
    *,
    beta2: Any,
    gamma: Any = 1.0,
    damping: Any = 0.0,
    exp: str = "exact",
    check: bool = True,
) -> DiagState:
    """GOP step ``δ = g² + λ − γd``; ``g`` has ``d``'s shape or a leading batch axis (math §3).

    A leading batch axis of ``g`` averages the ``g²`` over the batch. With
    ``exp="first_order"`` (``d ← (1 − γβ₂)d + β₂(g² + λ)``) ``gamma * beta2`` must be ``< 1``,
    else ``d`` leaves the cone ``d > 0`` (a ValueError naming both; checked for Python numbers).

    Example (``γ = 1`` with the first-order map is RMSprop's second moment)::

        >>> import numpy as np
        >>> from spectral_curv import diag
        >>> st = diag.init(2, scale=1.0)
        >>> st = diag.update_gop(st, np.array([3.0, 1.0]), beta2=0.5, exp="first_order")
        >>> st.d.tolist()
        [5.0, 1.0]
        >>> st = diag.update_gop(st, np.ones((4, 2)), beta2=0.5)
        >>> st.d.shape
        (2,)
        >>> diag.update_gop(st, np.zeros(2), beta2=1.0, exp="first_order")
        Traceback (most recent call last):
        ...
        ValueError: `gamma` * `beta2` must be < 1 with exp='first_order' (got gamma=1.0, ...
    """
    xp = array_namespace(state.d)
    if check:
        A.check_same_namespace(xp, d=state.d, g=g)
        A.check_floating(xp, "g", g)
    shape = tuple(state.d.shape)
    if tuple(g.shape) == shape:
        gg = g * g
    elif tuple(g.shape[1:]) == shape and g.ndim == len(shape) + 1:
        gg = xp.mean(g * g, axis=0)
    else:
        raise ValueError(f"`g` must have shape {shape} or (batch, *{shape}), got {tuple(g.shape)}")
    if check:
        A.check_finite(xp, "g", g)
    A.check_positive("gamma", gamma, allow_zero=True)
    A.check_positive("damping", damping, allow_zero=True)
    A.check_positive("beta2", beta2)
    _check_first_order(exp, gamma, beta2)
    return update(state, gg + damping - gamma * state.d, beta2=beta2, exp=exp, check=False)


def precondition(
    state: DiagState, v: Array, *, p: Any, norm_p: Any = None, check: bool = True
) -> Array:
    """``d^{-1/p} ⊙ v`` (``v`` broadcastable against ``d``; math §3). With ``norm_p`` (e.g. 2)
    the result is rescaled to the 2-norm of ``d^{-1/norm_p} ⊙ v`` over ``d``'s axes
    (``maps.match_norm``: no overflow for any ``p``).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import diag
        >>> st = diag.DiagState(np.array([4.0, 16.0]))
        >>> diag.precondition(st, np.ones(2), p=2).tolist()
        [0.5, 0.25]
        >>> diag.precondition(st, np.ones((3, 2)), p=4).shape
        (3, 2)
        >>> u = diag.precondition(st, np.ones(2), p=1, norm_p=2)
        >>> round(float(np.linalg.norm(u)), 6) == round(float(np.hypot(0.5, 0.25)), 6)
        True
    """
    xp = array_namespace(state.d)
    if check:
        A.check_same_namespace(xp, d=state.d, v=v)
    A.check_positive("p", p)
    if tuple(v.shape[v.ndim - state.d.ndim :]) != tuple(state.d.shape):
        raise ValueError(f"`v` must end with shape {tuple(state.d.shape)}, got {tuple(v.shape)}")
    if norm_p is None or (_static(p) and _static(norm_p) and p == norm_p):
        return v * state.d ** (-1.0 / p)
    axes = tuple(range(-state.d.ndim, 0))
    ref = v * state.d ** (-1.0 / norm_p)
    return maps.match_norm(v, [state.d], p=p, ref=ref, axes=axes)


def _static(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def dense(state: DiagState, power: Any = 1.0) -> Array:
    """The explicit ``Diag(d)^power`` of the flattened ``d`` (for tests; math §3).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import diag
        >>> diag.dense(diag.DiagState(np.array([[4.0], [9.0]])), power=0.5).tolist()
        [[2.0, 0.0], [0.0, 3.0]]
    """
    import array_api_extra as xpx

    xp = array_namespace(state.d)
    return xpx.create_diagonal(xp.reshape(state.d, (-1,)) ** power, xp=xp)


def logdet(state: DiagState) -> Array:
    """``log det S = Σ log d`` (math §1).

    Example (the log of the product of all entries, whatever ``d``'s shape)::

        >>> import numpy as np
        >>> from spectral_curv import diag
        >>> st = diag.DiagState(np.array([[1.0, 2.0], [3.0, 4.0]]))
        >>> bool(np.isclose(diag.logdet(st), np.log(24.0)))
        True
    """
    xp = array_namespace(state.d)
    return xp.sum(xp.log(state.d))
