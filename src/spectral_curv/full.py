"""Full-matrix spectral scheme ``S = B Diag(d) Bᵀ`` for generic curvature (math §2).

One step with ``Q = Bᵀ Δ B`` (simultaneous in ``d`` and ``B``, both from the current point)::

    d ← d ⊙ exp(β₂ diag(Q) / d)                         (exp="exact")
    d ← d + β₂ diag(Q)                                  (exp="first_order", PSD Δ only)
    U_ij = −Q_ij / (d_i − d_j)   (i > j, 0 on ties)
    B ← B · Cayley((β₂/2) · Skew(Tril(U)))

:func:`update_rotated` takes ``Q`` itself: applications that know the curvature in the
rotated frame (SPD optimisation: ``Q = −2 Diag(d)(BᵀGB)Diag(d)``; NES) stay there and never
form the dense ``S`` or ``Δ`` (docs/math.md); :func:`update` is ``update_rotated(Bᵀ Δ B)``.

Example::

    >>> import numpy as np
    >>> from spectral_curv import full
    >>> st = full.init(3)
    >>> st = full.update_gop(st, np.array([1.0, 2.0, 3.0]), beta2=0.1)
    >>> v = full.precondition(st, np.ones(3), p=2)
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

from . import _array as A
from . import maps
from ._array import Array, Namespace, array_namespace

__all__ = [
    "DEFAULT_SWEEPS",
    "SpectralState",
    "dense",
    "from_dense",
    "init",
    "logdet",
    "precondition",
    "update",
    "update_geodesic",
    "update_gop",
    "update_rotated",
]


class SpectralState(NamedTuple):
    """Spectral factors of ``S = B Diag(d) Bᵀ`` (math §1): ``B`` (n, n) orthogonal, ``d > 0``.

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

    The initial state ``S₀ = λ₀I`` of the spectral scheme (math §2).

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

    ``s`` must be symmetric to round-off (``max |S − Sᵀ| ≤ 1e3·eps·max |S|`` in its dtype; a
    non-symmetric matrix is refused rather than read from one triangle) and positive
    definite (math §1).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import full
        >>> st = full.from_dense(np.diag([1.0, 4.0]))
        >>> bool(np.allclose(full.dense(st), np.diag([1.0, 4.0])))
        True
        >>> full.from_dense(np.array([[1.0, 0.5], [0.0, 1.0]]))
        Traceback (most recent call last):
        ...
        ValueError: `s` must be symmetric (max |S − Sᵀ| = 0.5)
    """
    xp = array_namespace(s)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"`s` must be a square matrix, got shape {tuple(s.shape)}")
    A.check_floating(xp, "s", s)
    A.check_finite(xp, "s", s)
    _check_symmetric(xp, "s", "S", s)
    d, b = xp.linalg.eigh(s)
    if not A.is_lazy(d) and not bool(xp.all(d > 0)):
        raise ValueError("`s` is not positive definite")
    return SpectralState(b, d)


def _check_symmetric(xp: Namespace, name: str, sym: str, m: Array) -> None:
    """Refuse an eager matrix that is not symmetric to round-off (dtype-relative tolerance)."""
    if A.is_lazy(m):
        return
    asym = float(xp.max(xp.abs(m - m.mT)))
    if asym > 1e3 * A.eps(xp, m.dtype) * max(float(xp.max(xp.abs(m))), 1e-300):
        raise ValueError(f"`{name}` must be symmetric (max |{sym} − {sym}ᵀ| = {asym:.3g})")


def _check_first_order(exp: str, gamma: Any, beta2: Any) -> None:
    """``exp="first_order"`` GOP step ``d ← (1 − γβ₂)d + β₂(h² + λ)`` needs ``γβ₂ < 1``.

    With ``γβ₂ ≥ 1`` the old ``d`` gets a weight ``≤ 0``: ``d`` reaches 0 (or flips sign)
    wherever ``h² + λ`` is small, and the next root is inf / NaN (math §2, §3). Checked for
    Python numbers only (arrays may be traced).
    """
    if exp != "first_order" or not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (gamma, beta2)
    ):
        return
    if float(gamma) * float(beta2) >= 1.0:
        raise ValueError(
            f"`gamma` * `beta2` must be < 1 with exp='first_order' (got gamma={gamma!r}, "
            f"beta2={beta2!r}): d ← (1 − γβ₂)d + β₂(g² + λ) leaves the cone d > 0; "
            "use exp='exact' or a smaller beta2"
        )


def _check_state(xp: Namespace, state: SpectralState) -> int:
    n = state.d.shape[-1]
    A.check_shape("state.B", state.B, (n, n))
    return n


def _check_q(state: SpectralState, q: Array, check: bool) -> tuple[Namespace, int]:
    """Namespace and size of ``state``; ``q`` (n, n), and with ``check`` from that namespace,
    floating, finite and symmetric to round-off (eager arrays)."""
    xp = array_namespace(state.B, state.d)
    n = _check_state(xp, state)
    A.check_shape("q", q, (n, n))
    if check:
        A.check_same_namespace(xp, B=state.B, q=q)
        A.check_floating(xp, "q", q)
        A.check_finite(xp, "q", q)
        _check_symmetric(xp, "q", "Q", q)
    return xp, n


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
    """Shared step from ``Q`` (off-diagonal part read) and ``diag(Q)`` (math §2)."""
    d = maps.exp_scale(state.d, beta2 * diag_q, mode=exp)  # type: ignore[arg-type]
    # The damped rule takes the pair gaps after the d update (the 2×2 Jacobi angle of
    # S + β₂Δ uses the new diagonal; docs/math.md); the paper's rule, before it.
    # Step guard: the paper's rule caps ‖X‖_F in the generator (math §4.5); the damped rule
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
    """One spectral step for a generic symmetric curvature change ``Δ`` (math §2).

    ``Δ`` is what the classical scheme would add per unit step (``S ← S + β₂Δ``); it may be
    indefinite (Hessians, SPD-problem gradients, NES estimates), in which case use the
    exact maps. ``tie_tol`` is the relative gap under which ``d_i ≈ d_j`` masks ``U_ij``
    (default ``sqrt(eps)``); ``max_step_norm`` caps ``‖(β₂/2)Skew(Tril(U))‖_F`` (default:
    none in exact mode, 0.25 in the truncated modes ``neumann``/``quadratic``).
    ``rotation="damped"`` (default) bounds each pair's rotation near eigenvalue ties;
    ``rotation="paper"`` is math §2's ``U_ij = −Q_ij/(d_i − d_j)``
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
    _check_symmetric(xp, "delta", "Δ", delta)
    tmp = delta @ state.B
    return update_rotated(
        state,
        state.B.mT @ tmp,
        beta2=beta2,
        cayley=cayley,
        exp=exp,
        cayley_terms=cayley_terms,
        tie_tol=tie_tol,
        max_step_norm=max_step_norm,
        rotation=rotation,
        diag_q=xp.sum(state.B * tmp, axis=-2),
        check=False,
    )


