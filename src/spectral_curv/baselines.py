"""Reference schemes the paper's figures compare against (math §6).

These are *baselines*: they store full matrices, and may use ``xp.linalg`` (``solve``,
``cholesky``, ``svd``) freely. Everything is written against the array API (the namespace
comes from ``array_api_compat.array_namespace``); pure functions on ``NamedTuple`` states.

* **Default full-matrix scheme** (math §6): ``S ← S + β₂Δ``; for the gradient outer
  product ``S ← (1 − γβ₂) S + β₂ (mean(g gᵀ) + λI)`` (:func:`default_update`,
  :func:`default_update_gop`). Its fixed point under ``g ~ N(0, Σ)``, γ = 1, λ = 0 is
  ``S* = E[ggᵀ] = Σ``.
* **Cholesky / inverse-free baseline** (Lin et al. 2023, 2024; math §6): keep
  ``S⁻¹ = K Kᵀ`` with ``K`` lower triangular, ``X = Kᵀ Δ K`` (GOP:
  ``X = (Kᵀg)(Kᵀg)ᵀ + λKᵀK − γI``), ``M = Tril(X) + ½ Diag(X)`` (so ``M + Mᵀ = X``) and
  ``K ← K (I − β₂ M)`` (``exp="first_order"``) or ``K ← K · expm(−β₂ M)`` (``exp="exact"``).
  ``K`` stays lower triangular either way. To first order in β₂ it is ``S ← S + β₂Δ``:
  ``(KKᵀ)_new = KKᵀ − β₂ K (M + Mᵀ) Kᵀ + O(β₂²) = S⁻¹ − β₂ S⁻¹ Δ S⁻¹ + O(β₂²)``.
  The matrix exponential is :func:`spectral_curv.maps.expm`: scaling and squaring of a
  degree-18 Taylor polynomial, matmuls only (no eigendecomposition, no SciPy), so it runs
  on every backend.
* **Van Loan–Pitsianis nearest Kronecker product** (:func:`nearest_kron`): the nearest
  ``A ⊗ C`` (``A`` r×r, ``C`` c×c, ``kron(A, C)`` with row-major ``vec``) to an
  ``rc × rc`` matrix in Frobenius norm is the leading singular pair of the rearrangement
  ``R[(i, j), (k, l)] = M[i·c + k, j·c + l]``, because ``R(A ⊗ C) = vec(A) vec(C)ᵀ`` and the
  rearrangement is an isometry.
* **Kronecker projection baseline** (math §6, "impractical"): ``S = A ⊗ C`` and
  ``A ⊗ C ← VLP((1 − γβ₂)(A ⊗ C) + β₂ (mean(ggᵀ) + λI))`` each step
  (:func:`projection_update_gop`). It never forms the ``rc × rc`` matrix: the
  rearrangement of ``ggᵀ`` with ``g = vec(G)`` is ``kron(G, G)`` (r² × c²) and that of
  ``A ⊗ C`` is ``vec(A) vec(C)ᵀ``; the leading singular pair comes from warm-started
  power iteration (matmuls with ``G``; SVD fallback) or one r²×c² SVD.
* **Kronecker Cholesky baseline** (optional in math §6; in the spirit of SINGD, Lin et al.
  2024): ``S⁻¹ = (K_C K_Cᵀ) ⊗ (K_K K_Kᵀ)``; with ``R = K_Cᵀ G K_K``,
  ``X_C = R Rᵀ / c − γ I`` and ``X_K = Rᵀ R / r − γ I`` (the projections ``K_lᵀ Δ_l K_l``
  of the GOP onto each factor, normalisers as in math §4); the shared scale is split
  equally, ``X_l ← X_l − ½ τ I`` with ``τ = tr(X_C)/r = tr(X_K)/c``, so that to first order
  ``log det S`` moves exactly as under the default scheme (and as the spectral ``α``);
  then ``K_l ← K_l (I − β₂ M_l)`` with ``M_l = Tril(X_l) + ½ Diag(X_l)``.

The application baselines (Fig. 3 / 9) live here too, so that every math §6 reference method
is in this one module:

* **SPD optimisation** (:mod:`spectral_curv.spd`, step-size convention of that module:
  every method moves ``S ← S − 2·lr·S G S`` to first order): :func:`rgd_step`, Riemannian
  GD with the affine-invariant ``expm`` or second-order retraction, and
  :func:`cholesky_step`, the Cholesky baseline with ``Δ = −2 S G S``.
* **Gradient-free NES** (:mod:`spectral_curv.nes`, same ask/tell interface as
  :class:`~spectral_curv.nes.SpectralNES`): :class:`XNES` (full covariance ``Σ = AAᵀ``,
  Glasmachers et al. 2010) and :class:`CholeskyNES` (``Σ = KKᵀ``, Lin et al. 2021).

The methods the optimizer benchmarks compare against are here as well: Muon's quintic
Newton–Schulz orthogonalisation (:func:`newton_schulz5`) and one Shampoo/SOAP eigh refresh
and step (:func:`eigh_refresh`); :mod:`spectral_curv.bench.reference` wraps them as torch
optimizers.

``spd.rgd_step``, ``spd.cholesky_step``, ``nes.XNES`` and ``nes.CholeskyNES`` remain
importable from their former modules as deprecated aliases of these objects.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import _array as A
from . import backends
from ._array import Array, Namespace, array_namespace
from .maps import expm as expm  # moved to maps (the geodesic step uses it); old name kept
from .nes import _NESBase

__all__ = [
    "NS_COEFFS",
    "NS_STEPS",
    "XNES",
    "CholeskyNES",
    "CholeskyState",
    "DenseState",
    "KronCholeskyState",
    "KronDenseState",
    "cholesky_dense",
    "cholesky_from_dense",
    "cholesky_step",
    "cholesky_update",
    "cholesky_update_gop",
    "default_init",
    "default_update",
    "default_update_gop",
    "eigh_refresh",
    "kl_nearest_kron",
    "kron_cholesky_dense",
    "kron_cholesky_from_factors",
    "kron_cholesky_update_gop",
    "kron_dense",
    "nearest_kron",
    "newton_schulz5",
    "projection_from_factors",
    "projection_update_gop",
    "rearrange",
    "rgd_step",
]


# --------------------------------------------------------------------------- helpers


def _gop(xp: Namespace, g: Array, n: int) -> Array:
    """``mean_b g_b g_bᵀ`` of one gradient ``(n,)`` or a batch ``(b, n)``."""
    if g.ndim not in (1, 2) or g.shape[-1] != n:
        raise ValueError(f"`g` must have shape ({n},) or (batch, {n}), got {tuple(g.shape)}")
    if g.ndim == 1:
        return g[:, None] * g[None, :]
    return (g.mT @ g) / g.shape[0]


def _diag_matrix(xp: Namespace, v: Array) -> Array:
    """``Diag(v)`` for a vector ``v``."""
    return A.eye(xp, v.shape[-1], v) * v[None, :]


def _half_tril(xp: Namespace, x: Array) -> Array:
    """``M = Tril(X) + ½ Diag(X)`` (strict lower triangle plus half the diagonal)."""
    return xp.tril(x, k=-1) + 0.5 * _diag_matrix(xp, xp.linalg.diagonal(x))


def _check_square(name: str, x: Array) -> int:
    if x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"`{name}` must be a square matrix, got shape {tuple(x.shape)}")
    return int(x.shape[0])


# --------------------------------------------------------------- default full scheme


class DenseState(NamedTuple):
    """Explicit SPD matrix ``S`` (n × n) of the default full-matrix scheme (math §6).

    Example (updates return a new ``DenseState``)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> st = bl.default_update(bl.DenseState(np.eye(2)), np.eye(2), beta2=0.5)
        >>> type(st).__name__, st.S.tolist()
        ('DenseState', [[1.5, 0.0], [0.0, 1.5]])
    """

    S: Array


def default_init(s0: Array) -> DenseState:
    """State holding ``S₀`` (copied by the arithmetic of the first update; no checks; math §6).

    Example (the state holds ``S₀`` itself, not a copy)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> s0 = 2.0 * np.eye(3)
        >>> st = bl.default_init(s0)
        >>> isinstance(st, bl.DenseState), st.S is s0
        (True, True)
    """
    _check_square("s0", s0)
    return DenseState(s0)


def default_update(state: DenseState, delta: Array, *, beta2: Any) -> DenseState:
    """Generic default scheme ``S ← S + β₂ Δ`` (math §2, §6); may leave the SPD cone.

    Example (``I + 1·(−2I) = −I``: the eigenvalues of the explicit result are ``−1``)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> st = bl.default_update(bl.default_init(np.eye(2)), -2.0 * np.eye(2), beta2=1.0)
        >>> np.linalg.eigvalsh(st.S).tolist()
        [-1.0, -1.0]
    """
    n = _check_square("state.S", state.S)
    A.check_shape("delta", delta, (n, n))
    A.check_positive("beta2", beta2)
    return DenseState(state.S + beta2 * delta)


def default_update_gop(
    state: DenseState, g: Array, *, beta2: Any, gamma: Any = 1.0, damping: Any = 0.0
) -> DenseState:
    """``S ← (1 − γβ₂) S + β₂ (mean(g gᵀ) + λ I)`` (math §6; Eq. (3) of the paper).

    Example (with γ = 1, ``S = mean(g gᵀ) + λI`` of a batch is a fixed point)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> g = np.random.default_rng(0).standard_normal((4, 3))
        >>> s = g.T @ g / 4 + 0.1 * np.eye(3)
        >>> st = bl.default_update_gop(bl.default_init(s), g, beta2=0.3, damping=0.1)
        >>> bool(np.allclose(st.S, s, rtol=1e-14, atol=0))
        True
    """
    xp = array_namespace(state.S, g)
    n = _check_square("state.S", state.S)
    A.check_positive("beta2", beta2)
    A.check_positive("gamma", gamma, allow_zero=True)
    A.check_positive("damping", damping, allow_zero=True)
    gg = _gop(xp, g, n)
    new = (1.0 - gamma * beta2) * state.S + beta2 * gg
    if not (isinstance(damping, (int, float)) and damping == 0):
        new = new + (beta2 * damping) * A.eye(xp, n, state.S)
    return DenseState(new)


# ---------------------------------------------------------------- Cholesky baseline


class CholeskyState(NamedTuple):
    """Lower-triangular ``K`` with ``S⁻¹ = K Kᵀ`` (Lin et al. 2023, 2024; math §6).

    Example (``K = Diag(1/√s)`` holds ``S = Diag(s)``)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> st = bl.CholeskyState(np.diag([0.5, 0.25]))
        >>> np.diag(bl.cholesky_dense(st)).tolist()
        [4.0, 16.0]
    """

    K: Array


def cholesky_from_dense(s: Array) -> CholeskyState:
    """``K = chol(S⁻¹)`` (lower): the Cholesky state of an explicit SPD ``S`` (set-up; math §6).

    Example (``K`` is lower triangular and ``K Kᵀ S = I``)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> x = np.random.default_rng(0).standard_normal((3, 3))
        >>> s = x @ x.T + np.eye(3)
        >>> k = bl.cholesky_from_dense(s).K
        >>> bool(np.all(np.triu(k, 1) == 0)), bool(np.allclose(k @ k.T @ s, np.eye(3)))
        (True, True)
    """
    xp = array_namespace(s)
    n = _check_square("s", s)
    s_inv = xp.linalg.solve(s, A.eye(xp, n, s))
    s_inv = 0.5 * (s_inv + s_inv.mT)
    return CholeskyState(xp.linalg.cholesky(s_inv))


def cholesky_dense(state: CholeskyState) -> Array:
    """The explicit ``S = (K Kᵀ)⁻¹ = K⁻ᵀ K⁻¹`` (one triangular-shaped solve; math §6).

    Example (round trip with ``numpy``'s Cholesky factor of ``S⁻¹``)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> x = np.random.default_rng(1).standard_normal((3, 3))
        >>> s = x @ x.T + np.eye(3)
        >>> st = bl.CholeskyState(np.linalg.cholesky(np.linalg.inv(s)))
        >>> bool(np.allclose(bl.cholesky_dense(st), s, rtol=1e-12, atol=0))
        True
    """
    xp = array_namespace(state.K)
    n = _check_square("state.K", state.K)
    k_inv = xp.linalg.solve(state.K, A.eye(xp, n, state.K))
    return k_inv.mT @ k_inv


def _cholesky_step(xp: Namespace, k: Array, x: Array, beta2: Any, exp: str) -> Array:
    m = _half_tril(xp, x)
    if exp == "first_order":
        return k - beta2 * (k @ m)
    if exp == "exact":
        return k @ expm(-beta2 * m)
    raise ValueError(f"`exp` must be 'first_order' or 'exact', got {exp!r}")


def cholesky_update(
    state: CholeskyState, delta: Array, *, beta2: Any, exp: str = "first_order"
) -> CholeskyState:
    """Inverse-free step for a generic symmetric ``Δ``: ``X = KᵀΔK``, ``K ← K(I − β₂M)``.

    ``M = Tril(X) + ½ Diag(X)``; ``exp="exact"`` uses ``K · expm(−β₂ M)`` (math §6).

    Example (diagonal ``S``, ``Δ``: the exact step is ``s ⊙ exp(β₂ δ / s)`` in closed form)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> s, delta = np.array([1.0, 4.0]), np.array([3.0, -2.0])
        >>> st0 = bl.cholesky_from_dense(np.diag(s))
        >>> st = bl.cholesky_update(st0, np.diag(delta), beta2=0.5, exp="exact")
        >>> bool(np.allclose(bl.cholesky_dense(st), np.diag(s * np.exp(0.5 * delta / s))))
        True
    """
    xp = array_namespace(state.K, delta)
    n = _check_square("state.K", state.K)
    A.check_shape("delta", delta, (n, n))
    A.check_positive("beta2", beta2)
    x = state.K.mT @ delta @ state.K
    return CholeskyState(_cholesky_step(xp, state.K, 0.5 * (x + x.mT), beta2, exp))


def cholesky_update_gop(
    state: CholeskyState,
    g: Array,
    *,
    beta2: Any,
    gamma: Any = 1.0,
    damping: Any = 0.0,
    exp: str = "first_order",
) -> CholeskyState:
    """GOP inverse-free step, ``X = mean((Kᵀg)(Kᵀg)ᵀ) + λKᵀK − γI`` (math §6).

    Example (agrees with the default scheme to first order: halving β₂ quarters the gap)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> s, g = 2.0 * np.eye(3), np.array([1.0, -2.0, 0.5])
        >>> st0, de0 = bl.cholesky_from_dense(s), bl.default_init(s)
        >>> def gap(b):
        ...     s_ch = bl.cholesky_dense(bl.cholesky_update_gop(st0, g, beta2=b))
        ...     return np.linalg.norm(s_ch - bl.default_update_gop(de0, g, beta2=b).S)
        >>> round(float(gap(1e-3) / gap(5e-4)), 2)
        4.0
    """
    xp = array_namespace(state.K, g)
    n = _check_square("state.K", state.K)
    A.check_positive("beta2", beta2)
    A.check_positive("gamma", gamma, allow_zero=True)
    A.check_positive("damping", damping, allow_zero=True)
    h = g @ state.K  # rows are (Kᵀ g_b)ᵀ
    x = _gop(xp, h, n) - gamma * A.eye(xp, n, state.K)
    if not (isinstance(damping, (int, float)) and damping == 0):
        x = x + damping * (state.K.mT @ state.K)
    return CholeskyState(_cholesky_step(xp, state.K, x, beta2, exp))


# ------------------------------------------------------------ Van Loan–Pitsianis (VLP)


def rearrange(m: Array, rows: int, cols: int) -> Array:
    """Van Loan–Pitsianis rearrangement ``R[(i,j),(k,l)] = M[i·c + k, j·c + l]`` (r² × c²).

    ``rearrange(kron(A, C)) = vec(A) vec(C)ᵀ`` (row-major ``vec``), and
    ``‖rearrange(M)‖_F = ‖M‖_F`` (math §6).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> a, c = np.arange(4.0).reshape(2, 2), np.arange(9.0).reshape(3, 3)
        >>> r = bl.rearrange(np.kron(a, c), 2, 3)
        >>> r.shape, bool(np.allclose(r, np.outer(a.ravel(), c.ravel())))
        ((4, 9), True)
    """
    xp = array_namespace(m)
    A.check_shape("m", m, (rows * cols, rows * cols))
    t = xp.reshape(m, (rows, cols, rows, cols))
    t = xp.permute_dims(t, (0, 2, 1, 3))
    return xp.reshape(t, (rows * rows, cols * cols))


def _leading_pair(xp: Namespace, r: Array, rows: int, cols: int) -> tuple[Array, Array]:
    """``(A, C)`` from the leading singular pair of a rearranged matrix (balanced norms)."""
    u, s, vh = xp.linalg.svd(r, full_matrices=False)
    root = xp.sqrt(s[0])
    a = xp.reshape(u[:, 0] * root, (rows, rows))
    c = xp.reshape(vh[0, :] * root, (cols, cols))
    # Sign gauge: (−A) ⊗ (−C) = A ⊗ C; pick tr A ≥ 0 (for SPD input both factors are then SPD).
    sign = 1.0 - 2.0 * xp.astype(xp.sum(xp.linalg.diagonal(a)) < 0, a.dtype)
    return a * sign, c * sign


def nearest_kron(m: Array, rows: int, cols: int) -> tuple[Array, Array]:
    """Frobenius-nearest ``kron(A, C)`` to ``m`` (rc × rc), ``A`` r×r, ``C`` c×c (VLP 1993).

    Returns ``(A, C)`` with ``‖A‖_F = ‖C‖_F`` and ``tr A ≥ 0``. For symmetric positive
    definite ``m`` the factors are symmetric positive definite (Van Loan & Pitsianis); they
    are symmetrised here only up to round-off by the caller if needed.

    Example (an exact Kronecker product is recovered, with balanced factor norms)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> m = np.kron(np.diag([1.0, 4.0]), np.diag([1.0, 2.0, 3.0]))
        >>> a, c = bl.nearest_kron(m, 2, 3)
        >>> na, nc = np.linalg.norm(a), np.linalg.norm(c)
        >>> bool(np.allclose(np.kron(a, c), m)), round(float(na / nc), 12)
        (True, 1.0)
    """
    xp = array_namespace(m)
    return _leading_pair(xp, rearrange(m, rows, cols), rows, cols)


def kl_nearest_kron(
    m: Array, rows: int, cols: int, *, iters: int = 1000, tol: float = 1e-13
) -> tuple[Array, Array]:
    """KL-nearest ``A ⊗ C`` to an SPD ``m``: the noise-free fixed point of the Kronecker schemes.

    The spectral Kronecker scheme (math §4, GOP, γ = 1) is stationary when
    ``α S_C = E[G S_K⁻¹ Gᵀ]/c`` and ``α S_K = E[Gᵀ S_C⁻¹ G]/r`` (``mean m_l = 0``, ``U_l = 0``),
    i.e. at the minimiser of ``tr(S⁻¹ Σ) + log det S`` over ``S = A ⊗ C`` (the matrix-normal
    maximum-likelihood / "flip-flop" estimate), *not* at the Frobenius-nearest
    :func:`nearest_kron`. With ``Rr = rearrange(m)``, ``E[G P Gᵀ] = Mat(Rr vec(P))`` and
    ``E[Gᵀ P G] = Mat(Rrᵀ vec(P))`` for symmetric ``P``, so the flip-flop iteration
    ``A ← Mat(Rr vec(C⁻¹))/c``, ``C ← Mat(Rrᵀ vec(A⁻¹))/r`` runs on ``Rr`` (compare
    :func:`nearest_kron`: power iteration uses ``vec(C)`` where this uses ``vec(C⁻¹)``).
    Stops when ``‖A⊗C − A'⊗C'‖_F ≤ tol ‖A⊗C‖_F``. Returns ``(A, C)`` with ``‖A‖_F = ‖C‖_F``.

    Example (at the minimiser ``tr(S⁻¹ m) = rc``, and the objective beats the VLP factors)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> x = np.random.default_rng(0).standard_normal((6, 6))
        >>> m = x @ x.T + np.eye(6)
        >>> f = lambda s: np.trace(np.linalg.solve(s, m)) + np.linalg.slogdet(s)[1]
        >>> s_kl, s_vlp = np.kron(*bl.kl_nearest_kron(m, 2, 3)), np.kron(*bl.nearest_kron(m, 2, 3))
        >>> round(float(np.trace(np.linalg.solve(s_kl, m))), 8), bool(f(s_kl) < f(s_vlp))
        (6.0, True)
    """
    xp = array_namespace(m)
    rr = rearrange(m, rows, cols)
    a = A.eye(xp, rows, m)
    c = A.eye(xp, cols, m)
    for _ in range(iters):
        a_new = xp.reshape(rr @ xp.reshape(xp.linalg.inv(c), (cols * cols,)), (rows, rows)) / cols
        a_new = 0.5 * (a_new + a_new.mT)
        c_new = xp.reshape(rr.mT @ xp.reshape(xp.linalg.inv(a_new), (rows * rows,)), (cols, cols))
        c_new = 0.5 * (c_new + c_new.mT) / rows
        na2, nc2 = xp.sum(a_new * a_new), xp.sum(c_new * c_new)
        diff2 = (
            na2 * nc2 + xp.sum(a * a) * xp.sum(c * c) - 2.0 * xp.sum(a_new * a) * xp.sum(c_new * c)
        )
        a, c = a_new, c_new
        if float(diff2) <= tol**2 * float(na2 * nc2):
            break
    t = (xp.sum(c * c) / xp.sum(a * a)) ** 0.25
    return a * t, c / t


class KronDenseState(NamedTuple):
    """``S = kron(A, C)`` with explicit factors (the projection baseline; math §6).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> st = bl.KronDenseState(np.diag([1.0, 2.0]), np.diag([3.0, 4.0, 5.0]))
        >>> np.diag(bl.kron_dense(st)).tolist()
        [3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
    """

    A: Array  # (r, r)
    C: Array  # (c, c)


def projection_from_factors(a: Array, c: Array) -> KronDenseState:
    """Projection-baseline state ``S = kron(a, c)`` (math §6); the factors are not copied.

    Example (``det(A ⊗ C) = det(A)³ det(C)² = 4³`` for r = 2, c = 3)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> a, c = 2.0 * np.eye(2), np.eye(3)
        >>> st = bl.projection_from_factors(a, c)
        >>> st.A is a, st.C is c, round(float(np.linalg.det(bl.kron_dense(st))), 8)
        (True, True, 64.0)
    """
    _check_square("a", a)
    _check_square("c", c)
    return KronDenseState(a, c)


def kron_dense(state: KronDenseState) -> Array:
    """The explicit ``kron(A, C)`` (rc × rc; math §6).

    Example (same as ``numpy.kron``)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> a, c = np.array([[2.0, 1.0], [1.0, 3.0]]), np.array([[1.0, 0.5], [0.5, 1.0]])
        >>> s = bl.kron_dense(bl.KronDenseState(a, c))
        >>> s.shape, bool(np.array_equal(s, np.kron(a, c)))
        ((4, 4), True)
    """
    import array_api_extra as xpx

    xp = array_namespace(state.A, state.C)
    return xpx.kron(state.A, state.C, xp=xp)


def projection_update_gop(
    state: KronDenseState,
    G: Array,
    *,
    beta2: Any,
    gamma: Any = 1.0,
    damping: Any = 0.0,
    method: str = "power",
    tol: float = 1e-13,
    max_iter: int = 100,
) -> KronDenseState:
    """``A ⊗ C ← VLP((1 − γβ₂)(A ⊗ C) + β₂ (mean(vec G vec Gᵀ) + λI))`` (math §6).

    ``G`` is one gradient (r, c) or a batch (b, r, c). Works on the r² × c² rearrangement
    ``Rr = (1 − γβ₂) vec(A) vec(C)ᵀ + β₂ mean_b kron(G_b, G_b) + β₂λ vec(I_r) vec(I_c)ᵀ``.

    ``method="svd"`` takes its leading singular pair from a full SVD of ``Rr``;
    ``method="power"`` (default, ~20× cheaper) runs power iteration on ``Rr`` without
    forming it (``kron(G, G) vec(V) = vec(G V Gᵀ)``), warm-started at the current
    ``vec(A)``. The start is ``O(β₂)`` off and each sweep contracts the error by
    ``(σ₂/σ₁)² = O(β₂²)``, so a couple of sweeps reach ``tol`` (relative change of the
    left vector); if ``max_iter`` sweeps do not, it falls back to the SVD. Either way the
    result is the exact projection to round-off (tested against each other).

    Example (the VLP projection of the explicit default-scheme update)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> G = np.random.default_rng(0).standard_normal((2, 3))
        >>> st0 = bl.projection_from_factors(np.eye(2), np.eye(3))
        >>> st = bl.projection_update_gop(st0, G, beta2=0.1)
        >>> a, c = bl.nearest_kron(0.9 * np.eye(6) + 0.1 * np.outer(G.ravel(), G.ravel()), 2, 3)
        >>> bool(np.allclose(bl.kron_dense(st), np.kron(a, c)))
        True
    """
    import array_api_extra as xpx

    xp = array_namespace(state.A, G)
    r = _check_square("state.A", state.A)
    c = _check_square("state.C", state.C)
    if G.ndim not in (2, 3) or tuple(G.shape[-2:]) != (r, c):
        raise ValueError(f"`G` must have shape ({r}, {c}) or (batch, {r}, {c}), got {G.shape}")
    A.check_positive("beta2", beta2)
    A.check_positive("gamma", gamma, allow_zero=True)
    A.check_positive("damping", damping, allow_zero=True)
    if method not in ("power", "svd"):
        raise ValueError(f"`method` must be 'power' or 'svd', got {method!r}")
    gb = G if G.ndim == 3 else G[None, ...]
    nb = float(gb.shape[0])
    va = xp.reshape(state.A, (r * r,))
    vc = xp.reshape(state.C, (c * c,))
    w = 1.0 - gamma * beta2
    lam = 0.0 if (isinstance(damping, (int, float)) and damping == 0) else beta2 * damping
    vi_r = xp.reshape(A.eye(xp, r, state.A), (r * r,))
    vi_c = xp.reshape(A.eye(xp, c, state.C), (c * c,))

    def matvec(v: Array) -> Array:  # Rr v
        vm = xp.reshape(v, (c, c))
        out = w * xp.sum(vc * v) * va
        out = out + (beta2 / nb) * xp.reshape(xp.sum(gb @ vm @ gb.mT, axis=0), (r * r,))
        return out + lam * xp.sum(vi_c * v) * vi_r

    def rmatvec(u: Array) -> Array:  # Rrᵀ u
        um = xp.reshape(u, (r, r))
        out = w * xp.sum(va * u) * vc
        out = out + (beta2 / nb) * xp.reshape(xp.sum(gb.mT @ um @ gb, axis=0), (c * c,))
        return out + lam * xp.sum(vi_r * u) * vi_c

    if method == "power":
        u = va / xp.sqrt(xp.sum(va * va))
        for _ in range(max_iter):
            v = rmatvec(u)
            v = v / xp.sqrt(xp.sum(v * v))
            u_new = matvec(v)
            sigma = xp.sqrt(xp.sum(u_new * u_new))
            u_new = u_new / sigma
            change = float(xp.sqrt(xp.sum((u_new - u) ** 2)))
            u = u_new
            if change <= tol:
                v = rmatvec(u)
                sigma = xp.sqrt(xp.sum(v * v))
                v = v / sigma
                root = xp.sqrt(sigma)
                a = xp.reshape(u * root, (r, r))
                cc = xp.reshape(v * root, (c, c))
                sign = 1.0 - 2.0 * xp.astype(xp.sum(xp.linalg.diagonal(a)) < 0, a.dtype)
                a, cc = a * sign, cc * sign
                return KronDenseState(0.5 * (a + a.mT), 0.5 * (cc + cc.mT))
    rr = w * (va[:, None] * vc[None, :])
    for b in range(gb.shape[0]):
        rr = rr + (beta2 / nb) * xpx.kron(gb[b, ...], gb[b, ...], xp=xp)
    if lam != 0.0:
        rr = rr + lam * (vi_r[:, None] * vi_c[None, :])
    a, cc = _leading_pair(xp, rr, r, c)
    return KronDenseState(0.5 * (a + a.mT), 0.5 * (cc + cc.mT))


# ---------------------------------------------------------- Kronecker Cholesky baseline


class KronCholeskyState(NamedTuple):
    """``S⁻¹ = (K_C K_Cᵀ) ⊗ (K_K K_Kᵀ)``, ``K_C`` (r×r), ``K_K`` (c×c) lower triangular (math §6).

    Example (``K_C = Diag(1/2, 1)``, ``K_K = I/2``: ``S = Diag(4, 1) ⊗ 4I``)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> st = bl.KronCholeskyState(np.diag([0.5, 1.0]), 0.5 * np.eye(2))
        >>> np.diag(bl.kron_cholesky_dense(st)).tolist()
        [16.0, 16.0, 4.0, 4.0]
    """

    K_C: Array
    K_K: Array


def kron_cholesky_from_factors(s_c: Array, s_k: Array) -> KronCholeskyState:
    """State of ``S = s_c ⊗ s_k`` (two Cholesky factorisations of the inverses; set-up; math §6).

    Example (``K_C K_Cᵀ = s_c⁻¹``)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> s_c, s_k = np.array([[2.0, 1.0], [1.0, 2.0]]), np.diag([1.0, 4.0, 9.0])
        >>> st = bl.kron_cholesky_from_factors(s_c, s_k)
        >>> bool(np.allclose(st.K_C @ st.K_C.T @ s_c, np.eye(2))), np.diag(st.K_K).tolist()
        (True, [1.0, 0.5, 0.3333333333333333])
    """
    return KronCholeskyState(cholesky_from_dense(s_c).K, cholesky_from_dense(s_k).K)


def kron_cholesky_dense(state: KronCholeskyState) -> Array:
    """The explicit ``S = (K_C K_Cᵀ)⁻¹ ⊗ (K_K K_Kᵀ)⁻¹`` (math §6).

    Example (round trip with ``numpy.kron`` of the factors)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> s_c, s_k = np.array([[2.0, 1.0], [1.0, 2.0]]), np.array([[1.0, 0.2], [0.2, 3.0]])
        >>> s = bl.kron_cholesky_dense(bl.kron_cholesky_from_factors(s_c, s_k))
        >>> bool(np.allclose(s, np.kron(s_c, s_k), rtol=1e-12, atol=0))
        True
    """
    import array_api_extra as xpx

    xp = array_namespace(state.K_C, state.K_K)
    s_c = cholesky_dense(CholeskyState(state.K_C))
    s_k = cholesky_dense(CholeskyState(state.K_K))
    return xpx.kron(s_c, s_k, xp=xp)


def kron_cholesky_update_gop(
    state: KronCholeskyState,
    G: Array,
    *,
    beta2: Any,
    gamma: Any = 1.0,
    damping: Any = 0.0,
    exp: str = "first_order",
) -> KronCholeskyState:
    """Kronecker inverse-free GOP step (module docstring; math §4 normalisers, §6).

    ``R = K_Cᵀ G K_K``; ``X_C = mean(R Rᵀ)/c + λ_C K_CᵀK_C − γI`` and
    ``X_K = mean(RᵀR)/r + λ_K K_KᵀK_K − γI`` with ``λ_C = λ tr(S_K⁻¹)/c``,
    ``λ_K = λ tr(S_C⁻¹)/r``; half the common scale ``τ`` is removed from each factor, then
    ``K_l ← K_l (I − β₂ M_l)`` (or ``K_l expm(−β₂ M_l)`` with ``exp="exact"``).

    Example (to first order ``log det S`` moves as under the default scheme)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> G, b = np.array([[1.0, -2.0, 0.5], [0.3, 1.0, 2.0]]), 1e-6
        >>> st0 = bl.kron_cholesky_from_factors(np.eye(2), np.eye(3))
        >>> st = bl.kron_cholesky_update_gop(st0, G, beta2=b)
        >>> s_def = bl.default_update_gop(bl.default_init(np.eye(6)), G.ravel(), beta2=b).S
        >>> ld = lambda s: np.linalg.slogdet(s)[1]
        >>> round(float(ld(bl.kron_cholesky_dense(st)) / ld(s_def)), 4)
        1.0
    """
    xp = array_namespace(state.K_C, G)
    r = _check_square("state.K_C", state.K_C)
    c = _check_square("state.K_K", state.K_K)
    if G.ndim not in (2, 3) or tuple(G.shape[-2:]) != (r, c):
        raise ValueError(f"`G` must have shape ({r}, {c}) or (batch, {r}, {c}), got {G.shape}")
    A.check_positive("beta2", beta2)
    A.check_positive("gamma", gamma, allow_zero=True)
    A.check_positive("damping", damping, allow_zero=True)
    kc, kk = state.K_C, state.K_K
    rot = kc.mT @ G @ kk
    if G.ndim == 2:
        x_c = (rot @ rot.mT) / float(c)
        x_k = (rot.mT @ rot) / float(r)
    else:
        nb = float(G.shape[0])
        x_c = xp.sum(rot @ rot.mT, axis=0) / (nb * c)
        x_k = xp.sum(rot.mT @ rot, axis=0) / (nb * r)
    x_c = x_c - gamma * A.eye(xp, r, kc)
    x_k = x_k - gamma * A.eye(xp, c, kk)
    if not (isinstance(damping, (int, float)) and damping == 0):
        x_c = x_c + (damping * xp.sum(kk * kk) / c) * (kc.mT @ kc)
        x_k = x_k + (damping * xp.sum(kc * kc) / r) * (kk.mT @ kk)
    tau = 0.5 * (xp.sum(xp.linalg.diagonal(x_c)) / r + xp.sum(xp.linalg.diagonal(x_k)) / c)
    x_c = x_c - (0.5 * tau) * A.eye(xp, r, kc)
    x_k = x_k - (0.5 * tau) * A.eye(xp, c, kk)
    return KronCholeskyState(
        _cholesky_step(xp, kc, x_c, beta2, exp), _cholesky_step(xp, kk, x_k, beta2, exp)
    )


# ------------------------------------------------------ SPD optimisation (Fig. 3, spd)


def _sym_grad(xp: Namespace, grad: Array, n: int) -> Array:
    """``sym(grad)`` of an ``(n, n)`` Euclidean gradient, validated (shape, finiteness)."""
    if grad.ndim != 2 or tuple(grad.shape) != (n, n):
        raise ValueError(f"`grad` must have shape ({n}, {n}), got {tuple(grad.shape)}")
    A.check_finite(xp, "grad", grad)
    return 0.5 * (grad + grad.mT)


def _sgs(s: Array, g: Array) -> Array:
    """``S G S`` made exactly symmetric (``G`` symmetric)."""
    t = s @ g @ s
    return 0.5 * (t + t.mT)


def rgd_step(s: Array, grad: Array, *, lr: Any, retraction: str = "expm") -> Array:
    """Riemannian GD on SPD, affine-invariant retraction, Fisher-scaled step (math §6).

    ``retraction="expm"``: ``S^{1/2} expm(−2·lr·S^{1/2} G S^{1/2}) S^{1/2}`` (by ``eigh``);
    ``retraction="second_order"``: ``S + ξ + ½ ξ S⁻¹ ξ``, ``ξ = −2·lr·S G S``
    (``½ ξ S⁻¹ ξ = 2 lr² S G S G S`` needs no inverse). ``G = sym(grad)``; math §6's ``β`` is
    ``2·lr`` (the step-size convention of :mod:`spectral_curv.spd`). Also importable as
    ``spd.rgd_step`` (deprecated alias).

    Example (diagonal ``S``, ``G``: ``s·exp(−2·lr·s·g)``; ``s + ξ + ξ²/(2s)``, ``ξ = −2·lr·s²g``)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> s, g = np.diag([1.0, 4.0]), np.diag([1.0, -1.0])
        >>> out = bl.rgd_step(s, g, lr=0.1)
        >>> bool(np.allclose(out, np.diag([np.exp(-0.2), 4 * np.exp(0.8)])))
        True
        >>> np.round(np.diag(bl.rgd_step(s, g, lr=0.1, retraction="second_order")), 10).tolist()
        [0.82, 8.48]
    """
    xp = array_namespace(s)
    n = s.shape[-1]
    A.check_positive("lr", lr)
    g = _sym_grad(xp, grad, n)
    if retraction == "expm":
        w, v = xp.linalg.eigh(s)
        root = (v * xp.sqrt(w)[None, :]) @ v.mT
        inner = root @ g @ root
        mu, u = xp.linalg.eigh(0.5 * (inner + inner.mT))
        e = (u * xp.exp((-2.0 * lr) * mu)[None, :]) @ u.mT
        out = root @ e @ root
    elif retraction == "second_order":
        sgs = _sgs(s, g)
        # ½ ξ S⁻¹ ξ = ½ (−2 lr SGS)(−2 lr GS) = 2 lr² (SGS)(GS): no inverse.
        out = s - (2.0 * lr) * sgs + (2.0 * lr * lr) * (sgs @ (g @ s))
    else:
        raise ValueError(f"`retraction` must be 'expm' or 'second_order', got {retraction!r}")
    return 0.5 * (out + out.mT)


def cholesky_step(
    state: CholeskyState, grad: Array, *, lr: Any, exp: str = "exact"
) -> CholeskyState:
    """SPD Cholesky baseline step: :func:`cholesky_update` with ``Δ = −2 S G S`` (math §6).

    ``S⁻¹ = K Kᵀ``, so ``X = KᵀΔK = −2 K⁻¹ G K⁻ᵀ`` (one triangular-shaped solve; ``S``
    itself is never formed); then ``K ← K · expm(−lr·M)`` (``exp="exact"``, the default) or
    ``K (I − lr·M)`` (``exp="first_order"``), ``M = Tril(X) + ½ Diag(X)``. ``G = sym(grad)``.
    Also importable as ``spd.cholesky_step`` (deprecated alias).

    Example (``S = I``, ``G = I``: the same ``S ← exp(−2·lr) I`` as the spectral step)::

        >>> import numpy as np
        >>> from spectral_curv import baselines as bl
        >>> st = bl.cholesky_step(bl.cholesky_from_dense(np.eye(2)), np.eye(2), lr=0.1)
        >>> bool(np.allclose(bl.cholesky_dense(st), np.exp(-0.2) * np.eye(2)))
        True
        >>> bool(np.allclose(st.K, np.tril(st.K)))
        True
    """
    xp = array_namespace(state.K)
    n = _check_square("state.K", state.K)
    A.check_positive("lr", lr)
    g = _sym_grad(xp, grad, n)
    k_inv = xp.linalg.solve(state.K, A.eye(xp, n, state.K))
    x = -2.0 * (k_inv @ g @ k_inv.mT)
    return CholeskyState(_cholesky_step(xp, state.K, 0.5 * (x + x.mT), lr, exp))


# ---------------------------------------------------------- gradient-free NES (Fig. 3/9)


class XNES(_NESBase):
    """Exponential NES with full covariance ``Σ = AAᵀ`` (Glasmachers et al. 2010; math §6).

    ``G = Σ u_i (ε_i ε_iᵀ − I)``, ``G_σ = tr(G)/n``, ``G_B = G − G_σ I``;
    ``A ← A · expm(½(lr_cov G_B + lr_sigma G_σ I))`` (symmetric expm by ``eigh``),
    ``μ ← μ + lr_mean A Σ u_i ε_i``. Same options and ask/tell interface as
    :class:`spectral_curv.nes.SpectralNES`. Also importable as ``nes.XNES`` (deprecated alias).

    Example (``Σ₀ = σ₀² I``, then a run on a sphere)::

        >>> import numpy as np
        >>> from spectral_curv.baselines import XNES
        >>> bool(np.allclose(XNES(np.zeros(3), 0.5, seed=0).covariance, 0.25 * np.eye(3)))
        True
        >>> sphere = lambda X: (X**2).sum(axis=1)
        >>> es = XNES(np.full(2, 3.0), 1.0, seed=0, ftarget=1e-8).optimize(sphere)
        >>> bool(es.result.fbest < 1e-8), es.stop()
        (True, {'ftarget': 1e-08})
    """

    A: Array

    def _init_state(self, sigma0: float) -> None:
        xp = self._xp
        self.A = sigma0 * xp.eye(self.n, dtype=self._dtype, device=self._device)

    def _transform(self, eps: Array) -> Array:
        return eps @ self.A.mT

    def _propose(self, eps: Array, z: Array, u: Array) -> tuple[Array, dict[str, Any]]:
        xp, n = self._xp, self.n
        eye = xp.eye(n, dtype=self._dtype, device=self._device)
        g = (eps * u[:, None]).mT @ eps - xp.sum(u) * eye
        gs = xp.sum(xp.linalg.diagonal(g)) / n
        m = 0.5 * (self.lr_cov * (g - gs * eye) + self.lr_sigma * gs * eye)
        w, v = xp.linalg.eigh(0.5 * (m + m.mT))
        mean = self._mean + self.lr_mean * (u @ z)
        return mean, {"A": self.A @ ((v * xp.exp(w)[None, :]) @ v.mT)}

    @property
    def covariance(self) -> Array:
        """The search covariance ``Σ = AAᵀ`` (dense, ``(n, n)``)."""
        return self.A @ self.A.mT


class CholeskyNES(_NESBase):
    """Cholesky NES (Lin et al. 2021; math §6): ``Σ = S⁻¹ = KKᵀ``, ``K`` lower triangular.

    With ``z = Kε``, ``X = KᵀΔK = −Σ u_i ε_i ε_iᵀ`` (scale part ``tr(X)/n·I`` at rate
    ``lr_sigma``) and ``K ← K(I − lr_cov M)``, ``M = Tril(X) + ½Diag(X)``
    (``exp="exact"``: ``K expm(−lr_cov M)``), the step of :func:`cholesky_update`. Same
    options and ask/tell interface as :class:`spectral_curv.nes.SpectralNES`. Also
    importable as ``nes.CholeskyNES`` (deprecated alias).

    Example (``K`` stays lower triangular; a run on a sphere)::

        >>> import numpy as np
        >>> from spectral_curv.baselines import CholeskyNES
        >>> from spectral_curv.nes import rosenbrock
        >>> es = CholeskyNES(np.zeros(3), 0.5, seed=0)
        >>> X = es.ask()
        >>> es.tell(X, rosenbrock(X))
        >>> bool(np.array_equal(es.K, np.tril(es.K)))
        True
        >>> sphere = lambda X: (X**2).sum(axis=1)
        >>> es = CholeskyNES(np.full(2, 3.0), 1.0, seed=0, ftarget=1e-8).optimize(sphere)
        >>> bool(es.result.fbest < 1e-8), es.stop()
        (True, {'ftarget': 1e-08})
    """

    K: Array

    def __init__(self, x0: Any, sigma0: float, *, exp: str = "first_order", **kw: Any) -> None:
        if exp not in ("first_order", "exact"):
            raise ValueError(f"`exp` must be 'first_order' or 'exact', got {exp!r}")
        self.exp = exp
        super().__init__(x0, sigma0, **kw)

    def _init_state(self, sigma0: float) -> None:
        xp = self._xp
        self.K = sigma0 * xp.eye(self.n, dtype=self._dtype, device=self._device)

    def _transform(self, eps: Array) -> Array:
        return eps @ self.K.mT

    def _propose(self, eps: Array, z: Array, u: Array) -> tuple[Array, dict[str, Any]]:
        xp, n = self._xp, self.n
        x = -((eps * u[:, None]).mT @ eps)
        if self.lr_sigma != self.lr_cov:
            eye = xp.eye(n, dtype=self._dtype, device=self._device)
            tr = xp.sum(xp.linalg.diagonal(x))
            x = x + ((self.lr_sigma / self.lr_cov - 1.0) * tr / n) * eye
        mean = self._mean + self.lr_mean * (u @ z)
        return mean, {"K": _cholesky_step(xp, self.K, x, self.lr_cov, self.exp)}

    @property
    def covariance(self) -> Array:
        """The search covariance ``Σ = KKᵀ`` (dense, ``(n, n)``)."""
        return self.K @ self.K.mT


# ----------------------------------------------------------------------------- Muon, Shampoo
#: Muon's quintic Newton–Schulz coefficients and step count (torch.optim.Muon, Keller
#: Jordan's muon.py).
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def newton_schulz5(g: Array, steps: int = NS_STEPS, eps: float = 1e-7) -> Array:
    """Muon's quintic Newton–Schulz orthogonalisation of a matrix ``g``, in ``g``'s dtype
    (math §6): ``X = G/max(‖G‖_F, eps)`` (transposed if tall), then ``steps`` times ``A = XXᵀ``,
    ``B = bA + cA²``, ``X ← aX + BX`` with (a, b, c) = :data:`NS_COEFFS`: 3 products a step.
    torch runs ``torch.optim.Muon``'s ``addmm`` loop (a fast path of the same products).

    Example (the singular values move towards 1, not onto it)::

        >>> import numpy as np
        >>> from spectral_curv.baselines import newton_schulz5
        >>> g = np.random.default_rng(0).standard_normal((6, 4))
        >>> sv = np.linalg.svd(newton_schulz5(g), compute_uv=False)
        >>> bool(np.all((sv > 0.6) & (sv < 1.3)))
        True
    """
    xp = array_namespace(g)
    impl = backends.lookup("newton_schulz5", xp)
    if impl is not None:
        return impl(g, steps, eps)
    a, b, c = NS_COEFFS
    tall = g.shape[-2] > g.shape[-1]
    x = g.mT if tall else g
    nrm = xp.sqrt(xp.sum(x * x))
    x = x / xp.where(nrm > eps, nrm, eps)
    for _ in range(steps):
        gram = x @ x.mT
        upd = b * gram + c * (gram @ gram)
        x = a * x + upd @ x
    return x.mT if tall else x


def eigh_refresh(
    xp: Namespace, left: Array, right: Array, g: Array, *, p: float = 2.0, beta: float = 0.95
) -> tuple[tuple[Array, ...], Array]:
    """One Shampoo/SOAP-style refresh and step (math §6): accumulate both factors, ``eigh``
    both, precondition. Returns ``((L, R, Q_L, λ_L, Q_R, λ_R), step)`` with
    ``step = Q_L [(Q_Lᵀ G Q_R) ⊙ λ_L^{-1/2p} λ_R^{-1/2p}ᵀ] Q_Rᵀ`` (``(L ⊗ R)^{-1/2p}`` per
    factor, i.e. ``S^{-1/p}`` for ``S = L ⊗ R``).

    Example (``β = 0`` and ``G = 2I``: ``L = R = 4I``, the step ``4^{-1/2}G = I``)::

        >>> import numpy as np
        >>> from spectral_curv.baselines import eigh_refresh
        >>> g = 2 * np.eye(3)
        >>> _, step = eigh_refresh(np, np.eye(3), np.eye(3), g, beta=0.0)
        >>> np.allclose(step, np.eye(3))
        True
    """
    left = beta * left + (1.0 - beta) * (g @ g.mT)
    right = beta * right + (1.0 - beta) * (g.mT @ g)
    lam_l, q_l = xp.linalg.eigh(left)
    lam_r, q_r = xp.linalg.eigh(right)
    e = -1.0 / (2.0 * p)
    core = (q_l.mT @ g @ q_r) * (lam_l**e)[:, None] * (lam_r**e)[None, :]
    return (left, right, q_l, lam_l, q_r, lam_r), q_l @ core @ q_r.mT
