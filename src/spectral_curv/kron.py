"""Kronecker spectral scheme ``S = α · S_C ⊗ S_K`` with ``det S_C = det S_K = 1`` (SPEC §4).

``S_C = B_C Diag(d_C) B_Cᵀ`` (r×r) acts on the rows of a weight ``M ∈ R^{r×c}``,
``S_K = B_K Diag(d_K) B_Kᵀ`` (c×c) on its columns; with row-major ``vec``,
``S^{-1/p} vec(G) = vec(α^{-1/p} S_C^{-1/p} G S_K^{-1/p})``.

Rotated-gradient form (SPEC §4): with ``R = B_Cᵀ G B_K``,
``W_C = R Diag(1/d_K) Rᵀ``, ``W_K = Rᵀ Diag(1/d_C) R`` and the step
``α^{-1/p} B_C [Diag(d_C^{-1/p}) R Diag(d_K^{-1/p})] B_Kᵀ``.
Derivation: ``W_C = B_Cᵀ G S_K⁻¹ Gᵀ B_C = (B_CᵀGB_K) Diag(d_K)⁻¹ (B_CᵀGB_K)ᵀ`` since
``S_K⁻¹ = B_K Diag(1/d_K) B_Kᵀ``; likewise for ``W_K`` and the step.

Matmul count of :func:`precondition_and_update` for an n×n layer: 2 (R) + 2 (W_C, W_K)
+ 2 (step) + per factor 2K+1 (Neumann Cayley incl. ``B·P``, K = ``cayley_terms`` ≥ 1; 2 at
K = 0): 12 at K = 1. ``W_C``, ``W_K`` and ``X²`` are products of one operand with its own
transpose (numpy runs them as syrk, half the flops): 10 matmuls of flops on numpy.

Example::

    >>> import numpy as np
    >>> from spectral_curv import kron
    >>> st = kron.init(4, 3)
    >>> G = np.ones((4, 3))
    >>> st, step = kron.precondition_and_update(st, G, p=2, beta2=0.1)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import _array as A
from . import maps
from ._array import Array, Namespace, array_namespace

__all__ = [
    "KronState",
    "dense",
    "factors",
    "from_factors",
    "init",
    "logdet",
    "precondition",
    "precondition_and_update",
    "update_gop",
]


class KronState(NamedTuple):
    """``S = α (B_C Diag(d_C) B_Cᵀ) ⊗ (B_K Diag(d_K) B_Kᵀ)``, ``Π d_C = Π d_K = 1``."""

    alpha: Array  # 0-d, > 0
    B_C: Array  # (r, r) orthogonal
    d_C: Array  # (r,)
    B_K: Array  # (c, c) orthogonal
    d_K: Array  # (c,)


def init(
    rows: int,
    cols: int,
    *,
    scale: float = 1.0,
    dtype: Any = None,
    device: Any = None,
    xp: Namespace | None = None,
) -> KronState:
    """``S = scale · I`` (``α = scale``, ``B = I``, ``d = 1``); numpy float64 by default."""
    for name, v in (("rows", rows), ("cols", cols)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"`{name}` must be a positive int, got {v!r}")
    A.check_positive("scale", scale)
    if xp is None:
        import numpy as _np

        xp = array_namespace(_np.empty(0))
    dtype = xp.float64 if dtype is None else dtype
    kw = {"dtype": dtype, "device": device}
    return KronState(
        xp.asarray(scale, **kw),
        xp.eye(rows, **kw),
        xp.ones((rows,), **kw),
        xp.eye(cols, **kw),
        xp.ones((cols,), **kw),
    )


def from_factors(s_c: Array, s_k: Array, alpha: Any = 1.0) -> KronState:
    """The unique normalised state of ``alpha · s_c ⊗ s_k`` (Claim 5; ``eigh``, set-up only)."""
    xp = array_namespace(s_c, s_k)
    d_c, b_c = xp.linalg.eigh(s_c)
    d_k, b_k = xp.linalg.eigh(s_k)
    if not A.is_lazy(d_c, d_k) and not (bool(xp.all(d_c > 0)) and bool(xp.all(d_k > 0))):
        raise ValueError("`s_c` and `s_k` must be positive definite")
    lc = xp.mean(xp.log(d_c))
    lk = xp.mean(xp.log(d_k))
    a = xp.asarray(alpha, dtype=d_c.dtype, device=A.device(d_c)) * xp.exp(lc + lk)
    return KronState(a, b_c, xp.exp(xp.log(d_c) - lc), b_k, xp.exp(xp.log(d_k) - lk))


def factors(state: KronState, power: Any = 1.0) -> tuple[Array, Array, Array]:
    """``(α^power, S_C^power, S_K^power)`` as explicit matrices."""
    sc = (state.B_C * state.d_C[None, :] ** power) @ state.B_C.mT
    sk = (state.B_K * state.d_K[None, :] ** power) @ state.B_K.mT
    return state.alpha**power, sc, sk


def dense(state: KronState, power: Any = 1.0) -> Array:
    """The explicit ``(α S_C ⊗ S_K)^power`` (rc × rc; for tests and small problems)."""
    import array_api_extra as xpx

    xp = array_namespace(state.B_C)
    a, sc, sk = factors(state, power)
    return a * xpx.kron(sc, sk, xp=xp)


def logdet(state: KronState) -> Array:
    """``log det S = rc log α + c Σ log d_C + r Σ log d_K`` (= rc log α under the constraints)."""
    xp = array_namespace(state.B_C)
    r, c = state.d_C.shape[0], state.d_K.shape[0]
    return (
        r * c * xp.log(state.alpha)
        + c * xp.sum(xp.log(state.d_C))
        + r * xp.sum(xp.log(state.d_K))
    )


def _check(xp: Namespace, state: KronState, g: Array, name: str) -> tuple[int, int]:
    r, c = state.d_C.shape[0], state.d_K.shape[0]
    A.check_same_namespace(xp, B_C=state.B_C, **{name: g})
    A.check_floating(xp, name, g)
    if g.ndim not in (2, 3) or tuple(g.shape[-2:]) != (r, c):
        raise ValueError(
            f"`{name}` must have shape ({r}, {c}) or (batch, {r}, {c}), got {tuple(g.shape)}"
        )
    A.check_finite(xp, name, g)
    return r, c


def _rotate(state: KronState, g: Array) -> Array:
    """``R = B_Cᵀ G B_K`` (batched over a leading axis when present)."""
    return state.B_C.mT @ g @ state.B_K


def _direction(xp: Namespace, state: KronState, r_rot: Array, p: Any) -> Array:
    """``α^{-1/p} B_C [Diag(d_C^{-1/p}) R Diag(d_K^{-1/p})] B_Kᵀ``."""
    e = -1.0 / p
    # α^{-1/p} folded into the row scale: two n×n passes, not three.
    core = r_rot * ((state.alpha**e) * state.d_C**e)[:, None] * (state.d_K**e)[None, :]
    return state.B_C @ core @ state.B_K.mT


def _refresh(
    xp: Namespace,
    state: KronState,
    r_rot: Array,
    *,
    beta2: Any,
    gamma: Any,
    damping: Any,
    cayley: str,
    exp: str,
    cayley_terms: int,
    tie_tol: float | None,
    max_step_norm: float | None,
) -> KronState:
    """The SPEC §4 update from the rotated gradient ``R`` (shape (r, c) or (b, r, c))."""
    r, c = state.d_C.shape[0], state.d_K.shape[0]
    alpha, d_c, d_k = state.alpha, state.d_C, state.d_K
    if r_rot.ndim == 2:
        # W_C = (R D_K^{-1/2})(R D_K^{-1/2})ᵀ, W_K = (D_C^{-1/2} R)ᵀ(D_C^{-1/2} R): each a
        # product of one operand with its own transpose, which numpy runs as syrk (half
        # the flops of a matmul, an exactly symmetric result).
        # (``del``: drop each n×n temporary as soon as it is used, to keep the peak memory,
        # and with it fresh-page faults, low.)
        rk = r_rot * (d_k**-0.5)[None, :]
        w_c = rk @ rk.mT
        del rk
        rc = r_rot * (d_c**-0.5)[:, None]
        w_k = rc.mT @ rc
        del rc
    else:
        nb = r_rot.shape[0]
        w_c = xp.sum((r_rot / d_k[None, None, :]) @ r_rot.mT, axis=0) / nb
        w_k = xp.sum((r_rot.mT / d_c[None, None, :]) @ r_rot, axis=0) / nb
    # diag(W_C)_i = Σ_j R_ij² / d_K,j (and likewise W_K): read off the W just formed.
    diag_c = xp.linalg.diagonal(w_c)
    diag_k = xp.linalg.diagonal(w_k)
    # Adaptive damping λ_l = λ Tr(S_other⁻¹): the projection of Δ = λI onto each factor.
    lam_c = damping * xp.sum(1.0 / d_k)
    lam_k = damping * xp.sum(1.0 / d_c)
    k_c, k_k = float(c), float(r)
    if exp == "exact":
        m_c = (-gamma * d_c + (diag_c + lam_c) / (alpha * k_c)) / d_c
        m_k = (-gamma * d_k + (diag_k + lam_k) / (alpha * k_k)) / d_k
        mc_mean, mk_mean = xp.mean(m_c), xp.mean(m_k)
        new_dc = d_c * xp.exp(beta2 * (m_c - mc_mean))
        new_dk = d_k * xp.exp(beta2 * (m_k - mk_mean))
        new_alpha = alpha * xp.exp((beta2 / 2.0) * (mc_mean + mk_mean))
    else:
        log_nc = xp.log((1.0 - gamma * beta2) * d_c + (beta2 / (alpha * k_c)) * (diag_c + lam_c))
        log_nk = xp.log((1.0 - gamma * beta2) * d_k + (beta2 / (alpha * k_k)) * (diag_k + lam_k))
        lc, lk = xp.mean(log_nc), xp.mean(log_nk)
        new_dc = xp.exp(log_nc - lc)
        new_dk = xp.exp(log_nk - lk)
        new_alpha = alpha * xp.exp(lc / 2.0 + lk / 2.0)
    del diag_c, diag_k  # views of W
    # W_C, W_K are symmetric: the generator reads both triangles (no transposed pass).
    # One factor at a time, each W and X dropped once used (lower peak memory).
    x_c = maps.rotation_generator(
        w_c, d_c, beta2 / (2.0 * alpha * k_c), tie_tol=tie_tol, max_step_norm=max_step_norm,
        symmetric=True,
    )
    del w_c
    b_c = maps.cayley_apply(state.B_C, x_c, mode=cayley, terms=cayley_terms)  # type: ignore[arg-type]
    del x_c
    x_k = maps.rotation_generator(
        w_k, d_k, beta2 / (2.0 * alpha * k_k), tie_tol=tie_tol, max_step_norm=max_step_norm,
        symmetric=True,
    )
    del w_k
    b_k = maps.cayley_apply(state.B_K, x_k, mode=cayley, terms=cayley_terms)  # type: ignore[arg-type]
    return KronState(new_alpha, b_c, new_dc, b_k, new_dk)


def _options(
    beta2: Any,
    gamma: Any,
    damping: Any,
    cayley: str,
    exp: str,
    cayley_terms: int,
    tie_tol: float | None,
    max_step_norm: float | None,
) -> float | None:
    A.check_positive("beta2", beta2)
    A.check_positive("gamma", gamma, allow_zero=True)
    A.check_positive("damping", damping, allow_zero=True)
    maps.check_modes(cayley, exp, cayley_terms)
    if tie_tol is not None:
        A.check_positive("tie_tol", tie_tol, allow_zero=True)
    if max_step_norm is None and cayley == "neumann":
        max_step_norm = maps.DEFAULT_MAX_STEP_NORM
    if max_step_norm is not None:
        A.check_positive("max_step_norm", max_step_norm)
    return max_step_norm


def update_gop(
    state: KronState,
    G: Array,
    *,
    beta2: Any,
    gamma: Any = 1.0,
    damping: Any = 0.0,
    cayley: str = "exact",
    exp: str = "exact",
    cayley_terms: int = 1,
    tie_tol: float | None = None,
    max_step_norm: float | None = None,
) -> KronState:
    """Kronecker spectral step for the GOP of ``G`` (r×c, or a batch (b, r, c): mean GOP).

    ``exp="exact"`` is SPEC §4's exact update (``m_l``, mean-centred exp, ``α`` update);
    ``exp="first_order"`` the truncated form of Fig. 6 / Claim 8. ``damping`` ``λ`` enters
    as ``λ_l = λ Tr(S_other⁻¹)`` (SPEC §5). In ``neumann`` mode each factor's Cayley
    argument is rescaled to ``‖X_l‖_F ≤ max_step_norm`` (default 0.25): the block-specific
    normalised step of SPEC §4; in exact mode nothing is rescaled unless asked.
    """
    xp = array_namespace(state.B_C)
    _check(xp, state, G, "G")
    msn = _options(beta2, gamma, damping, cayley, exp, cayley_terms, tie_tol, max_step_norm)
    return _refresh(
        xp, state, _rotate(state, G), beta2=beta2, gamma=gamma, damping=damping,
        cayley=cayley, exp=exp, cayley_terms=cayley_terms, tie_tol=tie_tol, max_step_norm=msn,
    )


def precondition(state: KronState, G: Array, *, p: Any) -> Array:
    """``α^{-1/p} S_C^{-1/p} G S_K^{-1/p}`` in the rotated form (4 matmuls; SPEC §4)."""
    xp = array_namespace(state.B_C)
    _check(xp, state, G, "G")
    A.check_positive("p", p)
    return _direction(xp, state, _rotate(state, G), p)


def precondition_and_update(
    state: KronState,
    G: Array,
    *,
    p: Any,
    beta2: Any,
    gamma: Any = 1.0,
    damping: Any = 0.0,
    cayley: str = "exact",
    exp: str = "exact",
    cayley_terms: int = 1,
    tie_tol: float | None = None,
    max_step_norm: float | None = None,
) -> tuple[KronState, Array]:
    """Fused refresh + step sharing ``R = B_Cᵀ G B_K`` (SPEC §4): returns ``(new_state, step)``.

    The step is preconditioned with the factors *before* this refresh (one refresh of lag,
    as in SOAP); call :func:`update_gop` then :func:`precondition` for the un-lagged order,
    at the cost of two more matmuls. ``G`` must be a single (r, c) gradient here.
    """
    xp = array_namespace(state.B_C)
    _check(xp, state, G, "G")
    if G.ndim != 2:
        raise ValueError("`G` must be a single (r, c) gradient in precondition_and_update")
    A.check_positive("p", p)
    msn = _options(beta2, gamma, damping, cayley, exp, cayley_terms, tie_tol, max_step_norm)
    r_rot = _rotate(state, G)
    new = _refresh(
        xp, state, r_rot, beta2=beta2, gamma=gamma, damping=damping,
        cayley=cayley, exp=exp, cayley_terms=cayley_terms, tie_tol=tie_tol, max_step_norm=msn,
    )
    # The step uses the old factors (``state``); formed after the refresh so that it is not
    # held in memory through it.
    step = _direction(xp, state, r_rot, p)
    return new, step
