"""Curvature matching of the paper's Fig. 2 / 7 (full matrix) and Fig. 2 / 8 (Kronecker).

Set-up (Sec. 4.1 and Appx. B of the paper; math §6), numpy float64 on the CPU:

* **Ground truth.** ``Σ = Q Diag(λ) Qᵀ`` with ``Q`` Haar-random orthogonal (QR of a
  Gaussian matrix, signs fixed) and ``λ_i = cond^{−u_i}``, ``u_i ~ U(0, 1)`` i.i.d.
  (log-uniform on ``[1/cond, 1]``; ``cond = 100`` by default). The paper does not say how
  it draws ``Σ``; this is a generic, well-spread SPD matrix.
* **Gradients.** ``g_k = Q Diag(√λ) z_k``, ``z_k ~ N(0, I)``: one sequence ``g_1 … g_N``
  (single-sample GOPs) fed to every scheme.
* **Schemes** (all with γ = 1, no damping, the same ``β₂`` and the same start ``S₀``):
  spectral (:func:`spectral_curv.full.update_gop` / :func:`spectral_curv.kron.update_gop`,
  exact exp and exact Cayley), the default scheme ``S ← (1 − β₂)S + β₂ggᵀ``, the Cholesky
  inverse-free baseline (first-order ``K ← K(I − β₂M)`` by default) and, for the Kronecker
  case, the Van Loan–Pitsianis projection baseline and a Kronecker Cholesky baseline
  (:mod:`spectral_curv.baselines`).
* **Start.** ``S₀ = (tr Σ / n) I`` — isotropic, hence Kronecker-structured
  (``α = tr Σ / n``, ``B = I``, ``d = 1``), as the paper asks for the Kronecker case
  ("initialized all update schemes by a Kronecker structured matrix"). For the spectral
  scheme this is the tie case of math §5.5: every ``U_ij`` is masked in the first step.
* **Metrics** (Appx. B): fixed-point error ``‖S_k − Σ‖_F / ‖Σ‖_F`` and iterate-matching
  error ``‖S_k − S_k^default‖_F / ‖S_k^default‖_F`` at the recorded iterations ``k``
  (``k`` = number of updates done; ``k = 0`` is ``S₀``).

Both functions return plain JSON-serialisable dicts (lists of floats, no arrays).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import baselines as bl
from .. import full, kron, maps

__all__ = [
    "SIGMA_KINDS",
    "full_matching",
    "kron_matching",
    "kron_sigma",
    "random_spd",
    "record_iterations",
]

#: Ground-truth families of :func:`kron_sigma`.
SIGMA_KINDS = ("random", "kron_plus_random")


def random_spd(n: int, rng: np.random.Generator, cond: float = 100.0) -> tuple[Any, Any]:
    """``(Q, λ)`` of ``Σ = Q Diag(λ) Qᵀ``: Haar ``Q``, ``λ`` log-uniform on ``[1/cond, 1]``.

    Example (``Q`` is orthogonal and ``λ`` are the eigenvalues of ``Σ``)::

        >>> import numpy as np
        >>> from spectral_curv.experiments import matching as mt
        >>> q, lam = mt.random_spd(5, np.random.default_rng(0), cond=100.0)
        >>> eig = np.linalg.eigvalsh((q * lam) @ q.T)
        >>> bool(np.allclose(q.T @ q, np.eye(5))), bool(np.allclose(eig, np.sort(lam)))
        (True, True)
        >>> bool(lam.min() >= 0.01 and lam.max() <= 1.0)
        True
    """
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    q = q * np.sign(np.diag(r))[None, :]
    lam = cond ** (-rng.uniform(0.0, 1.0, n))
    return q, lam


def kron_sigma(
    rows: int,
    cols: int,
    rng: np.random.Generator,
    *,
    kind: str = "random",
    cond: float = 100.0,
    rho: float = 0.3,
) -> tuple[Any, Any]:
    """Ground truth ``(Σ, L)`` with ``Σ = L Lᵀ`` (rc × rc) for the Kronecker experiment.

    ``kind="random"``: the generator of the full-matrix experiment, :func:`random_spd`, at
    ``n = rc`` — the paper's "similar experimental setup". Such a ``Σ`` is far from any
    Kronecker product, and its Frobenius-nearest one is close to a multiple of ``I``.

    ``kind="kron_plus_random"``: ``Σ = (1 − ρ) K / tr K + ρ E / tr E`` with
    ``K = Σ_C ⊗ Σ_K`` (``Σ_C`` r×r, ``Σ_K`` c×c, each from :func:`random_spd` with ``cond``)
    and ``E`` from :func:`random_spd` at ``n = rc``: a Kronecker product plus a dense,
    unstructured part of relative weight ``ρ``.

    Example (``tr Σ = (1 − ρ) + ρ = 1`` for ``kron_plus_random``)::

        >>> import numpy as np
        >>> from spectral_curv.experiments import matching as mt
        >>> sigma, low = mt.kron_sigma(2, 3, np.random.default_rng(0), kind="kron_plus_random")
        >>> sigma.shape, round(float(np.trace(sigma)), 12), bool(np.allclose(low @ low.T, sigma))
        ((6, 6), 1.0, True)
    """
    n = rows * cols
    if kind == "random":
        q, lam = random_spd(n, rng, cond)
        return (q * lam) @ q.T, q * np.sqrt(lam)[None, :]
    if kind == "kron_plus_random":
        qc, lc = random_spd(rows, rng, cond)
        qk, lk = random_spd(cols, rng, cond)
        qe, le = random_spd(n, rng, cond)
        k = np.kron((qc * lc) @ qc.T, (qk * lk) @ qk.T)
        e = (qe * le) @ qe.T
        sigma = (1.0 - rho) * k / np.trace(k) + rho * e / np.trace(e)
        sigma = 0.5 * (sigma + sigma.T)
        return sigma, np.linalg.cholesky(sigma)
    raise ValueError(f"`kind` must be one of {SIGMA_KINDS}, got {kind!r}")


def record_iterations(steps: int, record_every: int | None, log_points: int) -> list[int]:
    """Sorted iterations to record: ``0``, a geometric grid of ``log_points`` points up to
    ``steps`` (for log-scale plots), every ``record_every``-th step, and ``steps``.

    Example (``geomspace(1, 100, 3) = 1, 10, 100`` plus the multiples of 25)::

        >>> from spectral_curv.experiments import matching as mt
        >>> mt.record_iterations(100, 25, 3)
        [0, 1, 10, 25, 50, 75, 100]
    """
    its = {0, steps}
    if log_points > 0 and steps >= 1:
        its.update(round(float(x)) for x in np.geomspace(1, steps, log_points))
    if record_every:
        its.update(range(0, steps + 1, record_every))
    return sorted(i for i in its if 0 <= i <= steps)


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Limit BLAS threads to ``n`` while the experiment runs (``None``: leave them alone).

    The matrices here are ≤ 100 × 100, where BLAS threading only adds overhead, and on a
    busy 2-core machine multi-threaded OpenBLAS was measured ~8× slower than one thread.
    Uses ``threadpoolctl`` when it is installed; otherwise set ``OMP_NUM_THREADS=1`` (or
    ``OPENBLAS_NUM_THREADS=1``) before numpy is imported.

    Example (results do not depend on the thread count)::

        >>> import numpy as np
        >>> from spectral_curv.experiments import matching as mt
        >>> with mt.blas_threads(1):
        ...     prod = np.full((3, 3), 2.0) @ np.eye(3)
        >>> bool(np.array_equal(prod, np.full((3, 3), 2.0)))
        True
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if n is None or threadpool_limits is None:
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


def _rel(a: Any, b: Any) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _noise_floor(sigma: Any, beta2: float) -> float:
    """Stationary relative RMS error of the default EMA: ``√(β₂/(2−β₂)·(1 + (trΣ)²/‖Σ‖²_F))``.

    ``S − Σ = β₂ Σ_j (1−β₂)^j (g gᵀ − Σ)_j`` and ``E‖ggᵀ − Σ‖²_F = (tr Σ)² + ‖Σ‖²_F`` for
    Gaussian ``g``.
    """
    ratio = float(np.trace(sigma) ** 2 / np.sum(sigma * sigma))
    return math.sqrt(beta2 / (2.0 - beta2) * (1.0 + ratio))


def _tail_mean(its: list[int], vals: list[float], steps: int, frac: float = 0.1) -> float:
    sel = [v for i, v in zip(its, vals, strict=True) if i >= (1.0 - frac) * steps]
    return float(np.mean(sel))


def _summary(its: list[int], curves: dict[str, list[float]], steps: int) -> dict[str, Any]:
    return {
        name: {"final": vals[-1], "tail_mean": _tail_mean(its, vals, steps), "max": max(vals[1:])}
        for name, vals in curves.items()
    }


def _min_rel_gap(d: Any) -> float:
    s = np.sort(d)
    return float(np.min(np.diff(s) / s[1:])) if s.size > 1 else math.inf


def full_matching(
    n: int = 100,
    beta2: float = 1e-3,
    steps: int = 10_000,
    seed: int = 0,
    *,
    record_every: int | None = 100,
    log_points: int = 41,
    cond: float = 100.0,
    cholesky_exp: str = "first_order",
    init: str = "isotropic",
    spectral_options: dict[str, Any] | None = None,
    diagnostics: bool = True,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Fig. 2 (left) / Fig. 7: full-matrix spectral vs default vs Cholesky on ``g ~ N(0, Σ)``.

    Returns a dict with ``iterations``; ``fixed_point[scheme]`` (``‖S_k − Σ‖/‖Σ‖`` for
    ``default``, ``spectral``, ``cholesky``); ``iterate[scheme]`` (``‖S_k − S_k^default‖ /
    ``‖S_k^default‖`` for ``spectral``, ``cholesky``); ``summary`` (final, mean over the
    last 10 % of the steps, and max over ``k ≥ 1`` of each curve); ``noise_floor`` (the
    stationary error the default EMA is predicted to have); ``diagnostics`` of the
    spectral scheme (largest Cayley argument ``‖(β₂/2)Skew(Tril(U))‖_F`` over all steps and
    where it occurred, smallest relative eigenvalue gap, final ``‖BᵀB − I‖``) and
    ``runtime_s`` per scheme.

    ``init="random"`` starts every scheme from a random SPD ``S₀`` (same generator as ``Σ``,
    trace ``tr Σ``) instead of ``(tr Σ / n) I``: a tie-free start. ``spectral_options`` are
    passed to :func:`spectral_curv.full.update_gop` (e.g. ``tie_tol``, ``max_step_norm``);
    ``diagnostics=False`` skips the per-step Cayley-argument bookkeeping (~10 % of the
    time); ``threads`` limits BLAS threads (:func:`blas_threads`).

    Example (``k = 0`` is ``S₀ = (tr Σ / n) I``, whose error follows from ``λ`` alone)::

        >>> import numpy as np
        >>> from spectral_curv.experiments import matching as mt
        >>> r = mt.full_matching(n=4, beta2=0.01, steps=20, record_every=10, log_points=0)
        >>> q, lam = mt.random_spd(4, np.random.default_rng(0))  # the same Σ (seed 0)
        >>> iso = np.linalg.norm(lam - lam.mean()) / np.linalg.norm(lam)
        >>> r["iterations"], bool(np.isclose(r["fixed_point"]["default"][0], iso))
        ([0, 10, 20], True)
    """
    with blas_threads(threads):
        rng = np.random.default_rng(seed)
        q, lam = random_spd(n, rng, cond)
        sigma = (q * lam) @ q.T
        root = q * np.sqrt(lam)[None, :]
        z = rng.standard_normal((steps, n))
        scale = float(np.trace(sigma) / n)
        if init == "isotropic":
            s0 = scale * np.eye(n)
            st_sp = full.init(n, scale=scale)
        elif init == "random":
            q0, lam0 = random_spd(n, rng, cond)
            lam0 = lam0 * (scale * n / lam0.sum())
            s0 = (q0 * lam0) @ q0.T
            st_sp = full.SpectralState(q0, lam0)
        else:
            raise ValueError(f"`init` must be 'isotropic' or 'random', got {init!r}")
        opts = dict(spectral_options or {})
        st_def = bl.default_init(s0)
        st_ch = bl.cholesky_from_dense(s0)

        its = record_iterations(steps, record_every, log_points)
        rec = set(its)
        fp: dict[str, list[float]] = {"default": [], "spectral": [], "cholesky": []}
        it_err: dict[str, list[float]] = {"spectral": [], "cholesky": []}
        tim = {"spectral": 0.0, "default": 0.0, "cholesky": 0.0}
        max_x, max_x_step, min_gap = 0.0, 0, math.inf
        tol = maps.default_tie_tol(np, np.float64)

        def record() -> None:
            s_sp = full.dense(st_sp)
            s_def = st_def.S
            s_ch = bl.cholesky_dense(st_ch)
            fp["default"].append(_rel(s_def, sigma))
            fp["spectral"].append(_rel(s_sp, sigma))
            fp["cholesky"].append(_rel(s_ch, sigma))
            it_err["spectral"].append(_rel(s_sp, s_def))
            it_err["cholesky"].append(_rel(s_ch, s_def))

        t_all = time.perf_counter()
        record()
        for k in range(1, steps + 1):
            g = root @ z[k - 1]
            if diagnostics and k > 1:
                # This step's (uncapped) Cayley argument, by the formula the update uses.
                h = g @ st_sp.B
                x = maps.rotation_generator(
                    h[:, None] * h[None, :], st_sp.d, beta2 / 2.0, tie_tol=opts.get("tie_tol", tol)
                )
                xn = float(np.linalg.norm(x))
                if xn > max_x:
                    max_x, max_x_step = xn, k
                min_gap = min(min_gap, _min_rel_gap(st_sp.d))

            t0 = time.perf_counter()
            st_sp = full.update_gop(st_sp, g, beta2=beta2, **opts)
            t1 = time.perf_counter()
            st_def = bl.default_update_gop(st_def, g, beta2=beta2)
            t2 = time.perf_counter()
            st_ch = bl.cholesky_update_gop(st_ch, g, beta2=beta2, exp=cholesky_exp)
            t3 = time.perf_counter()
            tim["spectral"] += t1 - t0
            tim["default"] += t2 - t1
            tim["cholesky"] += t3 - t2
            if k in rec:
                record()
        tim["total"] = time.perf_counter() - t_all

        ortho = float(np.linalg.norm(st_sp.B.T @ st_sp.B - np.eye(n)))
        return {
            "experiment": "full_matching",
            "config": {
                "n": n,
                "beta2": beta2,
                "steps": steps,
                "seed": seed,
                "gamma": 1.0,
                "cond": cond,
                "s0_scale": scale,
                "cholesky_exp": cholesky_exp,
                "init": init,
                "spectral": {"exp": "exact", "cayley": "exact", "tie_tol": tol, **opts},
            },
            "sigma": {
                "eig_min": float(lam.min()),
                "eig_max": float(lam.max()),
                "trace": float(np.trace(sigma)),
                "frobenius": float(np.linalg.norm(sigma)),
            },
            "iterations": its,
            "fixed_point": fp,
            "iterate": it_err,
            "summary": {
                "fixed_point": _summary(its, fp, steps),
                "iterate": _summary(its, it_err, steps),
            },
            "noise_floor": _noise_floor(sigma, beta2),
            "diagnostics": {
                "max_cayley_arg_norm": max_x,
                "max_cayley_arg_step": max_x_step,
                "min_rel_eig_gap": min_gap,
                "orthogonality_error": ortho,
            },
            "runtime_s": tim,
        }


