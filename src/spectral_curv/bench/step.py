"""Optimizer step time (``bench optim``): ``SpectralKron`` vs AdamW, Muon and an eigh refresh.

A small causal transformer (token + position embedding, ``depth`` pre-norm
``torch.nn.TransformerEncoderLayer`` blocks of ``width``, 4 heads, 4× GELU MLP, final
LayerNorm, untied head) is trained on synthetic tokens (nothing downloaded). Every optimizer
gets its own copy of the same initial model and sees the same batches; the optimizers step
round-robin (step k of every one before step k + 1 of any), so a burst of load from
elsewhere hits all alike, and every ratio is to AdamW's time in the same run.

Per step ``t0 | zero_grad, forward, loss, backward | t1 | opt.step() | t2`` (CUDA
synchronised): whole step ``t2 − t0``, optimizer ``t2 − t1``; the first ``warmup`` steps are
not timed. A lane stops once it has ``min_steps`` samples of each step kind and more than
``lane_budget_s`` s of timed steps (bf16 Muon on a CPU).

Refresh schedules (SpectralKron, eigh: refresh on step 0, ``k < precond_warmup`` and
``k % T == 0``): each timed step is classified *plain*, *refresh* or *reorth* from the
schedule (checked against SpectralKron's ``refreshes`` counter) and the headline is the
steady-state ``Σ weight · median(kind)``, weights ``1 − 1/T``, ``1/T − 1/(T·R)``, ``1/(T·R)``.

Optimizers (``key``): ``adamw``; ``muon_bf16`` (``torch.optim.Muon`` on the 2-D block
weights + AdamW on the rest); ``muon_fp32`` (the same with :class:`.reference.MuonFP32`);
``spectral_T{T}_p{p}`` (``SpectralKron(update_interval=T, p=p)``; the powers after the first
only at ``power_intervals``); ``eigh_T{T}`` (:class:`.reference.EighRefresh`, same schedule).
``--profile`` breaks one refresh and one plain ``opt.step()`` down with ``torch.profiler``.
Optimizer-state memory: bytes of the tensors in ``opt.state``. Reports: :mod:`.step_report`.
torch is imported only by the functions that need it.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from . import report
from .reference import Chain, EighRefresh, MuonFP32, state_bytes

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DEFAULT_INTERVALS",
    "EIGH_LABEL",
    "Config",
    "Spec",
    "add_arguments",
    "build_model",
    "config_from_args",
    "main",
    "optimizer_specs",
    "profile_steps",
    "run",
    "schedule",
    "summarize",
]

DEFAULT_INTERVALS = (1, 2, 10)
DEFAULT_POWERS = (2.0, 1.0)
#: The paper's efficiency target (GPU, width ≥ 512, ≥ 8k tokens): whole step ≤ 1.3× AdamW.
TARGET_RATIO = 1.3
EIGH_LABEL = "eigh refresh (Shampoo-style reference)"


# --------------------------------------------------------------------------- config


@dataclass
class Config:
    """One benchmark run (defaults: the documented CPU run)."""

    width: int = 256
    depth: int = 2
    heads: int = 4
    vocab: int = 256
    seq: int = 256
    tokens: int = 2048
    steps: int = 20
    warmup: int = 2
    intervals: tuple[int, ...] = DEFAULT_INTERVALS
    powers: tuple[float, ...] = DEFAULT_POWERS
    #: the powers after the first are timed only at these T (empty: at every T)
    power_intervals: tuple[int, ...] = (2,)
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    batches: int = 4
    #: a lane stops once it has min_steps samples of each step kind and more than
    #: lane_budget_s seconds of timed whole steps (caps bf16 Muon on a CPU)
    min_steps: int = 3
    lane_budget_s: float = 15.0
    quick: bool = False

    @property
    def batch(self) -> int:
        return max(1, self.tokens // self.seq)


QUICK = dict(width=32, depth=1, vocab=64, seq=32, tokens=64, steps=3, warmup=1, min_steps=3)


# --------------------------------------------------------------------------- model


def build_model(cfg: Config) -> Any:
    """The benchmark transformer as a ``torch.nn.ModuleDict`` (call :func:`forward`)."""
    import torch
    from torch import nn

    torch.manual_seed(cfg.seed)
    if cfg.width % cfg.heads:
        raise ValueError(f"width {cfg.width} is not a multiple of heads {cfg.heads}")
    layer = nn.TransformerEncoderLayer(
        cfg.width,
        cfg.heads,
        dim_feedforward=4 * cfg.width,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    model = nn.ModuleDict(
        {
            "embed": nn.Embedding(cfg.vocab, cfg.width),
            "pos": nn.Embedding(cfg.seq, cfg.width),
            "blocks": nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False),
            "norm": nn.LayerNorm(cfg.width),
            "head": nn.Linear(cfg.width, cfg.vocab, bias=False),
        }
    )
    return model.to(device=cfg.device, dtype=getattr(torch, cfg.dtype))


def forward(model: Any, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits ``(batch, seq, vocab)`` of the causal model."""
    import torch

    pos = torch.arange(x.shape[1], device=x.device)
    h = model["embed"](x) + model["pos"](pos)
    h = model["blocks"](h, mask=mask, is_causal=True)
    return model["head"](model["norm"](h))


