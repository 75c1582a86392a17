"""Reports of ``bench precond``: the terminal table, the target verdict, the markdown
section (with the baseline ratios computed from the numbers) and the plot."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import report
from .precond import (
    LABELS,
    METHODS,
    ROUTE,
    TARGET,
    TARGET_METHOD,
    TARGET_MIN_N,
    analytic_label,
    flop_eq,
)

__all__ = [
    "FILES",
    "baseline_ratios",
    "markdown_section",
    "plot",
    "ratio_range",
    "table",
    "target_verdict",
]

#: What ``bench precond`` writes (in ``--out``, or the published docs).
FILES = report.Files(
    md=("benchmarks.md", "precond.md"),
    js=("benchmarks_precond.json", "precond.json"),
    png=("img/precond_cost.png", "precond.png"),
    title="# Benchmarks\n\n",
)


#: What the spectral rows timed, by the JSON's ``route`` (None: before it was recorded).
_ROUTES = {
    ROUTE: "Spectral rows: one refresh step as `SpectralKron` runs it, "
    "`optim.refresh_and_direction` (the GOP update of both factors, keep-last-good, then the "
    "step; with the default corrected eigenvalues in the basis before the refresh, sharing "
    "`R`: math §4.10).",
    "optim.refresh + optim.direction": "Spectral rows: one refresh step as `SpectralKron` "
    "ran it then, `optim.refresh` (the GOP update of both factors, keep-last-good) then "
    "`optim.direction` with the new factors (12 products).",
    None: "Spectral rows: the fused `kron.precondition_and_update` (measured before the "
    "benchmark timed `optim.refresh` + `optim.direction`, the optimizers' calls then, which "
    "add 2 products).",
}


def _fmt(x: float | None, nd: int = 1) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def table(data: dict[str, Any]) -> str:
    """Plain-text table: one line per (backend, n, method), measured beside analytic."""
    head = (
        f"{'backend':<7} {'n':>5} {'method':<40} {'ms':>9} {'matmul ms':>9} "
        f"{'mm-eq':>6} {'med/med':>7} {'min':>6} {'products':>10} {'flop-eq':>7}"
    )
    lines = [head, "-" * len(head)]
    prev = None
    for r in data["results"]:
        key = (r["backend"], r["n"])
        if prev is not None and key != prev:
            lines.append("")
        prev = key
        lines.append(
            f"{r['backend']:<7} {r['n']:>5} {r['label']:<40} {1e3 * r['median_s']:>9.2f} "
            f"{1e3 * r['matmul_median_s']:>9.2f} {r['ratio']:>6.1f} {r['ratio_of_medians']:>7.1f} "
            f"{r['ratio_min']:>6.1f} {r['analytic']:>10} {_fmt(r['flop_eq']):>7}"
        )
    lines.append("")
    lines.append(
        report.legend(
            [
                (
                    "mm-eq",
                    "median over rounds of call time ÷ the matmul samples just before and after it",
                ),
                ("med/med", "median(call) ÷ median(matmul); min: min(call) ÷ min(matmul)"),
                ("products", "analytic n×n×n products per call"),
                (
                    "flop-eq",
                    "their flops in matmul units on that backend (numpy: A·Aᵀ runs as syrk = ½)",
                ),
                (
                    "spectral",
                    "one refresh step as SpectralKron runs it: optim.refresh_and_direction",
                ),
            ]
        )
    )
    verdict = target_verdict(data)
    if verdict:
        lines.extend("target on " + v for v in verdict.splitlines())
    return "\n".join(lines)


def target_verdict(data: dict[str, Any]) -> str:
    """One line per backend: is the target route ≤ TARGET at n ≥ TARGET_MIN_N?"""
    terms = data["config"]["cayley_terms"]
    method = data["config"].get("target", {}).get("method", TARGET_METHOD)
    out = []
    for b in data["config"]["backends"]:
        rows = [
            r
            for r in data["results"]
            if r["backend"] == b and r["method"] == method and r["n"] >= TARGET_MIN_N
        ]
        if not rows:
            continue
        worst = max(rows, key=lambda r: r["ratio"])
        ok = all(r["ratio"] <= TARGET for r in rows)
        cells = ", ".join(f"n={r['n']}: {r['ratio']:.1f}" for r in rows)
        out.append(
            f"{b}: {'MET' if ok else 'NOT MET'} ({cells}; worst {worst['ratio']:.1f}) "
            f"for ≤ {TARGET:g} mm-eq, {LABELS[method].format(K=terms)}, "
            f"n ≥ {TARGET_MIN_N}"
        )
    return "\n".join(out)


def _wide(data: dict[str, Any], backend: str) -> list[str]:
    rows = [r for r in data["results"] if r["backend"] == backend]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    sizes = sorted({r["n"] for r in rows})
    terms = data["config"]["cayley_terms"]
    cell = {(r["n"], r["method"]): r for r in rows}
    labels = [LABELS[m].format(K=terms) for m in methods]
    prods = [analytic_label(m, backend, terms) for m in methods]
    flops = [_fmt(flop_eq(m, backend, terms)) for m in methods]
    table = [
        ["n", "matmul (ms)", *labels, "rounds", "page faults / call (spectral; matmul)"],
        ["*products (analytic)*", "", *prods, "", ""],
        [f"*flop-eq on {backend}*", "", *flops, "", ""],
    ]
    for n in sizes:
        mm = next(r["matmul_median_s"] for r in rows if r["n"] == n)
        vals = []
        for m in methods:
            r = cell[(n, m)]
            v = f"{r['ratio']:.1f}"
            if m == TARGET_METHOD and n >= TARGET_MIN_N:
                v = f"**{v}**"
            vals.append(v)
        ex = cell[(n, methods[0])].get("extra", {})
        pf = f"{ex.get('page_faults', '?')}; {ex.get('matmul_page_faults', '?')}"
        table.append([str(n), f"{1e3 * mm:.2f}", *vals, str(ex.get("rounds", "?")), pf])
    return report.md_table(table, "r" * (4 + len(methods)))


def baseline_ratios(
    data: dict[str, Any], method: str = "eigh_refresh"
) -> dict[str, tuple[float, float]]:
    """Per backend, the (min, max) over n ≥ TARGET_MIN_N of ``method``'s matmul-equivalents
    ÷ the target route's: what the prose quotes as "eigh costs a–b× our cost"."""
    out = {}
    for b in data["config"]["backends"]:
        cell = {(r["n"], r["method"]): r["ratio"] for r in data["results"] if r["backend"] == b}
        qs = [
            cell[(n, method)] / cell[(n, TARGET_METHOD)]
            for n in sorted({n for n, _ in cell})
            if n >= TARGET_MIN_N and (n, method) in cell and (n, TARGET_METHOD) in cell
        ]
        if qs:
            out[b] = (min(qs), max(qs))
    return out


