"""The gradient-free benchmark of the paper's Fig. 3 / 9 (Sec. 4.3, Appx. C; math §6).

Runs :class:`spectral_curv.nes.SpectralNES` and the math §6 baselines
:class:`spectral_curv.baselines.XNES` and :class:`spectral_curv.baselines.CholeskyNES` (and
pycma's CMA-ES when installed) on the five test functions of Appx. C
(:func:`spectral_curv.nes.ackley`, ``rosenbrock``, ``bohachevsky``, ``schaffer``,
``griewank``), numpy float64 on the CPU. The set-up of each function is :data:`FUNCTIONS`
(documented in docs/nes.md): ``x0`` uniform in a box, the same for all methods.

:func:`benchmark` returns a JSON-able dict, :func:`summarise` its table rows;
``python -m spectral_curv.experiments.nes --help`` is the command line (:func:`main`).
These were ``spectral_curv.nes.benchmark`` / ``summarise`` / ``main``, which remain
importable there as deprecated aliases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from .._array import Array
from ..baselines import XNES, CholeskyNES
from ..nes import (
    SpectralNES,
    _NESBase,
    ackley,
    bohachevsky,
    default_popsize,
    griewank,
    rosenbrock,
    schaffer,
)

__all__ = ["FUNCTIONS", "benchmark", "main", "summarise"]


class _Problem(NamedTuple):
    """Set-up of one benchmark function (an entry of :data:`FUNCTIONS`)."""

    fun: Callable[[Array], Array]
    xopt: float  # every coordinate of the minimiser
    half_width: float  # x0 ~ U(-a, a)^n
    sigma0: float
    ftarget: float
    budget_per_dim: int  # maxfevals = budget_per_dim * n
    popsize: int | None  # None: default_popsize(n); the same for every method


#: The benchmark set-up (documented in docs/nes.md): x0 uniform in a box, same for all methods.
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
    methods share ``lr_sigma`` (default 0.3; ``None`` = the classes' default
    ``nes.default_lr_sigma``; the paper's single rate is ``lr_sigma = lr_cov``) and the
    default ``lr_mean`` and ``lr_cov`` (unless given). Returns
    ``{"setup": ..., "runs": {fun: {method: [{"evals", "fbest", "stop"}, ...]}}}`` with the
    best-so-far value after every iteration; :func:`summarise` makes the table.

    Example (a tiny run: one function, one method, one seed, in 2-D)::

        >>> from spectral_curv.experiments import nes as ex
        >>> res = ex.benchmark(["rosenbrock"], dim=2, seeds=1, methods=["spectral"], log=None)
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
    target over the solved runs; ``solved`` = runs reaching the target / all runs; math §6).

    Example::

        >>> from spectral_curv.experiments import nes as ex
        >>> res = ex.benchmark(["rosenbrock"], dim=2, seeds=1, methods=["spectral"], log=None)
        >>> row = ex.summarise(res)[0]
        >>> row["function"], row["method"], row["solved"], row["median_final"] <= 1e-8
        ('rosenbrock', 'spectral', '1/1', True)
    """
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
    """CLI: ``python -m spectral_curv.experiments.nes [--dim 60] [--seeds 5] [--budget-scale 1]``.

    Prints the table of :func:`summarise`; ``--json`` / ``--plot`` write the raw runs and the
    value-vs-evaluations figure (math §6, Fig. 3 / 9).

    Example (a tiny run)::

        >>> from spectral_curv.experiments import nes as ex
        >>> ex.main(["--dim", "2", "--seeds", "1", "--functions", "rosenbrock",
        ...          "--methods", "spectral", "--budget-scale", "0.05"])  # doctest: +ELLIPSIS
        rosenbrock   spectral ...
        dim=2 seeds=1 lr_sigma=0.3 lr_cov=default
        | function | method | popsize | budget | median evals to target | solved ...
        | rosenbrock | spectral | 6 | 800 | ...
        0
    """
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