def _batches(cfg: Config) -> tuple[list[tuple[Any, Any]], Any]:
    """``cfg.batches`` synthetic (input, target) pairs of ``tokens`` ids, and the causal mask."""
    import torch

    gen = torch.Generator().manual_seed(cfg.seed + 1)
    out = []
    for _ in range(cfg.batches):
        ids = torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq + 1), generator=gen)
        ids = ids.to(cfg.device)
        out.append((ids[:, :-1].contiguous(), ids[:, 1:].contiguous()))
    mask = torch.nn.Transformer.generate_square_subsequent_mask(
        cfg.seq, device=torch.device(cfg.device), dtype=getattr(torch, cfg.dtype)
    )
    return out, mask


def _is_hidden_matrix(name: str, p: Any) -> bool:
    """The weights Muon takes: 2-D and inside the transformer blocks."""
    return p.ndim == 2 and name.startswith("blocks.")


# --------------------------------------------------------------------------- optimizers


@dataclass
class Spec:
    """An optimizer of the benchmark.

    ``build(model)`` returns it. ``phases(k)`` names what step ``k`` does ("plain",
    "refresh", or "reorth": a refresh that also re-orthonormalizes ``B``) and ``weights``
    are the steady-state fractions of those phases (None: every step alike)."""

    key: str
    label: str
    family: str
    build: Callable[[Any], Any]
    interval: int | None = None
    p: float | None = None
    phases: Callable[[int], str] | None = None
    weights: dict[str, float] | None = None
    notes: str = ""


def schedule(
    interval: int, precond_warmup: int = 10, reorth_interval: int = 0
) -> tuple[Callable[[int], str], dict[str, float]]:
    """Phase of each step and steady-state phase weights of a refresh schedule.

    SpectralKron's rule: refresh on step 0, on ``k < precond_warmup`` and on
    ``k % interval == 0``; with ``reorth_interval = R > 0`` every R-th refresh also
    re-orthonormalizes (its ``refreshes`` counter ``n`` before the refresh has
    ``(n + 1) % R == 0``). Steady state: a fraction 1/T of the steps refresh, 1/(T·R) of
    them reorth."""
    cache: list[str] = []

    def phase(k: int) -> str:
        n_ref = sum(ph != "plain" for ph in cache)
        while len(cache) <= k:
            j = len(cache)
            if j == 0 or j < precond_warmup or j % interval == 0:
                n_ref += 1
                cache.append(
                    "reorth" if reorth_interval and n_ref % reorth_interval == 0 else "refresh"
                )
            else:
                cache.append("plain")
        return cache[k]

    t = float(interval)
    w = {"plain": 1 - 1 / t, "refresh": 1 / t}
    if reorth_interval:
        w["reorth"] = 1 / (t * reorth_interval)
        w["refresh"] -= w["reorth"]
    return phase, {k: v for k, v in w.items() if v > 0}