def kron_matching(
    rows: int = 9,
    cols: int = 11,
    beta2: float = 1e-3,
    steps: int = 10_000,
    seed: int = 0,
    *,
    sigma_kind: str = "random",
    cond: float = 100.0,
    rho: float = 0.3,
    record_every: int | None = 100,
    log_points: int = 41,
    projection: bool = True,
    cholesky: bool = True,
    projection_method: str = "power",
    threads: int | None = 1,
) -> dict[str, Any]:
    """Fig. 2 (right) / Fig. 8: Kronecker ``r × c`` spectral scheme on an ``rc × rc`` ``Σ``.

    ``G_k = Mat(g_k)`` (row-major, ``r × c``) with ``g_k ~ N(0, Σ)``, ``Σ`` from
    :func:`kron_sigma` (``sigma_kind``, ``cond``, ``rho``). Schemes: ``default`` (full
    ``rc × rc`` matrix), ``spectral`` (:func:`spectral_curv.kron.update_gop`, exact maps),
    ``projection`` (Van Loan–Pitsianis projection every step) and ``cholesky`` (Kronecker
    inverse-free baseline), all from ``S₀ = (tr Σ / rc) I``.

    Returns the curves of :func:`full_matching` plus ``references``: the relative errors
    of the Frobenius-nearest Kronecker product ``VLP(Σ)`` (``vlp``; a lower bound for every
    Kronecker estimate), of the KL-nearest one (``kl``; the noise-free fixed point of the
    spectral and Cholesky schemes, :func:`spectral_curv.baselines.kl_nearest_kron`), of
    ``(tr Σ / rc) I`` (``isotropic``), and the default scheme's ``noise_floor``; and
    ``iterate_lower_bound``: ``‖VLP(S_k^def) − S_k^def‖/‖S_k^def‖``, the smallest
    iterate-matching error any Kronecker estimate can have at iteration ``k``.
    ``projection_method`` is passed to :func:`spectral_curv.baselines.projection_update_gop`;
    ``threads`` limits BLAS threads (:func:`blas_threads`).

    Example (``VLP(Σ)`` is the Frobenius-nearest Kronecker product: no worse than ``kl``)::

        >>> import numpy as np
        >>> from spectral_curv.experiments import matching as mt
        >>> r = mt.kron_matching(2, 3, beta2=0.01, steps=20, record_every=10, log_points=0)
        >>> sigma, _ = mt.kron_sigma(2, 3, np.random.default_rng(0))  # the same Σ (seed 0)
        >>> iso = np.linalg.norm(np.trace(sigma) / 6 * np.eye(6) - sigma) / np.linalg.norm(sigma)
        >>> ref = r["references"]
        >>> bool(np.isclose(ref["isotropic"], iso)), ref["vlp"] <= min(ref["kl"], ref["isotropic"])
        (True, True)
    """
    with blas_threads(threads):
        n = rows * cols
        rng = np.random.default_rng(seed)
        sigma, root = kron_sigma(rows, cols, rng, kind=sigma_kind, cond=cond, rho=rho)
        z = rng.standard_normal((steps, n))
        scale = float(np.trace(sigma) / n)

        a_v, c_v = bl.nearest_kron(sigma, rows, cols)
        a_k, c_k = bl.kl_nearest_kron(sigma, rows, cols)
        refs = {
            "vlp": _rel(np.kron(a_v, c_v), sigma),
            "kl": _rel(np.kron(a_k, c_k), sigma),
            "isotropic": _rel(scale * np.eye(n), sigma),
            "noise_floor": _noise_floor(sigma, beta2),
        }

        st_sp = kron.init(rows, cols, scale=scale)
        st_def = bl.default_init(scale * np.eye(n))
        st_pr = bl.projection_from_factors(
            math.sqrt(scale) * np.eye(rows), math.sqrt(scale) * np.eye(cols)
        )
        st_ch = bl.kron_cholesky_from_factors(
            math.sqrt(scale) * np.eye(rows), math.sqrt(scale) * np.eye(cols)
        )

        names = (
            ["spectral"]
            + (["projection"] if projection else [])
            + (["cholesky"] if cholesky else [])
        )
        its = record_iterations(steps, record_every, log_points)
        rec = set(its)
        fp: dict[str, list[float]] = {k: [] for k in ["default", *names]}
        it_err: dict[str, list[float]] = {k: [] for k in names}
        lower: list[float] = []
        tim = {k: 0.0 for k in ["default", *names]}

        def record() -> None:
            s_def = st_def.S
            mats = {"spectral": kron.dense(st_sp)}
            if projection:
                mats["projection"] = bl.kron_dense(st_pr)
            if cholesky:
                mats["cholesky"] = bl.kron_cholesky_dense(st_ch)
            fp["default"].append(_rel(s_def, sigma))
            for name, s in mats.items():
                fp[name].append(_rel(s, sigma))
                it_err[name].append(_rel(s, s_def))
            a, c = bl.nearest_kron(s_def, rows, cols)
            lower.append(_rel(np.kron(a, c), s_def))

        t_all = time.perf_counter()
        record()
        for k in range(1, steps + 1):
            g = root @ z[k - 1]
            gm = g.reshape(rows, cols)
            t0 = time.perf_counter()
            st_sp = kron.update_gop(st_sp, gm, beta2=beta2)
            t1 = time.perf_counter()
            st_def = bl.default_update_gop(st_def, g, beta2=beta2)
            t2 = time.perf_counter()
            tim["spectral"] += t1 - t0
            tim["default"] += t2 - t1
            if projection:
                st_pr = bl.projection_update_gop(st_pr, gm, beta2=beta2, method=projection_method)
                t3 = time.perf_counter()
                tim["projection"] += t3 - t2
                t2 = t3
            if cholesky:
                st_ch = bl.kron_cholesky_update_gop(st_ch, gm, beta2=beta2)
                tim["cholesky"] += time.perf_counter() - t2
            if k in rec:
                record()
        tim["total"] = time.perf_counter() - t_all

        return {
            "experiment": "kron_matching",
            "config": {
                "rows": rows,
                "cols": cols,
                "beta2": beta2,
                "steps": steps,
                "seed": seed,
                "gamma": 1.0,
                "sigma_kind": sigma_kind,
                "cond": cond,
                "rho": rho if sigma_kind == "kron_plus_random" else None,
                "s0_scale": scale,
                "projection_method": projection_method,
                "spectral": {"exp": "exact", "cayley": "exact"},
            },
            "references": refs,
            "iterations": its,
            "fixed_point": fp,
            "iterate": it_err,
            "iterate_lower_bound": lower,
            "summary": {
                "fixed_point": _summary(its, fp, steps),
                "iterate": _summary(its, it_err, steps),
            },
            "runtime_s": tim,
        }
