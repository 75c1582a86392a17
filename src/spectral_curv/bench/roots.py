"""Any matrix root p on a small autoencoder (``bench roots``): does lr mean the same for
every p, and does a diverging run ever raise?

1. **lr sweep.** A tanh autoencoder 64→32→8→32→64 on scikit-learn's bundled digits (full
   batch, mean squared error, ``steps`` steps from one initialisation per seed) trained with
   ``spectral_curv.torch.SpectralKron`` for p = 1, 2, 4 under the default
   ``step_scale="p2"``, with ``p = 1`` under ``step_scale="raw"`` (the paper's step, the
   former default) and with ``torch.optim.AdamW``, over one log-spaced lr grid. Per run:
   the final loss, whether it diverged (non-finite, or final loss above the initial one)
   and whether it oscillated (the loss rose by more than 10% from one step to the next in
   the last half).
2. **Diverging runs.** For p = 1, 2, 4 and both Cayley modes, lr = 1000 × p = 2's best: the
   run must never raise from ``step()`` except with the ``nonfinite`` policy's ValueError;
   recorded: steps done, how it ended, rejected refreshes, whether the
   :class:`~spectral_curv.optim.RejectedRefreshWarning` was given, params finite.

Writes ``roots.md`` + ``roots.json`` to the output folder (``--write-docs``:
``docs/benchmarks_roots.md`` + JSON).
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
import warnings
from typing import Any

import numpy as np

from . import report

__all__ = ["add_arguments", "autoencoder_run", "diverging_run", "main", "sweep"]

BEGIN, END = report.markers("roots")

#: The compared optimizers: name -> (kind, options).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "p=1": ("spectral", {"p": 1.0}),
    "p=2": ("spectral", {"p": 2.0}),
    "p=4": ("spectral", {"p": 4.0}),
    "p=1 raw": ("spectral", {"p": 1.0, "step_scale": "raw", "max_update_rms": None}),
    "AdamW": ("adamw", {}),
}


def _data() -> np.ndarray:
    from sklearn.datasets import load_digits

    x = load_digits().data / 16.0
    return x.astype(np.float32)


def _model(seed: int) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 8), nn.Tanh(),
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 64),
    )  # fmt: skip


def _optimizer(kind: str, options: dict[str, Any], params: Any, lr: float) -> Any:
    import torch

    from ..torch import SpectralKron

    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    return SpectralKron(params, lr=lr, weight_decay=0.0, **options)


def autoencoder_run(
    kind: str, options: dict[str, Any], lr: float, *, steps: int, seed: int
) -> dict[str, Any]:
    """One full-batch run; returns the loss curve's summary."""
    import torch

    x = torch.from_numpy(_data())
    model = _model(seed)
    opt = _optimizer(kind, options, model.parameters(), lr)
    losses: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            opt.zero_grad()
            loss = (model(x) - x).square().mean()
            losses.append(float(loss))
            if not math.isfinite(losses[-1]):
                break
            loss.backward()
            opt.step()
    final = losses[-1]
    tail = losses[len(losses) // 2 :]
    rises = sum(b > 1.1 * a for a, b in itertools.pairwise(tail))
    return {
        "lr": lr,
        "initial": losses[0],
        "final": final,
        "diverged": not math.isfinite(final) or final > losses[0],
        "oscillating": rises > 0,
        "rises": rises,
    }


def sweep(lrs: list[float], *, steps: int, seeds: int) -> dict[str, list[dict[str, Any]]]:
    """Every variant at every lr, the seeds' final losses averaged (geometric mean)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, (kind, options) in VARIANTS.items():
        rows = []
        for lr in lrs:
            runs = [autoencoder_run(kind, options, lr, steps=steps, seed=s) for s in range(seeds)]
            finals = [r["final"] for r in runs]
            ok = all(math.isfinite(f) for f in finals)
            rows.append(
                {
                    "lr": lr,
                    "final": float(np.exp(np.mean(np.log(finals)))) if ok else float("nan"),
                    "finals": finals,
                    "diverged": any(r["diverged"] for r in runs),
                    "oscillating": any(r["oscillating"] for r in runs),
                }
            )
        out[name] = rows
    return out


def _best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in rows if not r["diverged"] and math.isfinite(r["final"])]
    return min(good, key=lambda r: r["final"]) if good else rows[0]


def diverging_run(
    p: float, cayley: str, lr: float, *, steps: int, seed: int = 0, step_scale: str = "p2"
) -> dict[str, Any]:
    """``lr`` far too large: records how the run ends; any exception other than the
    ``nonfinite`` policy's ValueError is recorded as a failure of the contract."""
    import torch

    from ..optim import RejectedRefreshWarning

    x = torch.from_numpy(_data())
    model = _model(seed)
    options: dict[str, Any] = {"p": p, "cayley": cayley, "step_scale": step_scale}
    if step_scale == "raw":  # the paper's step, as before the RMS cap became the default
        options["max_update_rms"] = None
    opt = _optimizer("spectral", options, model.parameters(), lr)
    ended, done = "ran all steps", 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        while done < steps:
            done += 1
            opt.zero_grad()
            (model(x) - x).square().mean().backward()
            try:
                opt.step()
            except ValueError as e:
                if "NaN or inf" not in str(e):
                    ended = f"raised {type(e).__name__}: {e}"
                    break
                ended = "stopped by nonfinite='raise' (a non-finite gradient)"
                break
            except Exception as e:  # the contract: nothing else escapes step()
                ended = f"raised {type(e).__name__}: {e}"
                break
    rejected = sum(int(st["rejected"]) for st in opt.state.values() if "rejected" in st)
    return {
        "p": p,
        "cayley": cayley,
        "step_scale": step_scale,
        "lr": lr,
        "steps": done,
        "ended": ended,
        "ok": not ended.startswith("raised"),
        "rejected": rejected,
        "warned": any(issubclass(w.category, RejectedRefreshWarning) for w in caught),
        "params_finite": all(bool(torch.isfinite(q).all()) for q in model.parameters()),
    }


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.3g}"


