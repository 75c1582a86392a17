"""Gradient-free optimisation with natural evolution strategies (ask/tell; math §2, §6).

The search distribution is ``q = N(μ, S⁻¹)``. With ``γ = 0`` and the 1-root (``p = 1``),
the Gaussian problem ``min E_q[ℓ(w)]`` is solved by the spectral scheme of math §2 with the
REINFORCE curvature estimate (paper Sec. 4.3, Appx. C)::

    Δ = E[ℓ(w) (S z zᵀ S − S)],      z = w − μ
    S ← S + lr_cov · Δ            (spectral: ``full.update(state, Δ, beta2=lr_cov)``)
    μ ← μ − lr_mean · S⁻¹ E[ℓ(w) S z]  (``full.precondition(state, ·, p=1)``)

Expectations are Monte-Carlo averages over ``popsize`` samples; ``ℓ(w_i)`` is replaced by
``−u_i``, the rank-based utilities of Wierstra et al. (2008/2014) ("fitness shaping", they
sum to zero, so the ``−S`` term drops out), and samples are mirrored (``±ε``, Fukushima et al.
2011). Writing ``w_i = μ + S^{-1/2} ε_i`` gives ``S z_i = S^{1/2} ε_i``, so::

    Δ = −S^{1/2} (Σ u_i ε_i ε_iᵀ) S^{1/2},     μ ← μ + lr_mean Σ u_i z_i.

In the factored frame (``S = B Diag(d) Bᵀ``, ``E`` the matrix of rows ``ε_iᵀ``) this is
``Q = BᵀΔB = −Diag(√d) (Bᵀ Eᵀ Diag(u) E B) Diag(√d)`` (passed to
:func:`spectral_curv.full.update_rotated`; neither ``S``, ``S^{1/2}`` nor ``Δ`` is formed)
and ``μ ← μ + lr_mean S^{-1/2} Σ u_i ε_i = μ + lr_mean B Diag(d^{-1/2}) Bᵀ Σ u_i ε_i``.

The overall scale of ``S`` (``σ = det Σ^{1/(2n)}``) is set by ``sigma_rule``. The default,
``"csa"``, is CMA-ES's cumulative step-size adaptation (Hansen, "The CMA Evolution Strategy:
A Tutorial"): the scale part of ``Δ`` (its component along ``S``, ``tr(S⁻¹Δ)/n · S``; in the
rotated frame ``tr(S⁻¹Δ)/n · Diag(d)``) is removed, so the exact exp map keeps ``det S``
(math §2.2: ``Σ log d`` moves by ``β₂ tr(S⁻¹Δ)``), and ``d ← d exp(−2(c_σ/d_σ)(‖p_σ‖/χ_n − 1))``
with the path ``p_σ`` of the whitened mean steps ``Σ u_i ε_i`` (:func:`csa_parameters`);
with it, ``rank_one`` (default on) adds CMA-ES's rank-one term ``c_1 q qᵀ`` of the
evolution path ``p_c`` to the whitened estimate. ``sigma_rule="xnes"`` (selected by passing
``lr_sigma``) is the former rule: the scale part gets its own rate ``lr_sigma``, as xNES
separates ``η_σ`` from ``η_B`` (default :func:`default_lr_sigma` ``= min(1, 3·lr_cov(n))``;
``lr_sigma=lr_cov`` is exactly the paper's update). Both defaults were chosen by
measurement on BBOB (docs/nes.md, "Step-size adaptation" and "Default rates"). ``Δ`` is
indefinite, so the exact exp and Cayley maps are used.

``tell`` is atomic: the new distribution is computed in full and checked (finite, ``d > 0``)
before anything is committed, so a failed ``tell`` (bad input, or an update that left the
representable range) leaves the optimiser exactly as it was.

For pycma users: ``tell`` takes repaired or injected points (the samples ``ε`` are
recomputed from ``X``), ranks NaN/inf values worst, the optimisers pickle, ``result`` has
pycma's fields, ``bounds=(lower, upper)`` is pycma's ``bounds`` with ``BoundTransform``
(:class:`BoxTransform`), and :func:`fmin` is ``cma.fmin2`` with IPOP restarts (docs/nes.md,
"pycma users").

Baselines with the same interface (math §6) live in :mod:`spectral_curv.baselines`:
:class:`~spectral_curv.baselines.XNES` (full covariance ``Σ = AAᵀ``; Glasmachers et al. 2010)
and :class:`~spectral_curv.baselines.CholeskyNES` (``Σ = KKᵀ``, ``K`` lower triangular; Lin
et al. 2021). All three agree to first order in the step size. ``nes.XNES`` and
``nes.CholeskyNES`` remain importable here as deprecated aliases.

Also here: the five test functions of Appx. C (:func:`ackley`, :func:`rosenbrock`,
:func:`bohachevsky`, :func:`schaffer`, :func:`griewank`). The benchmark against pycma's
CMA-ES (Fig. 3 / 9) is :mod:`spectral_curv.experiments.nes`
(``python -m spectral_curv.experiments.nes --help``); ``nes.benchmark``, ``nes.summarise``,
``nes.FUNCTIONS`` and ``nes.main`` remain importable here (deprecated aliases, loaded lazily).

Example::

    >>> import numpy as np
    >>> from spectral_curv.nes import SpectralNES, rosenbrock
    >>> es = SpectralNES(np.zeros(4), 0.5, seed=1, maxfevals=20000, ftarget=1e-10)
    >>> while not es.stop():
    ...     X = es.ask()
    ...     es.tell(X, rosenbrock(X))
    >>> bool(es.result.fbest < 1e-8)
    True
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from . import _array as A
from . import full
from ._array import Array, Namespace, array_namespace

__all__ = [
    "BoxTransform",
    "CSAParameters",
    "NESResult",
    "SpectralNES",
    "ackley",
    "bohachevsky",
    "csa_parameters",
    "default_lr_cov",
    "default_lr_sigma",
    "default_popsize",
    "fmin",
    "griewank",
    "rank_utilities",
    "rastrigin",
    "rosenbrock",
    "schaffer",
]


# ------------------------------------------------------------------ helpers


def _is_int(v: Any) -> bool:
    """A Python or NumPy integer (not a bool), as pycma takes counts."""
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _is_real(v: Any) -> bool:
    """A Python or NumPy real number (not a bool)."""
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def default_popsize(n: int) -> int:
    """``4 + ⌊3 ln n⌋`` (Wierstra et al. 2014), rounded up to even for mirrored sampling.

    Example (``n = 2``: ``4 + ⌊2.08⌋ = 6``; ``n = 60``: ``4 + ⌊12.28⌋ = 16``)::

        >>> from spectral_curv import nes
        >>> [nes.default_popsize(n) for n in (2, 10, 60)]
        [6, 10, 16]
        >>> all(nes.default_popsize(n) % 2 == 0 for n in range(1, 200))
        True
    """
    lam = 4 + math.floor(3.0 * math.log(n))
    return lam + (lam % 2)


def default_lr_cov(n: int) -> float:
    """xNES default covariance rate ``(9 + 3 ln n) / (5 n^{3/2})`` (Wierstra et al. 2014).

    Example (``n = 1``: ``9/5``; ``n = 100``: ``(9 + 13.8)/5000``)::

        >>> from spectral_curv import nes
        >>> nes.default_lr_cov(1), round(nes.default_lr_cov(100), 4)
        (1.8, 0.0046)
    """
    return (9.0 + 3.0 * math.log(n)) / (5.0 * n**1.5)


def default_lr_sigma(n: int) -> float:
    """Default scale rate ``min(1, 3·(9 + 3 ln n)/(5 n^{3/2}))``: three times the xNES rate
    (the rate of ``SpectralNES(sigma_rule="xnes")`` and of the baselines; the default
    ``sigma_rule="csa"`` does not use it).

    xNES uses one rate for scale and shape (``η_σ = η_B``, :func:`default_lr_cov`); with it
    the scale adapts too slowly. Three times it was the best of the rates measured on BBOB
    f1, f2, f8, f10, f11, f12 at d = 10 and 20 (docs/nes.md, "Default rates"): better than
    ``η_σ = η_B`` on all 12 pairs. Capped at 1 (it matters for ``n ≤ 3`` only).

    Example (``n = 10``: ``3 · 0.1006``; ``n = 2``: capped)::

        >>> from spectral_curv import nes
        >>> round(nes.default_lr_sigma(10), 4), round(nes.default_lr_sigma(20), 4)
        (0.3018, 0.1207)
        >>> nes.default_lr_sigma(2)
        1.0
    """
    return min(1.0, 3.0 * default_lr_cov(n))


class CSAParameters(NamedTuple):
    """Constants of cumulative step-size adaptation for ``(n, popsize)`` (math §2.2, §6).

    ``mueff``: the variance-effective selection mass ``1/Σw_k²`` of the positive
    recombination weights ``w_k ∝ max(0, ln(λ/2 + 1) − ln k)`` (``Σw_k = 1``; with mirrored
    sampling the mean step ``Σu_iε_i`` *is* ``Σw_kε_{k:λ}``, CMA-ES's weighted
    recombination); ``c_sigma = (mueff + 2)/(n + mueff + 5)``; ``d_sigma = 1 +
    2 max(0, √((mueff − 1)/(n + 1)) − 1) + c_sigma``; ``chi_n = E‖N(0, I_n)‖ ≈ √n (1 −
    1/(4n) + 1/(21n²))`` (Hansen, "The CMA Evolution Strategy: A Tutorial", Table 1).

    Example (``n = 10``, ``λ = 10``)::

        >>> from spectral_curv import nes
        >>> p = nes.csa_parameters(10, 10)
        >>> round(p.mueff, 3), round(p.c_sigma, 3), round(p.d_sigma, 3), round(p.chi_n, 3)
        (3.415, 0.294, 1.294, 3.085)
    """

    mueff: float
    c_sigma: float
    d_sigma: float
    chi_n: float


def csa_parameters(n: int, popsize: int) -> CSAParameters:
    """The CSA constants of :class:`CSAParameters` for dimension ``n`` and population
    ``popsize`` (CMA-ES's defaults; math §2.2, §6; docs/nes.md, "Step-size adaptation").

    Example (the damping grows only for large populations)::

        >>> from spectral_curv import nes
        >>> p = nes.csa_parameters(20, 12)
        >>> round(p.c_sigma, 4), p.d_sigma == 1 + p.c_sigma
        (0.2064, True)
        >>> nes.csa_parameters(20, 1000).d_sigma > 2
        True
    """
    lam = popsize
    w = np.maximum(0.0, math.log(lam / 2.0 + 1.0) - np.log(np.arange(1, lam + 1.0)))
    w = w / w.sum()
    mueff = float(1.0 / np.sum(w * w))
    c = (mueff + 2.0) / (n + mueff + 5.0)
    d = 1.0 + 2.0 * max(0.0, math.sqrt((mueff - 1.0) / (n + 1.0)) - 1.0) + c
    chi = math.sqrt(n) * (1.0 - 1.0 / (4.0 * n) + 1.0 / (21.0 * n * n))
    return CSAParameters(mueff, c, d, chi)


def rank_utilities(values: Any, *, fitness_shaping: bool = True) -> np.ndarray:
    """Utilities ``u`` (numpy float64, sum 0) of function values, for *minimisation*.

    Non-finite values (NaN, ±inf: failed evaluations) rank worst, tied among themselves
    (without fitness shaping they count as the largest finite value plus the finite range).

    With fitness shaping: ``u_k ∝ max(0, ln(λ/2 + 1) − ln k)`` normalised to sum 1, minus
    ``1/λ``, where ``k`` is the rank (1 = smallest value); ties share their mean utility.
    Without: ``u = −(f − mean f) / (λ · std f)`` (a baseline-subtracted, scale-free REINFORCE
    weight; zero when all values are equal).

    Example (the smallest value gets the largest utility; ties share theirs)::

        >>> import numpy as np
        >>> from spectral_curv import nes
        >>> u = nes.rank_utilities([3.0, 1.0, 2.0, 0.0])
        >>> bool(abs(u.sum()) < 1e-12), int(np.argmax(u)), int(np.argmin(u))
        (True, 3, 0)
        >>> u = nes.rank_utilities([1.0, 1.0, 2.0])
        >>> bool(u[0] == u[1] > u[2])
        True
        >>> nes.rank_utilities([1.0, 3.0], fitness_shaping=False).tolist()
        [0.5, -0.5]
        >>> u = nes.rank_utilities([np.nan, 1.0, np.inf, 2.0])
        >>> bool(u[1] > u[3] > u[0] == u[2])
        True
    """
    f = np.asarray(values, dtype=np.float64).reshape(-1)
    lam = f.shape[0]
    bad = ~np.isfinite(f)
    if bad.any():  # NaN / ±inf rank worst: below every finite value, tied among themselves
        ok = f[~bad]
        worst = float(ok.max() + np.ptp(ok)) if ok.size else 0.0
        f = np.where(bad, np.inf if fitness_shaping else worst, f)
    if not fitness_shaping:
        sd = float(np.std(f))
        return np.zeros(lam) if sd == 0.0 else -(f - f.mean()) / (lam * sd)
    k = np.arange(1, lam + 1, dtype=np.float64)
    w = np.maximum(0.0, math.log(lam / 2.0 + 1.0) - np.log(k))
    w = w / w.sum() - 1.0 / lam
    order = np.argsort(f, kind="stable")
    u = np.empty(lam)
    u[order] = w
    # ties: average the utilities of equal values (keeps the estimate permutation invariant)
    uniq, inv = np.unique(f, return_inverse=True)
    if uniq.shape[0] < lam:
        u = (np.bincount(inv, weights=u) / np.bincount(inv))[inv]
    return u


def _host_raw(x: Any) -> np.ndarray:
    """Any backend's array (or a sequence) → numpy array on the host, dtype unchanged."""
    if isinstance(x, np.ndarray | list | tuple | float | int | complex):
        return np.asarray(x)
    mod = type(x).__module__
    if mod.startswith("torch"):
        return np.asarray(x.detach().cpu().numpy())
    if mod.startswith("cupy"):
        return np.asarray(x.get())
    try:
        return np.asarray(x)
    except (TypeError, ValueError, RuntimeError):
        return np.asarray(np.from_dlpack(x))


def _host(x: Any, name: str = "x") -> np.ndarray:
    """Any backend's array (or a sequence) → numpy float64 on the host.

    Complex, boolean and non-numeric input is refused with a ValueError naming ``name`` (a
    cast to float64 would silently drop imaginary parts or misread the data).
    """
    a = _host_raw(x)
    if np.iscomplexobj(a):
        raise ValueError(f"`{name}` must be real, got complex values (dtype {a.dtype})")
    if a.dtype == np.bool_ or not (
        np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
    ):
        raise ValueError(f"`{name}` must hold real numbers, got dtype {a.dtype}")
    return np.asarray(a, dtype=np.float64)


def _sigma0_range(xp: Namespace, dtype: Any) -> tuple[float, float]:
    """The ``sigma0`` the state can hold in ``dtype``: the initial covariance ``σ0²``, the
    precision ``σ0⁻²`` and their squares (the spectral update squares eigenvalue gaps) must be
    finite, normal numbers with a margin of ``1/eps``: ``σ0^{±4} ∈ [tiny/eps, max·eps]``.
    float64: about ``[1e-73, 1e73]``; float32: about ``[1.8e-8, 5.6e7]``."""
    fi = xp.finfo(dtype)
    eps, tiny, big = float(fi.eps), float(fi.smallest_normal), float(fi.max)
    lo4, hi4 = tiny / eps, big * eps  # allowed range of σ0⁴ and of σ0⁻⁴
    lo = max(lo4**0.25, hi4**-0.25)
    hi = min(hi4**0.25, lo4**-0.25)
    return lo, hi


class NESResult(NamedTuple):
    """Outcome so far, field for field pycma's ``es.result`` (math §6).

    ``xbest``/``fbest``: the best evaluated point and its value (``fbest = inf`` and
    ``xbest = x0`` before any finite value); ``evals_best``: the evaluation count at which it
    was found; ``evaluations``, ``iterations``: counters; ``xfavorite``: the distribution
    mean (``xmean`` is an alias); ``stds``: the axis standard deviations ``√diag Σ``;
    ``stop``: the triggered stop criteria, as :meth:`SpectralNES.stop`.

    Example (after one ask/tell round)::

        >>> import numpy as np
        >>> from spectral_curv.nes import SpectralNES, rosenbrock
        >>> es = SpectralNES(np.zeros(2), 0.5, seed=0)
        >>> X = es.ask()
        >>> es.tell(X, rosenbrock(X))
        >>> r = es.result
        >>> r.evaluations, r.iterations, r.xbest.shape, r.fbest == float(rosenbrock(X).min())
        (6, 1, (2,), True)
        >>> r.xfavorite is es.mean, r.xmean is r.xfavorite, r.stds.shape, r.stop
        (True, True, (2,), {})
    """

    xbest: Array
    fbest: float
    evals_best: int
    evaluations: int
    iterations: int
    xfavorite: Array
    stds: Array
    stop: dict[str, Any]

    @property
    def xmean(self) -> Array:
        """Alias of ``xfavorite`` (the distribution mean)."""
        return self.xfavorite


def _real_scalar(v: Any, name: str) -> float:
    """A real scalar of any kind (Python, NumPy scalar, 0-d array of any backend) → float.

    Complex, boolean, non-numeric and non-scalar input is refused with a ValueError naming
    ``name``."""
    a = _host(v, name)
    if a.ndim != 0:
        raise ValueError(f"`{name}` must be a real scalar, got shape {a.shape}")
    return float(a)


# ------------------------------------------------------------------ box bounds


def _margin(b: np.ndarray) -> np.ndarray:
    """pycma's default width of the quadratic part at a bound ``b``: ``max(1, |b|)/20``."""
    return np.maximum(1.0, np.abs(b)) / 20.0


class BoxTransform:
    """The coordinate-wise map ``T`` from the unbounded genotype space onto the box
    ``[lower, upper]`` (pycma's ``BoundTransform``, ``BoxConstraintsLinQuadTransformation``;
    math §6).

    Per coordinate, with margins ``a_l = min((u − l)/2, max(1, |l|)/20)`` and ``a_u = min((u −
    l)/2, max(1, |u|)/20)`` (``1`` at an infinite bound), ``T`` is

    * the identity on ``[l + a_l, u − a_u]`` (about 90% of a wide box),
    * ``l + (y − l + a_l)²/(4a_l)`` on ``[l − a_l, l + a_l]`` and ``u − (y − u − a_u)²/(4a_u)``
      on ``[u − a_u, u + a_u]`` (value and slope match the identity at ``l + a_l``, ``u − a_u``;
      slope 0 at ``l − a_l``, ``u + a_u``, which ``T`` maps to ``l``, ``u``),
    * mirrored at ``l − a_l`` and ``u + a_u`` beyond them, and, when both bounds are finite,
      periodic with period ``2(u − l + a_l + a_u)`` (an infinite bound has no periodic part).

    So ``T`` is C¹, maps every real number into ``[l, u]``, and is a bijection of ``[l − a_l,
    u + a_u]`` onto ``[l, u]``, whose inverse is :meth:`inverse`
    (``l − a_l + 2√(a_l(x − l))`` near ``l``, ``u + a_u − 2√(a_u(u − x))`` near ``u``).

    ``lower`` / ``upper``: ``None`` (unbounded), a real scalar, or an array-like of length
    ``n``; ``±inf`` (or, in a list, ``None``) entries allowed. A ValueError for the wrong
    length, NaN, or ``lower ≥ upper`` in any coordinate. :meth:`transform` (also ``T(y)``)
    and :meth:`inverse` take arrays ``(..., n)`` of any backend and compute in their dtype.

    Example (``[−1, 1]``: margins ``0.05``; the identity inside, folded outside)::

        >>> import numpy as np
        >>> from spectral_curv.nes import BoxTransform
        >>> T = BoxTransform(-1.0, 1.0, 2)
        >>> T.lower.tolist(), T.upper.tolist(), T.margins[0].tolist()
        ([-1.0, -1.0], [1.0, 1.0], [0.05, 0.05])
        >>> np.round(T(np.array([[0.5, 0.96], [1.05, 3.0]])), 6).tolist()
        [[0.5, 0.9595], [1.0, -0.9]]
        >>> y = np.array([0.3, -1.02])
        >>> bool(np.allclose(T.inverse(T(y)), y))
        True
        >>> BoxTransform(None, [0.0, np.inf], 2)(np.array([2.0, 5.0])).tolist()  # half-bounded
        [-1.9, 5.0]
    """

    def __init__(self, lower: Any, upper: Any, n: int) -> None:
        sides = []
        for name, v, inf in (("lower", lower, -math.inf), ("upper", upper, math.inf)):
            if isinstance(v, list | tuple):  # pycma's per-coordinate None: unbounded there
                v = [inf if e is None else e for e in v]
            a = np.full(n, inf) if v is None else _host(v, f"bounds ({name})")
            if a.ndim == 0:
                a = np.full(n, float(a))
            if a.shape != (n,):
                raise ValueError(
                    f"the {name} bound must be None, a scalar or of length n = {n}, got shape "
                    f"{a.shape}"
                )
            if np.isnan(a).any():
                bad = np.flatnonzero(np.isnan(a)).tolist()
                raise ValueError(f"the {name} bound is NaN at coordinates {bad}")
            sides.append(a)
        lo, hi = sides
        bad = np.flatnonzero(lo >= hi)
        if bad.size:
            raise ValueError(
                f"lower < upper is needed in every coordinate; not so at coordinates "
                f"{bad.tolist()} (lower {lo[bad].tolist()}, upper {hi[bad].tolist()})"
            )
        self.n = n
        self.lower, self.upper = lo, hi
        self._lo, self._hi = np.isfinite(lo), np.isfinite(hi)
        # finite stand-ins for infinite bounds (their side of T is never used): no inf − inf
        L, U = np.where(self._lo, lo, 0.0), np.where(self._hi, hi, 0.0)
        half = np.where(self._lo & self._hi, (U - L) / 2.0, math.inf)
        al = np.where(self._lo, np.minimum(half, _margin(L)), 1.0)
        au = np.where(self._hi, np.minimum(half, _margin(U)), 1.0)
        self.margins = (al, au)
        self._L, self._U = L, U

    @property
    def bounded(self) -> bool:
        """Whether any coordinate has a finite bound (else ``T`` is the identity)."""
        return bool(self._lo.any() or self._hi.any())

    def _consts(self, y: Array) -> tuple[Namespace, list[Array]]:
        xp = array_namespace(y)
        dev = A.device(y)
        al, au = self.margins
        cs = [self._L, self._U, al, au]
        return xp, [xp.asarray(c, dtype=y.dtype, device=dev) for c in cs] + [
            xp.asarray(m, device=dev) for m in (self._lo, self._hi)
        ]

    def transform(self, y: Array) -> Array:
        """``T(y)``: rows of genotypes ``(..., n)`` → points inside the box (math §6).

        Example::

            >>> import numpy as np
            >>> from spectral_curv.nes import BoxTransform
            >>> np.round(BoxTransform(0.0, 1.0, 3).transform(np.array([-0.05, 0.5, 7.3])), 9)
            array([0. , 0.5, 0.7])
        """
        if y.shape[-1] != self.n:
            raise ValueError(f"expected (..., {self.n}), got shape {tuple(y.shape)}")
        xp, (L, U, al, au, lo, hi) = self._consts(y)
        both = lo & hi
        # far outside (both bounds finite): shift by whole periods r into [s, s + r]
        r = xp.where(both, 2.0 * (U - L + al + au), 1.0)
        s = xp.where(both, L - 2.0 * al - (U - L) / 2.0, 0.0)
        far = both & ((y < s) | (y > U + 2.0 * au + (U - L) / 2.0))
        y = xp.where(far, y - r * xp.floor((y - s) / r), y)
        # mirror at u + a_u and l − a_l
        y = xp.where(hi & (y > U + au), y - 2.0 * (y - U - au), y)
        y = xp.where(lo & (y < L - al), y + 2.0 * (L - al - y), y)
        # quadratic near the bounds, the identity in between
        y = xp.where(lo & (y < L + al), L + (y - (L - al)) ** 2 / 4.0 / al, y)
        return xp.where(hi & (y > U - au), U - (y - (U + au)) ** 2 / 4.0 / au, y)

    __call__ = transform

    def inverse(self, x: Array) -> Array:
        """The inverse of ``T`` on the box: points ``(..., n)`` in ``[lower, upper]`` → the
        genotypes in ``[l − a_l, u + a_u]`` that ``T`` maps to them (pycma's ``inverse``;
        math §6). Points outside the box are a ValueError naming the first such coordinate.

        Example::

            >>> import numpy as np
            >>> from spectral_curv.nes import BoxTransform
            >>> BoxTransform(0.0, 1.0, 3).inverse(np.array([0.0, 0.5, 0.7])).tolist()
            [-0.05, 0.5, 0.7]
        """
        xh = _host(x, "x")
        if xh.shape[-1:] != (self.n,):
            raise ValueError(f"expected (..., {self.n}), got shape {xh.shape}")
        out = (xh < self.lower) | (xh > self.upper)
        if out.any():
            idx = tuple(int(i) for i in np.argwhere(out)[0])
            j = idx[-1]
            raise ValueError(
                f"entry {list(idx)} = {float(xh[idx])!r} is outside the box in coordinate {j}: "
                f"[{self.lower[j]}, {self.upper[j]}]"
            )
        xp, (L, U, al, au, lo, hi) = self._consts(x)
        low = lo & (x < L + al)
        up = hi & (x >= U - au) & ~low
        zero = xp.zeros_like(x)
        y = xp.where(low, (L - al) + 2.0 * xp.sqrt(al * xp.maximum(x - L, zero)), x)
        return xp.where(up, (U + au) - 2.0 * xp.sqrt(au * xp.maximum(U - x, zero)), y)


# ------------------------------------------------------------------ ask/tell base


class _NESBase:
    """Shared ask/tell machinery: sampling, utilities, book-keeping and stop criteria."""

    def __init__(
        self,
        x0: Any,
        sigma0: Any,
        *,
        popsize: int | None = None,
        lr_mean: float = 1.0,
        lr_cov: float | None = None,
        lr_sigma: float | None = None,
        mirrored: bool = True,
        fitness_shaping: bool = True,
        seed: Any = None,
        maxfevals: float = math.inf,
        maxiter: float = math.inf,
        ftarget: float = -math.inf,
        tolx: float = 1e-12,
        tolfun: float = 1e-12,
        tolstagnation: int | None = None,
        tolflatfitness: int = 1,
        verbose: int = 0,
        dtype: Any = None,
        bounds: Any = None,
    ) -> None:
        if isinstance(x0, list | tuple | int | float):
            x0 = np.asarray(x0, dtype=np.float64)
        try:
            xp = array_namespace(x0)
        except TypeError as e:
            raise TypeError(f"`x0` must be an array or a sequence, got {type(x0)!r}") from e
        self._xp: Namespace = xp
        if x0.ndim != 1 or x0.shape[0] < 1:
            raise ValueError(f"`x0` must be a non-empty 1-d array, got shape {tuple(x0.shape)}")
        n = int(x0.shape[0])
        if dtype is None:
            dtype = x0.dtype if xp.isdtype(x0.dtype, "real floating") else xp.float64
        self._dtype = dtype
        self._device = A.device(x0)
        mean = xp.asarray(x0, dtype=self._dtype, device=self._device)
        A.check_finite(xp, "x0", mean)
        box = self._box_from(bounds, n, mean)
        x0_pheno = mean
        if box is not None:  # the distribution lives in genotype space: μ = T⁻¹(x0)
            mean = box.inverse(mean)
        s0 = _real_scalar(sigma0, "sigma0")
        if not math.isfinite(s0) or s0 <= 0:
            raise ValueError(f"`sigma0` must be a finite number > 0, got {sigma0!r}")
        lo, hi = _sigma0_range(xp, self._dtype)
        if not lo <= s0 <= hi:
            raise ValueError(
                f"`sigma0` = {sigma0!r} is out of range for dtype {self._dtype}: the initial "
                f"covariance sigma0², precision sigma0⁻² and their squares must be "
                f"representable, so sigma0 must lie in [{lo:.3g}, {hi:.3g}] (rescale the "
                "problem's coordinates)"
            )
        popsize = default_popsize(n) if popsize is None else popsize
        if not _is_int(popsize) or popsize < 2:
            raise ValueError(f"`popsize` must be an int >= 2, got {popsize!r}")
        popsize = int(popsize)
        if mirrored and popsize % 2:
            raise ValueError(f"mirrored sampling needs an even `popsize`, got {popsize}")
        lr_cov = default_lr_cov(n) if lr_cov is None else lr_cov
        lr_sigma = default_lr_sigma(n) if lr_sigma is None else lr_sigma
        for name, v in (("lr_mean", lr_mean), ("lr_cov", lr_cov), ("lr_sigma", lr_sigma)):
            A.check_positive(name, v)
        for name, v in (("tolflatfitness", tolflatfitness), ("verbose", verbose)):
            if not _is_int(v) or v < 0:
                raise ValueError(f"`{name}` must be an int >= 0, got {v!r}")
        tolstagnation = (
            int(100 + 100 * n**1.5 / popsize) if tolstagnation is None else tolstagnation
        )
        if not _is_int(tolstagnation) or tolstagnation < 0:
            raise ValueError(f"`tolstagnation` must be an int >= 0 or None, got {tolstagnation!r}")
        for name, v in (("maxfevals", maxfevals), ("maxiter", maxiter)):
            if not _is_real(v) or not v >= 0:  # an int, or inf (no budget)
                raise ValueError(f"`{name}` must be a number >= 0 (inf: none), got {v!r}")
        for name, v in (("tolx", tolx), ("tolfun", tolfun)):
            if not _is_real(v) or not 0 <= v < math.inf:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {v!r}")
        if not _is_real(ftarget) or math.isnan(ftarget):
            raise ValueError(f"`ftarget` must be a number (-inf: none), got {ftarget!r}")
        self.n = n
        self.popsize = popsize
        self.lr_mean, self.lr_cov, self.lr_sigma = float(lr_mean), float(lr_cov), float(lr_sigma)
        self.mirrored = bool(mirrored)
        self.fitness_shaping = bool(fitness_shaping)
        self.verbose = verbose
        self.opts = {
            "maxfevals": maxfevals,
            "maxiter": maxiter,
            "ftarget": ftarget,
            "tolx": tolx,
            "tolfun": tolfun,
            "tolstagnation": tolstagnation,
            "tolflatfitness": tolflatfitness,
        }
        self.sigma0 = s0
        self._rng = np.random.default_rng(seed)
        self._mean = mean
        self._box = box
        self._eps: Array | None = None
        self._X: Array | None = None
        self._Y: Array | None = None  # genotypes of the last ask() (with bounds only)
        self.countevals = 0
        self.countiter = 0
        self._fbest = math.inf
        self._xbest = x0_pheno
        self._best_iter = 0
        self._evals_best = 0
        self._flat = 0  # consecutive iterations whose finite values were all equal
        self._fiter = math.nan  # best value of the last iteration (for disp)
        self._hist: list[float] = []  # best value of each iteration (for tolfun)
        self._init_state(s0)

    # --- pickling: the array namespace (a module) is stored by name; the device (not
    # picklable for JAX) is taken from the unpickled mean
    def __getstate__(self) -> dict[str, Any]:
        s = dict(self.__dict__)
        s["_xp"] = self._xp.__name__
        del s["_device"]
        return s

    def __setstate__(self, s: dict[str, Any]) -> None:
        import importlib

        s = dict(s)
        s["_xp"] = importlib.import_module(s["_xp"])
        s["_device"] = A.device(s["_mean"])
        s.setdefault("_box", None)  # pickles from before `bounds`
        s.setdefault("_Y", None)
        self.__dict__.update(s)

    @staticmethod
    def _box_from(bounds: Any, n: int, x0: Array) -> BoxTransform | None:
        """The :class:`BoxTransform` of ``bounds`` (``None`` when unbounded), checking ``x0``."""
        if bounds is None:
            return None
        if isinstance(bounds, str | bytes) or not hasattr(bounds, "__len__") or len(bounds) != 2:
            raise ValueError(
                f"`bounds` must be None or a pair (lower, upper), got {type(bounds).__name__}"
                f"{'' if not hasattr(bounds, '__len__') else f' of length {len(bounds)}'}"
            )
        box = BoxTransform(bounds[0], bounds[1], n)
        if not box.bounded:  # (None, None), ±inf everywhere: no transformation at all
            return None
        xh = _host(x0, "x0")
        out = np.flatnonzero((xh < box.lower) | (xh > box.upper))
        if out.size:
            j = int(out[0])
            raise ValueError(
                f"`x0`[{j}] = {float(xh[j])!r} is outside the box [{box.lower[j]}, "
                f"{box.upper[j]}] in coordinate {j} (pycma would repair it; start inside)"
            )
        return box

    # --- to be provided by subclasses
    def _init_state(self, sigma0: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform(self, eps: Array) -> Array:  # pragma: no cover - abstract
        """Rows ``ε_i`` (standard normal) → rows ``z_i ~ N(0, Σ)``."""
        raise NotImplementedError

    def _whiten(self, z: Array) -> Array:
        """The inverse of :meth:`_transform`: rows ``z_i`` → rows ``ε_i``. Generic: ``z = ε T``
        with ``T = _transform(I)``, so ``ε = z T⁻¹`` (one solve; subclasses may do better)."""
        xp = self._xp
        t = self._transform(xp.eye(self.n, dtype=self._dtype, device=self._device))
        return xp.linalg.solve(t.mT, z.mT).mT

    def _propose(self, eps: Array, z: Array, u: Array) -> tuple[Array, dict[str, Any]]:
        """The new mean and the new distribution attributes ``{name: value}``, computed from
        the current ones without changing anything (``tell`` checks, then commits them)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _check_proposal(self, mean: Array, attrs: dict[str, Any]) -> str | None:
        """Why a proposed state is unusable (``None``: usable): every array must be finite."""
        xp = self._xp
        leaves: list[tuple[str, Any]] = [("mean", mean)]
        for name, v in attrs.items():
            if isinstance(v, tuple):  # a NamedTuple state
                fields = getattr(v, "_fields", range(len(v)))
                leaves += [(f"{name}.{f}", a) for f, a in zip(fields, v)]
            else:
                leaves.append((name, v))
        for name, a in leaves:
            if not bool(xp.all(xp.isfinite(a))):
                return f"`{name}` is not finite"
        return None

    @property
    def covariance(self) -> Array:  # pragma: no cover - abstract
        """The explicit search covariance ``Σ`` (n, n)."""
        raise NotImplementedError

    # --- public interface
    @property
    def xp(self) -> Namespace:
        """The array namespace of the state (that of ``x0``)."""
        return self._xp

    @property
    def mean(self) -> Array:
        """The distribution mean ``μ`` (n,); with ``bounds``, its phenotype ``T(μ)`` (inside
        the box; ``μ`` itself, in genotype space, is ``boundary_handler.inverse(mean)`` when
        ``μ`` lies in the invertible range)."""
        return self._mean if self._box is None else self._box.transform(self._mean)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The box ``(lower, upper)`` (numpy float64 ``(n,)`` each, ``±inf`` where unbounded),
        or ``None`` without bounds."""
        b = self._box
        return None if b is None else (b.lower.copy(), b.upper.copy())

    @property
    def boundary_handler(self) -> BoxTransform | None:
        """The :class:`BoxTransform` ``T`` of ``bounds`` (``None`` without bounds)."""
        return self._box

    @property
    def precision(self) -> Array:
        """The explicit precision ``S = Σ⁻¹`` (n, n)."""
        xp = self._xp
        c = self.covariance
        return xp.linalg.inv(c)

    @property
    def sigma(self) -> float:
        """Overall step size ``det(Σ)^{1/(2n)}`` (geometric mean of the axis std-devs)."""
        xp = self._xp
        ev = xp.linalg.eigvalsh(self.covariance)
        return float(xp.exp(xp.mean(xp.log(ev)) / 2.0))

    @property
    def result(self) -> NESResult:
        """Best point, its value, counters, mean, axis std-devs, stop criteria (pycma-like)."""
        xp = self._xp
        stds = xp.sqrt(xp.abs(xp.linalg.diagonal(self.covariance)))
        return NESResult(
            self._xbest,
            self._fbest,
            self._evals_best,
            self.countevals,
            self.countiter,
            self.mean,
            stds,
            self.stop(),
        )

    def ask(self, number: int | None = None) -> Array:
        """Sample ``number`` (default ``popsize``) candidates ``(number, n)`` (mirrored: rows
        ``k`` and ``k + ⌈number/2⌉`` are ``μ ± z``, i.e. ``x`` and ``2μ − x``; with ``bounds``
        these are the genotypes ``y``, and the candidates are ``T(y)``, inside the box)."""
        xp = self._xp
        n = self.n
        lam = self.popsize if number is None else number
        if not _is_int(lam) or lam < 1:
            raise ValueError(f"`number` must be an int >= 1, got {number!r}")
        lam = int(lam)
        if self.mirrored:
            half = self._rng.standard_normal(((lam + 1) // 2, n))
            e = np.concatenate([half, -half], axis=0)[:lam]
        else:
            e = self._rng.standard_normal((lam, n))
        eps = xp.asarray(e, dtype=self._dtype, device=self._device)
        z = self._transform(eps)
        Y = self._mean[None, :] + z
        if self._box is None:
            self._eps, self._X = eps, Y
        else:  # keep the genotypes Y for tell(); the candidates are their phenotypes T(Y)
            self._eps, self._Y, self._X = eps, Y, self._box.transform(Y)
        # a copy: candidates repaired in place must not change what tell() compares them to
        return xp.asarray(self._X, copy=True)

    def tell(self, X: Any, values: Any) -> None:
        """Update the distribution from candidates ``X`` ``(m, n)`` and their values ``(m,)``
        (minimisation; ``m ≥ 2``, usually the last ``ask()``).

        ``X`` may be any points (repaired or injected candidates): unless ``X`` is exactly
        the last ``ask()``, the standard-normal samples are recomputed from it with the
        current distribution, ``ε_i = Σ^{-1/2}(x_i − μ)`` (the inverse of the sampling map),
        and a step with ``‖ε_i‖ > √n + 2n/(n + 2)`` is shortened to that length (pycma's
        ``repair_genotype``: one far point cannot blow the distribution up). Rows equal to a
        row of the last ``ask()`` keep their samples (pycma: only unknown solutions are
        repaired). ``ask()`` returns a copy, so candidates repaired in place count as
        repaired.
        Non-finite values (NaN, ±inf) rank below every finite one; if no value is finite the
        step is skipped with a RuntimeWarning (the evaluations and the iteration still
        count).

        With ``bounds``, ``X`` is in the box (phenotypes): the last ``ask()`` uses its stored
        genotypes ``y_i`` (and their ``ε_i``); other points are mapped back first,
        ``y_i = T⁻¹(x_i)`` (:meth:`BoxTransform.inverse`; a point outside the box is a
        ValueError), then ``ε_i = Σ^{-1/2}(y_i − μ)``.

        Atomic: the new state is computed in full and checked before it is committed. On any
        error (a ValueError for bad ``X`` / ``values``, including complex values; a
        FloatingPointError when the update itself leaves the representable range) the
        optimiser is left exactly as it was, counters included, and the last ``ask()`` may
        still be told.
        """
        xp = self._xp
        if self._X is None or self._eps is None:
            raise ValueError("tell() called without a preceding ask()")
        n = self.n
        shape = tuple(getattr(X, "shape", np.shape(X)))
        if len(shape) != 2 or shape[1] != n or shape[0] < 2:
            raise ValueError(f"`X` must have shape (m, {n}) with m >= 2, got {shape}")
        m = shape[0]
        Xh = _host(X, "X")
        if not np.all(np.isfinite(Xh)):
            raise ValueError("`X` contains non-finite entries (NaN or inf)")
        f = _host(values, "values")
        if f.shape != (m,):
            raise ValueError(f"`values` must have shape ({m},) (one per row of `X`), got {f.shape}")
        finite = np.isfinite(f)
        if not finite.any():
            import warnings

            warnings.warn(
                f"tell(): all {m} values are non-finite (NaN or inf); the step is skipped",
                RuntimeWarning,
                stacklevel=2,
            )
            self.countevals += m
            self.countiter += 1
            self._fiter = math.nan
            self._eps = self._X = self._Y = None
            self._maybe_disp()
            return
        Xa = _host(self._X, "X")
        if Xa.shape == Xh.shape and np.array_equal(Xa, Xh):
            eps, Xd = self._eps, self._X
            Yd = Xd if self._box is None else self._Y
            z = Yd - self._mean[None, :]
        else:  # repaired / injected candidates: recompute ε from X (genotypes T⁻¹(X))
            Xd = xp.asarray(Xh, dtype=self._dtype, device=self._device)
            Yd = Xd if self._box is None else self._box.inverse(Xd)
            z = Yd - self._mean[None, :]
            eps = self._whiten(z)
            # pycma's repair_genotype: a step longer than r = √n + 2n/(n + 2) in the
            # distribution's norm (‖ε‖) is shortened to r, so that one far point cannot
            # blow the covariance up (ε εᵀ enters the update); the norm from entries scaled
            # by their largest magnitude (no overflow of a square)
            r = math.sqrt(n) + 2.0 * n / (n + 2.0)
            one = xp.ones((m, 1), dtype=self._dtype, device=self._device)
            big = xp.max(xp.abs(eps), axis=1, keepdims=True)
            big = xp.where(big > 0, big, one)
            size = big * xp.sqrt(xp.sum((eps / big) ** 2, axis=1, keepdims=True))
            shrink = r / xp.maximum(size, r * one)  # ≤ 1
            eps, z = eps * shrink, z * shrink
            # rows the last ask() sent (found by value, as pycma's archive finds them) keep
            # their samples and genotypes, unshortened
            sent = {row.tobytes(): i for i, row in enumerate(Xa)}
            idx = np.array([sent.get(row.tobytes(), -1) for row in Xh])
            if (idx >= 0).any():
                take = xp.asarray(np.maximum(idx, 0), device=self._device)
                known = xp.asarray((idx >= 0)[:, None], device=self._device)
                ys = self._X if self._box is None else self._Y
                eps = xp.where(known, xp.take(self._eps, take, axis=0), eps)
                z = xp.where(known, xp.take(ys, take, axis=0) - self._mean[None, :], z)
        u = xp.asarray(
            rank_utilities(f, fitness_shaping=self.fitness_shaping),
            dtype=self._dtype,
            device=self._device,
        )
        # compute everything first ...
        mean, attrs = self._propose(eps, z, u)
        why = self._check_proposal(mean, attrs)
        if why is not None:
            raise FloatingPointError(
                f"tell(): the update gave an unusable distribution ({why}); the state is "
                f"unchanged. The step left the range of dtype {self._dtype}: try a smaller "
                "lr_cov / lr_mean, or rescale the problem (sigma0)"
            )
        # ... then commit
        fin = np.where(finite, f, np.inf)
        i = int(np.argmin(fin))
        self.countevals += m
        self.countiter += 1
        if fin[i] < self._fbest:
            self._fbest, self._xbest = float(fin[i]), Xd[i, :]
            self._best_iter, self._evals_best = self.countiter, self.countevals - m + i + 1
        self._fiter = float(fin[i])
        self._hist.append(float(fin[i]))
        self._flat = self._flat + 1 if finite.all() and np.ptp(f) == 0 else 0
        self._mean = mean
        for name, v in attrs.items():
            setattr(self, name, v)
        self._eps = self._X = self._Y = None
        self._maybe_disp()

    def _maybe_disp(self) -> None:
        if self.verbose and self.countiter % self.verbose == 0:
            self.disp()

    def disp(self) -> None:
        """Print a one-line status: iteration, evaluations, best value of the last iteration,
        best so far, ``σ`` and the largest axis std-dev (every ``verbose`` iterations from
        ``tell`` when ``verbose > 0``)."""
        xp = self._xp
        mx = float(xp.max(xp.sqrt(xp.abs(xp.linalg.diagonal(self.covariance)))))
        print(
            f"it {self.countiter:6d}  evals {self.countevals:8d}  f {self._fiter:.6e}  "
            f"fbest {self._fbest:.6e}  sigma {self.sigma:.3e}  maxstd {mx:.3e}",
            flush=True,
        )

    def stop(self) -> dict[str, Any]:
        """Triggered stop criteria ``{name: value}`` (empty while running; pycma-like)."""
        o, out = self.opts, {}
        if self.countevals >= o["maxfevals"]:
            out["maxfevals"] = o["maxfevals"]
        if self.countiter >= o["maxiter"]:
            out["maxiter"] = o["maxiter"]
        if self.countevals > 0 and self._fbest <= o["ftarget"]:  # (fbest is inf before any)
            out["ftarget"] = o["ftarget"]
        if self.countiter > 0:
            xp = self._xp
            c = self.covariance
            if float(xp.max(xp.sqrt(xp.abs(xp.linalg.diagonal(c))))) < o["tolx"]:
                out["tolx"] = o["tolx"]
            w = 10 + int(30 * self.n / self.popsize)
            if len(self._hist) >= w and np.ptp(self._hist[-w:]) < o["tolfun"]:
                out["tolfun"] = o["tolfun"]
            if self.countiter - self._best_iter >= o["tolstagnation"]:
                out["tolstagnation"] = o["tolstagnation"]
            if o["tolflatfitness"] and self._flat >= o["tolflatfitness"]:
                out["tolflatfitness"] = o["tolflatfitness"]
        return out

    def optimize(self, fun: Callable[[Array], Any], *, callback: Callable[..., Any] | None = None):
        """Run ``ask → fun(X) → tell`` until ``stop()``; ``fun`` maps ``(λ, n)`` → ``(λ,)``."""
        while not self.stop():
            X = self.ask()
            self.tell(X, fun(X))
            if callback is not None:
                callback(self)
        return self


# ------------------------------------------------------------------ the three methods

#: values of :class:`SpectralNES`'s ``sigma_rule``
SIGMA_RULES = ("csa", "xnes")


class SpectralNES(_NESBase):
    """NES with the precision ``S = Σ⁻¹`` kept as a spectral state (math §2, Sec. 4.3).

    ``S = B Diag(d) Bᵀ`` is updated by ``full.update_rotated`` with the REINFORCE estimate
    ``Δ = −S^{1/2}(Σ u_i ε_i ε_iᵀ)S^{1/2}`` in the rotated frame,
    ``Q = BᵀΔB = −Diag(√d)(Bᵀ Σ u_i ε_i ε_iᵀ B)Diag(√d)`` (γ = 0, exact exp/Cayley), the
    mean by the 1-root step ``μ ← μ − lr_mean S⁻¹g``, ``g = −S^{1/2} Σ u_i ε_i``, i.e.
    ``μ ← μ + lr_mean·full.precondition(state, Σ u_i ε_i, p=2)``. Defaults:
    ``popsize = 4 + ⌊3 ln n⌋`` (even), ``lr_mean = 1``,
    ``lr_cov = (9 + 3 ln n)/(5 n^{3/2})`` (xNES's ``η_B``), ``sigma_rule="csa"`` with
    ``rank_one=True``: the scale by cumulative step-size adaptation (the shape step keeps
    ``det S``; path ``p_σ``, constants :func:`csa_parameters`) and CMA-ES's rank-one term
    ``(c_1/lr_cov) q qᵀ``, ``q = σ S^{1/2} p_c``, added to ``Σ u_i ε_i ε_iᵀ`` (docs/nes.md,
    "Step-size adaptation"). Passing ``lr_sigma`` (or ``sigma_rule="xnes"``) selects the
    former rule: the scale part of ``Δ`` at rate ``lr_sigma`` (default ``min(1, 3·lr_cov)``,
    :func:`default_lr_sigma`; ``lr_sigma=lr_cov`` gives the paper's single rate), no path.
    ``sigma_rule="csa"`` with ``lr_sigma``, or ``rank_one=True`` without CSA, is a
    ValueError. Stop options (``maxfevals``, ``maxiter``, ``ftarget``, ``tolx``, ``tolfun``,
    ``tolstagnation``) follow pycma's names.

    ``bounds=(lower, upper)`` (each ``None``, a scalar or length ``n``; ``±inf`` allowed; also
    for the baselines) is pycma's ``bounds`` with its default ``BoundTransform``: the
    distribution lives in an unbounded genotype space, and ``ask()`` returns the phenotypes
    ``T(y)`` of the samples, :class:`BoxTransform` (C¹, the identity well inside the box,
    folding the outside into it), so every candidate is feasible. ``x0`` must lie in the box
    (a ValueError names the coordinate; pycma repairs it) and starts ``μ = T⁻¹(x0)``.
    ``mean``, ``result.xbest`` and ``result.xfavorite`` are phenotypes (in the box);
    ``covariance``, ``precision``, ``sigma``, ``result.stds``, ``state`` (and the CSA paths)
    are in genotype space, as in pycma. ``bounds=None`` (default) changes nothing.


    Example (one ask/tell round, then a full run on a sphere; the step-size rules)::

        >>> import numpy as np
        >>> from spectral_curv.nes import SpectralNES, rosenbrock
        >>> es = SpectralNES(np.zeros(3), 0.5, seed=0)
        >>> X = es.ask()
        >>> X.shape, es.popsize
        ((8, 3), 8)
        >>> es.tell(X, rosenbrock(X))
        >>> es.state.B.shape, bool(np.allclose(es.covariance @ es.precision, np.eye(3)))
        ((3, 3), True)
        >>> sphere = lambda X: (X**2).sum(axis=1)
        >>> es = SpectralNES(np.full(2, 3.0), 1.0, seed=0, ftarget=1e-8).optimize(sphere)
        >>> bool(es.result.fbest < 1e-8), es.stop()
        (True, {'ftarget': 1e-08})
        >>> es.sigma_rule, es.rank_one
        ('csa', True)
        >>> es = SpectralNES(np.zeros(3), 0.5, lr_sigma=0.3)  # the former (xNES) rule
        >>> es.sigma_rule, es.rank_one
        ('xnes', False)

    Box bounds (the sphere around ``2·1`` in ``[−1, 1]³``: the optimum is the corner ``1``)::

        >>> f = lambda X: ((X - 2.0) ** 2).sum(axis=1)
        >>> es = SpectralNES(np.zeros(3), 0.5, bounds=(-1, 1), seed=0, maxfevals=5000)
        >>> X = es.ask()
        >>> bool(np.all((-1 <= X) & (X <= 1)))
        True
        >>> es = es.optimize(f)
        >>> bool(np.abs(es.result.xbest - 1).max() < 1e-6), es.bounds[0].tolist()
        (True, [-1.0, -1.0, -1.0])
    """

    state: full.SpectralState

    def __init__(
        self,
        x0: Any,
        sigma0: Any,
        *,
        sigma_rule: str | None = None,
        rank_one: bool | None = None,
        **kw: Any,
    ) -> None:
        if sigma_rule is None:  # giving `lr_sigma` (the xNES rule's rate) selects that rule
            sigma_rule = "csa" if kw.get("lr_sigma") is None else "xnes"
        if sigma_rule not in SIGMA_RULES:
            raise ValueError(f"`sigma_rule` must be one of {SIGMA_RULES}, got {sigma_rule!r}")
        if sigma_rule == "csa" and kw.get("lr_sigma") is not None:
            raise ValueError(
                "`lr_sigma` is the rate of sigma_rule='xnes'; with sigma_rule='csa' the scale "
                "is set by the evolution path (drop `lr_sigma` or use sigma_rule='xnes')"
            )
        if rank_one is None:
            rank_one = sigma_rule == "csa"
        if not isinstance(rank_one, bool):
            raise ValueError(f"`rank_one` must be a bool or None, got {rank_one!r}")
        if rank_one and sigma_rule != "csa":
            raise ValueError("`rank_one=True` needs sigma_rule='csa' (its path uses p_σ and σ)")
        self.sigma_rule, self.rank_one = sigma_rule, rank_one
        super().__init__(x0, sigma0, **kw)

    def _init_state(self, sigma0: float) -> None:
        self.state = full.init(
            self.n, scale=sigma0**-2, dtype=self._dtype, device=self._device, xp=self._xp
        )
        self.csa = csa_parameters(self.n, self.popsize)
        self._ps = self._xp.zeros(self.n, dtype=self._dtype, device=self._device)
        # rank-one path (CMA-ES's p_c, c_c, c_1; Hansen's tutorial, Table 1), σ-normalised
        n, mu = self.n, self.csa.mueff
        self._cc = (4.0 + mu / n) / (n + 4.0 + 2.0 * mu / n)
        self._c1 = 2.0 / ((n + 1.3) ** 2 + mu)
        self._pc = self._xp.zeros(self.n, dtype=self._dtype, device=self._device)

    def _transform(self, eps: Array) -> Array:
        return full.precondition(self.state, eps, p=2)  # rows S^{-1/2} ε_i

    def _whiten(self, z: Array) -> Array:
        st = self.state  # rows S^{1/2} z_i = B Diag(√d) Bᵀ z_i
        return ((z @ st.B) * self._xp.sqrt(st.d)) @ st.B.mT

    def _propose(self, eps: Array, z: Array, u: Array) -> tuple[Array, dict[str, Any]]:
        xp, st = self._xp, self.state
        # Δ = E[ℓ (S z zᵀ S − S)] = −S^{1/2} Eᵀ Diag(u) E S^{1/2} (ℓ = −u, Σu = 0), rotated:
        # Q = BᵀΔB = −Diag(√d) (EB)ᵀ Diag(u) (EB) Diag(√d). Only tril(Q) and diag(Q) are read.
        e = eps @ st.B  # rows (Bᵀ ε_i)ᵀ
        m = (e * u[:, None]).mT @ e
        # μ ← μ − lr_mean S⁻¹ E[ℓ S z] = μ + lr_mean S^{-1/2} Σ u_i ε_i
        y = u @ eps
        mean = self._mean + self.lr_mean * full.precondition(st, y, p=2)
        csa = self.sigma_rule == "csa"
        out: dict[str, Any] = {}
        if csa:
            # CSA: p_σ ← (1 − c)p_σ + √(c(2 − c)) y/√v, v = E‖y‖²/n under random selection
            # (Σu², times m/(m − 1) for m/2 mirrored pairs); σ ← σ exp((c/d_σ)(‖p_σ‖/χ_n − 1)),
            # i.e. d ← d exp(−2(c/d_σ)(‖p_σ‖/χ_n − 1)) (S = Σ⁻¹ ∝ σ⁻²)
            k, mm = self.csa, u.shape[0]
            v = xp.sum(u * u) * (mm / (mm - 1.0) if self.mirrored and mm % 2 == 0 else 1.0)
            c = k.c_sigma
            ps = (1.0 - c) * self._ps + math.sqrt(c * (2.0 - c)) * y / xp.sqrt(v)
            pnorm = xp.linalg.vector_norm(ps)
            out["_ps"] = ps
            if self.rank_one:
                # p_c ← (1 − c_c)p_c + h_σ √(c_c(2 − c_c)) S^{-1/2}y/(σ√v) (σ = det Σ^{1/(2n)});
                # G gains (c_1/lr_cov) q qᵀ, q = σ S^{1/2} p_c (whitened), rotated rq = Bᵀq
                cc, g = self._cc, self.countiter + 1
                hs = (
                    float(pnorm) / math.sqrt(1.0 - (1.0 - c) ** (2 * g))
                    < (1.4 + 2.0 / (self.n + 1)) * k.chi_n
                )
                sig = xp.exp(-xp.mean(xp.log(st.d)) / 2.0)
                rd = xp.sqrt(st.d)
                rq = (1.0 - cc) * sig * rd * (self._pc @ st.B)
                if hs:
                    rq = rq + math.sqrt(cc * (2.0 - cc)) * (y @ st.B) / xp.sqrt(v)
                m = m + (self._c1 / self.lr_cov) * (rq[:, None] * rq[None, :])
                out["_pc"] = st.B @ (rq / (rd * sig))
                rank1 = (self._c1 / self.lr_cov) * xp.sum(rq * rq)
        r = xp.sqrt(st.d)
        q = -(r[:, None] * m * r[None, :])
        diag_q = -(st.d * xp.linalg.diagonal(m))
        if csa or self.lr_sigma != self.lr_cov:
            # scale part tr(S⁻¹Δ)/n · S with its own rate: tr(S⁻¹Δ) = −tr(m) = −Σ u_i |ε_i|²
            # (− (c_1/lr_cov)|rq|² with the rank-one term), BᵀSB = Diag(d). CSA: rate 0, so
            # Σ diag(q)/d = 0 and the exact exp keeps det S (the scale is CSA's alone)
            tr = -xp.sum(u * xp.sum(eps * eps, axis=1))
            if "_pc" in out:
                tr = tr - rank1
            rel = -1.0 if csa else self.lr_sigma / self.lr_cov - 1.0
            diag_q = diag_q + (rel * tr / self.n) * st.d
        state = full.update_rotated(
            st, q, diag_q=diag_q, check=False, beta2=self.lr_cov, cayley="exact", exp="exact"
        )
        if csa:
            step = (c / k.d_sigma) * (pnorm / k.chi_n - 1.0)
            state = full.SpectralState(state.B, state.d * xp.exp(-2.0 * step))
        return mean, {"state": state, **out}

    def _check_proposal(self, mean: Array, attrs: dict[str, Any]) -> str | None:
        why = super()._check_proposal(mean, attrs)
        if why is None and not bool(self._xp.all(attrs["state"].d > 0)):
            return "`state.d` is not positive"
        return why

    @property
    def covariance(self) -> Array:
        """The search covariance ``Σ = S⁻¹`` (dense, ``(n, n)``)."""
        return full.dense(self.state, -1.0)

    @property
    def precision(self) -> Array:
        """The precision ``S = B Diag(d) Bᵀ`` (dense, ``(n, n)``)."""
        return full.dense(self.state, 1.0)


# ------------------------------------------------------------------ fmin with IPOP restarts


def fmin(
    fun: Callable[[Array], Any] | None,
    x0: Any,
    sigma0: Any,
    *,
    restarts: int = 0,
    incpopsize: float = 2,
    maxfevals: float = math.inf,
    parallel_objective: Callable[[Array], Any] | None = None,
    callback: Callable[[SpectralNES], Any] | None = None,
    seed: Any = None,
    bounds: Any = None,
    **options: Any,
) -> tuple[Array, NESResult]:
    """Minimise ``fun`` with :class:`SpectralNES` and IPOP restarts (``cma.fmin2`` analogue;
    math §2, §6).

    ``fun`` maps one point ``(n,)`` to a value; alternatively ``parallel_objective`` maps
    the whole population ``(λ, n)`` to ``(λ,)`` (then ``fun`` may be ``None``). Runs
    ``ask → evaluate → tell`` until the run's ``stop()``; then, unless the target
    (``ftarget``) was reached, the total budget ``maxfevals`` is spent or ``callback(es)``
    returned ``True``, restarts from ``x0`` (called anew if it is a callable) and ``sigma0``
    with the population multiplied by ``incpopsize`` (IPOP, Auger & Hansen 2005; rounded up
    to even with mirrored sampling), at most ``restarts`` times. Restart ``k ≥ 1`` draws from
    ``SeedSequence(seed).spawn(restarts)[k − 1]``; the first run uses ``seed`` itself (so
    ``restarts=0`` is exactly ``SpectralNES(x0, sigma0, seed=seed, ...)``; a ``Generator``
    is first turned into a ``SeedSequence`` of one draw from it). ``options`` go to
    :class:`SpectralNES` (``popsize`` is the first run's); so does ``bounds`` (every run
    samples in the box, :class:`BoxTransform`; ``fun`` sees feasible points only).

    Returns ``(xbest, result)``: the best point over all runs and an :class:`NESResult` whose
    ``xbest``/``fbest``/``evals_best``/``evaluations``/``iterations`` cover all runs and
    whose ``xfavorite``/``stds``/``stop`` are the last run's (``stop`` also holds
    ``"callback": True`` when the callback ended it; ``maxfevals`` is the total budget).

    Example (a sphere; 2-D Rastrigin, where the default population often ends in a local
    minimum and the restarts with 2×, 4×, … the population find the global one)::

        >>> import numpy as np
        >>> from spectral_curv import nes
        >>> xbest, res = nes.fmin(lambda x: float(x @ x), np.ones(3), 0.5, seed=0, ftarget=1e-10)
        >>> bool(res.fbest < 1e-10), res.stop
        (True, {'ftarget': 1e-10})
        >>> lams = []
        >>> xbest, res = nes.fmin(None, np.full(2, 3.0), 2.0, parallel_objective=nes.rastrigin,
        ...                       restarts=6, seed=1, ftarget=1e-8,
        ...                       callback=lambda es: lams.append(es.popsize))
        >>> bool(res.fbest < 1e-8), sorted(set(lams))[:3]
        (True, [6, 12, 24])
    """
    if fun is None and parallel_objective is None:
        raise ValueError("give `fun` (one point → value) or `parallel_objective`")
    if not _is_int(restarts) or restarts < 0:
        raise ValueError(f"`restarts` must be an int >= 0, got {restarts!r}")
    inc = _real_scalar(incpopsize, "incpopsize")
    if not (math.isfinite(inc) and inc >= 1):
        raise ValueError(f"`incpopsize` must be a finite number >= 1, got {incpopsize!r}")

    def evaluate(X: Array) -> Any:
        if parallel_objective is not None:
            return parallel_objective(X)
        return np.asarray([_host_raw(fun(X[i, :])) for i in range(X.shape[0])])  # type: ignore[misc]

    popsize = options.pop("popsize", None)
    mirrored = options.get("mirrored", True)
    verbose = options.get("verbose", 0)
    if isinstance(seed, np.random.Generator):  # its own stream: the restarts' seeds from it
        seed = np.random.SeedSequence(int(seed.integers(2**63)))
    try:
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    except TypeError as e:
        raise ValueError(f"`seed` must be None, an int, a SeedSequence or a Generator: {e}") from e
    seeds = [seed, *ss.spawn(restarts)]
    xbest: Array | None = None
    fbest, evals_best, evals, iters = math.inf, 0, 0, 0
    es: SpectralNES | None = None
    lam0 = popsize
    stop: dict[str, Any] = {}
    for k in range(restarts + 1):
        lam = None
        if k > 0:
            lam = math.ceil(lam0 * inc**k - 1e-9)
            lam += lam % 2 if mirrored else 0
        start = x0() if callable(x0) else x0
        es = SpectralNES(
            start,
            sigma0,
            popsize=lam or popsize,
            seed=seeds[k],
            maxfevals=maxfevals - evals,
            bounds=bounds,
            **options,
        )
        lam0 = es.popsize if k == 0 else lam0
        if verbose:
            print(f"fmin: run {k} (popsize {es.popsize}), evaluations so far {evals}", flush=True)
        by_callback = False
        while not es.stop():
            X = es.ask()
            es.tell(X, evaluate(X))
            if callback is not None and callback(es) is True:
                by_callback = True
                break
        r = es.result
        if xbest is None or r.fbest < fbest:
            xbest, fbest, evals_best = r.xbest, r.fbest, evals + r.evals_best
        evals += r.evaluations
        iters += r.iterations
        stop = dict(r.stop)
        if "maxfevals" in stop:
            stop["maxfevals"] = maxfevals
        if by_callback:
            stop["callback"] = True
        if by_callback or "ftarget" in stop or evals >= maxfevals:
            break
    assert es is not None and xbest is not None
    res = NESResult(xbest, fbest, evals_best, evals, iters, es.mean, es.result.stds, stop)
    return xbest, res


# ------------------------------------------------------------------ test functions (Appx. C)


def _rows(x: Array) -> tuple[Namespace, Array]:
    xp = array_namespace(x)
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(f"`x` must have shape (..., n) with n >= 1, got {tuple(x.shape)}")
    return xp, x


def rastrigin(x: Array) -> Array:
    """``10n + Σ (w_i² − 10 cos 2πw_i)``; min 0 at 0, a local minimum near every integer
    point (the IPOP test case of :func:`fmin`; not one of Appx. C's five).

    Example (at ``(1, 0)``: ``20 + 1 − 10 − 10``)::

        >>> import numpy as np
        >>> from spectral_curv import nes
        >>> np.round(nes.rastrigin(np.array([[0.0, 0.0], [1.0, 0.0]])), 12).tolist()
        [0.0, 1.0]
    """
    xp, x = _rows(x)
    return 10.0 * x.shape[-1] + xp.sum(x * x - 10.0 * xp.cos(2.0 * math.pi * x), axis=-1)


def ackley(x: Array) -> Array:
    """``20 − 20 exp(−0.2 √(mean w²)) + e − exp(mean cos 2πw)``; min 0 at 0. ``(..., n)``.

    Example (one value per row; at ``w = (1, 1)``, ``20 − 20e^{−0.2}``)::

        >>> import numpy as np
        >>> from spectral_curv import nes
        >>> f = nes.ackley(np.array([[0.0, 0.0], [1.0, 1.0]]))
        >>> f.shape, bool(abs(f[0]) < 1e-12), bool(np.isclose(f[1], 20 - 20 * np.exp(-0.2)))
        ((2,), True, True)
    """
    xp, x = _rows(x)
    r = xp.sqrt(xp.mean(x * x, axis=-1))
    c = xp.mean(xp.cos(2.0 * math.pi * x), axis=-1)
    return 20.0 - 20.0 * xp.exp(-0.2 * r) + math.e - xp.exp(c)


def rosenbrock(x: Array) -> Array:
    """``Σ_{i<n} 100(w_{i+1} − w_i²)² + (w_i − 1)²``; min 0 at ``(1, …, 1)``; n ≥ 2.

    Example::

        >>> import numpy as np
        >>> from spectral_curv import nes
        >>> nes.rosenbrock(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])).tolist()
        [0.0, 2.0, 101.0]
    """
    xp, x = _rows(x)
    a, b = x[..., :-1], x[..., 1:]
    return xp.sum(100.0 * (b - a * a) ** 2 + (a - 1.0) ** 2, axis=-1)


def bohachevsky(x: Array) -> Array:
    """``Σ_{i<n} w_i² + 2w_{i+1}² − 0.3 cos 3πw_i − 0.4 cos 4πw_{i+1} + 0.7``; min 0 at 0.

    Example (at ``(1, 0)``: ``1 + 0.3 − 0.4 + 0.7``)::

        >>> import numpy as np
        >>> from spectral_curv import nes
        >>> np.round(nes.bohachevsky(np.array([[0.0, 0.0], [1.0, 0.0]])), 12).tolist()
        [0.0, 1.6]
    """
    xp, x = _rows(x)
    a, b = x[..., :-1], x[..., 1:]
    t = a * a + 2.0 * b * b - 0.3 * xp.cos(3.0 * math.pi * a) - 0.4 * xp.cos(4.0 * math.pi * b)
    return xp.sum(t + 0.7, axis=-1)


def schaffer(x: Array) -> Array:
    """``Σ_{i<n} (w_i² + w_{i+1}²)^{1/4} [sin²(50 (w_i² + w_{i+1}²)^{1/10}) + 1]``; min 0 at 0.

    Example (at ``(1, 0)`` the single term is ``sin²(50) + 1``)::

        >>> import numpy as np
        >>> from spectral_curv import nes
        >>> f = nes.schaffer(np.array([[0.0, 0.0], [1.0, 0.0]]))
        >>> float(f[0]), bool(np.isclose(f[1], np.sin(50.0) ** 2 + 1.0))
        (0.0, True)
    """
    xp, x = _rows(x)
    s = x[..., :-1] ** 2 + x[..., 1:] ** 2
    return xp.sum(s**0.25 * (xp.sin(50.0 * s**0.1) ** 2 + 1.0), axis=-1)


def griewank(x: Array) -> Array:
    """``(1/4000) Σ w_i² − Π cos(w_i/√i) + 1``; min 0 at 0.

    Example (at ``(π, 0)``: ``π²/4000 + 1 + 1``)::

        >>> import numpy as np
        >>> from spectral_curv import nes
        >>> f = nes.griewank(np.array([[0.0, 0.0], [np.pi, 0.0]]))
        >>> float(f[0]), bool(np.isclose(f[1], np.pi**2 / 4000 + 2.0))
        (0.0, True)
    """
    xp, x = _rows(x)
    n = x.shape[-1]
    i = xp.arange(1, n + 1, dtype=x.dtype, device=A.device(x))
    return xp.sum(x * x, axis=-1) / 4000.0 - xp.prod(xp.cos(x / xp.sqrt(i)), axis=-1) + 1.0


# ------------------------------------------------------------------ deprecated aliases

# Moved names, loaded on first access (PEP 562): the NES baselines live in
# spectral_curv.baselines (which imports this module, so they cannot be imported here at load
# time), the benchmark in spectral_curv.experiments.nes (core modules import no experiments).
_MOVED = {
    "XNES": "spectral_curv.baselines",
    "CholeskyNES": "spectral_curv.baselines",
    "FUNCTIONS": "spectral_curv.experiments.nes",
    "benchmark": "spectral_curv.experiments.nes",
    "summarise": "spectral_curv.experiments.nes",
    "main": "spectral_curv.experiments.nes",
    "_Problem": "spectral_curv.experiments.nes",
    "_run_ours": "spectral_curv.experiments.nes",
    "_run_cma": "spectral_curv.experiments.nes",
    "_plot": "spectral_curv.experiments.nes",
}


def __getattr__(name: str) -> Any:
    """Deprecated aliases of names that moved out of this module (loaded lazily, with a
    DeprecationWarning naming the new place; removed in 0.2)."""
    if name in _MOVED:
        import importlib

        warnings.warn(
            f"spectral_curv.nes.{name} moved to {_MOVED[name]}.{name}; the alias goes in 0.2",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's own names (the deprecated aliases are left out: ``help``/``inspect``
    would warn for each)."""
    return sorted(globals())


if __name__ == "__main__":  # pragma: no cover
    from spectral_curv.experiments.nes import main as _main

    raise SystemExit(_main())
