"""Kronecker spectral scheme ``S = α · S_C ⊗ S_K`` with ``det S_C = det S_K = 1`` (math §4).

``S_C = B_C Diag(d_C) B_Cᵀ`` (r×r) acts on the rows of a weight ``M ∈ R^{r×c}``,
``S_K = B_K Diag(d_K) B_Kᵀ`` (c×c) on its columns; with row-major ``vec``,
``S^{-1/p} vec(G) = vec(α^{-1/p} S_C^{-1/p} G S_K^{-1/p})``.

Rotated-gradient form (math §4.1): with ``R = B_Cᵀ G B_K``,
``W_C = R Diag(1/d_K) Rᵀ``, ``W_K = Rᵀ Diag(1/d_C) R`` and the step
``α^{-1/p} B_C [Diag(d_C^{-1/p}) R Diag(d_K^{-1/p})] B_Kᵀ``.
Derivation: ``W_C = B_Cᵀ G S_K⁻¹ Gᵀ B_C = (B_CᵀGB_K) Diag(d_K)⁻¹ (B_CᵀGB_K)ᵀ`` since
``S_K⁻¹ = B_K Diag(1/d_K) B_Kᵀ``; likewise for ``W_K`` and the step.

Matmul count of :func:`precondition_and_update` for an n×n layer: 2 (R) + 2 (W_C, W_K)
+ 2 (step) + per factor 2K+1 (Neumann Cayley incl. ``B·P``, K = ``cayley_terms`` ≥ 1; 2 at
K = 0): 12 at K = 1; 10 with ``cayley="quadratic"`` (2 per factor, the orthogonality order
of K = 1). ``W_C``, ``W_K`` and ``X²`` are products of one operand with its own
transpose (numpy runs them as syrk, half the flops): 10 (K = 1) or 8 (quadratic) matmuls
of flops on numpy.

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
from .full import _check_first_order

__all__ = [
    "KronState",
    "dense",
    "factors",
    "from_factors",
    "init",
    "lagged",
    "logdet",
    "precondition",
    "precondition_and_update",
    "precondition_rotated",
    "rotate",
    "update_gop",
    "update_rotated",
]


class KronState(NamedTuple):
    """``S = α (B_C Diag(d_C) B_Cᵀ) ⊗ (B_K Diag(d_K) B_Kᵀ)``, ``Π d_C = Π d_K = 1`` (math §4).

    Leading axes ``L = alpha.shape`` stack independent layers of the same shape (one
    batched matmul chain refreshes them all). ``B_C`` or ``B_K`` may be ``None``: that side
    is diagonal (``B = I`` fixed, O(n) memory; for very long sides such as vocabularies).

    Example (``α = 3`` times ``Diag(2, 1/2) ⊗ I₂`` keeps ``Π d_C = Π d_K = 1``)::

        >>> import numpy as np
        >>> from spectral_curv import kron
        >>> st = kron.KronState(np.array(3.0), np.eye(2), np.array([2.0, 0.5]), None, np.ones(2))
        >>> np.diag(kron.dense(st)).tolist()
        [6.0, 6.0, 1.5, 1.5]
    """

    alpha: Array  # (*L,), > 0
    B_C: Array | None  # (*L, r, r) orthogonal, or None (diagonal side)
    d_C: Array  # (*L, r)
    B_K: Array | None  # (*L, c, c) orthogonal, or None (diagonal side)
    d_K: Array  # (*L, c)
    #: (*L, r, c) > 0, or None: the corrected eigenvalues of math §4.10 (a per-entry second
    #: moment of ``R = B_Cᵀ G B_K``, used by the step in place of ``α d_C ⊗ d_K``).
    V: Array | None = None


def init(
    rows: int,
    cols: int,
    *,
    batch: tuple[int, ...] = (),
    diag_rows: bool = False,
    diag_cols: bool = False,
    scale: float = 1.0,
    dtype: Any = None,
    device: Any = None,
    xp: Namespace | None = None,
) -> KronState:
    """``S = scale · I`` (``α = scale``, ``B = I``, ``d = 1``); numpy float64 by default.

    ``batch`` stacks independent layers; ``diag_rows``/``diag_cols`` keep that side diagonal
    (math §4).

    Example::

        >>> from spectral_curv import kron
        >>> st = kron.init(4, 3, scale=2.0)
        >>> float(st.alpha), st.B_C.shape, st.d_C.shape, st.B_K.shape, st.d_K.shape
        (2.0, (4, 4), (4,), (3, 3), (3,))
        >>> st = kron.init(4, 3, batch=(5,), diag_cols=True)
        >>> st.alpha.shape, st.B_C.shape, st.B_K is None, st.d_K.shape
        ((5,), (5, 4, 4), True, (5, 3))
    """
    for name, v in (("rows", rows), ("cols", cols)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"`{name}` must be a positive int, got {v!r}")
    batch = tuple(batch)
    if any((not isinstance(b, int)) or b < 0 for b in batch):
        raise ValueError(f"`batch` must be a tuple of non-negative ints, got {batch!r}")
    A.check_positive("scale", scale)
    if xp is None:
        import numpy as _np

        xp = array_namespace(_np.empty(0))
    dtype = xp.float64 if dtype is None else dtype
    kw = {"dtype": dtype, "device": device}

    def eye(n: int) -> Array:
        e = xp.eye(n, **kw)
        return xp.broadcast_to(e, (*batch, n, n)) + xp.zeros((*batch, n, n), **kw)

    return KronState(
        xp.full(batch, scale, **kw),
        None if diag_rows else eye(rows),
        xp.ones((*batch, rows), **kw),
        None if diag_cols else eye(cols),
        xp.ones((*batch, cols), **kw),
    )


def from_factors(s_c: Array, s_k: Array, alpha: Any = 1.0) -> KronState:
    """The unique normalised state of ``alpha · s_c ⊗ s_k`` (Claim 5; uses ``eigh``, set-up only).

    Leading axes of ``s_c``/``s_k`` stack layers (``alpha`` broadcasts against them);
    math §4.

    Example::

        >>> import numpy as np
        >>> from spectral_curv import kron
        >>> st = kron.from_factors(np.diag([1.0, 4.0]), np.eye(3))
        >>> float(st.alpha), float(np.prod(st.d_C)), float(np.prod(st.d_K))
        (2.0, 1.0, 1.0)
    """
    xp = array_namespace(s_c, s_k)
    d_c, b_c = xp.linalg.eigh(s_c)
    d_k, b_k = xp.linalg.eigh(s_k)
    if not A.is_lazy(d_c, d_k) and not (bool(xp.all(d_c > 0)) and bool(xp.all(d_k > 0))):
        raise ValueError("`s_c` and `s_k` must be positive definite")
    lc = xp.mean(xp.log(d_c), axis=-1, keepdims=True)
    lk = xp.mean(xp.log(d_k), axis=-1, keepdims=True)
    a = xp.asarray(alpha, dtype=d_c.dtype, device=A.device(d_c)) * xp.exp((lc + lk)[..., 0])
    return KronState(a, b_c, xp.exp(xp.log(d_c) - lc), b_k, xp.exp(xp.log(d_k) - lk))


def _factor(b: Array | None, d: Array, power: Any) -> Array:
    if b is None:
        import array_api_extra as xpx

        return xpx.create_diagonal(d**power, xp=array_namespace(d))
    return (b * (d**power)[..., None, :]) @ b.mT


def factors(state: KronState, power: Any = 1.0) -> tuple[Array, Array, Array]:
    """``(α^power, S_C^power, S_K^power)`` as explicit matrices (math §4).

    Example (round-trips :func:`from_factors`)::

        >>> import numpy as np
        >>> from spectral_curv import kron
        >>> a, sc, sk = kron.factors(kron.from_factors(np.diag([1.0, 4.0]), np.eye(3)))
        >>> float(a), bool(np.allclose(a * sc, np.diag([1.0, 4.0])))
        (2.0, True)
        >>> bool(np.allclose(sk, np.eye(3)))
        True
    """
    return (
        state.alpha**power,
        _factor(state.B_C, state.d_C, power),
        _factor(state.B_K, state.d_K, power),
    )


def dense(state: KronState, power: Any = 1.0) -> Array:
    """The explicit ``(α S_C ⊗ S_K)^power`` (rc × rc; for tests and small problems; math §4).

    Example (equals ``np.kron`` of the factors)::

        >>> import numpy as np
        >>> from spectral_curv import kron
        >>> sc, sk = np.array([[2.0, 1.0], [1.0, 2.0]]), np.diag([1.0, 2.0, 4.0])
        >>> st = kron.from_factors(sc, sk)
        >>> kron.dense(st).shape, bool(np.allclose(kron.dense(st), np.kron(sc, sk)))
        ((6, 6), True)
    """
    import array_api_extra as xpx

    xp = array_namespace(state.d_C)
    a, sc, sk = factors(state, power)
    if state.alpha.ndim:
        raise ValueError("dense() takes a single (unbatched) state")
    return a * xpx.kron(sc, sk, xp=xp)


def logdet(state: KronState) -> Array:
    """``log det S = rc log α + c Σ log d_C + r Σ log d_K`` (= rc log α under the constraints).

    math §1, §4.

    Example (agrees with the dense Kronecker product)::

        >>> import numpy as np
        >>> from spectral_curv import kron
        >>> sc, sk = np.array([[2.0, 1.0], [1.0, 2.0]]), np.diag([1.0, 2.0, 4.0])
        >>> st = kron.from_factors(sc, sk)
        >>> bool(np.isclose(kron.logdet(st), np.linalg.slogdet(np.kron(sc, sk))[1]))
        True
    """
    xp = array_namespace(state.d_C)
    r, c = state.d_C.shape[-1], state.d_K.shape[-1]
    return (
        r * c * xp.log(state.alpha)
        + c * xp.sum(xp.log(state.d_C), axis=-1)
        + r * xp.sum(xp.log(state.d_K), axis=-1)
    )


def _check(xp: Namespace, state: KronState, g: Array, name: str, check: bool) -> None:
    """Shapes always; backend, dtype and finiteness when ``check`` (eager arrays only)."""
    lead = tuple(state.alpha.shape)
    r, c = state.d_C.shape[-1], state.d_K.shape[-1]
    want = (*lead, r, c)
    if tuple(g.shape[-len(want) :]) != want or g.ndim > len(want) + 1:
        raise ValueError(
            f"`{name}` must have shape {want} or (batch, *{want}), got {tuple(g.shape)}"
        )
    for nm, b, n in (("B_C", state.B_C, r), ("B_K", state.B_K, c)):
        if b is not None and tuple(b.shape) != (*lead, n, n):
            raise ValueError(f"`state.{nm}` must have shape {(*lead, n, n)}, got {tuple(b.shape)}")
    if g.dtype != state.d_C.dtype:
        raise ValueError(
            f"`{name}` has dtype {g.dtype} but the state's factors are {state.d_C.dtype}: "
            f"cast `{name}` to the state's dtype"
        )
    if check:
        A.check_same_namespace(xp, d_C=state.d_C, **{name: g})
        A.check_floating(xp, name, g)
        A.check_finite(xp, name, g)


def rotate(state: KronState, G: Array) -> Array:
    """``R = B_Cᵀ G B_K``, the gradient in the factors' eigenbasis (math §4.1; 2 matmuls, a
    diagonal side is the identity). ``G`` is ``(*L, r, c)`` or ``(b, *L, r, c)``.

    :func:`update_rotated` and :func:`precondition_rotated` take it, so that a refresh and a
    step in the same basis share it.

    Example (the initial basis is the identity)::

        >>> import numpy as np
        >>> from spectral_curv import kron
        >>> G = np.arange(6.0).reshape(2, 3)
        >>> bool(np.array_equal(kron.rotate(kron.init(2, 3), G), G))
        True
    """
    if state.B_C is not None:
        G = state.B_C.mT @ G
    if state.B_K is not None:
        G = G @ state.B_K
    return G


def _direction(state: KronState, r_rot: Array, p: Any) -> Array:
    """``α^{-1/p} B_C [Diag(d_C^{-1/p}) R Diag(d_K^{-1/p})] B_Kᵀ``."""
    return _unrotate(state, _direction_core(state, r_rot, p))


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
    rotation: str | None = None,
) -> KronState:
    """The math §4 update from the rotated gradient ``R`` (``(*L, r, c)``, or a sample batch
    ``(b, *L, r, c)`` whose GOP is averaged)."""
    r, c = state.d_C.shape[-1], state.d_K.shape[-1]
    alpha, d_c, d_k = state.alpha, state.d_C, state.d_K
    sample_batch = r_rot.ndim == alpha.ndim + 3

    def gram(x: Array) -> Array:
        # x xᵀ: one operand times its own transpose (numpy runs it as syrk: half the flops,
        # an exactly symmetric result; torch on the CPU a blocked product, _array.gram).
        w = A.gram(x)
        return xp.mean(w, axis=0) if sample_batch else w

    # W_C = (R D_K^{-1/2})(R D_K^{-1/2})ᵀ and W_K = (D_C^{-1/2} R)ᵀ(D_C^{-1/2} R); a diagonal
    # side needs only diag(W) = Σ_j R_ij²/d_K,j, no matmul.
    # (Each scaled copy of R is dropped as soon as its W is formed: a lower peak memory,
    # hence fewer fresh pages to fault in on the next call.)
    rk = r_rot * (d_k**-0.5)[..., None, :]
    if state.B_C is not None:
        w_c = gram(rk)
        diag_c = xp.linalg.diagonal(w_c)
    else:
        w_c = None
        sq = xp.sum(rk * rk, axis=-1)
        diag_c = xp.mean(sq, axis=0) if sample_batch else sq
    del rk
    rc = (r_rot * (d_c**-0.5)[..., :, None]).mT
    if state.B_K is not None:
        w_k = gram(rc)
        diag_k = xp.linalg.diagonal(w_k)
    else:
        w_k = None
        sq = xp.sum(rc * rc, axis=-1)
        diag_k = xp.mean(sq, axis=0) if sample_batch else sq
    del rc
    # Adaptive damping λ_l = λ Tr(S_other⁻¹): the projection of Δ = λI onto each factor.
    lam_c = (damping * xp.sum(1.0 / d_k, axis=-1))[..., None]
    lam_k = (damping * xp.sum(1.0 / d_c, axis=-1))[..., None]
    k_c, k_k = float(c), float(r)
    a = alpha[..., None]
    # The damped rule takes the pair gaps after the d update (the 2×2 Jacobi angle of the
    # refreshed S uses its new diagonal; docs/math.md); the paper's rule, before it.
    damped = maps.resolve_rotation(rotation) == "damped"
    gap_c, gap_k = d_c, d_k
    if exp == "exact":
        m_c = (-gamma * d_c + (diag_c + lam_c) / (a * k_c)) / d_c
        m_k = (-gamma * d_k + (diag_k + lam_k) / (a * k_k)) / d_k
        mc_mean = xp.mean(m_c, axis=-1, keepdims=True)
        mk_mean = xp.mean(m_k, axis=-1, keepdims=True)
        new_dc = d_c * xp.exp(beta2 * (m_c - mc_mean))
        new_dk = d_k * xp.exp(beta2 * (m_k - mk_mean))
        new_alpha = alpha * xp.exp((beta2 / 2.0) * (mc_mean + mk_mean)[..., 0])
        lc, lk = beta2 * mc_mean, beta2 * mk_mean  # the mean log change of each d
        if damped:  # the new diagonal before its normalisation (in the old scale α)
            gap_c, gap_k = new_dc * xp.exp(lc), new_dk * xp.exp(lk)
        # The update keeps Σ log d; rounding does not (bf16 factors drifted to a mean log of
        # 0.137 in 2,000 steps, past the checkpoint check): put Σ log d = 0 back, moving the
        # scale into α (S = α S_C ⊗ S_K unchanged)
        ec = xp.mean(xp.log(new_dc), axis=-1, keepdims=True)
        ek = xp.mean(xp.log(new_dk), axis=-1, keepdims=True)
        new_dc, new_dk = new_dc * xp.exp(-ec), new_dk * xp.exp(-ek)
        new_alpha = new_alpha * xp.exp((ec + ek)[..., 0])
    else:
        # the new diagonal before its normalisation (in the old scale α)
        raw_c = (1.0 - gamma * beta2) * d_c + (beta2 / (a * k_c)) * (diag_c + lam_c)
        raw_k = (1.0 - gamma * beta2) * d_k + (beta2 / (a * k_k)) * (diag_k + lam_k)
        log_nc, log_nk = xp.log(raw_c), xp.log(raw_k)
        if damped:
            gap_c, gap_k = raw_c, raw_k
        lc = xp.mean(log_nc, axis=-1, keepdims=True)
        lk = xp.mean(log_nk, axis=-1, keepdims=True)
        new_dc = xp.exp(log_nc - lc)
        new_dk = xp.exp(log_nk - lk)
        new_alpha = alpha * xp.exp((lc / 2.0 + lk / 2.0)[..., 0])
    del diag_c, diag_k  # views of W
    # One factor at a time, each W and X dropped once used (lower peak memory). In the
    # truncated modes W is taken as symmetric and both triangles are read (no transposed
    # pass); exact mode reads one triangle, so X is exactly skew and the exact Cayley exactly
    # orthogonal even where a backend's x @ xᵀ is not bitwise symmetric (torch float64 is not).
    a2 = alpha[..., None, None]

    def rotate(b: Array | None, w: Array | None, d: Array, k: float) -> Array | None:
        if b is None or w is None:
            return b
        x = maps.rotation_generator(
            w,
            d,
            beta2 / (2.0 * k * a2),
            tie_tol=tie_tol,
            max_step_norm=None if damped else max_step_norm,
            symmetric=cayley != "exact",
            rotation=rotation,  # type: ignore[arg-type]
        )
        return maps.cayley_apply(
            b,
            x,
            mode=cayley,  # type: ignore[arg-type]
            terms=cayley_terms,
            max_norm=max_step_norm if damped else None,
        )

    # Step guard: the paper's rule caps ‖X‖_F in the generator (math §4.5); the damped rule
    # bounds ‖X‖₂ inside the Cayley map (maps.cayley_apply).
    b_c = rotate(state.B_C, w_c, gap_c, k_c)
    del w_c
    b_k = rotate(state.B_K, w_k, gap_k, k_k)
    new_v = None
    if state.V is not None:  # math §4.10: the same moving average, per entry of R
        sq = r_rot * r_rot
        sq = xp.mean(sq, axis=0) if sample_batch else sq
        new_v = (1.0 - gamma * beta2) * state.V + beta2 * (sq + damping)
    return KronState(new_alpha, b_c, new_dc, b_k, new_dk, new_v)


def _options(
    beta2: Any,
    gamma: Any,
    damping: Any,
    cayley: str,
    exp: str,
    cayley_terms: int,
    tie_tol: float | None,
    max_step_norm: float | None,
    rotation: str | None = None,
) -> float | None:
    A.check_positive("beta2", beta2)
    maps.check_rotation(rotation)
    A.check_positive("gamma", gamma, allow_zero=True)
    A.check_positive("damping", damping, allow_zero=True)
    maps.check_modes(cayley, exp, cayley_terms)
    _check_first_order(exp, gamma, beta2)
    if tie_tol is not None:
        A.check_positive("tie_tol", tie_tol, allow_zero=True)
    if max_step_norm is None and cayley != "exact":
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
    rotation: str | None = None,
    check: bool = True,
) -> KronState:
    """Kronecker spectral step for the GOP of ``G`` (math §4).

    ``G`` has the state's shape ``(*L, r, c)`` (one gradient per stacked layer), or a leading
    sample axis ``(b, *L, r, c)`` whose GOP is averaged. ``check=False`` skips the value
    checks (finiteness, backend) for adapters that have already done them once.

    ``exp="exact"`` is math §4.2's exact update (``m_l``, mean-centred exp, ``α`` update);
    ``exp="first_order"`` the truncated form of Fig. 6 / Claim 8. ``damping`` ``λ`` enters
    as ``λ_l = λ Tr(S_other⁻¹)`` (math §4.4). In the truncated modes (``neumann``, or
    ``quadratic``: ``I + 2X + 2X²`` in 2 matmuls, :func:`maps.cayley_apply_quadratic`) each
    factor's Cayley argument is rescaled to ``‖X_l‖_F ≤ max_step_norm`` (default 0.25): the
    block-specific normalised step of math §4.5; in exact mode nothing is rescaled unless asked.
    ``rotation="damped"`` (default) bounds each pair's rotation where two eigenvalues nearly
    tie; ``rotation="paper"`` is math §4's ``U_ij = −W_ij/(d_i − d_j)``
    (:func:`maps.rotation_generator`).

    Example (``B_C``, ``B_K`` stay orthogonal; ``Π d_C = 1`` is kept)::

        >>> import numpy as np
        >>> from spectral_curv import kron
        >>> G = np.arange(12.0).reshape(4, 3) / 10
        >>> st = kron.update_gop(kron.init(4, 3), G, beta2=0.1)
        >>> bool(np.allclose(st.B_C.T @ st.B_C, np.eye(4))), bool(np.isclose(np.prod(st.d_C), 1))
        (True, True)
        >>> st = kron.update_gop(st, np.stack([G, -G]), beta2=0.1, cayley="quadratic")
        >>> st.alpha.shape, st.B_K.shape
        ((), (3, 3))
    """
    xp = array_namespace(state.d_C)
    _check(xp, state, G, "G", check)
    return update_rotated(
        state,
        rotate(state, G),
        beta2=beta2,
        gamma=gamma,
        damping=damping,
        cayley=cayley,
        exp=exp,
        cayley_terms=cayley_terms,
        tie_tol=tie_tol,
        max_step_norm=max_step_norm,
        rotation=rotation,
    )


def update_rotated(
    state: KronState,
    R: Array,
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
) -> KronState:
    """:func:`update_gop` from the rotated gradient ``R = rotate(state, G)`` (math §4.1–§4.5):
    the same update without forming ``R`` again. No value checks (give ``R`` from a checked
    ``G``).

    Example (the same state as :func:`update_gop`)::

        >>> import numpy as np
        >>> from spectral_curv import kron
        >>> st, G = kron.init(4, 3), np.arange(12.0).reshape(4, 3) / 10
        >>> st = kron.update_gop(st, G, beta2=0.1)
        >>> a = kron.update_rotated(st, kron.rotate(st, G), beta2=0.1)
        >>> b = kron.update_gop(st, G, beta2=0.1)
        >>> all(np.allclose(x, y) for x, y in zip(a[:5], b[:5]))
        True
    """
    xp = array_namespace(state.d_C)
    msn = _options(
        beta2, gamma, damping, cayley, exp, cayley_terms, tie_tol, max_step_norm, rotation
    )
    return _refresh(
        xp,
        state,
        R,
        beta2=beta2,
        gamma=gamma,
        damping=damping,
        cayley=cayley,
        exp=exp,
        cayley_terms=cayley_terms,
        tie_tol=tie_tol,
        max_step_norm=msn,
        rotation=rotation,
    )


def precondition(
    state: KronState, G: Array, *, p: Any, norm_p: Any = None, check: bool = True
) -> Array:
    """``α^{-1/p} S_C^{-1/p} G S_K^{-1/p}`` in the rotated form (4 matmuls; math §4).

    ``G`` is ``(*L, r, c)`` or ``(b, *L, r, c)`` (each slice preconditioned). With
    ``norm_p`` (e.g. 2), each slice is rescaled to the Frobenius norm of the root-``norm_p``
    step ``S^{-1/norm_p} G``: the direction of root ``p``, the size of root ``norm_p``
    (``maps.match_norm``; no overflow for any ``p``, the same matmuls).

    Example (``α = 4``, ``p = 2``: the step is ``G / 2``)::

        >>> import numpy as np
        >>> from spectral_curv import kron
        >>> st = kron.init(2, 3, scale=4.0)
        >>> kron.precondition(st, np.ones((2, 3)), p=2).tolist()
        [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
        >>> kron.precondition(st, np.ones((7, 2, 3)), p=2).shape
        (7, 2, 3)
        >>> st = st._replace(d_C=np.array([4.0, 0.25]))
        >>> u1 = kron.precondition(st, np.ones((2, 3)), p=1, norm_p=2)
        >>> u2 = kron.precondition(st, np.ones((2, 3)), p=2)
        >>> bool(np.isclose(np.linalg.norm(u1), np.linalg.norm(u2))), (u1[1] / u1[0]).tolist()
        (True, [16.0, 16.0, 16.0])
    """
    xp = array_namespace(state.d_C)
    _check(xp, state, G, "G", check)
    return precondition_rotated(state, rotate(state, G), p=p, norm_p=norm_p)


def precondition_rotated(state: KronState, R: Array, *, p: Any, norm_p: Any = None) -> Array:
    """:func:`precondition` from the rotated gradient ``R = rotate(state, G)`` (math §4.1,
    §4.8, §4.10): ``B_C [core] B_Kᵀ``, 2 matmuls. No value checks.

    Example (the same step as :func:`precondition`)::

        >>> import numpy as np
        >>> from spectral_curv import kron
        >>> st = kron.from_factors(np.diag([4.0, 1.0]), np.eye(3))
        >>> G = np.ones((2, 3))
        >>> u = kron.precondition_rotated(st, kron.rotate(st, G), p=2)
        >>> bool(np.allclose(u, kron.precondition(st, G, p=2))), u[:, 0].round(12).tolist()
        (True, [0.5, 1.0])
    """
    A.check_positive("p", p)
    if norm_p is None or (_static(p) and _static(norm_p) and p == norm_p):
        return _direction(state, R, p)
    A.check_positive("norm_p", norm_p)
    ds = [state.d_C[..., :, None], state.d_K[..., None, :]] if state.V is None else [state.V]
    ref = _direction_core(state, R, norm_p)
    return _unrotate(state, maps.match_norm(R, ds, p=p, ref=ref, axes=(-2, -1)))


def _static(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _direction_core(state: KronState, r_rot: Array, p: Any) -> Array:
    """``α^{-1/p} Diag(d_C^{-1/p}) R Diag(d_K^{-1/p})`` (the rotated-frame step), or
    ``R ⊙ V^{-1/p}`` with corrected eigenvalues (math §4.10)."""
    e = -1.0 / p
    if state.V is not None:
        return r_rot * state.V**e
    # α^{-1/p} folded into the row scale: two passes over R, not three.
    row = (state.alpha**e)[..., None] * state.d_C**e
    return r_rot * row[..., :, None] * (state.d_K**e)[..., None, :]


def _unrotate(state: KronState, core: Array) -> Array:
    """``B_C core B_Kᵀ`` (a diagonal side is the identity)."""
    if state.B_C is not None:
        core = state.B_C @ core
    if state.B_K is not None:
        core = core @ state.B_K.mT
    return core


def lagged(old: KronState, new: KronState) -> KronState:
    """The state a step taken right after the refresh ``old → new`` uses in the lagged order
    (math §4.10): ``old``'s basis and eigenvalues, and with corrected eigenvalues ``new``'s
    ``V``, which the refresh accumulated in ``old``'s basis, the current gradient included
    (Adam's order). Its step reuses the refresh's ``R = rotate(old, G)``.

    Example (corrected eigenvalues: the new ``V`` in the old basis)::

        >>> import numpy as np
        >>> from spectral_curv import kron
        >>> old = kron.init(2, 2)._replace(V=np.ones((2, 2)))
        >>> new = kron.update_gop(old, np.eye(2), beta2=0.5)
        >>> st = kron.lagged(old, new)
        >>> st.B_C is old.B_C, st.V is new.V
        (True, True)
    """
    return old if new.V is None else old._replace(V=new.V)


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
    rotation: str | None = None,
    check: bool = True,
) -> tuple[KronState, Array]:
    """Fused refresh + step sharing ``R = B_Cᵀ G B_K`` (math §4): returns ``(new_state, step)``.

    The step is preconditioned with the factors *before* this refresh (one refresh of lag,
    as in SOAP; with corrected eigenvalues the refreshed ``V``, :func:`lagged`); call
    :func:`update_gop` then :func:`precondition` for the un-lagged order, at the cost of two
    more matmuls. ``G`` must have the state's shape ``(*L, r, c)`` (a
    single gradient per layer) here.

    Example (the first step uses ``S₀ = I``, so it is ``G`` itself)::

        >>> import numpy as np
        >>> from spectral_curv import kron
        >>> G = np.arange(12.0).reshape(4, 3) / 10
        >>> st, step = kron.precondition_and_update(kron.init(4, 3), G, p=2, beta2=0.1)
        >>> step.shape, bool(np.allclose(step, G))
        ((4, 3), True)
        >>> st2, step2 = kron.precondition_and_update(st, G, p=2, beta2=0.1)
        >>> bool(np.allclose(step2, kron.precondition(st, G, p=2)))
        True
    """
    xp = array_namespace(state.d_C)
    _check(xp, state, G, "G", check)
    if G.ndim != state.alpha.ndim + 2:
        raise ValueError(
            "`G` must be a single (r, c) gradient per layer in precondition_and_update"
        )
    A.check_positive("p", p)
    r_rot = rotate(state, G)
    new = update_rotated(
        state,
        r_rot,
        beta2=beta2,
        gamma=gamma,
        damping=damping,
        cayley=cayley,
        exp=exp,
        cayley_terms=cayley_terms,
        tie_tol=tie_tol,
        max_step_norm=max_step_norm,
        rotation=rotation,
    )
    # The step uses the factors before the refresh; it is formed after it so that it is not
    # held in memory through the refresh (fewer fresh-page faults).
    step = _direction(lagged(state, new), r_rot, p)
    return new, step