def _report(res: dict[str, Any]) -> str:
    lines = [
        f"Setting: tanh autoencoder 64→32→8→32→64 on scikit-learn's digits (1,797 images, full "
        f"batch, MSE), {res['steps']} steps, {res['seeds']} seeds (geometric mean of the final "
        "losses), momentum 0.9, no weight decay, every other option at its default. "
        "`diverged`: a non-finite or final loss above the initial one on any seed; "
        "`osc.`: the loss rose by >10% between two steps in the last half on any seed.",
        "",
    ]
    names = list(res["sweep"])
    head = ["lr", *names]
    cells = [head]
    for i, lr in enumerate(res["lrs"]):
        row = [f"{lr:.0e}"]
        for n in names:
            r = res["sweep"][n][i]
            flag = " (diverged)" if r["diverged"] else " (osc.)" if r["oscillating"] else ""
            row.append(_fmt(r["final"]) + flag)
        cells.append(row)
    lines += report.md_table(cells)
    best2 = res["best"]["p=2"]["lr"]
    lines += [
        "",
        "Best lr of each variant (lowest final loss without divergence) and each variant at "
        f"p = 2's best lr ({best2:.0e}):",
        "",
    ]
    cells = [["variant", "best lr", "final at best lr", f"final at lr {best2:.0e}"]]
    for n in names:
        at = next(r for r in res["sweep"][n] if r["lr"] == best2)
        flag = " (diverged)" if at["diverged"] else " (osc.)" if at["oscillating"] else ""
        b = res["best"][n]
        cells.append([n, f"{b['lr']:.0e}", _fmt(b["final"]), _fmt(at["final"]) + flag])
    lines += report.md_table(cells)
    lines += [
        "",
        f"Diverging runs (lr = 1000 × the variant's best lr, {res['div_steps']} steps, "
        "nonfinite='raise'; `raw`: the paper's step, with p = 1 raw's best lr):",
        "",
    ]
    cells = [
        [
            "p",
            "cayley",
            "step_scale",
            "lr",
            "steps",
            "ended",
            "rejected refreshes",
            "warned",
            "params finite",
        ]
    ]
    for d in res["diverging"]:
        cells.append(
            [
                f"{d['p']:g}",
                d["cayley"],
                d["step_scale"],
                f"{d['lr']:.0e}",
                str(d["steps"]),
                d["ended"],
                str(d["rejected"]),
                "yes" if d["warned"] else "no",
                "yes" if d["params_finite"] else "no",
            ]
        )
    lines += report.md_table(cells)
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=500, help="steps per run (default 500)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per lr (default 2)")
    p.add_argument("--div-steps", type=int, default=200, help="steps of a diverging run")
    p.add_argument("--quick", action="store_true", help="smoke run: 60 steps, 1 seed, 3 lrs")
    report.add_threads_argument(p)
    report.add_output_arguments(p, docs="docs/benchmarks_roots.md")


def main(args: argparse.Namespace) -> int:
    used = report.set_threads(args.threads)
    print(report.threads_line(used))
    out = report.outputs(args, quick=args.quick)
    out.announce()
    steps, seeds, div = args.steps, args.seeds, args.div_steps
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
    if args.quick:
        steps, seeds, div, lrs = 60, 1, 20, [1e-3, 3e-3, 1e-2]
    print(f"will run: {len(VARIANTS)} optimizers × {len(lrs)} lrs × {seeds} seeds × {steps} steps")
    t0 = time.perf_counter()
    sw = sweep(lrs, steps=steps, seeds=seeds)
    best = {n: _best(rows) for n, rows in sw.items()}
    lr_div = 1000.0 * best["p=2"]["lr"]
    diverging = [
        diverging_run(p, c, lr_div, steps=div)
        for p in (1.0, 2.0, 4.0)
        for c in ("quadratic", "exact")
    ]
    # the paper's raw step at p = 1 (the case that used to raise a singular-solve error)
    lr_raw = 1000.0 * best["p=1 raw"]["lr"]
    diverging += [
        diverging_run(1.0, c, lr_raw, steps=div, step_scale="raw") for c in ("quadratic", "exact")
    ]
    res = {
        "steps": steps,
        "seeds": seeds,
        "lrs": lrs,
        "sweep": sw,
        "best": best,
        "div_steps": div,
        "diverging": diverging,
        "seconds": time.perf_counter() - t0,
        "machine": report.machine_info(),
        "quick": bool(args.quick),
    }
    text = _report(res)
    print(text)
    md = out.file("benchmarks_roots.md", "roots.md")
    if md is not None:
        title = "# Any matrix root p" + (" (quick run)" if args.quick else "") + "\n\n"
        command = "python -m spectral_curv.bench roots" + (" --quick" if args.quick else "")
        report.write_markdown(
            md, BEGIN + "\n" + text + END, header=title + f"Command: `{command}`\n\n"
        )
        report.write_json(md.with_suffix(".json"), None, res)
        print(f"wrote {md}")
    return 0 if all(d["ok"] for d in diverging) else 1
