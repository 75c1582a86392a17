"""Gradient-free optimisation with natural evolution strategies (ask/tell; SPEC §2, §6).

The search distribution is ``q = N(μ, S⁻¹)``. With ``γ = 0`` and the 1-root (``p = 1``),
the Gaussian problem ``min E_q[ℓ(w)]`` is solved by the spectral scheme of SPEC §2 with the
REINFORCE curvature estimate (paper Sec. 4.3, Appx. C)::

    Δ = E[ℓ(w) (S z zᵀ S − S)],      z = w − μ
    S ← S + lr_cov · Δ            (spectral: ``full.update(state, Δ, beta2=lr_cov)``)
    μ ← μ − lr_mean · S⁻¹ E[ℓ(w) S z]  (``full.precondition(state, ·, p=1)``)

Expectations are Monte-Carlo averages over ``popsize`` samples; ``ℓ(w_i)`` is replaced by
``−u_i``, the rank-based utilities of Wierstra et al. (2008/2014) ("fitness shaping", they
sum to zero, so the ``−S`` term drops out), and samples are mirrored (``±ε``, Fukushima et al.
2011). Writing ``w_i = μ + S^{-1/2} ε_i`` gives ``S z_i = S^{1/2} ε_i``, so::

    Δ = −S^{1/2} (Σ u_i ε_i ε_iᵀ) S^{1/2},     μ ← μ + lr_mean Σ u_i z_i.

``lr_sigma`` (default ``lr_cov``) optionally gives the scale part of ``Δ`` (its component
along ``S``, ``tr(S⁻¹Δ)/n · S``) its own rate, as in xNES; with ``lr_sigma == lr_cov`` the
update is exactly the paper's. ``Δ`` is indefinite, so the exact exp and Cayley maps are used.

Baselines with the same interface (SPEC §6): :class:`XNES` (full covariance ``Σ = AAᵀ``,
``A ← A expm(½(lr_cov G_B + lr_sigma G_σ I))`` via ``eigh``; Glasmachers et al. 2010) and
:class:`CholeskyNES` (``Σ = KKᵀ``, ``K`` lower triangular, the inverse-free step of
``baselines``; Lin et al. 2021). All three agree to first order in the step size.

Also here: the five test functions of Appx. C (:func:`ackley`, :func:`rosenbrock`,
:func:`bohachevsky`, :func:`schaffer`, :func:`griewank`) and :func:`benchmark`
(``python -m spectral_curv.nes --help``), which compares against pycma's CMA-ES.

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
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import _array as A
from . import full
from ._array import Array, Namespace, array_namespace

__all__ = [
    "FUNCTIONS",
    "XNES",
    "CholeskyNES",
    "NESResult",
    "SpectralNES",
    "ackley",
    "benchmark",
    "bohachevsky",
    "default_lr_cov",
    "default_popsize",
    "griewank",
    "rank_utilities",
    "rosenbrock",
    "schaffer",
]


# ------------------------------------------------------------------ helpers


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


def rank_utilities(values: Any, *, fitness_shaping: bool = True) -> np.ndarray:
    """Utilities ``u`` (numpy float64, sum 0) of function values, for *minimisation*.

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
    """
    f = np.asarray(values, dtype=np.float64).reshape(-1)
    lam = f.shape[0]
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


def _host(x: Any) -> np.ndarray:
    """Any backend's array (or a sequence) → numpy float64 on the host."""
    if isinstance(x, np.ndarray | list | tuple | float | int):
        return np.asarray(x, dtype=np.float64)
    mod = type(x).__module__
    if mod.startswith("torch"):
        return np.asarray(x.detach().cpu().numpy(), dtype=np.float64)
    if mod.startswith("cupy"):
        return np.asarray(x.get(), dtype=np.float64)
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError, RuntimeError):
        return np.asarray(np.from_dlpack(x), dtype=np.float64)


class NESResult(NamedTuple):
    """Outcome so far (pycma's ``es.result`` analogue).

    Example (after one ask/tell round)::

        >>> import numpy as np
        >>> from spectral_curv.nes import SpectralNES, rosenbrock
        >>> es = SpectralNES(np.zeros(2), 0.5, seed=0)
        >>> X = es.ask()
        >>> es.tell(X, rosenbrock(X))
        >>> r = es.result
        >>> r.evaluations, r.iterations, r.xbest.shape, r.fbest == float(rosenbrock(X).min())
        (6, 1, (2,), True)
    """

    xbest: Array
    fbest: float
    evaluations: int
    iterations: int
    xmean: Array
    stop: dict[str, Any]