def spectral_defaults() -> dict[str, Any]:
    """SpectralKron's default options (``optim.Options``, or the signature of older versions)."""
    from .. import optim

    if hasattr(optim, "Options"):
        return dict(vars(optim.Options()))
    import inspect

    from ..torch import SpectralKron

    return {k: v.default for k, v in inspect.signature(SpectralKron).parameters.items()}


def optimizer_specs(cfg: Config, *, precond_warmup: int | None = None) -> list[Spec]:
    """AdamW, the two Muons, SpectralKron at every (T, p) and the eigh reference at every T.

    The first of ``cfg.powers`` is timed at every T, the others at the T in
    ``cfg.power_intervals`` (all T when empty). ``precond_warmup`` overrides SpectralKron's
    default (and the eigh reference's, which follows it) — used by :func:`profile_steps`
    to reach the steady schedule in fewer steps; the timing run keeps the default."""
    import torch

    from ..torch import SpectralKron

    defaults = spectral_defaults()
    warm = defaults["precond_warmup"] if precond_warmup is None else precond_warmup
    # every reorth_interval-th refresh also re-orthonormalizes, in every Cayley mode
    reorth = defaults["reorth_interval"]

    def adamw(model: Any) -> Any:
        return torch.optim.AdamW(model.parameters(), lr=1e-3)

    def muon(inner: Callable[..., Any]) -> Callable[[Any], Any]:
        def build(model: Any) -> Any:
            named = list(model.named_parameters())
            hidden = [p for n, p in named if _is_hidden_matrix(n, p)]
            rest = [p for n, p in named if not _is_hidden_matrix(n, p)]
            return Chain(inner(hidden, lr=0.02), torch.optim.AdamW(rest, lr=1e-3))

        return build

    specs = [Spec("adamw", "AdamW (torch.optim.AdamW)", "adamw", adamw)]
    if hasattr(torch.optim, "Muon"):  # torch >= 2.9
        specs.append(
            Spec(
                "muon_bf16",
                "Muon (torch.optim.Muon, bf16 NS) + AdamW",
                "muon",
                muon(torch.optim.Muon),
                notes="torch.optim.Muon: Newton–Schulz in bfloat16",
            )
        )
    specs.append(
        Spec(
            "muon_fp32",
            "Muon (fp32 NS, bench copy) + AdamW",
            "muon",
            muon(MuonFP32),
            notes="MuonFP32: torch.optim.Muon's update with Newton–Schulz in float32",
        )
    )
    for T in cfg.intervals:
        phase, weights = schedule(T, warm, reorth)
        for i, p in enumerate(cfg.powers):
            if i and cfg.power_intervals and T not in cfg.power_intervals:
                continue

            def build(model: Any, T: int = T, p: float = p) -> Any:
                # p = 1 divides by the curvature itself: a smaller lr keeps the short
                # run finite (the cost of a step depends on neither lr nor p).
                return SpectralKron(
                    model.parameters(),
                    lr=1e-3 if p >= 2 else 1e-5,
                    update_interval=T,
                    p=p,
                    precond_warmup=warm,
                )

            specs.append(
                Spec(
                    f"spectral_T{T}_p{p:g}",
                    f"SpectralKron T={T} p={p:g}",
                    "spectral",
                    build,
                    T,
                    p,
                    phase,
                    weights,
                )
            )
    for T in cfg.intervals:
        phase, weights = schedule(T, warm)

        def build_eigh(model: Any, T: int = T) -> Any:
            return EighRefresh(model.parameters(), lr=1e-3, update_interval=T, precond_warmup=warm)

        specs.append(
            Spec(f"eigh_T{T}", f"{EIGH_LABEL} T={T}", "eigh", build_eigh, T, 2.0, phase, weights)
        )
    return specs


# --------------------------------------------------------------------------- timing


