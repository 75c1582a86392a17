"""SPD problems at default settings: spectral vs RGD-expm vs pymanopt CG (math §6.4).

Four problems with a known optimum ``S*`` (:mod:`spectral_curv.spd`): metric nearness
(``d = 60``, full gradient), log-det (``d = 60``), the Karcher mean of 20 random 10×10 SPD
matrices (``S*`` from the fixed-point iteration) and Gaussian ML with a trace penalty
(``n = 20``, closed form). Each method runs with its DEFAULT step-size control, no tuning:
``spd.minimize(prob.grad, prob.s0, loss_fn=prob.loss, method=...)`` (Armijo backtracking
with a Barzilai–Borwein first trial) for ``"spectral"`` and ``"rgd_expm"``, and pymanopt's
``ConjugateGradient()`` on ``SymmetricPositiveDefinite(n)`` (its default backtracking line
search, numpy backend with the same Euclidean gradient) where pymanopt is installed.
Reported: iterations and seconds until ``‖S − S*‖_F/‖S*‖_F ≤ 1e-6`` and loss evaluations
spent by then. The relative error is measured from outside (a ``callback`` for
``spd.minimize``, the logged iterates for pymanopt, whose run time is then the logged time
of that iterate).

Run ``OMP_NUM_THREADS=1 python -m spectral_curv.experiments.spd_problems`` (numpy, float64;
a markdown table on stdout; ``--json PATH`` also writes the dict).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import spd

__all__ = ["main", "problems", "run_pymanopt", "run_spd"]

TOL = 1e-6
MAX_ITER = 1000


def problems(seed: int = 0) -> dict[str, Any]:
    """The four benchmark problems (math §6.4), each with ``loss``, ``grad``, ``S_star``, ``s0``.

    Example::

        >>> from spectral_curv.experiments.spd_problems import problems
        >>> sorted(problems())
        ['Gaussian ML + trace', 'Karcher mean', 'log-det', 'metric nearness']
    """
    return {
        "metric nearness": spd.metric_nearness(60, 1000, seed=seed),
        "log-det": spd.log_det(60, seed=seed),
        "Karcher mean": spd.karcher_mean(10, 20, seed=seed),
        "Gaussian ML + trace": spd.gaussian_ml(20, 100, seed=seed),
    }


def _rel(prob: Any) -> Callable[[Any], float]:
    ref = np.linalg.norm(prob.S_star)
    return lambda s: float(np.linalg.norm(s - prob.S_star) / ref)


def run_spd(
    prob: Any, method: str = "spectral", *, tol: float = TOL, **options: Any
) -> dict[str, Any]:
    """Iterations / seconds / loss evaluations of ``spd.minimize`` at its defaults (or with
    ``options``, e.g. ``sweeps=0``) until the relative error reaches ``tol`` (math §6.4).

    Example::

        >>> from spectral_curv import spd
        >>> from spectral_curv.experiments.spd_problems import run_spd
        >>> out = run_spd(spd.log_det(5, seed=0))
        >>> out["reached"], out["iters"] < 30
        (True, True)
    """
    rel = _rel(prob)
    hit: dict[str, Any] = {}
    t0 = time.perf_counter()

    def callback(k: int, s: Any) -> bool:
        if rel(s) <= tol:
            hit.setdefault("k", k)
            hit.setdefault("t", time.perf_counter() - t0)
            return True
        return False

    res = spd.minimize(
        prob.grad,
        prob.s0,
        loss_fn=prob.loss,
        method=method,
        steps=MAX_ITER,
        callback=callback,
        **options,
    )
    return {
        "reached": "k" in hit,
        "iters": hit.get("k"),
        "seconds": hit.get("t"),
        "nfev": res.nfev,
        "final_rel_error": rel(res.S),
        "message": res.message,
    }


def run_pymanopt(prob: Any, *, tol: float = TOL) -> dict[str, Any] | None:
    """pymanopt's ``ConjugateGradient()`` at its defaults (``None`` without pymanopt); the
    iterations / seconds until the relative error reaches ``tol`` (math §6.4).

    Example (skipped output when pymanopt is missing)::

        >>> from spectral_curv import spd
        >>> from spectral_curv.experiments.spd_problems import run_pymanopt
        >>> out = run_pymanopt(spd.log_det(5, seed=0))
        >>> out is None or out["reached"]
        True
    """
    try:
        import pymanopt
        from pymanopt.manifolds import SymmetricPositiveDefinite
        from pymanopt.optimizers import ConjugateGradient
    except ImportError:
        return None
    n = prob.S_star.shape[-1]
    manifold = SymmetricPositiveDefinite(n)

    @pymanopt.function.numpy(manifold)
    def cost(s: Any) -> float:
        return float(prob.loss(s))

    @pymanopt.function.numpy(manifold)
    def egrad(s: Any) -> Any:
        return prob.grad(s)

    problem = pymanopt.Problem(manifold, cost, euclidean_gradient=egrad)
    opt = ConjugateGradient(
        verbosity=0, log_verbosity=2, max_iterations=MAX_ITER, min_gradient_norm=1e-12
    )
    t0 = time.perf_counter()
    wall0 = time.time()
    # Past the tolerance, pymanopt's Hestenes–Stiefel β can be 0/0 once the gradient stops
    # changing (seen on some BLAS builds); the counts are read from the log up to tol.
    with np.errstate(invalid="ignore", divide="ignore"):
        res = opt.run(problem, initial_point=np.array(prob.s0))
    total = time.perf_counter() - t0
    log = res.log["iterations"]
    rel = _rel(prob)
    for it, pt, tm in zip(log["iteration"], log["point"], log["time"]):
        if rel(pt) <= tol:
            # pymanopt logs iteration 1 for the start point.
            return {
                "reached": True,
                "iters": int(it) - 1,
                "seconds": float(tm - wall0),
                "final_rel_error": rel(res.point),
                "message": str(res.stopping_criterion),
            }
    return {
        "reached": False,
        "iters": None,
        "seconds": total,
        "final_rel_error": rel(res.point),
        "message": str(res.stopping_criterion),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every problem × method and print the markdown table (math §6.4).

    Example (``--help`` only; the full run takes about a minute)::

        >>> from spectral_curv.experiments.spd_problems import main
        >>> try:
        ...     main(["--help"])
        ... except SystemExit as e:
        ...     e.code
        usage: ...
        0
    """
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results to this path")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {}
    for name, prob in problems(args.seed).items():
        row = {
            "spectral": run_spd(prob, "spectral"),
            "spectral_sweeps0": run_spd(prob, "spectral", sweeps=0),
            "rgd_expm": run_spd(prob, "rgd_expm"),
            "pymanopt_cg": run_pymanopt(prob),
        }
        out[name] = row
    print(
        "| problem | spectral: iters / s / loss evals | one-step update (sweeps=0) "
        "| RGD-expm: iters / s / loss evals | pymanopt CG: iters / s | spectral / CG iters |"
    )
    print("|---|---|---|---|---|---|")

    def cell(r: dict[str, Any] | None, fev: bool = True) -> str:
        if r is None:
            return "n/a"
        if not r["reached"]:
            return f"— (rel. err {r['final_rel_error']:.1e})"
        s = f"{r['iters']} / {r['seconds']:.3f}"
        return s + (f" / {r['nfev']}" if fev else "")

    for name, row in out.items():
        sp, cg = row["spectral"], row["pymanopt_cg"]
        ratio = (
            f"{sp['iters'] / cg['iters']:.2f}"
            if cg and sp["reached"] and cg["reached"] and cg["iters"]
            else "—"
        )
        print(
            f"| {name} | {cell(sp)} | {cell(row['spectral_sweeps0'])} "
            f"| {cell(row['rgd_expm'])} | {cell(cg, False)} | {ratio} |"
        )
    sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return out


if __name__ == "__main__":
    main()