def update_rotated(
    state: SpectralState,
    q: Array,
    *,
    beta2: Any,
    cayley: str = "exact",
    exp: str = "exact",
    cayley_terms: int = 1,
    tie_tol: float | None = None,
    max_step_norm: float | None = None,
    rotation: str | None = None,
    diag_q: Array | None = None,
    check: bool = True,
) -> SpectralState:
    """One spectral step from the curvature change in the rotated frame, ``Q = BᵀΔB`` (math §2).

    The step of :func:`update` without the dense round trip: applications that can form
    ``Q`` directly stay in the factored frame (SPD optimisation: ``Q = −2 Diag(d)(BᵀGB)
    Diag(d)``; NES: ``Q = −Diag(√d)(EB)ᵀ Diag(u) (EB) Diag(√d)``, ``E`` the rows ``ε_iᵀ``).
    ``q`` must be symmetric to round-off (as ``Δ`` in :func:`update`: ``max |Q − Qᵀ| ≤
    1e3·eps·max |Q|``; symmetrise a product such as ``Bᵀ(ΔB)`` first); only its diagonal and
    strict lower triangle are read. ``diag_q`` optionally supplies ``diag(Q)`` (e.g.
    computed more accurately from the un-rotated factors); default ``linalg.diagonal(q)``.
    ``check=False`` skips the value checks of ``q`` (namespace, finiteness, symmetry; host
    syncs) for callers that have validated their inputs; options are validated either way.
    The options are those of :func:`update`.

    Example (the same step as ``update(state, Δ)`` with ``Q = BᵀΔB``)::

        >>> import numpy as np
        >>> from spectral_curv import full
        >>> st = full.from_dense(np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.1], [0.0, 0.1, 3.0]]))
        >>> delta = np.array([[1.0, 0.5, 0.0], [0.5, -1.0, 0.2], [0.0, 0.2, 0.3]])
        >>> a = full.update_rotated(st, st.B.T @ delta @ st.B, beta2=0.1)
        >>> b = full.update(st, delta, beta2=0.1)
        >>> bool(np.allclose(a.B, b.B, atol=1e-14)), bool(np.allclose(a.d, b.d, rtol=1e-14))
        (True, True)
    """
    xp, n = _check_q(state, q, check)
    tol, msn = _options(
        xp, state.d.dtype, beta2, cayley, exp, cayley_terms, tie_tol, max_step_norm, rotation
    )
    if diag_q is None:
        diag_q = xp.linalg.diagonal(q)
    else:
        A.check_shape("diag_q", diag_q, (n,))
    return _apply(state, q, diag_q, beta2, cayley, exp, cayley_terms, tol, msn, rotation)


#: Rotation sweeps of :func:`update_geodesic` where a caller does not choose (``spd.step``'s
#: default): 3 take the log-det and Karcher-mean problems of docs/spd.md to RGD-expm's
#: iteration counts, 2 to within 1.5×.
DEFAULT_SWEEPS = 3


