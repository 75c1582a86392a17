"""Stability soak: long bf16 training runs and a 10⁵-step drift run (``bench soak``).

Two measurements, written to ``soak.md`` + ``soak.json`` in the output folder
(``--write-docs``: ``docs/benchmarks_soak.md`` + JSON):

1. **bf16 MLP soak.** A 64→128→128→10 MLP with bfloat16 parameters trained on scikit-learn's
   bundled digits (minibatches of 64, so the curvature is noisy and eigenvalues of the
   factors tie and cross) for ``steps`` steps, per seed, per factor dtype (bf16 and f32) and
   per mode: the default options, the default with a Newton–Schulz step after every
   refresh (``reorth_interval=1``), the former default (quadratic map, paper's basis update),
   exact Cayley with the default safeguards, and (for comparison) exact Cayley with the
   paper's basis update and no re-orthonormalisation.
   Recorded: whether every value stayed finite, the final loss on a held-out fifth of the
   images (the training loss goes to ~1e-6), and the
   largest ``‖BᵀB − I‖_max`` over the run (sampled every ``record_every`` steps).
2. **Long drift run.** The functional core on one 16×24 layer, ``long_steps`` refreshes
   with the optimizer's default options on gradients with a fixed anisotropic covariance
   (f32): ``‖BᵀB − I‖_max`` every ``long_steps / 20`` steps, and whether the last half's
   maximum stays at or below the first half's (drift bounded, not growing).

Acceptance (issue "One default that is fast, accurate and never diverges"): every run
finite, final loss within 2× of the best run of its group, drift ≤ 2e-2 (bf16 factors) /
1e-4 (f32 factors).
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np

from . import report

__all__ = ["MODES", "add_arguments", "drift_run", "drift_verdict", "main", "mlp_soak", "orth_drift"]

#: The modes of the soak: name -> SpectralKron options (beyond lr / precond_lr).
MODES: dict[str, dict[str, Any]] = {
    "default": {},
    "default_reorth1": {"reorth_interval": 1},
    "default_reorth5": {"reorth_interval": 5},
    "default_paper": {"rotation": "paper", "max_update_rms": None, "eigenvalues": "kron"},
    "quartic": {"cayley": "quartic"},
    "quartic_reorth5": {"cayley": "quartic", "reorth_interval": 5},
    "guard01": {"max_step_norm": 0.1},
    "guard004": {"max_step_norm": 0.04},
    "guard004_reorth5": {"max_step_norm": 0.04, "reorth_interval": 5},
    "quartic_guard05": {"cayley": "quartic", "max_step_norm": 0.5},
    "default_noclip": {"max_update_rms": None},
    "kron": {"eigenvalues": "kron"},
    "p1": {"p": 1.0},
    "p1_kron": {"p": 1.0, "eigenvalues": "kron"},
    "p15": {"p": 1.5},  # the default since 2026-12-01 (evening)
    "damp16": {"damping": 1e-16},  # Adam's eps squared (docs/benchmarks_train.md, "Damping")
    "p15_kron": {"p": 1.5, "eigenvalues": "kron"},
    "p2": {"p": 2.0},
    "previous": {"p": 2.0, "reorth_interval": 10},  # the default before 2026-12-01 (evening)
    "exact": {"cayley": "exact"},
    "exact_reorth5": {"cayley": "exact", "reorth_interval": 5},
    "exact_paper_unguarded": {
        "cayley": "exact",
        "rotation": "paper",
        "reorth_interval": 0,
        "max_update_rms": None,
        "eigenvalues": "kron",
    },
}

BEGIN, END = report.markers("soak")


def orth_drift(b: Any) -> float:
    """``max |BᵀB − I|`` of one (possibly batched) basis, computed in float64.

    >>> import numpy as np
    >>> orth_drift(np.eye(3))
    0.0
    """
    b64 = np.asarray(b, dtype=np.float64)
    n = b64.shape[-1]
    return float(np.abs(np.swapaxes(b64, -1, -2) @ b64 - np.eye(n)).max())


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x.astype(np.float32), y.astype(np.int64)


#: Soak tasks: ``digits`` (1,437 images, memorised: the training loss goes to ~1e-6) and
#: ``teacher`` (a fresh minibatch every step from a fixed teacher network: no memorising).
TASKS = ("teacher", "digits")


#: Input scales of the teacher task: 1 down to 0.03 (an ill-conditioned input covariance).
TEACHER_SCALES = np.logspace(0.0, -1.5, 64)


def _teacher_labels(x: np.ndarray) -> np.ndarray:
    """Labels of the teacher task: the argmax of a fixed random 64→32→10 tanh network of the
    whitened inputs (one teacher for every seed)."""
    t = np.random.default_rng(20261130)
    w1 = t.standard_normal((64, 32)) * 3.0 / 8.0
    w2 = t.standard_normal((32, 10)) / np.sqrt(32.0)
    return np.argmax(np.tanh((x / np.sqrt(TEACHER_SCALES)) @ w1) @ w2, axis=1)


def _teacher_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples of the teacher task: ``x ~ N(0, diag(TEACHER_SCALES²))``, labelled by
    :func:`_teacher_labels`."""
    x = np.random.default_rng(seed).standard_normal((n, 64)) * TEACHER_SCALES
    return x.astype(np.float32), _teacher_labels(x).astype(np.int64)


