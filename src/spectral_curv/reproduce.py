"""``spectral-curv reproduce {fig2,fig3,fig7,fig8,fig9,all}``: the paper's CPU-sized experiments.

Each figure (math §6) runs the library code that the tests check, writes one PNG
(``repro_<fig>.png``) and its curves to one JSON (``reproduction.json``, a key per figure) in
the output folder (``--write-docs``: ``docs/img/`` and ``docs/``), and prints a summary line
per scheme:

``fig2``  curvature matching, full matrix d = 100 (left) and Kronecker 9×11 (right):
          fixed-point error ``‖S_k − Σ‖/‖Σ‖`` of the spectral, default and Cholesky schemes
          (:mod:`spectral_curv.experiments.matching`).
``fig7``  full matrix, iterate matching ``‖S_k − S_k^default‖/‖S_k^default‖``.
``fig8``  Kronecker 9×11 on a structured Σ (Kronecker + 30 % dense part) with the
          Van Loan–Pitsianis projection baseline and the best Kronecker approximations.
``fig3``  SPD optimisation, d = 60: metric nearness and log-det, loss gap vs iteration for
          the spectral method, Riemannian GD (expm retraction) and the Cholesky method
          (:mod:`spectral_curv.spd`), one shared step size.
``fig9``  gradient-free search, d = 60 (or ``--quick``: smaller): spectral NES vs the
          baselines of :mod:`spectral_curv.experiments.nes` on the five test functions of Appx. C.

``--quick`` shrinks every experiment (seconds; what CI runs); its files are named
``*_quick*``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FIGURES", "add_arguments", "main", "run", "run_args"]

FIGURES = ("fig2", "fig7", "fig8", "fig3", "fig9")
DESCRIPTION = (
    "Run the paper's experiments at CPU size: each figure writes a PNG and its curves to\n"
    "a JSON (a key per figure) and prints a summary line per scheme."
)
EPILOG = """figures:
  fig2  curvature matching, full matrix d = 100 and Kronecker 9×11: fixed-point error
        ‖S_k − Σ‖/‖Σ‖ of the spectral, default and Cholesky schemes
  fig7  full matrix, iterate matching ‖S_k − S_k^default‖/‖S_k^default‖
  fig8  Kronecker 9×11 on a structured Σ, with the Van Loan–Pitsianis projection baseline
  fig3  SPD optimisation, d = 60: metric nearness and log-det, loss gap vs iteration
  fig9  gradient-free search: spectral NES vs the baselines on five test functions
  all   every one of them"""


def _matching_full(quick: bool) -> dict[str, Any]:
    from .experiments import matching

    if quick:
        return matching.full_matching(n=12, steps=300, record_every=50, log_points=5)
    return matching.full_matching()


def _matching_kron(quick: bool, sigma_kind: str) -> dict[str, Any]:
    from .experiments import matching

    if quick:
        return matching.kron_matching(
            rows=3, cols=4, steps=300, record_every=50, log_points=5, sigma_kind=sigma_kind
        )
    return matching.kron_matching(sigma_kind=sigma_kind)


def _fig2(quick: bool, cache: dict[str, Any]) -> dict[str, Any]:
    full = cache.setdefault("full", _matching_full(quick))
    kr = cache.setdefault("kron_random", _matching_kron(quick, "random"))
    return {"full": full, "kron": kr}


def _fig7(quick: bool, cache: dict[str, Any]) -> dict[str, Any]:
    return {"full": cache.setdefault("full", _matching_full(quick))}


def _fig8(quick: bool, cache: dict[str, Any]) -> dict[str, Any]:
    return {"kron": cache.setdefault("kron_struct", _matching_kron(quick, "kron_plus_random"))}


def _fig3(quick: bool, cache: dict[str, Any]) -> dict[str, Any]:
    from . import spd

    n, steps, lr = (10, 200, 0.05) if quick else (60, 400, 0.05)
    out: dict[str, Any] = {"lr": lr, "n": n, "steps": steps, "problems": {}}
    problems = {
        "metric_nearness": spd.metric_nearness(n=n, n_samples=100 if quick else 1000),
        "log_det": spd.log_det(n=n),
    }
    for name, pb in problems.items():
        curves: dict[str, list[float]] = {}
        for method in ("spectral", "rgd_expm", "cholesky"):
            res = spd.minimize(
                pb.grad,
                pb.s0,
                lr=lr,
                steps=steps,
                method=method,
                loss_fn=pb.gap,
                target=1e-12,
                warn=False,
            )
            curves[method] = [max(float(v), 0.0) for v in res.losses]
        out["problems"][name] = {
            "gap": curves,
            "iterations_to_1e-6": {m: spd.iterations_to(c, 1e-6) for m, c in curves.items()},
        }
    return out


def _fig9(quick: bool, cache: dict[str, Any]) -> dict[str, Any]:
    from .experiments import nes

    if quick:
        res = nes.benchmark(
            dim=8, seeds=2, budget_scale=0.2, methods=("spectral", "xnes"), log=None
        )
    else:
        res = nes.benchmark(log=None)  # d = 60, 5 seeds, CMA-ES when pycma is installed
    res["rows"] = [
        {
            **r,
            "summary": f"median evals {r['median_evals']} (solved {r['solved']}), "
            f"median final {r['median_final']:.3g}",
        }
        for r in nes.summarise(res)
    ]
    return res


RUNNERS: dict[str, Callable[[bool, dict[str, Any]], dict[str, Any]]] = {
    "fig2": _fig2,
    "fig7": _fig7,
    "fig8": _fig8,
    "fig3": _fig3,
    "fig9": _fig9,
}


def run(figures: list[str], *, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run ``figures`` (names from :data:`FIGURES`); returns ``{fig: result}`` (JSON-ready).

    ``progress``: one line on stderr as each figure starts and ends."""
    for f in figures:
        if f not in RUNNERS:
            raise ValueError(f"unknown figure {f!r}; choose from {FIGURES} or 'all'")
    cache: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for i, f in enumerate(figures, 1):
        if progress:
            print(f"[{i}/{len(figures)}] {f} …", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        out[f] = RUNNERS[f](quick, cache)
        out[f]["runtime_s"] = time.perf_counter() - t0
        if progress:
            print(f"[{i}/{len(figures)}] {f} done in {out[f]['runtime_s']:.1f} s", file=sys.stderr)
    return out


# --------------------------------------------------------------------------- reporting


def summary(results: dict[str, Any]) -> str:
    """One line per (figure, scheme): the numbers the paper's figures show."""
    lines = [f"{'figure':<7} {'panel':<22} {'scheme':<18} {'final':>10} {'last-10% mean':>14}"]
    for fig, res in results.items():
        if "skipped" in res:
            lines.append(f"{fig:<7} skipped: {res['skipped']}")
            continue
        if fig in ("fig2", "fig7", "fig8"):
            for panel, r in res.items():
                if not isinstance(r, dict) or "summary" not in r:
                    continue
                metric = "iterate" if fig == "fig7" else "fixed_point"
                for scheme, s in r["summary"][metric].items():
                    lines.append(
                        f"{fig:<7} {panel + ' ' + metric:<22} {scheme:<18} "
                        f"{s['final']:>10.4f} {s['tail_mean']:>14.4f}"
                    )
                refs = r.get("references")
                if refs and fig != "fig7":
                    lines.append(
                        f"{fig:<7} {panel + ' references':<22} "
                        + ", ".join(f"{k} {v:.4f}" for k, v in refs.items() if isinstance(v, float))
                    )
        elif fig == "fig3":
            for name, p in res["problems"].items():
                for m, k in p["iterations_to_1e-6"].items():
                    lines.append(f"{fig:<7} {name:<22} {m:<18} iterations to gap 1e-6: {k}")
        elif fig == "fig9":
            for row in res.get("rows", []):
                lines.append(
                    f"{fig:<7} {row.get('function', ''):<22} "
                    f"{row.get('method', ''):<18} {row.get('summary', '')}"
                )
    if any(f in results for f in ("fig2", "fig7", "fig8")):
        from .bench.report import legend

        lines += [
            "",
            legend(
                [
                    ("final", "the error at the last iteration (k = steps)"),
                    (
                        "last-10% mean",
                        "mean of the recorded errors over the last 10 % of the "
                        "iterations (averages out the EMA's sampling noise)",
                    ),
                    ("fixed_point", "‖S_k − Σ‖_F/‖Σ‖_F, Σ the true covariance"),
                    (
                        "iterate",
                        "‖S_k − S_k^default‖_F/‖S_k^default‖_F, against the default "
                        "scheme's iterate on the same gradients",
                    ),
                    (
                        "references",
                        "the error of the best Kronecker approximations (vlp: "
                        "Frobenius-nearest, kl: the flip-flop fixed point) and of (tr Σ/n)·I",
                    ),
                ]
            ),
        ]
    return "\n".join(lines)


def _nes_panels(res: dict[str, Any]) -> list[tuple[str, list[int], dict[str, Any], str]]:
    """Fig. 9: per test function, each method's best value so far (median over seeds) vs
    evaluations, and the function's target as a constant."""
    import numpy as np

    from .experiments.nes import FUNCTIONS

    panels = []
    for fname, methods in res["runs"].items():
        curves: dict[str, Any] = {}
        grid_all: list[int] = []
        for m, runs in methods.items():
            grid = np.unique(np.concatenate([np.asarray(r["evals"]) for r in runs]))
            med = np.median(
                [
                    np.asarray(r["fbest"])[
                        np.clip(np.searchsorted(r["evals"], grid, side="right") - 1, 0, None)
                    ]
                    for r in runs
                ],
                axis=0,
            )
            curves[m] = (grid.tolist(), med.tolist())
            grid_all += [int(grid[0]), int(grid[-1])]
        target = FUNCTIONS[fname].ftarget
        curves["target, constant"] = ([min(grid_all), max(grid_all)], [target, target])
        title = f"{res['setup']['dim']}-dim {fname}"
        panels.append((title, [], curves, "best value so far (median over seeds)"))
    return panels


def plot(
    fig: str, res: dict[str, Any], path: str | os.PathLike[str], *, quick: bool = False
) -> bool:
    """PNG of one figure's curves (log-log axes); False if there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .bench.report import log_limits, log_ticks

    panels: list[tuple[str, list[int], dict[str, Any], str]] = []
    if fig in ("fig2", "fig7", "fig8"):
        metric = "iterate" if fig == "fig7" else "fixed_point"
        ylabel = "‖S_k − S_k^default‖/‖S_k^default‖" if metric == "iterate" else "‖S_k − Σ‖_F/‖Σ‖_F"
        for panel, r in res.items():
            if isinstance(r, dict) and metric in r:
                cfg = r.get("config", {})
                size = (
                    f"d = {cfg['n']}"
                    if "n" in cfg
                    else f"{cfg.get('rows')}×{cfg.get('cols')} factors"
                )
                title = f"{'full matrix' if panel == 'full' else 'Kronecker'}, {size}"
                curves = dict(r[metric])
                if metric == "fixed_point":
                    for ref in ("vlp", "kl"):
                        v = r.get("references", {}).get(ref)
                        if isinstance(v, float):
                            curves[f"best Kronecker ({ref.upper()}), constant"] = [v] * len(
                                r["iterations"]
                            )
                panels.append((title, r["iterations"], curves, ylabel))
    elif fig == "fig3":
        for name, p in res["problems"].items():
            curves = p["gap"]
            k = max(len(c) for c in curves.values())
            panels.append(
                (
                    f"{name} (d = {res['n']}, lr {res['lr']})",
                    list(range(k)),
                    curves,
                    "loss gap ℓ(S) − ℓ(S*)",
                )
            )
    elif fig == "fig9":
        panels += _nes_panels(res)
    if not panels:
        return False
    figure, axes = plt.subplots(
        1,
        len(panels),
        figsize=((5.2 if len(panels) < 4 else 4.2) * len(panels), 4.0),
        dpi=120,
        squeeze=False,
    )
    for ax, (title, xs, curves, ylabel) in zip(axes[0], panels):
        shown_x: list[float] = []
        shown_y: list[float] = []
        for scheme, ys in curves.items():
            x, y = ys if isinstance(ys, tuple) else (xs, ys)
            n = min(len(x), len(y))
            style = ":" if "constant" in scheme else "-"
            if fig in ("fig3", "fig9"):
                x, y = list(x[:n]), [max(v, 1e-16) for v in y[:n]]
                ax.semilogy(x, y, style, label=scheme)
            else:
                x, y = [max(v, 1) for v in x[:n]], list(y[:n])
                ax.loglog(x, y, style, label=scheme)
            shown_x += x
            shown_y += y
        if fig not in ("fig3", "fig9"):
            log_ticks(ax, "x", *log_limits(shown_x))
        log_ticks(ax, "y", *log_limits(shown_y))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("evaluations" if fig == "fig9" else "iteration k")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    quick_tag = " (quick run)" if quick else ""
    figure.suptitle(f"spectral-curv reproduce {fig}{quick_tag}", fontsize=10)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return True


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and x != x:
        return None
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        try:
            return _json_safe(x.item())
        except (TypeError, ValueError):
            return str(x)
    return x


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``spectral-curv reproduce``."""
    from .bench import report

    p.add_argument(
        "figures",
        nargs="+",
        choices=(*FIGURES, "all"),
        metavar="FIGURE",
        help="which experiments: " + ", ".join(FIGURES) + " or all (see below)",
    )
    p.add_argument(
        "--quick", action="store_true", help="small versions (seconds; files named *_quick*)"
    )
    report.add_output_arguments(p, docs="docs/reproduction.json and docs/img/repro_*.png")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--from-json",
        default=None,
        metavar="PATH",
        help="do not run: re-print and re-plot the figures stored in PATH",
    )


