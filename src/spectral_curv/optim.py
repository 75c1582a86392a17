"""The optimizer step every adapter shares (torch, optax, NumPy), as pure array-API functions.

SPEC §3–§5 in optimizer form. An adapter owns storage (torch's ``state``, an optax pytree,
a NumPy object), parameter routing and control flow (a Python ``if`` or ``lax.cond`` for a
refresh); every number it computes comes from here, so that the adapters agree to
round-off (``tests/test_cross_framework.py``). Per parameter, with ``t`` its 0-based step:

1. :func:`schedule`: ``first = t == 0``; ``refresh = first or t < precond_warmup or
   t % update_interval == 0``; ``reorth`` on every ``reorth_interval``-th refresh (every
   Cayley mode: exact Cayley is orthogonal only to round-off, which accumulates).
2. ``first``: :func:`first_state` sets ``S₀ = α₀ I``, ``α₀ = mean(G²) + λ`` (diagonal:
   ``d₀ = g² + λ``), so the first step is a scale-free gradient step.
3. ``refresh``: :func:`refresh` (the core's GOP update, keep-last-good where it yields
   non-finite or non-positive factors); ``reorth``: :func:`reorthonormalize`.
4. :func:`direction` ``U = S^{-1/p} G`` with the refreshed factors.
5. :func:`graft_adam` (optional), :func:`clip_rms` (optional), :func:`add_momentum`
   (heavy ball ``m ← μm + U``), :func:`apply_update` (``M ← (1 − lr·wd) M − lr·m``).

Matrix parameters (order ≥ 2, flattened to ``(shape[0], prod(shape[1:]))``) use the
Kronecker scheme, with a side longer than ``max_precond_dim`` kept diagonal; order ≤ 1 the
diagonal scheme (:func:`plan`). Hyperparameters may be Python numbers or 0-d arrays
(traced under ``jax.jit``); options that change the control flow (``cayley``, ``exp``,
``cayley_terms``, …) must be Python values.

Embedding example (an optimizer of your own that preconditions with the spectral factors)::

    >>> import numpy as np
    >>> from spectral_curv import optim
    >>> W, G = np.zeros((4, 3)), np.ones((4, 3))
    >>> pl = optim.plan(W.shape)
    >>> st = optim.init(pl, W.shape, xp=optim.namespace(W))
    >>> st = optim.first_state(st, G, damping=1e-8)
    >>> st, ok = optim.refresh(st, G, precond_lr=0.1)
    >>> U = optim.direction(st, G, p=2)
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from . import _array as A
from . import diag, kron, maps
from ._array import Array, Namespace, array_namespace

__all__ = [
    "Plan",
    "Precond",
    "add_momentum",
    "apply_update",
    "check_finite_grads",
    "check_options",
    "clip_rms",
    "direction",
    "first_state",
    "graft_adam",
    "init",
    "matrix_shape",
    "namespace",
    "plan",
    "refresh",
    "reorthonormalize",
    "schedule",
]

#: ``("diag",)`` or ``("kron", rows, cols, diag_rows, diag_cols)``: hashable, static.
Plan = tuple[Any, ...]
Precond = kron.KronState | diag.DiagState

DEFAULT_MAX_PRECOND_DIM = 4096


#: Grafting choices of every adapter.
GRAFTS = (None, "adam")

# Real options: name -> (zero allowed, None allowed). ``learning_rate`` is optax's ``lr``.
_REAL_OPTIONS = {
    "lr": (True, False),
    "learning_rate": (True, False),
    "precond_lr": (False, False),
    "p": (False, False),
    "gamma": (True, False),
    "damping": (True, False),
    "weight_decay": (True, False),
    "eps": (True, False),
    "tie_tol": (True, True),
    "max_step_norm": (False, True),
    "max_update_rms": (False, True),
}
# Integer options: name -> smallest value.
_INT_OPTIONS = {
    "update_interval": 1,
    "max_precond_dim": 1,
    "precond_warmup": 0,
    "reorth_interval": 0,
    "cayley_terms": 0,
}


def _scalar(name: str, v: Any) -> Any:
    """``v`` as a Python value to check, or None when it cannot be checked now (a traced or
    lazy 0-d array, a learning-rate schedule); an array of size ≠ 1 raises."""
    if callable(v) and name in ("lr", "learning_rate"):
        return None
    if hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, numbers.Number):
        if math.prod(v.shape) != 1:
            raise ValueError(f"`{name}` must be a real scalar, got shape {tuple(v.shape)}")
        return None if A.is_lazy(v) else v.item()
    return v


def _real_ok(v: Any, lo_ok: bool) -> bool:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return False
    x = float(v)
    return math.isfinite(x) and (x > 0 or (x == 0 and lo_ok))


def check_options(o: Any) -> None:
    """Raise a ValueError naming the first invalid option among those present in ``o``.

    The options of DESIGN's shared vocabulary (``lr``/``learning_rate``, ``precond_lr``, ``p``,
    ``gamma``, ``damping``, ``momentum``, ``weight_decay``, ``update_interval``, ``cayley``,
    ``cayley_terms``, ``exp``, ``graft``, ``betas``, …) are checked where they are Python or
    eager scalars; traced arrays and learning-rate schedules are accepted unchecked. The
    framework-specific ``precond_dtype`` is left to the adapter. SPEC §3–§5.

    >>> check_options({"precond_lr": 0.1, "cayley": "quadratic"})
    >>> check_options({"p": 0})
    Traceback (most recent call last):
    ...
    ValueError: `p` must be finite and > 0, got 0
    """
    for name, (zero, allow_none) in _REAL_OPTIONS.items():
        if name not in o or (o[name] is None and allow_none):
            continue
        v = _scalar(name, o[name])
        if v is not None and not _real_ok(v, zero):
            bound = ">= 0" if zero else "> 0"
            raise ValueError(f"`{name}` must be finite and {bound}, got {o[name]!r}")
    if "momentum" in o:
        m = _scalar("momentum", o["momentum"])
        if m is not None and not (_real_ok(m, True) and m < 1):
            raise ValueError(f"`momentum` must be in [0, 1), got {o['momentum']!r}")
    for name, lo in _INT_OPTIONS.items():
        if name not in o:
            continue
        v = o[name]
        if hasattr(v, "dtype") and not isinstance(v, numbers.Number):
            if getattr(v, "ndim", 1) != 0 or not A.is_integer_dtype(v):
                raise ValueError(f"`{name}` must be an int >= {lo}, got an array of {v.dtype}")
            if A.is_lazy(v):
                continue
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
            raise ValueError(f"`{name}` must be an int >= {lo}, got {o[name]!r}")
    if "cayley" in o and o["cayley"] not in maps.CAYLEY_MODES:
        raise ValueError(f"`cayley` must be one of {maps.CAYLEY_MODES}, got {o['cayley']!r}")
    if "rotation" in o and o["rotation"] not in maps.ROTATION_MODES:
        raise ValueError(f"`rotation` must be one of {maps.ROTATION_MODES}, got {o['rotation']!r}")
    if "exp" in o and o["exp"] not in maps.EXP_MODES:
        raise ValueError(f"`exp` must be one of {maps.EXP_MODES}, got {o['exp']!r}")
    if o.get("exp") == "first_order" and "gamma" in o and "precond_lr" in o:
        g = _scalar("gamma", o["gamma"])
        b = _scalar("precond_lr", o["precond_lr"])
        if g is not None and b is not None and float(g) * float(b) >= 1:
            raise ValueError(
                "`precond_lr` times `gamma` must be < 1 with exp='first_order' "
                "(d would not stay > 0)"
            )
    if "graft" in o and o["graft"] not in GRAFTS:
        raise ValueError(f"`graft` must be one of {GRAFTS}, got {o['graft']!r}")
    if "betas" in o:
        b = o["betas"]
        ok = isinstance(b, (tuple, list)) and len(b) == 2
        if ok:
            vals = [_scalar("betas", x) for x in b]
            ok = all(v is None or (_real_ok(v, True) and v < 1) for v in vals)
        if not ok:
            raise ValueError(f"`betas` must be two numbers in [0, 1), got {b!r}")


def namespace(*arrays: Array) -> Namespace:
    """The array-API namespace of ``arrays`` (``array_api_compat.array_namespace``).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> xp = optim.namespace(np.zeros(3), np.ones((2, 2)))
        >>> xp.__name__, bool(xp.all(xp.eye(2) == np.eye(2)))
        ('array_api_compat.numpy', True)
    """
    return array_namespace(*arrays)


def plan(shape: tuple[int, ...], max_precond_dim: int = DEFAULT_MAX_PRECOND_DIM) -> Plan:
    """How a parameter of ``shape`` is preconditioned.

    Unit dimensions are dropped first (a ``(1, 16, 64)`` position embedding is a 16×64
    matrix, a ``(1, n)`` or ``(n, 1)`` weight a vector). Then order ≤ 1 or empty:
    ``("diag",)``; otherwise Kronecker on ``(shape[0], prod(shape[1:]))`` with a side
    longer than ``max_precond_dim`` kept diagonal (``B = I``, O(n) memory).

    Example::

        >>> from spectral_curv import optim
        >>> optim.plan((10,)), optim.plan((4, 3, 2)), optim.plan((8, 5000))
        (('diag',), ('kron', 4, 6, False, False), ('kron', 8, 5000, False, True))
        >>> optim.plan((1, 16, 64)), optim.plan((1, 300))
        (('kron', 16, 64, False, False), ('diag',))
    """
    shape = tuple(int(s) for s in shape if int(s) != 1)
    if len(shape) < 2 or math.prod(shape) == 0:
        return ("diag",)
    r, c = shape[0], math.prod(shape[1:])
    return ("kron", r, c, r > max_precond_dim, c > max_precond_dim)


def matrix_shape(pl: Plan, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the preconditioner sees: ``(r, c)`` for Kronecker, ``shape`` for diagonal.

    Example (a 4×3×2 weight is preconditioned as a 4×6 matrix)::

        >>> from spectral_curv import optim
        >>> optim.matrix_shape(optim.plan((4, 3, 2)), (4, 3, 2))
        (4, 6)
        >>> optim.matrix_shape(("diag",), (5,))
        (5,)
    """
    return tuple(shape) if pl[0] == "diag" else (pl[1], pl[2])


