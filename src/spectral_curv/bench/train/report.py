"""Reports of ``bench train`` and ``demo``: terminal tables with their legend, the markdown
section, the preconditioner-cost table folded in from ``bench precond``'s JSON, and plots."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import report
from .registry import REUSE_TUNING
from .runner import STEADY_SKIP

__all__ = [
    "HEADER",
    "LEGEND",
    "TABLE_HEADERS",
    "markdown_section",
    "markers",
    "plot_model",
    "precond_lines",
    "print_tables",
    "sweep_table",
    "table_rows",
]


def _f(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


TABLE_HEADERS = [
    "optimizer",
    "test acc %",
    "test loss",
    "steps→target",
    "s→target",
    "opt.step ms",
    "opt.step × AdamW",
    "whole step × AdamW",
    "state MiB",
    "peak RSS MiB",
]


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in rows:
        acc = (
            "diverged"
            if r["test_acc"] is None
            else f"{100 * r['test_acc']:.2f} ± {100 * r['test_acc_sd']:.2f}"
        )
        loss = "—" if r["test_loss"] is None else f"{r['test_loss']:.4f} ± {r['test_loss_sd']:.4f}"
        reached = f" ({r['reached']}/{r['seeds']})" if r["reached"] < r["seeds"] else ""
        steps = (
            "not reached"
            if r["steps_to_target"] is None
            else f"{r['steps_to_target']:.0f}{reached}"
        )
        out.append(
            [
                r["label"],
                acc,
                loss,
                steps,
                _f(r["wall_to_target_s"], ".2f"),
                _f(r["step_ms"], ".2f"),
                _f(r["step_ratio"], ".2f"),
                _f(r["whole_ratio"], ".2f"),
                f"{r['state_mib']:.2f}",
                _f(r["peak_rss_mib"], ".1f"),
            ]
        )
    return out


def sweep_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Header + rows of the step-time sweep."""
    out = [
        [
            "optimizer",
            "T",
            "fwd+bwd ms",
            "opt.step ms",
            "whole ms",
            "whole × AdamW",
            "opt.step × AdamW",
        ]
    ]
    for r in rows:
        out.append(
            [
                r["label"],
                "—" if r["T"] is None else str(r["T"]),
                _f(r.get("fb_ms"), ".1f"),
                _f(r.get("step_ms"), ".2f"),
                _f(r.get("whole_ms"), ".1f"),
                _f(r.get("whole_ratio"), ".2f"),
                _f(r.get("step_ratio"), ".1f"),
            ]
        )
    return out


#: What the terminal table's columns mean, one line each (printed under the table).
LEGEND = [
    ("test acc % / loss", "on the test set at the last step, mean ± sd over seeds"),
    (
        "steps→target",
        "first evaluated step with test loss ≤ the target (mean over the seeds "
        "that reach it; (k/n) when only k do)",
    ),
    (
        "s→target",
        "training wall-clock to that step (forward + backward + step; evaluation excluded)",
    ),
    (
        "opt.step ms",
        f"mean opt.step() time after the first {STEADY_SKIP} steps (a refresh "
        "every T steps counts 1/T)",
    ),
    (
        "× AdamW",
        "÷ AdamW's in the same run (median over seeds); whole step = zero_grad + "
        "forward + backward + opt.step()",
    ),
    ("state MiB", "bytes of the tensors in the optimizer's state"),
    ("peak RSS MiB", "peak resident memory during the run above its start"),
]
SWEEP_LEGEND = [
    ("T", "SpectralKron's refresh interval (update_interval); — for AdamW"),
    (
        "whole ms",
        "zero_grad + forward + backward + opt.step(), mean after "
        f"{STEADY_SKIP} untimed steps, median over rounds",
    ),
    ("× AdamW", "÷ AdamW's in the same round-robin loop"),
]