def mlp_soak(
    *,
    steps: int,
    seed: int,
    precond_dtype: str,
    options: dict[str, Any],
    lr: float = 3e-4,
    precond_lr: float = 0.1,
    record_every: int = 50,
    batch: int = 64,
    task: str = "digits",
) -> dict[str, Any]:
    """Train the bf16 MLP on ``task`` (:data:`TASKS`); returns ``finite``, ``final_loss``
    (held-out), ``max_drift``, ``drift`` (the sampled curve), ``rejected`` refreshes and wall
    time."""
    import torch

    from ..torch import SpectralKron

    if task == "digits":
        x_np, y_np = _digits()
        # a fixed held-out fifth: the final loss is a test loss (the training loss of a model
        # that memorises 1,437 images goes to ~1e-6, where "within 2×" means nothing)
        perm = np.random.default_rng(0).permutation(len(y_np))
        test, train = perm[: len(perm) // 5], perm[len(perm) // 5 :]
        x, y = torch.from_numpy(x_np[train]), torch.from_numpy(y_np[train])
        x_test, y_test = torch.from_numpy(x_np[test]), torch.from_numpy(y_np[test])
    elif task == "teacher":
        # every step a fresh minibatch (a stream of steps × batch samples): nothing repeats
        x_np, y_np = _teacher_data(steps * batch, 1000 + seed)
        x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
        xt, yt = _teacher_data(4096, 1)
        x_test, y_test = torch.from_numpy(xt), torch.from_numpy(yt)
    else:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    ).to(torch.bfloat16)
    dt = {"bf16": torch.bfloat16, "f32": torch.float32}[precond_dtype]
    opt = SpectralKron(
        model.parameters(), lr=lr, precond_lr=precond_lr, precond_dtype=dt, **options
    )
    gen = torch.Generator().manual_seed(seed)
    xb16 = x.to(torch.bfloat16)
    drift: list[float] = []
    finite = True
    t0 = time.perf_counter()
    for t in range(steps):
        if task == "teacher":
            idx = torch.arange(t * batch, (t + 1) * batch)
        else:
            idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(xb16[idx]).float(), y[idx])
        if not torch.isfinite(loss):
            finite = False
            break
        opt.zero_grad()
        loss.backward()
        try:
            opt.step()
        except ValueError:  # a non-finite gradient (nonfinite="raise")
            finite = False
            break
        if (t + 1) % record_every == 0 or t + 1 == steps:
            drift.append(
                max(
                    (
                        orth_drift(s[k].float())
                        for s in opt.state.values()
                        for k in ("B_C", "B_K")
                        if k in s
                    ),
                    default=0.0,
                )
            )
            if not math.isfinite(drift[-1]):
                finite = False
                break
    with torch.no_grad():
        final = float(
            torch.nn.functional.cross_entropy(model(x_test.to(torch.bfloat16)).float(), y_test)
        )
    finite = (
        finite
        and math.isfinite(final)
        and all(bool(torch.isfinite(p).all()) for p in model.parameters())
    )
    return {
        "finite": finite,
        "final_loss": final if finite else float("nan"),
        "max_drift": max(drift) if drift and finite else float("nan"),
        "drift": drift,
        "steps_done": t + 1,
        "rejected": int(sum(int(s["rejected"]) for s in opt.state.values())),
        "wall_s": time.perf_counter() - t0,
    }


