"""Running ``bench train`` and ``demo``: data split, one training run (curve, step times,
memory), the tuner, the step-time sweep and the per-optimizer summary.

Per step three clock readings: ``t0 | zero_grad, forward, loss, backward | t1 | opt.step()
| t2``; a curve's wall-clock is the cumulative ``t2 − t0`` (evaluation excluded). Step times
are means after the first :data:`STEADY_SKIP` steps, as ratios to AdamW's in the same run.
Memory: the optimizer state's bytes and the peak RSS above the run's start (Linux VmHWM,
reset per run; elsewhere ``ru_maxrss``, a process-lifetime peak). Tuning: trial 0 the
registry's defaults, then a seeded random search (log-uniform lr and weight decay, the
optimizer's knob), scored on a validation split of the training set, never the test set.
Everything is fp32 on the CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import report
from ..report import Progress
from .models import build_model
from .registry import REUSE_TUNING, OptSpec, optimizer_registry, sample_hparams, unavailable

__all__ = [
    "STEADY_SKIP",
    "SWEEP_INTERVALS",
    "SWEEP_KEYS",
    "PeakRSS",
    "Split",
    "make_split",
    "reach",
    "run_benchmark",
    "step_time_sweep",
    "summarize",
    "train_run",
    "tune",
]


# --------------------------------------------------------------------------- memory


def _proc_status_kib(field_name: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


def _release_memory() -> None:
    gc.collect(1)  # a full collection takes ~0.3 s with torch loaded; runs make no old cycles
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRSS:
    """Peak RSS above the start RSS over a ``with`` block (VmHWM reset via clear_refs)."""

    method = "none"

    def __enter__(self) -> PeakRSS:
        _release_memory()
        self.start = _proc_status_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM (reset per run)"
        except OSError:
            import resource

            self.method = "ru_maxrss (process-lifetime peak)"
            self.start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method.startswith("VmHWM"):
            peak = _proc_status_kib("VmHWM")
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.bytes = (
            None if peak is None or self.start is None else max(0, peak - self.start) * 1024
        )


# --------------------------------------------------------------------------- training


@dataclass
class Split:
    """Tensors of one experiment: training split, validation split and test set."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    x_test: Any
    y_test: Any
    image_shape: tuple[int, int, int]
    n_classes: int
    info: dict[str, Any] = field(default_factory=dict)