def ratio_range(lo: float, hi: float) -> str:
    """``2.5–3.1`` (``1.7`` when both round alike), as the docs quote it."""
    a, b = f"{lo:.1f}", f"{hi:.1f}"
    return a if a == b else f"{a}–{b}"


def section_tag(data: dict[str, Any]) -> str:
    """``precond``, or ``precond-<malloc mode>`` for a run with a non-default allocator."""
    mode = str(data["machine"].get("malloc", "default")).split()[0]
    return "precond" if mode == "default" else f"precond-{mode}"


def markdown_section(
    data: dict[str, Any],
    *,
    plot_path: str | None = None,
    json_path: str | None = None,
    notes: str = "",
) -> str:
    """The generated section: machine, one table per backend, verdict, and the raw numbers
    (a link to ``json_path`` where they were written, else inline JSON)."""
    m, c = data["machine"], data["config"]
    begin, end = report.markers(
        f"{section_tag(data)}-bench", "python -m spectral_curv.bench precond"
    )
    title = "Preconditioner cost: refresh + step in matmul-equivalents"
    mode = str(m.get("malloc", "default"))
    if not mode.startswith("default"):
        title += f" (malloc: {mode})"
    if c.get("quick"):
        title += " (quick run)"
    lines = [begin, f"## {title}", ""]
    rounds = sorted({r.get("extra", {}).get("rounds", c["repeats"]) for r in data["results"]})
    rtxt = (
        f"{rounds[0]}"
        if len(rounds) == 1
        else f"{rounds[-1]} (or {rounds[0]} where a "
        f"size's rounds would exceed the {c.get('budget_s')} s budget; see 'rounds')"
    )
    cmd = "python -m spectral_curv.bench precond" + (
        "" if mode.startswith("default") else f" --malloc {mode.split()[0]}"
    )
    lines.append(
        "Time of one call ÷ time of one n×n×n fp32 matmul `A @ B` measured in the same run "
        f"on the same backend: median over {rtxt} rounds of (call time ÷ mean of the matmul "
        "samples taken just before and just after the call; a sample is the median of 3 "
        "matmuls below 20 ms, else one), after one warm-up call of each. Square layers, "
        f"float32, CPU. Reproduce with `{cmd}`."
    )
    lines.append("")
    lines.append(_ROUTES.get(c.get("route"), _ROUTES[None]))
    lines.append("")
    lines.append(
        "**Machine.** "
        + "; ".join(
            filter(
                None,
                [
                    f"{m['cpu']}",
                    f"{m['cpus_usable']} usable CPU cores (os.cpu_count() = {m['cpu_count']})",
                    f"Python {m['python']}",
                    f"numpy {m['numpy']} ({m['numpy_blas']}, "
                    f"{m['numpy_blas_threads']} BLAS threads)",
                    (
                        f"torch {m['torch']} ({m['torch_blas']}, {m['torch_threads']} threads)"
                        if "torch" in m
                        else ""
                    ),
                    f"malloc {mode}",
                    f"load average {m.get('loadavg_start')} → {m.get('loadavg_end')}",
                    f"{c['date']}, whole run {c['wall_s']:.0f} s",
                ],
            )
        )
        + "."
    )
    lines.append("")
    for b in c["backends"]:
        lines.append(
            f"**{b}**"
            + (
                " (spectral rows: the core through the array-API "
                "namespace, with the registered torch fast paths; "
                "'generic route': fast paths off)"
                if b == "torch"
                else " (spectral rows: the core on numpy arrays)"
            )
        )
        lines.append("")
        lines.extend(_wide(data, b))
        lines.append("")
    verdict = target_verdict(data)
    if verdict:
        lines.append("**Target.** " + verdict.replace("\n", "; "))
        lines.append("")
    base = []
    for meth in ("eigh_refresh", "muon_ns5"):
        q = baseline_ratios(data, meth)
        if q:
            base.append(
                f"{LABELS[meth]} costs "
                + ", ".join(f"{ratio_range(*v)}× on {b}" for b, v in q.items())
            )
    if base:
        lines.append(
            f"**Baselines** (n ≥ {TARGET_MIN_N}, ÷ {LABELS[TARGET_METHOD]}): "
            + "; ".join(base)
            + "."
        )
        lines.append("")
    if plot_path:
        lines.append(f"![matmul-equivalents vs n]({plot_path})")
        lines.append("")
    if notes:
        lines.append(notes.strip())
        lines.append("")
    if json_path:
        lines.append(f"Raw numbers (every round): [`{Path(json_path).name}`]({json_path}).")
        lines.append("")
    else:
        lines.append("<details><summary>Raw numbers (JSON)</summary>")
        lines.append("")
        lines.append("```json")
        lines.append(_compact_json(data))
        lines.append("```")
        lines.append("")
        lines.append("</details>")
    lines.append(end)
    return "\n".join(lines) + "\n"