def update_geodesic(
    state: SpectralState,
    q: Array,
    *,
    beta2: Any,
    sweeps: int = DEFAULT_SWEEPS,
    cayley: str = "exact",
    cayley_terms: int = 1,
    max_step_norm: float | None = None,
    check: bool = True,
) -> SpectralState:
    """Spectral factors of the geodesic step ``S^{½} exp(β₂S^{-½}ΔS^{-½}) S^{½}`` (math §2.5).

    ``q = BᵀΔB`` as in :func:`update_rotated`. In the frame ``B`` the target is
    ``T = D^{1/2} exp(β₂ D^{-1/2} Q D^{-1/2}) D^{1/2}`` (``D = Diag(d)``; :func:`maps.expm`,
    matmuls only), which is positive definite whatever the sign of ``Q``. ``sweeps`` rotations
    then diagonalise it: each turns every pair ``(i, j)`` by the damped Jacobi angle of its
    2×2 block (:func:`maps.rotation_generator` with ``W = T``, gaps ``diag(T)``), ``R =
    Cayley(X)`` by ``cayley`` (the truncated modes under the step guard ``max_step_norm``,
    default 0.25), and ``T ← RᵀTR``. The result is ``B ← B R₁⋯R_k``, ``d ← diag(T)``: ``B``
    orthogonal (exactly in ``exact`` mode), ``d > 0`` (eigenvalues below round-off, ``eps·‖T‖``,
    are floored at the dtype's smallest normal number), and ``B Diag(d) Bᵀ`` equals the target
    up to the off-diagonal of ``T`` left after the sweeps. To first order in β₂ one sweep
    is :func:`update_rotated`'s damped step (``T ≈ D + β₂Q``); each further sweep removes
    the second-order remainder the first-order step leaves (the off-diagonal of ``T`` shrinks
    quadratically once it is small against the gaps). Cost: ``expm`` (``order`` + squarings
    products) plus four products per sweep. ``check=False`` skips the value checks of ``q``.

    Example (``sweeps=4`` reproduces the dense geodesic step to round-off)::

        >>> import numpy as np
        >>> from spectral_curv import full, maps
        >>> s = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.1], [0.0, 0.1, 3.0]])
        >>> delta = np.array([[1.0, 0.5, 0.0], [0.5, -1.0, 0.2], [0.0, 0.2, 0.3]])
        >>> st = full.from_dense(s)
        >>> new = full.update_geodesic(st, st.B.T @ delta @ st.B, beta2=0.5, sweeps=4)
        >>> w, v = np.linalg.eigh(s)
        >>> r, ri = (v * w**0.5) @ v.T, (v / w**0.5) @ v.T
        >>> bool(np.allclose(full.dense(new), r @ maps.expm(0.5 * ri @ delta @ ri) @ r))
        True
    """
    if not isinstance(sweeps, int) or isinstance(sweeps, bool) or sweeps < 1:
        raise ValueError(f"`sweeps` must be an int >= 1, got {sweeps!r}")
    xp, n = _check_q(state, q, check)
    _, msn = _options(
        xp, state.d.dtype, beta2, cayley, "exact", cayley_terms, None, max_step_norm, "damped"
    )
    root = xp.sqrt(state.d)
    m = q / (root[:, None] * root[None, :])
    m = 0.5 * (m + m.mT)
    t = root[:, None] * maps.expm(beta2 * m) * root[None, :]
    eye = A.eye(xp, n, state.B)
    b = state.B
    for _ in range(sweeps):
        x = maps.rotation_generator(t, xp.linalg.diagonal(t), 0.5, rotation="damped")
        r = maps.cayley_apply(eye, x, mode=cayley, terms=cayley_terms, max_norm=msn)  # type: ignore[arg-type]
        t = r.mT @ t @ r
        b = b @ r
    # diag(RᵀTR) > 0 for SPD T; eigenvalues below eps·‖T‖ are round-off and may come out
    # ≤ 0: they are floored at the dtype's smallest normal number.
    tiny = float(xp.finfo(t.dtype).smallest_normal)
    return SpectralState(b, xp.maximum(xp.linalg.diagonal(t), tiny))


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
    """Spectral step for the gradient outer product ``Δ = ggᵀ + λI − γS`` (math §2).

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
    _check_first_order(exp, gamma, beta2)
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
    """``S^{-1/p} v = B Diag(d^{-1/p}) Bᵀ v``, ``v`` of shape ``(n,)`` or ``(..., n)`` (math §1).

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
    """The explicit ``S^power = B Diag(d^power) Bᵀ`` (for tests and small problems; math §1).

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
    """``log det S = Σ log d`` (math §1).

    Example (agrees with the determinant of the dense matrix)::

        >>> import numpy as np
        >>> from spectral_curv import full
        >>> st = full.from_dense(np.array([[2.0, 1.0], [1.0, 2.0]]))
        >>> bool(np.isclose(full.logdet(st), np.log(3.0)))
        True
    """
    xp = array_namespace(state.d)
    return xp.sum(xp.log(state.d), axis=-1)
