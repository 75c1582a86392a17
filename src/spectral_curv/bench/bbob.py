"""Spectral NES on the COCO/BBOB suite (``pip install coco-experiment``; nothing downloaded).

``python -m spectral_curv.bench.bbob --dim 10 --functions 1 2 8 10 11 12 --instances 1 2 3``
runs :class:`spectral_curv.nes.SpectralNES`, :class:`~spectral_curv.baselines.XNES` and pycma's
CMA-ES (when installed) on each BBOB problem from the suite's ``initial_solution`` with
``σ0 = 2`` (a fifth of the [−5, 5] box), the default population size, and a budget of
``budget_per_dim · dim`` evaluations; a run succeeds when COCO reports its final target
(``f_opt + 1e-8``) hit. Instances play the role of seeds (each also seeds the method). The
table gives the median evaluations to the target over the successful runs and the count.
``--methods spectral-ipop cma-ipop [--restarts 9]`` adds IPOP restarts (population doubled
per restart, same total budget): :func:`spectral_curv.nes.fmin` and ``cma.fmin2``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import report

__all__ = ["main", "run", "table"]

METHODS = ("spectral", "xnes", "cma")
#: also selectable: IPOP restarts (population ×2 per restart) of spectral NES
#: (:func:`spectral_curv.nes.fmin`) and of CMA-ES (``cma.fmin2``)
IPOP_METHODS = ("spectral-ipop", "cma-ipop")


def _solve_ipop(
    method: str,
    problem: Any,
    seed: int,
    budget: int,
    popsize: int,
    restarts: int,
    lr_sigma: float | None,
    sigma_rule: str | None = None,
    rank_one: bool | None = None,
) -> tuple[int, bool]:
    """IPOP runs until COCO's final target, the budget, or ``restarts`` restarts."""
    x0 = np.asarray(problem.initial_solution, dtype=float)

    def done(_es: Any) -> bool:
        return bool(problem.final_target_hit or problem.evaluations >= budget)

    if method == "cma-ipop":
        import cma

        opts = {"seed": seed + 1, "popsize": popsize, "maxfevals": budget, "verbose": -9}
        opts.update({"verb_log": 0, "verb_disp": 0, "termination_callback": done})
        cma.fmin2(problem, x0, 2.0, opts, restarts=restarts, incpopsize=2)
    else:
        from .. import nes

        extra: dict[str, Any] = {} if rank_one is None else {"rank_one": rank_one}
        nes.fmin(
            None,
            x0,
            2.0,
            parallel_objective=lambda X: [float(problem(x)) for x in np.asarray(X)],
            restarts=restarts,
            maxfevals=budget,
            seed=seed,
            popsize=popsize,
            lr_sigma=None if sigma_rule == "csa" else lr_sigma,
            sigma_rule=sigma_rule,
            callback=done,
            **extra,
        )
    return int(problem.evaluations), bool(problem.final_target_hit)


def _solve(
    method: str,
    problem: Any,
    seed: int,
    budget: int,
    popsize: int,
    restarts: int = 9,
    lr_sigma: float | None = 0.3,
    lr_cov: float | None = None,
    sigma_rule: str | None = None,
    rank_one: bool | None = None,
) -> tuple[int, bool]:
    """Evaluations used and whether COCO's final target was hit."""
    if method in IPOP_METHODS:
        return _solve_ipop(
            method, problem, seed, budget, popsize, restarts, lr_sigma, sigma_rule, rank_one
        )
    x0 = np.asarray(problem.initial_solution, dtype=float)
    sigma0 = 2.0
    if method == "cma":
        import cma

        es = cma.CMAEvolutionStrategy(
            x0,
            sigma0,
            {
                "seed": seed + 1,
                "maxfevals": budget,
                "popsize": popsize,
                "verbose": -9,
                "verb_log": 0,
                "verb_disp": 0,
            },
        )
    else:
        from .. import baselines, nes

        cls = {"spectral": nes.SpectralNES, "xnes": baselines.XNES}[method]
        rule: dict[str, Any] = {"sigma_rule": sigma_rule} if method == "spectral" else {}
        if method == "spectral" and rank_one is not None:
            rule["rank_one"] = rank_one
        es = cls(
            x0,
            sigma0,
            seed=seed,
            maxfevals=budget,
            popsize=popsize,
            lr_sigma=None if sigma_rule == "csa" and method == "spectral" else lr_sigma,
            lr_cov=lr_cov,
            **rule,
        )
    evals = 0
    while not es.stop() and evals < budget:
        X = np.asarray(es.ask())
        vals = [float(problem(x)) for x in X]
        evals += len(vals)
        es.tell(X if method != "cma" else list(X), vals)
        if problem.final_target_hit:
            return evals, True
    return evals, False