def _compact(data: dict[str, Any]) -> dict[str, Any]:
    """The JSON without per-round lists rounded to µs (kept short for the markdown)."""
    res = []
    for r in data["results"]:
        r = dict(r)
        r["times_s"] = [round(t, 6) for t in r["times_s"]]
        r["matmul_times_s"] = [round(t, 6) for t in r["matmul_times_s"]]
        for k in ("median_s", "matmul_median_s"):
            r[k] = round(r[k], 6)
        for k in ("ratio", "ratio_of_medians", "ratio_min"):
            r[k] = round(r[k], 3)
        r.pop("extra", None)
        res.append(r)
    return {"machine": data["machine"], "config": data["config"], "results": res}


def _compact_json(data: dict[str, Any]) -> str:
    """Valid JSON with one line for the machine, one for the config, one per result."""
    c = _compact(data)
    res = c["results"]
    lines = [
        "{",
        f' "machine": {json.dumps(c["machine"], ensure_ascii=False)},',
        f' "config": {json.dumps(c["config"], ensure_ascii=False)},',
        ' "results": [',
    ]
    lines += [
        f"  {json.dumps(r, ensure_ascii=False)}" + ("," if i + 1 < len(res) else "")
        for i, r in enumerate(res)
    ]
    lines += [" ]", "}"]
    return "\n".join(lines)


