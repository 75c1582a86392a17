"""Full-matrix spectral scheme ``S = B Diag(d) Bᵀ`` for generic curvature (SPEC §2).

One step with ``Q = Bᵀ Δ B`` (simultaneous in ``d`` and ``B``, both from the current point)::

    d ← d ⊙ exp(β₂ diag(Q) / d)                         (exp="exact")
    d ← d + β₂ diag(Q)                                  (exp="first_order", PSD Δ only)
    U_ij = −Q_ij / (d_i − d_j)   (i > j, 0 on ties)
    B ← B · Cayley((β₂/2) · Skew(Tril(U)))

Example::

    >>> import numpy as np
    >>> from spectral_curv import full
    >>> st = full.init(3)
    >>> st = full.update_gop(st, np.array([1.0, 2.0, 3.0]), beta2=0.1)
    >>> v = full.precondition(st, np.ones(3), p=2)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import _array as A
from . import maps
from ._array import Array, Namespace, array_namespace

__all__ = [
    "SpectralState",
    "dense",
    "from_dense",
    "init",
    "logdet",
    "precondition",
    "update",
    "update_gop",
]


class SpectralState(NamedTuple):
    """Spectral factors of ``S = B Diag(d) Bᵀ`` (SPEC §1): ``B`` (n, n) orthogonal, ``d > 0``.

    Example (a rotation ``B`` and eigenvalues ``d`` give ``S = B Diag(d) Bᵀ``)::

        >>> import numpy as np
        >>> from spectral_curv import full
        >>> c, s = np.cos(0.3), np.sin(0.3)
        >>> st = full.SpectralState(np.array([[c, -s], [s, c]]), np.array([1.0, 3.0]))
        >>> bool(np.allclose(np.linalg.eigvalsh(full.dense(st)), [1.0, 3.0]))
        True
    """

    B: Array
    d: Array


def init(
    n: int,
    *,
    scale: float = 1.0,
    dtype: Any = None,
    device: Any = None,
    xp: Namespace | None = None,
) -> SpectralState:
    """``S = scale · I`` (``B = I``, ``d = scale``); numpy float64 unless ``xp``/``dtype`` say.

    The initial state ``S₀ = λ₀I`` of the spectral scheme (SPEC §2).

    Example::

        >>> from spectral_curv import full
        >>> st = full.init(3, scale=2.0)
        >>> st.B.shape, st.d.tolist(), st.d.dtype
        ((3, 3), [2.0, 2.0, 2.0], dtype('float64'))
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}")
    A.check_positive("scale", scale)
    if xp is None:
        import numpy as _np

        xp = array_namespace(_np.empty(0))
    dtype = xp.float64 if dtype is None else dtype
    b = xp.eye(n, dtype=dtype, device=device)
    d = xp.full((n,), scale, dtype=dtype, device=device)
    return SpectralState(b, d)


def from_dense(s: Array) -> SpectralState:
    """Spectral state of an explicit SPD matrix (one eigendecomposition; for set-up and tests).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import full
        >>> st = full.from_dense(np.diag([1.0, 4.0]))
        >>> bool(np.allclose(full.dense(st), np.diag([1.0, 4.0])))
        True
    """
    xp = array_namespace(s)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"`s` must be a square matrix, got shape {tuple(s.shape)}")
    d, b = xp.linalg.eigh(s)
    if not A.is_lazy(d) and not bool(xp.all(d > 0)):
        raise ValueError("`s` is not positive definite")
    return SpectralState(b, d)


def _check_state(xp: Namespace, state: SpectralState) -> int:
    n = state.d.shape[-1]
    A.check_shape("state.B", state.B, (n, n))
    return n


def _options(
    xp: Namespace,
    dtype: Any,
    beta2: Any,
    cayley: str,
    exp: str,
    cayley_terms: int,
    tie_tol: float | None,
    max_step_norm: float | None,
    rotation: str | None = None,
) -> tuple[float, float | None]:
    A.check_positive("beta2", beta2)
    maps.check_rotation(rotation)
    maps.check_modes(cayley, exp, cayley_terms)
    if tie_tol is not None:
        A.check_positive("tie_tol", tie_tol, allow_zero=True)
    if max_step_norm is None and cayley != "exact":
        max_step_norm = maps.DEFAULT_MAX_STEP_NORM
    if max_step_norm is not None:
        A.check_positive("max_step_norm", max_step_norm)
    tol = maps.default_tie_tol(xp, dtype) if tie_tol is None else tie_tol
    return tol, max_step_norm