def run(
    functions: Sequence[int] = (1, 2, 8, 10, 11, 12),
    *,
    dim: int = 10,
    instances: Sequence[int] = (1, 2, 3),
    methods: Sequence[str] = METHODS,
    budget_per_dim: int = 2000,
    restarts: int = 9,
    lr_sigma: float | None = 0.3,
    lr_cov: float | None = None,
    sigma_rule: str | None = None,
    rank_one: bool | None = None,
    log: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """``{"setup": ..., "runs": {problem_id: {method: {"evals", "hit"}}}}``.

    ``methods`` from ``METHODS`` and ``IPOP_METHODS`` (those restart at most ``restarts``
    times, doubling the population, within the same total budget). The NES methods use
    ``lr_sigma`` (default 0.3; ``None``: the class default) and ``lr_cov`` (default
    ``None``: the class default; not used by the IPOP methods); ``sigma_rule`` is spectral
    NES's (``None``: the class's choice, which is ``"xnes"`` when ``lr_sigma`` is given;
    ``"csa"`` ignores ``lr_sigma``)."""
    import cocoex

    from ..nes import default_popsize

    have_cma = True
    try:
        import cma  # noqa: F401
    except ImportError:
        have_cma = False
    methods = [m for m in methods if not m.startswith("cma") or have_cma]
    popsize = default_popsize(dim)
    budget = budget_per_dim * dim
    opts = (
        f"dimensions:{dim} function_indices:{','.join(map(str, functions))} "
        f"instance_indices:{','.join(map(str, instances))}"
    )
    out: dict[str, Any] = {
        "setup": {
            "dim": dim,
            "functions": list(functions),
            "instances": list(instances),
            "budget": budget,
            "popsize": popsize,
            "sigma0": 2.0,
            "methods": methods,
            "restarts": restarts,
            "lr_sigma": lr_sigma,
            "lr_cov": lr_cov,
            "sigma_rule": sigma_rule,
            "rank_one": rank_one,
        },
        "runs": {},
    }
    for m in methods:
        suite = cocoex.Suite("bbob", "", opts)  # fresh problems: final_target_hit per method
        for problem in suite:
            evals, hit = _solve(
                m,
                problem,
                int(problem.id_instance),
                budget,
                popsize,
                restarts,
                lr_sigma,
                lr_cov,
                sigma_rule,
                rank_one,
            )
            out["runs"].setdefault(problem.id, {})[m] = {"evals": evals, "hit": hit}
            if log is not None:
                log(f"{problem.id} {m:9s} evals {evals:7d} {'hit' if hit else 'miss'}")
    return out


def table(res: dict[str, Any]) -> str:
    """Median evaluations to the final target per (function, method) over the instances."""
    methods = res["setup"]["methods"]
    per: dict[str, dict[str, list[tuple[int, bool]]]] = {}
    for pid, r in res["runs"].items():
        f = pid.split("_")[1]
        for m, v in r.items():
            per.setdefault(f, {}).setdefault(m, []).append((v["evals"], v["hit"]))
    table = [["function", *methods]]
    for f, by in per.items():
        cells = [f]
        for m in methods:
            runs = by.get(m, [])
            hits = [e for e, h in runs if h]
            med = f"{statistics.median(hits):,.0f}" if hits else "—"
            cells.append(f"{med} ({len(hits)}/{len(runs)})")
        table.append(cells)
    return "\n".join(report.md_table(table))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m spectral_curv.bench.bbob", description=__doc__.split("\n")[0]
    )
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--functions", type=int, nargs="+", default=[1, 2, 8, 10, 11, 12])
    p.add_argument("--instances", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--budget-per-dim", type=int, default=2000)
    p.add_argument("--restarts", type=int, default=9, help="IPOP restarts (the -ipop methods)")
    p.add_argument(
        "--lr-sigma", type=float, default=0.3, help="NES scale rate (0: the class default)"
    )
    p.add_argument(
        "--lr-cov", type=float, default=0.0, help="NES covariance rate (0: the class default)"
    )
    p.add_argument(
        "--sigma-rule",
        choices=("csa", "xnes"),
        default=None,
        help="spectral NES's step-size rule (default: the class's; csa ignores --lr-sigma)",
    )
    p.add_argument(
        "--rank-one",
        choices=("on", "off"),
        default=None,
        help="spectral NES's rank-one path (default: the class's; needs csa)",
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS + IPOP_METHODS)
    args = p.parse_args(argv)
    try:
        import cocoex  # noqa: F401
    except ImportError:
        print("needs coco-experiment: pip install coco-experiment", file=sys.stderr)
        return 2
    res = run(
        args.functions,
        dim=args.dim,
        instances=args.instances,
        methods=args.methods,
        budget_per_dim=args.budget_per_dim,
        restarts=args.restarts,
        lr_sigma=args.lr_sigma or None,
        lr_cov=args.lr_cov or None,
        sigma_rule=args.sigma_rule,
        rank_one=None if args.rank_one is None else args.rank_one == "on",
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    print(table(res))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