def plot(data: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Matmul-equivalents vs n (log-x), one line per method and backend; PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, m = data["config"], data["machine"]
    colors = {
        "spectral_quadratic": "C0",
        "spectral_neumann": "C4",
        "spectral_quartic": "C6",
        "spectral_kron_eigs": "C7",
        "spectral_generic": "C9",
        "spectral_exact": "C2",
        "eigh_refresh": "C3",
        "muon_ns5": "C1",
    }
    styles = {"numpy": ("-", "o"), "torch": ("--", "s")}
    fig, ax = plt.subplots(figsize=(8.0, 5.2), dpi=130)
    for b in c["backends"]:
        for meth in METHODS:
            rows = sorted(
                (r for r in data["results"] if r["backend"] == b and r["method"] == meth),
                key=lambda r: r["n"],
            )
            if not rows:
                continue
            ls, mk = styles.get(b, ("-", "o"))
            ax.plot(
                [r["n"] for r in rows],
                [r["ratio"] for r in rows],
                ls,
                marker=mk,
                color=colors[meth],
                label=f"{LABELS[meth].format(K=c['cayley_terms'])} [{b}]",
            )
    ax.axhline(
        TARGET,
        color="k",
        lw=0.8,
        ls=":",
        label=f"target ≤ {TARGET:g} ({LABELS[TARGET_METHOD]}, n ≥ {TARGET_MIN_N})",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    sizes = sorted({r["n"] for r in data["results"]})
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(n) for n in sizes])
    ax.minorticks_off()
    yt = [
        t
        for t in (5, 8, 10, 12, 15, 20, 30, 50, 70, 100, 200, 500, 1000, 2000, 5000)
        if min(r["ratio"] for r in data["results"]) * 0.8
        <= t
        <= max(r["ratio"] for r in data["results"]) * 1.25
    ]
    ax.set_yticks(yt)
    ax.set_yticklabels([str(t) for t in yt])
    ax.set_xlabel("layer size n (square n×n weight)")
    ax.set_ylabel("time per call  [matmul-equivalents, log scale]")
    threads = m.get("numpy_blas_threads")
    fig.suptitle(  # over the whole figure: the legend takes the right of it
        f"Preconditioner cost per refresh step{' (quick run)' if c.get('quick') else ''}, "
        "fp32 CPU "
        f"({m.get('cpus_usable')} cores, {threads} BLAS threads)\n"
        "time ÷ time of one n×n×n matmul, same run",
        fontsize=10,
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