def _apply(
    state: SpectralState,
    q: Array,
    diag_q: Array,
    beta2: Any,
    cayley: str,
    exp: str,
    cayley_terms: int,
    tol: float,
    max_step_norm: float | None,
    rotation: str | None,
) -> SpectralState:
    """Shared step from ``Q`` (off-diagonal part read) and ``diag(Q)`` (SPEC §2)."""
    d = maps.exp_scale(state.d, beta2 * diag_q, mode=exp)  # type: ignore[arg-type]
    # The damped rule takes the pair gaps after the d update (the 2×2 Jacobi angle of
    # S + β₂Δ uses the new diagonal; docs/math.md); the paper's rule, before it.
    # Step guard: the paper's rule caps ‖X‖_F in the generator (SPEC §5); the damped rule
    # bounds ‖X‖₂ inside the Cayley map (maps.cayley_apply).
    damped = maps.resolve_rotation(rotation) == "damped"
    x = maps.rotation_generator(
        q,
        d if damped else state.d,
        beta2 / 2.0,
        tie_tol=tol,
        max_step_norm=None if damped else max_step_norm,
        rotation=rotation,  # type: ignore[arg-type]
    )
    b = maps.cayley_apply(
        state.B,
        x,
        mode=cayley,  # type: ignore[arg-type]
        terms=cayley_terms,
        max_norm=max_step_norm if damped else None,
    )
    return SpectralState(b, d)


def update(
    state: SpectralState,
    delta: Array,
    *,
    beta2: Any,
    cayley: str = "exact",
    exp: str = "exact",
    cayley_terms: int = 1,
    tie_tol: float | None = None,
    max_step_norm: float | None = None,
    rotation: str | None = None,
) -> SpectralState:
    """One spectral step for a generic symmetric curvature change ``Δ`` (SPEC §2).

    ``Δ`` is what the classical scheme would add per unit step (``S ← S + β₂Δ``); it may be
    indefinite (Hessians, SPD-problem gradients, NES estimates), in which case use the
    exact maps. ``tie_tol`` is the relative gap under which ``d_i ≈ d_j`` masks ``U_ij``
    (default ``sqrt(eps)``); ``max_step_norm`` caps ``‖(β₂/2)Skew(Tril(U))‖_F`` (default:
    none in exact mode, 0.25 in the truncated modes ``neumann``/``quadratic``).
    ``rotation="damped"`` (default) bounds each pair's rotation near eigenvalue ties;
    ``rotation="paper"`` is SPEC §2's ``U_ij = −Q_ij/(d_i − d_j)``
    (:func:`maps.rotation_generator`).

    Example (an indefinite ``Δ``; ``B`` stays orthogonal and ``d`` positive)::

        >>> import numpy as np
        >>> from spectral_curv import full
        >>> st = full.init(3)
        >>> delta = np.array([[1.0, 0.5, 0.0], [0.5, -1.0, 0.2], [0.0, 0.2, 0.3]])
        >>> st = full.update(st, delta, beta2=0.1)
        >>> bool(np.allclose(st.B.T @ st.B, np.eye(3))), bool(np.all(st.d > 0))
        (True, True)
    """
    xp = array_namespace(state.B, state.d)
    n = _check_state(xp, state)
    A.check_same_namespace(xp, B=state.B, delta=delta)
    A.check_floating(xp, "delta", delta)
    A.check_shape("delta", delta, (n, n))
    A.check_finite(xp, "delta", delta)
    if not A.is_lazy(delta):
        asym = float(xp.max(xp.abs(delta - delta.mT)))
        if asym > 1e3 * A.eps(xp, delta.dtype) * max(float(xp.max(xp.abs(delta))), 1e-300):
            raise ValueError(f"`delta` must be symmetric (max |Δ − Δᵀ| = {asym:.3g})")
    tol, msn = _options(
        xp, state.d.dtype, beta2, cayley, exp, cayley_terms, tie_tol, max_step_norm, rotation
    )
    tmp = delta @ state.B
    q = state.B.mT @ tmp
    diag_q = xp.sum(state.B * tmp, axis=-2)
    return _apply(state, q, diag_q, beta2, cayley, exp, cayley_terms, tol, msn, rotation)