# ------------------------------------------------------------------ ask/tell base


class _NESBase:
    """Shared ask/tell machinery: sampling, utilities, book-keeping and stop criteria."""

    def __init__(
        self,
        x0: Any,
        sigma0: float,
        *,
        popsize: int | None = None,
        lr_mean: float = 1.0,
        lr_cov: float | None = None,
        lr_sigma: float | None = None,
        mirrored: bool = True,
        fitness_shaping: bool = True,
        seed: int | None = None,
        maxfevals: float = math.inf,
        maxiter: float = math.inf,
        ftarget: float = -math.inf,
        tolx: float = 1e-12,
        tolfun: float = 1e-12,
        tolstagnation: int | None = None,
        dtype: Any = None,
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
        if not isinstance(sigma0, int | float) or not math.isfinite(sigma0) or sigma0 <= 0:
            raise ValueError(f"`sigma0` must be a finite number > 0, got {sigma0!r}")
        popsize = default_popsize(n) if popsize is None else popsize
        if not isinstance(popsize, int) or isinstance(popsize, bool) or popsize < 2:
            raise ValueError(f"`popsize` must be an int >= 2, got {popsize!r}")
        if mirrored and popsize % 2:
            raise ValueError(f"mirrored sampling needs an even `popsize`, got {popsize}")
        lr_cov = default_lr_cov(n) if lr_cov is None else lr_cov
        lr_sigma = lr_cov if lr_sigma is None else lr_sigma
        for name, v in (("lr_mean", lr_mean), ("lr_cov", lr_cov), ("lr_sigma", lr_sigma)):
            A.check_positive(name, v)
        self.n = n
        self.popsize = popsize
        self.lr_mean, self.lr_cov, self.lr_sigma = float(lr_mean), float(lr_cov), float(lr_sigma)
        self.mirrored = bool(mirrored)
        self.fitness_shaping = bool(fitness_shaping)
        self.opts = {
            "maxfevals": maxfevals,
            "maxiter": maxiter,
            "ftarget": ftarget,
            "tolx": tolx,
            "tolfun": tolfun,
            "tolstagnation": (
                int(100 + 100 * n**1.5 / popsize) if tolstagnation is None else tolstagnation
            ),
        }
        self._rng = np.random.default_rng(seed)
        self._mean = mean
        self._eps: Array | None = None
        self._X: Array | None = None
        self.countevals = 0
        self.countiter = 0
        self._fbest = math.inf
        self._xbest = mean
        self._best_iter = 0
        self._hist: list[float] = []  # best value of each iteration (for tolfun)
        self._init_state(float(sigma0))

    # --- to be provided by subclasses
    def _init_state(self, sigma0: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform(self, eps: Array) -> Array:  # pragma: no cover - abstract
        """Rows ``ε_i`` (standard normal) → rows ``z_i ~ N(0, Σ)``."""
        raise NotImplementedError

    def _update(self, eps: Array, z: Array, u: Array) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

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
        """The distribution mean ``μ`` (n,)."""
        return self._mean

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
        """Best point, its value, evaluations and iterations so far (pycma-like)."""
        return NESResult(
            self._xbest, self._fbest, self.countevals, self.countiter, self._mean, self.stop()
        )

    def ask(self) -> Array:
        """Sample ``popsize`` candidates ``(popsize, n)`` (mirrored: rows ``k`` and
        ``k + popsize/2`` are ``μ ± z``, i.e. ``x`` and ``2μ − x``)."""
        xp = self._xp
        lam, n = self.popsize, self.n
        if self.mirrored:
            half = self._rng.standard_normal((lam // 2, n))
            e = np.concatenate([half, -half], axis=0)
        else:
            e = self._rng.standard_normal((lam, n))
        eps = xp.asarray(e, dtype=self._dtype, device=self._device)
        z = self._transform(eps)
        self._eps, self._X = eps, self._mean[None, :] + z
        return self._X

    def tell(self, X: Any, values: Any) -> None:
        """Update the distribution from the last ``ask()`` and its values (minimisation)."""
        xp = self._xp
        if self._X is None or self._eps is None:
            raise ValueError("tell() called without a preceding ask()")
        lam, n = self.popsize, self.n
        if tuple(getattr(X, "shape", np.shape(X))) != (lam, n):
            raise ValueError(
                f"`X` must have shape ({lam}, {n}) (the last ask()), got "
                f"{tuple(getattr(X, 'shape', np.shape(X)))}"
            )
        Xh, Xa = _host(X), _host(self._X)
        if not np.allclose(Xh, Xa, rtol=1e-12, atol=1e-12 * (1.0 + np.abs(Xa).max())):
            raise ValueError("`X` does not match the candidates of the last ask()")
        f = _host(values)
        if f.shape != (lam,):
            raise ValueError(f"`values` must have shape ({lam},), got {f.shape}")
        if not np.all(np.isfinite(f)):
            raise ValueError("`values` contains non-finite values (NaN or inf)")
        eps, z = self._eps, self._X - self._mean[None, :]
        u = xp.asarray(
            rank_utilities(f, fitness_shaping=self.fitness_shaping),
            dtype=self._dtype,
            device=self._device,
        )
        self.countevals += lam
        self.countiter += 1
        i = int(np.argmin(f))
        if f[i] < self._fbest:
            self._fbest, self._xbest, self._best_iter = float(f[i]), self._X[i, :], self.countiter
        self._hist.append(float(f[i]))
        self._update(eps, z, u)
        self._eps = self._X = None

    def stop(self) -> dict[str, Any]:
        """Triggered stop criteria ``{name: value}`` (empty while running; pycma-like)."""
        o, out = self.opts, {}
        if self.countevals >= o["maxfevals"]:
            out["maxfevals"] = o["maxfevals"]
        if self.countiter >= o["maxiter"]:
            out["maxiter"] = o["maxiter"]
        if self._fbest <= o["ftarget"]:
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


class SpectralNES(_NESBase):
    """NES with the precision ``S = Σ⁻¹`` kept as a spectral state (SPEC §2, Sec. 4.3).

    ``S = B Diag(d) Bᵀ`` is updated by ``full.update`` with the REINFORCE estimate
    ``Δ = −S^{1/2}(Σ u_i ε_i ε_iᵀ)S^{1/2}`` (γ = 0, exact exp/Cayley), the mean by the
    1-root step ``μ ← μ − lr_mean·full.precondition(state, g, p=1)``,
    ``g = −S^{1/2} Σ u_i ε_i``. Defaults: ``popsize = 4 + ⌊3 ln n⌋`` (even),
    ``lr_mean = 1``, ``lr_cov = lr_sigma = (9 + 3 ln n)/(5 n^{3/2})``. Stop options
    (``maxfevals``, ``maxiter``, ``ftarget``, ``tolx``, ``tolfun``, ``tolstagnation``)
    follow pycma's names.

    Example (one ask/tell round, then a full run on a sphere)::

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
    """

    state: full.SpectralState

    def _init_state(self, sigma0: float) -> None:
        self.state = full.init(
            self.n, scale=sigma0**-2, dtype=self._dtype, device=self._device, xp=self._xp
        )

    def _transform(self, eps: Array) -> Array:
        return full.precondition(self.state, eps, p=2)  # rows S^{-1/2} ε_i

    def _update(self, eps: Array, z: Array, u: Array) -> None:
        xp, st = self._xp, self.state
        h = eps @ full.dense(st, 0.5)  # rows (S^{1/2} ε_i)ᵀ = (S z_i)ᵀ
        delta = -((h * u[:, None]).mT @ h)  # E[ℓ (S z zᵀ S − S)] with ℓ = −u, Σu = 0
        if self.lr_sigma != self.lr_cov:
            # scale part tr(S⁻¹Δ)/n · S with its own rate: tr(S⁻¹Δ) = −Σ u_i |ε_i|²
            tr = -xp.sum(u * xp.sum(eps * eps, axis=1))
            delta = delta + ((self.lr_sigma / self.lr_cov - 1.0) * tr / self.n) * full.dense(st)
        delta = 0.5 * (delta + delta.mT)
        g = -(u @ h)  # E[ℓ S z]
        self._mean = self._mean - self.lr_mean * full.precondition(st, g, p=1)
        self.state = full.update(st, delta, beta2=self.lr_cov, cayley="exact", exp="exact")

    @property
    def covariance(self) -> Array:
        """The search covariance ``Σ = S⁻¹`` (dense, ``(n, n)``)."""
        return full.dense(self.state, -1.0)

    @property
    def precision(self) -> Array:
        """The precision ``S = B Diag(d) Bᵀ`` (dense, ``(n, n)``)."""
        return full.dense(self.state, 1.0)


class XNES(_NESBase):
    """Exponential NES with full covariance ``Σ = AAᵀ`` (Glasmachers et al. 2010; SPEC §6).

    ``G = Σ u_i (ε_i ε_iᵀ − I)``, ``G_σ = tr(G)/n``, ``G_B = G − G_σ I``;
    ``A ← A · expm(½(lr_cov G_B + lr_sigma G_σ I))`` (symmetric expm by ``eigh``),
    ``μ ← μ + lr_mean A Σ u_i ε_i``. Same options as :class:`SpectralNES`.

    Example (``Σ₀ = σ₀² I``, then a run on a sphere)::

        >>> import numpy as np
        >>> from spectral_curv.nes import XNES
        >>> bool(np.allclose(XNES(np.zeros(3), 0.5, seed=0).covariance, 0.25 * np.eye(3)))
        True
        >>> sphere = lambda X: (X**2).sum(axis=1)
        >>> es = XNES(np.full(2, 3.0), 1.0, seed=0, ftarget=1e-8).optimize(sphere)
        >>> bool(es.result.fbest < 1e-8), es.stop()
        (True, {'ftarget': 1e-08})
    """

    def _init_state(self, sigma0: float) -> None:
        xp = self._xp
        self.A = sigma0 * xp.eye(self.n, dtype=self._dtype, device=self._device)

    def _transform(self, eps: Array) -> Array:
        return eps @ self.A.mT

    def _update(self, eps: Array, z: Array, u: Array) -> None:
        xp, n = self._xp, self.n
        eye = xp.eye(n, dtype=self._dtype, device=self._device)
        g = (eps * u[:, None]).mT @ eps - xp.sum(u) * eye
        gs = xp.sum(xp.linalg.diagonal(g)) / n
        m = 0.5 * (self.lr_cov * (g - gs * eye) + self.lr_sigma * gs * eye)
        w, v = xp.linalg.eigh(0.5 * (m + m.mT))
        self._mean = self._mean + self.lr_mean * (u @ z)
        self.A = self.A @ ((v * xp.exp(w)[None, :]) @ v.mT)

    @property
    def covariance(self) -> Array:
        return self.A @ self.A.mT


class CholeskyNES(_NESBase):
    """Cholesky NES (Lin et al. 2021; SPEC §6): ``Σ = S⁻¹ = KKᵀ``, ``K`` lower triangular.

    With ``z = Kε``, ``X = KᵀΔK = −Σ u_i ε_i ε_iᵀ`` (scale part ``tr(X)/n·I`` at rate
    ``lr_sigma``) and ``K ← K(I − lr_cov M)``, ``M = Tril(X) + ½Diag(X)``
    (``exp="exact"``: ``K expm(−lr_cov M)``), the step of ``baselines.cholesky_update``.

    Example (``K`` stays lower triangular; a run on a sphere)::

        >>> import numpy as np
        >>> from spectral_curv.nes import CholeskyNES, rosenbrock
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

    def _update(self, eps: Array, z: Array, u: Array) -> None:
        from .baselines import _cholesky_step

        xp, n = self._xp, self.n
        x = -((eps * u[:, None]).mT @ eps)
        if self.lr_sigma != self.lr_cov:
            eye = xp.eye(n, dtype=self._dtype, device=self._device)
            tr = xp.sum(xp.linalg.diagonal(x))
            x = x + ((self.lr_sigma / self.lr_cov - 1.0) * tr / n) * eye
        self._mean = self._mean + self.lr_mean * (u @ z)
        self.K = _cholesky_step(xp, self.K, x, self.lr_cov, self.exp)

    @property
    def covariance(self) -> Array:
        return self.K @ self.K.mT


# ------------------------------------------------------------------ test functions (Appx. C)


def _rows(x: Array) -> tuple[Namespace, Array]:
    xp = array_namespace(x)
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(f"`x` must have shape (..., n) with n >= 1, got {tuple(x.shape)}")
    return xp, x


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


class _Problem(NamedTuple):
    fun: Callable[[Array], Array]
    xopt: float  # every coordinate of the minimiser
    half_width: float  # x0 ~ U(-a, a)^n
    sigma0: float
    ftarget: float
    budget_per_dim: int  # maxfevals = budget_per_dim * n
    popsize: int | None  # None: default_popsize(n); the same for every method


# the benchmark set-up (documented in docs/nes.md): x0 uniform in a box, same for all methods
FUNCTIONS: dict[str, _Problem] = {
    "ackley": _Problem(ackley, 0.0, 3.0, 2.0, 1e-6, 1000, None),
    "rosenbrock": _Problem(rosenbrock, 1.0, 2.0, 0.5, 1e-8, 8000, None),
    "bohachevsky": _Problem(bohachevsky, 0.0, 3.0, 2.0, 1e-8, 2000, 64),
    "schaffer": _Problem(schaffer, 0.0, 3.0, 2.0, 1e-2, 3000, 128),
    "griewank": _Problem(griewank, 0.0, 10.0, 5.0, 1e-8, 1000, None),
}


# ------------------------------------------------------------------ benchmark


def _run_ours(
    cls: type[_NESBase],
    prob: _Problem,
    x0: np.ndarray,
    seed: int,
    maxfevals: int,
    popsize: int,
    **kw: Any,
):
    es = cls(
        x0,
        prob.sigma0,
        seed=seed,
        maxfevals=maxfevals,
        ftarget=prob.ftarget,
        popsize=popsize,
        **kw,
    )
    ev, fb = [], []
    while not es.stop():
        X = es.ask()
        es.tell(X, prob.fun(X))
        ev.append(es.countevals)
        fb.append(es.result.fbest)
    return ev, fb, es.stop()


def _run_cma(prob: _Problem, x0: np.ndarray, seed: int, maxfevals: int, popsize: int):
    import cma

    opts = {
        "seed": seed + 1,  # pycma: 0 means "random"
        "maxfevals": maxfevals,
        "ftarget": prob.ftarget,
        "popsize": popsize,
        "verbose": -9,
        "verb_log": 0,
        "verb_disp": 0,
    }
    es = cma.CMAEvolutionStrategy(x0, prob.sigma0, opts)
    ev, fb = [], []
    while not es.stop():
        X = es.ask()
        es.tell(X, [float(v) for v in prob.fun(np.asarray(X))])
        ev.append(es.countevals)
        fb.append(float(es.result.fbest))
    return ev, fb, dict(es.stop())


def benchmark(
    functions: Sequence[str] = tuple(FUNCTIONS),
    *,
    dim: int = 60,
    seeds: int = 5,
    methods: Sequence[str] = ("spectral", "xnes", "cholesky", "cma"),
    budget_scale: float = 1.0,
    lr_sigma: float | None = 0.3,
    lr_cov: float | None = None,
    log: Callable[[str], Any] | None = print,
) -> dict[str, Any]:
    """Run every method on every function for ``seeds`` seeds (numpy, float64).

    Each run starts at ``x0 ~ U(−a, a)^dim`` (per seed, shared by all methods; ``a`` and
    ``σ0`` per function in :data:`FUNCTIONS`), uses the default population size of
    :func:`default_popsize` for all methods (CMA-ES included) and stops at the function's
    target or after ``budget_per_dim · dim · budget_scale`` evaluations. The three NES
    methods share ``lr_sigma`` (default 0.3; ``None`` = the paper's single rate) and the
    default ``lr_mean`` and ``lr_cov`` (unless given). Returns
    ``{"setup": ..., "runs": {fun: {method: [{"evals", "fbest", "stop"}, ...]}}}`` with the
    best-so-far value after every iteration; :func:`summarise` makes the table.

    Example (a tiny run: one function, one method, one seed, in 2-D)::

        >>> from spectral_curv import nes
        >>> res = nes.benchmark(["rosenbrock"], dim=2, seeds=1, methods=["spectral"], log=None)
        >>> res["setup"]["budget"], res["setup"]["popsizes"]
        ({'rosenbrock': 16000}, {'rosenbrock': 6})
        >>> run = res["runs"]["rosenbrock"]["spectral"][0]
        >>> run["stop"], run["fbest"][-1] <= 1e-8, len(run["evals"]) == len(run["fbest"])
        (['ftarget'], True, True)
    """
    import time

    have_cma = True
    try:
        import cma  # noqa: F401
    except ImportError:
        have_cma = False
    classes = {"spectral": SpectralNES, "xnes": XNES, "cholesky": CholeskyNES}
    out: dict[str, Any] = {
        "setup": {
            "dim": dim,
            "seeds": seeds,
            "popsize": default_popsize(dim),
            "lr_sigma": lr_sigma,
            "lr_cov": lr_cov,
            "popsizes": {},
            "budget": {},
        },
        "runs": {},
    }
    for name in functions:
        prob = FUNCTIONS[name]
        budget = int(prob.budget_per_dim * dim * budget_scale)
        lam = default_popsize(dim) if prob.popsize is None else prob.popsize
        out["setup"]["budget"][name] = budget
        out["setup"]["popsizes"][name] = lam
        out["runs"][name] = {}
        for m in methods:
            if m == "cma" and not have_cma:
                continue
            runs = []
            t0 = time.perf_counter()
            for s in range(seeds):
                x0 = np.random.default_rng(1000 + s).uniform(-prob.half_width, prob.half_width, dim)
                if m == "cma":
                    ev, fb, st = _run_cma(prob, x0, s, budget, lam)
                else:
                    ev, fb, st = _run_ours(
                        classes[m], prob, x0, s, budget, lam, lr_sigma=lr_sigma, lr_cov=lr_cov
                    )
                runs.append({"evals": ev, "fbest": fb, "stop": sorted(st)})
            if log is not None:
                log(f"{name:12s} {m:9s} {time.perf_counter() - t0:7.1f}s")
            out["runs"][name][m] = runs
    return out


def summarise(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{function, method, median_evals, solved, median_final}`` (median evaluations to
    target over the solved runs; ``solved`` = runs reaching the target / all runs)."""
    rows = []
    for fname, per in res["runs"].items():
        tgt = FUNCTIONS[fname].ftarget
        for m, runs in per.items():
            hit = [r["evals"][-1] for r in runs if r["fbest"] and r["fbest"][-1] <= tgt]
            fin = [r["fbest"][-1] for r in runs if r["fbest"]]
            rows.append(
                {
                    "function": fname,
                    "method": m,
                    "median_evals": float(np.median(hit)) if hit else None,
                    "solved": f"{len(hit)}/{len(runs)}",
                    "median_final": float(np.median(fin)) if fin else None,
                }
            )
    return rows


def _plot(res: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["runs"])
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.4), squeeze=False)
    colors = {"spectral": "C3", "xnes": "C0", "cholesky": "C2", "cma": "k"}
    for ax, fname in zip(axes[0], names):
        for m, runs in res["runs"][fname].items():
            grid = np.unique(np.concatenate([np.asarray(r["evals"]) for r in runs]))
            curves = []
            for r in runs:
                ev, fb = np.asarray(r["evals"]), np.asarray(r["fbest"])
                idx = np.clip(np.searchsorted(ev, grid, side="right") - 1, 0, len(ev) - 1)
                curves.append(np.maximum(fb[idx], 1e-300))
            med = np.median(np.stack(curves), axis=0)
            base = m.split(" ")[0]
            ls = "--" if base != m else "-"
            ax.plot(grid, med, color=colors.get(base), ls=ls, label=m)
        ax.axhline(FUNCTIONS[fname].ftarget, color="grey", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"{res['setup']['dim']}-dim {fname}")
        ax.set_xlabel("function evaluations")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("best value so far (median over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m spectral_curv.nes [--dim 60] [--seeds 5] [--budget-scale 1]``."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description="NES benchmark (paper Fig. 3/9, Appx. C)")
    ap.add_argument("--dim", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget-scale", type=float, default=1.0)
    ap.add_argument("--lr-sigma", type=float, default=0.3, help="NES scale rate (0: = lr_cov)")
    ap.add_argument("--lr-cov", type=float, default=0.0, help="NES rate (0: xNES default)")
    ap.add_argument("--functions", default=",".join(FUNCTIONS))
    ap.add_argument("--methods", default="spectral,xnes,cholesky,cma")
    ap.add_argument("--json", default=None, help="write the raw runs here")
    ap.add_argument("--plot", default=None, help="write the value-vs-evaluations plot here")
    a = ap.parse_args(argv)
    res = benchmark(
        a.functions.split(","),
        dim=a.dim,
        seeds=a.seeds,
        methods=a.methods.split(","),
        budget_scale=a.budget_scale,
        lr_sigma=a.lr_sigma or None,
        lr_cov=a.lr_cov or None,
    )
    print(f"dim={a.dim} seeds={a.seeds} lr_sigma={a.lr_sigma} lr_cov={a.lr_cov or 'default'}")
    print(
        "| function | method | popsize | budget | median evals to target | solved "
        "| median final f |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in summarise(res):
        me = "—" if r["median_evals"] is None else f"{r['median_evals']:.0f}"
        b = res["setup"]["budget"][r["function"]]
        lam = res["setup"]["popsizes"][r["function"]]
        print(
            f"| {r['function']} | {r['method']} | {lam} | {b} | {me} | {r['solved']} | "
            f"{r['median_final']:.3g} |"
        )
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh)
    if a.plot:
        _plot(res, a.plot)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