def summarize(
    times: Sequence[float], phases: Sequence[str] | None, weights: dict[str, float] | None
) -> dict[str, Any]:
    """Median of ``times``; with a schedule, per-phase medians and the amortized
    ``Σ_phase weight · median(phase)`` (an unsampled "reorth" phase counts as "refresh";
    any other unsampled phase falls back to the overall median, flagged)."""
    out: dict[str, Any] = {"median_s": report.median(times), "min_s": min(times), "n": len(times)}
    if phases is None or weights is None:
        out["amortized_s"] = out["median_s"]
        return out
    per = {ph: [t for t, q in zip(times, phases) if q == ph] for ph in weights}
    out["phase_median_s"] = {ph: report.median(v) for ph, v in per.items()}
    out["phase_n"] = {ph: len(v) for ph, v in per.items()}
    est, missing = 0.0, []
    for ph, w in weights.items():
        m = out["phase_median_s"][ph]
        if m is None and ph == "reorth":
            m = out["phase_median_s"].get("refresh")
        if m is None:
            missing.append(ph)
            continue
        est += w * m
    if missing:
        out["amortized_s"] = out["median_s"]
        out["unsampled_phases"] = missing
    else:
        out["amortized_s"] = est
    return out


def _probe() -> float:
    """Seconds of a fixed burst of small CPU ops (a machine-contention indicator)."""
    import torch

    x = torch.ones(64, 1024)
    t = time.perf_counter()
    for _ in range(20):
        x = x * 1.0001
    return time.perf_counter() - t


def run(
    cfg: Config, *, keys: Iterable[str] | None = None, progress: report.Progress | None = None
) -> dict[str, Any]:
    """Time every optimizer on its own copy of the model; returns the raw numbers.

    ``keys`` restricts the optimizers (AdamW is always timed: the ratios need it). A lane
    stops being timed once it has ``min_steps`` samples of each step kind of its schedule
    and more than ``lane_budget_s`` of timed whole steps (bf16 Muon on a CPU, chiefly);
    the number of timed steps of each lane is reported."""
    import copy

    import torch

    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    cuda = cfg.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t_start = time.perf_counter()
    load0 = report.loadavg()
    specs = optimizer_specs(cfg)
    if keys is not None:
        want = set(keys) | {"adamw"}
        unknown = want - {s.key for s in specs}
        if unknown:
            raise ValueError(
                f"unknown optimizer keys {sorted(unknown)}; known: {[s.key for s in specs]}"
            )
        specs = [s for s in specs if s.key in want]
    base = build_model(cfg)
    batches, mask = _batches(cfg)
    lanes = []
    for s in specs:
        model = copy.deepcopy(base)
        lanes.append(
            {
                "spec": s,
                "model": model,
                "opt": s.build(model),
                "whole": [],
                "opt_t": [],
                "phases": [],
                "state_bytes": 0,
                "cuda_step_peak": 0,
                "loss": float("nan"),
                "done": False,
                "steps_taken": 0,
            }
        )
    del base
    n_total = cfg.warmup + cfg.steps
    probes = []
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for k in range(n_total):
            x, y = batches[k % len(batches)]
            probes.append(_probe())
            for lane in lanes:
                if lane["done"]:
                    continue
                model, opt, s = lane["model"], lane["opt"], lane["spec"]
                sync()
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                logits = forward(model, x, mask)
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1)
                )
                loss.backward()
                sync()
                t1 = time.perf_counter()
                if cuda:
                    before = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                opt.step()
                sync()
                t2 = time.perf_counter()
                lane["steps_taken"] += 1
                if cuda:
                    lane["cuda_step_peak"] = max(
                        lane["cuda_step_peak"], torch.cuda.max_memory_allocated() - before
                    )
                lane["state_bytes"] = max(lane["state_bytes"], state_bytes(opt))
                lane["loss"] = float(loss.detach())
                if k >= cfg.warmup:
                    lane["whole"].append(t2 - t0)
                    lane["opt_t"].append(t2 - t1)
                    lane["phases"].append(s.phases(k) if s.phases else "plain")
                    lane["done"] = _lane_done(lane, cfg)
                del logits, loss
            if progress is not None:
                live = sum(not ln["done"] for ln in lanes)
                progress.describe(
                    f"round {k + 1}" + (" (warm-up)" if k < cfg.warmup else "") + f", {live} timed"
                )
                progress.update(1, warm=k < cfg.warmup)
            if all(ln["done"] for ln in lanes):
                break
    finally:
        if gc_was:
            gc.enable()
    results = [_lane_result(lane, cuda) for lane in lanes]
    ref = next(r for r in results if r["key"] == "adamw")
    for r in results:
        r["ratio_whole"] = r["whole"]["amortized_s"] / ref["whole"]["amortized_s"]
        r["ratio_opt"] = r["opt"]["amortized_s"] / ref["opt"]["amortized_s"]
        r["ratio_state"] = r["state_bytes"] / max(ref["state_bytes"], 1)
    params = list(lanes[0]["model"].parameters())
    config = asdict(cfg)
    config.update(
        batch=cfg.batch,
        n_params=sum(p.numel() for p in params),
        wall_s=time.perf_counter() - t_start,
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        param_shapes=[list(p.shape) for p in params],
    )
    machine = report.machine_info(cfg.device)
    machine["loadavg_start"], machine["loadavg_end"] = load0, report.loadavg()
    machine["probe_s"] = probes
    return {"machine": machine, "config": config, "results": results}