def update_gop(
    state: SpectralState,
    g: Array,
    *,
    beta2: Any,
    gamma: Any = 1.0,
    damping: Any = 0.0,
    cayley: str = "exact",
    exp: str = "exact",
    cayley_terms: int = 1,
    tie_tol: float | None = None,
    max_step_norm: float | None = None,
    rotation: str | None = None,
) -> SpectralState:
    """Spectral step for the gradient outer product ``Δ = ggᵀ + λI − γS`` (SPEC §2).

    ``g`` is one gradient ``(n,)`` or a batch ``(b, n)``, whose GOP is the batch mean
    ``(1/b) Σ g_i g_iᵀ``; ``ggᵀ`` is never formed (``BᵀggᵀB = (Bᵀg)(Bᵀg)ᵀ``).
    ``gamma=1`` is RMSprop-like, ``gamma=0`` AdaGrad-like; ``damping`` is ``λ``.

    Example (one gradient, then a batch of two)::

        >>> import numpy as np
        >>> from spectral_curv import full
        >>> st = full.init(3)
        >>> st = full.update_gop(st, np.array([1.0, 2.0, 3.0]), beta2=0.1)
        >>> st = full.update_gop(st, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]), beta2=0.1)
        >>> st.B.shape, st.d.shape, bool(np.allclose(st.B.T @ st.B, np.eye(3)))
        ((3, 3), (3,), True)
    """
    xp = array_namespace(state.B, state.d)
    n = _check_state(xp, state)
    A.check_same_namespace(xp, B=state.B, g=g)
    A.check_floating(xp, "g", g)
    if g.ndim not in (1, 2) or g.shape[-1] != n:
        raise ValueError(f"`g` must have shape ({n},) or (batch, {n}), got {tuple(g.shape)}")
    A.check_finite(xp, "g", g)
    A.check_positive("gamma", gamma, allow_zero=True)
    A.check_positive("damping", damping, allow_zero=True)
    tol, msn = _options(
        xp, state.d.dtype, beta2, cayley, exp, cayley_terms, tie_tol, max_step_norm, rotation
    )
    h = g @ state.B  # rows are (Bᵀ g_i)ᵀ
    if g.ndim == 1:
        q = h[:, None] * h[None, :]
        hh = h * h
    else:
        q = (h.mT @ h) / g.shape[0]
        hh = xp.mean(h * h, axis=0)
    diag_q = hh + damping - gamma * state.d
    return _apply(state, q, diag_q, beta2, cayley, exp, cayley_terms, tol, msn, rotation)


def precondition(state: SpectralState, v: Array, *, p: Any) -> Array:
    """``S^{-1/p} v = B Diag(d^{-1/p}) Bᵀ v``, ``v`` of shape ``(n,)`` or ``(..., n)`` (SPEC §1).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import full
        >>> st = full.init(3, scale=4.0)
        >>> full.precondition(st, np.ones(3), p=2).tolist()
        [0.5, 0.5, 0.5]
        >>> full.precondition(st, np.ones((5, 3)), p=2).shape
        (5, 3)
    """
    xp = array_namespace(state.B, state.d)
    n = _check_state(xp, state)
    A.check_same_namespace(xp, B=state.B, v=v)
    A.check_positive("p", p)
    if v.ndim < 1 or v.shape[-1] != n:
        raise ValueError(f"`v` must have trailing dimension {n}, got shape {tuple(v.shape)}")
    return ((v @ state.B) * state.d ** (-1.0 / p)) @ state.B.mT


def dense(state: SpectralState, power: Any = 1.0) -> Array:
    """The explicit ``S^power = B Diag(d^power) Bᵀ`` (for tests and small problems; SPEC §1).

    Example (``S^{1/2}`` squares to ``S``)::

        >>> import numpy as np
        >>> from spectral_curv import full
        >>> st = full.from_dense(np.array([[2.0, 1.0], [1.0, 2.0]]))
        >>> root = full.dense(st, power=0.5)
        >>> bool(np.allclose(root @ root, [[2.0, 1.0], [1.0, 2.0]]))
        True
    """
    return (state.B * state.d[None, :] ** power) @ state.B.mT


def logdet(state: SpectralState) -> Array:
    """``log det S = Σ log d`` (SPEC §1).

    Example (agrees with the determinant of the dense matrix)::

        >>> import numpy as np
        >>> from spectral_curv import full
        >>> st = full.from_dense(np.array([[2.0, 1.0], [1.0, 2.0]]))
        >>> bool(np.isclose(full.logdet(st), np.log(3.0)))
        True
    """
    xp = array_namespace(state.d)
    return xp.sum(xp.log(state.d), axis=-1)