def make_split(
    ds: Any,
    *,
    val_size: int | float = 5000,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
) -> Split:
    """Torch tensors of ``ds`` with a deterministic validation split (``seed``)."""
    import torch

    from ..data import train_val_split

    n = len(ds.y_train)
    if isinstance(val_size, int) and val_size >= n:
        val_size = 0.2
    tr, va = train_val_split(n, val_size, seed)
    if train_subset:
        tr = tr[:train_subset]
        va = va[: max(1, min(len(va), train_subset // 4))]
    te = np.arange(len(ds.y_test))[:test_subset] if test_subset else np.arange(len(ds.y_test))

    def t(a: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a))

    info = {
        **ds.describe(),
        "n_train_split": len(tr),
        "n_val": len(va),
        "n_test_used": len(te),
        "val_seed": seed,
    }
    return Split(
        t(ds.x_train[tr]),
        t(ds.y_train[tr]),
        t(ds.x_train[va]),
        t(ds.y_train[va]),
        t(ds.x_test[te]),
        t(ds.y_test[te]),
        ds.image_shape,
        ds.n_classes,
        info,
    )


def evaluate(model: Any, x: Any, y: Any, batch: int = 2000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on ``(x, y)``."""
    import torch

    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            out = model(x[i : i + batch])
            loss += float(torch.nn.functional.cross_entropy(out, y[i : i + batch], reduction="sum"))
            correct += int((out.argmax(1) == y[i : i + batch]).sum())
    return loss / len(y), correct / len(y)


def train_run(
    model_name: str,
    split: Split,
    spec: OptSpec,
    hp: dict[str, Any],
    *,
    steps: int,
    batch: int,
    seed: int,
    eval_every: int,
    eval_set: str = "test",
    progress: Progress | None = None,
    warm_steps: int = 0,
) -> dict[str, Any]:
    """Train one model with one optimizer; returns its curve, timings and memory.

    ``eval_set``: ``"test"`` (curve on the test set, validation at the end) or ``"val"``
    (tuning: validation only). ``progress`` is told of every step, the first
    ``warm_steps`` as warm-up (left out of its ETA)."""
    import torch

    from ..reference import state_bytes

    torch.manual_seed(seed)
    model = build_model(model_name, split.image_shape, split.n_classes)
    rng = np.random.default_rng(seed)
    n = len(split.y_train)
    x_eval, y_eval = (
        (split.x_test, split.y_test) if eval_set == "test" else (split.x_val, split.y_val)
    )
    curve: dict[str, list[float]] = {"step": [], "wall_s": [], "loss": [], "acc": []}
    train_loss: list[float] = []
    fb: list[float] = []
    st: list[float] = []
    wall, sbytes, diverged = 0.0, 0, False
    perm, pos = rng.permutation(n), 0

    def record(net: Any, step: int) -> None:
        loss, acc = evaluate(net, x_eval, y_eval)
        curve["step"].append(step)
        curve["wall_s"].append(wall)
        curve["loss"].append(loss)
        curve["acc"].append(acc)

    with PeakRSS() as mem:
        opt = spec.build(model, hp)
        record(model, 0)
        for k in range(1, steps + 1):
            if pos + batch > n:
                perm, pos = rng.permutation(n), 0
            idx = torch.from_numpy(perm[pos : pos + batch])
            pos += batch
            xb, yb = split.x_train[idx], split.y_train[idx]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            t1 = time.perf_counter()
            if not torch.isfinite(loss):
                diverged = True
                break
            try:
                opt.step()
            except (ValueError, RuntimeError) as e:  # e.g. non-finite gradients
                diverged = True
                train_loss.append(float("nan"))
                curve.setdefault("error", []).append(str(e)[:200])  # type: ignore[arg-type]
                break
            t2 = time.perf_counter()
            fb.append(t1 - t0)
            st.append(t2 - t1)
            wall += t2 - t0
            train_loss.append(loss.item())
            if progress is not None:
                progress.update(1, warm=k <= warm_steps)
            if k % eval_every == 0 or k == steps:
                record(model, k)
                if not math.isfinite(curve["loss"][-1]):
                    diverged = True
                    break
        sbytes = state_bytes(opt)
    if progress is not None and len(fb) < steps:
        progress.update(steps - len(fb))
    out: dict[str, Any] = {
        "model": model_name,
        "optimizer": spec.key,
        "seed": seed,
        "hparams": dict(hp),
        "steps_done": len(fb),
        "diverged": diverged,
        "eval_set": eval_set,
        "curve": curve,
        "train_loss": train_loss,
        "fb_s_median": statistics.median(fb) if fb else None,
        "step_s_median": statistics.median(st) if st else None,
        "step_s_mean": statistics.fmean(st) if st else None,
        "fb_s_steady": _steady_mean(fb),
        "step_s_steady": _steady_mean(st),
        "wall_s": wall,
        "state_bytes": sbytes,
        "peak_rss_bytes": mem.bytes,
        "memory_method": mem.method,
        "n_params": sum(p.numel() for p in model.parameters()),
        "final_loss": curve["loss"][-1] if not diverged else float("nan"),
        "final_acc": curve["acc"][-1] if not diverged else float("nan"),
    }
    if eval_set == "test" and not diverged:
        out["val_loss"], out["val_acc"] = evaluate(model, split.x_val, split.y_val)
    del model, opt
    _release_memory()
    return out


#: Steps left out of the per-step time means (warm-up refreshes at every step, lazy init).
STEADY_SKIP = 20


def _steady_mean(xs: Sequence[float]) -> float | None:
    """Mean of the per-step times after the first :data:`STEADY_SKIP` (all when fewer). A mean,
    not a median: with a refresh every ``T`` steps the median hides the refresh cost."""
    if not xs:
        return None
    tail = xs[STEADY_SKIP:] if len(xs) > 2 * STEADY_SKIP else xs
    return statistics.fmean(tail)


def tune(
    model_name: str,
    split: Split,
    spec: OptSpec,
    *,
    budget: int,
    steps: int,
    batch: int,
    eval_every: int,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Random search: trial 0 the defaults, then ``budget − 1`` draws; best validation loss."""
    rng = np.random.default_rng([seed, sum(map(ord, spec.draws_as or spec.key))])
    trials = []
    for i in range(budget):
        hp = dict(spec.defaults) if i == 0 else sample_hparams(spec.space, rng)
        r = train_run(
            model_name,
            split,
            spec,
            hp,
            steps=steps,
            batch=batch,
            seed=seed,
            eval_every=max(eval_every, steps),
            eval_set="val",
            progress=progress,
        )
        score = r["final_loss"] if math.isfinite(r["final_loss"]) else math.inf
        trials.append(
            {"hparams": hp, "val_loss": score, "val_acc": r["final_acc"], "diverged": r["diverged"]}
        )
    best = min(trials, key=lambda t: t["val_loss"])
    return {"trials": trials, "best": best["hparams"], "best_val_loss": best["val_loss"]}


#: Refresh intervals of the step-time sweep (issue: report T = 1, 2, 10).
SWEEP_INTERVALS = (1, 2, 10)
SWEEP_KEYS = (
    "spectral_p2_quad",
    "spectral_p2_exact",
    "spectral_p2_quad_paper",
    "spectral_p2_quad_compiled",
    "spectral_p2_quartic_r5",
    "spectral_p15",
    "spectral_p15_quartic_r5",
    "spectral_p2_r10",
)


def step_time_sweep(
    model_name: str,
    split: Split,
    registry: dict[str, OptSpec],
    hps: dict[str, dict[str, Any]],
    *,
    keys: Sequence[str] = SWEEP_KEYS,
    intervals: Sequence[int] = SWEEP_INTERVALS,
    batch: int = 128,
    steps: int = 60,
    repeats: int = 3,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Whole-step time (zero_grad + forward + backward + ``opt.step()``) of SpectralKron at
    each refresh interval ``T``, as a ratio to AdamW's measured in the same loop.

    Each configuration trains ``STEADY_SKIP + steps`` steps from seed 0 with its tuned
    hyperparameters; the per-step means leave the first ``STEADY_SKIP`` out. The
    configurations run round-robin, ``repeats`` times, and the median over repeats is kept,
    so a burst of load from elsewhere is spread over all of them."""
    configs: list[tuple[str, int | None]] = [("adamw", None)]
    configs += [(k, t) for k in keys if k in hps for t in intervals]
    times: dict[tuple[str, int | None], list[tuple[float, float]]] = {c: [] for c in configs}
    for _ in range(repeats):
        for k, t in configs:
            hp = dict(hps[k]) if t is None else {**hps[k], "update_interval": t}
            r = train_run(
                model_name,
                split,
                registry[k],
                hp,
                steps=STEADY_SKIP + steps,
                batch=batch,
                seed=0,
                eval_every=10**9,
                eval_set="val",
            )
            if r["step_s_steady"] is not None and not r["diverged"]:
                times[(k, t)].append((r["fb_s_steady"], r["step_s_steady"]))
            if progress is not None:
                progress.update(STEADY_SKIP + steps)
    rows = []
    ref = times[("adamw", None)]
    ref_whole = statistics.median([a + b for a, b in ref]) if ref else None
    ref_step = statistics.median([b for _, b in ref]) if ref else None
    for (k, t), ts in times.items():
        if not ts:
            rows.append({"key": k, "label": registry[k].label, "T": t, "whole_ms": None})
            continue
        whole = statistics.median([a + b for a, b in ts])
        step = statistics.median([b for _, b in ts])
        rows.append(
            {
                "key": k,
                "label": registry[k].label,
                "T": t,
                "fb_ms": 1e3 * statistics.median([a for a, _ in ts]),
                "step_ms": 1e3 * step,
                "whole_ms": 1e3 * whole,
                "whole_ratio": whole / ref_whole if ref_whole else None,
                "step_ratio": step / ref_step if ref_step else None,
            }
        )
    return rows


def _mean_sd(xs: Sequence[float]) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def reach(curve: dict[str, list[float]], target: float) -> tuple[int | None, float | None]:
    """(step, wall-clock s) of the first evaluation with loss ≤ ``target``."""
    for s, w, loss in zip(curve["step"], curve["wall_s"], curve["loss"]):
        if loss <= target:
            return int(s), float(w)
    return None, None


def summarize(
    runs: list[dict[str, Any]], keys: Sequence[str], labels: dict[str, str], target: float | None
) -> tuple[list[dict[str, Any]], float | None]:
    """One row per optimizer (mean ± sd over seeds) and the target loss used.

    ``target`` None: 1.1 × AdamW's mean final test loss (else the smallest mean)."""
    by: dict[str, list[dict[str, Any]]] = {
        k: [r for r in runs if r["optimizer"] == k] for k in keys
    }
    if target is None:
        base = _mean_sd([r["final_loss"] for r in by.get("adamw", [])])[0]
        if base is None:
            finals = [
                m for k in keys if (m := _mean_sd([r["final_loss"] for r in by[k]])[0]) is not None
            ]
            base = min(finals) if finals else None
        target = None if base is None else 1.1 * base
    ref = [r for r in by.get("adamw") or [] if r["step_s_steady"]]
    ref_step = statistics.median([r["step_s_steady"] for r in ref]) if ref else None
    ref_whole = (
        statistics.median([r["step_s_steady"] + r["fb_s_steady"] for r in ref]) if ref else None
    )
    rows = []
    for k in keys:
        rs = by[k]
        if not rs:
            continue
        loss, loss_sd = _mean_sd([r["final_loss"] for r in rs])
        acc, acc_sd = _mean_sd([r["final_acc"] for r in rs])
        hits = [reach(r["curve"], target) for r in rs] if target is not None else []
        steps_t = [h[0] for h in hits if h[0] is not None]
        wall_t = [h[1] for h in hits if h[1] is not None]
        st_ = [r["step_s_steady"] for r in rs if r["step_s_steady"]]
        whole = [r["step_s_steady"] + r["fb_s_steady"] for r in rs if r["step_s_steady"]]
        step_s = statistics.median(st_) if st_ else None
        rows.append(
            {
                "key": k,
                "label": labels.get(k, k),
                "seeds": len(rs),
                "diverged": sum(r["diverged"] for r in rs),
                "test_loss": loss,
                "test_loss_sd": loss_sd,
                "test_acc": acc,
                "test_acc_sd": acc_sd,
                "reached": len(steps_t),
                "steps_to_target": statistics.fmean(steps_t) if steps_t else None,
                "wall_to_target_s": statistics.fmean(wall_t) if wall_t else None,
                "step_ms": None if step_s is None else 1e3 * step_s,
                "step_ratio": step_s / ref_step if step_s and ref_step else None,
                "whole_ms": 1e3 * statistics.median(whole) if whole else None,
                "whole_ratio": (
                    statistics.median(whole) / ref_whole if whole and ref_whole else None
                ),
                "state_mib": max(r["state_bytes"] for r in rs) / 2**20,
                "peak_rss_mib": (
                    max(r["peak_rss_bytes"] for r in rs) / 2**20
                    if all(r["peak_rss_bytes"] is not None for r in rs)
                    else None
                ),
                "hparams": rs[0]["hparams"],
            }
        )
    return rows, target


# --------------------------------------------------------------------------- running


def run_benchmark(
    *,
    models: Sequence[str],
    optimizers: Sequence[str],
    dataset: str = "auto",
    data_root: str | None = None,
    seeds: int = 3,
    steps: int = 1000,
    batch: int = 128,
    eval_every: int = 50,
    tune_budget: int = 8,
    tune_steps: int | None = None,
    val_size: int | float = 5000,
    train_subset: int | None = None,
    test_subset: int | None = None,
    target_loss: float | None = None,
    fixed_hparams: dict[str, dict[str, Any]] | None = None,
    sweep_steps: int = 0,
    sweep_repeats: int = 3,
    on_model: Callable[[dict[str, Any]], None] | None = None,
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Tune (unless ``fixed_hparams``) and train every (model, optimizer); returns the JSON.

    ``sweep_steps`` > 0 adds :func:`step_time_sweep` per model (SpectralKron at T = 1, 2, 10
    against AdamW, ``sweep_repeats`` rounds of that many timed steps). ``on_model`` gets the
    JSON so far after each model (the CLI saves it, so a later failure loses nothing)."""
    import torch

    from ..data import load_dataset

    log = log or (lambda msg: None)
    t_start = time.perf_counter()
    ds = load_dataset(dataset, data_root)
    for note in ds.notes:
        log("note: " + note)
    split = make_split(ds, val_size=val_size, train_subset=train_subset, test_subset=test_subset)
    registry = optimizer_registry()
    unknown = [k for k in optimizers if k not in registry]
    if unknown:
        raise ValueError(f"unknown optimizer(s) {unknown} (known: {', '.join(registry)})")
    skipped = {k: why for k in optimizers if (why := unavailable(registry[k]))}
    keys = [k for k in optimizers if k not in skipped]
    for k, why in skipped.items():
        log(f"skipping {k}: {why}")
    tune_steps = tune_steps or steps
    do_tune = fixed_hparams is None and tune_budget > 0
    n_tuned = len([k for k in keys if REUSE_TUNING.get(k) not in keys])
    total = len(models) * (
        len(keys) * seeds * steps + (n_tuned * tune_budget * tune_steps if do_tune else 0)
    )
    sweep_keys = [k for k in SWEEP_KEYS if k in keys] if "adamw" in keys and sweep_steps else []
    n_sweep = (1 + len(sweep_keys) * len(SWEEP_INTERVALS)) * sweep_repeats if sweep_keys else 0
    total += len(models) * n_sweep * (STEADY_SKIP + sweep_steps)

    def n(k: int, what: str) -> str:
        return f"{k} {what}" + ("" if k == 1 else "s")

    plan = (
        f"{n(len(models), 'model')} × {n(len(keys), 'optimizer')} × {n(seeds, 'seed')} × "
        f"{n(steps, 'step')}"
    )
    if do_tune:
        plan += f" + tuning {n_tuned} × {n(tune_budget, 'trial')} × {tune_steps} steps per model"
    if n_sweep:
        plan += f" + a step-time sweep of {n(n_sweep, 'run')} × {STEADY_SKIP + sweep_steps} steps"
    log(
        f"will run: {plan} = {total:,} training steps (models: {', '.join(models)}; "
        f"optimizers: {', '.join(keys)})"
    )
    bar = Progress(total, quiet=quiet)
    warm_seen: set[tuple[str, str]] = set()

    def warm(m: str, k: str) -> int:
        """First steps of a (model, optimizer) pair: lazy initialisation, left out of the ETA."""
        if (m, k) in warm_seen:
            return 0
        warm_seen.add((m, k))
        return 3

    results: dict[str, Any] = {}

    def snapshot() -> dict[str, Any]:
        return {
            "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {**report.machine_info("cpu"), "loadavg_end": report.loadavg()},
            "dataset": split.info,
            "config": {
                "models": [m for m in models if m in results],
                "optimizers": keys,
                "skipped": skipped,
                "seeds": seeds,
                "steps": steps,
                "batch": batch,
                "eval_every": eval_every,
                "tune_budget": tune_budget if do_tune else 0,
                "tune_steps": tune_steps if do_tune else 0,
                "val_size": val_size,
                "train_subset": train_subset,
                "test_subset": test_subset,
                "target_loss": target_loss,
                "sweep_steps": sweep_steps if sweep_keys else 0,
                "sweep_repeats": sweep_repeats if sweep_keys else 0,
                "dtype": "float32",
                "device": "cpu",
                "torch_threads": torch.get_num_threads(),
            },
            "optimizers": {
                k: {
                    "label": registry[k].label,
                    "notes": registry[k].notes,
                    "knob": registry[k].knob,
                    "space": registry[k].space,
                    "defaults": registry[k].defaults,
                }
                for k in keys
            },
            "results": results,
            "wall_s": time.perf_counter() - t_start,
        }

    try:
        for m in models:
            # untimed warm-up (lazy torch initialisation, allocator): not in any result
            train_run(
                m,
                split,
                registry[keys[0]],
                registry[keys[0]].defaults,
                steps=3,
                batch=batch,
                seed=0,
                eval_every=3,
                eval_set="val",
            )
            runs, tuning, hps = [], {}, {}
            for k in keys:
                spec = registry[k]
                if do_tune and REUSE_TUNING.get(k) in keys:
                    continue  # takes its twin's tuned values below
                if do_tune:
                    bar.describe(f"{m}/{k} tune")
                    tuning[k] = tune(
                        m,
                        split,
                        spec,
                        budget=tune_budget,
                        steps=tune_steps,
                        batch=batch,
                        eval_every=eval_every,
                        progress=bar,
                    )
                    hps[k] = tuning[k]["best"]
                else:
                    hps[k] = dict((fixed_hparams or {}).get(k) or spec.defaults)
            for k, twin in REUSE_TUNING.items():
                if do_tune and k in keys and twin in keys:
                    hps[k] = dict(hps[twin])
                    tuning[k] = {"reused": twin, "best": hps[k], "trials": []}
            # seeds outer, optimizers inner: a burst of load from elsewhere on a shared
            # machine is spread over all optimizers instead of hitting one
            for s in range(seeds):
                for k in keys:
                    bar.describe(f"{m}/{k} seed {s}")
                    runs.append(
                        train_run(
                            m,
                            split,
                            registry[k],
                            hps[k],
                            steps=steps,
                            batch=batch,
                            seed=s,
                            eval_every=eval_every,
                            progress=bar,
                        )
                    )
            labels = {k: registry[k].label for k in keys}
            rows, target = summarize(runs, keys, labels, target_loss)
            sweep = None
            if sweep_keys:
                bar.describe(f"{m} step-time sweep")
                sweep = step_time_sweep(
                    m,
                    split,
                    registry,
                    hps,
                    keys=sweep_keys,
                    batch=batch,
                    steps=sweep_steps,
                    repeats=sweep_repeats,
                    progress=bar,
                )
            results[m] = {
                "rows": rows,
                "target_loss": target,
                "runs": runs,
                "tuning": tuning or None,
                "sweep": sweep,
            }
            if on_model is not None:
                on_model(snapshot())
    finally:
        bar.close()
    return snapshot()