def _lane_done(lane: dict[str, Any], cfg: Config) -> bool:
    """Every step timed; or the lane budget spent, with ``min_steps`` samples of each step
    kind of the schedule (the rare reorth kind excepted)."""
    n = len(lane["whole"])
    if n >= cfg.steps:
        return True
    if cfg.lane_budget_s <= 0 or n < cfg.min_steps or sum(lane["whole"]) < cfg.lane_budget_s:
        return False
    kinds = [ph for ph in (lane["spec"].weights or {}) if ph != "reorth"]
    return all(lane["phases"].count(ph) >= cfg.min_steps for ph in kinds)


def _lane_result(lane: dict[str, Any], cuda: bool) -> dict[str, Any]:
    s, opt = lane["spec"], lane["opt"]
    ph = lane["phases"] if s.phases else None
    r: dict[str, Any] = {
        "key": s.key,
        "label": s.label,
        "family": s.family,
        "interval": s.interval,
        "p": s.p,
        "notes": s.notes,
        "whole": summarize(lane["whole"], ph, s.weights),
        "opt": summarize(lane["opt_t"], ph, s.weights),
        "fwd_bwd_median_s": report.median([w - o for w, o in zip(lane["whole"], lane["opt_t"])]),
        "state_bytes": lane["state_bytes"],
        "cuda_step_peak_bytes": lane["cuda_step_peak"] if cuda else None,
        "final_loss": lane["loss"],
        "steps_taken": lane["steps_taken"],
        "whole_times_s": lane["whole"],
        "opt_times_s": lane["opt_t"],
        "phases": ph,
        "weights": s.weights,
    }
    if hasattr(opt, "skipped_steps"):  # SpectralKron: sanity counters
        sts = list(opt.state.values())
        r["skipped_steps"] = opt.skipped_steps
        r["rejected_refreshes"] = int(sum(int(st["rejected"]) for st in sts))
        # The schedule this module assumed vs the optimizer's own refresh counter.
        r["refreshes_counted"] = int(sts[0]["refreshes"])
        r["refreshes_expected"] = sum(s.phases(k) != "plain" for k in range(lane["steps_taken"]))
    return r


# --------------------------------------------------------------------------- profile

MATMUL_OPS = frozenset(
    {
        "aten::mm",
        "aten::bmm",
        "aten::addmm",
        "aten::baddbmm",
        "aten::addbmm",
        "aten::dot",
        "aten::vdot",
        "aten::mv",
        "aten::addmv",
    }
)
COPY_OPS = frozenset(
    {"aten::copy_", "aten::cat", "aten::stack", "aten::clone", "aten::_to_copy", "aten::contiguous"}
)
PROFILE_KEYS = ("adamw", "muon_fp32", "spectral_T2_p2", "eigh_T2")


def _categorize(events: Any) -> dict[str, Any]:
    """Self CPU time (s) of a profiled step by category; Python = time inside the step's
    record_function scopes but outside every aten op (interpreter + dispatch)."""
    cat = {"matmul": 0.0, "eigh": 0.0, "copy/stack": 0.0, "other aten": 0.0, "python": 0.0}
    calls = 0
    for e in events:
        t = e.self_cpu_time_total * 1e-6
        if not e.key.startswith("aten::"):
            cat["python"] += t
            continue
        calls += e.count
        if e.key in MATMUL_OPS:
            cat["matmul"] += t
        elif "eigh" in e.key:
            cat["eigh"] += t
        elif e.key in COPY_OPS:
            cat["copy/stack"] += t
        else:
            cat["other aten"] += t
    return {"self_s": cat, "total_s": sum(cat.values()), "aten_calls": calls}