def print_tables(data: dict[str, Any]) -> None:
    for note in data["dataset"].get("notes") or []:
        print(f"NOTE: {note}")
    d = data["dataset"]
    print(
        f"dataset: {d['name']} ({d['n_train_split']} train / {d['n_val']} val / "
        f"{d['n_test_used']} test); {data['config']['seeds']} seeds; "
        f"{data['config']['steps']} steps of {data['config']['batch']}; "
        f"wall {data['wall_s']:.1f} s"
    )
    for model, res in data["results"].items():
        t = res["target_loss"]
        print(f"\n{model}: target test loss {'—' if t is None else f'{t:.4f}'}")
        print(report.text_table([TABLE_HEADERS, *table_rows(res["rows"])]))
        print(report.legend(LEGEND))
        if res.get("sweep"):
            print(f"\n{model}: step time vs refresh interval T")
            print(report.text_table(sweep_table(res["sweep"])))
            print(report.legend(SWEEP_LEGEND))


def markers(section: str) -> tuple[str, str]:
    """The markers of the ``demo`` or ``bench`` section of the training report."""
    cmd = "spectral-curv " + ("demo" if section == "demo" else "bench train")
    return report.markers(f"train-{section}", cmd)


#: A new training report starts with this.
HEADER = (
    "# Training benchmark\n\nGenerated by `spectral-curv demo` (small, fixed "
    "hyperparameters) and `spectral-curv bench train` (tuned); see "
    "`spectral_curv.bench.train` for the protocol.\n"
)


PRECOND_METHODS = ("spectral_quadratic", "spectral_exact", "eigh_refresh", "muon_ns5")


def precond_lines(path: str | os.PathLike[str]) -> list[str]:
    """The preconditioner-cost table (matmul-equivalents at the two largest sizes) from the
    JSON that ``python -m spectral_curv.bench precond`` writes; [] when it is missing."""
    p = Path(path)
    if not p.exists():
        return []
    d = json.loads(p.read_text())
    res = [r for r in d.get("results", []) if r.get("method") in PRECOND_METHODS]
    sizes = sorted({r["n"] for r in res})[-2:]
    backends = [b for b in d["config"]["backends"] if any(r["backend"] == b for r in res)]
    if not res or not sizes:
        return []
    cols = [(b, n) for b in backends for n in sizes]
    lines = [
        "### Preconditioner cost",
        "",
        f"One refresh + preconditioned step of an n×n layer in matmul-equivalents (time ÷ one "
        f"n×n×n fp32 matmul in the same run; `python -m spectral_curv.bench precond`, "
        f"{d['config'].get('date', '')}; every size and method in "
        f"[benchmarks.md](benchmarks.md)):",
        "",
    ]
    table = [["method", *(f"{b} n={n}" for b, n in cols)]]
    for m in PRECOND_METHODS:
        got = {(r["backend"], r["n"]): r for r in res if r["method"] == m}
        if got:
            label = next(iter(got.values()))["label"]
            table.append([label, *(f"{got[c]['ratio']:.1f}" if c in got else "—" for c in cols)])
    return lines + report.md_table(table)