def init(
    pl: Plan,
    shape: tuple[int, ...],
    *,
    batch: tuple[int, ...] = (),
    dtype: Any = None,
    device: Any = None,
    xp: Namespace | None = None,
) -> Precond:
    """Fresh factors (``S = I``; :func:`first_state` sets the scale from the first gradient).

    ``batch`` stacks same-shaped parameters (Kronecker only).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> st = optim.init(optim.plan((4, 3)), (4, 3), batch=(2,))
        >>> type(st).__name__, st.alpha.tolist(), st.B_C.shape, st.B_K.shape
        ('KronState', [1.0, 1.0], (2, 4, 4), (2, 3, 3))
        >>> optim.init(("diag",), (5,)).d.tolist()
        [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    if pl[0] == "diag":
        if batch:
            raise ValueError("`batch` is supported for Kronecker plans only")
        return diag.init(tuple(shape), dtype=dtype, device=device, xp=xp)
    _, r, c, diag_r, diag_c = pl
    return kron.init(
        r, c, batch=batch, diag_rows=diag_r, diag_cols=diag_c, dtype=dtype, device=device, xp=xp
    )


def schedule(
    step: Any,
    refreshes: Any,
    *,
    update_interval: int,
    precond_warmup: int,
    reorth_interval: int,
    cayley: str,
) -> tuple[Any, Any, Any]:
    """``(first, refresh, reorth)`` for 0-based step ``t`` after ``refreshes`` refreshes.

    Python ints give Python bools; integer arrays (e.g. traced JAX counters) give boolean
    arrays. ``reorth_interval`` may be an int or an integer array (≤ 0: never); it applies
    to every ``cayley`` mode (the argument is kept for callers that pass it).

    Example::

        >>> from spectral_curv import optim
        >>> kw = dict(update_interval=10, precond_warmup=2, reorth_interval=5, cayley="quadratic")
        >>> [optim.schedule(t, 0, **kw) for t in (0, 1, 5, 10)]
        [(True, True, False), (False, True, False), (False, False, False), (False, True, False)]
        >>> optim.schedule(20, 4, **kw)
        (False, True, True)
    """
    first = step == 0
    refresh = first | (step < precond_warmup) | (step % update_interval == 0)
    static = isinstance(reorth_interval, int)
    if static and reorth_interval <= 0:
        return first, refresh, refresh & False
    if static:
        return first, refresh, refresh & ((refreshes + 1) % reorth_interval == 0)
    # an array interval (e.g. traced by optax.inject_hyperparams): off where <= 0
    xp = array_namespace(reorth_interval)
    period = xp.maximum(reorth_interval, xp.ones_like(reorth_interval))
    return first, refresh, refresh & (reorth_interval > 0) & ((refreshes + 1) % period == 0)


def first_state(st: Precond, g: Array, *, damping: Any) -> Precond:
    """``S₀ = α₀ I`` with ``α₀ = mean(G²) + λ`` per stacked layer (diagonal: ``d₀ = g² + λ``).

    A value that is 0 (zero gradient with ``λ = 0``: 0·∞ = NaN in the step) or overflows
    falls back to 1 (diagonal: to the mean of the good entries, or 1).

    Example (``α₀ = mean(G²) + λ``; a zero diagonal entry falls back to the good mean)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> st = optim.init(optim.plan((2, 2)), (2, 2))
        >>> float(optim.first_state(st, np.full((2, 2), 3.0), damping=1.0).alpha)
        10.0
        >>> st = optim.init(("diag",), (3,))
        >>> optim.first_state(st, np.array([1.0, 0.0, 3.0]), damping=0.0).d.tolist()
        [1.0, 5.0, 9.0]
    """
    xp = array_namespace(g)
    if isinstance(st, diag.DiagState):
        d0 = g * g + damping
        good = xp.isfinite(d0) & (d0 > 0)
        n_good = xp.sum(xp.astype(good, d0.dtype))
        fill = xp.sum(xp.where(good, d0, 0.0)) / xp.maximum(n_good, xp.ones_like(n_good))
        fill = xp.where(xp.isfinite(fill) & (fill > 0), fill, 1.0)
        return diag.DiagState(xp.where(good, d0, fill))
    a0 = xp.mean(g * g, axis=(-2, -1)) + damping
    return st._replace(alpha=xp.where(xp.isfinite(a0) & (a0 > 0), a0, 1.0))


def _all_finite(xp: Namespace, x: Array, lead: int) -> Array:
    flat = xp.reshape(x, (*x.shape[:lead], -1))
    return xp.all(xp.isfinite(flat), axis=-1)


def _select(xp: Namespace, ok: Array, new: Array | None, old: Array | None) -> Array | None:
    if new is None or old is None:
        return new
    return xp.where(xp.reshape(ok, (*ok.shape, *([1] * (new.ndim - ok.ndim)))), new, old)


def refresh(
    st: Precond,
    g: Array,
    *,
    precond_lr: Any,
    gamma: Any = 1.0,
    damping: Any = 0.0,
    cayley: str = "quadratic",
    exp: str = "first_order",
    cayley_terms: int = 1,
    tie_tol: float | None = None,
    max_step_norm: float | None = None,
    rotation: str | None = None,
) -> tuple[Precond, Array]:
    """The core's GOP update (``kron.update_gop`` / ``diag.update_gop``) with keep-last-good.

    Returns ``(state, ok)``: ``ok`` (one flag per stacked layer) is False where the update
    gave non-finite or non-positive factors, which are then left as they were.

    Example (a good update is kept; a non-finite gradient leaves the factors as they were)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> st0 = optim.init(optim.plan((4, 3)), (4, 3))
        >>> st, ok = optim.refresh(st0, np.arange(12.0).reshape(4, 3) / 10, precond_lr=0.1)
        >>> bool(ok), bool(np.allclose(st.B_C.T @ st.B_C, np.eye(4), atol=0.02))  # ≤ 4·0.25⁴
        (True, True)
        >>> with np.errstate(all="ignore"):
        ...     st, ok = optim.refresh(st0, np.full((4, 3), np.inf), precond_lr=0.1)
        >>> bool(ok), bool(np.array_equal(st.B_C, st0.B_C)), float(st.alpha)
        (False, True, 1.0)
    """
    xp = array_namespace(g)
    if isinstance(st, diag.DiagState):
        new = diag.update_gop(
            st, g, beta2=precond_lr, gamma=gamma, damping=damping, exp=exp, check=False
        )
        ok = xp.all(xp.isfinite(new.d)) & xp.all(new.d > 0)
        return diag.DiagState(xp.where(ok, new.d, st.d)), ok
    newk = kron.update_gop(
        st,
        g,
        beta2=precond_lr,
        gamma=gamma,
        damping=damping,
        cayley=cayley,
        exp=exp,
        cayley_terms=cayley_terms,
        tie_tol=tie_tol,
        max_step_norm=max_step_norm,
        rotation=rotation,
        check=False,
    )
    lead = newk.alpha.ndim
    ok = xp.isfinite(newk.alpha) & (newk.alpha > 0)
    for f in (newk.d_C, newk.d_K):
        ok = ok & _all_finite(xp, f, lead) & xp.all(f > 0, axis=-1)
    for b in (newk.B_C, newk.B_K):
        if b is not None:
            ok = ok & _all_finite(xp, b, lead)
    return kron.KronState(*(_select(xp, ok, n, o) for n, o in zip(newk, st))), ok


def reorthonormalize(st: Precond) -> Precond:
    """One Newton–Schulz polar step on each factor basis (``maps.orthonormalize``), undoing the
    drift of the truncated Cayley maps; a no-op for the diagonal scheme.

    Example (one Newton–Schulz step squares a basis' small orthogonality drift)::

        >>> import numpy as np
        >>> from spectral_curv import kron, maps, optim
        >>> b = 1.001 * maps.cayley(maps.skew(np.tril(np.full((3, 3), 0.1), -1)))
        >>> drift = lambda b: float(np.abs(b.T @ b - np.eye(3)).max())
        >>> st = optim.reorthonormalize(kron.init(3, 2)._replace(B_C=b))
        >>> round(drift(b), 4), bool(drift(st.B_C) < drift(b) ** 2)
        (0.002, True)
    """
    if isinstance(st, diag.DiagState):
        return st
    return st._replace(
        B_C=None if st.B_C is None else maps.orthonormalize(st.B_C),
        B_K=None if st.B_K is None else maps.orthonormalize(st.B_K),
    )


def direction(st: Precond, g: Array, *, p: Any) -> Array:
    """``U = S^{-1/p} G`` (Kronecker: rotated form, 4 matmuls; diagonal: ``d^{-1/p} ⊙ g``).

    Example (``S = 4 I`` on both schemes, ``p = 2``: the step halves ``G``)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> st = optim.init(optim.plan((2, 3)), (2, 3))
        >>> st = optim.first_state(st, np.full((2, 3), 2.0), damping=0.0)
        >>> optim.direction(st, np.ones((2, 3)), p=2).tolist()
        [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
        >>> st = optim.init(("diag",), (2,))._replace(d=np.array([4.0, 16.0]))
        >>> optim.direction(st, np.ones(2), p=2).tolist()
        [0.5, 0.25]
    """
    if isinstance(st, diag.DiagState):
        return diag.precondition(st, g, p=p, check=False)
    return kron.precondition(st, g, p=p, check=False)


def _norm(xp: Namespace, x: Array) -> Array:
    return xp.sqrt(xp.sum(x * x))


def graft_adam(
    u: Array,
    g: Array,
    exp_avg: Array,
    exp_avg_sq: Array,
    *,
    step: Any,
    betas: tuple[Any, Any],
    eps: Any,
) -> tuple[Array, Array, Array]:
    """Rescale ``U`` to the norm of Adam's update at 1-based ``step``; returns
    ``(U, exp_avg, exp_avg_sq)`` with Adam's moments of the raw gradient advanced.

    Example (at step 1 Adam's update is ``g/(|g| + eps)``, so ``U`` gets its norm ``√n``)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> g, u = np.array([3.0, -4.0, 1.0, 2.0]), np.array([10.0, 0.0, 0.0, 0.0])
        >>> z = np.zeros(4)
        >>> v, m, s = optim.graft_adam(u, g, z, z, step=1, betas=(0.9, 0.999), eps=0.0)
        >>> v.tolist(), bool(np.allclose(m, 0.1 * g)), bool(np.allclose(s, 0.001 * g**2))
        ([2.0, 0.0, 0.0, 0.0], True, True)
    """
    xp = array_namespace(u, g)
    b1, b2 = betas
    exp_avg = exp_avg + (1 - b1) * (g - exp_avg)
    exp_avg_sq = b2 * exp_avg_sq + (1 - b2) * (g * g)
    adam = (exp_avg / (1 - b1**step)) / (xp.sqrt(exp_avg_sq / (1 - b2**step)) + eps)
    tiny = xp.finfo(u.dtype).smallest_normal
    scale = _norm(xp, adam) / xp.maximum(_norm(xp, u), xp.asarray(tiny, dtype=u.dtype))
    return u * scale, exp_avg, exp_avg_sq


def clip_rms(u: Array, max_rms: Any) -> Array:
    """``U · max_rms / max(rms(U), max_rms)``: the update's RMS capped at ``max_rms``.

    Example (an RMS of 3 is capped at 1; an RMS under the cap passes unchanged)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> optim.clip_rms(np.full(4, 3.0), 1.0).tolist()
        [1.0, 1.0, 1.0, 1.0]
        >>> optim.clip_rms(np.full(4, 0.5), 1.0).tolist()
        [0.5, 0.5, 0.5, 0.5]
    """
    xp = array_namespace(u)
    rms = xp.sqrt(xp.mean(u * u))
    return u * (max_rms / xp.maximum(rms, xp.asarray(max_rms, dtype=u.dtype)))


def add_momentum(buf: Array, u: Array, momentum: Any) -> Array:
    """Heavy-ball (undampened) momentum ``m ← μ m + U``; returns the new ``m``.

    Example (two unit updates: ``m = 1``, then ``0.9·1 + 1``)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> m = optim.add_momentum(np.zeros(2), np.ones(2), 0.9)
        >>> optim.add_momentum(m, np.ones(2), 0.9).tolist()
        [1.9, 1.9]
    """
    return momentum * buf + u


def apply_update(param: Array, u: Array, *, lr: Any, weight_decay: Any = 0.0) -> Array:
    """Decoupled weight decay and the step: ``M ← (1 − lr·wd) M − lr·U`` in ``param``'s dtype.

    Example (``(1 − 0.1·0.5)·2 − 0.1·1 = 1.8``; the parameter's dtype is kept)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> w = np.full(2, 2.0, dtype=np.float32)
        >>> w = optim.apply_update(w, np.ones(2), lr=0.1, weight_decay=0.5)
        >>> [round(float(x), 6) for x in w], w.dtype
        ([1.8, 1.8], dtype('float32'))
    """
    xp = array_namespace(param)
    decayed = xp.astype(param * (1 - lr * weight_decay), param.dtype)
    return decayed - xp.astype(u * lr, param.dtype)


def check_finite_grads(xp: Namespace, grads: list[Array]) -> bool:
    """True when every gradient is finite (one host sync for the whole list).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> xp = optim.namespace(np.zeros(1))
        >>> optim.check_finite_grads(xp, [np.ones(2), np.zeros((2, 2))])
        True
        >>> optim.check_finite_grads(xp, [np.ones(2), np.array([np.nan])])
        False
        >>> optim.check_finite_grads(xp, [])
        True
    """
    if not grads:
        return True
    flags = [xp.all(xp.isfinite(g)) for g in grads]
    ok = flags[0]
    for f in flags[1:]:
        ok = ok & f
    return bool(ok)
