"""``spectral-curv reproduce {fig2,fig3,fig7,fig8,fig9,all}``: the paper's CPU-sized experiments.

Each figure (SPEC §6) runs the library code that the tests check, writes one PNG
(``docs/img/repro_<fig>.png``) and its curves to one JSON (``docs/reproduction.json``, a key
per figure), and prints a summary line per scheme:

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
          baselines of :mod:`spectral_curv.nes` on the five test functions of Appx. C.

``--quick`` shrinks every experiment (seconds; what CI runs).
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

__all__ = ["FIGURES", "add_arguments", "main", "run"]

FIGURES = ("fig2", "fig7", "fig8", "fig3", "fig9")


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
    from . import nes

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
    """Run ``figures`` (names from :data:`FIGURES`); returns ``{fig: result}`` (JSON-ready)."""
    for f in figures:
        if f not in RUNNERS:
            raise ValueError(f"unknown figure {f!r}; choose from {FIGURES} or 'all'")
    cache: dict[str, Any] = {}
    out: dict[str, Any] = {}
    bar = _bar(len(figures), progress)
    for f in figures:
        if bar is not None:
            bar.set_description(f"reproduce {f}")
        t0 = time.perf_counter()
        out[f] = RUNNERS[f](quick, cache)
        out[f]["runtime_s"] = time.perf_counter() - t0
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


def _bar(total: int, progress: bool) -> Any:
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, file=sys.stderr, unit="fig")


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
    return "\n".join(lines)


def plot(fig: str, res: dict[str, Any], path: str | os.PathLike[str]) -> bool:
    """PNG of one figure's curves (log-log axes); False if there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, list[int], dict[str, list[float]], str]] = []
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
        from . import nes

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        nes._plot(res, str(path))
        return True
    if not panels:
        return False
    figure, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 4.0), dpi=120, squeeze=False
    )
    for ax, (title, xs, curves, ylabel) in zip(axes[0], panels):
        for scheme, ys in curves.items():
            n = min(len(xs), len(ys))
            x = [v for v in xs[:n]]
            style = ":" if "constant" in scheme else "-"
            if fig == "fig3":
                ax.semilogy(x, [max(v, 1e-16) for v in ys[:n]], style, label=scheme)
            else:
                ax.loglog([max(v, 1) for v in x], ys[:n], style, label=scheme)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("evaluations" if fig == "fig9" else "iteration k")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(f"spectral-curv reproduce {fig}", fontsize=10)
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
    p.add_argument(
        "figures", nargs="+", choices=(*FIGURES, "all"), help="which experiments (all: every one)"
    )
    p.add_argument("--quick", action="store_true", help="small versions (seconds; for CI)")
    p.add_argument(
        "--json",
        default="docs/reproduction.json",
        metavar="PATH",
        help="curves as JSON (default docs/reproduction.json; '' to skip)",
    )
    p.add_argument(
        "--plot-dir",
        default="docs/img",
        metavar="DIR",
        help="PNG directory (default docs/img; '' to skip)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--from-json",
        default=None,
        metavar="PATH",
        help="do not run: re-print and re-plot the figures stored in PATH",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="spectral-curv reproduce", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    figs = list(FIGURES) if "all" in args.figures else list(dict.fromkeys(args.figures))
    if args.from_json:
        stored = json.loads(Path(args.from_json).read_text())
        missing = [f for f in figs if f not in stored]
        if missing:
            print(f"spectral-curv reproduce: {missing} not in {args.from_json}", file=sys.stderr)
            return 2
        results = {f: stored[f] for f in figs}
        args.json = ""
    else:
        results = run(figs, quick=args.quick, progress=not args.quiet)
    print(summary(results))
    if args.json:
        path = Path(args.json)
        old = json.loads(path.read_text()) if path.exists() else {}
        old.update(_json_safe(results))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(old, indent=1, allow_nan=False) + "\n")
        print(f"wrote {path}", file=sys.stderr)
    if args.plot_dir:
        for f, res in results.items():
            png = Path(args.plot_dir) / f"repro_{f}.png"
            if "skipped" not in res and plot(f, res, png):
                print(f"wrote {png}", file=sys.stderr)
    return 0