def markdown_section(
    data: dict[str, Any],
    name: str,
    plots: dict[str, str],
    json_rel: str | None,
    command: str,
    extra: Sequence[str] = (),
) -> str:
    """The generated markdown of one run (``name``: ``demo`` or ``bench``)."""
    c, m, d = data["config"], data["machine"], data["dataset"]
    begin, end = markers(name)
    title = "Demo: fixed hyperparameters" if name == "demo" else "Benchmark: tuned"
    if c.get("quick"):
        title += " (quick run)"
    lines = [begin, f"## {title} ({d['name']}, CPU, fp32)", "", f"Command: `{command}`", ""]
    lines.append(
        f"Data: {d['name']} from {d['source']}; {d['n_train_split']} training images "
        f"(validation split of {d['n_val']}, seed {d['val_seed']}), {d['n_test_used']} test "
        f"images. {c['steps']} steps of batch {c['batch']} per run, test set evaluated every "
        f"{c['eval_every']} steps, {c['seeds']} seeds (model init and batch order)."
    )
    for note in d.get("notes") or []:
        lines += ["", f"**Note:** {note}."]
    lines.append("")
    if c["tune_budget"]:
        lines.append(
            f"Tuning: {c['tune_budget']} trials per optimizer (trial 0 = defaults, then a "
            f"seeded random search over lr, weight decay and the optimizer's knob), "
            f"{c['tune_steps']} steps each, best validation loss kept."
            + "".join(
                f" {k} is not tuned on its own: it uses {twin}'s values (same update, only "
                "the Newton–Schulz precision differs)."
                for k, twin in REUSE_TUNING.items()
                if k in c["optimizers"] and twin in c["optimizers"]
            )
        )
    else:
        lines.append(f"Hyperparameters: fixed, from {data.get('hparams_source', 'defaults')}.")
    lines.append("")
    lines.append(
        "**Machine.** "
        + "; ".join(
            [
                m["cpu"],
                f"{m['cpus_usable']} usable cores",
                f"torch {m['torch']} ({m['torch_threads']} threads)",
                f"load average at end {m.get('loadavg_end')}",
                f"total wall-clock {data['wall_s']:.0f} s",
            ]
        )
        + "."
    )
    for model, res in data["results"].items():
        lines += ["", f"### {model}", ""]
        if res["target_loss"] is not None:
            lines.append(
                f"Target test loss {res['target_loss']:.4f} "
                f"({'given' if c['target_loss'] else '1.1 × AdamW final'}); "
                "steps/seconds to target are means over the seeds that reach it "
                "(count shown when not all do)."
            )
            lines.append("")
        lines += report.md_table([TABLE_HEADERS, *table_rows(res["rows"])])
        lines.append("")
        lines.append(
            "Hyperparameters used: "
            + "; ".join(
                f"{r['label']}: "
                + ", ".join(
                    f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in r["hparams"].items()
                )
                for r in res["rows"]
            )
            + "."
        )
        if model in plots:
            lines += ["", f"![{model} curves]({plots[model]})"]
        if res.get("sweep"):
            lines += [
                "",
                f"Step time vs refresh interval T ({model}; tuned hyperparameters, "
                f"{c['sweep_repeats']} round-robin rounds of {c['sweep_steps']} timed steps "
                f"after {STEADY_SKIP} untimed, median of the per-round means):",
                "",
            ]
            lines += report.md_table(sweep_table(res["sweep"]))
    if extra:
        lines += ["", *extra]
    lines += ["", "Notes:", ""]
    lines.append(
        f"- opt.step ms: mean `opt.step()` time per step (the first {STEADY_SKIP} steps "
        "left out; a mean, so a refresh every T steps is counted at 1/T); whole step = "
        "zero_grad + forward + backward + `opt.step()`; × AdamW divides by AdamW's in the same "
        "run (median over seeds). Wall-clock counts forward + backward + step (evaluation "
        "excluded)."
    )
    method = next(
        (r["memory_method"] for res in data["results"].values() for r in res["runs"]), "n/a"
    )
    lines.append(
        f"- Memory: optimizer state = bytes of every tensor in `opt.state`; peak RSS "
        f"= peak resident set during the run above the RSS at its start, measured "
        f"with {method}."
    )
    if "muon_bf16" in c["optimizers"]:
        lines.append(
            "- `Muon bf16-NS` is `torch.optim.Muon` as shipped (Newton–Schulz in "
            "bfloat16, slow on CPUs); `Muon fp32-NS` is the same update with fp32 "
            "Newton–Schulz."
        )
    for k, why in (c.get("skipped") or {}).items():
        lines.append(f"- {k} skipped: {why}.")
    for o in data["optimizers"].values():
        lines.append(f"- {o['label']}: {o['notes']}.")
    if json_rel:
        lines.append(f"- Every curve: [{json_rel}]({json_rel}) (key `{name}`).")
    lines += ["", end, ""]
    return "\n".join(lines)


