"""The maps of the spectral scheme: Skew(Tril(U)) with the tie mask, Cayley, and the exp map on d.

math §1 (notation, truncated Cayley) and §5 (ties, normalised factor step).
All functions are pure and backend-agnostic; the Cayley products dispatch to a
registered fast path when the namespace has one (``spectral_curv.backends``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from . import backends
from ._array import Array, Namespace, array_namespace, eps, eye, frobenius, gram, is_lazy

CayleyMode = Literal["exact", "neumann", "quadratic", "quartic"]
ExpMode = Literal["exact", "first_order"]
RotationMode = Literal["damped", "paper"]

CAYLEY_MODES = ("exact", "neumann", "quadratic", "quartic")
EXP_MODES = ("exact", "first_order")
ROTATION_MODES = ("damped", "paper")

#: The basis-update rule used where ``rotation=None`` (every core function's default).
DEFAULT_ROTATION: RotationMode = "damped"

#: ``κ²`` of the damped rotation rule ``θ = aδ/(δ² + κ²a²)``: 4/3 makes it agree with the
#: exact (Jacobi) eigenvector angle ``½·atan(2a/δ)`` of the pair to third order in ``a/δ``.
DAMPED_KAPPA2 = 4.0 / 3.0

#: Default Frobenius cap on the Cayley argument in the truncated modes (math §4.5): the Neumann
#: product then converges and a step's orthogonality error is at most ``0.25**(2**(K+1))``
#: (``neumann``) or ``4·0.25**4`` (``quadratic``).
DEFAULT_MAX_STEP_NORM = 0.25


def resolve_rotation(rotation: str | None) -> str:
    """The rule name ``rotation`` stands for (``None``: :data:`DEFAULT_ROTATION`), validated.

    Example::

        >>> from spectral_curv import maps
        >>> maps.resolve_rotation(None), maps.resolve_rotation("paper")
        ('damped', 'paper')
    """
    check_rotation(rotation)
    return DEFAULT_ROTATION if rotation is None else rotation


def check_rotation(rotation: str | None) -> None:
    """Validate the basis-update rule name (``None``: :data:`DEFAULT_ROTATION`).

    Example::

        >>> from spectral_curv import maps
        >>> maps.check_rotation("damped") is None
        True
        >>> maps.check_rotation("jacobi")
        Traceback (most recent call last):
        ...
        ValueError: `rotation` must be one of ('damped', 'paper'), got 'jacobi'
    """
    if rotation is not None and rotation not in ROTATION_MODES:
        raise ValueError(f"`rotation` must be one of {ROTATION_MODES}, got {rotation!r}")


def check_modes(cayley: str, exp: str, cayley_terms: int) -> None:
    """Validate the mode options shared by every update.

    Example::

        >>> from spectral_curv import maps
        >>> maps.check_modes("neumann", "first_order", 2) is None
        True
        >>> maps.check_modes("pade", "exact", 1)
        Traceback (most recent call last):
        ...
        ValueError: `cayley` must be one of ('exact', 'neumann', 'quadratic', 'quartic'), got 'pade'
    """
    if cayley not in CAYLEY_MODES:
        raise ValueError(f"`cayley` must be one of {CAYLEY_MODES}, got {cayley!r}")
    if exp not in EXP_MODES:
        raise ValueError(f"`exp` must be one of {EXP_MODES}, got {exp!r}")
    if not isinstance(cayley_terms, int) or isinstance(cayley_terms, bool) or cayley_terms < 0:
        raise ValueError(f"`cayley_terms` must be an int >= 0, got {cayley_terms!r}")


def default_tie_tol(xp: Namespace, dtype: object) -> float:
    """Relative gap under which ``d_i ≈ d_j`` counts as a tie: ``sqrt(eps)`` of the dtype.

    Example::

        >>> import numpy as np
        >>> from array_api_compat import array_namespace
        >>> from spectral_curv import maps
        >>> xp = array_namespace(np.empty(0))
        >>> tol = maps.default_tie_tol(xp, xp.float64)
        >>> tol == float(np.finfo(np.float64).eps) ** 0.5
        True
        >>> tol < maps.default_tie_tol(xp, xp.float32)
        True
    """
    return eps(xp, dtype) ** 0.5


def skew(m: Array) -> Array:
    """``Skew(M) = M − Mᵀ`` (math §1; note: no factor 1/2, math §5.2).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import maps
        >>> maps.skew(np.array([[1.0, 2.0], [5.0, 4.0]])).tolist()
        [[0.0, -3.0], [3.0, 0.0]]
    """
    return m - m.mT


def strict_lower_mask(xp: Namespace, n: int, like: Array) -> Array:
    """Boolean ``(n, n)`` mask of the strictly lower triangle (``i > j``).

    Example (``like`` only supplies the device)::

        >>> import numpy as np
        >>> from array_api_compat import array_namespace
        >>> from spectral_curv import maps
        >>> xp = array_namespace(np.empty(0))
        >>> mask = maps.strict_lower_mask(xp, 3, np.empty(0))
        >>> mask.dtype == bool, bool(np.array_equal(mask, np.tril(np.ones((3, 3)), -1) > 0))
        (True, True)
    """
    from ._array import device

    idx = xp.arange(n, device=device(like))
    return idx[:, None] > idx[None, :]


def rotation_generator(
    w: Array,
    d: Array,
    scale: Array | float,
    *,
    tie_tol: float | None = None,
    max_step_norm: float | None = None,
    symmetric: bool = False,
    rotation: RotationMode | None = None,
) -> Array:
    """``X = scale · Skew(Tril(U))``, the Cayley argument of the basis update (math §2, §4).

    ``rotation="paper"``: ``U_ij = −W_ij / (d_i − d_j)``, the paper's formula. A pair
    ``(i, j)`` then turns by the angle ``θ_ij ≈ 2X_ij = a_ij / δ_ij`` with
    ``a_ij = 2·scale·W_ij`` (the pair's coupling in ``S + β₂Δ``) and ``δ_ij = d_i − d_j``,
    which is unbounded as the two eigenvalues tie.

    ``rotation="damped"`` (the default, :data:`DEFAULT_ROTATION`, used for ``None``):
    ``U_ij = −W_ij δ_ij / (δ_ij² + κ² a_ij²)``, i.e.
    ``θ_ij = a δ / (δ² + κ² a²)`` with ``κ² = 4/3`` (:data:`DAMPED_KAPPA2`). It equals the
    paper's angle to first order in ``a/δ`` (so to first order in β₂), agrees with the exact
    eigenvector angle of the pair's 2×2 block of ``S + β₂Δ``, ``½·atan(2a/δ)``, to third
    order, and never exceeds ``1/(2κ) ≈ 0.43`` rad; a (near-)tied pair, whose rotation barely
    changes ``S`` (by at most ``|δ|``), is left (nearly) still instead of blowing up
    (docs/math.md, "Tie-damped basis update"). ``d`` supplies the gaps: the paper's rule
    takes the current spectrum, the damped rule's callers (:mod:`~spectral_curv.full`,
    :mod:`~spectral_curv.kron`) pass the spectrum *after* the step's ``d`` update, in the
    units of ``W`` (Kronecker: the refreshed diagonal before its normalisation, in the old
    scale ``α``): the gap of the exact 2×2 (Jacobi) angle.

    With the paper's rule ``U_ij`` is set to 0 where ``|d_i − d_j| ≤ tie_tol · max(|d_i|,
    |d_j|)`` (the paper's "near 0" rule, made relative so that it is scale-free); the damped
    rule needs no threshold (``tie_tol`` is ignored): it is 0 at an exact tie and tends to 0
    continuously as the gap closes. Only the strict lower triangle
    of ``W`` is read, so ``X`` is exactly skew-symmetric whatever round-off ``W`` carries.
    With ``max_step_norm`` the result is rescaled to ``‖X‖_F ≤ max_step_norm`` (it only
    ever shrinks; math §5.4), which keeps the Neumann series convergent: the paper's rule's
    cap. :mod:`~spectral_curv.kron` and :mod:`~spectral_curv.full` pass it only with
    ``rotation="paper"``; the damped rule's step guard bounds ``‖X‖₂`` inside the Cayley map
    (:func:`cayley_apply` ``max_norm``).

    ``symmetric=True`` is a fast path for a ``W`` known to be symmetric (the curvature
    matrices of :mod:`spectral_curv.kron`): both triangles of ``W`` are read,
    ``X_ij = −scale · U_ij`` for every untied ``i ≠ j``, which needs no transposed pass
    over an n×n array. The result equals the default one to round-off; it is exactly skew
    when ``W`` is exactly symmetric (numpy's ``A @ A.T``, a syrk, is), and skew up to
    ``W``'s own asymmetry otherwise. Traced arrays (``jax.jit``) always take the one-triangle
    route: a fusing compiler may round the two broadcasts of ``d`` differently. ``W`` must
    then be finite (with the paper's rule a tied pair is zeroed by dividing by ``inf``).

    Example (the tied pair ``d₀ = d₁`` gives no rotation; a near tie is damped)::

        >>> import numpy as np
        >>> from spectral_curv import maps
        >>> w = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.3], [0.2, 0.3, 1.0]])
        >>> x = maps.rotation_generator(w, np.array([1.0, 1.0, 2.0]), 0.1)
        >>> bool(np.allclose(x, -x.T)), bool(x[1, 0] == 0)
        (True, True)
        >>> d = np.array([1.0, 1.0 + 1e-6, 2.0])
        >>> paper = maps.rotation_generator(w, d, 0.1, rotation="paper")
        >>> damped = maps.rotation_generator(w, d, 0.1)
        >>> round(float(paper[1, 0]), 1), bool(abs(damped[1, 0]) < 1e-4)
        (-50000.0, True)
        >>> bool(np.isclose(damped[2, 0], paper[2, 0], rtol=1e-2))  # a wide gap: as the paper
        True
        >>> d = np.array([3.0, 1.0, 2.0])
        >>> x = maps.rotation_generator(w, d, 10.0, max_step_norm=0.25, rotation="paper")
        >>> bool(np.isclose(np.linalg.norm(x), 0.25))
        True
        >>> bool(np.linalg.norm(maps.rotation_generator(w, d, 10.0)) < 0.25)  # bounded per pair
        True
    """
    xp = array_namespace(w, d)
    rotation = resolve_rotation(rotation)  # type: ignore[assignment]
    if symmetric and is_lazy(w, d):
        # A fusing compiler (XLA under jax.jit) may evaluate d's row and column broadcasts
        # with different roundings, so that δ_ii ≠ 0 and δ_ji ≠ −δ_ij for tied pairs: a
        # non-skew X (diagonal entries up to 1/(4κ) measured), a map that is not a
        # rotation. One triangle, skewed, is exactly skew whatever the roundings.
        symmetric = False
    if rotation == "damped" and symmetric and max_step_norm is None:
        impl = backends.lookup("damped_generator", xp)
        if impl is not None:
            return impl(w, d, scale)
    n = d.shape[-1]
    diff = d[..., :, None] - d[..., None, :]
    # Few n×n passes (they, not flops, are this function's cost). W is in the units of the
    # gradient's square (α ~ |G|²) and scale in their inverse: every product below is formed
    # so that none overflows or underflows with the gradient's scale (W·δ, W² and a scale²
    # that underflowed to 0 gave 0·inf = NaN at |G| ~ 1e10 in float32).
    if rotation == "damped":
        # X = t δ / (δ² + κ² a²), t = −scale·W (the pair's dimensionless coupling), a = 2t,
        # the torch fast path's quotient. No tie threshold is needed: X → 0 continuously as
        # δ → 0 and is exactly 0 at δ = 0 (the tiny term keeps 0/0, W_ij = 0 at a tie, at 0);
        # the diagonal (δ = 0) is 0 too.
        t = (-scale) * w
        tiny = xp.finfo(w.dtype).smallest_normal
        x = (t * diff) / (diff * diff + (4.0 * DAMPED_KAPPA2) * (t * t) + tiny)
        del t
        if not symmetric:
            x = xp.where(strict_lower_mask(xp, n, d), x, 0.0)
        if max_step_norm is not None:
            x = x * _frobenius_cap(xp, x, max_step_norm, symmetric)
        return x if symmetric else skew(x)
    # the paper's rule: U = −q, q = W/δ (X = −scale·q)
    tol = default_tie_tol(xp, d.dtype) if tie_tol is None else tie_tol
    # tol·max(|d_i|, |d_j|) is max(t_i, t_j) with t = tol·|d| bitwise (rounding is
    # monotone), and "> max(t_i, t_j)" is "> t_i and > t_j": two boolean broadcast
    # compares, no n×n float threshold.
    td = tol * xp.abs(d)
    gap = xp.abs(diff)
    gap_ok = (gap > td[..., :, None]) & (gap > td[..., None, :])
    del gap
    if symmetric:
        # Tied pairs and the diagonal divide a finite W by inf: ±0, no second `where`.
        q = w / xp.where(gap_ok, diff, math.inf)
    else:
        mask = gap_ok & strict_lower_mask(xp, n, d)
        q = xp.where(mask, w / xp.where(mask, diff, 1.0), 0.0)
    if max_step_norm is not None:  # ‖X‖_F from scale·q (q's own square may overflow)
        scale = scale * _frobenius_cap(xp, scale * q, max_step_norm, symmetric)
    return (-scale) * (q if symmetric else skew(q))


def _frobenius_cap(xp: Namespace, m: Array, bound: Any, symmetric: bool) -> Array:
    """``min(1, bound/‖X‖_F)`` per matrix (shape ``(..., 1, 1)``) for ``X = m`` (both
    triangles) or ``X = Skew(m)`` (``m`` strictly lower: ``‖X‖_F = √2 ‖m‖_F``); math §5.4."""
    n = m.shape[-1]
    if symmetric:
        # ‖X‖_F² from one dot product (a BLAS dot in numpy): no n×n temporary.
        flat = xp.reshape(m, (*m.shape[:-2], n * n))
        sq = xp.vecdot(flat, flat)
    else:
        sq = 2.0 * xp.sum(m * m, axis=(-2, -1))
    norm = xp.sqrt(sq)[..., None, None]  # (..., 1, 1): broadcasts per matrix
    floor = xp.finfo(m.dtype).smallest_normal * xp.ones_like(norm)
    return xp.minimum(xp.ones_like(norm), bound / xp.maximum(norm, floor))


def cayley(x: Array, *, mode: CayleyMode = "exact", terms: int = 1) -> Array:
    """The Cayley map ``(I + X)(I − X)⁻¹`` of a skew ``X`` (math §1), exact or truncated.

    ``mode="neumann"`` uses ``(I + X)² Π_{k=1..terms} (I + X^{2^k})`` — matmuls only, valid
    while ``‖X‖ < 1``; its singular values deviate from 1 by about ``‖X‖^{2^{terms+1}}``.
    ``mode="quadratic"`` uses ``I + 2X + 2X²`` and ``mode="quartic"`` a product of two
    quadratics orthogonal to ``O(X⁸)`` (``terms`` is ignored): see
    :func:`cayley_apply_quadratic`, :func:`cayley_apply_quartic`.

    Example (exactly orthogonal in ``exact`` mode, nearly so when truncated)::

        >>> import numpy as np
        >>> from spectral_curv import maps
        >>> x = maps.skew(np.array([[0.0, 0.0], [0.1, 0.0]]))
        >>> q = maps.cayley(x)
        >>> q.shape, bool(np.allclose(q.T @ q, np.eye(2)))
        ((2, 2), True)
        >>> q2 = maps.cayley(x, mode="neumann", terms=2)
        >>> bool(np.abs(q2.T @ q2 - np.eye(2)).max() < 1e-6)
        True
    """
    xp = array_namespace(x)
    i = eye(xp, x.shape[-1], x)
    return cayley_apply(i, x, mode=mode, terms=terms)


def cayley_apply(
    b: Array,
    x: Array,
    *,
    mode: CayleyMode = "exact",
    terms: int = 1,
    max_norm: Any = None,
) -> Array:
    """``B · Cayley(X)`` without forming an inverse in ``neumann`` mode (math §1, §5).

    ``max_norm`` (the damped rule's step guard, docs/math.md): ``X`` is first shrunk,
    ``X ← X·min(1, max_norm/ν)`` (:func:`guard_scale`): in the truncated modes ``ν ≈ ‖X‖₂``
    from a few power iterations on the ``XXᵀ`` they form anyway (matrix–vector products),
    in exact mode ``ν = ‖X‖_F``. Unlike a Frobenius cap (up to ``√n·‖X‖₂``), a step of many
    small pair rotations is not throttled.

    Example::

        >>> import numpy as np
        >>> from spectral_curv import maps
        >>> x = maps.skew(np.tril(np.full((3, 3), 0.05), -1))
        >>> b = maps.cayley_apply(np.eye(3), x)
        >>> bool(np.allclose(b, maps.cayley(x)))
        True
        >>> b = maps.cayley_apply(b, x, mode="quadratic")
        >>> bool(np.abs(b.T @ b - np.eye(3)).max() < 1e-3)
        True
        >>> big = 100 * x  # guarded: the step actually taken has ‖X‖₂ ≤ 0.25
        >>> q = maps.cayley_apply(np.eye(3), big, mode="quadratic", max_norm=0.25)
        >>> bool(np.abs(q.T @ q - np.eye(3)).max() <= 4 * 0.25**4)
        True
    """
    xp = array_namespace(b, x)
    impl = backends.lookup(f"cayley_apply_{mode}", xp)
    if impl is not None:
        return impl(b, x, terms, max_norm)
    if mode == "exact":
        if max_norm is not None:
            x = x * guard_scale(xp, x, max_norm)
        return cayley_apply_exact(xp, b, x)
    if mode == "quadratic":
        return cayley_apply_quadratic(xp, b, x, max_norm=max_norm)
    if mode == "quartic":
        return cayley_apply_quartic(xp, b, x, max_norm=max_norm)
    return cayley_apply_neumann(xp, b, x, terms, max_norm=max_norm)


#: Power iterations of :func:`guard_scale` on ``XXᵀ`` (matrix–vector products only).
GUARD_POWER_ITERS = 4


def guard_scale(xp: Namespace, m: Array, bound: Any, *, square: bool = False) -> Array:
    """``min(1, bound/ν)`` per stacked matrix (shape ``(..., 1, 1)``): the step guard.

    ``m = X`` (exact Cayley): ``ν = ‖X‖_F ≥ ‖X‖₂``, a guaranteed bound. ``m = ±XXᵀ`` with
    ``square=True`` (the truncated maps form it anyway): ``ν² = ‖XXᵀ‖₂ = ‖X‖₂²`` estimated by
    :data:`GUARD_POWER_ITERS` power iterations from a fixed start (matrix–vector products,
    O(n²)); the estimate is ≤ ``‖X‖₂`` and typically within a few per cent of it.

    Example::

        >>> import numpy as np
        >>> from array_api_compat import array_namespace
        >>> from spectral_curv import maps
        >>> xp = array_namespace(np.empty(0))
        >>> maps.guard_scale(xp, np.full((2, 2), 1.0), 1.0).tolist()  # ‖m‖_F = 2
        [[0.5]]
        >>> maps.guard_scale(xp, np.eye(2), 5.0).tolist()  # only ever shrinks
        [[1.0]]
        >>> y = np.diag([4.0, 1.0, 0.25])  # XXᵀ of an X with ‖X‖₂ = 2
        >>> maps.guard_scale(xp, y, 1.0, square=True).round(3).tolist()
        [[0.5]]
    """
    floor = xp.finfo(m.dtype).smallest_normal
    if square:
        # Power iterations, normalised at every step (no overflow, and no underflow of a
        # tiny m, whose squared entries a Frobenius norm would flush to 0); the norm of the
        # last product ‖m v‖ (unit v) is the estimate, a lower bound of ‖m‖₂.
        from ._array import device

        n = m.shape[-1]
        v = xp.cos(xp.arange(n, dtype=m.dtype, device=device(m)) * 1.7 + 0.3)[:, None]
        v = v / xp.sqrt(xp.sum(v * v))
        for _ in range(GUARD_POWER_ITERS):
            w = m @ v
            nu = xp.sqrt(xp.sum(w * w, axis=(-2, -1), keepdims=True))  # ‖m v‖, v unit
            v = w / xp.maximum(nu, floor * xp.ones_like(nu))
        nu = xp.sqrt(nu)
    else:
        n = m.shape[-1]
        flat = xp.reshape(m, (*m.shape[:-2], n * m.shape[-2]))
        nu = xp.sqrt(xp.vecdot(flat, flat))[..., None, None]
    return xp.minimum(xp.ones_like(nu), bound / xp.maximum(nu, floor * xp.ones_like(nu)))


def cayley_apply_exact(xp: Namespace, b: Array, x: Array) -> Array:
    """Reference ``B (I − X)⁻¹ (I + X)`` by a linear solve (the two factors commute).

    Example (in 2-D, ``Cayley`` of ``a·[[0, −1], [1, 0]]`` rotates by ``2·arctan(a)``)::

        >>> import numpy as np
        >>> from array_api_compat import array_namespace
        >>> from spectral_curv import maps
        >>> xp = array_namespace(np.empty(0))
        >>> q = maps.cayley_apply_exact(xp, np.eye(2), np.array([[0.0, -0.3], [0.3, 0.0]]))
        >>> c, s = np.cos(2 * np.arctan(0.3)), np.sin(2 * np.arctan(0.3))
        >>> bool(np.allclose(q, [[c, -s], [s, c]]))
        True
    """
    i = eye(xp, x.shape[-1], x)
    return b @ xp.linalg.solve(i - x, i + x)


def cayley_apply_neumann(
    xp: Namespace, b: Array, x: Array, terms: int, *, max_norm: Any = None
) -> Array:
    """Reference ``B (I + X)² Π_{k=1..K} (I + X^{2^k})`` with ``2K + 1`` matmuls (2 at K = 0).

    The factors are applied to ``B`` one at a time, ``B ← B + B·N`` (math §1), so no
    identity matrix is formed. For skew ``X`` (all the Cayley map is defined for)
    ``X² = −X Xᵀ``; it is formed as ``X @ X.mT`` and each later square as ``Y @ Y.mT`` of
    the symmetric ``Y``: products of one operand with its own transpose, which numpy runs
    as BLAS syrk (half the flops, an exactly symmetric result). Equal to the product form
    ``B · [(I + X)² Π (I + X^{2^k})]`` to round-off.

    Example (more terms converge to the exact Cayley map)::

        >>> import numpy as np
        >>> from array_api_compat import array_namespace
        >>> from spectral_curv import maps
        >>> xp = array_namespace(np.empty(0))
        >>> x = maps.skew(np.tril(np.full((3, 3), 0.1), -1))
        >>> exact = maps.cayley_apply_exact(xp, np.eye(3), x)
        >>> approx = [maps.cayley_apply_neumann(xp, np.eye(3), x, k) for k in range(4)]
        >>> err = [np.abs(a - exact).max() for a in approx]
        >>> bool(err[0] > err[1] > err[2] > err[3]), bool(err[3] < 1e-12)
        (True, True)
    """
    y = gram(x)  # −X²
    if max_norm is not None:
        g = guard_scale(xp, y, max_norm, square=True)
        x, y = g * x, (g * g) * y
    p = b + b @ (2.0 * x - y)  # B (I + X)² = B (I + 2X + X²)
    for k in range(terms):
        # k = 0: P(I + X²) = P − P·y; afterwards y = X^{2^{k+1}} itself.
        p = p - p @ y if k == 0 else p + p @ y
        if k + 1 < terms:
            y = gram(y)
    return p


def cayley_apply_quadratic(xp: Namespace, b: Array, x: Array, *, max_norm: Any = None) -> Array:
    """Reference ``B (I + 2X + 2X²)``: the Cayley map's Taylor polynomial of degree 2 (2 matmuls).

    ``Cayley(X) = I + 2X + 2X² + 2X³ + …``. For skew ``X`` the quadratic ``Q = I + bX + cX²``
    has ``QᵀQ = I + (2c − b²)X² + c²X⁴`` (``X`` and ``X²`` commute), so ``b = 2`` (first-order
    agreement with the Cayley map, which the scheme needs) and ``c = b²/2 = 2`` make it the
    only quadratic orthogonal to second order: ``QᵀQ = I + 4X⁴`` exactly. That is the
    orthogonality order of ``neumann`` with one term (``I − 2X⁴ + X⁸``) at two matmuls
    instead of three: ``X² = −X Xᵀ`` (a syrk in numpy) and ``B·Q``. A refinement made here
    (not in the paper); tested in ``tests/test_maps.py``.

    Example (``QᵀQ = I + 4X⁴`` exactly)::

        >>> import numpy as np
        >>> from array_api_compat import array_namespace
        >>> from spectral_curv import maps
        >>> xp = array_namespace(np.empty(0))
        >>> x = maps.skew(np.tril(np.full((3, 3), 0.1), -1))
        >>> q = maps.cayley_apply_quadratic(xp, np.eye(3), x)
        >>> bool(np.allclose(q.T @ q, np.eye(3) + 4 * np.linalg.matrix_power(x, 4)))
        True
    """
    y = gram(x)  # −X²
    if max_norm is None:
        return b + b @ (2.0 * (x - y))
    g = guard_scale(xp, y, max_norm, square=True)  # X ← gX, X² ← g²X²
    return b + b @ ((2.0 * g) * (x - g * y))


#: The quartic map's coefficients: ``(I + a₁X + cX²)(I + a₂X + cX²)``, ``a₁ = c = 2 − √2``,
#: ``a₂ = √2`` (:func:`cayley_apply_quartic`).
QUARTIC_COEFFS = (2.0 - math.sqrt(2.0), math.sqrt(2.0), 2.0 - math.sqrt(2.0))


def cayley_apply_quartic(xp: Namespace, b: Array, x: Array, *, max_norm: Any = None) -> Array:
    """``B (I + a₁X + cX²)(I + a₂X + cX²)``: a degree-4 Cayley polynomial orthogonal to ``O(X⁸)``.

    For skew ``X`` a factor ``F = I + aX + cX²`` has ``FᵀF = I + (2c − a²)X² + c²X⁴`` and the
    factors commute. With ``a₁ + a₂ = 2`` and ``c₁ + c₂ + a₁a₂ = 2`` (agreement with
    ``Cayley(X) = I + 2X + 2X² + …`` to second order, as the quadratic map), the product's
    ``X²``, ``X⁴`` and ``X⁶`` error terms vanish only for ``c₁ = c₂ = 2 − √2``,
    ``a₁ = 2 − √2``, ``a₂ = √2`` (:data:`QUARTIC_COEFFS`); then ``QᵀQ = I + c⁴X⁸`` exactly,
    ``c⁴ ≈ 0.118``. At the step guard ``‖X‖₂ ≤ 0.25`` the error per refresh is ``≤ 1.8e-6``
    against the quadratic map's ``4‖X‖₂⁴ ≤ 1.6e-2``, for one more product (3: ``X² = −XXᵀ``,
    ``B·F₁``, ``·F₂``). docs/math.md §1.3.

    Example (``QᵀQ = I + c⁴X⁸`` exactly)::

        >>> import numpy as np
        >>> from array_api_compat import array_namespace
        >>> from spectral_curv import maps
        >>> xp = array_namespace(np.empty(0))
        >>> x = maps.skew(np.tril(np.full((3, 3), 0.2), -1))
        >>> q = maps.cayley_apply_quartic(xp, np.eye(3), x)
        >>> c = maps.QUARTIC_COEFFS[2]
        >>> bool(np.allclose(q.T @ q, np.eye(3) + c**4 * np.linalg.matrix_power(x, 8)))
        True
        >>> err = lambda m: float(np.abs(maps.cayley(x, mode=m) - maps.cayley(x)).max())
        >>> err("quartic") < err("quadratic")  # both agree with Cayley to second order
        True
    """
    a1, a2, c = QUARTIC_COEFFS
    y = gram(x)  # −X²
    if max_norm is not None:
        g = guard_scale(xp, y, max_norm, square=True)  # X ← gX, X² ← g²X²
        x, y = g * x, (g * g) * y
    p = b + b @ (a1 * x - c * y)
    return p + p @ (a2 * x - c * y)


def orthonormalize(b: Array, *, steps: int = 1) -> Array:
    """Pull ``B`` back towards the orthogonal group with Newton–Schulz polar steps (matmuls only).

    One step ``B ← B (3I − BᵀB)/2`` maps singular values ``σ ↦ σ(3 − σ²)/2``, squaring the
    error ``1 − σ`` (up to a factor 3/2); it undoes the drift that the truncated Cayley map
    accumulates (math §1: "measure the drift ‖BᵀB − I‖"). Costs 2 matmuls a step.

    Example::

        >>> import numpy as np
        >>> from spectral_curv import maps
        >>> b = np.eye(3) + 1e-3 * np.arange(9.0).reshape(3, 3)
        >>> drift = lambda b: float(np.abs(b.T @ b - np.eye(3)).max())
        >>> bool(drift(maps.orthonormalize(b, steps=2)) < 1e-6 < drift(b))
        True
    """
    xp = array_namespace(b)
    i = eye(xp, b.shape[-1], b)
    for _ in range(steps):
        b = b @ (1.5 * i - 0.5 * gram(b.mT))
    return b


#: Squarings the traced (``jax.jit``) path of :func:`expm` always runs (masked beyond the
#: ones needed): arguments up to ``‖x‖_F = 0.5·2**24`` are exact to the Taylor bound.
EXPM_MAX_SQUARINGS = 24


def expm(x: Array, *, order: int = 18) -> Array:
    """Matrix exponential by scaling and squaring a Taylor polynomial (matmuls only; math §2.5, §6).

    ``x`` is scaled by ``2^-s`` so that ``‖x‖_F 2^-s ≤ 1/2``; the degree-``order`` Taylor
    remainder is then below ``0.5^(order+1)/(order+1)! ≈ 1e-23`` (order 18) relative, and
    ``s`` squarings undo the scaling. Lower-triangular input gives lower-triangular output.
    Eager arrays choose ``s`` on the host; traced ones (inside ``jax.jit``) compute it as an
    array and run :data:`EXPM_MAX_SQUARINGS` squarings, each kept only while ``k < s``.
    Used by the geodesic spectral step (:func:`spectral_curv.full.update_geodesic`) and the
    exact Cholesky baseline; tested against ``scipy.linalg.expm``.

    Example (a symmetric ``x`` with ``‖x‖_F > 1/2``, against its eigendecomposition)::

        >>> import numpy as np
        >>> from spectral_curv import maps
        >>> x = np.array([[1.0, 2.0, 0.0], [2.0, -1.0, 0.5], [0.0, 0.5, 0.3]])
        >>> w, q = np.linalg.eigh(x)
        >>> bool(np.allclose(maps.expm(x), (q * np.exp(w)) @ q.T, rtol=1e-12, atol=0))
        True
    """
    xp = array_namespace(x)
    if x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"`x` must be a square matrix, got shape {tuple(x.shape)}")
    i = eye(xp, int(x.shape[0]), x)
    norm = frobenius(xp, x)
    lazy = is_lazy(x)
    if not lazy:
        fnorm = float(norm)
        s = 0
        while fnorm > 0.5:
            fnorm /= 2.0
            s += 1
        y = x / float(2**s)
    else:
        # s = ceil(log2(2‖x‖)) clipped to [0, EXPM_MAX_SQUARINGS], as an array.
        st = xp.clip(xp.ceil(xp.log2(xp.maximum(2.0 * norm, 1.0))), 0.0, float(EXPM_MAX_SQUARINGS))
        y = x / xp.pow(2.0, st)
    # Horner: I + y(I + y/2 (I + y/3 (...))).
    p = i
    for k in range(order, 0, -1):
        p = i + (y @ p) / float(k)
    if not lazy:
        for _ in range(s):
            p = p @ p
        return p
    for k in range(EXPM_MAX_SQUARINGS):
        p = xp.where(st > float(k), p @ p, p)
    return p


def exp_scale(d: Array, rate: Array, *, mode: ExpMode = "exact") -> Array:
    """``d ⊙ exp(rate / d)`` exactly, or its first-order truncation ``d + rate`` (math §2).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import maps
        >>> maps.exp_scale(np.array([1.0, 2.0]), np.array([0.0, 0.5]), mode="first_order").tolist()
        [1.0, 2.5]
        >>> bool(np.all(maps.exp_scale(np.array([1.0]), np.array([-10.0])) > 0))
        True
    """
    xp = array_namespace(d)
    if mode == "exact":
        return d * xp.exp(rate / d)
    return d + rate


def match_norm(v: Array, ds: list[Array], *, p: Any, ref: Array, axes: tuple[int, ...]) -> Array:
    """``v ⊙ Π_k d_k^{-1/p}`` (each ``d_k`` broadcastable against ``v``) rescaled so that its
    2-norm over ``axes`` equals that of ``ref``: the root-``p`` direction with the size of
    ``ref``. Each ``d_k^{-1/p}`` is formed as ``exp(−(log d_k − min log d_k)/p) ≤ 1`` (the
    minimum over ``axes``), so no ``p`` overflows, and the norms' ratio from entries scaled
    by their largest magnitude, so no square does; a zero ``v`` gives zero. math §4.

    Example (``d = (4, 1)``, ``p = 1``: direction ``(1/4, 1)``, rescaled to ``|ref| = 5``)::

        >>> import numpy as np
        >>> from spectral_curv import maps
        >>> u = maps.match_norm(np.ones(2), [np.array([4.0, 1.0])], p=1,
        ...                     ref=np.array([3.0, 4.0]), axes=(-1,))
        >>> [round(float(x), 6) for x in u], round(float(np.linalg.norm(u)), 6)
        ([1.212678, 4.850713], 5.0)
    """
    xp = array_namespace(v)
    if math.prod(v.shape) == 0:  # nothing to scale (and no minimum over an empty axis)
        return v
    impl = backends.lookup("match_norm", xp)
    if impl is not None:
        return impl(v, ds, p, ref, axes)
    out = v
    for d in ds:
        ld = xp.log(d)
        out = out * xp.exp(-(ld - xp.min(ld, axis=axes, keepdims=True)) / p)
    return out * norm_ratio(xp, ref, out, axes)


def norm_ratio(xp: Namespace, a: Array, b: Array, axes: tuple[int, ...]) -> Array:
    """``‖a‖/‖b‖`` over ``axes`` (kept), each norm from its entries divided by its own largest
    magnitude, times the ratio of the two: a finite ``a`` whose square overflows (``> 1.8e19``
    in float32) still gives a finite ratio, and so do ``a`` and ``b`` of very different sizes
    (a common scale made the smaller one's squares subnormal, flushed to 0 on XLA's CPU: a
    zero direction after a 1e20 gradient). A zero ``b`` gives 0. The rescale of
    :func:`match_norm` (math §4.8).

    Example::

        >>> import numpy as np
        >>> from array_api_compat import array_namespace
        >>> from spectral_curv import maps
        >>> xp = array_namespace(np.empty(0))
        >>> a = np.full(4, 1e30, dtype=np.float32)  # a² overflows float32
        >>> float(maps.norm_ratio(xp, a, np.full(4, 1e29, dtype=np.float32), (-1,))[0])
        10.0
        >>> b = np.full(4, 1e-21, dtype=np.float32)  # (b/max|a|)² is below float32's range
        >>> f"{float(maps.norm_ratio(xp, np.ones(4, dtype=np.float32), b, (-1,))[0]):.4g}"
        '1e+21'
    """
    tiny = xp.asarray(xp.finfo(b.dtype).smallest_normal, dtype=b.dtype)
    ma = xp.maximum(xp.max(xp.abs(a), axis=axes, keepdims=True), tiny)
    mb = xp.maximum(xp.max(xp.abs(b), axis=axes, keepdims=True), tiny)
    sa, sb = a / ma, b / mb
    n_a = xp.sqrt(xp.sum(sa * sa, axis=axes, keepdims=True))
    n_b = xp.sqrt(xp.sum(sb * sb, axis=axes, keepdims=True))
    ok = n_b > 0
    return xp.where(ok, (ma / mb) * (n_a / xp.where(ok, n_b, 1.0)), 0.0)