def run_args(args: argparse.Namespace) -> int:
    """Run parsed ``reproduce`` arguments: print the summary, write the JSON and PNGs."""
    from .bench import report

    figs = list(FIGURES) if "all" in args.figures else list(dict.fromkeys(args.figures))
    out = report.outputs(args, quick=args.quick)
    if args.from_json:
        stored = json.loads(Path(args.from_json).read_text())
        missing = [f for f in figs if f not in stored]
        if missing:
            print(f"spectral-curv reproduce: {missing} not in {args.from_json}", file=sys.stderr)
            return 2
        results = {f: stored[f] for f in figs}
    else:
        print(
            f"reproduce{' (quick)' if args.quick else ''}: {', '.join(figs)}"
            + (" (small sizes, seconds)" if args.quick else ""),
            flush=True,
        )
        out.announce()
        results = run(figs, quick=args.quick, progress=not args.quiet)
    print(summary(results))
    path = out.file("reproduction.json", "reproduction.json")
    if path is not None and not args.from_json:
        old = json.loads(path.read_text()) if path.exists() else {}
        old.update(_json_safe(results))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(old, indent=1, allow_nan=False) + "\n")
        print(f"wrote {path}", file=sys.stderr)
    for f, res in results.items():
        png = out.file(f"img/repro_{f}.png", f"repro_{f}.png")
        if png is not None and "skipped" not in res and plot(f, res, png, quick=args.quick):
            print(f"wrote {png}", file=sys.stderr)
    if out.folder is not None:
        print(f"results in {out.folder.resolve()}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``spectral-curv reproduce …`` on its own."""
    p = argparse.ArgumentParser(
        prog="spectral-curv reproduce",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    return run_args(p.parse_args(argv))