def plot_model(
    runs: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str,
    target: float | None,
) -> None:
    """2×3 panels: test loss / accuracy vs step and vs wall-clock (mean ± sd over seeds),
    opt.step() time and memory per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(16, 8.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(rows):
        rs = [x for x in runs if x["optimizer"] == r["key"] and not x["diverged"]]
        if not rs:
            continue
        n = min(len(x["curve"]["step"]) for x in rs)
        steps = np.array(rs[0]["curve"]["step"][:n])
        wall = np.mean([x["curve"]["wall_s"][:n] for x in rs], axis=0)
        color = colors[i % len(colors)]
        for row, metric, scale in ((0, "loss", 1.0), (1, "acc", 100.0)):
            vals = scale * np.array([x["curve"][metric][:n] for x in rs])
            m, s = vals.mean(0), vals.std(0)
            for col, xs in ((0, steps), (1, wall)):
                ax[row, col].plot(xs, m, color=color, label=r["label"])
                ax[row, col].fill_between(xs, m - s, m + s, color=color, alpha=0.2, lw=0)
    for col, xlabel in ((0, "training step"), (1, "training wall-clock (s, evaluation excluded)")):
        ax[0, col].set_yscale("log")
        ax[0, col].set_ylabel("test cross-entropy (nats, log scale)")
        ax[1, col].set_ylabel("test accuracy (%)")
        if target is not None:
            ax[0, col].axhline(target, color="k", ls=":", lw=1, label=f"target {target:.3f}")
        for row in (0, 1):
            ax[row, col].set_xlabel(xlabel)
            ax[row, col].grid(alpha=0.3)
        lo = [
            float(np.percentile(x["curve"]["acc"], 10)) * 100
            for x in runs
            if not x["diverged"] and x["curve"]["acc"]
        ]
        if lo:
            ax[1, col].set_ylim(bottom=max(0.0, min(lo)))
        starts = [x["curve"]["loss"][0] for x in runs if x["curve"]["loss"]]
        if starts:  # a run that blows up would squash every other curve: it goes off scale
            ax[0, col].set_ylim(top=2 * max(starts))
    for col in (0, 1):
        report.log_ticks(ax[0, col], "y", *ax[0, col].get_ylim())
    ax[0, 0].legend(fontsize=8)
    labels = [r["label"] for r in rows]
    y = np.arange(len(rows))
    ms = [r["step_ms"] or 0.0 for r in rows]
    ax[0, 2].barh(y, ms, color=colors[: len(rows)])
    ax[0, 2].set_xscale("log")
    ax[0, 2].set_xlabel("opt.step() time (ms, mean per step, log scale)")
    # the right third of the panel is left for the "× AdamW" labels at the bars' ends
    report.log_ticks(ax[0, 2], "x", *report.log_limits(ms, text_room=0.35))
    for r, yy in zip(rows, y):
        if r["step_ratio"]:
            ax[0, 2].text(
                r["step_ms"], yy, f" {r['step_ratio']:.1f}× AdamW", va="center", fontsize=8
            )
    mem = [r["state_mib"] for r in rows], [r["peak_rss_mib"] or 0.0 for r in rows]
    ax[1, 2].barh(y - 0.2, mem[0], height=0.4, label="optimizer state")
    ax[1, 2].barh(y + 0.2, mem[1], height=0.4, label="peak RSS above start of run")
    ax[1, 2].set_xscale("log")  # optimizer state is ~100× smaller than the process's RSS
    ax[1, 2].set_xlabel("memory (MiB, log scale)")
    report.log_ticks(ax[1, 2], "x", *report.log_limits([*mem[0], *mem[1]]))
    ax[1, 2].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    for a in (ax[0, 2], ax[1, 2]):
        a.set_yticks(y, labels, fontsize=8)
        a.invert_yaxis()
        a.grid(alpha=0.3, axis="x")
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