def profile_steps(
    cfg: Config, keys: Iterable[str] = PROFILE_KEYS, log: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """torch.profiler breakdown of one refresh and one plain ``opt.step()`` per optimizer.

    Each optimizer runs alone on a fresh model, with ``precond_warmup=0`` so that the
    schedule is T-periodic from step 1 (the work of a refresh or plain step is the same as
    with the default); from step 2 on, the first step of each kind is timed unprofiled
    and the next one of the same kind profiled."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    specs = {s.key: s for s in optimizer_specs(cfg, precond_warmup=0)}
    batches, mask = _batches(cfg)
    sync = torch.cuda.synchronize if cfg.device.startswith("cuda") else (lambda: None)
    out = []
    for key in keys:
        if key not in specs:
            continue
        s = specs[key]
        model = build_model(cfg)
        opt = s.build(model)
        phase = s.phases or (lambda k: "plain")
        # Two consecutive occurrences of each phase after the warm-up region.
        todo: dict[str, list[int]] = {}
        k = 2  # precond_warmup = 0 here: steps from 1 on follow the T-periodic schedule
        while any(len(v) < 2 for v in todo.values()) or not todo:
            ph = phase(k)
            if ph != "reorth":
                todo.setdefault(ph, []).append(k)
            k += 1
            if k > 200:
                break
        wanted = {k: ph for ph, ks in todo.items() for k in ks[:2]}
        last = max(wanted)
        walls: dict[str, float] = {}
        for k in range(last + 1):
            x, y = batches[k % len(batches)]
            opt.zero_grad(set_to_none=True)
            logits = forward(model, x, mask)
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1)
            ).backward()
            ph = wanted.get(k)
            sync()
            if ph is not None and ph in walls:
                with (
                    profile(activities=[ProfilerActivity.CPU]) as prof,
                    record_function("bench::opt.step"),
                ):
                    opt.step()
                    sync()
                row = {"key": key, "label": s.label, "phase": ph, "wall_s": walls[ph]}
                row.update(_categorize(prof.key_averages()))
                out.append(row)
            else:
                t = time.perf_counter()
                opt.step()
                sync()
                if ph is not None:
                    walls[ph] = time.perf_counter() - t
        if log is not None:
            log(f"profiled {key}")
    return out


# --------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``optim`` subcommand's options (imports nothing heavy)."""
    d = Config()
    p.add_argument("--width", type=int, default=None, help=f"model width (default {d.width})")
    p.add_argument("--depth", type=int, default=None, help=f"blocks (default {d.depth})")
    p.add_argument(
        "--vocab", type=int, default=None, help=f"vocabulary size (default {d.vocab}, byte-level)"
    )
    p.add_argument(
        "--seq", type=int, default=None, help=f"sequence length (default min({d.seq}, tokens))"
    )
    p.add_argument(
        "--tokens",
        type=int,
        default=None,
        help=f"tokens per step = batch × seq (default {d.tokens})",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"timed steps per optimizer, at most (default {d.steps})",
    )
    p.add_argument(
        "--warmup", type=int, default=None, help=f"untimed warm-up steps (default {d.warmup})"
    )
    p.add_argument(
        "--intervals",
        type=int,
        nargs="+",
        default=None,
        metavar="T",
        help="update_interval of SpectralKron and the eigh reference "
        "(default " + " ".join(map(str, d.intervals)) + ")",
    )
    p.add_argument(
        "--powers",
        type=float,
        nargs="+",
        default=None,
        metavar="P",
        help="SpectralKron roots p (default " + " ".join(f"{x:g}" for x in d.powers) + ")",
    )
    p.add_argument(
        "--power-intervals",
        type=int,
        nargs="*",
        default=None,
        metavar="T",
        help="time the powers after the first only at these T (default "
        + " ".join(map(str, d.power_intervals))
        + "; none given: every T)",
    )
    p.add_argument(
        "--lane-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"stop timing an optimizer after this many seconds of timed steps "
        f"(once it has {d.min_steps} samples of each step kind; default "
        f"{d.lane_budget_s:g}; 0: never)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="KEY",
        help="time only these optimizer keys (AdamW always), e.g. adamw muon_bf16 "
        "muon_fp32 spectral_T2_p2 eigh_T2",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="model parameter dtype (default float32)",
    )
    report.add_threads_argument(p)
    report.add_seed_argument(p, "seed (default 0)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile one refresh and one plain opt.step() of AdamW, Muon "
        "(fp32 NS), SpectralKron and the eigh reference (first T given)",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: width 32, depth 1, 64 tokens, 3 steps"
    )
    report.add_output_arguments(
        p, docs="docs/benchmarks_optim.md, .json and docs/img/optim_step_time.png"
    )
    report.add_quiet_argument(p, "no progress bar")


def config_from_args(args: argparse.Namespace) -> Config:
    """The :class:`Config` of parsed ``optim`` arguments (``--quick`` shrinks the defaults)."""
    base: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name in ("width", "depth", "vocab", "seq", "tokens", "steps", "warmup"):
        v = getattr(args, name)
        if v is not None:
            base[name] = v
    if args.lane_budget is not None:
        base["lane_budget_s"] = args.lane_budget
    cfg = Config(**base, device=args.device, dtype=args.dtype, seed=args.seed, quick=args.quick)
    if args.seq is None:
        cfg.seq = min(cfg.seq, cfg.tokens)
    if args.intervals:
        cfg.intervals = tuple(args.intervals)
    if args.powers:
        cfg.powers = tuple(args.powers)
    if args.power_intervals is not None:
        cfg.power_intervals = tuple(args.power_intervals)
    if cfg.tokens % cfg.seq:
        raise SystemExit(f"--tokens {cfg.tokens} must be a multiple of --seq {cfg.seq}")
    return cfg


def main(args: argparse.Namespace, rep: Any) -> int:
    """Entry point of ``bench optim`` (parsed ``args``); ``rep``, the report module
    (:mod:`.step_report`, which imports this one), prints and writes the results."""
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    cfg = config_from_args(args)
    out = report.outputs(args, quick=args.quick)
    threads = report.set_threads(args.threads)
    n_opt = len(optimizer_specs(cfg)) if args.only is None else len(set(args.only) | {"adamw"})
    print(
        f"bench optim{' (quick)' if args.quick else ''}: {n_opt} optimizers × up to "
        f"{cfg.steps} timed steps (+{cfg.warmup} warm-up), transformer width {cfg.width}, "
        f"depth {cfg.depth}, {cfg.tokens} tokens/step, {cfg.dtype} on {cfg.device}; "
        f"{report.threads_line(threads)}",
        flush=True,
    )
    out.announce()
    load = report.loadavg()
    ncpu = report.usable_cpus()
    if not args.quick and load and load[0] > 0.5 * ncpu and args.threads > 1:
        print(
            f"warning: load average {load[0]} on {ncpu} usable cores: other jobs share this "
            f"machine; with {args.threads} threads every parallel op can wait on a "
            "descheduled thread (--threads 1 gives steadier ratios)",
            file=sys.stderr,
        )
    bar = report.Progress(cfg.warmup + cfg.steps, quiet=args.quiet, unit="round")
    try:
        data = run(cfg, keys=args.only, progress=bar)
    finally:
        bar.close()
    data["config"]["threads"] = args.threads
    data["config"]["quick"] = bool(args.quick)
    if args.profile:
        T = cfg.intervals[0] if 2 not in cfg.intervals else 2
        p = cfg.powers[0]
        keys = ("adamw", "muon_fp32", f"spectral_T{T}_p{p:g}", f"eigh_T{T}")
        t = time.perf_counter()
        data["profile"] = profile_steps(cfg, keys, log=None if args.quiet else _log)
        data["config"]["profile_wall_s"] = time.perf_counter() - t
    return report.publish(out, data, rep)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