def drift_run(
    *, steps: int, seed: int = 0, rows: int = 16, cols: int = 24, samples: int = 20
) -> dict[str, Any]:
    """The optimizer's default refresh (``optim.refresh`` + its re-orthonormalisation
    schedule) on one f32 ``rows × cols`` layer for ``steps`` refreshes; ``‖BᵀB − I‖_max``
    at ``samples`` evenly spaced points."""
    from .. import optim

    rng = np.random.default_rng(seed)
    # A fixed anisotropic covariance with near-tied eigenvalues (pairs 1 % apart).
    ev_c = np.repeat(np.geomspace(1.0, 10.0, rows // 2), 2)[:rows] * (
        1 + 0.01 * (np.arange(rows) % 2)
    )
    ev_k = np.repeat(np.geomspace(1.0, 10.0, cols // 2), 2)[:cols] * (
        1 + 0.01 * (np.arange(cols) % 2)
    )
    qc, _ = np.linalg.qr(rng.normal(size=(rows, rows)))
    qk, _ = np.linalg.qr(rng.normal(size=(cols, cols)))
    lc = (qc * np.sqrt(ev_c)).astype(np.float32)
    lk = (qk * np.sqrt(ev_k)).astype(np.float32)
    pl = optim.plan((rows, cols))
    xp = optim.namespace(np.zeros(1, dtype=np.float32))
    st = optim.init(pl, (rows, cols), dtype=np.float32, xp=xp)
    every = max(1, steps // samples)
    interval = optim.Options().reorth_interval
    curve: list[tuple[int, float]] = []
    refreshes = 0
    t0 = time.perf_counter()
    chunk = 1000
    for start in range(0, steps, chunk):
        zs = rng.standard_normal(size=(min(chunk, steps - start), rows, cols), dtype=np.float32)
        for i, z in enumerate(zs):
            t = start + i
            g = lc @ z @ lk.T
            if t == 0:
                st = optim.first_state(st, g, damping=1e-8)
            st, _ = optim.refresh(st, g, precond_lr=0.1, damping=1e-8)
            refreshes += 1
            if refreshes % interval == 0:  # the optimizers' default schedule
                st = optim.reorthonormalize(st)
            if (t + 1) % every == 0:
                curve.append((t + 1, max(orth_drift(st.B_C), orth_drift(st.B_K))))
    return {
        "steps": steps,
        "reorth_interval": interval,
        "curve": curve,
        **drift_verdict(curve),
        "wall_s": time.perf_counter() - t0,
    }


def drift_verdict(curve: list[tuple[int, float]]) -> dict[str, Any]:
    """Halves of a sampled drift curve: ``bounded`` when the last half neither rises on
    average (mean ≤ 1.5× the first half's) nor peaks higher (max ≤ 2× the first half's).

    >>> drift_verdict([(1, 1e-3), (2, 2e-3), (3, 1.5e-3), (4, 1e-3)])["bounded"]
    True
    >>> drift_verdict([(1, 1e-3), (2, 1e-3), (3, 4e-3), (4, 8e-3)])["bounded"]
    False
    """
    half = len(curve) // 2
    a, b = [v for _, v in curve[:half]], [v for _, v in curve[half:]]
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    return {
        "max_first_half": max(a),
        "max_last_half": max(b),
        "mean_first_half": mean_a,
        "mean_last_half": mean_b,
        "bounded": bool(mean_b <= 1.5 * mean_a and max(b) <= 2 * max(a)),
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    finals = [r["final_loss"] for r in runs]
    ok = [f for f in finals if math.isfinite(f)]
    best = min(ok) if ok else float("nan")
    return {
        "finite": sum(r["finite"] for r in runs),
        "seeds": len(runs),
        "final_min": best,
        "final_max": max(ok) if ok else float("nan"),
        "within_2x": bool(ok) and len(ok) == len(runs) and max(ok) <= 2 * best,
        "max_drift": max((r["max_drift"] for r in runs if r["finite"]), default=float("nan")),
        "rejected": sum(r["rejected"] for r in runs),
    }


def _markdown(data: dict[str, Any]) -> str:
    cfg = data["config"]
    lines = [
        BEGIN,
        f"Generated {data['generated']} by `{data['command']}` "
        f"({data['wall_s']:.0f} s, load average {data.get('loadavg')}).",
        "",
        f"bf16 MLP (64→128→128→10, batch 64), {cfg['steps']} steps, "
        f"{cfg['seeds']} seeds, lr {cfg['lr']}, precond_lr {cfg['precond_lr']}. Tasks: "
        "`teacher`, a fresh minibatch every step from a fixed random teacher network "
        "(ill-conditioned inputs; nothing is seen twice, so no memorising), final loss on "
        "4,096 held-out samples; `digits`, scikit-learn's 1,437 training images (memorised: "
        "the training loss goes to ~1e-6), final loss on a held-out fifth of the images. "
        "Drift = largest `max|BᵀB − I|` over the run (every "
        f"{cfg['record_every']} steps), float64 check. Target: every run finite, final loss "
        "within 2× of the group's best, drift ≤ 2e-2 (bf16 factors) / 1e-4 (f32).",
        "",
    ]
    table = [
        [
            "task",
            "mode",
            "factors",
            "finite",
            "final loss (min – max)",
            "within 2×",
            "max drift",
            "rejected refreshes",
        ]
    ]
    for row in data["rows"]:
        s = row["summary"]
        table.append(
            [
                row.get("task", "digits"),
                row["mode"],
                row["precond_dtype"],
                f"{s['finite']}/{s['seeds']}",
                f"{s['final_min']:.4f} – {s['final_max']:.4f}",
                "yes" if s["within_2x"] else "no",
                f"{s['max_drift']:.2e}",
                str(s["rejected"]),
            ]
        )
    lines += report.md_table(table, "l" * 8)
    d = data.get("drift")
    if d:
        lines += [
            "",
            f"Long drift run: {d['steps']} f32 refreshes of a 16×24 layer (default options, "
            f"Newton–Schulz every {d.get('reorth_interval', 10)} refreshes), gradients with a "
            "fixed covariance whose "
            f"eigenvalues come in pairs 1 % apart: drift (sampled every {d['steps'] // 20} steps) "
            f"first half mean {d['mean_first_half']:.2e} / max {d['max_first_half']:.2e}, "
            f"last half mean {d['mean_last_half']:.2e} / max {d['max_last_half']:.2e} → "
            f"{'bounded, not growing' if d['bounded'] else 'GROWING'} ({d['wall_s']:.0f} s).",
        ]
    lines.append(END)
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``bench soak``."""
    p.add_argument("--steps", type=int, default=5000, help="MLP steps per run (default 5000)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per mode (default 5)")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=tuple(MODES),
        default=["default", "exact"],
        help="modes to run (default: default exact, the acceptance's two)",
    )
    p.add_argument(
        "--tasks",
        nargs="+",
        choices=TASKS,
        default=list(TASKS),
        help="tasks to run (default: both)",
    )
    p.add_argument("--lr", type=float, default=3e-4, help="lr (default 3e-4)")
    p.add_argument("--precond-lr", type=float, default=0.1, help="precond_lr (default 0.1)")
    p.add_argument("--record-every", type=int, default=50, help="drift sampling interval")
    p.add_argument("--long-steps", type=int, default=100_000, help="drift-run refreshes (0: skip)")
    report.add_threads_argument(p)
    report.add_output_arguments(p, docs="docs/benchmarks_soak.md and docs/benchmarks_soak.json")


def main(args: argparse.Namespace) -> int:
    """Run the soak, print the table, write the report (unless ``--no-write``)."""
    import sys

    out = report.outputs(args)
    threads = report.set_threads(args.threads)
    print(
        f"bench soak: {len(args.tasks)} tasks × {len(args.modes)} modes × 2 factor dtypes × "
        f"{args.seeds} seeds × "
        f"{args.steps} steps, then a {args.long_steps:,}-refresh drift run; "
        f"{report.threads_line(threads)}",
        flush=True,
    )
    out.announce()
    t0 = time.perf_counter()
    rows = []
    for task in args.tasks:
        for mode in args.modes:
            for pdt in ("bf16", "f32"):
                runs = [
                    mlp_soak(
                        steps=args.steps,
                        seed=s,
                        precond_dtype=pdt,
                        options=MODES[mode],
                        lr=args.lr,
                        precond_lr=args.precond_lr,
                        record_every=args.record_every,
                        task=task,
                    )
                    for s in range(args.seeds)
                ]
                summ = _summary(runs)
                print(f"{task:8s} {mode:24s} {pdt:5s} {summ}", flush=True)
                rows.append(
                    {
                        "task": task,
                        "mode": mode,
                        "precond_dtype": pdt,
                        "summary": summ,
                        "runs": runs,
                    }
                )
    drift = drift_run(steps=args.long_steps) if args.long_steps else None
    if drift:
        print(
            f"drift run {drift['steps']}: first half mean {drift['mean_first_half']:.2e}, "
            f"last half mean {drift['mean_last_half']:.2e}, bounded={drift['bounded']}"
        )
    data = {
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m spectral_curv.bench soak "
        + " ".join(a for a in sys.argv[2:] if a != "--write-docs"),
        "loadavg": report.loadavg(),
        "wall_s": time.perf_counter() - t0,
        "config": {
            "steps": args.steps,
            "seeds": args.seeds,
            "lr": args.lr,
            "precond_lr": args.precond_lr,
            "record_every": args.record_every,
            "tasks": list(args.tasks),
        },
        "rows": rows,
        "drift": drift,
    }
    md = out.file("benchmarks_soak.md", "soak.md")
    js = out.file("benchmarks_soak.json", "soak.json")
    if md is not None and js is not None:
        report.write_json(js, None, data)
        report.replace_section(md, _markdown(data), BEGIN, END, "# Stability soak\n")
        print(f"wrote {md} and {js}")
    return 0
