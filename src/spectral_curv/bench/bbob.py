"""Spectral NES on the COCO/BBOB suite (``pip install coco-experiment``; nothing downloaded).

``python -m spectral_curv.bench.bbob --dim 10 --functions 1 2 8 10 11 12 --instances 1 2 3``
runs :class:`spectral_curv.nes.SpectralNES`, :class:`~spectral_curv.nes.XNES` and pycma's
CMA-ES (when installed) on each BBOB problem from the suite's ``initial_solution`` with
``σ0 = 2`` (a fifth of the [−5, 5] box), the default population size, and a budget of
``budget_per_dim · dim`` evaluations; a run succeeds when COCO reports its final target
(``f_opt + 1e-8``) hit. Instances play the role of seeds (each also seeds the method). The
table gives the median evaluations to the target over the successful runs and the count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["main", "run", "table"]

METHODS = ("spectral", "xnes", "cma")


def _solve(method: str, problem: Any, seed: int, budget: int, popsize: int) -> tuple[int, bool]:
    """Evaluations used and whether COCO's final target was hit."""
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
        from .. import nes

        cls = {"spectral": nes.SpectralNES, "xnes": nes.XNES}[method]
        es = cls(x0, sigma0, seed=seed, maxfevals=budget, popsize=popsize, lr_sigma=0.3)
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
    log: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """``{"setup": ..., "runs": {problem_id: {method: {"evals", "hit"}}}}``."""
    import cocoex

    from ..nes import default_popsize

    have_cma = True
    try:
        import cma  # noqa: F401
    except ImportError:
        have_cma = False
    methods = [m for m in methods if m != "cma" or have_cma]
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
        },
        "runs": {},
    }
    for m in methods:
        suite = cocoex.Suite("bbob", "", opts)  # fresh problems: final_target_hit per method
        for problem in suite:
            evals, hit = _solve(m, problem, int(problem.id_instance), budget, popsize)
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
    head = f"| function | {' | '.join(methods)} |"
    lines = [head, "|---|" + "---:|" * len(methods)]
    for f, by in per.items():
        cells = []
        for m in methods:
            runs = by.get(m, [])
            hits = [e for e, h in runs if h]
            med = f"{statistics.median(hits):,.0f}" if hits else "—"
            cells.append(f"{med} ({len(hits)}/{len(runs)})")
        lines.append(f"| {f} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m spectral_curv.bench.bbob", description=__doc__.split("\n")[0]
    )
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--functions", type=int, nargs="+", default=[1, 2, 8, 10, 11, 12])
    p.add_argument("--instances", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--budget-per-dim", type=int, default=2000)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
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
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    print(table(res))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
