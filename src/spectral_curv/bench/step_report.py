"""Reports of ``bench optim``: terminal table, markdown section, remarks and bar chart."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from . import report
from .step import EIGH_LABEL, TARGET_RATIO, Config

__all__ = ["FILES", "command", "markdown_section", "plot", "profile_table", "table"]

#: What ``bench optim`` writes (in ``--out``, or the published docs).
FILES = report.Files(
    md=("benchmarks_optim.md", "optim.md"),
    js=("benchmarks_optim.json", "optim.json"),
    png=("img/optim_step_time.png", "optim.png"),
    title="# Optimizer step-time benchmark\n\n",
)


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{1e3 * x:.1f}"


def _mib(b: int) -> str:
    return f"{b / 2**20:.2f}"


def _phase(r: dict[str, Any], ph: str) -> float | None:
    return r["opt"].get("phase_median_s", {}).get(ph)


def _cols(r: dict[str, Any]) -> list[str]:
    o, w = r["opt"], r["whole"]
    return [
        r["label"],
        _ms(w["amortized_s"]),
        f"{r['ratio_whole']:.2f}",
        _ms(o["amortized_s"]),
        f"{r['ratio_opt']:.1f}",
        _ms(_phase(r, "refresh")),
        _ms(_phase(r, "plain")),
        _mib(r["state_bytes"]),
        f"{r['ratio_state']:.1f}",
        str(o["n"]),
    ]


HEADERS = [
    "optimizer",
    "whole step ms",
    "× AdamW",
    "opt.step ms",
    "× AdamW",
    "refresh step ms",
    "plain step ms",
    "state MiB",
    "× AdamW",
    "n",
]


def _fwd_bwd(data: dict[str, Any]) -> float | None:
    return report.median([r["fwd_bwd_median_s"] for r in data["results"]])


def table(data: dict[str, Any]) -> str:
    """Plain-text table, one line per optimizer, with a legend of its columns."""
    cells = [HEADERS, *(_cols(r) for r in data["results"])]
    c, m = data["config"], data["machine"]
    probe = m.get("probe_s") or [0.0]
    lines = [
        report.text_table(cells),
        "",
        report.legend(
            [
                ("whole step ms", "zero_grad + forward + loss + backward + opt.step()"),
                ("opt.step ms", "opt.step() alone; refresh schedules: amortized over T"),
                ("× AdamW", "the column to its left ÷ AdamW's in the same run"),
                ("refresh/plain step", "opt.step() median on refresh / on plain steps"),
                ("state MiB", "bytes of the tensors in the optimizer's state"),
                ("n", f"timed steps (≤ {c['steps']}, after {c['warmup']} warm-up steps)"),
            ]
        ),
        "",
        f"model: width {c['width']}, depth {c['depth']}, {c['heads']} heads, vocab {c['vocab']},"
        f" {c['batch']}×{c['seq']} = {c['batch'] * c['seq']} tokens, {c['n_params']:,} params,"
        f" {c['dtype']} on {c['device']}; forward+backward ≈ {_ms(_fwd_bwd(data))} ms; "
        f"torch threads {m['torch_threads']}; load {m['loadavg_start']} → {m['loadavg_end']}; "
        f"probe min/median/max {_ms(min(probe))}/{_ms(report.median(probe))}/{_ms(max(probe))} ms; "
        "optimizers interleaved round-robin; times are medians.",
    ]
    if data.get("profile"):
        lines += ["", profile_table(data["profile"])]
    return "\n".join(lines)


PROFILE_HEADERS = [
    "optimizer",
    "step",
    "wall ms",
    "profiled ms",
    "matmul",
    "eigh",
    "copy/stack",
    "other aten",
    "Python",
    "aten calls",
]


def _profile_cells(r: dict[str, Any]) -> list[str]:
    tot = r["total_s"] or 1.0
    pct = [
        f"{100 * r['self_s'][k] / tot:.0f}%"
        for k in ("matmul", "eigh", "copy/stack", "other aten", "python")
    ]
    return [r["label"], r["phase"], _ms(r["wall_s"]), _ms(r["total_s"]), *pct, str(r["aten_calls"])]


def profile_table(rows: list[dict[str, Any]]) -> str:
    return report.text_table([PROFILE_HEADERS, *map(_profile_cells, rows)], "ll" + "r" * 8)


def _md_table(data: dict[str, Any]) -> list[str]:
    heads = [
        "optimizer",
        "whole step (ms)",
        "× AdamW",
        "opt.step (ms)",
        "× AdamW",
        "opt.step, refresh steps (ms)",
        "opt.step, plain steps (ms)",
        "state (MiB)",
        "× AdamW",
        "timed steps",
    ]
    cuda = any(r.get("cuda_step_peak_bytes") is not None for r in data["results"])
    if cuda:
        heads.append("CUDA peak above live during opt.step (MiB)")
    table = [heads]
    for r in data["results"]:
        cells = _cols(r)
        if r["family"] == "spectral":
            cells[0] = f"**{cells[0]}**"
        if cuda:
            cells.append(_mib(r["cuda_step_peak_bytes"] or 0))
        table.append(cells)
    return report.md_table(table)


def command(cfg: dict[str, Any], *, profile: bool = False, threads: int | None = None) -> str:
    """The command line that reproduces a run of ``cfg`` (defaults left out)."""
    d = Config()
    parts = ["python -m spectral_curv.bench optim"]
    for name in (
        "width",
        "depth",
        "vocab",
        "seq",
        "tokens",
        "steps",
        "warmup",
        "device",
        "dtype",
        "seed",
    ):
        if cfg[name] != getattr(d, name):
            parts.append(f"--{name} {cfg[name]}")
    if tuple(cfg["intervals"]) != d.intervals:
        parts.append("--intervals " + " ".join(map(str, cfg["intervals"])))
    if tuple(cfg["powers"]) != d.powers:
        parts.append("--powers " + " ".join(f"{p:g}" for p in cfg["powers"]))
    if tuple(cfg["power_intervals"]) != d.power_intervals:
        parts.append("--power-intervals " + " ".join(map(str, cfg["power_intervals"])))
    if cfg["lane_budget_s"] != d.lane_budget_s:
        parts.append(f"--lane-budget {cfg['lane_budget_s']:g}")
    if threads and threads != 1:
        parts.append(f"--threads {threads}")
    if profile:
        parts.append("--profile")
    return " ".join(parts)


def markdown_section(
    data: dict[str, Any], *, plot_path: str | None = None, json_path: str | None = None
) -> str:
    """The generated part of ``docs/benchmarks_optim.md`` (between its markers)."""
    m, c = data["machine"], data["config"]
    begin, end = report.markers("optim-bench", "python -m spectral_curv.bench optim")
    res = {r["key"]: r for r in data["results"]}
    dev = m.get("gpu", "GPU") if c["device"] != "cpu" else "CPU"
    quick = " (quick run)" if c.get("quick") else ""
    lines = [begin, f"## Training-step time, {dev}, {c['dtype']}{quick}", ""]
    lines.append(
        f"Model: causal transformer, width {c['width']}, depth {c['depth']}, {c['heads']} "
        f"heads, MLP 4×, vocabulary {c['vocab']} (untied embedding and head), "
        f"{c['n_params']:,} parameters; batch {c['batch']}×{c['seq']} = "
        f"{c['batch'] * c['seq']} synthetic tokens per step. Up to {c['steps']} timed steps "
        f"after {c['warmup']} untimed warm-up steps; the optimizers step round-robin, each on "
        "its own copy of the model, on the same batches. Forward + backward alone: "
        f"≈ {_ms(_fwd_bwd(data))} ms (median over optimizers)."
    )
    lines.append("")
    probe = m.get("probe_s") or [0.0]
    lines.append(
        "**Machine.** "
        + "; ".join(
            filter(
                None,
                [
                    m["cpu"],
                    f"{m['cpus_usable']} usable CPU cores (os.cpu_count() = {m['cpu_count']})",
                    f"torch {m['torch']} ({m['torch_blas']}; "
                    f"intra-op threads: {m['torch_threads']}, "
                    f"inter-op: {m['torch_interop_threads']})",
                    f"GPU {m['gpu']} (CUDA {m['cuda']})" if "gpu" in m else "",
                    f"Python {m['python']}",
                    f"thread env {m['thread_env']}" if m["thread_env"] else "",
                    f"load average {m.get('loadavg_start')} → {m.get('loadavg_end')}",
                    f"contention probe (20 small elementwise ops, once per round) min/median/max "
                    f"{_ms(min(probe))}/{_ms(report.median(probe))}/{_ms(max(probe))} ms",
                    f"{c['date']}, timing run {c['wall_s']:.0f} s"
                    + (f" + profile {c['profile_wall_s']:.0f} s" if "profile_wall_s" in c else ""),
                ],
            )
        )
        + "."
    )
    lines.append("")
    cmd = command(c, profile=bool(data.get("profile")), threads=c.get("threads"))
    lines.append(
        f"Reproduce: `{cmd}`"
        + (f"; raw numbers: [`{json_path}`]({json_path})" if json_path else "")
        + "."
    )
    lines.append("")
    lines.extend(_md_table(data))
    lines.append("")
    lines.append(
        "*Whole step* = zero_grad + forward + loss + backward + `opt.step()`; *opt.step* = "
        "`opt.step()` alone. Medians over the timed steps; for the refresh schedules "
        "(SpectralKron, eigh) the steady-state amortized cost Σ weight · median over the "
        "step kinds (plain 1 − 1/T, refresh 1/T; SpectralKron's refreshes that also "
        "re-orthonormalize, one in `reorth_interval` (5 by default), are a third kind), with the "
        "refresh-step and plain-step medians shown. The default `precond_warmup=10` makes "
        "every step below 10 a refresh step: those are refresh samples. *State* = bytes of "
        "the tensors in the optimizer's state (Muon rows: Muon + its AdamW). × AdamW = ratio "
        "to AdamW's number from the same run. *Timed steps*: a lane whose timed steps "
        f"exceed {c['lane_budget_s']:g} s stops once it has ≥ {c['min_steps']} samples of each "
        "step kind (plain, refresh)."
    )
    lines.append("")
    if plot_path:
        lines.append(f"![step time per optimizer]({plot_path})")
        lines.append("")
    if data.get("profile"):
        lines.extend(_md_profile(data["profile"]))
    lines.extend(_remarks(data, res))
    lines.append(end)
    return "\n".join(lines) + "\n"


def _md_profile(rows: list[dict[str, Any]]) -> list[str]:
    heads = [
        "optimizer",
        "step",
        "wall (ms)",
        "profiled (ms)",
        "matmul",
        "eigh",
        "copy/stack",
        "other aten ops",
        "Python + dispatch",
        "aten calls",
    ]
    out = [
        "**Where `opt.step()` spends its time** (torch.profiler; each optimizer runs "
        "alone with `precond_warmup=0`, so its schedule is T-periodic from step 1; one "
        "step of each kind from step 2 on; self CPU time by category as a share of the "
        "profiled step; 'wall' is the previous step of the same kind timed without the "
        "profiler; 'Python + dispatch' is time inside `opt.step()` outside every aten op; "
        "the profiler itself adds a few µs per op).",
        "",
    ]
    out += report.md_table([heads, *map(_profile_cells, rows)], "ll" + "r" * (len(heads) - 2))
    out.append("")
    return out


def _remarks(data: dict[str, Any], res: dict[str, dict[str, Any]]) -> list[str]:
    c = data["config"]
    out = ["**Remarks generated from this run.**", ""]
    spec = [r for r in data["results"] if r["family"] == "spectral"]
    eigh = {r["interval"]: r for r in data["results"] if r["family"] == "eigh"}
    pmax = max(c["powers"]) if c["powers"] else None
    for r in spec:
        if r["p"] != pmax:
            continue
        e = eigh.get(r["interval"])
        vs = ""
        if e:
            q = r["opt"]["amortized_s"] / e["opt"]["amortized_s"]
            vs = f"; {q:.2f}× the eigh reference's opt.step at the same T"
        out.append(
            f"- SpectralKron T={r['interval']} p={r['p']:g}: whole step "
            f"{r['ratio_whole']:.2f}× AdamW, opt.step {r['ratio_opt']:.1f}× AdamW{vs}."
        )
    if "muon_bf16" in res and "muon_fp32" in res:
        b, f = res["muon_bf16"], res["muon_fp32"]
        out.append(
            "- Muon: torch.optim.Muon (Newton–Schulz in bf16) opt.step "
            f"{_ms(b['opt']['amortized_s'])} ms vs the fp32 Newton–Schulz copy "
            f"{_ms(f['opt']['amortized_s'])} ms"
            + (
                ": bf16 matmuls are slow on this CPU; on a GPU the bf16 row is the one that counts."
                if c["device"] == "cpu"
                else "."
            )
        )
    ps = sorted({r["p"] for r in spec})
    if len(ps) > 1:
        pairs = []
        for T in c["intervals"]:
            row = {r["p"]: r for r in spec if r["interval"] == T}
            if len(row) == len(ps):
                pairs.append(
                    f"T={T}: "
                    + " vs ".join(f"{_ms(row[p]['opt']['amortized_s'])} ms (p={p:g})" for p in ps)
                )
        out.append(
            "- The root p changes only elementwise exponents, not the work: opt.step "
            + "; ".join(pairs)
            + "."
        )
    bad = [
        r["key"]
        for r in spec
        if r.get("refreshes_counted") is not None
        and r["refreshes_counted"] != r["refreshes_expected"]
    ]
    if bad:
        out.append(
            f"- WARNING: the refresh schedule assumed here disagrees with the "
            f"optimizer's own counter for {bad}: the phase split is wrong for them."
        )
    nonfinite = [r["key"] for r in data["results"] if not math.isfinite(r["final_loss"])]
    if nonfinite:
        out.append(f"- WARNING: non-finite final loss for {nonfinite}.")
    tokens = c["batch"] * c["seq"]
    if c["device"] == "cpu" or c["width"] < 512 or tokens < 8192:
        out.append(
            f"- The paper's efficiency target (whole step ≤ {TARGET_RATIO}× AdamW) is stated "
            "for a GPU, width ≥ 512 and ≥ 8k tokens per step; this run "
            f"({c['device']}, width {c['width']}, {tokens} tokens) is outside that regime, so "
            "it neither tests nor refutes the target. At small width and batch the forward "
            "+ backward is cheap next to a Kronecker preconditioner's O(n³) factor work, so "
            "every second-order method looks worse here than at scale."
        )
    out.append(
        "- Timing only: learning rates are untuned and no convergence comparison is "
        "made (the final losses in the JSON are a finiteness check)."
    )
    out.append("")
    return out


def plot(data: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Horizontal bars per optimizer: forward+backward and opt.step (stacked), in ms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    c, m = data["config"], data["machine"]
    rows = data["results"]
    colors = {"adamw": "0.45", "muon": "C1", "spectral": "C0", "eigh": "C3"}
    fig, ax = plt.subplots(figsize=(9.5, 0.4 * len(rows) + 2.0), dpi=130)
    ys = list(range(len(rows)))[::-1]
    totals = sorted(1e3 * r["whole"]["amortized_s"] for r in rows)
    # One bar far beyond the rest (bf16 Muon on a CPU) is cut so the others stay readable.
    cap = totals[-2] * 1.3 if len(totals) > 2 and totals[-1] > 2.5 * totals[-2] else None
    for y, r in zip(ys, rows):
        o = 1e3 * r["opt"]["amortized_s"]
        fb = 1e3 * r["whole"]["amortized_s"] - o
        label = f"  {r['ratio_whole']:.2f}×  ({r['ratio_opt']:.0f}×)"
        end = fb + o
        if cap is not None and end > cap:
            o, label = cap - fb, f"  bar cut: {end:.0f} ms;" + label
            end = cap
        ax.barh(y, fb, color="0.85", edgecolor="0.6", lw=0.5)
        ax.barh(
            y,
            o,
            left=fb,
            color=colors[r["family"]],
            edgecolor="0.3",
            lw=0.5,
            hatch="//" if end == cap else None,
        )
        ax.text(end, y, label, va="center", fontsize=7.5)
    ax.set_yticks(ys)
    ax.set_yticklabels([r["label"] for r in rows], fontsize=8)
    ax.set_xlabel("time per training step [ms]   (median; refresh schedules amortized over T)")
    ax.set_xlim(0, (cap if cap is not None else totals[-1]) * (1.45 if cap else 1.22))
    handles = [Patch(facecolor="0.85", edgecolor="0.6", label="zero_grad + forward + backward")]
    names = {
        "adamw": "opt.step(): AdamW",
        "muon": "opt.step(): Muon + AdamW",
        "spectral": "opt.step(): SpectralKron",
        "eigh": f"opt.step(): {EIGH_LABEL}",
    }
    for fam in dict.fromkeys(r["family"] for r in rows):
        handles.append(Patch(facecolor=colors[fam], edgecolor="0.3", label=names[fam]))
    ax.legend(handles=handles, fontsize=7.5, loc="lower right", frameon=True)
    where = (
        f"{m.get('gpu')}"
        if c["device"] != "cpu"
        else f"CPU, {m['cpus_usable']} cores, torch threads: {m['torch_threads']}"
    )
    ax.set_title(
        f"Training-step time{' (quick run)' if c.get('quick') else ''}: width {c['width']}, "
        f"depth {c['depth']}, "
        f"{c['batch'] * c['seq']} tokens/step, {c['dtype']}, {where}\n"
        "labels: whole step × AdamW  (opt.step × AdamW), same run",
        fontsize=9,
    )
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
